//! The task store on Redis.
//!
//! Keys, for the default prefix `kafkaretry` (every key hashes to one Redis Cluster slot, because
//! `{kafkaretry:tasks}` hashes like the bare `kafkaretry:tasks`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `kafkaretry:tasks` | sorted set | the schedule: task id, scored by due time (ms) |
//! | `{kafkaretry:tasks}:leases` | sorted set | claimed tasks, scored by lease end (ms) |
//! | `{kafkaretry:tasks}:records` | hash | task id to the task's JSON record |
//! | `{kafkaretry:tasks}:dead` | sorted set | dead tasks, scored by time of death (ms) |
//!
//! Claiming and settling are Lua scripts (beside this file), loaded once and run by hash, so each
//! is one atomic round trip for a whole batch.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, IntoConnectionInfo, Script};
use tracing::error;

use crate::domain::{Claim, Millis, Outcome, StoreError, Task, TaskId, TaskStore};

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
}

/// The names of the keys, derived from the prefix.
#[derive(Debug, Clone)]
struct Keys {
    schedule: String,
    leases: String,
    records: String,
    dead: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let schedule = format!("{prefix}:tasks");
        Self {
            leases: format!("{{{schedule}}}:leases"),
            records: format!("{{{schedule}}}:records"),
            dead: format!("{{{schedule}}}:dead"),
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
            connection,
            keys: Keys::new(&settings.key_prefix),
            claim: Script::new(include_str!("claim.lua")),
            settle: Script::new(include_str!("settle.lua")),
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

    /// How many tasks are in the schedule, leased, and dead.
    pub async fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let keys = &self.keys;
        redis::pipe()
            .zcard(&keys.schedule)
            .zcard(&keys.leases)
            .zcard(&keys.dead)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(store_error)
    }

    /// The stored record of a task, if there is one.
    pub async fn record(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let raw: Option<Vec<u8>> = self
            .connection
            .clone()
            .hget(&self.keys.records, id.to_string())
            .await
            .map_err(store_error)?;
        raw.map(|raw| decode(&raw)).transpose()
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
    async fn create(&self, task: &Task) -> Result<(), StoreError> {
        let id = task.id.to_string();
        redis::pipe()
            .atomic()
            .hset(&self.keys.records, &id, encode(task)?)
            .ignore()
            .zadd(&self.keys.schedule, &id, task.due_at)
            .ignore()
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(store_error)
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
            match record.as_deref().map(decode) {
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
                    .arg(encode(task)?),
                Outcome::Bury(task) => invocation
                    .arg("B")
                    .arg(task.id.to_string())
                    .arg(task.due_at)
                    .arg(encode(task)?),
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

fn encode(task: &Task) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(task).map_err(|e| StoreError(format!("cannot encode task: {e}")))
}

fn decode(raw: &[u8]) -> Result<Task, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError(format!("cannot decode task: {e}")))
}

fn store_error(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}
