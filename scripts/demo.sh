#!/usr/bin/env bash
# A guided tour of shipway against `shipway up` (embedded mode: SQLite and the
# filesystem Celery transport in a fresh data directory; no Redis, no PostgreSQL).
# Each step prints the curl command it runs, the answer, and what it means.
#
# The story: publish the bundled example site (examples/hello-static) as v1 with
# promote_to=production (2 replicas behind HAProxy), curl its public URL; publish
# v2 and promote it; roll back to v1 (a warm rollback: a router switch only) and
# time it; show the versions' lifecycle fields and the replica containers; cancel
# a promote queued behind another; promote a faulty v4 as a canary (10% → 30% → 60%
# with analysis of the router's statistics, under local traffic) that advances, then
# aborts when the traffic reaches its bug; set a plain config var and a secret (a
# config-only release: the site's /cgi-bin/config page changes, no rebuild), then change
# the var with `shipway config set`; print the audit trail and a summary. The web
# dashboard's link (with the token) is printed at the start: open it to watch. At the
# end it stops everything it started (server, worker, HAProxy) and removes the
# demo's containers and images, so repeated runs leave nothing behind.
#
# Run it with `make demo` (which provisions first) or `bash scripts/demo.sh`.
#   SHIPWAY_DEMO_KEEP=1   keep everything running at the end, until Ctrl-C
#   SHIPWAY_DEMO_PORT=N   use this API port instead of a free one
#   SHIPWAY_ROUTER_PORT_RANGE=low-high   public ports of routes (default: a random block of 100)
# Publishing builds a Docker image and promoting runs containers behind HAProxy:
# without a Docker engine or HAProxy those steps are skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
DATA=$ROOT/.scratch/demo
LOG=$DATA/server.log
EXAMPLE=$ROOT/examples/hello-static
LEFTOVERS=$DATA/cleanup.list # what a run started: read back by the next run if this one was killed
READY_TIMEOUT=60
BUILD_TIMEOUT=180
JOB_TIMEOUT=120
ROLLBACK_TIMEOUT=60
HTTP_TIMEOUT=5

if [ ! -x "$BIN/shipway" ]; then
  echo "demo: $BIN/shipway is missing; run 'make provision' (or 'make demo') first" >&2
  exit 1
fi
[ -f "$EXAMPLE/index.html" ] || {
  echo "demo: the example site $EXAMPLE/index.html is missing" >&2
  exit 1
}

step_no=0
bold="" plain=""
if [ -t 1 ]; then
  bold=$'\033[1m' plain=$'\033[0m'
fi
step() {
  step_no=$((step_no + 1))
  printf '\n%s==> %s. %s%s\n' "$bold" "$step_no" "$*" "$plain"
}
info() { printf '    %s\n' "$*"; }
fail() {
  printf '\ndemo: FAILED: %s\n' "$*" >&2
  exit 1
}
SUMMARY=()
remember() { SUMMARY+=("$*"); } # a line for the summary at the end
now_ms() {                      # wall clock in milliseconds, without a subprocess
  local t=${EPOCHREALTIME//[.,]/}
  echo $((t / 1000))
}

# ---------------------------------------------------------------------------
# Cleanup: the server's process group, the HAProxy of the data directory, and the
# containers and images labelled with the demo's deployments. Each is recorded in
# $LEFTOVERS as soon as it exists, so a run that was killed (-9) is cleaned up by
# the next one before it wipes the data directory.

SERVER_PID=""
TRAFFIC_PID=""
RESPONSE=$(mktemp)

process_matches() { # process_matches PID TEXT: the process runs and its command line holds TEXT
  local pid=$1 text=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$text"
}

stop_group() { # stop_group PGID TEXT: SIGTERM the process group it leads, SIGKILL after 10s
  local pgid=$1 text=$2
  process_matches "$pgid" "$text" || return 0
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    process_matches "$pgid" "$text" || break
    sleep 0.25
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  echo "stopped shipway up (process group $pgid: API, relay, worker)"
}

stop_haproxy() { # stop_haproxy DATA_DIR: the HAProxy master (and its workers) of that data dir
  local dir=$1 pid workers
  local cfg=$dir/router/haproxy.cfg
  [ -f "$dir/router/haproxy.pid" ] || return 0
  pid=$(head -n 1 "$dir/router/haproxy.pid" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  process_matches "$pid" "$cfg" || return 0
  workers=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    process_matches "$pid" "$cfg" || break
    sleep 0.25
  done
  if process_matches "$pid" "$cfg"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  for worker in $workers; do
    if process_matches "$worker" "$cfg"; then
      kill -KILL "$worker" 2>/dev/null || true
    fi
  done
  echo "stopped HAProxy (pid $pid, $cfg)"
}

stop_pid() { # stop_pid PID TEXT: SIGTERM that process if its command line still holds TEXT
  process_matches "$1" "$2" || return 0
  kill -TERM "$1" 2>/dev/null || true
  echo "stopped $2 (pid $1)"
}

stop_registry() { # stop_registry PID: the demo's docker-registry, if that pid still is one
  local pid=$1
  process_matches "$pid" docker-registry || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    process_matches "$pid" docker-registry || break
    sleep 0.25
  done
  process_matches "$pid" docker-registry && kill -KILL "$pid" 2>/dev/null
  echo "stopped the image registry (pid $pid)"
}

remove_docker_objects() { # remove_docker_objects DEPLOYMENT_ID: its containers, then its images
  local dep=$1 ids
  command -v docker >/dev/null 2>&1 || return 0
  ids=$(timeout 30 docker ps -aq --filter "label=shipway.deployment=$dep" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one id per word
    timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
    echo "removed $(wc -w <<<"$ids") container(s) labelled shipway.deployment=$dep"
  fi
  ids=$(timeout 30 docker images -q --filter "label=shipway.deployment=$dep" 2>/dev/null | sort -u || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    timeout 60 docker rmi -f $ids >/dev/null 2>&1 || true
    echo "removed $(wc -w <<<"$ids") image(s) labelled shipway.deployment=$dep"
  fi
}

clean_up() { # clean_up DATA_DIR: everything a run recorded in DATA_DIR/cleanup.list
  local dir=$1 kind value
  local list=$dir/cleanup.list
  # The server first (its worker and reconciler would otherwise restart things), then HAProxy.
  if [ -f "$list" ]; then
    while read -r kind value; do
      [ "$kind" = server ] && stop_group "$value" "shipway up"
    done <"$list"
  fi
  stop_haproxy "$dir"
  if [ -f "$list" ]; then
    while read -r kind value; do
      [ "$kind" = deployment ] && remove_docker_objects "$value"
      [ "$kind" = registry ] && stop_registry "$value"
      [ "$kind" = pebble ] && stop_pid "$value" pebble
    done <"$list"
    rm -f "$list"
  fi
}

on_exit() {
  local status=$?
  trap - INT TERM
  if [ "$status" -ne 0 ] && [ -f "$LOG" ]; then
    echo >&2
    echo "---- last 40 lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2 || true
    echo "----" >&2
  fi
  if [ -d "$DATA" ]; then
    echo
    clean_up "$DATA" | sed 's/^/demo: /'
    SERVER_PID=""
  fi
  stop_traffic
  rm -f "$RESPONSE"
  [ "$status" -eq 0 ] || echo "demo: FAILED (exit $status); the data directory $DATA is kept for a look" >&2
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# HTTP helpers

json() { # json FILE EXPR: a Python expression over the JSON document `d`
  "$BIN/python" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

show() { # show the answer in $RESPONSE: pretty JSON, or a summary expression over it
  if [ -n "${1:-}" ]; then
    json "$RESPONSE" "$1" | sed 's/^/    /'
  else
    "$BIN/python" -m json.tool "$RESPONSE" 2>/dev/null | sed 's/^/    /' || sed 's/^/    /' "$RESPONSE"
  fi
}

# call EXPECTED METHOD PATH [JSON_BODY] [SUMMARY]: run curl, show the command and the
# answer (or SUMMARY, a Python expression over it); EXPECTED is a status like 200 or 200|409.
# Headers for one call go in HEADERS=(...) just before it.
call() {
  local expected=$1 method=$2 path=$3 body=${4:-} summary=${5:-} status
  local args=(-sS --max-time 15 -X "$method" -H "Authorization: Bearer $TOKEN")
  local shown="curl -sS"
  [ "$method" = GET ] || shown+=" -X $method"
  shown+=" \"\$API$path\" -H \"Authorization: Bearer \$TOKEN\""
  for header in "${HEADERS[@]}"; do
    args+=(-H "$header")
    shown+=" -H '$header'"
  done
  if [ -n "$body" ]; then
    args+=(-H 'Content-Type: application/json' --data "$body")
    shown+=" -H 'Content-Type: application/json' -d '$body'"
  fi
  info "\$ $shown"
  status=$(curl "${args[@]}" -o "$RESPONSE" -w '%{http_code}' "$API$path") ||
    fail "curl $method $path did not complete"
  info "HTTP $status"
  show "$summary"
  [[ "$status" =~ ^($expected)$ ]] || fail "$method $path answered HTTP $status, expected $expected"
  HEADERS=()
}
HEADERS=()

get() { # get PATH: GET quietly into $RESPONSE (no output), failing on anything but 200
  local status
  status=$(curl -sS --max-time 15 -H "Authorization: Bearer $TOKEN" -o "$RESPONSE" \
    -w '%{http_code}' "$API$1") || fail "GET $1 did not complete"
  [ "$status" = 200 ] || fail "GET $1 answered HTTP $status: $(head -c 500 "$RESPONSE")"
}

wait_until() { # wait_until SECONDS PATH PYTHON_CONDITION: poll a GET until the condition holds
  local timeout=$1 path=$2 condition=$3 deadline=$((SECONDS + $1))
  while :; do
    curl -sS --max-time 10 -H "Authorization: Bearer $TOKEN" -o "$RESPONSE" "$API$path" ||
      fail "GET $path did not complete"
    [ "$(json "$RESPONSE" "$condition" 2>/dev/null || echo False)" = True ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || {
      show
      fail "GET $path: '$condition' still false after ${timeout}s"
    }
    sleep 0.5
  done
}

ENDED='d["state"] in ("succeeded", "failed", "cancelled")'
JOB_LINE='"job %s (%s): %s, phase %s, attempts %s" % (d["id"], d["kind"], d["state"], d["phase"], d["attempts"])'

wait_job() { # wait_job JOB_ID [EXPECTED_STATE]: until the job ends; fail unless it ended so
  local job=$1 expected=${2:-succeeded}
  wait_until "$JOB_TIMEOUT" "/api/v1/jobs/$job" "$ENDED"
  if [ "$(json "$RESPONSE" 'd["state"]')" != "$expected" ]; then
    show '"\n".join(f"{k}: {d[k]}" for k in ("id", "kind", "state", "phase", "failure_reason", "failure_diagnostics"))'
    fail "job $job ended $(json "$RESPONSE" 'd["state"]'), expected $expected"
  fi
}

# phases JOB_ID: the job's audit trail in a compact form: offset from the first event,
# time of day, and the job's state changes, phases (with their details) and releases.
phases() {
  get "/api/v1/jobs/$1/audit"
  "$BIN/python" - "$RESPONSE" <<'PY' | sed 's/^/    /'
import json, sys
from datetime import datetime

events = json.load(open(sys.argv[1]))
start = None
for e in events:
    at = datetime.fromisoformat(e["created_at"].replace("Z", "+00:00"))
    start = start or at
    offset = (at - start).total_seconds()
    if e["subject_type"] == "job_phase":
        what = "phase   " + e["to_state"]
        details = " ".join(f"{k}={v}" for k, v in e["data"].items() if k != "image")
        what += f"  ({details})" if details else ""
    elif e["subject_type"] == "job":
        what = f"job     {e['from_state']} -> {e['to_state']}"
    else:
        what = f"{e['subject_type']:<8}{e['from_state']} -> {e['to_state']}  ({e['reason']})"
    print(f"+{offset:6.3f}s  {at:%H:%M:%S.%f}"[:-3] + f"  {what}")
PY
}

phase_names() { # phase_names JOB_ID: the phases a job went through, space-separated
  get "/api/v1/jobs/$1/audit"
  json "$RESPONSE" '" ".join(e["to_state"] for e in d if e["subject_type"] == "job_phase")'
}

# page_version URL: the version the example page says it is, else what answered instead
page_version() {
  local page status version
  page=$(curl -sS --max-time "$HTTP_TIMEOUT" -w '\n%{http_code}' "$1" 2>/dev/null) || {
    echo "no-answer"
    return 0
  }
  status=${page##*$'\n'}
  version=$(grep -o 'id="version">[^<]*' <<<"$page" | head -n 1 | cut -d '>' -f 2 || true)
  echo "${version:-HTTP-$status}"
}

# check_listeners URL: only this data directory's HAProxy may listen on the URL's port.
# (HAProxy binds with SO_REUSEPORT: a second router that picked the same port binds too,
# silently, and the kernel then splits the connections between the two.)
check_listeners() {
  local port=${1##*:} pids pid
  command -v ss >/dev/null 2>&1 || return 0
  pids=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d = -f 2 | sort -u || true)
  for pid in $pids; do
    process_matches "$pid" "$DATA/router/haproxy.cfg" ||
      fail "port $port of $1 is also bound by pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c 1-160)): two routers share it"
  done
}

# curl_public EXPECTED: curl the environment's public URL a few times; every answer must be
# EXPECTED (new connections each time, so both replicas are likely to answer)
curl_public() {
  local expected=$1 answers=() answer
  check_listeners "$PUBLIC_URL"
  info "\$ curl -sS $PUBLIC_URL  (4 times, each a new connection)"
  for _ in 1 2 3 4; do
    answer=$(page_version "$PUBLIC_URL")
    answers+=("$answer")
  done
  info "answered: ${answers[*]}"
  for answer in "${answers[@]}"; do
    [ "$answer" = "$expected" ] || fail "$PUBLIC_URL answered '$answer', expected $expected"
  done
  info "=> $expected answers at $PUBLIC_URL"
}

# publish LABEL KEY [-F field=value ...]: the example site with its VERSION placeholders
# set to LABEL, as a tar.gz; sets PUBLISHED_VERSION and PUBLISH_JOB
publish() {
  local label=$1 key=$2 status shown fields=()
  shift 2
  local site=$DATA/sites/$label
  rm -rf "$site"
  mkdir -p "$site"
  cp -R "$EXAMPLE/." "$site/"
  sed -i "s/{{VERSION}}/$label/g" "$site/index.html"
  if [ -n "${SITE_HOOK:-}" ]; then "$SITE_HOOK" "$site"; fi
  tar -C "$site" -czf "$DATA/sites/$label.tar.gz" .
  fields=(-F "source=@$DATA/sites/$label.tar.gz" -F git_branch=main -F "git_message=hello-static $label" "$@")
  shown="curl -sS -X POST \"\$API/api/v1/deployments/$DEPLOYMENT/versions\" -H \"Authorization: Bearer \$TOKEN\" -H 'Idempotency-Key: $key' -F source=@$label.tar.gz -F git_branch=main -F 'git_message=hello-static $label'"
  for field in "$@"; do
    [ "$field" = -F ] || shown+=" -F $field"
  done
  info "(the site is $EXAMPLE with VERSION set to $label, archived as $DATA/sites/$label.tar.gz)"
  info "\$ $shown"
  status=$(curl -sS --max-time 60 -X POST "$API/api/v1/deployments/$DEPLOYMENT/versions" \
    -H "Authorization: Bearer $TOKEN" -H "Idempotency-Key: $key" "${fields[@]}" \
    -o "$RESPONSE" -w '%{http_code}') || fail "publish did not complete"
  info "HTTP $status"
  show '"\n".join(f"{k}: {v}" for k, v in [("version", d["version"]["id"]), ("version_number", d["version"]["version_number"]), ("state", d["version"]["state"]), ("job", d["job"]["id"]), ("job kind/queue/state", "/".join([d["job"]["kind"], d["job"]["queue"], d["job"]["state"]]))])'
  [ "$status" = 202 ] || fail "publish answered HTTP $status, expected 202"
  PUBLISHED_VERSION=$(json "$RESPONSE" 'd["version"]["id"]')
  PUBLISH_JOB=$(json "$RESPONSE" 'd["job"]["id"]')
}

wait_built() { # wait_built VERSION_ID: until the build ended; fail unless it is ready
  wait_until "$BUILD_TIMEOUT" "/api/v1/deployments/$DEPLOYMENT/versions/$1" \
    'd["state"] in ("ready", "failed")'
  if [ "$(json "$RESPONSE" 'd["state"]')" != ready ]; then
    show '"\n".join(f"{k}: {d[k]}" for k in ("id", "state", "build_failure_reason", "build_failure_diagnostics"))'
    fail "the build of $1 failed: $(json "$RESPONSE" 'd["build_failure_reason"]')"
  fi
}

# start_traffic PATH...: about 60 requests a second to the public URL in the background
# (a new connection each), cycling through the paths in $DATA/traffic.paths, which
# change_traffic rewrites; it stops when $DATA/traffic.on goes.
start_traffic() {
  echo "$*" >"$DATA/traffic.paths"
  touch "$DATA/traffic.on"
  "$BIN/python" - "$PUBLIC_URL" "$DATA" <<'PY' &
import os, sys, time, urllib.error, urllib.request

base, data = sys.argv[1].rstrip("/"), sys.argv[2]
while os.path.exists(os.path.join(data, "traffic.on")):
    try:
        paths = open(os.path.join(data, "traffic.paths")).read().split() or ["/"]
    except OSError:
        paths = ["/"]
    for path in paths:
        started = time.monotonic()
        try:
            urllib.request.urlopen(base + path, timeout=2).read()
        except (urllib.error.HTTPError, OSError):
            pass  # a 4xx/5xx answer is still traffic
        time.sleep(max(0.0, 1 / 60 - (time.monotonic() - started)))
PY
  TRAFFIC_PID=$!
}
change_traffic() { echo "$*" >"$DATA/traffic.paths.new" && mv "$DATA/traffic.paths.new" "$DATA/traffic.paths"; }
stop_traffic() {
  [ -n "${TRAFFIC_PID:-}" ] || return 0
  rm -f "$DATA/traffic.on"
  wait "$TRAFFIC_PID" 2>/dev/null || true
  TRAFFIC_PID=""
}

# page_config: the example site's config page (/cgi-bin/config), or what answered instead
page_config() {
  curl -sS --max-time "$HTTP_TIMEOUT" "$PUBLIC_URL/cgi-bin/config" 2>/dev/null || echo "no-answer"
}

# A site with a bug only some requests hit: /cgi-bin/page answers 500 (busybox httpd CGI).
add_faulty_page() {
  mkdir -p "$1/cgi-bin"
  printf '#!/bin/sh\nprintf "Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nbug\\n"\n' >"$1/cgi-bin/page"
  chmod 755 "$1/cgi-bin/page"
}

CANARY_LINE='(lambda c: "canary %-9s step %s/%s at %3s%%  last analysis: %s" % (c.get("state"), (c.get("step_index") or 0) + 1, c.get("step_count"), c.get("weight"), (lambda a: "%s (%s requests, %s 5xx)" % (a["verdict"], a["requests"], a["errors_5xx"]) if a else "none yet")(c.get("last_analysis"))) if c else "job %s, phase %s (no canary yet)" % (d["state"], d["phase"]))((d["progress"] or {}).get("canary"))'

LIFECYCLE='"\n".join(f"{k}: {d[k]}" for k in ("id", "version_number", "state", "environment", "status", "replicas", "deployed_at", "rollback_count", "last_rollback_at", "rolled_back_at", "image_url"))'

# ---------------------------------------------------------------------------

step "Fresh data directory"
if [ -d "$DATA" ]; then
  clean_up "$DATA" | sed 's/^/    previous run: /'
fi
rm -rf "$DATA"
mkdir -p "$DATA/sites"
info "wiped and created $DATA"

PORT=${SHIPWAY_DEMO_PORT:-$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
API=http://127.0.0.1:$PORT
export SHIPWAY_DATA_DIR=$DATA SHIPWAY_API_PORT=$PORT SHIPWAY_API_HOST=127.0.0.1
unset SHIPWAY_DATABASE_URL SHIPWAY_BROKER_URL SHIPWAY_PUBLIC_URL SHIPWAY_ROUTER_DIR
SCALE_DOWN_DELAY=${SHIPWAY_SCALE_DOWN_DELAY_SECONDS:-60}
# Public ports: shipway gives each route the first free port of its range, so every shipway
# on this host (test suites included) races for 20000, 20001, ...; the demo takes a random
# block of 100 ports of its own instead (set SHIPWAY_ROUTER_PORT_RANGE to choose one).
if [ -z "${SHIPWAY_ROUTER_PORT_RANGE:-}" ]; then
  port_base=$((21000 + RANDOM % 80 * 100))
  export SHIPWAY_ROUTER_PORT_RANGE=$port_base-$((port_base + 99))
fi

REGISTRY_URL=""
if [ -n "${SHIPWAY_REGISTRY:-}" ]; then
  remember "image registry: yours, SHIPWAY_REGISTRY=$SHIPWAY_REGISTRY"
elif [ "${SHIPWAY_DEMO_REGISTRY:-1}" = 1 ] && command -v docker-registry >/dev/null 2>&1 &&
  timeout 20 docker info >/dev/null 2>&1; then
  step "Start an image registry (Debian's docker-registry, Distribution 2.8): builds push there"
  REGISTRY_PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  REGISTRY_CONFIG=$DATA/registry/config.yml
  mkdir -p "$DATA/registry/data"
  # JSON is YAML; Docker trusts a plain-HTTP registry on 127.0.0.0/8 without configuration.
  cat >"$REGISTRY_CONFIG" <<JSON
{"version": 0.1, "log": {"level": "warn"},
 "storage": {"filesystem": {"rootdirectory": "$DATA/registry/data"}, "delete": {"enabled": true}},
 "http": {"addr": "127.0.0.1:$REGISTRY_PORT"}}
JSON
  setsid docker-registry serve "$REGISTRY_CONFIG" >"$DATA/registry/registry.log" 2>&1 </dev/null &
  echo "registry $!" >>"$LEFTOVERS"
  deadline=$((SECONDS + 20))
  until curl -fsS --max-time 2 "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the registry did not answer on 127.0.0.1:$REGISTRY_PORT (log: $DATA/registry/registry.log)"
    sleep 0.2
  done
  export SHIPWAY_REGISTRY=127.0.0.1:$REGISTRY_PORT/demo
  export SHIPWAY_REGISTRY_API_URL=http://127.0.0.1:$REGISTRY_PORT
  export SHIPWAY_REGISTRY_GC_COMMAND="docker-registry garbage-collect --delete-untagged $REGISTRY_CONFIG"
  REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT
  info "http://127.0.0.1:$REGISTRY_PORT/v2/ answers; log $DATA/registry/registry.log"
  info "\$ export SHIPWAY_REGISTRY=$SHIPWAY_REGISTRY SHIPWAY_REGISTRY_API_URL=$SHIPWAY_REGISTRY_API_URL"
  info "=> every build is pushed there and the version runs from repository@sha256:digest,"
  info "   as replicas on a swarm must (README: 'Replicas on a Docker Swarm'); SHIPWAY_DEMO_REGISTRY=0 skips it"
  remember "image registry: $REGISTRY_URL (images under $SHIPWAY_REGISTRY)"
fi

ACME_ROOT=""
if [ "${SHIPWAY_DEMO_HTTPS:-1}" = 1 ] && command -v pebble >/dev/null 2>&1 &&
  command -v pebble-challtestsrv >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 &&
  [ -z "${SHIPWAY_ACME_DIRECTORY_URL:-}" ]; then
  step "Start an ACME server (Debian's pebble, with its mock DNS) and turn on host routing + HTTPS"
  free_port() { "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  HTTP_PORT=$(free_port)
  HTTPS_PORT=$(free_port)
  ACME_PORT=$(free_port)
  ACME_MGMT=$(free_port)
  DNS_PORT=$(free_port)
  mkdir -p "$DATA/pebble"
  # pebble's own HTTPS listener: a throwaway self-signed certificate for 127.0.0.1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$DATA/pebble/key.pem" -out "$DATA/pebble/cert.pem" >/dev/null 2>&1 ||
    fail "openssl could not make pebble's listener certificate"
  cat >"$DATA/pebble/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$ACME_PORT", "managementListenAddress": "127.0.0.1:$ACME_MGMT",
 "certificate": "$DATA/pebble/cert.pem", "privateKey": "$DATA/pebble/key.pem",
 "httpPort": $HTTP_PORT, "tlsPort": $(free_port), "ocspResponderURL": "",
 "externalAccountBindingRequired": false}}
JSON
  setsid pebble-challtestsrv -dns01 "127.0.0.1:$DNS_PORT" -http01 "" -https01 "" -tlsalpn01 "" \
    -management "127.0.0.1:$(free_port)" -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
    >"$DATA/pebble/challtestsrv.log" 2>&1 </dev/null &
  echo "pebble $!" >>"$LEFTOVERS"
  PEBBLE_VA_NOSLEEP=1 setsid pebble -config "$DATA/pebble/pebble.json" -dnsserver "127.0.0.1:$DNS_PORT" \
    >"$DATA/pebble/pebble.log" 2>&1 </dev/null &
  echo "pebble $!" >>"$LEFTOVERS"
  deadline=$((SECONDS + 20))
  until curl -fsS --max-time 2 --cacert "$DATA/pebble/cert.pem" "https://127.0.0.1:$ACME_PORT/dir" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "pebble did not answer (log: $DATA/pebble/pebble.log)"
    sleep 0.2
  done
  curl -fsS --cacert "$DATA/pebble/cert.pem" "https://127.0.0.1:$ACME_MGMT/roots/0" >"$DATA/pebble/root.pem" ||
    fail "pebble's root certificate could not be read"
  ACME_ROOT=$DATA/pebble/root.pem
  export SHIPWAY_ROUTER_HTTP_PORT=$HTTP_PORT SHIPWAY_ROUTER_HTTPS_PORT=$HTTPS_PORT
  export SHIPWAY_ACME_DIRECTORY_URL=https://127.0.0.1:$ACME_PORT/dir SHIPWAY_ACME_CA_BUNDLE=$DATA/pebble/cert.pem
  info "ACME directory $SHIPWAY_ACME_DIRECTORY_URL (it validates HTTP-01 on port $HTTP_PORT; its mock DNS says 127.0.0.1)"
  info "\$ export SHIPWAY_ROUTER_HTTP_PORT=$HTTP_PORT SHIPWAY_ROUTER_HTTPS_PORT=$HTTPS_PORT SHIPWAY_ACME_DIRECTORY_URL=..."
  info "=> every environment also answers at https://<environment>.<deployment>-<id>.shipway.localhost:$HTTPS_PORT"
  info "   once pebble issued its certificate (pebble's root, to trust it: $ACME_ROOT); SHIPWAY_DEMO_HTTPS=0 skips this"
fi

step "Start 'shipway up' (embedded: SQLite + filesystem Celery transport; API, relay and one worker)"
setsid "$BIN/shipway" up >"$LOG" 2>&1 </dev/null &
SERVER_PID=$!
echo "server $SERVER_PID" >>"$LEFTOVERS"
info "pid $SERVER_PID, log $LOG"
info "public ports of routes: $SHIPWAY_ROUTER_PORT_RANGE; replicas stay warm ${SCALE_DOWN_DELAY}s after they are replaced"
info "waiting for $API/readyz (database and broker reachable) ..."
deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS --max-time 2 "$API/readyz" >"$RESPONSE" 2>/dev/null; do
  kill -0 "$SERVER_PID" 2>/dev/null || fail "shipway up exited before it was ready"
  [ "$SECONDS" -lt "$deadline" ] || fail "$API/readyz not ready after ${READY_TIMEOUT}s"
  sleep 0.5
done
info "ready: $(cat "$RESPONSE")"

step "Create a workspace and an API token with the CLI"
info "\$ shipway tokens create --workspace demo --scope deployments:write --json"
"$BIN/shipway" tokens create --workspace demo --scope deployments:write --json \
  >"$DATA/token.json" 2>>"$LOG" || fail "shipway tokens create failed"
TOKEN=$(json "$DATA/token.json" 'd["token"]')
info "token $(json "$DATA/token.json" 'd["token_id"]') in workspace $(json "$DATA/token.json" 'd["workspace_id"]')"
info "scopes: $(json "$DATA/token.json" '", ".join(d["scopes"])') (write implies read)"
info "the secret is printed once; this demo keeps it in $DATA/token.json"
DASHBOARD_URL="$API/dashboard#token=$TOKEN"
echo "$DASHBOARD_URL" >"$DATA/dashboard.url"
info ""
info "${bold}Web dashboard: open this link in a browser now to watch the rest live${plain}"
info "  $DASHBOARD_URL"
info "  (the page keeps the token in the browser's localStorage and drops it from the URL;"
info "   the canary near the end is on its Queue page and on the job's page)"

step "Create a static deployment with 2 replicas per environment"
call 201 POST /api/v1/deployments '{"name":"hello","kind":"static","replicas":2}' \
  '"\n".join(f"{k}: {d[k]}" for k in ("id", "name", "kind", "replicas", "runtime_port", "health_check_path"))'
DEPLOYMENT=$(json "$RESPONSE" 'd["id"]')
echo "deployment $DEPLOYMENT" >>"$LEFTOVERS"
info "=> deployment $DEPLOYMENT with environment(s): $(json "$RESPONSE" '", ".join(e["name"] for e in d["environments"])')"

step "List its versions (newest first, keyset-paged with next_cursor)"
call 200 GET "/api/v1/deployments/$DEPLOYMENT/versions?limit=10"
info "=> none yet"

skip=""
if ! timeout 20 docker info >/dev/null 2>&1; then
  skip="no Docker engine answers here ('docker info' failed); run 'make provision' to start one"
elif ! command -v "${SHIPWAY_HAPROXY_BINARY:-haproxy}" >/dev/null 2>&1; then
  skip="HAProxy (${SHIPWAY_HAPROXY_BINARY:-haproxy}) is not installed; run 'make provision'"
fi

PUBLIC_URL=""
if [ -n "$skip" ]; then
  step "Publish, build, promote and roll back: SKIPPED"
  info "$skip"
  remember "publish/promote/rollback skipped: $skip"
else
  step "Publish v1 of the example site with promote_to=production; a worker builds it"
  publish v1 publish-v1 -F promote_to=production
  V1=$PUBLISHED_VERSION
  V1_PUBLISH_JOB=$PUBLISH_JOB
  info "=> promote_to=production: once the build is ready, the build job queues the promote itself"

  step "Follow the build log until the build ends"
  info "\$ curl -sS \"\$API/api/v1/deployments/$DEPLOYMENT/versions/$V1/build-log?follow=1\" -H \"Authorization: Bearer \$TOKEN\""
  curl -sS --max-time "$BUILD_TIMEOUT" -H "Authorization: Bearer $TOKEN" \
    "$API/api/v1/deployments/$DEPLOYMENT/versions/$V1/build-log?follow=1" | sed 's/^/    | /' ||
    fail "the build log did not end within ${BUILD_TIMEOUT}s"
  wait_built "$V1"

  step "Get the version: state ready, artifact digest, image, provenance"
  call 200 GET "/api/v1/deployments/$DEPLOYMENT/versions/$V1" "" \
    '"\n".join(f"{k}: {d[k]}" for k in ("id", "version_number", "state", "artifact_sha256", "runtime_image", "runtime_command", "git_branch", "git_message"))'
  if [ -n "$REGISTRY_URL" ]; then
    info "=> runtime_image is the registry's repository@sha256:digest; the registry lists:"
    info "\$ curl -sS $REGISTRY_URL/v2/_catalog"
    curl -sS --max-time 10 "$REGISTRY_URL/v2/_catalog" | sed 's/^/    /' || fail "the registry's catalog did not answer"
    echo
    case "$(json "$RESPONSE" 'd["runtime_image"]')" in
      "$SHIPWAY_REGISTRY"/*@sha256:*) ;;
      *) fail "v1 does not run from the registry by digest: $(json "$RESPONSE" 'd["runtime_image"]')" ;;
    esac
  fi

  step "The build job queued the promote: its result names the promote job"
  wait_job "$V1_PUBLISH_JOB"
  call 200 GET "/api/v1/jobs/$V1_PUBLISH_JOB" "" "$JOB_LINE"' + "\nresult: %s" % d["result"]'
  PROMOTE1=$(json "$RESPONSE" '(d["result"] or {}).get("promote_job_id") or ""')
  [ -n "$PROMOTE1" ] || fail "the publish job's result has no promote_job_id (promote_to was ignored)"

  step "Wait for the promote of v1: 2 replicas started, health-checked, then HAProxy switched"
  info "polling GET /api/v1/jobs/$PROMOTE1 until it ends ..."
  wait_job "$PROMOTE1"
  show "$JOB_LINE"
  info "its audit trail (GET /api/v1/jobs/$PROMOTE1/audit), compact:"
  phases "$PROMOTE1"

  step "The deployment: production's release ACTIVE, its replicas and public URL"
  wait_until "$JOB_TIMEOUT" "/api/v1/deployments/$DEPLOYMENT" \
    '[e["status"] for e in d["environments"] if e["name"] == "production"] == ["ACTIVE"]'
  call 200 GET "/api/v1/deployments/$DEPLOYMENT" "" \
    '"\n".join("%s: version %s, release %s %s, %s replicas, public_url %s" % (e["name"], e["active_version_number"], e["release_id"], e["status"], e["replicas"], e["public_url"]) for e in d["environments"])'
  # route_url: production's own port (plain HTTP); public_url turns https once a certificate exists
  PUBLIC_URL=$(json "$RESPONSE" '[e["route_url"] for e in d["environments"] if e["name"] == "production"][0] or ""')
  [ -n "$PUBLIC_URL" ] || fail "production has no public_url after its promote"

  step "Ask production which version answers (through HAProxy)"
  curl_public v1
  remember "v1 published with promote_to=production (2 replicas): $PUBLIC_URL answered v1"

  if [ -n "$ACME_ROOT" ]; then
    step "HTTPS: production's generated hostname, with a certificate issued by the ACME server"
    info "the relay gave production a hostname, asked pebble for a certificate (HTTP-01, answered by HAProxy)"
    info "and installed it in the running HAProxy through its runtime API (no reload); waiting for it ..."
    wait_until "$JOB_TIMEOUT" "/api/v1/deployments/$DEPLOYMENT/environments/production/domains" \
      'd["data"] and all((r["certificate"] or {}).get("status") == "issued" for r in d["data"])'
    call 200 GET "/api/v1/deployments/$DEPLOYMENT/environments/production/domains" "" \
      '"\n".join("%s (%s): certificate %s by %s until %s" % (r["hostname"], r["kind"], r["certificate"]["status"], r["certificate"]["issuer"], r["certificate"]["not_after"]) for r in d["data"])'
    HOSTNAME_URL=https://$(json "$RESPONSE" 'd["data"][0]["hostname"]'):$HTTPS_PORT
    info "\$ curl -sS --cacert $ACME_ROOT $HOSTNAME_URL/   (curl resolves *.localhost to 127.0.0.1 itself)"
    answer=$(curl -sS --max-time "$HTTP_TIMEOUT" --cacert "$ACME_ROOT" "$HOSTNAME_URL/" | grep -o 'id="version">[^<]*' | cut -d '>' -f 2 || true)
    [ "$answer" = v1 ] || fail "$HOSTNAME_URL answered '$answer', expected v1"
    info "=> v1 answers over HTTPS, the chain verified against pebble's root"
    HTTP_HOST_URL=http://${HOSTNAME_URL#https://}
    HTTP_HOST_URL=${HTTP_HOST_URL%:*}:$HTTP_PORT
    info "\$ curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' $HTTP_HOST_URL/"
    info "$(curl -sS -o /dev/null -w '%{http_code} -> %{redirect_url}' --max-time "$HTTP_TIMEOUT" "$HTTP_HOST_URL/")"
    call 200 GET "/api/v1/deployments/$DEPLOYMENT" "" \
      '"\n".join("%s: public_url %s, route_url %s" % (e["name"], e["public_url"], e["route_url"]) for e in d["environments"])'
    remember "HTTPS: $HOSTNAME_URL answered v1 with a certificate from pebble (root: $ACME_ROOT)"
  fi

  step "Cancel: a job that already ended cannot be cancelled (HTTP 409, the one error shape)"
  call 409 POST "/api/v1/jobs/$PROMOTE1/cancel"

  step "Publish v2 (no promote_to this time) and wait for its build"
  publish v2 publish-v2
  V2=$PUBLISHED_VERSION
  wait_built "$V2"
  info "=> v2 is $(json "$RESPONSE" 'd["state"]'): image $(json "$RESPONSE" 'd["runtime_image"]')"

  step "Promote v2 to production (Idempotency-Key required)"
  HEADERS=("Idempotency-Key: promote-v2")
  call 202 POST "/api/v1/deployments/$DEPLOYMENT/versions/$V2/promote" \
    '{"environment":"production"}' \
    '"\n".join(["release: " + d["release"]["id"] + " " + d["release"]["status"], "job: " + d["job"]["id"] + " " + d["job"]["kind"] + " " + d["job"]["state"]])'
  PROMOTE2=$(json "$RESPONSE" 'd["job"]["id"]')
  info "the same key with the same body again replays the first answer and runs nothing again:"
  HEADERS=("Idempotency-Key: promote-v2")
  call 202 POST "/api/v1/deployments/$DEPLOYMENT/versions/$V2/promote" \
    '{"environment":"production"}' '"job: " + d["job"]["id"]'
  [ "$(json "$RESPONSE" 'd["job"]["id"]')" = "$PROMOTE2" ] || fail "the replay answered another job"
  info "=> same job $PROMOTE2 (with another body the same key is a 422)"

  step "Watch the promote of v2 until it ends; its phases from GET /api/v1/jobs/{id}/audit"
  wait_job "$PROMOTE2"
  show "$JOB_LINE"' + "\nresult: %s" % d["result"]'
  phases "$PROMOTE2"
  info "=> v1's replicas are out of the router but stay up for SHIPWAY_SCALE_DOWN_DELAY_SECONDS=$SCALE_DOWN_DELAY"
  info "   (a retire job is scheduled): a rollback within that window is a router switch only"

  step "Ask production again"
  curl_public v2
  remember "v2 published and promoted: $PUBLIC_URL answered v2 (phases: $(phase_names "$PROMOTE2"))"

  step "Roll back production (POST /rollback: the most recent earlier version, v1) and time it"
  started=$(now_ms)
  HEADERS=("Idempotency-Key: rollback-1")
  call 202 POST "/api/v1/deployments/$DEPLOYMENT/rollback" '{"environment":"production"}' \
    '"\n".join(["release: %s %s (version %s)" % (d["release"]["id"], d["release"]["status"], d["release"]["version_id"]), "job: %s %s %s" % (d["job"]["id"], d["job"]["kind"], d["job"]["state"])])'
  ROLLBACK=$(json "$RESPONSE" 'd["job"]["id"]')
  [ "$(json "$RESPONSE" 'd["release"]["version_id"]')" = "$V1" ] || fail "the rollback does not target v1 ($V1)"
  info "polling $PUBLIC_URL until v1 answers ..."
  answer=""
  until [ "$answer" = v1 ]; do
    [ $(($(now_ms) - started)) -lt $((ROLLBACK_TIMEOUT * 1000)) ] ||
      fail "$PUBLIC_URL still answers '$answer' ${ROLLBACK_TIMEOUT}s after the rollback request"
    answer=$(page_version "$PUBLIC_URL")
    [ "$answer" = v1 ] || sleep 0.05
  done
  elapsed_ms=$(($(now_ms) - started))
  ROLLBACK_SECONDS=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
  info "=> v1 answered ${ROLLBACK_SECONDS}s after the rollback request"
  wait_job "$ROLLBACK"
  get "/api/v1/jobs/$ROLLBACK/audit"
  ROLLBACK_PARTS=$("$BIN/python" - "$RESPONSE" <<'PY'
import json, sys
from datetime import datetime

events = json.load(open(sys.argv[1]))
at = {}
for e in events:  # the first time each state was reached
    at.setdefault(e["to_state"], datetime.fromisoformat(e["created_at"].replace("Z", "+00:00")))
wait = (at["running"] - at["queued"]).total_seconds()
switch = (at["ACTIVE"] - at["switch"]).total_seconds()
print(f"waiting for a worker {wait:.3f}s, the switch itself {switch:.3f}s")
PY
  ) || fail "cannot read the rollback job's audit"
  info "   of which (from the job's audit): $ROLLBACK_PARTS"

  step "The rollback job: warm (a switch back to v1's running replicas, no new containers)"
  get "/api/v1/jobs/$ROLLBACK"
  show "$JOB_LINE"' + "\nresult: %s" % d["result"]'
  phases "$ROLLBACK"
  ROLLBACK_PHASES=$(phase_names "$ROLLBACK")
  case " $ROLLBACK_PHASES " in
  *" scale "* | *" health_check "*)
    fail "the rollback was cold (phases: $ROLLBACK_PHASES): v1's replicas were gone (SHIPWAY_SCALE_DOWN_DELAY_SECONDS=$SCALE_DOWN_DELAY)"
    ;;
  *" switch "*) info "=> warm: phases '$ROLLBACK_PHASES' (no scale, no health check): only the router changed" ;;
  *) fail "the rollback job has no switch phase (phases: $ROLLBACK_PHASES)" ;;
  esac
  remember "rollback to v1: warm (phases: $ROLLBACK_PHASES); v1 answered ${ROLLBACK_SECONDS}s after POST /rollback ($ROLLBACK_PARTS)"

  step "Ask production once more"
  curl_public v1
  remember "after the rollback $PUBLIC_URL answered v1"

  step "v1's lifecycle in production: ACTIVE again, rollback_count 1, last_rollback_at"
  call 200 GET "/api/v1/versions/$V1?environment=production" "" "$LIFECYCLE"
  [ "$(json "$RESPONSE" '(d["status"], d["rollback_count"], d["last_rollback_at"] is not None)')" = "('ACTIVE', 1, True)" ] ||
    fail "v1 should be ACTIVE with rollback_count 1 and a last_rollback_at"

  step "v2's lifecycle in production: ROLLED_BACK, rolled_back_at"
  call 200 GET "/api/v1/versions/$V2?environment=production" "" "$LIFECYCLE"
  [ "$(json "$RESPONSE" '(d["status"], d["rolled_back_at"] is not None)')" = "('ROLLED_BACK', True)" ] ||
    fail "v2 should be ROLLED_BACK with a rolled_back_at"
  remember "GET /versions: v1 ACTIVE rollback_count 1; v2 ROLLED_BACK"

  step "The replica containers (labelled with their deployment, version, release, replica)"
  info "\$ docker ps --filter label=shipway.deployment=$DEPLOYMENT"
  docker ps --filter "label=shipway.deployment=$DEPLOYMENT" \
    --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}' | sed 's/^/    /'
  info "=> v1's two replicas serve; v2's stay up (out of the router) until their retire job,"
  info "   ${SCALE_DOWN_DELAY}s after the rollback, stops and removes them"

  step "Cancel a promote queued behind another rollout of the same environment"
  info "rollouts of one environment run one at a time; publish v3 and promote it twice:"
  publish v3 publish-v3
  V3=$PUBLISHED_VERSION
  wait_built "$V3"
  HEADERS=("Idempotency-Key: promote-v3-a")
  call 202 POST "/api/v1/deployments/$DEPLOYMENT/versions/$V3/promote" '{"environment":"production"}' \
    '"job %s %s, queue_position %s" % (d["job"]["id"], d["job"]["state"], d["job"]["queue_position"])'
  FIRST=$(json "$RESPONSE" 'd["job"]["id"]')
  HEADERS=("Idempotency-Key: promote-v3-b")
  call 202 POST "/api/v1/deployments/$DEPLOYMENT/versions/$V3/promote" '{"environment":"production"}' \
    '"job %s %s, queue_position %s" % (d["job"]["id"], d["job"]["state"], d["job"]["queue_position"])'
  QUEUED=$(json "$RESPONSE" 'd["job"]["id"]')
  info "=> the second waits behind the first; cancel it: a queued job is cancelled at once"
  call 200 POST "/api/v1/jobs/$QUEUED/cancel" "" \
    '"\n".join(f"{k}: {d[k]}" for k in ("id", "state", "cancel_requested", "failure_reason"))'
  [ "$(json "$RESPONSE" 'd["state"]')" = cancelled ] || fail "the queued promote was not cancelled at once"
  info "and cancel the first too (production stays on v1): cancelled at once if it is still"
  info "queued; if it runs, it stops at its next step and removes the replicas it started"
  call '200|409' POST "/api/v1/jobs/$FIRST/cancel" "" \
    '"\n".join(f"{k}: {d[k]}" for k in ("id", "state", "phase", "cancel_requested", "failure_reason")) if "id" in d else d["error"]["message"]'
  wait_until "$JOB_TIMEOUT" "/api/v1/jobs/$FIRST" "$ENDED"
  show "$JOB_LINE"' + ", failure_reason %s" % d["failure_reason"]'
  [ "$(json "$RESPONSE" 'd["state"]')" != succeeded ] ||
    fail "the first promote of v3 finished before its cancel arrived"
  left=$(docker ps -aq --filter "label=shipway.version=$V3" | wc -l)
  info "=> v3 containers left: $left"
  [ "$left" -eq 0 ] || fail "the cancelled promote of v3 left $left container(s)"
  curl_public v1
  remember "queued promote of v3 cancelled at once (and the one ahead of it too); v1 still answered"

  step "Canary: promote v4 in steps 10% -> 30% -> 60% with analysis; it advances, then aborts"
  info "v4's pages are fine, but its /cgi-bin/page answers 500 (a bug only some requests hit)"
  SITE_HOOK=add_faulty_page publish v4 publish-v4
  V4=$PUBLISHED_VERSION
  wait_built "$V4"
  info "local traffic to $PUBLIC_URL in the background: '/' only, for now"
  start_traffic /
  CANARY='{"type":"canary","steps":[{"weight":10,"pause_seconds":6},{"weight":30,"pause_seconds":6},{"weight":60,"pause_seconds":6}],"analysis":{"interval_seconds":2,"min_requests":5,"max_error_rate":0.05,"failure_limit":2}}'
  HEADERS=("Idempotency-Key: promote-v4-canary")
  call 202 POST "/api/v1/deployments/$DEPLOYMENT/versions/$V4/promote" \
    "{\"environment\":\"production\",\"strategy\":$CANARY}" \
    '"job %s %s; strategy %s" % (d["job"]["id"], d["job"]["state"], d["release"]["rollout"].get("strategy"))'
  CANARY_JOB=$(json "$RESPONSE" 'd["job"]["id"]')
  info "=> watch it live: $API/dashboard#/jobs/$CANARY_JOB (or the dashboard's Queue page)"
  info "each analysis judges the canary's own requests and 5xx in HAProxy's statistics:"
  last="" hit=""
  deadline=$((SECONDS + JOB_TIMEOUT))
  while :; do
    get "/api/v1/jobs/$CANARY_JOB"
    line=$(json "$RESPONSE" "$CANARY_LINE")
    [ "$line" = "$last" ] || info "  $(date +%H:%M:%S)  $line"
    last=$line
    [ "$(json "$RESPONSE" "$ENDED")" = True ] && break
    if [ -z "$hit" ] && [ "$(json "$RESPONSE" '((d["progress"] or {}).get("canary") or {}).get("step_index", 0)')" -ge 2 ]; then
      hit=1
      info "  the canary reached its last step: the traffic now also asks for /cgi-bin/page"
      change_traffic / /cgi-bin/page
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "the canary job $CANARY_JOB did not end within ${JOB_TIMEOUT}s"
    sleep 0.5
  done
  stop_traffic
  show '"\n".join(["job %s: %s, failure_reason %s" % (d["id"], d["state"], d["failure_reason"]), "title: %s" % (d["failure_diagnostics"] or {}).get("title"), "description: %s" % (d["failure_diagnostics"] or {}).get("description"), "action: %s" % (d["failure_diagnostics"] or {}).get("action")])'
  [ "$(json "$RESPONSE" 'd["failure_reason"]')" = canary_analysis_failed ] ||
    fail "the canary of v4 should have aborted with canary_analysis_failed"
  [ -n "$hit" ] || fail "the canary aborted before it advanced to its last step"
  info "=> the canary advanced 10% -> 30% -> 60% while it was healthy, then aborted: its weight"
  info "   went back to 0 and stable v1 serves everything again"
  curl_public v1
  remember "canary of v4: advanced to 60%, then aborted (canary_analysis_failed) when the traffic hit its bug; v1 still answered"

  step "Why was v4's canary aborted? Ask the API: the release's diagnosis and its evidence"
  call 200 GET "/api/v1/versions/$V4?environment=production" "" \
    '"\n".join(["status: %s, failure_reason: %s" % (d["status"], d["failure_reason"]), "title: %s" % d["failure_diagnostics"]["title"], "description: %s" % d["failure_diagnostics"]["description"], "action: %s" % d["failure_diagnostics"]["action"], "thresholds: %s" % d["failure_diagnostics"]["evidence"].get("thresholds")] + ["interval %s at %s%%: %s requests, %s 5xx, error rate %s -> %s" % (i, a.get("weight"), a.get("requests"), a.get("errors_5xx"), a.get("error_rate"), a.get("verdict")) for i, a in enumerate(d["failure_diagnostics"]["evidence"].get("intervals", [])[-4:])])'
  [ "$(json "$RESPONSE" 'd["failure_reason"]')" = canary_analysis_failed ] ||
    fail "GET /versions/$V4 should carry failure_reason canary_analysis_failed"
  remember "GET /versions/$V4?environment=production explains the abort: measured error rates against max_error_rate, and what to do"

  step "A healthy v5 as a canary with the CLI: 'shipway promote --canary' follows each step live"
  publish v5 publish-v5
  V5=$PUBLISHED_VERSION
  wait_built "$V5"
  start_traffic /
  info "\$ SHIPWAY_API_URL=\$API SHIPWAY_TOKEN=\$TOKEN shipway promote $V5 --env production --canary 20:4,50:4 --analysis-interval 1 --min-requests 3"
  info "  (in another terminal 'shipway queue --watch' shows the same rollout live)"
  SHIPWAY_API_URL=$API SHIPWAY_TOKEN=$TOKEN "$BIN/shipway" promote "$V5" --env production \
    --canary 20:4,50:4 --analysis-interval 1 --min-requests 3 2>&1 | sed 's/^/    | /'
  cli_status=${PIPESTATUS[0]}
  stop_traffic
  [ "$cli_status" -eq 0 ] || fail "shipway promote --canary of v5 exited $cli_status"
  curl_public v5
  call 200 GET "/api/v1/versions/$V5?environment=production" "" "$LIFECYCLE"
  [ "$(json "$RESPONSE" 'd["status"]')" = ACTIVE ] || fail "v5 should be ACTIVE after its canary"
  remember "canary of v5 with the CLI: 20% -> 50% -> 100%, ACTIVE; $PUBLIC_URL answered v5"

  step "Config vars and secrets: a plain var and a secret in one change (a config-only release)"
  info "the site's /cgi-bin/config page prints the GREETING config var (and only whether API_KEY is set):"
  info "\$ curl -sS $PUBLIC_URL/cgi-bin/config"
  page_config | sed 's/^/    /'
  DEMO_SECRET="demo-key-$("$BIN/python" -c 'import secrets; print(secrets.token_hex(8))')"
  CHANGE=$DATA/config-change.json # the secret stays in this file (0600), out of the output
  (umask 077 && printf '{"values":{"GREETING":"hello from config v1"},"secrets":{"API_KEY":"%s"}}' \
    "$DEMO_SECRET" >"$CHANGE")
  info "$CHANGE: {\"values\":{\"GREETING\":\"hello from config v1\"},\"secrets\":{\"API_KEY\":\"<a random key>\"}}"
  call 202 PATCH "/api/v1/deployments/$DEPLOYMENT/environments/production/config" "@$CHANGE" \
    '"\n".join(["config v%s: %s" % (d["version"], ", ".join("%s=%s" % (v["name"], "(secret, set)" if v["secret"] else v["value"]) for v in d["data"])), "release %s of the same version (no build), job %s %s" % (d["release_id"], d["job"]["id"], d["job"]["kind"])])'
  CONFIG_JOB=$(json "$RESPONSE" 'd["job"]["id"]')
  grep -qF "$DEMO_SECRET" "$RESPONSE" && fail "the answer shows the secret's value"
  wait_job "$CONFIG_JOB"
  phases "$CONFIG_JOB"
  info "\$ curl -sS $PUBLIC_URL/cgi-bin/config"
  page_config | sed 's/^/    /'
  page_config | grep -q "greeting: hello from config v1" || fail "the page does not show the new GREETING"
  page_config | grep -q "API_KEY: set" || fail "the replicas did not get the API_KEY secret"
  remember "config change (GREETING plain, API_KEY secret): a release of v5 with no build; the page printed the new greeting"

  step "Change the plain var with the CLI: 'shipway config set' follows the new release"
  info "\$ shipway config set 'GREETING=hello from config v2' -d $DEPLOYMENT --env production"
  SHIPWAY_API_URL=$API SHIPWAY_TOKEN=$TOKEN "$BIN/shipway" config set "GREETING=hello from config v2" \
    -d "$DEPLOYMENT" --env production 2>&1 | sed 's/^/    | /'
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail "shipway config set failed"
  info "\$ curl -sS $PUBLIC_URL/cgi-bin/config"
  page_config | sed 's/^/    /'
  page_config | grep -q "greeting: hello from config v2" || fail "the page does not show the changed GREETING"
  info "\$ shipway config list -d $DEPLOYMENT --env production   (a secret is only 'set')"
  SHIPWAY_API_URL=$API SHIPWAY_TOKEN=$TOKEN "$BIN/shipway" config list -d "$DEPLOYMENT" \
    --env production 2>&1 | sed 's/^/    | /'
  get "/api/v1/deployments/$DEPLOYMENT/events?limit=500"
  grep -qF "$DEMO_SECRET" "$RESPONSE" && fail "the audit trail shows the secret's value"
  get "/api/v1/jobs/$CONFIG_JOB"
  grep -qF "$DEMO_SECRET" "$RESPONSE" && fail "the job shows the secret's value"
  info "\$ grep -rlF \"\$SECRET\" $DATA  (the database, server log, build logs, router files)"
  leaked=$(grep -rlF "$DEMO_SECRET" "$DATA" 2>/dev/null | grep -vxF "$CHANGE" || true)
  [ -z "$leaked" ] || fail "the secret's value is in $leaked"
  info "=> only in $CHANGE, the file it was sent from: the audit trail names the changed"
  info "   keys (never a secret's value) and the database holds the secret encrypted with the"
  info "   key in $DATA/secrets.key (SHIPWAY_SECRETS_KEYS in production)"
  remember "shipway config set GREETING=…: another config-only release; the page changed to 'hello from config v2'"
fi

step "The deployment: each environment's active version and release status"
call 200 GET "/api/v1/deployments/$DEPLOYMENT" "" \
  '"\n".join("%s: version %s (%s), release %s %s, %s replicas, public_url %s" % (e["name"], e["active_version_number"], e["active_version_id"], e["release_id"], e["status"], e["replicas"], e["public_url"]) for e in d["environments"])'

step "The audit trail: every transition, who did it and why (job phases left out)"
call 200 GET "/api/v1/deployments/$DEPLOYMENT/events?limit=500" "" \
  '"\n".join("%3s %-10s %11s -> %-11s %s" % (e["id"], e["subject_type"], e["from_state"], e["to_state"], e["reason"]) for e in d["data"] if e["subject_type"] != "job_phase")'

step "Summary"
info "What it did:"
for line in "${SUMMARY[@]}"; do
  info "  - $line"
done
docs_status=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$API/docs" || true)
info "Where to look:"
if [ "${SHIPWAY_DEMO_KEEP:-0}" = "1" ]; then
  running="kept running until Ctrl-C"
else
  running="stopped below; SHIPWAY_DEMO_KEEP=1 keeps it running"
fi
info "  API:            $API/api/v1 (token in $DATA/token.json; $running)"
info "  dashboard:      $API/dashboard (link with the token in $DATA/dashboard.url)"
info "  OpenAPI docs:   $API/docs (HTTP $docs_status; schema at $API/openapi.json)"
info "  health:         $API/healthz, $API/readyz"
info "  public URL:     ${PUBLIC_URL:-none} (production, through HAProxy)"
info "  data directory: $DATA (shipway.db, broker/, sources, build logs, router/ HAProxy config and log)"
info "  server log:     $LOG"
info "  more:           README.md walks through the same API by hand"

if [ "${SHIPWAY_DEMO_KEEP:-0}" = "1" ]; then
  step "Kept running (SHIPWAY_DEMO_KEEP=1): press Ctrl-C to stop and clean up"
  info "export API=$API TOKEN=$TOKEN"
  trap 'echo; exit 0' INT
  wait "$SERVER_PID" || true
fi

step "Stop everything the demo started"
clean_up "$DATA" | sed 's/^/    /'
SERVER_PID=""
left=$(timeout 30 docker ps -aq --filter "label=shipway.deployment=$DEPLOYMENT" 2>/dev/null | wc -l || true)
info "=> containers left with label shipway.deployment=$DEPLOYMENT: ${left:-0}"
info "the data directory stays for a look until the next run wipes it"

printf '\ndemo: OK\n'
