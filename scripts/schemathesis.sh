#!/usr/bin/env bash
# Property-based API testing: schemathesis generates requests from openapi.yaml (valid and
# invalid), sends them to a freshly started service and checks every answer against the spec:
# no 5xx, every status code and body as documented. Needs Redis (scripts/services.sh up).
#
# Environment: REDIS_PORT [6379]; SCHEMATHESIS_EXAMPLES, examples per operation [1200].
#
# The service runs with KAFKA_BROKERS=127.0.0.1:9 (a closed port), so the only brokers tasks may
# name are on loopback, and generated tasks never reach a real cluster. The check
# positive_data_acceptance is left out: whether a schema-valid task is accepted depends on the
# broker allowlist, a setting, not the schema.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version=4.32.5
if [ "$(python3 -m pip show schemathesis 2>/dev/null | sed -n 's/^Version: //p')" != "$version" ]; then
  python3 -m pip install --quiet "schemathesis==$version"
fi

cargo build --quiet --bin kafka-retry
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prefix="schemathesis-$$"
log=$(mktemp)
HTTP_HOST=127.0.0.1 HTTP_PORT=$port REDIS_ADDR="127.0.0.1:${REDIS_PORT:-6379}" \
  REDIS_KEY_PREFIX=$prefix KAFKA_BROKERS=127.0.0.1:9 LOG_LEVEL=warn \
  target/debug/kafka-retry >"$log" 2>&1 &
service=$!
cleanup() {
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  redis-cli -p "${REDIS_PORT:-6379}" --no-auth-warning del "$prefix:tasks" "{$prefix:tasks}:leases" \
    "{$prefix:tasks}:records" "{$prefix:tasks}:dead" >/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done

report=$(mktemp -d)
status=0
python3 -m schemathesis.cli run openapi.yaml --url "http://127.0.0.1:$port" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-1200}" --seed 1 \
  --report ndjson --report-dir "$report" || status=$?
requests=$(grep -o '"response"' "$report"/*.ndjson 2>/dev/null | wc -l || true)
echo "schemathesis: $requests requests sent"
rm -rf "$report"
if [ "$status" -ne 0 ]; then
  echo "schemathesis found failures; service log:" >&2
  tail -n 50 "$log" >&2
fi
exit "$status"
