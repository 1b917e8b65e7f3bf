# mpi_infer on the DeepHealth toolkit: pyecvl 1.3.0 + pyeddl 1.3.1 (ECVL 1.0.3, EDDL 1.1b), so
# `--backend auto` picks ECVL's own loading and EDDL's own network.
#   docker build -f docker/ecvl.Dockerfile -t mpi-infer-ecvl:0.1.0 .
# The base is pinned by tag; override with --build-arg BASE=dhealth/pylibs-toolkit:<tag> (or a digest)
# if your registry mirrors another build of the same pyecvl/pyeddl pair.
ARG BASE=dhealth/pylibs-toolkit:1.3.0-1-cudnn
FROM ${BASE}

ARG UID=1000
USER root
# One MPI: the distribution's Open MPI, with mpi4py compiled against it; sshd for the MPIJob workers.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openmpi-bin libopenmpi-dev openssh-server openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && (id -u "${UID}" >/dev/null 2>&1 || useradd --create-home --uid "${UID}" --shell /bin/bash mpiuser)
RUN python3 -m pip install --no-cache-dir --no-binary=mpi4py "mpi4py>=4.1"
COPY pyproject.toml README.md /src/
COPY mpi_infer /src/mpi_infer
# pyecvl/pyeddl come from the base image; our other dependencies from PyPI.
RUN python3 -m pip install --no-cache-dir /src && rm -rf /src \
 && python3 -c "import pyecvl, pyeddl, mpi_infer.backends as b; assert b.ecvl_available()"

COPY docker/sshd_config /home/mpiuser/.sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/mpi.conf
RUN sed -i 's#^SetEnv PATH=.*#SetEnv PATH=/usr/local/bin:/usr/bin:/bin#' /home/mpiuser/.sshd_config \
 && chown -R "${UID}" /home/mpiuser
USER ${UID}
WORKDIR /home/mpiuser
ENV PYTHONUNBUFFERED=1
CMD ["mpi_infer", "--help"]
