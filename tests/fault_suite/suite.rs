//! What every scenario shares: its size, one scenario at a time, the service's settings, a view
//! of the Redis keys, and waiting for the system to drain.

use kafka_retry::domain::TaskStore;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use kafka_retry::domain::Task;
use kafka_retry::redis_store::RedisStore;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Mutex, MutexGuard};

/// How big the scenarios are, from `FAULT_SUITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    /// Fewer tasks, kills and seconds: the whole suite in a few minutes, for CI.
    Short,
    /// The numbers, run by hand.
    Full,
}

impl Size {
    /// `FAULT_SUITE=full` or `short` (the default).
    pub(crate) fn get() -> Self {
        match std::env::var("FAULT_SUITE").as_deref() {
            Ok("full") => Self::Full,
            Ok("short" | "") | Err(_) => Self::Short,
            Ok(other) => panic!("FAULT_SUITE must be 'short' or 'full', not {other:?}"),
        }
    }

    /// `short` or `full`, whichever this size is.
    pub(crate) fn pick<T>(self, short: T, full: T) -> T {
        match self {
            Self::Short => short,
            Self::Full => full,
        }
    }
}

/// Scenarios stop and start shared brokers and load both cores: they must never overlap, whatever
/// `--test-threads` says. A tokio mutex, because each test runs its own runtime.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Waits for the other scenarios to finish; hold the guard for the whole scenario.
pub(crate) async fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// Settings for every service process of the suite, before the scenario's own.
pub(crate) fn service_env<'a>(own: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        // Thousands of failed publishes would each log a warning; errors are what matters here.
        ("LOG_LEVEL", "error"),
        // Scenarios point tasks at private brokers and closed ports on purpose.
        ("KAFKA_ALLOWED_BROKERS", "*"),
        ("POLL_INTERVAL", "100ms"),
    ];
    env.extend_from_slice(own);
    env
}

/// The keys of one store, read directly (the store only exposes counts).
pub(crate) struct RedisView {
    url: String,
    store: RedisStore,
    schedule: String,
    leases: String,
    dead: String,
}

impl RedisView {
    /// A view of the keys the service uses under `prefix` on the Redis at `addr`.
    pub(crate) fn new(addr: &str, store: &RedisStore) -> Self {
        let schedule = store.schedule_key().to_owned();
        Self {
            url: format!("redis://{addr}"),
            store: store.clone(),
            leases: format!("{{{schedule}}}:leases"),
            dead: format!("{{{schedule}}}:dead"),
            schedule,
        }
    }

    async fn connection(&self) -> MultiplexedConnection {
        // A fresh connection each time: scenarios restart Redis between two looks.
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis answers")
    }

    async fn members(&self, key: &str) -> Vec<String> {
        self.connection()
            .await
            .zrange(key, 0, -1)
            .await
            .expect("sorted set read")
    }

    /// The stored records of `ids`, in order; `None` where a task has none.
    pub(crate) async fn records(&self, ids: &[&str]) -> Vec<Option<Task>> {
        futures::future::join_all(ids.iter().map(|id| async move {
            let id = id.parse().expect("a task id");
            self.store.record(id).await.expect("records read")
        }))
        .await
    }

    /// The ids of the tasks leased right now.
    pub(crate) async fn leased(&self) -> Vec<String> {
        self.members(&self.leases).await
    }

    /// The ids of the tasks in the schedule.
    pub(crate) async fn scheduled(&self) -> HashSet<String> {
        self.members(&self.schedule).await.into_iter().collect()
    }

    /// The ids of every task still held: scheduled, leased or dead.
    pub(crate) async fn held(&self) -> HashSet<String> {
        let mut held = HashSet::new();
        for key in [&self.schedule, &self.leases, &self.dead] {
            held.extend(self.members(key).await);
        }
        held
    }
}

/// Waits until the store's (scheduled, leased, dead) counts satisfy `done`, or `timeout` passes.
/// Answers whether they did; a Redis that does not answer counts as not done yet.
pub(crate) async fn drain(
    store: &RedisStore,
    timeout: Duration,
    done: impl Fn((u64, u64, u64)) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if store.counts().await.is_ok_and(|c| done(c.as_tuple())) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Nothing scheduled, leased or dead.
pub(crate) fn empty(counts: (u64, u64, u64)) -> bool {
    counts == (0, 0, 0)
}

/// Runs a blocking fixture call (a script, a process start) without stalling the scenario's other
/// tasks.
pub(crate) fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

/// Seconds with one decimal, for notes.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
