#!/usr/bin/env bash
# Runs every check and test of kafka-retry: rustfmt, clippy (warnings are errors) and
# `cargo test` (unit, integration and doc tests) against a real Redis and a real Kafka broker.
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
step cargo clippy --all-targets -- -D warnings
step cargo test "$@"
step scripts/schemathesis.sh
step scripts/ui-test.sh
