#!/usr/bin/env bash
# Build the container images with podman, cached by content hash.
#
#   sudo bash scripts/build_images.sh [cpu|gpu|ecvl|all]  # default: all (cpu and ecvl); one JSON line per image
#   sudo DEEPHEALTH_BASE=IMAGE bash scripts/build_images.sh ecvl
#
# - cpu: docker/../Dockerfile on a `debootstrap --variant=minbase` trixie, imported as localhost/debian:trixie-slim.
#   This machine reaches PyPI through a TLS proxy, so its extra CA certificates (/usr/local/share/ca-certificates)
#   go into that local base: images built so are for this machine only and must never be pushed. On a machine
#   that can pull Docker Hub, `docker build .` uses the python image instead (the Dockerfile's default BASE).
# - gpu: the same Dockerfile with ONNXRUNTIME=gpu: onnxruntime-gpu and the CUDA/cuDNN libraries from PyPI (a few
#   GB; built only when asked for: `all` leaves it out). The node needs an NVIDIA driver and the device plugin.
# - ecvl: docker/ecvl.Dockerfile layered over $DEEPHEALTH_BASE, an image the site already has where
#   `python3 -c "import pyecvl.ecvl, pyeddl.eddl"` works (Python >= 3.10). Nothing of DeepHealth is built here.
#   `ecvl` without it is an error; `all` without it builds the CPU image and says that it left the other out.
# - Tags: localhost/mpi-infer:<hash> and localhost/mpi-infer-ecvl:<hash>, the hash of everything that goes into
#   the image (Dockerfile, package, docker/, and the base image's id), so an unchanged tree is not rebuilt;
#   also :latest.
# - Needs root, podman and debootstrap (apt-get install podman buildah debootstrap runc uidmap); crun fails on
#   hosts with hybrid cgroups, so containers.conf selects runc, with ulimits inside the hard limits.
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-all}
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
STATE=${IMAGE_STATE:-/var/tmp/mpi_infer-images}
mkdir -p "$STATE"
# Two test suites at once on one machine: the second waits for the first's build (then finds it cached), and
# neither removes an image the other's containers use (plain `podman rmi` refuses an image in use).
exec 9>"$STATE/lock"
flock 9
log() { echo "[build_images] $*" >&2; }

setup_podman() {
  local conf=/etc/containers/containers.conf
  if ! grep -q '^runtime *= *"runc"' "$conf" 2>/dev/null; then
    mkdir -p /etc/containers
    local nofile nproc
    nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
    [ "$nofile" = unlimited ] && nofile=65536
    [ "$nproc" = unlimited ] && nproc=32768
    nofile=$(( nofile < 20000 ? nofile : 20000 )); nproc=$(( nproc < 32768 ? nproc : 32768 ))
    printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
      "$nofile" "$nofile" "$nproc" "$nproc" >"$conf"
    log "wrote $conf (runc, ulimits nofile=$nofile nproc=$nproc)"
  fi
}

base_image() {  # debootstrap SUITE once, with this host's extra CA certificates
  local suite=$1 tag="localhost/debian:$1-slim"
  if podman image exists "$tag"; then echo "$tag"; return; fi
  local root="$STATE/rootfs-$suite"
  rm -rf "$root"
  log "debootstrap $suite from $MIRROR"
  debootstrap --variant=minbase "$suite" "$root" "$MIRROR" >"$STATE/debootstrap-$suite.log" 2>&1 \
    || { tail -20 "$STATE/debootstrap-$suite.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  tar -C "$root" -c . | podman import -q - "$tag" >/dev/null
  rm -rf "$root"
  echo "$tag"
}

content_hash() {  # files (and folders) that make up an image, and any extra words (a base image's id)
  local files=() extra=()
  for a in "$@"; do if [ -e "$a" ]; then files+=("$a"); else extra+=("$a"); fi; done
  { find "${files[@]}" -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    printf '%s\n' "${extra[@]}"; } | sha256sum | cut -c1-16
}

build() {  # NAME DOCKERFILE CONTEXT BASE HASH [BUILD-ARG ...]
  local name=$1 dockerfile=$2 context=$3 base=$4 hash=$5 tag="localhost/$1:$5"
  local args=()
  for a in "${@:6}"; do args+=(--build-arg "$a"); done
  local t0 cached=true
  t0=$(date +%s)
  if ! podman image exists "$tag"; then
    cached=false
    log "building $tag (log: $STATE/build-$name.log)"
    podman build --build-arg BASE="$base" --build-arg DEEPHEALTH_BASE="$base" "${args[@]}" -f "$dockerfile" \
      -t "$tag" "$context" >"$STATE/build-$name.log" 2>&1 \
      || { tail -40 "$STATE/build-$name.log" >&2; log "build of $name failed"; exit 1; }
  fi
  podman tag "$tag" "localhost/$name:latest"
  # older content hashes go once a day old: another checkout's suite running now (another hash) keeps its image.
  # Untagged build-stage layers stay (they are the cache that makes the next build of a changed package take
  # seconds instead of minutes) unless a week old.
  podman images --filter reference="localhost/$name" --filter until=24h --format "{{.Repository}}:{{.Tag}}" \
    | grep -v -e ":$hash\$" -e ':latest$' | xargs -r podman rmi >/dev/null 2>&1 || true
  podman image prune -f --filter until=168h >/dev/null 2>&1 || true
  local size
  size=$(podman image inspect "$tag" --format '{{.Size}}')
  printf '{"figure": "image", "image": "%s", "tag": "%s", "size_mb": %s, "build_s": %s, "cached": %s}\n' \
    "$name" "$tag" "$(( size / 1000000 ))" "$(( $(date +%s) - t0 ))" "$cached"
}

command -v podman >/dev/null || { log "podman is not installed"; exit 77; }
[ "$(id -u)" = 0 ] || { log "needs root"; exit 77; }
setup_podman

if [ "$WHICH" = cpu ] || [ "$WHICH" = all ]; then
  base=$(base_image trixie)
  build mpi-infer Dockerfile . "$base" "$(content_hash Dockerfile .dockerignore pyproject.toml README.md mpi_infer docker)"
fi
if [ "$WHICH" = gpu ]; then
  base=$(base_image trixie)
  build mpi-infer-gpu Dockerfile . "$base" \
    "$(content_hash Dockerfile .dockerignore pyproject.toml README.md mpi_infer docker gpu)" ONNXRUNTIME=gpu
fi
if [ "$WHICH" = ecvl ] || [ "$WHICH" = all ]; then
  if [ -z "${DEEPHEALTH_BASE:-}" ]; then
    why="DEEPHEALTH_BASE is not set: the ECVL image is layered over an image of your site's DeepHealth build, where python3 -c 'import pyecvl.ecvl, pyeddl.eddl' works (Python >= 3.10); this repository builds no DeepHealth library"
    if [ "$WHICH" = ecvl ]; then log "$why"; exit 2; fi
    log "mpi-infer-ecvl left out: $why"
  else
    base_id=$(podman image inspect --format '{{.Id}}' "$DEEPHEALTH_BASE" 2>/dev/null || echo "$DEEPHEALTH_BASE")
    build mpi-infer-ecvl docker/ecvl.Dockerfile . "$DEEPHEALTH_BASE" \
      "$(content_hash docker pyproject.toml README.md mpi_infer .dockerignore "$base_id")"
  fi
fi
