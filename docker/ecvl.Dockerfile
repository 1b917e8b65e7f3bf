# mpi_infer over a site's own DeepHealth image: a thin layer, nothing of DeepHealth is built here.
#
#   podman build --build-arg DEEPHEALTH_BASE=registry.example.org/deephealth:site -f docker/ecvl.Dockerfile \
#     -t mpi-infer-ecvl .
#
# DEEPHEALTH_BASE (required, no default) names an image where `python3 -c "import pyecvl.ecvl, pyeddl.eddl"` works
# on Python >= 3.10 and apt-get works (Debian or Ubuntu). DeepHealth's published images are Ubuntu 18.04 with
# Python 3.6, older than mpi_infer supports, so sites layer this over their own build. The first step checks the
# base and fails in seconds naming what is missing. This layer adds: mpi4py compiled against the distribution's
# Open MPI (the MPI the launcher and workers share), mpi_infer with its pip dependencies in the base's Python, the
# non-root sshd setup of the CPU image (uid 1000, port 2222) and the image self-check.
ARG DEEPHEALTH_BASE

FROM ${DEEPHEALTH_BASE} AS build
ARG DEEPHEALTH_BASE
ARG DEBIAN_FRONTEND=noninteractive
COPY docker/check_deephealth_base.sh /tmp/check_deephealth_base.sh
RUN sh /tmp/check_deephealth_base.sh "${DEEPHEALTH_BASE}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev libopenmpi-dev python3-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m pip wheel --no-deps --no-binary=mpi4py -w /wheels "mpi4py>=4.1"

FROM ${DEEPHEALTH_BASE}
ARG DEBIAN_FRONTEND=noninteractive
ARG UID=1000
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1
# A user with uid 1000 already in the base (Ubuntu's "ubuntu") becomes mpiuser, so the MPIJob's paths hold.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openmpi-bin openssh-server openssh-client \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
 && old=$(getent passwd "${UID}" | cut -d: -f1) \
 && if [ -z "$old" ]; then useradd --create-home --uid "${UID}" --shell /bin/bash mpiuser; \
    elif [ "$old" != mpiuser ]; then usermod -l mpiuser -d /home/mpiuser -m -s /bin/bash "$old"; fi
COPY --from=build /wheels /tmp/wheels
COPY pyproject.toml README.md /src/
COPY mpi_infer /src/mpi_infer
RUN python3 -m pip install /tmp/wheels/*.whl /src && rm -rf /src /tmp/wheels
COPY docker/check_image.sh /usr/local/bin/check_image.sh
RUN PYTHON=python3 sh /usr/local/bin/check_image.sh \
 && python3 -c "import pyecvl.ecvl, pyeddl.eddl; from mpi_infer.engines import ecvl_available; assert ecvl_available()"

COPY docker/sshd_config /home/mpiuser/.sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/mpi.conf
RUN chown mpiuser:mpiuser /home/mpiuser/.sshd_config
USER mpiuser
WORKDIR /home/mpiuser
CMD ["mpi_infer", "--help"]
