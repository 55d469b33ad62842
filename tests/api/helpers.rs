//! Shared test fixtures: the service in-process or as a child process, a private Redis server, and
//! Kafka topics read back with a real consumer. Every test gets its own key prefix and topics.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_retry::app::{App, Service};
use kafka_retry::config::Config;
use kafka_retry::redis_store::{RedisSettings, RedisStore};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The shared Redis the tests use, `host:port`.
pub(crate) fn redis_addr() -> String {
    std::env::var("KAFKA_RETRY_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// The Kafka broker the tests use, `host:port`.
pub(crate) fn kafka_addr() -> String {
    std::env::var("KAFKA_RETRY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The settings every test instance runs with, over `redis` and the key prefix.
pub(crate) fn test_vars(redis: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("HTTP_HOST", "127.0.0.1"),
        ("HTTP_PORT", "0"),
        ("REDIS_ADDR", redis),
        ("REDIS_KEY_PREFIX", prefix),
        ("KAFKA_BROKERS", &kafka_addr()),
        ("POLL_INTERVAL", "100ms"),
        ("LEASE_DURATION", "10s"),
        ("KAFKA_MESSAGE_TIMEOUT", "3s"),
        ("REDIS_TIMEOUT", "1s"),
        ("SHUTDOWN_GRACE", "5s"),
        ("LOG_LEVEL", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A service running inside the test process.
pub(crate) struct TestApp {
    /// Where its HTTP API listens.
    pub(crate) address: SocketAddr,
    /// Its use cases, for direct inspection.
    pub(crate) service: Arc<Service>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
}

impl TestApp {
    /// Starts an instance on the shared Redis with a fresh key prefix.
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(&unique("test"), &[]).await
    }

    /// Starts an instance on the shared Redis under `prefix`, with extra settings.
    pub(crate) async fn spawn_with(prefix: &str, extra: &[(&str, &str)]) -> Self {
        let mut vars = test_vars(&redis_addr(), prefix);
        vars.retain(|(name, _)| extra.iter().all(|(k, _)| k != name));
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::from_vars(vars).expect("test configuration");
        let app = App::build(config).await.expect("app builds");
        let address = app.local_addr().expect("bound");
        let service = app.service();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        Self {
            address,
            service,
            shutdown,
            handle: Some(handle),
            http: reqwest::Client::new(),
        }
    }

    /// Posts a task body; returns the status and the JSON answer.
    pub(crate) async fn post_task(&self, body: &Value) -> (u16, Value) {
        post_task(&self.http, self.address, body).await
    }

    /// Stops the instance the way SIGTERM would, and waits for it.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("joined").expect("clean shutdown");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Posts a task body to a service at `address`.
pub(crate) async fn post_task(
    http: &reqwest::Client,
    address: SocketAddr,
    body: &Value,
) -> (u16, Value) {
    let response = http
        .post(format!("http://{address}/tasks"))
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A task body for `topic` partition `partition` on the test broker.
pub(crate) fn task_body(
    payload: &str,
    topic: &str,
    partition: i32,
    max_retries: u32,
    delay: u32,
) -> Value {
    json!({
        "payload": payload,
        "destination": {"topic": topic, "partition": partition, "kafka_conn_string": kafka_addr()},
        "max_retries": max_retries,
        "retry_delay_seconds": delay,
    })
}

/// A store handle on `redis` under `prefix`, for inspecting what the service wrote.
pub(crate) fn store(redis: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(&RedisSettings {
        addr: redis.to_owned(),
        password: None,
        db: 0,
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_secs(2),
        idempotency_ttl: Duration::from_secs(3600),
    })
    .expect("store")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub(crate) async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a fresh topic with `partitions` partitions on the test broker.
pub(crate) async fn create_topic(partitions: i32) -> String {
    create_topic_on(&kafka_addr(), partitions, 1, &[]).await
}

/// Creates a fresh topic on the cluster at `bootstrap`, with topic-level `config`.
pub(crate) async fn create_topic_on(
    bootstrap: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) -> String {
    let name = unique("topic");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(replication));
    for (key, value) in config {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics answered");
    for result in results {
        result.expect("topic created");
    }
    name
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// Its partition.
    pub(crate) partition: i32,
    /// Its bytes.
    pub(crate) payload: Vec<u8>,
    /// The broker's or producer's timestamp, ms.
    pub(crate) timestamp: i64,
    /// Its key.
    pub(crate) key: Option<Vec<u8>>,
    /// Its headers, in order, values as text.
    pub(crate) headers: Vec<(String, String)>,
}

/// Reads every partition of `topic` from the beginning until `expected` records arrived, then for
/// `settle` more to catch extras (duplicates); gives up after `timeout`.
pub(crate) async fn consume(
    topic: &str,
    expected: usize,
    settle: Duration,
    timeout: Duration,
) -> Vec<Record> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || consume_blocking(&topic, expected, settle, timeout))
        .await
        .expect("consumer thread")
}

fn consume_blocking(
    topic: &str,
    expected: usize,
    settle: Duration,
    timeout: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", unique("test-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).expect("partition");
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let start = Instant::now();
    let mut reached: Option<Instant> = None;
    let mut records = Vec::new();
    while start.elapsed() < timeout && reached.is_none_or(|at| at.elapsed() < settle) {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("message");
            records.push(Record {
                partition: message.partition(),
                payload: message.payload().unwrap_or_default().to_vec(),
                timestamp: message.timestamp().to_millis().unwrap_or_default(),
                key: message.key().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                let value =
                                    h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_owned(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
            if records.len() >= expected && reached.is_none() {
                reached = Some(Instant::now());
            }
        }
    }
    records
}

/// A Redis server of the test's own, on a free port, with AOF persistence in a fresh folder.
pub(crate) struct RedisServer {
    /// Its port.
    pub(crate) port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub(crate) fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("kafka-retry-redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// `host:port`.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again (after [`stop`](Self::stop)) on the same port and data folder.
    pub(crate) fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (run scripts/services.sh up)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it cleanly (SIGTERM: Redis flushes its AOF) and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `SIG<name>` to a process.
pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// The `kafka-retry` binary running as a child process.
pub(crate) struct ServiceProcess {
    /// Where its HTTP API listens.
    pub(crate) address: SocketAddr,
    /// The process.
    pub(crate) child: Child,
}

impl ServiceProcess {
    /// Starts the binary over `redis` under `prefix` and waits until its port accepts connections.
    pub(crate) fn start(redis: &str, prefix: &str, extra: &[(&str, &str)]) -> Self {
        Self::start_logging_to(redis, prefix, extra, Stdio::null())
    }

    /// Like [`start`](Self::start), with its log lines (stdout) going to `log`.
    pub(crate) fn start_logging_to(
        redis: &str,
        prefix: &str,
        extra: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kafka-retry"));
        command
            .env_clear()
            .envs(test_vars(redis, prefix))
            .env("HTTP_PORT", port.to_string())
            .envs(extra.iter().copied())
            .stdout(log)
            .stderr(Stdio::inherit());
        let child = command.spawn().expect("service starts");
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let start = Instant::now();
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "service did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { address, child }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
