//! What the domain needs from the outside world, as traits named by role. Adapters implement them;
//! the domain never names Redis, Kafka or HTTP.

use std::future::Future;

use super::task::{Destination, Message, Millis, Task, TaskId};

/// The task store could not be reached or did not answer in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task store unavailable: {0}")]
pub struct StoreError(pub String);

/// A publish that was not acknowledged by Kafka.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Kafka (or the client) refused or gave up on it; the message says why. The attempt counts.
    #[error("{0}")]
    Rejected(String),
    /// It was withdrawn before it was sent, on shutdown. The attempt does not count.
    #[error("withdrawn before it was sent")]
    Withdrawn,
}

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

/// What storing a new task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// It was stored and scheduled.
    New,
    /// Its idempotency key was taken by the task with this id; nothing was stored.
    Existing(TaskId),
}

/// Where a stored task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// In the schedule, waiting for its next publish.
    Scheduled,
    /// Claimed by a worker, being published.
    InFlight,
    /// Kept as dead.
    Dead,
}

/// A task with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTask {
    /// The task's record.
    pub task: Task,
    /// Where it is.
    pub placement: Placement,
}

/// What cancelling a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It is gone.
    Removed,
    /// There was no such task.
    NotFound,
    /// A worker is publishing it; it was left alone.
    InFlight,
}

/// How many tasks are where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// In the schedule (including those waiting for a dead-letter publish).
    pub scheduled: u64,
    /// Being published.
    pub in_flight: u64,
    /// Kept as dead.
    pub dead: u64,
}

impl Counts {
    /// `(scheduled, in_flight, dead)`.
    pub fn as_tuple(self) -> (u64, u64, u64) {
        (self.scheduled, self.in_flight, self.dead)
    }
}

/// Durable storage for tasks and their schedule.
pub trait TaskStore: Send + Sync + 'static {
    /// Stores new tasks and schedules each at its `due_at`, each all or nothing, in one step.
    /// A task whose idempotency key is already taken is not stored.
    fn create_many(
        &self,
        tasks: &[Task],
    ) -> impl Future<Output = Result<Vec<Created>, StoreError>> + Send;

    /// Stores one new task, as [`create_many`](Self::create_many) does.
    fn create(&self, task: &Task) -> impl Future<Output = Result<Created, StoreError>> + Send {
        async move {
            let created = self.create_many(std::slice::from_ref(task)).await?;
            created
                .first()
                .copied()
                .ok_or_else(|| StoreError("the store answered for no task".into()))
        }
    }

    /// The task with this id, and where it is.
    fn find(
        &self,
        id: TaskId,
    ) -> impl Future<Output = Result<Option<StoredTask>, StoreError>> + Send;

    /// A page of the tasks at `placement`, in due (or death) order, oldest first unless
    /// `newest_first`, and how many there are.
    fn list(
        &self,
        placement: Placement,
        offset: u64,
        limit: usize,
        newest_first: bool,
    ) -> impl Future<Output = Result<(Vec<StoredTask>, u64), StoreError>> + Send;

    /// Removes a task unless a worker is publishing it.
    fn cancel(&self, id: TaskId) -> impl Future<Output = Result<Cancelled, StoreError>> + Send;

    /// Puts tasks found at `placement` back in the schedule with the records given, as long as
    /// they are still there and not in flight; says for each whether it was.
    fn revive(
        &self,
        tasks: &[(Task, Placement)],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;

    /// Removes up to `limit` dead tasks that died before `before`; returns how many.
    fn expire_dead(
        &self,
        before: Millis,
        limit: usize,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// How many tasks are where.
    fn counts(&self) -> impl Future<Output = Result<Counts, StoreError>> + Send;

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

    /// Withdraws every message not yet sent to Kafka; their publishes resolve with
    /// [`PublishError::Withdrawn`]. Messages already sent are left to be answered.
    fn withdraw_unsent(&self);
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
