#!/usr/bin/env bash
# Publish the checked-out commit to shipway, wait for its build, promote it to
# staging, then release it to production as a canary. The GitHub Actions workflow
# and the GitLab CI file both run this script; docs/ci.md explains it.
#
#   SHIPWAY_API_URL, SHIPWAY_TOKEN   where the API is, a token with deployments:write
#   SHIPWAY_DEPLOYMENT               the deployment (dep_…), created once beforehand
#   SHIPWAY_GIT_BRANCH               the branch to record (CI checks out a detached HEAD)
#   SOURCE_DIR         (.)           the folder to publish
#   STAGING_ENV        (staging)     PRODUCTION_ENV (production)
#   CANARY_STEPS       (10:60,50:120) weight:seconds steps of the production canary
#   CANARY_OPTIONS     ()            more promote options, e.g. "--max-error-rate 0.02
#                                    --min-requests 100 --analysis-interval 10"
#   SHIPWAY_OUT        (shipway-out) where each step's JSON answer is kept
#
# Exit codes are the CLI's: 1 the build or a rollout failed (its diagnosis is printed
# above), 2 a usage error, 3 the API refused a request, 4 the API could not be reached.
set -euo pipefail

: "${SHIPWAY_API_URL:?set SHIPWAY_API_URL}" "${SHIPWAY_TOKEN:?set SHIPWAY_TOKEN}"
: "${SHIPWAY_DEPLOYMENT:?set SHIPWAY_DEPLOYMENT (dep_…)}"
SOURCE_DIR=${SOURCE_DIR:-.}
STAGING_ENV=${STAGING_ENV:-staging}
PRODUCTION_ENV=${PRODUCTION_ENV:-production}
CANARY_STEPS=${CANARY_STEPS:-10:60,50:120}
read -r -a canary_options <<<"${CANARY_OPTIONS:-}"
SHIPWAY_OUT=${SHIPWAY_OUT:-shipway-out}
export SHIPWAY_DEPLOYMENT
mkdir -p "$SHIPWAY_OUT"

# Run one shipway command with --json: its answer goes to $SHIPWAY_OUT/<step>.json,
# progress, build log and diagnosis to the job log; a failure stops the pipeline.
step() {
  local name=$1 code=0
  shift
  echo "==> $name: shipway $*" >&2
  shipway "$@" --json >"$SHIPWAY_OUT/$name.json" || code=$?
  if [ "$code" -ne 0 ]; then
    case $code in
      1) why="failed: the diagnosis is printed above" ;;
      3) why="was refused by the API (see the error above)" ;;
      4) why="could not reach the API at $SHIPWAY_API_URL (worth a retry)" ;;
      *) why="stopped (exit $code)" ;;
    esac
    echo "shipway: $name $why" >&2
    exit "$code"
  fi
}

field() { # field FILE KEY.KEY…: one value of a step's JSON answer
  python3 -c 'import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value[key]
print(value)' "$1" "$2"
}

step publish publish "$SOURCE_DIR" --deployment "$SHIPWAY_DEPLOYMENT"
version=$(field "$SHIPWAY_OUT/publish.json" version.id)
echo "version $version ($(field "$SHIPWAY_OUT/publish.json" version.git_hash)) is ready" >&2

step staging promote "$version" --deployment "$SHIPWAY_DEPLOYMENT" --env "$STAGING_ENV"
echo "staging: release $(field "$SHIPWAY_OUT/staging.json" release.id) is ACTIVE" >&2

step production promote "$version" --deployment "$SHIPWAY_DEPLOYMENT" \
  --env "$PRODUCTION_ENV" --canary "$CANARY_STEPS" ${canary_options[@]+"${canary_options[@]}"}
echo "production: release $(field "$SHIPWAY_OUT/production.json" release.id) is ACTIVE" >&2
echo "$version" >"$SHIPWAY_OUT/version"
