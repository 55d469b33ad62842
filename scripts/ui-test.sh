#!/usr/bin/env bash
# End-to-end test of the dashboard (GET /ui) in headless Chromium.
#
# Installs what is missing (Debian's chromium, the npm packages of tests/ui from its lockfile),
# starts Redis and Kafka if they are not running (scripts/services.sh up), builds the service and
# runs it on a free port with API_TOKEN set and a Redis key prefix of its own, makes two dead
# tasks (one attempt each, to partition 7 of a one-partition topic), then runs
# tests/ui/dashboard.test.mjs with `node --test`: the page asks for the token, shows the counts,
# lateness, counters and the dead tasks, "Retry" revives one and "Delete" removes the other.
# The screenshot goes to target/ui/dashboard.png, the service's log to target/ui/service.log.
# On exit the service is stopped and its Redis keys deleted.
#
# Usage: scripts/ui-test.sh
# Environment (defaults in brackets):
#   REDIS_PORT    Redis on 127.0.0.1 [6379]
#   KAFKA_PORT    Kafka on 127.0.0.1 [9092]
#   CHROMIUM      the browser [/usr/bin/chromium]
#   UI_TOPIC      the one-partition topic the dead tasks point at [kafka-retry-ui-test]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
UI_DIR=$REPO_DIR/tests/ui
OUT_DIR=$REPO_DIR/target/ui

REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_PORT=${KAFKA_PORT:-9092}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
UI_TOPIC=${UI_TOPIC:-kafka-retry-ui-test}
BROKER=127.0.0.1:$KAFKA_PORT

started_at=$(date +%s)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
log() { printf "==> [%3ss] %s\n" "$(($(date +%s) - started_at))" "$*" >&2; }
die() { printf 'ui-test: %s\n' "$*" >&2; exit 1; }

# ---------- tools ----------

[ -x "$CHROMIUM" ] || apt_install chromium
command -v curl >/dev/null || apt_install curl
command -v redis-cli >/dev/null || apt_install redis-tools
command -v kcat >/dev/null || apt_install kcat
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js 20 or newer is needed (playwright-core); this is $(node --version)"

# npm ci from the lockfile, unless node_modules already holds exactly that lockfile's packages.
stamp=$UI_DIR/node_modules/.ui-test-lock.json
if [ -d "$UI_DIR/node_modules/playwright-core" ] && cmp -s "$UI_DIR/package-lock.json" "$stamp"; then
  log "tests/ui/node_modules is up to date"
else
  log "npm ci (tests/ui)"
  (cd "$UI_DIR" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$UI_DIR/package-lock.json" "$stamp"
fi

if ! bash "$SCRIPT_DIR/services.sh" status >/dev/null 2>&1; then
  log "starting Redis and Kafka"
  bash "$SCRIPT_DIR/services.sh" up
fi
# shellcheck disable=SC2317 # used by cleanup
redis() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

log "cargo build --bin kafka-retry"
(cd "$REPO_DIR" && cargo build --quiet --bin kafka-retry)
TARGET_DIR=$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
BIN=$TARGET_DIR/debug/kafka-retry
[ -x "$BIN" ] || die "no binary at $BIN"

# ---------- the topic: one partition, so partition 7 does not exist ----------
partitions() {
  kcat -b "$BROKER" -L -t "$UI_TOPIC" -m 10 2>/dev/null |
    sed -n "s/^ *topic \"$UI_TOPIC\" with \([0-9]*\) partitions.*/\1/p"
}
count=$(partitions)
if [ -z "$count" ] || [ "$count" = 0 ]; then
  log "creating topic $UI_TOPIC"
  echo "ui-test" | kcat -P -b "$BROKER" -t "$UI_TOPIC" -p 0 -m 30 >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    count=$(partitions)
    [ -n "$count" ] && [ "$count" != 0 ] && break
    sleep 0.5
  done
fi
if [ -z "$count" ] || [ "$count" = 0 ]; then die "topic $UI_TOPIC did not appear on $BROKER"; fi
[ "$count" -lt 8 ] || die "topic $UI_TOPIC has $count partitions; the test needs partition 7 to be missing (set UI_TOPIC)"

# ---------- the service ----------
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/dashboard*.png
SERVICE_LOG=$OUT_DIR/service.log
PREFIX=uitest-$$-$(date +%s)
API_TOKEN=$(node -p 'require("crypto").randomBytes(24).toString("hex")')
SERVICE_PID=

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local status=$?
  if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
    kill -TERM "$SERVICE_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$SERVICE_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
  fi
  local keys=("$PREFIX:tasks" "{$PREFIX:tasks}:leases" "{$PREFIX:tasks}:records" "{$PREFIX:tasks}:dead")
  mapfile -t -O ${#keys[@]} keys < <(redis --scan --pattern "{$PREFIX:tasks}:*" 2>/dev/null || true)
  redis DEL "${keys[@]}" >/dev/null 2>&1 || echo "ui-test: could not delete the Redis keys of $PREFIX" >&2
  if [ "$status" -ne 0 ] && [ -s "$SERVICE_LOG" ]; then
    echo "---- last lines of $SERVICE_LOG ----" >&2
    tail -n 30 "$SERVICE_LOG" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

for _ in 1 2 3; do
  PORT=$(free_port)
  BASE=http://127.0.0.1:$PORT
  log "starting kafka-retry on $BASE (REDIS_KEY_PREFIX=$PREFIX)"
  HTTP_HOST=127.0.0.1 HTTP_PORT=$PORT \
    REDIS_ADDR=127.0.0.1:$REDIS_PORT KAFKA_BROKERS=$BROKER \
    REDIS_KEY_PREFIX=$PREFIX POLL_INTERVAL=200ms API_TOKEN=$API_TOKEN \
    LOG_LEVEL=info "$BIN" >"$SERVICE_LOG" 2>&1 &
  SERVICE_PID=$!
  up=0
  for _ in $(seq 1 240); do
    if curl -fsS -m 2 "$BASE/health" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$SERVICE_PID" 2>/dev/null || break
    sleep 0.25
  done
  [ "$up" = 1 ] && break
  kill -TERM "$SERVICE_PID" 2>/dev/null || true
  wait "$SERVICE_PID" 2>/dev/null || true
  SERVICE_PID=
  # Another process may have taken the port between free_port and the bind: try another.
  grep -qi "address already in use" "$SERVICE_LOG" || { tail -n 30 "$SERVICE_LOG" >&2; die "the service did not become healthy"; }
done
[ -n "$SERVICE_PID" ] || die "the service could not bind a free port"

call() { # METHOD PATH [BODY]
  local args=(-sS -m 10 -X "$1" -H "Authorization: Bearer $API_TOKEN")
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  curl "${args[@]}" "$BASE$2"
}
json_field() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s)[process.argv[1]];console.log(v==null?"":v)})' "$1"; }

# ---------- two dead tasks ----------
dead_task() {
  local body answer id
  body=$(printf '{"payload":"ui-test %s","destination":{"topic":"%s","partition":7,"kafka_conn_string":"%s"},"max_retries":1,"retry_delay_seconds":1}' \
    "$1" "$UI_TOPIC" "$BROKER")
  answer=$(call POST /tasks "$body")
  id=$(printf '%s' "$answer" | json_field task_id) || true
  [ -n "$id" ] || die "POST /tasks failed: $answer"
  printf '%s\n' "$id"
}
RETRY_TASK=$(dead_task retry)
DELETE_TASK=$(dead_task delete)
log "waiting for tasks $RETRY_TASK and $DELETE_TASK to die"
for id in "$RETRY_TASK" "$DELETE_TASK"; do
  state=
  for _ in $(seq 1 240); do
    state=$(call GET "/tasks/$id" | json_field state) || state=
    [ "$state" = dead ] && break
    sleep 0.25
  done
  [ "$state" = dead ] || die "task $id did not die within 60 s (state: ${state:-unknown})"
done

# ---------- the browser test ----------
log "node --test tests/ui/dashboard.test.mjs"
status=0
(cd "$UI_DIR" && UI_BASE_URL=$BASE UI_API_TOKEN=$API_TOKEN UI_RETRY_TASK=$RETRY_TASK \
  UI_DELETE_TASK=$DELETE_TASK UI_SCREENSHOT=$OUT_DIR/dashboard.png CHROMIUM=$CHROMIUM \
  node --test --test-concurrency=1 dashboard.test.mjs) || status=$?

if [ -f "$OUT_DIR/dashboard.png" ]; then
  echo "screenshot: $OUT_DIR/dashboard.png"
fi
echo "ui-test: $([ "$status" = 0 ] && echo passed || echo FAILED) in $(($(date +%s) - started_at)) s"
exit "$status"
