# mpi_infer, CPU image (ONNX Runtime engine, OpenCV loader) for Kubeflow MPIJob launchers and workers.
# One MPI: Debian trixie's Open MPI 5, with mpi4py compiled against it (no pip MPI wheels here).
#   docker build -t mpi-infer:0.2.0 .                                          # FROM Docker Hub's python image
#   podman build --build-arg BASE=localhost/debian:trixie-slim -t mpi-infer .  # FROM a plain Debian trixie
# Two stages: compilers and headers (gcc, libopenmpi-dev, which pulls gfortran) stay in the build stage; the
# final image has the Open MPI runtime, sshd and the venv. scripts/build_images.sh builds it (and the plain
# Debian base) with podman; tests/launch/test_containers.py rehearses an MPIJob with it.
ARG BASE=python:3.12.12-slim-trixie
# ONNXRUNTIME=gpu: the GPU image (scripts/build_images.sh gpu): onnxruntime-gpu with the CUDA and cuDNN libraries
# it needs, from PyPI (its [cuda,cudnn] extras), in place of the CPU onnxruntime: the newest release at or above
# pyproject's floor (the GPU build can trail the CPU one by a minor version).
ARG ONNXRUNTIME=cpu

FROM ${BASE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# A plain Debian base has no Python: take Debian's (with venv and headers). Docker Hub's image brings its own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev libopenmpi-dev \
      $(command -v python3 >/dev/null || echo python3 python3-venv python3-dev) \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv && pip install --no-binary=mpi4py "mpi4py>=4.1"
COPY pyproject.toml README.md /src/
COPY mpi_infer /src/mpi_infer
ARG ONNXRUNTIME
RUN pip install /src && rm -rf /src \
 && if [ "$ONNXRUNTIME" = gpu ]; then \
      pip uninstall -y onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]>=1.24"; fi \
 && { pip uninstall -y pip setuptools >/dev/null 2>&1 || true; }
# What the runtime never loads: the packages' own test suites (ONNX's backend test data, numpy's and matplotlib's
# tests, pydicom's and nibabel's test files), and the debug symbols of the one extension compiled here (mpi4py;
# the wheels' libraries are already stripped, and stripping a patchelf'd library can break it).
# docs/containers.md quotes the size.
RUN site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "$site"/onnx/backend/test "$site"/matplotlib/tests "$site"/numpy/tests "$site"/numpy/*/tests \
    "$site"/pydicom/data/test_files "$site"/nibabel/tests "$site"/nibabel/*/tests \
 && find "$site"/mpi4py -name '*.so' -exec strip --strip-unneeded {} +
COPY docker/check_image.sh /usr/local/bin/check_image.sh
# Fails the build unless mpi4py is linked to the system Open MPI (not a pip wheel's MPI).
RUN sh /usr/local/bin/check_image.sh

FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
ARG UID=1000
COPY docker/drop_rocm.sh /tmp/drop_rocm.sh
# No man pages, translations or docs besides the copyright files (as Docker Hub's slim images do); one layer:
# files removed by a later layer would still weigh in the image. A build machine's own CA certificates (its TLS
# proxy's, which scripts/build_images.sh puts in the local base for pip) are not trusted by the image it ships.
RUN printf 'path-exclude=/usr/share/man/*\npath-exclude=/usr/share/locale/*\npath-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n' \
      >/etc/dpkg/dpkg.cfg.d/mpi-infer-slim \
 && apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openmpi-bin openssh-server openssh-client \
      $(command -v python3 >/dev/null || echo python3) \
 && sh /tmp/drop_rocm.sh \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /tmp/drop_rocm.sh \
 && rm -f /usr/local/share/ca-certificates/*.crt && update-ca-certificates --fresh >/dev/null \
 && useradd --create-home --uid "${UID}" --shell /bin/bash mpiuser
COPY --from=build /opt/venv /opt/venv
COPY docker/check_image.sh /usr/local/bin/check_image.sh
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
ARG ONNXRUNTIME
RUN sh /usr/local/bin/check_image.sh \
 && python -c "import mpi_infer.cli, onnx, onnxruntime, cv2, matplotlib.pyplot, pydicom, nibabel" \
 && if [ "$ONNXRUNTIME" = gpu ]; then python -c "import onnxruntime as o; \
      assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()"; fi \
 && mpirun --allow-run-as-root -n 1 --oversubscribe python -c "from mpi4py import MPI; assert MPI.COMM_WORLD.size == 1"

COPY docker/sshd_config /home/mpiuser/.sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/mpi.conf
RUN chown mpiuser:mpiuser /home/mpiuser/.sshd_config

USER mpiuser
WORKDIR /home/mpiuser
# Workers run `/usr/sbin/sshd -De -f /home/mpiuser/.sshd_config`; the launcher runs mpirun (see manifests/).
CMD ["mpi_infer", "--help"]
