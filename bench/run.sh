#!/usr/bin/env bash
# The benchmark harness of kafka-retry (issue 4). Starts what it needs (Redis and Kafka through
# scripts/services.sh, the service built with `cargo build --release`, run as its own process with
# its own REDIS_KEY_PREFIX and LOG_LEVEL=warn), runs each measurement and prints a table: figure,
# value, target, and the Go service's claim beside it.
#
# Usage: bench/run.sh [smoke|full]
#   smoke  small sizes, one run of each figure: about a minute of measuring (fit for CI)
#   full   the issue's sizes, each figure run 3 times and the median quoted: 10-13 minutes of
#          measuring (5 of them for figure 5's 10 million pending tasks); by hand
#   Both print the table to stdout (and to <results>/table.md); progress goes to stderr.
#
# Figures (docs/PERFORMANCE.md says how each is measured and what limits it):
#   1 http_create     POST /tasks over keep-alive, 64 connections, closed loop (wrk, the lighter
#                     client: it leaves more of the 2 cores to the service): created/s
#   2 http_p99        p99 latency at a fixed 10,000 requests/s, open loop (oha -q, latency
#                     correction), 64 connections
#   3 delivery        N tasks all due at once, preloaded into Redis, then the service started:
#                     N / (time the topic's end offset reaches N - first record's timestamp)
#   4 lateness_1k/20k Kafka record time (LogAppendTime) minus the due time in the payload, for
#                     tasks due at a steady 1,000 and 20,000 per second: p50 / p99
#   5 claim_<P>       delivery rate of a fixed batch of due tasks with P tasks pending far ahead
#   6 rss / redis     service peak RSS (VmHWM) under load; Redis bytes per pending task
#
# Environment (defaults in brackets):
#   BENCH_REPS             runs per figure [smoke 1, full 3]; the table quotes the median
#   BENCH_ONLY             space-separated figures to run: http delivery lateness memory claim [all]
#   BENCH_OUT              where results go [target/bench/<mode>-<time>]; target/bench/last links it
#   BENCH_HTTP_CLIENT      figure 1's client: wrk, or oha for comparison [wrk]
#   BENCH_PARTITIONS       partitions of each delivery topic; tasks spread over them [1]
#   BENCH_PAYLOAD_BYTES    payload size of every task [100]
#   BENCH_KEEP_SERVICES    1: leave Redis and Kafka running even if this script started them [0]
#   BENCH_CLAIM_PENDING    figure 5's schedule sizes [full: 10000 1000000 10000000; smoke: 10000]
#   BENCH_CLAIM_BATCH      figure 5's due tasks per run [full 200000, smoke 20000]
#   BENCH_REHASH_SETTLE    0: measure figure 5 while Redis still rehashes after the preload [1]
#   BENCH_PROFILE          1: record `perf` profiles of the service and Redis during figures 1
#                          and 3 (perf-http.data, perf-delivery.data in the results) [0]
#   BENCH_SERVICE_ENV      extra VAR=value settings for the service, space-separated, for
#                          experiments (for example "WORKER_BATCH_SIZE=3000 KAFKA_LINGER=1ms") []
#   BENCH_GIT              the label of the code measured, in the table [git describe --dirty]
#   KAFKA_RETRY_STATE      scripts/services.sh's state folder, where the Kafka pid is read [.run]
#   REDIS_PORT, KAFKA_PORT as for scripts/services.sh [6379, 9092]
#
# Benchmarks print figures; nothing here asserts on time. The exit status is non-zero only when a
# measurement could not be made at all.
set -euo pipefail

MODE=${1:-smoke}
case "$MODE" in smoke | full) ;; *)
  sed -n '/^# Usage:/,/^#$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
  ;;
esac

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO"

REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_PORT=${KAFKA_PORT:-9092}
export BENCH_REDIS=127.0.0.1:$REDIS_PORT
export BENCH_KAFKA=127.0.0.1:$KAFKA_PORT
PAYLOAD_BYTES=${BENCH_PAYLOAD_BYTES:-100}
PARTITIONS=${BENCH_PARTITIONS:-1}
ONLY=${BENCH_ONLY:-http delivery lateness memory claim}
PROFILE=${BENCH_PROFILE:-0}
HTTP_CLIENT=${BENCH_HTTP_CLIENT:-wrk}
case "$HTTP_CLIENT" in wrk | oha) ;; *)
  echo "BENCH_HTTP_CLIENT must be wrk or oha" >&2
  exit 2
  ;;
esac

if [ "$MODE" = full ]; then
  REPS=${BENCH_REPS:-3}
  HTTP_SECONDS=15       # each closed-loop throughput run
  P99_SECONDS=15        # each open-loop run at 10,000/s
  DELIVERY_N=200000     # tasks all due at once
  LATENESS_SECONDS=15   # due times spread over this long
  CLAIM_BATCH=${BENCH_CLAIM_BATCH:-200000} # due tasks delivered on top of the pending ones
  CLAIM_PENDING=${BENCH_CLAIM_PENDING:-10000 1000000 10000000}
  MEMORY_PENDING=1000000
else
  REPS=${BENCH_REPS:-1}
  HTTP_SECONDS=5
  P99_SECONDS=5
  DELIVERY_N=20000
  LATENESS_SECONDS=5
  CLAIM_BATCH=${BENCH_CLAIM_BATCH:-20000}
  CLAIM_PENDING=${BENCH_CLAIM_PENDING:-10000}
  MEMORY_PENDING=100000
fi
P99_RATE=10000
HTTP_CONNECTIONS=64
LATENESS_RATES="1000 20000"
LATENESS_WARMUP=2 # seconds of due tasks before the measured ones (the first publish makes the producer)
FAR_FUTURE_MS=$((30 * 24 * 3600 * 1000))

RUN_ID=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$REPO/target/bench/$MODE-$RUN_ID}
mkdir -p "$OUT" "$REPO/target/bench"
ln -sfn "$OUT" "$REPO/target/bench/last"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
TAG=b$(date +%H%M%S)$$ # in key prefixes and topic names: unique per run

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
now_ms() { date +%s%3N; }

# ------------------------------------------------------------------------------------------------
# Cleanup: everything this script starts is stopped on exit, by pid.
# ------------------------------------------------------------------------------------------------
SVC_PID=""
CHILD_PIDS=()
PREFIXES=()
STARTED_SERVICES=0
cleanup() {
  local rc=$?
  local pid
  for pid in "${CHILD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if declare -F svc_stop >/dev/null; then svc_stop || true; fi
  if declare -F tool >/dev/null; then
    for prefix in "${PREFIXES[@]}"; do tool clear --prefix "$prefix" >/dev/null 2>&1 || true; done
    tool delete-topics --prefix "$TAG-" >/dev/null 2>&1 || true # the run's topics
  fi
  if [ "$STARTED_SERVICES" = 1 ] && [ "${BENCH_KEEP_SERVICES:-0}" != 1 ]; then
    log "stopping Redis and Kafka (this run started them)"
    bash scripts/services.sh down >>"$OUT/services.log" 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------
# Tools: GNU time, python3 and wrk (apt-get, when missing), oha (crates.io, cached in
# ~/.cargo/bin), the service and bench_tool (cargo, release).
# ------------------------------------------------------------------------------------------------
T_START=$(date +%s)
export PATH=$HOME/.cargo/bin:$PATH
OHA_VERSION=1.16.0
missing=()
[ -x /usr/bin/time ] || missing+=(time)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
  ( # in a subshell: scripts/lib.sh has its own log and die
    export LOG_TAG=bench
    # shellcheck source=scripts/lib.sh
    . "$REPO/scripts/lib.sh"
    apt_install "${missing[@]}"
  )
fi
if ! command -v oha >/dev/null 2>&1; then
  log "installing oha $OHA_VERSION from crates.io (once; cached in ~/.cargo/bin)"
  cargo install oha --version "$OHA_VERSION" --locked >"$OUT/oha-install.log" 2>&1 || {
    tail -n 30 "$OUT/oha-install.log" >&2
    die "cargo install oha failed"
  }
fi

if bash scripts/services.sh status >/dev/null 2>&1; then
  log "Redis and Kafka already running; using them"
else
  log "starting Redis and Kafka (scripts/services.sh up)"
  STARTED_SERVICES=1
  bash scripts/services.sh up >"$OUT/services.log" 2>&1 || {
    cat "$OUT/services.log" >&2
    die "scripts/services.sh up failed"
  }
fi

log "building the service and bench_tool (cargo build --release)"
T_BUILD=$(date +%s)
cargo build --release --bin kafka-retry --example bench_tool >"$OUT/build.log" 2>&1 || {
  tail -n 40 "$OUT/build.log" >&2
  die "cargo build --release failed"
}
sync # the build's writes go to disk now, not in a measurement (writeback can stall Redis's AOF)
BUILD_SECONDS=$(($(date +%s) - T_BUILD))
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
SERVICE_BIN=$TARGET_DIR/release/kafka-retry
TOOL_BIN=$TARGET_DIR/release/examples/bench_tool
[ -x "$SERVICE_BIN" ] && [ -x "$TOOL_BIN" ] || die "built binaries not found in $TARGET_DIR/release"
# Run copies, so that a concurrent build does not swap a binary under a running measurement.
cp "$SERVICE_BIN" "$OUT/kafka-retry"
cp "$TOOL_BIN" "$OUT/bench_tool"
SERVICE_BIN=$OUT/kafka-retry
TOOL_BIN=$OUT/bench_tool

tool() { "$TOOL_BIN" "$@"; }

REDIS_PID=$(redis-cli -p "$REDIS_PORT" info server | tr -d '\r' | sed -n 's/^process_id://p')
KAFKA_PID=$(cat "${KAFKA_RETRY_STATE:-$REPO/.run}/kafka-$KAFKA_PORT/kafka.pid" 2>/dev/null ||
  ss -ltnpH "sport = :$KAFKA_PORT" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)

# ------------------------------------------------------------------------------------------------
# The service under test
# ------------------------------------------------------------------------------------------------
free_port() {
  local port
  for port in $(seq 18080 18180); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port in 18080-18180"
}

# svc_start PREFIX [VAR=value...]: starts the service on a free port and waits for /health.
svc_start() {
  local prefix=$1
  shift
  SVC_PORT=$(free_port)
  SVC_LOG=$OUT/service-$prefix.log
  env HTTP_HOST=127.0.0.1 HTTP_PORT="$SVC_PORT" REDIS_ADDR="$BENCH_REDIS" \
    KAFKA_BROKERS="$BENCH_KAFKA" REDIS_KEY_PREFIX="$prefix" LOG_LEVEL=warn ${BENCH_SERVICE_ENV:-} "$@" \
    "$SERVICE_BIN" >"$SVC_LOG" 2>&1 &
  SVC_PID=$!
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$SVC_PORT/health" 2>/dev/null; then return 0; fi
    kill -0 "$SVC_PID" 2>/dev/null || {
      cat "$SVC_LOG" >&2
      die "the service exited at start-up"
    }
    sleep 0.1
  done
  die "the service did not answer /health within 30 s"
}

svc_stop() {
  [ -n "$SVC_PID" ] || return 0
  kill -TERM "$SVC_PID" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$SVC_PID" 2>/dev/null || true
  wait "$SVC_PID" 2>/dev/null || true
  SVC_PID=""
}

# svc_mem: "VmHWM VmRSS" of the running service, in kB.
svc_mem() {
  awk '/^VmHWM:/{h=$2} /^VmRSS:/{r=$2} END{print h+0, r+0}' "/proc/$SVC_PID/status" 2>/dev/null ||
    echo "0 0"
}

# ------------------------------------------------------------------------------------------------
# CPU accounting: CPU seconds used by each process, and by the whole machine, over a measurement.
# ------------------------------------------------------------------------------------------------
ticks() { # ticks PID: user+system clock ticks of PID (0 if it is gone)
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || {
    echo 0
    return
  }
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
CPU_MARK=""
cpu_mark() { # cpu_mark [LOADGEN_PID]: remember the counters
  CPU_MARK="$(ticks "$SVC_PID") $(ticks "$REDIS_PID") $(ticks "$KAFKA_PID") $(machine_ticks) $(now_ms)"
}
cpu_json() { # cpu_json [LOADGEN_TIME_FILE]: CPU use since cpu_mark, as JSON (1.0 = one core busy)
  local now
  now="$(ticks "$SVC_PID") $(ticks "$REDIS_PID") $(ticks "$KAFKA_PID") $(machine_ticks) $(now_ms)"
  python3 - "$CPU_MARK" "$now" "$(getconf CLK_TCK)" "$(nproc)" "${1:-}" <<'EOF'
import json, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
hz, ncpu, loadgen = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
secs = max((b[5] - a[5]) / 1000.0, 1e-3)
cores = lambda i: round((b[i] - a[i]) / hz / secs, 2)
busy, total = b[3] - a[3], b[4] - a[4]
out = {"seconds": round(secs, 2), "service": cores(0), "redis": cores(1), "kafka": cores(2),
       "machine_busy": round(ncpu * busy / max(total, 1), 2)}
if loadgen:
    t = json.load(open(loadgen))
    out["loadgen"] = round((t["user"] + t["system"]) / secs, 2)
print(json.dumps(out))
EOF
}

# record FIGURE REP JSON...: appends one result line.
record() {
  local figure=$1 rep=$2
  shift 2
  python3 - "$figure" "$rep" "$@" >>"$RESULTS" <<'EOF'
import json, sys
out = {"figure": sys.argv[1], "rep": int(sys.argv[2])}
for part in sys.argv[3:]:
    out.update(json.loads(part))
print(json.dumps(out))
EOF
}

# ------------------------------------------------------------------------------------------------
# Redis's background work: kept out of measurements where it is not what they measure
# ------------------------------------------------------------------------------------------------
redis_info() { # redis_info SECTION FIELD: one field of INFO
  redis-cli -p "$REDIS_PORT" info "$1" | tr -d '\r' | sed -n "s/^$2://p"
}

# Waits (up to 10 min) until Redis is not saving a snapshot or rewriting its AOF, so that no fork
# started by earlier writes falls in the next measurement.
persistence_wait() {
  for _ in $(seq 1 3000); do
    [ "$(redis_info persistence rdb_bgsave_in_progress)" = 0 ] &&
      [ "$(redis_info persistence aof_rewrite_in_progress)" = 0 ] &&
      [ "$(redis_info persistence aof_rewrite_scheduled)" = 0 ] && return 0
    sleep 0.2
  done
  log "warning: Redis is still saving after 10 minutes"
}

# Rewrites the AOF before a figure 5 measurement, as Redis would by itself once the file doubled:
# done here, the fork falls before the measurement instead of inside it. (With a small schedule,
# one run's 200,000 tasks double the file, and the rewrite would land in the small sizes' runs.)
aof_settle() {
  persistence_wait
  [ "$(redis_info persistence aof_enabled)" = 1 ] || return 0
  redis-cli -p "$REDIS_PORT" bgrewriteaof >/dev/null
  sleep 0.5
  persistence_wait
}

# rehash_settle PREFIX COUNT: finishes the incremental rehash that a large preload leaves in the
# dictionaries of the schedule and the records hash. Redis doubles a dictionary's table when it
# fills and then moves one bucket per later command on that key, so right after growing to 10
# million tasks every command pays for moving buckets and for looking in two tables, until about
# as many commands as the key holds tasks have run. A service whose schedule has reached its size
# has long paid that; without this step figure 5 measures the growth instead of the size. Cheap
# lookups of a missing member (ZSCORE, HEXISTS) each move one bucket; 1.2 per task is enough.
rehash_settle() {
  local prefix=$1 count=$2 chunk=500000
  [ "${BENCH_REHASH_SETTLE:-1}" = 1 ] || return 0
  for _ in $(seq 1 $(((count * 12 / 10 + chunk - 1) / chunk))); do
    redis-cli -p "$REDIS_PORT" eval "for i = 1, tonumber(ARGV[1]) do
        redis.call('ZSCORE', KEYS[1], '') redis.call('HEXISTS', KEYS[2], '') end" \
      2 "$prefix:tasks" "{$prefix:tasks}:records" "$chunk" >/dev/null
  done
}

# ------------------------------------------------------------------------------------------------
# Perf profiles (BENCH_PROFILE=1)
# ------------------------------------------------------------------------------------------------
PERF_PID=""
perf_start() { # perf_start NAME SECONDS
  [ "$PROFILE" = 1 ] && command -v perf >/dev/null 2>&1 || return 0
  perf record -F 499 --call-graph dwarf,16384 -o "$OUT/perf-$1.data" -p "$SVC_PID,$REDIS_PID" \
    -- sleep "$2" >"$OUT/perf-$1.log" 2>&1 &
  PERF_PID=$!
}
perf_wait() {
  [ -n "$PERF_PID" ] || return 0
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
}

# ------------------------------------------------------------------------------------------------
# Figures 1 and 2: task creation over HTTP
# ------------------------------------------------------------------------------------------------
TASK_BODY=$(python3 -c '
import json, sys
print(json.dumps({"payload": "x" * int(sys.argv[1]),
  "destination": {"topic": "bench-http-never", "partition": 0, "kafka_conn_string": sys.argv[2]},
  "max_retries": 3, "retry_delay_seconds": 86400}, separators=(",", ":")))' "$PAYLOAD_BYTES" "$BENCH_KAFKA")

# Figure 1's client. wrk spends about 13 µs of CPU per request here against oha's 20 µs, and in a
# closed loop on 2 shared cores what the client spends the service does not get. bench/post.lua
# sends TASK_BODY and prints wrk's summary as one JSON line.
wrk_run() { # wrk_run OUTFILE SECONDS; wrk's CPU seconds go to OUTFILE.cpu
  local file=$1 seconds=$2
  /usr/bin/time -f '{"user": %U, "system": %S, "elapsed": %e}' -o "$file.cpu" env BENCH_TASK_BODY="$TASK_BODY" \
    wrk -t 2 -c "$HTTP_CONNECTIONS" -d "${seconds}s" -s "$BENCH_DIR/post.lua" \
    "http://127.0.0.1:$SVC_PORT/tasks" >"$file.out" 2>"$file.err" &&
    sed -n 's/^WRK_JSON //p' "$file.out" >"$file" && [ -s "$file" ]
}

wrk_json() { # wrk_json FILE STORED: the figures we keep from wrk's summary; STORED = tasks Redis gained
  python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
secs = r["duration_us"] / 1e6 or 1
created = r["requests"] - r["status"]  # wrk counts a status >= 400 as an error; no request replays a key
ms = lambda k: round(r[k] / 1000, 3)
print(json.dumps({"created_per_second": round(created / secs, 1),
  "requests_per_second": round(r["requests"] / secs, 1), "responses": r["requests"], "created": created,
  "stored": int(sys.argv[2]), "non_201": r["status"],
  "errors": {k: r[k] for k in ("connect", "read", "write", "timeout") if r[k]},
  "p50_ms": ms("p50_us"), "p99_ms": ms("p99_us"), "max_ms": ms("max_us"), "client": "wrk"}))
EOF
}

oha_run() { # oha_run OUTFILE SECONDS [extra oha flags...]; oha's CPU seconds go to OUTFILE.cpu
  local file=$1 seconds=$2
  shift 2
  /usr/bin/time -f '{"user": %U, "system": %S, "elapsed": %e}' -o "$file.cpu" oha --no-tui --output-format json -z "${seconds}s" -c "$HTTP_CONNECTIONS" -m POST \
    -H 'content-type: application/json' -d "$TASK_BODY" "$@" \
    "http://127.0.0.1:$SVC_PORT/tasks" >"$file" 2>"$file.err"
}

oha_json() { # oha_json FILE [STORED]: the figures we keep from oha's JSON report
  python3 - "$1" "${2:-}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]
codes = r.get("statusCodeDistribution", {})
created = codes.get("201", 0)
total = sum(codes.values())
secs = s.get("total") or 1
lat = r.get("latencyPercentiles", {})
ms = lambda k: round(lat[k] * 1000, 3) if lat.get(k) is not None else None
print(json.dumps({"created_per_second": round(created / secs, 1),
  "requests_per_second": round(s.get("requestsPerSec", 0), 1), "responses": total, "created": created,
  "non_201": total - created, "errors": r.get("errorDistribution", {}),
  "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
  "max_ms": round(s["slowest"] * 1000, 3) if s.get("slowest") else None, "client": "oha",
  **({"stored": int(sys.argv[2])} if sys.argv[2] else {})}))
EOF
}

# Every HTTP run starts alike: the tasks of the runs before removed, and the AOF rewritten while
# it holds little. Otherwise each run measures a larger data set than the one before (3 runs of
# 15 s at 33,000/s store 1.5 million tasks), and the forks of Redis's automatic AOF rewrites,
# which stop Redis for a time that grows with its memory and then take a core for seconds, fall
# more often and cost more in each later run. Forks inside a run are still counted and reported.
http_fresh_start() { # http_fresh_start PREFIX
  tool clear --prefix "$1" >/dev/null
  lazyfree_wait
  aof_settle
}

bench_http() {
  local prefix=$TAG-http rep file forks stored
  PREFIXES+=("$prefix")
  log "figures 1-2: HTTP task creation ($HTTP_CONNECTIONS connections; ${HTTP_SECONDS}s closed loop, ${P99_SECONDS}s at $P99_RATE/s open loop; $REPS run(s))"
  svc_start "$prefix"
  oha_run "$OUT/oha-warmup.json" 2 || die "oha failed: $(cat "$OUT/oha-warmup.json.err")"
  for rep in $(seq 1 "$REPS"); do
    file=$OUT/$HTTP_CLIENT-create-$rep.json
    http_fresh_start "$prefix"
    forks=$(redis_info stats total_forks)
    cpu_mark
    stored=$(redis-cli -p "$REDIS_PORT" zcard "$prefix:tasks")
    [ "$rep" = 1 ] && perf_start http "$((HTTP_SECONDS > 10 ? 10 : HTTP_SECONDS))"
    if [ "$HTTP_CLIENT" = oha ]; then
      oha_run "$file" "$HTTP_SECONDS" || die "oha failed: $(cat "$file.err")"
    else
      wrk_run "$file" "$HTTP_SECONDS" || die "wrk failed: $(cat "$file.err" "$file.out")"
    fi
    perf_wait
    stored=$(($(redis-cli -p "$REDIS_PORT" zcard "$prefix:tasks") - stored))
    record http_create "$rep" "$("${HTTP_CLIENT}_json" "$file" "$stored")" "{\"cpu\": $(cpu_json "$file.cpu")}" \
      "{\"redis_forks\": $(($(redis_info stats total_forks) - forks))}"
    log "  create run $rep: $(tail -n 1 "$RESULTS" | cut -c1-200)"

    file=$OUT/oha-p99-$rep.json
    http_fresh_start "$prefix"
    forks=$(redis_info stats total_forks)
    cpu_mark
    oha_run "$file" "$P99_SECONDS" -q "$P99_RATE" --latency-correction ||
      die "oha failed: $(cat "$file.err")"
    record http_p99 "$rep" "$(oha_json "$file")" "{\"cpu\": $(cpu_json "$file.cpu")}" \
      "{\"redis_forks\": $(($(redis_info stats total_forks) - forks))}"
    log "  p99 run $rep: $(tail -n 1 "$RESULTS" | cut -c1-200)"
  done
  read -r hwm rss < <(svc_mem)
  record rss_http 1 "{\"vmhwm_kb\": $hwm, \"vmrss_kb\": $rss}"
  svc_stop
  tool clear --prefix "$prefix" >/dev/null
}

# ------------------------------------------------------------------------------------------------
# Figures 3 and 5: delivery of tasks all due at once
# ------------------------------------------------------------------------------------------------

# deliver FIGURE REP PREFIX COUNT [PENDING]: preloads COUNT due tasks under PREFIX (which holds
# PENDING tasks due later, for figure 5; Redis's dictionaries and AOF are then settled), starts
# the service, and times until the topic's end offset reaches COUNT. The result counts the forks
# Redis made meanwhile (snapshots, AOF rewrites): each copies the data set.
deliver() {
  local figure=$1 rep=$2 prefix=$3 count=$4 pending=${5:-}
  local topic=$TAG-$figure-$rep ready=$OUT/ready-$figure-$rep watch=$OUT/watch-$figure-$rep.json
  tool topic --name "$topic" --partitions "$PARTITIONS" >/dev/null
  local preload
  preload=$(tool preload --prefix "$prefix" --count "$count" --topic "$topic" \
    --partitions "$PARTITIONS" --payload-bytes "$PAYLOAD_BYTES" --due-at "$(($(now_ms) - 1000))")
  if [ -n "$pending" ]; then
    rehash_settle "$prefix" "$((pending + count))"
    aof_settle
  fi
  rm -f "$ready"
  tool watch --topic "$topic" --count "$count" --timeout 600 --ready "$ready" >"$watch" &
  local watcher=$!
  CHILD_PIDS+=("$watcher")
  while [ ! -s "$ready" ]; do
    kill -0 "$watcher" 2>/dev/null || die "bench_tool watch exited early"
    sleep 0.05
  done
  local t0 hwm rss forks
  persistence_wait
  forks=$(redis_info stats total_forks)
  t0=$(now_ms)
  SVC_PID=""
  cpu_mark # the service's counters start from 0
  svc_start "$prefix"
  [ "$rep" = 1 ] && [ "$figure" = delivery ] && perf_start delivery 5
  wait "$watcher" || die "bench_tool watch failed"
  perf_wait
  local cpu
  cpu=$(cpu_json)
  read -r hwm rss < <(svc_mem)
  svc_stop
  forks=$(($(redis_info stats total_forks) - forks))
  python3 - "$figure" "$rep" "$count" "$t0" "$watch" "$preload" "$cpu" "$hwm" "$rss" "$forks" >>"$RESULTS" <<'EOF'
import json, sys
figure, rep, count, t0, watch, preload, cpu, hwm, rss, forks = sys.argv[1:]
w = json.load(open(watch))
count, t0 = int(count), int(t0)
out = {"figure": figure, "rep": int(rep), "count": count, "delivered": w["count"],
       "reached": w["reached"], "preload": json.loads(preload), "cpu": json.loads(cpu),
       "vmhwm_kb": int(hwm), "vmrss_kb": int(rss), "redis_forks": int(forks)}
if w["reached"] and w["first_ts"]:
    span = max(w["reached_at"] - w["first_ts"], 1) / 1000
    out["per_second"] = round(count / span, 1)
    out["seconds_first_publish_to_all"] = span
    out["per_second_from_service_start"] = round(count / (max(w["reached_at"] - t0, 1) / 1000), 1)
    out["start_to_first_publish_ms"] = w["first_ts"] - t0
print(json.dumps(out))
EOF
  log "  $figure run $rep: $(tail -n 1 "$RESULTS" | cut -c1-220)"
}

bench_delivery() {
  local rep prefix
  log "figure 3: delivery of $DELIVERY_N tasks all due at once ($REPS run(s))"
  for rep in $(seq 1 "$REPS"); do
    prefix=$TAG-delivery-$rep
    PREFIXES+=("$prefix")
    deliver delivery "$rep" "$prefix" "$DELIVERY_N"
    tool clear --prefix "$prefix" >/dev/null
  done
}

bench_claim() {
  local prefix=$TAG-claim pending have=0 rep add
  PREFIXES+=("$prefix")
  for pending in $CLAIM_PENDING; do
    add=$((pending - have))
    log "figure 5: $CLAIM_BATCH due tasks with $pending pending far ahead (adding $add; $REPS run(s))"
    tool preload --prefix "$prefix" --count "$add" --topic "$TAG-claim-never" \
      --payload-bytes "$PAYLOAD_BYTES" --due-at "$(($(now_ms) + FAR_FUTURE_MS))" \
      --concurrency 512 >"$OUT/preload-claim-$pending.json"
    log "  preloaded: $(cat "$OUT/preload-claim-$pending.json")"
    have=$pending
    for rep in $(seq 1 "$REPS"); do
      deliver "claim_$pending" "$rep" "$prefix" "$CLAIM_BATCH" "$pending"
    done
  done
  log "  clearing $have pending tasks"
  tool clear --prefix "$prefix" >/dev/null
}

# ------------------------------------------------------------------------------------------------
# Figure 4: lateness at a steady rate
# ------------------------------------------------------------------------------------------------
bench_lateness() {
  local rate rep prefix topic count lead due_at preload late cpu hwm rss
  for rate in $LATENESS_RATES; do
    count=$((rate * (LATENESS_SECONDS + LATENESS_WARMUP)))
    log "figure 4: lateness at $rate tasks/s for ${LATENESS_WARMUP}s warm-up + ${LATENESS_SECONDS}s ($count tasks; $REPS run(s))"
    for rep in $(seq 1 "$REPS"); do
      prefix=$TAG-late$rate-$rep
      topic=$TAG-late$rate-$rep
      PREFIXES+=("$prefix")
      tool topic --name "$topic" --partitions "$PARTITIONS" >/dev/null
      svc_start "$prefix"
      # The first task falls due once the preload (at >= 15,000/s) is surely over.
      lead=$((3000 + count / 15))
      due_at=$(($(now_ms) + lead))
      preload=$(tool preload --prefix "$prefix" --count "$count" --topic "$topic" \
        --partitions "$PARTITIONS" --payload-bytes "$PAYLOAD_BYTES" --due-at "$due_at" --rate "$rate")
      # CPU is counted from the first due time on.
      sleep "$(python3 -c "print(max(0, ($due_at - $(now_ms)) / 1000))")"
      cpu_mark
      late=$(tool lateness --topic "$topic" --count "$count" --first-due "$due_at" \
        --warmup-ms $((LATENESS_WARMUP * 1000)) --timeout $((LATENESS_SECONDS * 4 + 60)))
      cpu=$(cpu_json)
      read -r hwm rss < <(svc_mem)
      svc_stop
      record "lateness_$rate" "$rep" "$late" "{\"preload\": $preload, \"first_due\": $due_at, \"cpu\": $cpu, \"vmhwm_kb\": $hwm}"
      log "  lateness $rate run $rep: $(tail -n 1 "$RESULTS" | cut -c1-220)"
      tool clear --prefix "$prefix" >/dev/null
    done
  done
}

# ------------------------------------------------------------------------------------------------
# Figure 6b: Redis memory per pending task
# ------------------------------------------------------------------------------------------------
used_memory() { redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | sed -n 's/^used_memory://p'; }
# Waits (up to 2 min) until Redis has freed what earlier figures UNLINKed, so the delta is ours.
lazyfree_wait() {
  local pending
  for _ in $(seq 1 600); do
    pending=$(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | sed -n 's/^lazyfree_pending_objects://p')
    [ "${pending:-0}" = 0 ] && return 0
    sleep 0.2
  done
}

bench_memory() {
  local prefix=$TAG-memory before after keys key usage=0 preload
  PREFIXES+=("$prefix")
  log "figure 6: Redis memory with $MEMORY_PENDING tasks pending (payload $PAYLOAD_BYTES bytes)"
  lazyfree_wait
  before=$(used_memory)
  preload=$(tool preload --prefix "$prefix" --count "$MEMORY_PENDING" --topic "$TAG-mem-never" \
    --payload-bytes "$PAYLOAD_BYTES" --due-at "$(($(now_ms) + FAR_FUTURE_MS))" --concurrency 512)
  after=$(used_memory)
  keys=$(redis-cli -p "$REDIS_PORT" --scan --pattern "*$prefix*")
  for key in $keys; do
    usage=$((usage + $(redis-cli -p "$REDIS_PORT" memory usage "$key" samples 0)))
  done
  local record_bytes
  record_bytes=$(redis-cli -p "$REDIS_PORT" --scan --pattern "*$prefix*records*" | head -n 1 |
    xargs -r -I{} redis-cli -p "$REDIS_PORT" hrandfield {} 1 withvalues | tail -n 1 | wc -c)
  record redis_memory 1 "{\"pending\": $MEMORY_PENDING, \"used_memory_before\": $before, \"used_memory_after\": $after, \"memory_usage_keys\": $usage, \"payload_bytes\": $PAYLOAD_BYTES, \"record_bytes\": $((record_bytes - 1)), \"keys\": \"$(echo $keys)\", \"preload\": $preload}"
  log "  $(tail -n 1 "$RESULTS" | cut -c1-300)"
  tool clear --prefix "$prefix" >/dev/null
}

# ------------------------------------------------------------------------------------------------
log "mode $MODE, $REPS run(s) per figure, results in $OUT"
{
  echo "{\"mode\": \"$MODE\", \"reps\": $REPS, \"started\": \"$(date -Is)\","
  echo " \"git\": \"${BENCH_GIT:-$(git describe --always --dirty 2>/dev/null || echo unknown)}\","
  echo " \"nproc\": $(nproc), \"cpu\": \"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)\","
  echo " \"mem_total_kb\": $(awk '/MemTotal/{print $2}' /proc/meminfo),"
  echo " \"redis\": \"$(redis-server --version | awk '{print $3}')\", \"oha\": \"$(oha --version | awk '{print $2}')\","
  echo " \"wrk\": \"$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}')\","
  echo " \"service_env\": \"${BENCH_SERVICE_ENV:-}\","
  echo " \"build_seconds\": $BUILD_SECONDS, \"payload_bytes\": $PAYLOAD_BYTES, \"partitions\": $PARTITIONS}"
} >"$OUT/meta.json"
T_MEASURE=$(date +%s)
for figure in $ONLY; do
  lazyfree_wait # Redis may still be freeing what the previous figure removed
  case "$figure" in
    http) bench_http ;;
    delivery) bench_delivery ;;
    lateness) bench_lateness ;;
    claim) bench_claim ;;
    memory) bench_memory ;;
    *) die "unknown figure $figure (BENCH_ONLY)" ;;
  esac
done
MEASURE_SECONDS=$(($(date +%s) - T_MEASURE))
TOTAL_SECONDS=$(($(date +%s) - T_START))

python3 "$BENCH_DIR/report.py" "$OUT" "$MEASURE_SECONDS" "$TOTAL_SECONDS" | tee "$OUT/table.md"
