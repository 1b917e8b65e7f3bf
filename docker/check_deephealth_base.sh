#!/bin/sh
# First step of docker/ecvl.Dockerfile: the base must be a DeepHealth environment mpi_infer can layer over, an
# image where `python3 -c "import pyecvl.ecvl, pyeddl.eddl"` works on Python >= 3.10 and apt-get installs the
# distribution's Open MPI and sshd. Fails the build at once, naming what is wrong, instead of minutes later.
set -eu
base=${1:-the base image}
fail() { echo "ecvl.Dockerfile: DEEPHEALTH_BASE=$base $*" >&2; exit 1; }
command -v python3 >/dev/null 2>&1 \
  || fail "has no python3 on PATH; it must be an image where python3 -c 'import pyecvl.ecvl, pyeddl.eddl' works (Python >= 3.10): a site's own DeepHealth build"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || fail "has $(python3 -V 2>&1), older than the Python 3.10 mpi_infer needs (DeepHealth's published images are Ubuntu 18.04 with Python 3.6: layer over your own build)"
python3 -c 'import pyecvl.ecvl, pyeddl.eddl' 2>/tmp/import-error \
  || fail "has no working pyecvl/pyeddl for $(command -v python3): $(tail -n 1 /tmp/import-error)"
python3 -m pip --version >/dev/null 2>&1 || fail "has no pip for $(command -v python3)"
command -v apt-get >/dev/null 2>&1 || fail "has no apt-get (the layer installs Open MPI and sshd with it)"
echo "check_deephealth_base: $base: $(python3 -V 2>&1), $(python3 -c 'import pyecvl, pyeddl; print("pyecvl", getattr(pyecvl, "VERSION", "?"), "pyeddl", getattr(pyeddl, "VERSION", "?"))')"
