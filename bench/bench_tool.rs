//! The load and measuring tool of the benchmark harness (`bench/run.sh`): preloads tasks straight
//! into Redis through the crate's own store, makes topics, and reads Kafka back to time delivery
//! and lateness. Every subcommand prints one JSON object on stdout.
//!
//! ```text
//! bench_tool topic    --name T [--partitions 1]
//! bench_tool preload  --prefix P --count N --topic T [--partitions 1] [--due-at MS] [--rate R]
//!                     [--payload-bytes 100] [--concurrency 256] [--connections 4]
//! bench_tool watch    --topic T --count N [--timeout 300] [--ready FILE]
//! bench_tool lateness --topic T --count N --first-due MS [--warmup-ms 0] [--timeout 300]
//! bench_tool clear    --prefix P
//! bench_tool delete-topics --prefix P
//! ```
//!
//! `preload` makes tasks the way `POST /tasks` does (`NewTask` validated from a `TaskRequest`,
//! `Task::new`), then sets each due time: task `i` is due at `due-at + i * 1000 / rate` ms
//! (all at `due-at` when `rate` is 0; `due-at` defaults to now, so they are all due). The payload
//! carries its due time and sequence number (`{"due":<ms>,"seq":<i>,"pad":"xx.."}`, padded to
//! `payload-bytes`), so that `lateness` can subtract it from the record's timestamp. `lateness`
//! quotes percentiles over the tasks due at least `warmup-ms` after `first-due` (the steady state), the same over all tasks
//! (`all_*`), and p50/p99/max per second of due time (`by_second`), which shows start-up effects.
//!
//! Topics are made with `message.timestamp.type=LogAppendTime`: a record's timestamp is the
//! broker's append time, so "published" means written to the log (acks=all, one broker).
//!
//! Redis and Kafka come from `BENCH_REDIS` (127.0.0.1:6379) and `BENCH_KAFKA` (127.0.0.1:9092).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kafka_retry::domain::{DestinationRequest, NewTask, Task, TaskId, TaskRequest, TaskStore};
use kafka_retry::redis_store::{RedisSettings, RedisStore};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn redis_addr() -> String {
    std::env::var("BENCH_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

fn kafka_addr() -> String {
    std::env::var("BENCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `--name value` pairs after the subcommand.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --flag, got {flag}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Self(map))
    }

    fn text(&self, name: &str) -> Result<String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is required").into())
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T> {
        match (self.0.get(name), default) {
            (Some(v), _) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v}").into()),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{name} is required").into()),
        }
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!(
            "usage: bench_tool topic|preload|watch|lateness|clear|delete-topics --flag value ..."
        );
        std::process::exit(2);
    };
    let outcome = match Args::parse(rest) {
        Ok(args) => match command.as_str() {
            "topic" => topic(&args).await,
            "preload" => preload(&args).await,
            "watch" => blocking(args, watch).await,
            "lateness" => blocking(args, lateness).await,
            "clear" => clear(&args).await,
            "delete-topics" => delete_topics(&args).await,
            other => Err(format!("unknown subcommand {other}").into()),
        },
        Err(e) => Err(e),
    };
    match outcome {
        Ok(value) => println!("{value}"),
        Err(e) => {
            eprintln!("bench_tool {command}: {e}");
            std::process::exit(1);
        }
    }
}

async fn blocking(
    args: Args,
    f: fn(&Args) -> Result<serde_json::Value>,
) -> Result<serde_json::Value> {
    tokio::task::spawn_blocking(move || f(&args)).await?
}

fn store(prefix: &str) -> Result<RedisStore> {
    Ok(RedisStore::connect(&RedisSettings {
        addr: redis_addr(),
        password: None,
        db: 0,
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_secs(30),
        idempotency_ttl: Duration::from_secs(3600),
    })?)
}

async fn topic(args: &Args) -> Result<serde_json::Value> {
    let name = args.text("name")?;
    let partitions: i32 = args.num("partitions", Some(1))?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()?;
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1))
        .set("message.timestamp.type", "LogAppendTime");
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        result.map_err(|(t, e)| format!("cannot create topic {t}: {e}"))?;
    }
    // Wait until the broker knows the partitions' leaders, so the first publish is not slowed.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if (0..partitions).all(|p| {
            consumer
                .fetch_watermarks(&name, p, Duration::from_secs(2))
                .is_ok()
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(json!({ "topic": name, "partitions": partitions }))
}

fn payload(due: i64, seq: u64, size: usize) -> String {
    let head = format!("{{\"due\":{due},\"seq\":{seq},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

async fn preload(args: &Args) -> Result<serde_json::Value> {
    let prefix = args.text("prefix")?;
    let count: u64 = args.num("count", None)?;
    let topic = args.text("topic")?;
    let partitions: u64 = args.num("partitions", Some(1))?;
    let due_at: i64 = args.num("due-at", Some(now_ms()))?;
    let rate: f64 = args.num("rate", Some(0.0))?;
    let payload_bytes: usize = args.num("payload-bytes", Some(100))?;
    let concurrency: usize = args.num("concurrency", Some(256))?;
    let connections: usize = args.num("connections", Some(4))?;
    // Several connections, so that encoding and parsing spread over the runtime's threads.
    let stores = (0..connections.max(1))
        .map(|_| store(&prefix))
        .collect::<Result<Vec<_>>>()?;
    for store in &stores {
        store.ping().await?;
    }
    let kafka = kafka_addr();
    let started = Instant::now();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lanes = stores.len() as u64;
    let mut handles = Vec::new();
    for (lane, store) in stores.into_iter().enumerate() {
        let (topic, kafka, errors) = (topic.clone(), kafka.clone(), errors.clone());
        let per_lane = (concurrency / lanes as usize).max(1);
        handles.push(tokio::spawn(async move {
            let seqs = (lane as u64..count).step_by(lanes as usize);
            futures::stream::iter(seqs)
                .map(|seq| {
                    let offset = if rate > 0.0 {
                        (seq as f64 * 1000.0 / rate) as i64
                    } else {
                        0
                    };
                    let task = make_task(
                        seq,
                        due_at + offset,
                        &topic,
                        partitions,
                        &kafka,
                        payload_bytes,
                    );
                    let (store, errors) = (&store, &errors);
                    async move {
                        let ok = match task {
                            Ok(task) => store.create(&task).await.is_ok(),
                            Err(_) => false,
                        };
                        if !ok {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .buffer_unordered(per_lane)
                .collect::<()>()
                .await;
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
    if errors > 0 {
        return Err(format!("{errors} of {count} tasks could not be stored").into());
    }
    Ok(json!({
        "count": count,
        "seconds": seconds,
        "per_second": count as f64 / seconds,
        "first_due": due_at,
        "payload_bytes": payload(due_at, 0, payload_bytes).len(),
        "finished_at": now_ms(),
    }))
}

/// A task as `POST /tasks` makes it, then due at `due`.
fn make_task(
    seq: u64,
    due: i64,
    topic: &str,
    partitions: u64,
    kafka: &str,
    payload_bytes: usize,
) -> Result<Task> {
    let request = TaskRequest {
        payload: Some(payload(due, seq, payload_bytes)),
        destination: Some(DestinationRequest {
            topic: Some(topic.to_owned()),
            partition: Some(i64::try_from(seq % partitions.max(1))?),
            kafka_conn_string: Some(kafka.to_owned()),
        }),
        dead_destination: None,
        max_retries: Some(3),
        retry_delay_seconds: Some(1),
        ..TaskRequest::default()
    };
    let new = NewTask::try_from(request)?;
    let mut task = Task::new(
        TaskId::generate(),
        new,
        now_ms(),
        Duration::from_secs(86_400),
    );
    task.due_at = due;
    Ok(task)
}

fn consumer() -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", format!("bench-{}", ulid::Ulid::generate()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?)
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<i32> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let n = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if n == 0 {
        return Err(format!("topic {topic} has no partitions").into());
    }
    Ok(i32::try_from(n)?)
}

fn signal_ready(args: &Args) -> Result<()> {
    if let Ok(file) = args.text("ready") {
        std::fs::write(file, "ready\n")?;
    }
    Ok(())
}

/// The timestamp of the record at `offset` in `topic`/`partition`.
fn record_ts(topic: &str, partition: i32, offset: i64) -> Result<i64> {
    let consumer = consumer()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&list)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            return Ok(message?.timestamp().to_millis().unwrap_or_default());
        }
    }
    Err(format!("no record at {topic}/{partition}@{offset}").into())
}

/// Polls the end offsets of `topic` every 10 ms until they add up to `count`.
fn watch(args: &Args) -> Result<serde_json::Value> {
    let topic = args.text("topic")?;
    let count: i64 = args.num("count", None)?;
    let timeout = Duration::from_secs(args.num("timeout", Some(300))?);
    let consumer = consumer()?;
    let partitions = partitions_of(&consumer, &topic)?;
    signal_ready(args)?;
    let start = Instant::now();
    let mut total = 0;
    let mut reached_at = None;
    let mut first_seen_at = None;
    while start.elapsed() < timeout {
        total = 0;
        for p in 0..partitions {
            total += consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(5))?
                .1;
        }
        if total > 0 && first_seen_at.is_none() {
            first_seen_at = Some(now_ms());
        }
        if total >= count {
            reached_at = Some(now_ms());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut first_ts = i64::MAX;
    let mut last_ts = i64::MIN;
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(5))?;
        if high > 0 {
            first_ts = first_ts.min(record_ts(&topic, p, 0)?);
            last_ts = last_ts.max(record_ts(&topic, p, high - 1)?);
        }
    }
    Ok(json!({
        "topic": topic,
        "count": total,
        "reached": reached_at.is_some(),
        "reached_at": reached_at,
        "first_seen_at": first_seen_at,
        "first_ts": (first_ts != i64::MAX).then_some(first_ts),
        "last_ts": (last_ts != i64::MIN).then_some(last_ts),
    }))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn due_of(payload: &[u8]) -> Option<i64> {
    let rest = payload.strip_prefix(b"{\"due\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Reads `count` records of `topic` and reports record timestamp minus the due time in the payload.
fn lateness(args: &Args) -> Result<serde_json::Value> {
    let topic = args.text("topic")?;
    let count: usize = args.num("count", None)?;
    let timeout = Duration::from_secs(args.num("timeout", Some(300))?);
    let first_due: i64 = args.num("first-due", None)?;
    let warmup: i64 = args.num("warmup-ms", Some(0))?;
    let consumer = consumer()?;
    let partitions = partitions_of(&consumer, &topic)?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    signal_ready(args)?;
    let start = Instant::now();
    let mut late = Vec::with_capacity(count);
    let mut steady = Vec::with_capacity(count);
    let mut by_second: Vec<Vec<i64>> = Vec::new();
    let (mut first_ts, mut last_ts) = (i64::MAX, i64::MIN);
    let mut unreadable = 0_u64;
    while late.len() < count && start.elapsed() < timeout {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let ts = message.timestamp().to_millis().unwrap_or_default();
        match message.payload().and_then(due_of) {
            Some(due) => {
                late.push(ts - due);
                if due >= first_due + warmup {
                    steady.push(ts - due);
                }
                let second = usize::try_from((due - first_due).max(0) / 1000).unwrap_or(0);
                if by_second.len() <= second {
                    by_second.resize(second + 1, Vec::new());
                }
                by_second[second].push(ts - due);
                first_ts = first_ts.min(ts);
                last_ts = last_ts.max(ts);
            }
            None => unreadable += 1,
        }
    }
    let received = late.len();
    late.sort_unstable();
    steady.sort_unstable();
    let by_second: Vec<serde_json::Value> = by_second
        .into_iter()
        .enumerate()
        .map(|(second, mut values)| {
            values.sort_unstable();
            json!({
                "second": second,
                "count": values.len(),
                "p50_ms": percentile(&values, 50.0),
                "p99_ms": percentile(&values, 99.0),
                "max_ms": values.last().copied().unwrap_or(0),
            })
        })
        .collect();
    let mean = if received > 0 {
        late.iter().sum::<i64>() as f64 / received as f64
    } else {
        0.0
    };
    let span = (last_ts - first_ts).max(1) as f64 / 1000.0;
    Ok(json!({
        "topic": topic,
        "received": received,
        "expected": count,
        "unreadable": unreadable,
        "warmup_ms": warmup,
        "steady_count": steady.len(),
        "p50_ms": percentile(&steady, 50.0),
        "p90_ms": percentile(&steady, 90.0),
        "p99_ms": percentile(&steady, 99.0),
        "p999_ms": percentile(&steady, 99.9),
        "max_ms": steady.last().copied().unwrap_or(0),
        "min_ms": steady.first().copied().unwrap_or(0),
        "all_p50_ms": percentile(&late, 50.0),
        "all_p99_ms": percentile(&late, 99.0),
        "all_max_ms": late.last().copied().unwrap_or(0),
        "all_mean_ms": mean,
        "by_second": by_second,
        "publish_span_s": span,
        "published_per_second": received as f64 / span,
    }))
}

/// Removes every key whose name contains the prefix, with UNLINK so that Redis frees big keys in
/// the background instead of blocking its other clients.
async fn clear(args: &Args) -> Result<serde_json::Value> {
    let prefix = args.text("prefix")?;
    let client = redis::Client::open(format!("redis://{}", redis_addr()))?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<'_, String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("*{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter_async(&mut connection)
            .await?;
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
        }
        keys
    };
    if !keys.is_empty() {
        redis::cmd("UNLINK")
            .arg(&keys)
            .query_async::<()>(&mut connection)
            .await?;
    }
    Ok(json!({ "prefix": prefix, "keys": keys }))
}

/// Deletes every topic whose name starts with the prefix (the harness's run tag).
async fn delete_topics(args: &Args) -> Result<serde_json::Value> {
    let prefix = args.text("prefix")?;
    if prefix.len() < 4 {
        return Err("--prefix must be at least 4 characters".into());
    }
    let names: Vec<String> = {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_addr())
            .create()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
        metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect()
    };
    if !names.is_empty() {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", kafka_addr())
            .create()?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        admin
            .delete_topics(
                &refs,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await?;
    }
    Ok(json!({ "prefix": prefix, "deleted": names }))
}
