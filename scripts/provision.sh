#!/usr/bin/env bash
# Provision this machine for shipway: system packages, the virtualenv, the Docker
# engine and the local base image. Idempotent: a second run changes nothing and
# says so. One line per item: "already present", "installed", "started", "built".
#
# Settings (environment):
#   PYTHON               interpreter for .venv (default: python3.11, else python3 >= 3.11)
#   SHIPWAY_BASE_IMAGE   local base image to build (default: shipway/busybox:local)
#   DOCKER_WAIT_SECONDS  how long to wait for a freshly started engine (default: 60)
#
# Docker and HAProxy are needed by later features (builds, replicas, router), not by
# the current tests, and Chromium only by the dashboard's browser tests: if they
# cannot be installed or started here, this prints a WARNING and carries on.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SCRATCH=$ROOT/.scratch
VENV=$ROOT/.venv
STAMP=$VENV/.shipway-pyproject.sha256
BASE_IMAGE=${SHIPWAY_BASE_IMAGE:-shipway/busybox:local}
DOCKER_WAIT_SECONDS=${DOCKER_WAIT_SECONDS:-60}
export DEBIAN_FRONTEND=noninteractive

changes=0
warnings=0
apt_updated=0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

say() { printf '  %-32s %s\n' "$1" "$2"; }
changed() {
  say "$1" "$2"
  changes=$((changes + 1))
}
warn() {
  printf '  %-32s WARNING: %s\n' "$1" "$2" >&2
  warnings=$((warnings + 1))
}

mkdir -p "$SCRATCH"
echo "provision: $ROOT"

# --- system packages -------------------------------------------------------

pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

# package -> how to tell it is present (a command, or the package itself)
has_package() {
  case "$1" in
    redis-server) command -v redis-server >/dev/null ;;
    postgresql) command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ;;
    haproxy) command -v haproxy >/dev/null ;;
    docker.io) command -v dockerd >/dev/null ;;
    busybox-static) pkg_installed busybox-static ;;
    curl) command -v curl >/dev/null ;;
    wrk) command -v wrk >/dev/null ;;
    chromium) command -v chromium >/dev/null ;;
    chromium-driver) command -v chromedriver >/dev/null ;;
    python3.11-venv) pkg_installed python3.11-venv ;;
    docker-registry) command -v docker-registry >/dev/null ;;
    iproute2) command -v ip >/dev/null ;;
    util-linux) command -v nsenter >/dev/null && command -v unshare >/dev/null ;;
    pebble) command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null ;;
    prometheus) command -v promtool >/dev/null ;;
    stress-ng) command -v stress-ng >/dev/null ;;
    *) pkg_installed "$1" ;;
  esac
}

install_optional() { # install_optional WHY PACKAGE...: each one if missing; a failure only warns
  local why=$1 pkg
  shift
  for pkg in "$@"; do
    if has_package "$pkg"; then
      say "$pkg" "already present"
    elif apt_install "$pkg" && has_package "$pkg"; then
      changed "$pkg" "installed"
    else
      warn "$pkg" "could not be installed ($why)"
    fi
  done
}

apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    echo "  (apt-get update)"
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt_updated=1
  fi
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}

pick_python() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
    return
  fi
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo python3.11
}

PY=$(pick_python)
# wrk: the load generator of bench/load.py (make bench, and its smoke in make test).
required=(redis-server postgresql busybox-static curl wrk)
optional=(haproxy docker.io)
# Headless Chromium for the dashboard's browser tests (tests/e2e/test_dashboard.py).
browser=(chromium chromium-driver)
# The multi-node cluster harness (tests/support/cluster.py, make test-cluster): network
# namespaces (ip, nsenter, unshare) and Debian's registry (Distribution 2.8). Its package
# enables a system service on :5000; the harness runs its own registry and never uses it.
cluster=(docker-registry iproute2 util-linux)
# The production topologies (make images, make test-topology): Debian's docker-compose 1.29
# runs docker-compose.yml; debootstrap makes the images' Debian base without a registry.
topology=(docker-compose debootstrap)
# An ACME test server (RFC 8555) and its mock DNS, for automatic HTTPS (tests, demo).
tls=(pebble)
# promtool checks and unit-tests the example alert rules (deploy/prometheus-alerts.yml).
monitoring=(prometheus)
# CPU-bound load beside the suite (make test-busy, scripts/test-busy.sh).
busy=(stress-ng)
# Debian's own interpreter needs python3.11-venv for `-m venv` (pyenv's does not).
if [ ! -x "$VENV/bin/python" ] && ! { command -v "$PY" >/dev/null && "$PY" -c 'import ensurepip, venv' 2>/dev/null; }; then
  required+=(python3.11 python3.11-venv)
fi

missing=()
for pkg in "${required[@]}"; do
  if has_package "$pkg"; then say "$pkg" "already present"; else missing+=("$pkg"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
  for pkg in "${missing[@]}"; do changed "$pkg" "installed"; done
fi
install_optional "needed later for containers and routing" "${optional[@]}"
install_optional "the dashboard's browser tests will be skipped" "${browser[@]}"
install_optional "the HTTPS tests will be skipped" "${tls[@]}"
install_optional "the alert rule tests will be skipped" "${monitoring[@]}"
install_optional "the cluster tests will be skipped" "${cluster[@]}"
install_optional "make images / make test-topology need it" "${topology[@]}"
install_optional "make test-busy will load the CPUs with Python loops instead" "${busy[@]}"

# --- Python virtualenv -----------------------------------------------------

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  say ".venv" "already present"
else
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  changed ".venv" "created with $("$VENV/bin/python" -V 2>&1)"
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" = "$have" ] && "$VENV/bin/python" -c 'import shipway, workers' 2>/dev/null; then
  say "shipway[dev] (editable)" "already present (pyproject.toml unchanged)"
else
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]'
  echo "$want" >"$STAMP"
  changed "shipway[dev] (editable)" "installed into .venv"
fi

# openapi-python-client generates a client from /openapi.json in the tests
# (tests/test_client_integrations.py); its own virtualenv, as it pins httpx and typer
# older than shipway's.
GENERATOR_VENV=$SCRATCH/openapi-client-venv
GENERATOR_SPEC='openapi-python-client>=0.21,<0.30'
if [ -x "$GENERATOR_VENV/bin/openapi-python-client" ]; then
  say "openapi-python-client" "already present (.scratch/openapi-client-venv)"
elif "$PY" -m venv "$GENERATOR_VENV" && "$GENERATOR_VENV/bin/python" -m pip install \
  --disable-pip-version-check -q "$GENERATOR_SPEC"; then
  changed "openapi-python-client" "installed into .scratch/openapi-client-venv"
else
  warn "openapi-python-client" "cannot be installed; the generated-client test will be skipped"
fi

# --- Docker engine and base image (best effort) ---------------------------

docker_ok() { timeout 20 docker info >/dev/null 2>&1; }

if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
  warn "docker engine" "docker/dockerd not installed; skipping the engine and base image"
elif docker_ok; then
  say "docker engine" "already running"
else
  if pgrep -x dockerd >/dev/null 2>&1; then
    echo "  (dockerd is running but not answering yet; waiting)"
  else
    $SUDO bash -c "setsid dockerd >>'$SCRATCH/dockerd.log' 2>&1 </dev/null &"
  fi
  for _ in $(seq 1 "$DOCKER_WAIT_SECONDS"); do
    docker_ok && break
    sleep 1
  done
  if docker_ok; then
    changed "docker engine" "started (log: .scratch/dockerd.log)"
  else
    warn "docker engine" "not answering after ${DOCKER_WAIT_SECONDS}s; see .scratch/dockerd.log"
    tail -n 5 "$SCRATCH/dockerd.log" 2>/dev/null | sed 's/^/      /' >&2 || true
  fi
fi

build_base_image() {
  local work root applet
  work=$(mktemp -d "$SCRATCH/base-image.XXXXXX")
  root=$work/root
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,var/www}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["/bin/sh"]' \
    -m "shipway base image: busybox-static from Debian" \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$work"
}

if docker_ok; then
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "image $BASE_IMAGE" "already present"
  elif [ ! -x /bin/busybox ]; then
    warn "image $BASE_IMAGE" "/bin/busybox (busybox-static) missing; cannot build it"
  elif build_base_image; then
    changed "image $BASE_IMAGE" "built (docker import of busybox-static)"
  else
    warn "image $BASE_IMAGE" "docker import failed"
  fi
elif command -v dockerd >/dev/null; then
  warn "image $BASE_IMAGE" "skipped: the Docker engine is not available"
fi

# --- summary ---------------------------------------------------------------

note=""
if [ "$warnings" -gt 0 ]; then
  note=" ($warnings warning(s) above)"
fi
if [ "$changes" -eq 0 ]; then
  echo "provision: nothing to do, everything was already present$note"
else
  echo "provision: done, $changes change(s)$note"
fi
