#!/usr/bin/env bash
# Build shipway's container images without any public image registry (`make images`).
#
#   1. shipway/debian:bookworm  a Debian root filesystem made with debootstrap from the
#                               Debian archive, then `docker import`ed
#   2. shipway:local            the Dockerfile (API, workers, relay, router) FROM that base,
#                               Python packages installed from a wheelhouse built here
#   3. shipway/support:local    deploy/images/support (PostgreSQL, Redis, registry) FROM it
#
# Idempotent: an image whose inputs (files, base image id) did not change is kept; each
# line says "already present" or "built" and how long it took. Needs root (debootstrap)
# and the Docker engine. A user who can pull from Docker Hub does not need this script:
#   docker build -t shipway:local .                       (BASE defaults to python:3.11-slim)
#   docker build -t shipway/support:local --build-arg BASE=debian:bookworm deploy/images/support
#
# Settings (environment):
#   DEBIAN_MIRROR          Debian archive (default http://deb.debian.org/debian)
#   SHIPWAY_DEBIAN_IMAGE   the imported base (default shipway/debian:bookworm)
#   SHIPWAY_IMAGE          shipway's image (default shipway:local)
#   SHIPWAY_SUPPORT_IMAGE  the support image (default shipway/support:local)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WORK=$ROOT/.scratch/images
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_IMAGE=${SHIPWAY_DEBIAN_IMAGE:-shipway/debian:bookworm}
SHIPWAY_IMAGE=${SHIPWAY_IMAGE:-shipway:local}
SUPPORT_IMAGE=${SHIPWAY_SUPPORT_IMAGE:-shipway/support:local}
# Wheels are resolved by the interpreter the image runs (environment markers such as
# python_full_version differ between 3.11 releases): Debian bookworm's own python3.
WHEEL_PYTHON=${WHEEL_PYTHON:-/usr/bin/python3}
LABEL=shipway.image.inputs

say() { printf '  %-28s %s\n' "$1" "$2"; }
now() { date +%s.%N; }
since() { printf '%.1fs' "$(echo "$(now) - $1" | bc)"; }

# The inputs label of an image ("" if the image is missing).
inputs_of() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
# A digest of files (paths relative to ROOT, contents and names) and extra words.
digest() {
  local extra=$1
  shift
  {
    echo "$extra"
    find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z |
      xargs -0 sha256sum
  } | sha256sum | cut -c1-24
}

mkdir -p "$WORK"
echo "images: $ROOT"
command -v docker >/dev/null || { echo "images: docker is not installed (make provision)" >&2; exit 1; }

# --- 1. Debian base ----------------------------------------------------------
base_inputs="debootstrap minbase bookworm $MIRROR"
if [ "$(inputs_of "$DEBIAN_IMAGE")" = "$base_inputs" ]; then
  say "$DEBIAN_IMAGE" "already present"
else
  started=$(now)
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      --no-install-recommends debootstrap >/dev/null
  fi
  rootfs=$WORK/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -20 "$WORK/debootstrap.log" >&2
    exit 1
  }
  echo "deb $MIRROR bookworm main" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" --numeric-owner -c . |
    docker import \
      --change 'ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive' \
      --change "LABEL $LABEL=\"$base_inputs\"" \
      --change 'CMD ["/bin/bash"]' \
      - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "$DEBIAN_IMAGE" "built ($(since "$started"))"
fi
base_id=$(docker image inspect -f '{{.Id}}' "$DEBIAN_IMAGE")

# --- 2. shipway's image --------------------------------------------------------
# Containers cannot reach PyPI with this machine's pip setup: wheels are made here
# (dependencies once per pyproject.toml, shipway itself every time) and installed offline.
python_version=$("$WHEEL_PYTHON" -c 'import platform; print(platform.python_version())')
deps_key=$( (cat pyproject.toml; echo "$python_version") | sha256sum | cut -c1-16)
wheels=$WORK/wheels-$deps_key
PIP=$WORK/venv-$python_version/bin/pip
if [ ! -x "$PIP" ]; then
  "$WHEEL_PYTHON" -m venv "$WORK/venv-$python_version"
fi
if [ ! -f "$wheels/.complete" ]; then
  started=$(now)
  rm -rf "$WORK"/wheels-*
  "$PIP" wheel -q . -w "$wheels" >"$WORK/wheels.log" 2>&1 || { tail -20 "$WORK/wheels.log" >&2; exit 1; }
  rm -f "$wheels"/shipway-*.whl
  touch "$wheels/.complete"
  say "wheelhouse" "built (Python $python_version, $(ls "$wheels" | wc -l) wheels, $(since "$started"))"
else
  say "wheelhouse" "already present"
fi
inputs=$(digest "$base_id $deps_key" Dockerfile pyproject.toml README.md src workers)
if [ "$(inputs_of "$SHIPWAY_IMAGE")" = "$inputs" ]; then
  say "$SHIPWAY_IMAGE" "already present"
else
  started=$(now)
  context=$WORK/context
  rm -rf "$context"
  mkdir -p "$context/wheels"
  cp -r pyproject.toml README.md src workers "$context/"
  find "$context" -name __pycache__ -prune -exec rm -rf {} +
  cp "$wheels"/*.whl "$context/wheels/"
  "$PIP" wheel -q --no-deps . -w "$context/wheels" >>"$WORK/wheels.log" 2>&1 || {
    tail -20 "$WORK/wheels.log" >&2
    exit 1
  }
  docker build -q -f Dockerfile --build-arg "BASE=$DEBIAN_IMAGE" --label "$LABEL=$inputs" \
    -t "$SHIPWAY_IMAGE" "$context" >"$WORK/build-shipway.log" 2>&1 || {
    tail -30 "$WORK/build-shipway.log" >&2
    exit 1
  }
  rm -rf "$context"
  say "$SHIPWAY_IMAGE" "built ($(since "$started"))"
fi

# --- 3. support image ----------------------------------------------------------
inputs=$(digest "$base_id" deploy/images/support)
if [ "$(inputs_of "$SUPPORT_IMAGE")" = "$inputs" ]; then
  say "$SUPPORT_IMAGE" "already present"
else
  started=$(now)
  docker build -q --build-arg "BASE=$DEBIAN_IMAGE" --label "$LABEL=$inputs" \
    -t "$SUPPORT_IMAGE" deploy/images/support >"$WORK/build-support.log" 2>&1 || {
    tail -30 "$WORK/build-support.log" >&2
    exit 1
  }
  say "$SUPPORT_IMAGE" "built ($(since "$started"))"
fi
