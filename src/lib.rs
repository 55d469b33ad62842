//! kafka-retry: takes messages that failed to reach Kafka, keeps them in Redis, and publishes them
//! when they fall due, retrying with exponential backoff and dead-lettering what exhausts its budget.
//!
//! Where things are:
//! - [`domain`]: the task, its validation, backoff and state machine (`task.rs`), the broker
//!   allowlist (`brokers.rs`), the ports it needs ([`domain::TaskStore`], [`domain::Publisher`],
//!   [`domain::Clock`]) and the use cases ([`domain::TaskService`]: submit, deliver, inspect,
//!   cancel, retry, expire). It depends on no adapter.
//! - [`redis_store`]: the task store on Redis (schedule, leases, records, dead set, idempotency
//!   keys), with its Lua scripts beside it.
//! - [`kafka_publisher`]: the publisher on Kafka, one idempotent producer per cluster.
//! - [`http`]: the router and handlers (`tasks.rs`), the one error type (`error.rs`), serving with
//!   connection limits (`server.rs`) and the dashboard page (`dashboard.html`).
//! - [`worker`]: the loop that claims due tasks and delivers them, a few batches at a time.
//! - [`config`], [`telemetry`], [`app`]: reading the environment; logs, trace export and metrics;
//!   start-up and shutdown.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod kafka_publisher;
pub mod redis_store;
pub mod telemetry;
pub mod worker;
