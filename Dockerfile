# mpi_infer, CPU / ONNX Runtime image for Kubeflow MPIJob launchers and workers.
# One MPI: Debian trixie's Open MPI 5, with mpi4py compiled against it (no pip MPI wheels here).
#   docker build -t mpi-infer:0.1.0 .
FROM python:3.12.12-slim-trixie

ARG UID=1000
RUN apt-get update \
 && apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev openssh-server openssh-client gcc \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid "${UID}" --shell /bin/bash mpiuser

# The package and its dependencies in a venv; mpi4py built from source against the system Open MPI.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir --no-binary=mpi4py "mpi4py>=4.1"
COPY pyproject.toml README.md /src/
COPY mpi_infer /src/mpi_infer
RUN pip install --no-cache-dir /src && rm -rf /src \
 && python -m mpi4py --mpi-lib-version | head -1

COPY docker/sshd_config /home/mpiuser/.sshd_config
COPY docker/ssh_config /etc/ssh/ssh_config.d/mpi.conf
RUN chown mpiuser:mpiuser /home/mpiuser/.sshd_config

USER mpiuser
WORKDIR /home/mpiuser
# Workers run `/usr/sbin/sshd -De -f /home/mpiuser/.sshd_config`; the launcher runs mpirun (see manifests/).
CMD ["mpi_infer", "--help"]
