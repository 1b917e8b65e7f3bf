#!/bin/sh
# Debian trixie's UCX (pulled in by Open MPI) depends on the AMD ROCm runtime for its ROCm transport: 240 MB
# (LLVM, comgr, HIP, z3) that only AMD GPUs use, in an image for CPU nodes. Each such package is swapped for an
# empty placeholder of the same name and version, so dpkg stays consistent (apt in a derived image neither
# complains nor reinstalls them), and UCX's ROCm plugins, which alone link them, are removed. UCX's other
# transports (shared memory, TCP, InfiniBand) and Open MPI are untouched. A no-op where none is installed.
set -eu
work=$(mktemp -d)
for pkg in libamdhip64-5 libamd-comgr2 libllvm17t64 libz3-4 libhsa-runtime64-1 libhsakmt1; do
  version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
  [ -n "$version" ] || continue
  arch=$(dpkg-query -W -f='${Architecture}' "$pkg")
  mkdir -p "$work/$pkg/DEBIAN"
  printf 'Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: mpi_infer image build\nSection: oldlibs\nPriority: optional\nDescription: empty placeholder (the ROCm runtime is not needed on CPU nodes)\n' \
    "$pkg" "$version" "$arch" >"$work/$pkg/DEBIAN/control"
  dpkg-deb --build "$work/$pkg" "$work/$pkg.deb" >/dev/null
  dpkg -i "$work/$pkg.deb" >/dev/null
  echo "drop_rocm: $pkg $version -> placeholder"
done
rm -rf "$work" /usr/lib/*/ucx/*rocm*
