//! The task store on Redis.
//!
//! Keys, for the default prefix `kafkaretry` (every key hashes to one Redis Cluster slot, because
//! `{kafkaretry:tasks}` hashes like the bare `kafkaretry:tasks`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `kafkaretry:tasks` | sorted set | the schedule: task id, scored by due time (ms) |
//! | `{kafkaretry:tasks}:leases` | sorted set | claimed tasks, scored by lease end (ms) |
//! | `{kafkaretry:tasks}:records` | hash | task id to the task's record (compact binary, see [`record`]) |
//! | `{kafkaretry:tasks}:dead` | sorted set | dead tasks, scored by time of death (ms) |
//! | `{kafkaretry:tasks}:idempotency:<key>` | string | the task id an idempotency key stands for (expires) |
//!
//! Claiming and settling are Lua scripts (beside this file), loaded once and run by hash, so each
//! is one atomic round trip for a whole batch.

mod record;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, IntoConnectionInfo, Script};
use tracing::error;

use crate::domain::{
    Cancelled, Claim, Counts, Created, Millis, Outcome, Placement, StoreError, StoredTask, Task,
    TaskId, TaskStore,
};

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `host:port`, or a `redis://` or `rediss://` URL.
    pub addr: String,
    /// The password, if Redis requires one.
    pub password: Option<String>,
    /// The database number.
    pub db: i64,
    /// The prefix of every key.
    pub key_prefix: String,
    /// How long connecting or one command may take.
    pub timeout: Duration,
    /// How long an idempotency key keeps answering with its first task.
    pub idempotency_ttl: Duration,
}

/// The names of the keys, derived from the prefix.
#[derive(Debug, Clone)]
struct Keys {
    schedule: String,
    leases: String,
    records: String,
    dead: String,
    idempotency: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let schedule = format!("{prefix}:tasks");
        Self {
            leases: format!("{{{schedule}}}:leases"),
            records: format!("{{{schedule}}}:records"),
            dead: format!("{{{schedule}}}:dead"),
            idempotency: format!("{{{schedule}}}:idempotency:"),
            schedule,
        }
    }
}

/// Tasks kept in Redis; cheap to clone, all clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    keys: Keys,
    claim: Script,
    settle: Script,
    cancel: Script,
    revive: Script,
    expire: Script,
    writer: Writer,
    submissions: Arc<OnceLock<mpsc::UnboundedSender<Submission>>>,
}

/// Submissions of this many tasks or more go to Redis on their own; smaller ones that arrive
/// together share one script call.
const COALESCE_UP_TO: usize = 256;

/// A new task, encoded for `create.lua` by the request that submitted it.
struct NewRecord {
    id: String,
    due_at: Millis,
    record: Vec<u8>,
    idempotency_key: Option<String>,
}

impl NewRecord {
    fn encode(task: &Task) -> Result<Self, StoreError> {
        Ok(Self {
            id: task.id.to_string(),
            due_at: task.due_at,
            record: record::encode(task)?,
            idempotency_key: task.idempotency_key.clone(),
        })
    }
}

/// New tasks waiting to be written, and where to send the answer.
struct Submission {
    records: Vec<NewRecord>,
    reply: oneshot::Sender<Result<Vec<Created>, StoreError>>,
}

/// Writes new tasks with `create.lua`. Concurrent submissions are coalesced: while one script
/// call is under way the next ones queue, and go together in the following call, so that under
/// load Redis runs one script (and the service makes one round trip) for many tasks.
#[derive(Clone)]
struct Writer {
    connection: ConnectionManager,
    keys: Keys,
    idempotency_ttl: Duration,
    create: Script,
}

impl Writer {
    fn spawn(self) -> mpsc::UnboundedSender<Submission> {
        let (submissions, mut queue) = mpsc::unbounded_channel::<Submission>();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut count = first.records.len();
                let mut batch = vec![first];
                while count < COALESCE_UP_TO {
                    let Ok(next) = queue.try_recv() else { break };
                    count += next.records.len();
                    batch.push(next);
                }
                let records: Vec<&NewRecord> =
                    batch.iter().flat_map(|s| s.records.iter()).collect();
                let written = self.write_all(&records).await;
                let mut answers = written.map(Vec::into_iter);
                for submission in batch {
                    let answer = match &mut answers {
                        Ok(created) => {
                            Ok(created.by_ref().take(submission.records.len()).collect())
                        }
                        Err(e) => Err(e.clone()),
                    };
                    let _ = submission.reply.send(answer);
                }
            }
        });
        submissions
    }

    async fn write(&self, records: &[NewRecord]) -> Result<Vec<Created>, StoreError> {
        self.write_all(&records.iter().collect::<Vec<_>>()).await
    }

    async fn write_all(&self, records: &[&NewRecord]) -> Result<Vec<Created>, StoreError> {
        let keys = &self.keys;
        let mut invocation = self.create.prepare_invoke();
        invocation
            .key(&keys.schedule)
            .key(&keys.records)
            .arg(self.idempotency_ttl.as_secs().max(1));
        for record in records {
            if let Some(key) = &record.idempotency_key {
                invocation.key(format!("{}{key}", keys.idempotency));
            }
            invocation
                .arg(&record.id)
                .arg(record.due_at)
                .arg(&record.record)
                .arg(if record.idempotency_key.is_some() {
                    "1"
                } else {
                    "0"
                });
        }
        let standing_for: Vec<String> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        Ok(records
            .iter()
            .zip(standing_for)
            .map(|(record, answer)| match answer.parse::<TaskId>() {
                Ok(existing) if answer != record.id => Created::Existing(existing),
                _ => Created::New,
            })
            .collect())
    }
}

impl RedisStore {
    /// A store over the Redis described by `settings`. It connects lazily and reconnects by
    /// itself, so it can be made while Redis is down.
    pub fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        let url = if settings.addr.contains("://") {
            settings.addr.clone()
        } else {
            format!("redis://{}", settings.addr)
        };
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| StoreError(format!("invalid REDIS_ADDR: {e}")))?;
        let mut redis = info.redis_settings().clone().set_db(settings.db);
        if let Some(password) = settings.password.as_deref().filter(|p| !p.is_empty()) {
            redis = redis.set_password(password);
        }
        let client = Client::open(info.set_redis_settings(redis)).map_err(store_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(store_error)?;
        Ok(Self {
            connection: connection.clone(),
            writer: Writer {
                connection,
                keys: Keys::new(&settings.key_prefix),
                idempotency_ttl: settings.idempotency_ttl,
                create: Script::new(include_str!("create.lua")),
            },
            submissions: Arc::default(),
            keys: Keys::new(&settings.key_prefix),
            claim: Script::new(include_str!("claim.lua")),
            settle: Script::new(include_str!("settle.lua")),
            cancel: Script::new(include_str!("cancel.lua")),
            revive: Script::new(include_str!("revive.lua")),
            expire: Script::new(include_str!("expire.lua")),
        })
    }

    /// The name of the schedule's key (`<prefix>:tasks`).
    pub fn schedule_key(&self) -> &str {
        &self.keys.schedule
    }

    /// Removes every key of this store's prefix. For tests and benchmarks.
    pub async fn clear(&self) -> Result<(), StoreError> {
        let keys = &self.keys;
        let mut connection = self.connection.clone();
        connection
            .del::<_, ()>(&[&keys.schedule, &keys.leases, &keys.records, &keys.dead])
            .await
            .map_err(store_error)
    }

    /// The stored record of a task, if there is one, wherever it is.
    pub async fn record(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.find(id).await?.map(|stored| stored.task))
    }

    /// Reads the records of `ids` at `placement`; ids whose record is gone are left out.
    async fn records(
        &self,
        ids: Vec<String>,
        placement: Placement,
    ) -> Result<Vec<StoredTask>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&self.keys.records)
            .arg(&ids)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        ids.iter()
            .zip(records)
            .filter_map(|(id, raw)| Some((id, raw?)))
            .map(|(id, raw)| {
                Ok(StoredTask {
                    task: record::decode(id, &raw)?,
                    placement,
                })
            })
            .collect()
    }

    /// Moves a claimed task whose record cannot be read to the dead set, where an operator sees it.
    async fn quarantine(&self, id: &str, now: Millis) {
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .zrem(&self.keys.leases, id)
            .zadd(&self.keys.dead, id, now)
            .query_async(&mut self.connection.clone())
            .await;
        if let Err(e) = result {
            error!(task_id = id, error = %e, "could not quarantine an unreadable task");
        }
    }
}

impl TaskStore for RedisStore {
    async fn create_many(&self, tasks: &[Task]) -> Result<Vec<Created>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let records = tasks
            .iter()
            .map(NewRecord::encode)
            .collect::<Result<Vec<_>, _>>()?;
        if records.len() >= COALESCE_UP_TO {
            return self.writer.write(&records).await;
        }
        let submissions = self
            .submissions
            .get_or_init(|| Writer::spawn(self.writer.clone()));
        let (reply, answer) = oneshot::channel();
        submissions
            .send(Submission { records, reply })
            .map_err(|_| StoreError("the task writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError("the task writer has stopped".into()))?
    }

    async fn find(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        let keys = &self.keys;
        let id = id.to_string();
        let (record, leased, dead): (Option<Vec<u8>>, Option<f64>, Option<f64>) = redis::pipe()
            .atomic()
            .hget(&keys.records, &id)
            .zscore(&keys.leases, &id)
            .zscore(&keys.dead, &id)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        let Some(record) = record else {
            return Ok(None);
        };
        let placement = match (leased, dead) {
            (Some(_), _) => Placement::InFlight,
            (None, Some(_)) => Placement::Dead,
            (None, None) => Placement::Scheduled,
        };
        Ok(Some(StoredTask {
            task: record::decode(&id, &record)?,
            placement,
        }))
    }

    async fn list(
        &self,
        placement: Placement,
        offset: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<(Vec<StoredTask>, u64), StoreError> {
        let key = match placement {
            Placement::Scheduled => &self.keys.schedule,
            Placement::InFlight => &self.keys.leases,
            Placement::Dead => &self.keys.dead,
        };
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(isize::try_from(limit).unwrap_or(isize::MAX)) - 1;
        let mut pipe = redis::pipe();
        if newest_first {
            pipe.zrevrange(key, start, stop);
        } else {
            pipe.zrange(key, start, stop);
        }
        let (ids, total): (Vec<String>, u64) = pipe
            .zcard(key)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        Ok((self.records(ids, placement).await?, total))
    }

    async fn cancel(&self, id: TaskId) -> Result<Cancelled, StoreError> {
        let keys = &self.keys;
        let answer: String = self
            .cancel
            .key(&keys.schedule)
            .key(&keys.leases)
            .key(&keys.records)
            .key(&keys.dead)
            .arg(id.to_string())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        Ok(match answer.as_str() {
            "removed" => Cancelled::Removed,
            "in_flight" => Cancelled::InFlight,
            _ => Cancelled::NotFound,
        })
    }

    async fn revive(&self, tasks: &[(Task, Placement)]) -> Result<Vec<bool>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.keys;
        let mut invocation = self.revive.prepare_invoke();
        invocation
            .key(&keys.schedule)
            .key(&keys.leases)
            .key(&keys.records)
            .key(&keys.dead);
        for (task, found) in tasks {
            invocation
                .arg(task.id.to_string())
                .arg(task.due_at)
                .arg(record::encode(task)?)
                .arg(if *found == Placement::Dead {
                    "dead"
                } else {
                    "scheduled"
                });
        }
        let revived: Vec<i64> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        Ok(revived.into_iter().map(|r| r == 1).collect())
    }

    async fn expire_dead(&self, before: Millis, limit: usize) -> Result<u64, StoreError> {
        self.expire
            .key(&self.keys.dead)
            .key(&self.keys.records)
            .arg(before)
            .arg(limit)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(store_error)
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let keys = &self.keys;
        let (scheduled, in_flight, dead) = redis::pipe()
            .zcard(&keys.schedule)
            .zcard(&keys.leases)
            .zcard(&keys.dead)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        Ok(Counts {
            scheduled,
            in_flight,
            dead,
        })
    }

    async fn claim_due(
        &self,
        now: Millis,
        limit: usize,
        lease_until: Millis,
    ) -> Result<Claim, StoreError> {
        let keys = &self.keys;
        let (ids, records, next_due): (Vec<String>, Vec<Option<Vec<u8>>>, Option<String>) = self
            .claim
            .key(&keys.schedule)
            .key(&keys.leases)
            .key(&keys.records)
            .arg(now)
            .arg(limit)
            .arg(lease_until)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(store_error)?;
        let mut tasks = Vec::with_capacity(ids.len());
        for (id, record) in ids.iter().zip(records) {
            match record.as_deref().map(|raw| record::decode(id, raw)) {
                Some(Ok(task)) => tasks.push(task),
                Some(Err(e)) => {
                    error!(task_id = %id, error = %e, "unreadable task record; moved to dead");
                    self.quarantine(id, now).await;
                }
                None => {
                    error!(task_id = %id, "claimed task has no record; dropping its lease");
                    self.quarantine(id, now).await;
                }
            }
        }
        Ok(Claim {
            tasks,
            lease_until,
            next_due: next_due
                .and_then(|s| s.parse::<f64>().ok())
                .map(|s| s as Millis),
        })
    }

    async fn settle(&self, lease_until: Millis, outcomes: &[Outcome]) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let keys = &self.keys;
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(&keys.schedule)
            .key(&keys.leases)
            .key(&keys.records)
            .key(&keys.dead)
            .arg(lease_until);
        for outcome in outcomes {
            match outcome {
                Outcome::Done(id) => invocation.arg("D").arg(id.to_string()),
                Outcome::Reschedule(task) => invocation
                    .arg("R")
                    .arg(task.id.to_string())
                    .arg(task.due_at)
                    .arg(record::encode(task)?),
                Outcome::Bury(task) => invocation
                    .arg("B")
                    .arg(task.id.to_string())
                    .arg(task.due_at)
                    .arg(record::encode(task)?),
            };
        }
        invocation
            .invoke_async::<()>(&mut self.connection.clone())
            .await
            .map_err(store_error)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(store_error)
    }
}

fn store_error(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}
