//! What a scenario submitted and what became of it. Every task carries a unique payload
//! (`s<scenario>-<index>`), so reading the topics back tells which tasks arrived and how often.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kafka_retry::domain::{
    Clock, DestinationRequest, Millis, NewTask, SystemClock, Task, TaskId, TaskRequest, TaskStore,
};
use kafka_retry::redis_store::RedisStore;
use serde_json::{Value, json};

use crate::brokers::read_topic;
use crate::helpers::post_task;
use crate::report::Row;
use crate::suite::RedisView;

/// How many submissions are in flight at once.
const CONCURRENCY: usize = 64;

/// The tasks a scenario got accepted, by payload.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    ids: HashMap<String, String>,
    /// Submissions the service refused (an HTTP status other than 201); not counted as tasks.
    pub(crate) refused: usize,
}

impl Ledger {
    /// How many tasks were accepted.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The task id of a payload, if it was accepted.
    pub(crate) fn id_of(&self, payload: &str) -> Option<&str> {
        self.ids.get(payload).map(String::as_str)
    }

    /// The task id of each payload.
    pub(crate) fn ids(&self) -> impl Iterator<Item = (&str, &str)> {
        self.ids.iter().map(|(p, id)| (p.as_str(), id.as_str()))
    }

    fn accept(&mut self, payload: String, id: String) {
        let previous = self.ids.insert(payload, id);
        assert!(previous.is_none(), "payloads must be unique");
    }
}

/// The current time, in the service's unit.
pub(crate) fn now() -> Millis {
    SystemClock.now()
}

/// A destination as a client sends it.
pub(crate) fn destination(bootstrap: &str, topic: &str, partition: i32) -> DestinationRequest {
    DestinationRequest {
        topic: Some(topic.to_owned()),
        partition: Some(i64::from(partition)),
        kafka_conn_string: Some(bootstrap.to_owned()),
    }
}

/// A JSON task body, for submissions over HTTP.
pub(crate) fn body(
    payload: &str,
    destination: &DestinationRequest,
    dead: Option<&DestinationRequest>,
    max_retries: u32,
    delay: u32,
) -> Value {
    let json_of = |d: &DestinationRequest| json!({"topic": d.topic, "partition": d.partition, "kafka_conn_string": d.kafka_conn_string});
    let mut body = json!({
        "payload": payload,
        "destination": json_of(destination),
        "max_retries": max_retries,
        "retry_delay_seconds": delay,
    });
    if let Some(dead) = dead {
        body["dead_destination"] = json_of(dead);
    }
    body
}

/// A task as the service would have stored it, due at `due_at`.
pub(crate) fn task(
    payload: String,
    destination: DestinationRequest,
    dead: Option<DestinationRequest>,
    max_retries: i64,
    delay: i64,
    due_at: Millis,
) -> Task {
    let new = NewTask::try_from(TaskRequest {
        payload: Some(payload),
        destination: Some(destination),
        dead_destination: dead,
        max_retries: Some(max_retries),
        retry_delay_seconds: Some(delay),
        ..TaskRequest::default()
    })
    .expect("a valid task");
    let mut task = Task::new(TaskId::generate(), new, now(), Duration::from_secs(86_400));
    task.due_at = due_at;
    task
}

/// Stores tasks straight into Redis, as `POST /tasks` would, when HTTP is not what a scenario
/// is about.
pub(crate) async fn create_all(store: &RedisStore, tasks: Vec<Task>) -> Ledger {
    let created: Vec<(String, String)> = futures::stream::iter(tasks)
        .map(|task| async move {
            store.create(&task).await.expect("task stored");
            (task.payload, task.id.to_string())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut ledger = Ledger::default();
    for (payload, id) in created {
        ledger.accept(payload, id);
    }
    ledger
}

/// Posts `(payload, body)` pairs to the services at `addresses` in turn, spread evenly over
/// `pace` (all at once for zero), and records which were accepted.
pub(crate) async fn post_all(
    addresses: Vec<SocketAddr>,
    bodies: Vec<(String, Value)>,
    pace: Duration,
) -> Ledger {
    const TICK: Duration = Duration::from_millis(100);
    let http = reqwest::Client::new();
    let ticks = (pace.as_millis() / TICK.as_millis()).max(1);
    let per_tick = bodies
        .len()
        .div_ceil(usize::try_from(ticks).expect("ticks"));
    let mut ledger = Ledger::default();
    let mut bodies = bodies.into_iter().enumerate().peekable();
    while bodies.peek().is_some() {
        let started = Instant::now();
        let chunk: Vec<(usize, (String, Value))> = bodies.by_ref().take(per_tick).collect();
        let answers: Vec<(String, u16, Value)> = futures::stream::iter(chunk)
            .map(|(i, (payload, body))| {
                let http = &http;
                let address = addresses[i % addresses.len()];
                async move {
                    let (status, answer) = post_task(http, address, &body).await;
                    (payload, status, answer)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (payload, status, answer) in answers {
            match (status, answer["task_id"].as_str()) {
                (201, Some(id)) => ledger.accept(payload, id.to_owned()),
                _ => ledger.refused += 1,
            }
        }
        if let Some(rest) = TICK.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    ledger
}

/// A topic to read back: its cluster and its name.
#[derive(Debug, Clone)]
pub(crate) struct TopicRef {
    pub(crate) bootstrap: String,
    pub(crate) name: String,
}

/// What became of the tasks of a ledger.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) tasks: usize,
    /// Tasks found at least once on a destination topic.
    pub(crate) delivered: usize,
    /// Tasks found on a dead-letter topic (and not on a destination).
    pub(crate) dead_lettered: usize,
    /// Tasks whose id is still in the schedule, the leases or the dead set.
    pub(crate) held: usize,
    /// Tasks found nowhere: neither on a topic nor in Redis.
    pub(crate) lost: Vec<String>,
    /// Tasks found on a topic and still held in Redis: they will be published again.
    pub(crate) published_and_held: usize,
    /// Copies beyond the first, over destination and dead-letter topics together, by payload.
    pub(crate) duplicates: HashMap<String, usize>,
    /// Records of this scenario's topics that match no accepted task (a refused submission that
    /// was stored after all would show here).
    pub(crate) strays: usize,
}

impl Tally {
    /// How many extra copies were published.
    pub(crate) fn duplicated(&self) -> usize {
        self.duplicates.values().sum()
    }

    /// The scenario's row in the table.
    pub(crate) fn row(&self, scenario: &str, notes: String) -> Row {
        Row {
            scenario: scenario.to_owned(),
            tasks: self.tasks,
            delivered: self.delivered,
            dead_lettered: self.dead_lettered,
            held: self.held,
            lost: self.lost.len(),
            duplicated: self.duplicated(),
            notes,
        }
    }

    /// Fails the scenario if any task was lost, naming a few.
    pub(crate) fn assert_none_lost(&self) {
        let mut some: Vec<&String> = self.lost.iter().take(10).collect();
        some.sort();
        assert!(
            self.lost.is_empty(),
            "{} of {} tasks lost, for example {some:?}",
            self.lost.len(),
            self.tasks
        );
    }

    /// Fails the scenario if any task was published more than once, naming a few.
    pub(crate) fn assert_no_duplicates(&self) {
        let some: Vec<&String> = self.duplicates.keys().take(10).collect();
        assert!(
            self.duplicates.is_empty(),
            "{} extra copies of {} tasks, for example {some:?}",
            self.duplicated(),
            self.duplicates.len()
        );
    }
}

/// Reads every destination and dead-letter topic back in full and looks up what Redis still holds,
/// then says of each task of `ledger` where it ended up.
pub(crate) async fn tally(
    ledger: &Ledger,
    destinations: &[TopicRef],
    dead_letters: &[TopicRef],
    view: &RedisView,
) -> Tally {
    let mut delivered: HashMap<Vec<u8>, usize> = HashMap::new();
    for topic in destinations {
        for payload in read_topic(&topic.bootstrap, &topic.name).await {
            *delivered.entry(payload).or_default() += 1;
        }
    }
    let mut dead: HashMap<Vec<u8>, usize> = HashMap::new();
    for topic in dead_letters {
        for payload in read_topic(&topic.bootstrap, &topic.name).await {
            *dead.entry(payload).or_default() += 1;
        }
    }
    let held_ids = view.held().await;

    let mut tally = Tally {
        tasks: ledger.len(),
        ..Tally::default()
    };
    let mut known: HashSet<&[u8]> = HashSet::new();
    for (payload, id) in ledger.ids() {
        known.insert(payload.as_bytes());
        let copies = delivered.get(payload.as_bytes()).copied().unwrap_or(0);
        let dead_copies = dead.get(payload.as_bytes()).copied().unwrap_or(0);
        let held = held_ids.contains(id);
        if copies > 0 {
            tally.delivered += 1;
        } else if dead_copies > 0 {
            tally.dead_lettered += 1;
        }
        if held {
            tally.held += 1;
            tally.published_and_held += usize::from(copies + dead_copies > 0);
        }
        if copies + dead_copies > 1 {
            tally
                .duplicates
                .insert(payload.to_owned(), copies + dead_copies - 1);
        }
        if copies + dead_copies == 0 && !held {
            tally.lost.push(payload.to_owned());
        }
    }
    tally.strays = delivered
        .iter()
        .chain(&dead)
        .filter(|(payload, _)| !known.contains(payload.as_slice()))
        .map(|(_, n)| n)
        .sum();
    tally
}
