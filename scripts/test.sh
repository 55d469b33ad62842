#!/usr/bin/env bash
# Runs every check and test of kafka-retry: rustfmt, clippy (warnings are errors), `cargo test`
# (unit, handler and integration tests against a real Redis and a real Kafka broker), the fault
# suite in its short form (docs/RELIABILITY.md), schemathesis against openapi.yaml, and the
# dashboard's end-to-end test in headless Chromium.
# scripts/services.sh starts them first if they are not running yet; they are left running
# afterwards (stop them with `scripts/services.sh down`).
#
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
#
# Environment: REDIS_PORT and KAFKA_PORT pick the local services (see scripts/services.sh).
# The tests find them through
#   KAFKA_RETRY_TEST_REDIS=127.0.0.1:$REDIS_PORT   (default 127.0.0.1:6379)
#   KAFKA_RETRY_TEST_KAFKA=127.0.0.1:$KAFKA_PORT   (default 127.0.0.1:9092)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/build-deps.sh
scripts/services.sh up

export KAFKA_RETRY_TEST_REDIS="127.0.0.1:${REDIS_PORT:-6379}"
export KAFKA_RETRY_TEST_KAFKA="127.0.0.1:${KAFKA_PORT:-9092}"

step() {
  printf '\n==> %s\n' "$*" >&2
  "$@"
}

step cargo fmt --check
step cargo clippy --all-targets --features fault-suite -- -D warnings
step cargo test "$@"
step env FAULT_SUITE=short cargo test --features fault-suite --test fault_suite -- --test-threads=1
step scripts/schemathesis.sh
step scripts/ui-test.sh
