#!/bin/sh
# Build-time self-check: mpi4py must be linked to the system Open MPI (/usr/lib/...), never to an MPI that a pip
# wheel brought, and Open MPI must answer. Any failure fails the image build (set -e; no pipes that hide it).
set -eu
py=${PYTHON:-python}
so=$("$py" -c 'import mpi4py.MPI as m; print(m.__file__)')
libmpi=$(ldd "$so" | awk '/libmpi\.so/ {print $3}')
[ -n "$libmpi" ] && libmpi=$(realpath "$libmpi")  # /lib is /usr/lib on a merged-/usr Debian
case "$libmpi" in
  /usr/lib/*) ;;
  *) echo "check_image: mpi4py ($so) is not linked to the system Open MPI: libmpi '$libmpi'" >&2; exit 1 ;;
esac
version=$("$py" -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])')
case "$version" in
  "Open MPI"*) echo "check_image: mpi4py -> $libmpi ($version)" ;;
  *) echo "check_image: unexpected MPI library: $version" >&2; exit 1 ;;
esac
