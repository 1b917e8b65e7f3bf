#!/usr/bin/env bash
# System packages some tests need, installed when running as root on Debian/Ubuntu (CI, fresh machines):
# openssh-server for the multi-host rehearsal, chromium for the report's browser test, podman (with buildah,
# runc, uidmap) and debootstrap for the container images and their MPIJob rehearsal, libfuse2 for the test whose
# read never returns, slurm-wlm, munge and libpmix-dev (srun --mpi=pmix loads libpmix.so) for the tests that start
# a real one-node Slurm, and prometheus-pushgateway for the --pushgateway test.
# Elsewhere those tests skip and say why.
set -uo pipefail
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  exit 0
fi
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v podman >/dev/null 2>&1 || need+=(podman buildah runc uidmap)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v prometheus-pushgateway >/dev/null 2>&1 || need+=(prometheus-pushgateway)
ldconfig -p 2>/dev/null | grep -q 'libpmix\.so ' || need+=(libpmix-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "warning: could not install ${need[*]}; the tests that need them will skip"
fi
# libfuse2 (for fusepy) is named libfuse2t64 on Debian 13: its own step, so a missing name cannot stop the rest
if ! ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2'; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends libfuse2 >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends libfuse2 >/dev/null 2>&1; } \
    || apt-get install -y -qq --no-install-recommends libfuse2t64 >/dev/null 2>&1; } \
    || echo "warning: could not install libfuse2; the stalled-read test will skip"
fi
