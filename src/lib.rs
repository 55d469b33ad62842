//! kafka-retry: takes messages that failed to reach Kafka, keeps them in Redis, and publishes them
//! when they fall due, retrying with exponential backoff and dead-lettering what exhausts its budget.
//!
//! Where things are:
//! - [`domain`]: the task, its validation and state machine, the ports it needs
//!   ([`domain::TaskStore`], [`domain::Publisher`], [`domain::Clock`]) and the use cases
//!   ([`domain::TaskService`]). It depends on no adapter.
//! - [`redis_store`]: the task store on Redis (schedule, leases, records), with its Lua scripts.
//! - [`kafka_publisher`]: the publisher on Kafka, one idempotent producer per cluster.
//! - [`http`]: the HTTP API and its error mapping.
//! - [`worker`]: the loop that delivers due tasks.
//! - [`config`], [`telemetry`], [`app`]: reading the environment, logging, start-up and shutdown.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod kafka_publisher;
pub mod redis_store;
pub mod telemetry;
pub mod worker;
