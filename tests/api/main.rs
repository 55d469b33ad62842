//! Integration tests against a real Redis and a real Kafka broker (`scripts/services.sh up`).

mod delivery;
mod helpers;
mod instances;
mod kafka_publisher;
mod limits;
mod operations;
mod process;
mod redis_store;
mod tracing;
