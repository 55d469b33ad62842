#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from openapi.yaml (valid and
# invalid), sends them to a freshly started service and checks every answer against the spec:
# no 5xx, every status code, content type, header and body as documented, 405 with `Allow` for
# undocumented methods, and, in its stateful phase, that a cancelled task is gone. Needs Redis
# (scripts/services.sh up); Kafka is not used.
#
# Environment: REDIS_PORT [6379]; SCHEMATHESIS_EXAMPLES, examples per operation [150]. The default
# sends 1,700 to 2,700 requests (the stateful phase varies) in under a minute, plus the build.
#
# The service runs with KAFKA_BROKERS=KAFKA_ALLOWED_BROKERS=127.0.0.1:9 (a closed port), so the
# only broker a task may name is one where nothing listens, and no task reaches a real cluster.
# Before the run a batch seeds three tasks on that broker: one scheduled a day ahead (with a key,
# headers and a backoff), one that fails its only attempt and is kept as dead, and one that fails
# its only attempt and then keeps failing its dead-letter publish. They make the listing, inspect,
# cancel and retry operations answer with real tasks in every state, not only 404s and empty
# pages. KAFKA_MESSAGE_TIMEOUT=1s makes their attempts fail quickly; LOG_LEVEL keeps librdkafka's
# complaints about the closed port out of the log shown on failure.
#
# Checks left out, each because of configuration, not behaviour:
# - positive_data_acceptance: whether a schema-valid task is accepted depends on the broker
#   allowlist, a setting, not the schema; generated tasks name arbitrary brokers and are rejected.
# For the same reason schemathesis warns that POST /tasks "mostly rejected generated data". It
# may also warn that an operation on /tasks/{id} kept answering 404 (generated ids name no task)
# and note links it could not follow from an empty page of GET /tasks. None of these is a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version=4.32.5
if [ "$(python3 -m pip show schemathesis 2>/dev/null | sed -n 's/^Version: //p')" != "$version" ]; then
  python3 -m pip install --quiet "schemathesis==$version"
fi

redis_port=${REDIS_PORT:-6379}
cargo build --quiet --bin kafka-retry
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
prefix="schemathesis-$$"
log=$(mktemp)
HTTP_HOST=127.0.0.1 HTTP_PORT=$port REDIS_ADDR="127.0.0.1:$redis_port" \
  REDIS_KEY_PREFIX=$prefix KAFKA_BROKERS=127.0.0.1:9 KAFKA_ALLOWED_BROKERS=127.0.0.1:9 \
  KAFKA_MESSAGE_TIMEOUT=1s LOG_LEVEL=warn,librdkafka=off \
  target/debug/kafka-retry >"$log" 2>&1 &
service=$!
report=$(mktemp -d)
cleanup() {
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  redis-cli -p "$redis_port" --no-auth-warning --scan --pattern "{$prefix:tasks}:idempotency:*" |
    while IFS= read -r key; do
      redis-cli -p "$redis_port" --no-auth-warning del "$key" >/dev/null || true
    done || true
  redis-cli -p "$redis_port" --no-auth-warning del "$prefix:tasks" "{$prefix:tasks}:leases" \
    "{$prefix:tasks}:records" "{$prefix:tasks}:dead" >/dev/null || true
  rm -rf "$log" "$report"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "$base/health" >/dev/null && break
  sleep 0.1
done

# Seed tasks in every state (see above); the dead one dies about a second after it is due.
destination='{"topic": "schemathesis", "partition": 0, "kafka_conn_string": "127.0.0.1:9"}'
seeded=$(curl -sS -X POST "$base/tasks/batch" -H 'Content-Type: application/json' -d @- <<EOF
{"tasks": [
  {"id": "schemathesis-scheduled", "payload": "{\"seed\": \"scheduled\"}", "key": "seed",
   "headers": {"source": "schemathesis"}, "destination": $destination, "max_retries": 5,
   "retry_delay_seconds": 86400,
   "backoff": {"strategy": "linear", "jitter": true, "max_delay_seconds": 86400}},
  {"payload": "{\"seed\": \"dead\"}", "destination": $destination, "max_retries": 1,
   "retry_delay_seconds": 1},
  {"payload": "{\"seed\": \"dead-lettering\"}", "destination": $destination,
   "dead_destination": $destination, "max_retries": 1, "retry_delay_seconds": 1,
   "backoff": {"strategy": "fixed"}}
]}
EOF
)
if [ "$(grep -o '"status":201' <<<"$seeded" | wc -l)" -ne 3 ]; then
  echo "seeding tasks failed: $seeded" >&2
  exit 1
fi
for _ in $(seq 100); do
  curl -sf "$base/tasks?state=dead" | grep -q '"total":0' || break
  sleep 0.1
done

status=0
python3 -m schemathesis.cli run openapi.yaml --url "$base" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-150}" --seed 1 \
  --report ndjson --report-dir "$report" || status=$?
requests=$(grep -o '"response"' "$report"/*.ndjson 2>/dev/null | wc -l || true)
echo "schemathesis: $requests requests sent"
if [ "$status" -ne 0 ]; then
  echo "schemathesis found failures; service log:" >&2
  tail -n 50 "$log" >&2
fi
exit "$status"
