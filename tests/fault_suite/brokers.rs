//! Kafka for the scenarios: topics on any cluster and read back in full, a private single broker
//! that can be stopped without touching the shared one, the 3-broker cluster of
//! `scripts/services.sh`, and a broker address that is closed until a scenario opens it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{free_port, signal, unique};

const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("fault-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer")
}

/// Every payload in `topic`, all partitions, from the start up to the high watermark each
/// partition had when the read began: exactly what the brokers hold, without guessing how long to
/// wait for stragglers (scenarios read only once the service has settled everything).
pub(crate) async fn read_topic(bootstrap: &str, topic: &str) -> Vec<Vec<u8>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(&bootstrap, &topic))
        .await
        .expect("reader thread")
}

fn read_blocking(bootstrap: &str, topic: &str) -> Vec<Vec<u8>> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let consumer = consumer(bootstrap);
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len();
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for partition in 0..i32::try_from(partitions).expect("partition count") {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, TIMEOUT)
            .expect("watermarks");
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .expect("assignment");
            ends.insert(partition, high);
        }
    }
    let mut payloads = Vec::new();
    if ends.is_empty() {
        return payloads;
    }
    consumer.assign(&assignment).expect("assign");
    let start = Instant::now();
    while !ends.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{topic} not read back within 2 minutes; {} partitions unfinished",
            ends.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("message");
        payloads.push(message.payload().unwrap_or_default().to_vec());
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
    }
    payloads
}

/// The node id of the leader of `topic`'s `partition`, once there is one.
pub(crate) fn partition_leader(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let consumer = consumer(bootstrap);
    let start = Instant::now();
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10));
        let leader = metadata.ok().and_then(|m| {
            m.topics()[0]
                .partitions()
                .iter()
                .find(|p| p.id() == partition)
                .map(|p| p.leader())
        });
        match leader {
            Some(leader) if leader >= 0 => return leader,
            _ => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{topic}/{partition} has no leader"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Runs `scripts/services.sh <command>` with `env`; panics with its output if it fails.
fn services(command: &str, env: &[(String, String)]) {
    let output = Command::new("bash")
        .arg(SERVICES)
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("scripts/services.sh runs");
    assert!(
        output.status.success(),
        "scripts/services.sh {command} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A single Kafka broker of a scenario's own, started by `scripts/services.sh` on free ports with
/// a fresh state folder, so stopping it never disturbs the shared broker other tests use.
pub(crate) struct PrivateBroker {
    port: u16,
    env: Vec<(String, String)>,
    state: PathBuf,
    running: bool,
}

impl PrivateBroker {
    /// Starts it and waits until it takes messages. `redis_port` must be a Redis that already
    /// answers: the script then treats it as external, and never starts or stops it.
    pub(crate) fn start(redis_port: u16) -> Self {
        let port = free_port();
        let state = std::env::temp_dir().join(unique("fault-broker"));
        std::fs::create_dir_all(&state).expect("broker state folder");
        let env = vec![
            ("REDIS_PORT".to_owned(), redis_port.to_string()),
            ("KAFKA_PORT".to_owned(), port.to_string()),
            ("KAFKA_CONTROLLER_PORT".to_owned(), free_port().to_string()),
            ("KAFKA_RETRY_STATE".to_owned(), state.display().to_string()),
        ];
        let mut broker = Self {
            port,
            env,
            state,
            running: false,
        };
        broker.start_again();
        broker
    }

    /// Its bootstrap address.
    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGTERM, a controlled shutdown), keeping its data.
    pub(crate) fn stop(&mut self) {
        services("down", &self.env);
        self.running = false;
    }

    /// Starts it again on the same port and data, and waits until it takes messages.
    pub(crate) fn start_again(&mut self) {
        services("up", &self.env);
        self.running = true;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new("bash")
                .arg(SERVICES)
                .arg("down")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// The 3-broker KRaft cluster of `scripts/services.sh up-cluster` (replication 3,
/// `min.insync.replicas=2`); stopped with `down-cluster` when dropped.
pub(crate) struct Cluster {
    base: u16,
    state: PathBuf,
}

impl Cluster {
    /// Starts the cluster (or the nodes of it that are stopped) and waits until every node lists
    /// all three brokers and an acks=all produce succeeds.
    pub(crate) fn up() -> Self {
        let base = std::env::var("KAFKA_CLUSTER_BASE")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(29092);
        let state = std::env::var_os("KAFKA_RETRY_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".run"));
        let cluster = Self { base, state };
        cluster.start_stopped_nodes();
        cluster
    }

    /// Restarts the nodes that are not running and waits as [`up`](Self::up) does.
    pub(crate) fn start_stopped_nodes(&self) {
        services("up-cluster", &[]);
    }

    /// The bootstrap addresses of all three nodes.
    pub(crate) fn bootstrap(&self) -> String {
        (0..3)
            .map(|n| format!("127.0.0.1:{}", self.base + n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `id` (1 to 3) with SIGKILL: the JVM gets no chance to shut down cleanly.
    /// Answers the pid it killed.
    pub(crate) fn kill_9(&self, id: i32) -> u32 {
        let node = self
            .state
            .join(format!("kafka-cluster-{}", self.base))
            .join(format!("node{id}"));
        let pid: u32 = std::fs::read_to_string(node.join("kafka.pid"))
            .expect("node pid file")
            .trim()
            .parse()
            .expect("a pid");
        // The pid file may outlive its process; make sure the pid is still that node's java.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("node process runs");
        let properties = node.join("server.properties").display().to_string();
        assert!(
            String::from_utf8_lossy(&cmdline).contains(&properties),
            "pid {pid} is not Kafka node {id}"
        );
        signal(pid, "KILL");
        pid
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SERVICES)
            .arg("down-cluster")
            .output();
    }
}

/// A broker address that refuses connections until [`open`](Self::open) makes it a doorway to a
/// real broker: an unreachable cluster that can come back.
pub(crate) struct Gate {
    port: u16,
    forwarder: Option<JoinHandle<()>>,
}

impl Gate {
    /// A closed address (nothing listens on its port).
    pub(crate) fn closed() -> Self {
        Self {
            port: free_port(),
            forwarder: None,
        }
    }

    /// `host:port`, to use as a `kafka_conn_string`.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on, connections are forwarded to `target`. A client that bootstraps through the
    /// gate then talks to the brokers the metadata advertises, as it would after a network
    /// partition heals.
    pub(crate) async fn open(&mut self, target: String) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the gate's port is still free");
        self.forwarder = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
    }
}
