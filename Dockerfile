# Builds the kafka-retry service into a small Debian image.
#
#   docker build -t kafka-retry .
#   docker run --rm -p 8080:8080 -e REDIS_ADDR=host:6379 -e KAFKA_BROKERS=host:9092 kafka-retry
#
# Configuration is by environment variable only (HTTP_PORT, REDIS_ADDR, KAFKA_BROKERS, ...);
# see the README for the full list and defaults.

FROM rust:1-bookworm AS builder

# rdkafka builds librdkafka from source: it needs a C toolchain, make, zlib and OpenSSL (for
# Kafka TLS/SASL; the Redis client's TLS uses OpenSSL too).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies first, against placeholder sources, so that a change to src/ alone does not
# rebuild them (librdkafka takes minutes).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin kafka-retry \
    && rm -rf src

COPY src ./src
# The placeholders are newer than the copied sources: touch them so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin kafka-retry


FROM debian:bookworm-slim

# zlib1g and libssl3 are what the binary links besides libc; ca-certificates verifies TLS peers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kafka-retry \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin kafka-retry

COPY --from=builder /build/target/release/kafka-retry /usr/local/bin/kafka-retry

USER 10001:10001

ENV HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080

EXPOSE 8080

# The service stops gracefully on SIGTERM, Docker's default stop signal.
ENTRYPOINT ["/usr/local/bin/kafka-retry"]
