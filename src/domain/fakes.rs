//! In-memory stand-ins for the ports, for unit and handler tests.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::ports::{
    Cancelled, Claim, Clock, Counts, Created, Outcome, Placement, PublishError, Publisher,
    StoreError, StoredTask, TaskStore,
};
use super::task::{Destination, Message, Millis, Task, TaskId};

/// A clock that moves only when told.
#[derive(Debug, Default)]
pub(crate) struct ManualClock(AtomicI64);

impl ManualClock {
    pub(crate) fn set(&self, now: Millis) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Default)]
struct Tables {
    records: HashMap<TaskId, Task>,
    schedule: BTreeSet<(Millis, TaskId)>,
    leases: HashMap<TaskId, Millis>,
    dead: BTreeSet<(Millis, TaskId)>,
    idempotency: HashMap<String, TaskId>,
}

impl Tables {
    fn placement(&self, id: TaskId) -> Placement {
        if self.leases.contains_key(&id) {
            Placement::InFlight
        } else if self.dead.iter().any(|(_, dead)| *dead == id) {
            Placement::Dead
        } else {
            Placement::Scheduled
        }
    }

    fn unschedule(&mut self, id: TaskId) {
        self.schedule.retain(|(_, scheduled)| *scheduled != id);
    }
}

/// A task store in memory, with the same claim, lease and idempotency rules as the Redis one.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    tables: Mutex<Tables>,
    down: AtomicBool,
}

impl MemoryStore {
    /// Makes every call fail (or succeed again).
    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn tables(&self) -> Result<std::sync::MutexGuard<'_, Tables>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError("connection refused".into()));
        }
        Ok(self.tables.lock().expect("store lock"))
    }

    /// The stored record of a task.
    pub(crate) fn record(&self, id: TaskId) -> Option<Task> {
        self.tables
            .lock()
            .expect("store lock")
            .records
            .get(&id)
            .cloned()
    }

    /// Due times in the schedule.
    pub(crate) fn scheduled(&self) -> Vec<(Millis, TaskId)> {
        let tables = self.tables.lock().expect("store lock");
        tables.schedule.iter().copied().collect()
    }

    /// Whether the task is kept as dead.
    pub(crate) fn is_dead(&self, id: TaskId) -> bool {
        let tables = self.tables.lock().expect("store lock");
        tables.dead.iter().any(|(_, dead)| *dead == id)
    }
}

impl TaskStore for MemoryStore {
    async fn create_many(&self, tasks: &[Task]) -> Result<Vec<Created>, StoreError> {
        let mut tables = self.tables()?;
        let mut created = Vec::with_capacity(tasks.len());
        for task in tasks {
            if let Some(key) = &task.idempotency_key {
                if let Some(existing) = tables.idempotency.get(key) {
                    created.push(Created::Existing(*existing));
                    continue;
                }
                tables.idempotency.insert(key.clone(), task.id);
            }
            tables.schedule.insert((task.due_at, task.id));
            tables.records.insert(task.id, task.clone());
            created.push(Created::New);
        }
        Ok(created)
    }

    async fn claim_due(
        &self,
        now: Millis,
        limit: usize,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        let mut tables = self.tables()?;
        let mut ids: Vec<TaskId> = tables
            .leases
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        let due: Vec<(Millis, TaskId)> = tables
            .schedule
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit - ids.len())
            .copied()
            .collect();
        for entry in &due {
            tables.schedule.remove(entry);
            ids.push(entry.1);
        }
        let mut tasks = Vec::new();
        for id in ids {
            tables.leases.insert(id, lease_until);
            if let Some(task) = tables.records.get(&id) {
                tasks.push(task.clone());
            }
        }
        let next_due = tables.schedule.iter().next().map(|(at, _)| *at);
        Ok(Claim {
            tasks,
            lease_until,
            next_due,
        })
    }

    async fn settle(&self, lease_until: Millis, outcomes: &[Outcome]) -> Result<(), StoreError> {
        let mut tables = self.tables()?;
        for outcome in outcomes {
            let id = outcome.task_id();
            if tables.leases.get(&id) != Some(&lease_until) {
                continue;
            }
            tables.leases.remove(&id);
            match outcome {
                Outcome::Done(_) => {
                    tables.records.remove(&id);
                }
                Outcome::Reschedule(task) => {
                    tables.schedule.insert((task.due_at, id));
                    tables.records.insert(id, task.clone());
                }
                Outcome::Bury(task) => {
                    tables.dead.insert((task.due_at, id));
                    tables.records.insert(id, task.clone());
                }
            }
        }
        Ok(())
    }

    async fn find(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        let tables = self.tables()?;
        Ok(tables.records.get(&id).map(|task| StoredTask {
            task: task.clone(),
            placement: tables.placement(id),
        }))
    }

    async fn list(
        &self,
        placement: Placement,
        offset: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<(Vec<StoredTask>, u64), StoreError> {
        let tables = self.tables()?;
        let mut ids: Vec<TaskId> = match placement {
            Placement::Scheduled => tables.schedule.iter().map(|(_, id)| *id).collect(),
            Placement::InFlight => tables.leases.keys().copied().collect(),
            Placement::Dead => tables.dead.iter().map(|(_, id)| *id).collect(),
        };
        if newest_first {
            ids.reverse();
        }
        let page = ids
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit)
            .filter_map(|id| tables.records.get(id))
            .map(|task| StoredTask {
                task: task.clone(),
                placement,
            })
            .collect();
        Ok((page, ids.len() as u64))
    }

    async fn cancel(&self, id: TaskId) -> Result<Cancelled, StoreError> {
        let mut tables = self.tables()?;
        if tables.leases.contains_key(&id) {
            return Ok(Cancelled::InFlight);
        }
        tables.unschedule(id);
        tables.dead.retain(|(_, dead)| *dead != id);
        Ok(match tables.records.remove(&id) {
            Some(_) => Cancelled::Removed,
            None => Cancelled::NotFound,
        })
    }

    async fn revive(&self, tasks: &[(Task, Placement)]) -> Result<Vec<bool>, StoreError> {
        let mut tables = self.tables()?;
        let mut revived = Vec::with_capacity(tasks.len());
        for (task, found) in tasks {
            let still_there = tables.placement(task.id) == *found
                && tables.records.contains_key(&task.id)
                && *found != Placement::InFlight;
            if still_there {
                tables.dead.retain(|(_, dead)| *dead != task.id);
                tables.unschedule(task.id);
                tables.schedule.insert((task.due_at, task.id));
                tables.records.insert(task.id, task.clone());
            }
            revived.push(still_there);
        }
        Ok(revived)
    }

    async fn expire_dead(&self, before: Millis, limit: usize) -> Result<u64, StoreError> {
        let mut tables = self.tables()?;
        let expired: Vec<(Millis, TaskId)> = tables
            .dead
            .iter()
            .take_while(|(at, _)| *at < before)
            .take(limit)
            .copied()
            .collect();
        for entry in &expired {
            tables.dead.remove(entry);
            tables.records.remove(&entry.1);
        }
        Ok(expired.len() as u64)
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let tables = self.tables()?;
        Ok(Counts {
            scheduled: tables.schedule.len() as u64,
            in_flight: tables.leases.len() as u64,
            dead: tables.dead.len() as u64,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.tables().map(|_| ())
    }
}

/// A publisher that records what it is given; topics can be made to fail or hang.
#[derive(Debug, Default)]
pub(crate) struct FakePublisher {
    published: Mutex<Vec<(String, i32, Vec<u8>)>>,
    headers: Mutex<Vec<Vec<(String, String)>>>,
    failing: Mutex<HashSet<String>>,
    hanging: Mutex<HashSet<String>>,
    withdrawn: tokio::sync::Notify,
    stuck_after_send: Mutex<HashSet<String>>,
}

impl FakePublisher {
    /// Every publish to `topic` fails from now on.
    pub(crate) fn fail_topic(&self, topic: &str) {
        self.failing.lock().expect("lock").insert(topic.to_owned());
    }

    /// Every publish to `topic` is "sent" and never answered, even when withdrawn.
    pub(crate) fn stick_topic(&self, topic: &str) {
        self.stuck_after_send
            .lock()
            .expect("lock")
            .insert(topic.to_owned());
    }

    /// Every publish to `topic` waits, unsent, until withdrawn.
    pub(crate) fn hang_topic(&self, topic: &str) {
        self.hanging.lock().expect("lock").insert(topic.to_owned());
    }

    /// The headers of every record published so far.
    pub(crate) fn headers(&self) -> Vec<Vec<(String, String)>> {
        self.headers.lock().expect("lock").clone()
    }

    /// What was published so far: topic, partition, payload.
    pub(crate) fn published(&self) -> Vec<(String, i32, Vec<u8>)> {
        self.published.lock().expect("lock").clone()
    }
}

impl Publisher for FakePublisher {
    fn withdraw_unsent(&self) {
        self.withdrawn.notify_waiters();
    }

    async fn publish(
        &self,
        destination: &Destination,
        message: &Message<'_>,
    ) -> Result<(), PublishError> {
        let topic = destination.topic.as_str().to_owned();
        if self.stuck_after_send.lock().expect("lock").contains(&topic) {
            std::future::pending::<()>().await;
        }
        if self.hanging.lock().expect("lock").contains(&topic) {
            self.withdrawn.notified().await;
            return Err(PublishError::Withdrawn);
        }
        if self.failing.lock().expect("lock").contains(&topic) {
            return Err(PublishError::Rejected(format!("{topic} is failing")));
        }
        self.published.lock().expect("lock").push((
            topic,
            destination.partition,
            message.payload.to_vec(),
        ));
        self.headers.lock().expect("lock").push(
            message
                .headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
        );
        Ok(())
    }
}
