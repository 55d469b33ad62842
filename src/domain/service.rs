//! The use cases: schedule a task, and deliver the tasks that are due.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{error, info, warn};

use super::alarm::Alarm;
use super::brokers::BrokerAllowlist;
use super::ports::{
    Cancelled, Claim, Clock, Counts, Created, Outcome, Placement, PublishError, Publisher,
    StoreError, StoredTask, TaskStore,
};
use super::task::{
    AfterFailure, Destination, Millis, NewTask, Task, TaskId, TaskState, ValidationError,
};

/// The knobs the use cases need, read from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest single delay between two attempts.
    pub max_delay: Duration,
    /// How many tasks one worker step claims at most.
    pub batch_size: usize,
    /// How long a claim keeps other instances away from its tasks.
    pub lease: Duration,
    /// How long one call to the store may take before it counts as failed.
    pub store_timeout: Duration,
    /// The brokers tasks may name.
    pub allowed_brokers: BrokerAllowlist,
}

/// Why a task could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The task breaks a rule of this service; nothing was stored.
    #[error(transparent)]
    Rejected(#[from] ValidationError),
    /// The store could not take it; nothing was stored.
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// How long publishes already sent to Kafka get to be answered once a step gives up.
const WITHDRAW_DRAIN: Duration = Duration::from_secs(2);

/// What one worker step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// How many tasks it claimed.
    pub claimed: usize,
    /// How many of those it handed back unchanged (only when told to give up).
    pub released: usize,
    /// When the earliest task left in the schedule falls due.
    pub next_due: Option<Millis>,
}

/// What a submission came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// A new task, stored and scheduled.
    Scheduled(Box<Task>),
    /// Its idempotency key was already used: this is the first task's id; nothing new was stored.
    Existing(TaskId),
}

impl Submitted {
    /// The id the client should know the task by.
    pub fn task_id(&self) -> TaskId {
        match self {
            Self::Scheduled(task) => task.id,
            Self::Existing(id) => *id,
        }
    }
}

/// What asking to retry a task came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// Back in the schedule with a fresh budget, due now.
    Revived,
    /// No such task.
    NotFound,
    /// The task still has its budget (or is being published); nothing changed.
    NotExhausted,
}

/// Names of the metrics the use cases record.
pub mod metric {
    /// Tasks stored (not counting idempotent replays).
    pub const CREATED: &str = "kafka_retry_tasks_created_total";
    /// Publishes Kafka acknowledged, to destinations and dead-letter destinations.
    pub const PROCESSED: &str = "kafka_retry_tasks_processed_total";
    /// Publishes that failed.
    pub const FAILED: &str = "kafka_retry_tasks_failed_total";
    /// Tasks published to their dead-letter destination.
    pub const DEAD_LETTERED: &str = "kafka_retry_tasks_dead_lettered_total";
    /// Tasks kept as dead, having no dead-letter destination.
    pub const KEPT_DEAD: &str = "kafka_retry_tasks_kept_dead_total";
    /// Dead tasks removed by `DEAD_TASK_RETENTION`.
    pub const EXPIRED: &str = "kafka_retry_dead_tasks_expired_total";
    /// Dead tasks put back in the schedule by an operator.
    pub const REVIVED: &str = "kafka_retry_tasks_revived_total";
    /// Seconds one publish took, until Kafka answered.
    pub const PROCESSING_DURATION: &str = "kafka_retry_processing_duration_seconds";
    /// Seconds between a task's due time and its claim for publishing.
    pub const LATENESS: &str = "kafka_retry_lateness_seconds";
}

/// Schedules tasks and delivers them, over a store and a publisher.
pub struct TaskService<S, P> {
    store: S,
    publisher: P,
    clock: Arc<dyn Clock>,
    settings: Settings,
    alarm: Alarm,
}

impl<S: TaskStore, P: Publisher> TaskService<S, P> {
    /// A service over the given adapters.
    pub fn new(store: S, publisher: P, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Self {
            store,
            publisher,
            clock,
            settings,
            alarm: Alarm::default(),
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current time, by the service's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// The store it keeps tasks in.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The publisher it delivers with.
    pub fn publisher(&self) -> &P {
        &self.publisher
    }

    /// Rung whenever a task is stored due before the worker's next look at the schedule.
    pub fn alarm(&self) -> &Alarm {
        &self.alarm
    }

    /// Stores a validated task and schedules its first attempt, once its brokers are known to be
    /// allowed; a known idempotency key answers with the first task instead.
    pub async fn create(&self, new: NewTask) -> Result<Submitted, CreateError> {
        let mut submitted = self.create_many(vec![Ok(new)]).await?;
        submitted
            .pop()
            .ok_or_else(|| StoreError("the store answered for no task".into()))?
            .map_err(CreateError::Rejected)
    }

    /// Stores a batch of submissions in one store call; each that is invalid or names a broker
    /// outside the allowlist is answered with its error and the others go ahead.
    pub async fn create_many(
        &self,
        submissions: Vec<Result<NewTask, ValidationError>>,
    ) -> Result<Vec<Result<Submitted, ValidationError>>, StoreError> {
        let now = self.clock.now();
        let mut tasks = Vec::new();
        let answers: Vec<Result<(), ValidationError>> = submissions
            .into_iter()
            .map(|submission| {
                let new = submission?;
                self.check_brokers("destination", &new.destination)?;
                if let Some(dead) = &new.dead_destination {
                    self.check_brokers("dead_destination", dead)?;
                }
                tasks.push(Task::new(
                    TaskId::generate(),
                    new,
                    now,
                    self.settings.max_delay,
                ));
                Ok(())
            })
            .collect();
        let created = self.bounded(self.store.create_many(&tasks)).await?;
        let mut stored = tasks
            .into_iter()
            .zip(created)
            .map(|(task, created)| match created {
                Created::New => {
                    metrics::counter!(metric::CREATED).increment(1);
                    self.alarm.stored(task.due_at);
                    info!(
                        task_id = %task.id,
                        attempt = 1,
                        max_retries = task.max_retries,
                        topic = %task.destination.topic,
                        due_at = task.due_at,
                        "task scheduled"
                    );
                    Submitted::Scheduled(Box::new(task))
                }
                Created::Existing(first) => {
                    info!(task_id = %first, "idempotent replay; nothing scheduled");
                    Submitted::Existing(first)
                }
            });
        answers
            .into_iter()
            .map(|answer| match answer {
                Ok(()) => stored
                    .next()
                    .map(Ok)
                    .ok_or_else(|| StoreError("the store answered for fewer tasks".into())),
                Err(rejected) => Ok(Err(rejected)),
            })
            .collect()
    }

    /// The task with this id, and where it is.
    pub async fn find(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        self.bounded(self.store.find(id)).await
    }

    /// A page of tasks at `placement`, oldest first unless `newest_first`, and how many there are.
    pub async fn list(
        &self,
        placement: Placement,
        offset: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<(Vec<StoredTask>, u64), StoreError> {
        self.bounded(self.store.list(placement, offset, limit, newest_first))
            .await
    }

    /// How many tasks are where.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        self.bounded(self.store.counts()).await
    }

    /// Cancels a task unless it is being published.
    pub async fn cancel(&self, id: TaskId) -> Result<Cancelled, StoreError> {
        let cancelled = self.bounded(self.store.cancel(id)).await?;
        if cancelled == Cancelled::Removed {
            info!(task_id = %id, "task cancelled");
        }
        Ok(cancelled)
    }

    /// Puts a task whose budget ran out (dead, or waiting for its dead-letter publish) back in
    /// the schedule with a fresh budget, due now.
    pub async fn retry(&self, id: TaskId) -> Result<Retried, StoreError> {
        let Some(stored) = self.find(id).await? else {
            return Ok(Retried::NotFound);
        };
        Ok(if self.revive(vec![stored]).await? == 1 {
            Retried::Revived
        } else {
            Retried::NotExhausted
        })
    }

    /// Puts up to `limit` dead tasks, oldest first, back in the schedule with a fresh budget;
    /// returns how many.
    pub async fn retry_dead(&self, limit: usize) -> Result<u64, StoreError> {
        let (dead, _) = self.list(Placement::Dead, 0, limit, false).await?;
        self.revive(dead).await
    }

    async fn revive(&self, found: Vec<StoredTask>) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let exhausted: Vec<(Task, Placement)> = found
            .into_iter()
            .filter(|stored| match stored.placement {
                Placement::Dead => true,
                Placement::Scheduled => stored.task.state == TaskState::DeadLettering,
                Placement::InFlight => false,
            })
            .map(|stored| (stored.task.revived(now), stored.placement))
            .collect();
        let revived = self.bounded(self.store.revive(&exhausted)).await?;
        let mut count = 0;
        for ((task, _), revived) in exhausted.iter().zip(revived) {
            if revived {
                count += 1;
                self.alarm.stored(task.due_at);
                info!(
                    task_id = %task.id,
                    max_retries = task.max_retries,
                    topic = %task.destination.topic,
                    "task revived with a fresh budget"
                );
            }
        }
        metrics::counter!(metric::REVIVED).increment(count);
        Ok(count)
    }

    /// Removes dead tasks that died longer than `retention` ago; returns how many.
    pub async fn expire_dead(&self, retention: Duration) -> Result<u64, StoreError> {
        const PAGE: usize = 1000;
        let before = self.clock.now().saturating_sub(millis(retention));
        let mut total = 0;
        loop {
            let expired = self.bounded(self.store.expire_dead(before, PAGE)).await?;
            total += expired;
            if expired < PAGE as u64 {
                break;
            }
        }
        if total > 0 {
            metrics::counter!(metric::EXPIRED).increment(total);
            info!(expired = total, "dead tasks past their retention removed");
        }
        Ok(total)
    }

    fn check_brokers(&self, field: &str, destination: &Destination) -> Result<(), ValidationError> {
        if self
            .settings
            .allowed_brokers
            .permits(&destination.kafka_conn_string)
        {
            return Ok(());
        }
        Err(ValidationError {
            field: format!("{field}.kafka_conn_string"),
            reason: "names a broker that is not in KAFKA_ALLOWED_BROKERS".into(),
        })
    }

    /// Answers when the store is reachable.
    pub async fn health(&self) -> Result<(), StoreError> {
        self.bounded(self.store.ping()).await
    }

    /// One worker step: claims a batch of due tasks, publishes them all concurrently, and records
    /// every outcome in one write. See [`deliver`](Self::deliver) for `give_up`.
    pub async fn deliver_due(&self, give_up: impl Future<Output = ()>) -> Result<Step, StoreError> {
        let claim = self.claim().await?;
        self.deliver(claim, give_up).await
    }

    /// Claims up to a batch of due tasks (and tasks whose lease ran out), leased to this claim.
    pub async fn claim(&self) -> Result<Claim, StoreError> {
        let now = self.clock.now();
        let lease_until = now.saturating_add(millis(self.settings.lease));
        let claim = self
            .bounded(
                self.store
                    .claim_due(now, self.settings.batch_size, lease_until),
            )
            .await?;
        for task in &claim.tasks {
            let late = now.saturating_sub(task.due_at).max(0);
            metrics::histogram!(metric::LATENESS).record(late as f64 / 1000.0);
        }
        Ok(claim)
    }

    /// Publishes a claim's tasks concurrently and records every outcome in one write. When
    /// `give_up` resolves, messages not yet sent to Kafka are withdrawn, publishes already sent
    /// get a short while to be answered, and every task still unfinished goes back to the
    /// schedule unchanged: its attempt does not count.
    pub async fn deliver(
        &self,
        claim: Claim,
        give_up: impl Future<Output = ()>,
    ) -> Result<Step, StoreError> {
        let Claim {
            tasks,
            lease_until,
            next_due,
        } = claim;
        let mut step = Step {
            claimed: tasks.len(),
            released: 0,
            next_due,
        };
        if tasks.is_empty() {
            return Ok(step);
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; tasks.len()];
        {
            let mut in_flight: FuturesUnordered<_> = tasks
                .iter()
                .enumerate()
                .map(|(i, task)| async move { (i, self.attempt(task).await) })
                .collect();
            let mut give_up = std::pin::pin!(give_up);
            let finished = loop {
                tokio::select! {
                    done = in_flight.next() => match done {
                        Some((i, outcome)) => outcomes[i] = Some(outcome),
                        None => break true,
                    },
                    () = &mut give_up => break false,
                }
            };
            if !finished {
                self.publisher.withdraw_unsent();
                let drain = tokio::time::sleep(WITHDRAW_DRAIN);
                tokio::pin!(drain);
                loop {
                    tokio::select! {
                        done = in_flight.next() => match done {
                            Some((i, outcome)) => outcomes[i] = Some(outcome),
                            None => break,
                        },
                        () = &mut drain => break,
                    }
                }
            }
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .zip(tasks)
            .map(|(outcome, task)| match outcome {
                Some(Outcome::Reschedule(unchanged)) if unchanged == task => {
                    step.released += 1;
                    Outcome::Reschedule(task)
                }
                Some(outcome) => outcome,
                None => {
                    step.released += 1;
                    Outcome::Reschedule(task)
                }
            })
            .collect();
        if step.released > 0 {
            warn!(
                released = step.released,
                "shutdown grace ran out; unfinished tasks handed back to the schedule"
            );
        }
        self.settle(lease_until, &outcomes).await?;
        Ok(step)
    }

    /// Publishes one claimed task and says what to record. A task whose last attempt fails goes
    /// straight on to its dead-letter destination.
    async fn attempt(&self, task: &Task) -> Outcome {
        let mut dead_lettering: Option<Task> = None;
        loop {
            let current = dead_lettering.as_ref().unwrap_or(task);
            let Some(target) = current.target() else {
                return Outcome::Bury(current.clone());
            };
            let attempt = current.attempt();
            let started = std::time::Instant::now();
            let result = self.publisher.publish(target, &current.message()).await;
            metrics::histogram!(metric::PROCESSING_DURATION)
                .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(()) => {
                    metrics::counter!(metric::PROCESSED).increment(1);
                    let event = match current.state {
                        TaskState::DeadLettering => {
                            metrics::counter!(metric::DEAD_LETTERED).increment(1);
                            "task dead-lettered"
                        }
                        _ => "task delivered",
                    };
                    info!(
                        task_id = %current.id,
                        attempt,
                        max_retries = current.max_retries,
                        topic = %target.topic,
                        partition = target.partition,
                        "{event}"
                    );
                    return Outcome::Done(current.id);
                }
                Err(PublishError::Withdrawn) => return Outcome::Reschedule(current.clone()),
                Err(PublishError::Rejected(error)) => {
                    metrics::counter!(metric::FAILED).increment(1);
                    error
                }
            };
            warn!(
                task_id = %current.id,
                attempt,
                max_retries = current.max_retries,
                topic = %target.topic,
                partition = target.partition,
                error = %error,
                "publish failed"
            );
            let now = self.clock.now();
            match current.clone().fail(error, now, self.settings.max_delay) {
                AfterFailure::Retry(next) => return Outcome::Reschedule(next),
                AfterFailure::DeadLetter(next) => dead_lettering = Some(next),
                AfterFailure::Bury(dead) => {
                    metrics::counter!(metric::KEPT_DEAD).increment(1);
                    error!(
                        task_id = %dead.id,
                        attempt,
                        max_retries = dead.max_retries,
                        topic = %dead.destination.topic,
                        "retries exhausted and no dead destination; task kept as dead"
                    );
                    return Outcome::Bury(dead);
                }
            }
        }
    }

    /// Records outcomes, retrying while the lease lasts so that a brief store outage does not
    /// make another instance publish the same tasks again.
    async fn settle(&self, lease_until: Millis, outcomes: &[Outcome]) -> Result<(), StoreError> {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.bounded(self.store.settle(lease_until, outcomes)).await {
                Ok(()) => {
                    for outcome in outcomes {
                        if let Outcome::Reschedule(task) = outcome {
                            self.alarm.stored(task.due_at);
                        }
                    }
                    return Ok(());
                }
                Err(e) if self.clock.now() + millis(pause) < lease_until => {
                    warn!(error = %e, tasks = outcomes.len(), "recording outcomes failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    error!(
                        error = %e,
                        tasks = outcomes.len(),
                        "recording outcomes failed; the lease will run out and the tasks be retried"
                    );
                    return Err(e);
                }
            }
        }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.settings.store_timeout, call)
            .await
            .unwrap_or_else(|_| Err(StoreError("timed out".into())))
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fakes::{FakePublisher, ManualClock, MemoryStore};
    use crate::domain::task::{DestinationRequest, TaskRequest};

    type Service = TaskService<MemoryStore, FakePublisher>;

    fn service() -> (Service, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let settings = Settings {
            max_delay: Duration::from_secs(86_400),
            batch_size: 100,
            lease: Duration::from_secs(30),
            store_timeout: Duration::from_secs(1),
            allowed_brokers: BrokerAllowlist::hosts_of("localhost:9092"),
        };
        let service = TaskService::new(
            MemoryStore::default(),
            FakePublisher::default(),
            clock.clone(),
            settings,
        );
        (service, clock)
    }

    fn new_task(max_retries: i64, dead_topic: Option<&str>) -> NewTask {
        let destination = |topic: &str| DestinationRequest {
            topic: Some(topic.into()),
            partition: Some(2),
            kafka_conn_string: Some("localhost:9092".into()),
        };
        NewTask::try_from(TaskRequest {
            payload: Some("hello".into()),
            destination: Some(destination("orders")),
            dead_destination: dead_topic.map(destination),
            max_retries: Some(max_retries),
            retry_delay_seconds: Some(10),
            ..TaskRequest::default()
        })
        .expect("valid task")
    }

    async fn create(service: &Service, new: NewTask) -> Task {
        match service.create(new).await.expect("created") {
            Submitted::Scheduled(task) => *task,
            Submitted::Existing(id) => panic!("unexpected replay of {id}"),
        }
    }

    async fn step(service: &Service) -> Step {
        service
            .deliver_due(std::future::pending())
            .await
            .expect("step succeeds")
    }

    #[tokio::test]
    async fn a_task_is_not_published_before_it_is_due() {
        let (service, clock) = service();
        create(&service, new_task(3, None)).await;
        clock.set(9_999);
        assert_eq!(step(&service).await.claimed, 0);
        assert!(service.publisher().published().is_empty());
    }

    #[tokio::test]
    async fn a_due_task_is_published_once_and_forgotten() {
        let (service, clock) = service();
        let task = create(&service, new_task(3, None)).await;
        clock.set(10_000);
        assert_eq!(step(&service).await.claimed, 1);
        assert_eq!(
            service.publisher().published(),
            [("orders".to_owned(), 2, b"hello".to_vec())]
        );
        assert!(service.store().record(task.id).is_none());
        assert_eq!(step(&service).await.claimed, 0);
    }

    #[tokio::test]
    async fn failed_attempts_follow_the_backoff_then_dead_letter_in_the_same_step() {
        let (service, clock) = service();
        service.publisher().fail_topic("orders");
        let task = create(&service, new_task(3, Some("dlq"))).await;
        clock.set(10_000);
        step(&service).await;
        assert_eq!(service.store().scheduled(), [(30_000, task.id)]);
        clock.set(30_000);
        step(&service).await;
        assert_eq!(service.store().scheduled(), [(70_000, task.id)]);
        clock.set(70_000);
        step(&service).await;
        assert_eq!(
            service.publisher().published(),
            [("dlq".to_owned(), 2, b"hello".to_vec())]
        );
        assert!(service.store().record(task.id).is_none());
        assert!(service.store().scheduled().is_empty());
    }

    #[tokio::test]
    async fn a_dead_lettered_record_names_its_original_destination_and_last_attempt() {
        let (service, clock) = service();
        service.publisher().fail_topic("orders");
        create(&service, new_task(1, Some("dlq"))).await;
        clock.set(10_000);
        step(&service).await;
        let headers = service.publisher().headers();
        let header = |name: &str| {
            headers[0]
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("kafka-retry-original-topic"), Some("orders"));
        assert_eq!(header("kafka-retry-original-partition"), Some("2"));
        assert_eq!(header("kafka-retry-attempt"), Some("1"));
    }

    #[tokio::test]
    async fn an_exhausted_task_without_dead_destination_is_kept_as_dead() {
        let (service, clock) = service();
        service.publisher().fail_topic("orders");
        let task = create(&service, new_task(1, None)).await;
        clock.set(10_000);
        step(&service).await;
        let record = service.store().record(task.id).expect("kept");
        assert_eq!(record.state, TaskState::Dead);
        assert_eq!(record.attempts, 1);
        assert_eq!(record.last_error.as_deref(), Some("orders is failing"));
        assert!(service.store().is_dead(task.id));
        assert!(service.store().scheduled().is_empty());
    }

    #[tokio::test]
    async fn a_failing_dead_letter_publish_keeps_the_task_and_retries_it() {
        let (service, clock) = service();
        service.publisher().fail_topic("orders");
        service.publisher().fail_topic("dlq");
        let task = create(&service, new_task(1, Some("dlq"))).await;
        clock.set(10_000);
        step(&service).await;
        let record = service.store().record(task.id).expect("kept");
        assert_eq!(record.state, TaskState::DeadLettering);
        assert_eq!(record.dead_letter_attempts, 1);
        assert_eq!(service.store().scheduled(), [(30_000, task.id)]);
    }

    #[tokio::test]
    async fn a_claimed_task_is_not_claimed_again_until_its_lease_runs_out() {
        let (service, clock) = service();
        let task = create(&service, new_task(1, None)).await;
        let store = service.store();
        let first = store.claim_due(10_000, 10, 40_000).await.expect("claim");
        assert_eq!(first.tasks.len(), 1);
        let second = store.claim_due(39_999, 10, 69_999).await.expect("claim");
        assert!(second.tasks.is_empty());
        clock.set(40_000);
        step(&service).await;
        assert_eq!(service.publisher().published().len(), 1);
        store
            .settle(40_000, &[Outcome::Reschedule(task.clone())])
            .await
            .expect("settle");
        assert!(
            store.record(task.id).is_none(),
            "the stale claim changed nothing"
        );
        assert!(store.scheduled().is_empty());
    }

    #[tokio::test]
    async fn giving_up_hands_unfinished_tasks_back_unchanged() {
        let (service, clock) = service();
        service.publisher().hang_topic("orders");
        let task = create(&service, new_task(3, None)).await;
        clock.set(10_000);
        let step = service
            .deliver_due(std::future::ready(()))
            .await
            .expect("step");
        assert_eq!(step.released, 1);
        assert_eq!(service.store().scheduled(), [(10_000, task.id)]);
        assert_eq!(service.store().record(task.id).map(|t| t.attempts), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_sent_but_never_answered_is_handed_back_after_a_short_drain() {
        let (service, clock) = service();
        service.publisher().stick_topic("orders");
        let task = create(&service, new_task(3, None)).await;
        clock.set(10_000);
        let step = service
            .deliver_due(std::future::ready(()))
            .await
            .expect("step");
        assert_eq!(step.released, 1);
        assert_eq!(service.store().scheduled(), [(10_000, task.id)]);
    }

    #[tokio::test]
    async fn outcomes_are_recorded_after_a_brief_store_outage() {
        let (service, clock) = service();
        let task = create(&service, new_task(3, None)).await;
        clock.set(10_000);
        let claim = service
            .store()
            .claim_due(10_000, 10, 40_000)
            .await
            .expect("claim");
        service.store().set_down(true);
        let store_returns = async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            service.store().set_down(false);
        };
        let outcomes = [Outcome::Done(claim.tasks[0].id)];
        let (result, ()) = tokio::join!(service.settle(40_000, &outcomes), store_returns);
        result.expect("settled once the store came back");
        assert!(service.store().record(task.id).is_none());
    }

    #[tokio::test]
    async fn a_task_naming_a_broker_outside_the_allowlist_is_rejected_and_not_stored() {
        let (service, _) = service();
        let mut new = new_task(1, Some("dlq"));
        new.dead_destination = new.dead_destination.map(|mut d| {
            d.kafka_conn_string = "169.254.169.254:80".into();
            d
        });
        let Err(CreateError::Rejected(error)) = service.create(new).await else {
            panic!("expected a rejection");
        };
        assert_eq!(error.field, "dead_destination.kafka_conn_string");
        assert!(service.store().scheduled().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_creation() {
        let (service, _) = service();
        service.store().set_down(true);
        assert!(service.create(new_task(1, None)).await.is_err());
        assert!(service.health().await.is_err());
    }

    async fn dead_task(service: &Service, clock: &ManualClock) -> Task {
        service.publisher().fail_topic("orders");
        let task = create(service, new_task(1, None)).await;
        clock.set(task.due_at);
        step(service).await;
        assert!(service.store().is_dead(task.id));
        task
    }

    #[tokio::test]
    async fn a_dead_task_retried_gets_a_fresh_budget_and_is_due_at_once() {
        let (service, clock) = service();
        let task = dead_task(&service, &clock).await;
        clock.set(50_000);
        assert_eq!(
            service.retry(task.id).await.expect("retry"),
            Retried::Revived
        );
        let record = service.store().record(task.id).expect("kept");
        assert_eq!(record.state, TaskState::Scheduled);
        assert_eq!(record.attempts, 0);
        assert_eq!(service.store().scheduled(), [(50_000, task.id)]);
        assert!(!service.store().is_dead(task.id));
        assert_eq!(
            service.retry(task.id).await.expect("retry"),
            Retried::NotExhausted
        );
    }

    async fn rang(service: &Service) -> bool {
        tokio::time::timeout(Duration::from_millis(20), service.alarm().rung())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn storing_a_task_due_before_the_workers_next_look_rings_the_alarm() {
        let (service, clock) = service();
        service.alarm().sleep_until(5_000);
        create(&service, new_task(3, None)).await; // due at 10,000: after the look
        assert!(!rang(&service).await);
        service.alarm().sleep_until(60_000);
        create(&service, new_task(3, None)).await; // due at 10,000: before it
        assert!(rang(&service).await);

        // A failed attempt is rescheduled 20 s later, at 30,000.
        service.publisher().fail_topic("orders");
        service.alarm().sleep_until(60_000);
        clock.set(10_000);
        step(&service).await;
        assert!(rang(&service).await);
        // The next failure reschedules at 30,000 + 40,000, after a look at 50,000.
        service.alarm().sleep_until(50_000);
        clock.set(30_000);
        step(&service).await;
        assert!(!rang(&service).await);
    }

    #[tokio::test]
    async fn a_retried_dead_task_rings_the_alarm() {
        let (service, clock) = service();
        let task = dead_task(&service, &clock).await;
        rang(&service).await; // its creation rang: no worker had planned a look yet
        clock.set(50_000);
        service.alarm().sleep_until(51_000);
        assert!(!rang(&service).await);
        service.retry(task.id).await.expect("retry");
        assert!(rang(&service).await);
    }

    #[tokio::test]
    async fn dead_tasks_can_be_replayed_in_bulk() {
        let (service, clock) = service();
        dead_task(&service, &clock).await;
        dead_task(&service, &clock).await;
        assert_eq!(service.retry_dead(10).await.expect("replay"), 2);
        assert_eq!(
            service.counts().await.expect("counts").as_tuple(),
            (2, 0, 0)
        );
    }

    #[tokio::test]
    async fn dead_tasks_past_their_retention_are_removed_and_counted() {
        let (service, clock) = service();
        let task = dead_task(&service, &clock).await;
        clock.set(10_000 + 3_600_000);
        assert_eq!(
            service
                .expire_dead(Duration::from_secs(7200))
                .await
                .expect("expire"),
            0
        );
        clock.set(10_000 + 7_200_001);
        assert_eq!(
            service
                .expire_dead(Duration::from_secs(7200))
                .await
                .expect("expire"),
            1
        );
        assert!(service.store().record(task.id).is_none());
    }

    #[tokio::test]
    async fn a_task_in_flight_cannot_be_cancelled() {
        let (service, _) = service();
        let task = create(&service, new_task(1, None)).await;
        service
            .store()
            .claim_due(10_000, 10, 40_000)
            .await
            .expect("claim");
        assert_eq!(
            service.cancel(task.id).await.expect("cancel"),
            Cancelled::InFlight
        );
        assert!(service.store().record(task.id).is_some());
    }
}
