//! What the domain needs from the outside world, as traits named by role. Adapters implement them;
//! the domain never names Redis, Kafka or HTTP.

use std::future::Future;

use super::task::{Destination, Message, Millis, Task, TaskId};

/// The task store could not be reached or did not answer in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task store unavailable: {0}")]
pub struct StoreError(pub String);

/// A publish was not acknowledged by Kafka; the message says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Tasks claimed for delivery, and when the next unclaimed one falls due.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The claimed tasks; each is leased to this claim until `lease_until`.
    pub tasks: Vec<Task>,
    /// The lease's end; settling after it may find the tasks claimed by someone else.
    pub lease_until: Millis,
    /// When the earliest task still in the schedule falls due, if there is one.
    pub next_due: Option<Millis>,
}

/// What to record for a claimed task once its publish is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published (to its destination or its dead-letter destination): forget it.
    Done(TaskId),
    /// Put it back in the schedule, due at its `due_at`, with its record updated.
    Reschedule(Task),
    /// Keep it as dead, out of the schedule, with its record updated.
    Bury(Task),
}

impl Outcome {
    /// The task this outcome is about.
    pub fn task_id(&self) -> TaskId {
        match self {
            Self::Done(id) => *id,
            Self::Reschedule(task) | Self::Bury(task) => task.id,
        }
    }
}

/// Durable storage for tasks and their schedule.
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task and schedules it at its `due_at`, all or nothing.
    fn create(&self, task: &Task) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Atomically claims up to `limit` tasks due at `now` (and tasks whose lease ran out), leasing
    /// them until `lease_until` so that no other claim returns them meanwhile.
    fn claim_due(
        &self,
        now: Millis,
        limit: usize,
        lease_until: Millis,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records outcomes for tasks claimed with the lease ending at `lease_until`, in one atomic
    /// step. Outcomes for tasks whose lease is no longer this claim's are ignored.
    fn settle(
        &self,
        lease_until: Millis,
        outcomes: &[Outcome],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Answers when the store is reachable.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Publishes payloads to Kafka.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `message` to `destination`; resolves once Kafka acknowledged it or gave up.
    fn publish(
        &self,
        destination: &Destination,
        message: &Message<'_>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// The current time. A trait so that tests can control it.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}
