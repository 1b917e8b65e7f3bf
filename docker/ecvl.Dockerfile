# mpi_infer on the DeepHealth stack: pyecvl 1.3.0 + pyeddl 1.3.1 on ECVL 1.0.3 + EDDL 1.1b (CPU), built here
# from the pinned upstream sources, so `--loader auto` picks ECVL's own loading (and `--engine eddl` works).
#
# The build context is a folder holding this repository's pyproject.toml, README.md, mpi_infer/ and docker/,
# and deephealth/sources/ (eddl-v1.1b, ecvl-v1.0.3, pyeddl-1.3.1, pyecvl-1.3.0 as git-archive .tar.gz files
# plus SHA256SUMS). scripts/build_images.sh assembles it; the README says how to fetch the same tags. Debian 12 (bookworm): the toolchain these sources were fixed
# for. The build stage keeps the compilers, headers and sources; the final stage only the libraries, a venv
# with the two wheels, mpi4py (against Debian's Open MPI) and mpi_infer, and the runtime packages they link.
#   podman build --build-arg BASE=localhost/debian:bookworm-slim -f docker/ecvl.Dockerfile -t mpi-infer-ecvl CTX
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates build-essential cmake pkg-config \
      protobuf-compiler libprotobuf-dev libeigen3-dev libopencv-dev libyaml-cpp-dev zlib1g-dev \
      python3 python3-dev python3-venv libopenmpi-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PREFIX=/opt/deephealth PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deephealth/sources /deephealth/sources
WORKDIR /build
RUN cd /deephealth/sources && sha256sum -c --quiet SHA256SUMS \
 && for t in eddl-v1.1b ecvl-v1.0.3 pyeddl-1.3.1 pyecvl-1.3.0; do tar -xzf "$t.tar.gz" -C /build; done

# EDDL ships onnx.pb.{h,cc} made by protoc 3.11, which Debian's protobuf 3.21 headers refuse: regenerate them
# with Debian's protoc and point the .cc at the header's installed place.
RUN onnx=/build/eddl-v1.1b/src/serialization/onnx/onnx_third_party && mkdir /build/pb \
 && protoc --proto_path="$onnx" --cpp_out=/build/pb "$onnx/onnx.proto" \
 && cp /build/pb/onnx.pb.h /build/eddl-v1.1b/include/eddl/serialization/onnx/onnx.pb.h \
 && sed 's|#include "onnx.pb.h"|#include "eddl/serialization/onnx/onnx.pb.h"|' /build/pb/onnx.pb.cc >"$onnx/onnx.pb.cc" \
 && grep -q '#include "eddl/serialization/onnx/onnx.pb.h"' "$onnx/onnx.pb.cc"
# Libraries find each other through RUNPATH=$PREFIX/lib (no ldconfig state); no -march=native (BUILD_HPC=OFF).
RUN cmake -S eddl-v1.1b -B eddl-build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" \
      -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_INSTALL_RPATH="$PREFIX/lib" -DBUILD_TARGET=CPU -DBUILD_SUPERBUILD=OFF \
      -DBUILD_PROTOBUF=ON -DBUILD_OPENMP=ON -DBUILD_HPC=OFF -DBUILD_SHARED_LIBS=ON -DBUILD_TESTS=OFF \
      -DBUILD_EXAMPLES=OFF -DBUILD_DIST=OFF >/dev/null \
 && make -C eddl-build -j"$(nproc)" >/dev/null && make -C eddl-build install >/dev/null
RUN cmake -S ecvl-v1.0.3 -B ecvl-build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" \
      -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_INSTALL_RPATH="$PREFIX/lib" -DECVL_BUILD_DEPS=OFF \
      -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DECVL_SHARED=ON -DECVL_GPU=OFF -DECVL_WITH_DICOM=OFF \
      -DECVL_WITH_OPENSLIDE=OFF -DECVL_BUILD_GUI=OFF -DECVL_WITH_OPENGL=OFF -DECVL_DATASET=ON -DECVL_BUILD_EDDL=ON \
      -Deddl_DIR="$PREFIX/lib/cmake/eddl" -DECVL_TESTS=OFF -DECVL_BUILD_EXAMPLES=OFF >/dev/null \
 && make -C ecvl-build -j"$(nproc)" >/dev/null && make -C ecvl-build install >/dev/null

# The bindings were generated for pybind11 2.5: 2.6 renamed overload_caster_t, the "pybind11<2.6" runtime pin
# cannot build for Python 3.11, and with pybind11 2.13 pyecvl's Image(ndarray) took the wrong dtype overload
# (each of the 8 overloads now takes any layout of its exact dtype and converts to Fortran order inside, as the
# build kit's patch does). -g0 keeps each module ~2 MB instead of ~10.
RUN for b in pyeddl-1.3.1 pyecvl-1.3.0; do \
      sed -i 's/overload_caster_t/override_caster_t/g' "$b/src/_core.cpp" && ! grep -q overload_caster_t "$b/src/_core.cpp" \
      && sed -i 's/"pybind11<2.6", //' "$b/setup.py" && ! grep -q 'pybind11<2.6' "$b/setup.py"; done \
 && perl -0pi -e 's/pybind11::array_t<([\w:]+), pybind11::array::f_style> array(, std::string channels[^\n]*\n\s*return bufToImg\()array\.request\(\)/pybind11::array_t<$1, 0> array$2pybind11::array_t<$1, pybind11::array::f_style>::ensure(array).request()/g' \
      pyecvl-1.3.0/src/image_addons.hpp \
 && test "$(grep -c 'ensure(array)' pyecvl-1.3.0/src/image_addons.hpp)" = 8
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install pybind11==2.13.6 setuptools==84.2.1 wheel >/dev/null \
 && CFLAGS=-g0 CXXFLAGS=-g0 EDDL_DIR="$PREFIX" CPATH=/usr/include/eigen3 \
      /opt/venv/bin/pip wheel --no-deps --no-build-isolation -w /wheels ./pyeddl-1.3.1 >/dev/null \
 && CFLAGS=-g0 CXXFLAGS=-g0 EDDL_DIR="$PREFIX" ECVL_DIR="$PREFIX" ECVL_EDDL=ON ECVL_WITH_DICOM=OFF \
      ECVL_WITH_OPENSLIDE=OFF CPATH=/usr/include/eigen3:/usr/include/opencv4 \
      /opt/venv/bin/pip wheel --no-deps --no-build-isolation -w /wheels ./pyecvl-1.3.0 >/dev/null \
 && rm -rf /opt/venv && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip install --no-binary=mpi4py "mpi4py>=4.1"
COPY pyproject.toml README.md /src/
COPY mpi_infer /src/mpi_infer
RUN /opt/venv/bin/pip install /src
COPY docker/check_image.sh /usr/local/bin/check_image.sh
# The Debian packages the libraries and extension modules link against: the final stage installs exactly these.
RUN PATH=/opt/venv/bin:$PATH sh /usr/local/bin/check_image.sh \
 && find "$PREFIX/lib" /opt/venv -name '*.so*' -type f -exec ldd {} + 2>/dev/null \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | grep -v "^$PREFIX/" | sort -u | xargs -r realpath \
    | sed 's#^/lib/#/usr/lib/#' | xargs -r dpkg -S 2>/dev/null | cut -d: -f1 | sort -u >/runtime-packages.txt \
 && test -s /runtime-packages.txt && cat /runtime-packages.txt

FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
ARG UID=1000
COPY --from=build /runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 openmpi-bin openssh-server openssh-client \
      $(cat /tmp/runtime-packages.txt) \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /tmp/runtime-packages.txt \
 && useradd --create-home --uid "${UID}" --shell /bin/bash mpiuser
COPY --from=build /opt/deephealth/lib /opt/deephealth/lib
COPY --from=build /opt/venv /opt/venv
COPY docker/check_image.sh /usr/local/bin/check_image.sh
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN sh /usr/local/bin/check_image.sh \
 && python -c "import pyecvl.ecvl, pyeddl.eddl; from mpi_infer.engines import ecvl_available; assert ecvl_available()"

COPY docker/sshd_config /home/mpiuser/.sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/mpi.conf
RUN chown mpiuser:mpiuser /home/mpiuser/.sshd_config
USER mpiuser
WORKDIR /home/mpiuser
CMD ["mpi_infer", "--help"]
