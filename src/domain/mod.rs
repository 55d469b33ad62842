//! The domain: tasks, their rules, the ports they need and the use cases. It depends on no
//! adapter; Redis, Kafka and HTTP live outside it.

pub mod alarm;
pub mod brokers;
pub mod ports;
pub mod service;
pub mod task;

#[cfg(test)]
pub(crate) mod fakes;

pub use alarm::Alarm;
pub use brokers::BrokerAllowlist;
pub use ports::{
    Cancelled, Claim, Clock, Counts, Created, Outcome, Placement, PublishError, Publisher,
    StoreError, StoredTask, SystemClock, TaskStore,
};
pub use service::{CreateError, Retried, Settings, Step, Submitted, TaskService, metric};
pub use task::{
    Backoff, BackoffRequest, Destination, DestinationRequest, Message, Millis, NewTask, Strategy,
    Task, TaskId, TaskRequest, TaskState, Topic, ValidationError,
};
