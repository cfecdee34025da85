#!/usr/bin/env bash
# A guided tour of shipway's API against `shipway up` (embedded mode: SQLite and the
# filesystem Celery transport in a fresh data directory; no Redis, no PostgreSQL).
# Each step prints the curl command it runs, the answer, and what it means.
#
# Run it with `make demo` (which provisions first) or `bash scripts/demo.sh`.
#   SHIPWAY_DEMO_KEEP=1   keep the server running at the end, until Ctrl-C
#   SHIPWAY_DEMO_PORT=N   use this port instead of a free one
# Publishing builds a Docker image: without a Docker engine those steps are skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
DATA=$ROOT/.scratch/demo
LOG=$DATA/server.log
READY_TIMEOUT=60
BUILD_TIMEOUT=180
JOB_TIMEOUT=60

if [ ! -x "$BIN/shipway" ]; then
  echo "demo: $BIN/shipway is missing; run 'make provision' (or 'make demo') first" >&2
  exit 1
fi

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

SERVER_PID=""
RESPONSE=$(mktemp)
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    # `shipway up` leads its own process group: the API, the relay and the worker.
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -f "$LOG" ]; then
    echo >&2
    echo "---- last 40 lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2 || true
    echo "----" >&2
  fi
  if [ -n "$SERVER_PID" ]; then
    echo
    echo "demo: stopping shipway up (pid $SERVER_PID)"
    stop_server
  fi
  rm -f "$RESPONSE"
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

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

wait_until() { # wait_until SECONDS PATH PYTHON_CONDITION: poll a GET until the condition holds
  local timeout=$1 path=$2 condition=$3 deadline=$((SECONDS + $1))
  while :; do
    curl -sS --max-time 10 -H "Authorization: Bearer $TOKEN" -o "$RESPONSE" "$API$path" ||
      fail "GET $path did not complete"
    [ "$(json "$RESPONSE" "$condition")" = True ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || fail "GET $path: '$condition' still false after ${timeout}s"
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------

step "Fresh data directory"
rm -rf "$DATA"
mkdir -p "$DATA"
info "wiped and created $DATA"

PORT=${SHIPWAY_DEMO_PORT:-$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
API=http://127.0.0.1:$PORT
export SHIPWAY_DATA_DIR=$DATA SHIPWAY_API_PORT=$PORT SHIPWAY_API_HOST=127.0.0.1
unset SHIPWAY_DATABASE_URL SHIPWAY_BROKER_URL SHIPWAY_PUBLIC_URL

step "Start 'shipway up' (embedded: SQLite + filesystem Celery transport; API, relay and one worker)"
setsid "$BIN/shipway" up >"$LOG" 2>&1 </dev/null &
SERVER_PID=$!
info "pid $SERVER_PID, log $LOG"
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

step "Create a deployment"
call 201 POST /api/v1/deployments '{"name":"hello","kind":"static"}'
DEPLOYMENT=$(json "$RESPONSE" 'd["id"]')
info "=> deployment $DEPLOYMENT with environment(s): $(json "$RESPONSE" '", ".join(e["name"] for e in d["environments"])')"

step "List its versions (newest first, keyset-paged with next_cursor)"
call 200 GET "/api/v1/deployments/$DEPLOYMENT/versions?limit=10"
info "=> none yet"

if ! timeout 20 docker info >/dev/null 2>&1; then
  step "Publish, build and promote: SKIPPED"
  info "no Docker engine answers here ('docker info' failed); run 'make provision' to start one"
else
  step "Publish: upload a source archive (a static site); a worker builds it"
  mkdir -p "$DATA/site"
  echo '<h1>hello from shipway</h1>' >"$DATA/site/index.html"
  tar -C "$DATA/site" -czf "$DATA/site.tar.gz" .
  info "\$ curl -sS -X POST \"\$API/api/v1/deployments/$DEPLOYMENT/versions\" -H \"Authorization: Bearer \$TOKEN\" -H 'Idempotency-Key: publish-1' -F source=@site.tar.gz -F git_branch=main -F 'git_message=first version'"
  status=$(curl -sS --max-time 60 -X POST "$API/api/v1/deployments/$DEPLOYMENT/versions" \
    -H "Authorization: Bearer $TOKEN" -H 'Idempotency-Key: publish-1' \
    -F "source=@$DATA/site.tar.gz" -F git_branch=main -F 'git_message=first version' \
    -o "$RESPONSE" -w '%{http_code}') || fail "publish did not complete"
  info "HTTP $status"
  show '"\n".join(f"{k}: {v}" for k, v in [("version", d["version"]["id"]), ("version_number", d["version"]["version_number"]), ("state", d["version"]["state"]), ("job", d["job"]["id"]), ("job kind/queue/state", "/".join([d["job"]["kind"], d["job"]["queue"], d["job"]["state"]]))])'
  [ "$status" = 202 ] || fail "publish answered HTTP $status, expected 202"
  VERSION=$(json "$RESPONSE" 'd["version"]["id"]')

  step "Follow the build log until the build ends"
  info "\$ curl -sS \"\$API/api/v1/deployments/$DEPLOYMENT/versions/$VERSION/build-log?follow=1\" -H \"Authorization: Bearer \$TOKEN\""
  curl -sS --max-time "$BUILD_TIMEOUT" -H "Authorization: Bearer $TOKEN" \
    "$API/api/v1/deployments/$DEPLOYMENT/versions/$VERSION/build-log?follow=1" | sed 's/^/    | /' ||
    fail "the build log did not end within ${BUILD_TIMEOUT}s"
  wait_until "$BUILD_TIMEOUT" "/api/v1/deployments/$DEPLOYMENT/versions/$VERSION" \
    'd["state"] in ("ready", "failed")'
  if [ "$(json "$RESPONSE" 'd["state"]')" != ready ]; then
    show
    fail "the build failed: $(json "$RESPONSE" 'd["build_failure_reason"]')"
  fi

  step "Get the version: state ready, artifact digest, image, provenance"
  call 200 GET "/api/v1/deployments/$DEPLOYMENT/versions/$VERSION" "" \
    '"\n".join(f"{k}: {d[k]}" for k in ("id", "version_number", "state", "artifact_sha256", "runtime_image", "runtime_command", "git_branch", "git_message", "status"))'

  step "Promote it to production (Idempotency-Key required)"
  HEADERS=("Idempotency-Key: promote-hello-1")
  call 202 POST "/api/v1/deployments/$DEPLOYMENT/versions/$VERSION/promote" \
    '{"environment":"production"}' \
    '"\n".join(["release: " + d["release"]["id"] + " " + d["release"]["status"], "job: " + d["job"]["id"] + " " + d["job"]["kind"] + " " + d["job"]["state"]])'
  JOB=$(json "$RESPONSE" 'd["job"]["id"]')
  info "=> the same key with the same body replays this answer; with another body it is a 422"

  step "Watch the promote job until it ends"
  wait_until "$JOB_TIMEOUT" "/api/v1/jobs/$JOB" 'd["state"] in ("succeeded", "failed", "cancelled")'
  call 200 GET "/api/v1/jobs/$JOB" "" \
    '"\n".join(f"{k}: {d[k]}" for k in ("id", "kind", "state", "phase", "attempts", "result", "failure_reason"))'

  step "The version's lifecycle in production (the get-version page)"
  call 200 GET "/api/v1/versions/$VERSION?environment=production" "" \
    '"\n".join(f"{k}: {d[k]}" for k in ("id", "state", "environment", "status", "deployed_at", "image_url", "rollback_count"))'

  step "Cancel: a job that already ended cannot be cancelled (HTTP 409, the one error shape)"
  call 409 POST "/api/v1/jobs/$JOB/cancel"

  step "Cancel a fresh publish right after submitting it"
  tar -C "$DATA/site" -czf "$DATA/site.tar.gz" .
  curl -sS --max-time 60 -X POST "$API/api/v1/deployments/$DEPLOYMENT/versions" \
    -H "Authorization: Bearer $TOKEN" -H 'Idempotency-Key: publish-2' \
    -F "source=@$DATA/site.tar.gz" -F 'git_message=second version' -o "$RESPONSE" ||
    fail "publish did not complete"
  JOB2=$(json "$RESPONSE" 'd["job"]["id"]')
  info "published version 2, job $JOB2"
  call '200|409' POST "/api/v1/jobs/$JOB2/cancel" "" \
    '"\n".join(f"{k}: {d[k]}" for k in ("id", "state", "cancel_requested", "failure_reason")) if "id" in d else d["error"]["message"]'
  info "=> a queued job is cancelled at once; a running one stops at its next step and cleans up"
fi

step "The deployment: each environment's active version and release status"
call 200 GET "/api/v1/deployments/$DEPLOYMENT" "" \
  '"\n".join("%s: version %s (%s), release %s %s" % (e["name"], e["active_version_number"], e["active_version_id"], e["release_id"], e["status"]) for e in d["environments"])'

step "The audit trail: every transition, who did it and why"
call 200 GET "/api/v1/deployments/$DEPLOYMENT/events?limit=100" "" \
  '"\n".join("%3s %-9s %9s -> %-10s %s" % (e["id"], e["subject_type"], e["from_state"], e["to_state"], e["reason"]) for e in d["data"])'

step "Where to look"
docs_status=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$API/docs" || true)
info "API:            $API/api/v1"
info "OpenAPI docs:   $API/docs (HTTP $docs_status; schema at $API/openapi.json)"
info "health:         $API/healthz, $API/readyz"
info "data directory: $DATA (shipway.db, broker/, sources and build logs)"
info "server log:     $LOG"
info "more:           README.md has the same walkthrough to run by hand"

if [ "${SHIPWAY_DEMO_KEEP:-0}" = "1" ]; then
  step "Server kept running (SHIPWAY_DEMO_KEEP=1): press Ctrl-C to stop it"
  info "export API=$API TOKEN=$TOKEN"
  trap 'echo; exit 0' INT
  wait "$SERVER_PID" || true
fi

printf '\ndemo: OK\n'
