//! The retry task: what a client submits, how it is validated, and how it moves from one delivery
//! attempt to the next.
//!
//! A task makes at most `max_retries` delivery attempts. Attempt 1 is due `retry_delay` after
//! creation; when attempt `n` fails, attempt `n + 1` is due `retry_delay * 2^n` after that failure,
//! each delay capped by a configurable maximum. When the last attempt fails the payload goes to the
//! dead-letter destination (retried with the same backoff until it succeeds); without one, the task
//! is kept as dead with its last error.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// The largest `max_retries` a client may ask for.
pub const MAX_RETRIES: i64 = 100;

/// The largest `retry_delay_seconds` a client may ask for (one day).
pub const MAX_RETRY_DELAY_SECONDS: i64 = 86_400;

/// The longest idempotency key, record key and header name or value, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// The most record headers a task may carry.
pub const MAX_HEADERS: usize = 64;

/// Header names the service sets on every record; a client's headers may not use the prefix.
pub const RESERVED_HEADER_PREFIX: &str = "kafka-retry-";

/// The longest Kafka topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// Milliseconds since the Unix epoch, the unit of every instant the domain stores.
pub type Millis = i64;

/// A request body field that failed validation, with a message a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct ValidationError {
    /// The field's path in the request body, such as `destination.topic`.
    pub field: String,
    /// What is wrong with it, phrased to follow the field's name.
    pub reason: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A task's identifier: a ULID, so identifiers sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TaskId(Ulid);

impl TaskId {
    /// A fresh identifier.
    pub fn generate() -> Self {
        Self(Ulid::generate())
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.0.to_string()
    }
}

impl TryFrom<String> for TaskId {
    type Error = ulid::DecodeError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A ULID's first character carries 3 bits; a larger one would be silently truncated.
        if s.len() == ulid::ULID_LEN && s.as_bytes().first().is_some_and(|c| *c > b'7') {
            return Err(ulid::DecodeError::InvalidChar);
        }
        Ulid::from_string(s).map(Self)
    }
}

/// A valid Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, neither `.` nor `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

impl Topic {
    /// Checks `name` against Kafka's rules for topic names.
    pub fn parse(name: String) -> Result<Self, String> {
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if name.len() > MAX_TOPIC_LEN {
            return Err(format!("must be at most {MAX_TOPIC_LEN} characters"));
        }
        if name == "." || name == ".." {
            return Err("must not be '.' or '..'".into());
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !name.chars().all(legal) {
            return Err("may contain only ASCII letters, digits, '.', '_' and '-'".into());
        }
        Ok(Self(name))
    }

    /// The topic's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Topic {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::parse(name)
    }
}

impl From<Topic> for String {
    fn from(topic: Topic) -> Self {
        topic.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a payload is published: a topic partition on the cluster named by `kafka_conn_string`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The topic.
    pub topic: Topic,
    /// The partition, never negative.
    pub partition: i32,
    /// The cluster's bootstrap brokers, comma-separated `host:port` pairs.
    pub kafka_conn_string: String,
}

/// A destination as it arrives, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DestinationRequest {
    /// The topic's name.
    pub topic: Option<String>,
    /// The partition.
    pub partition: Option<i64>,
    /// The cluster's bootstrap brokers.
    pub kafka_conn_string: Option<String>,
}

impl Destination {
    /// Validates a destination found at `field` (`destination` or `dead_destination`).
    pub fn parse(field: &str, raw: DestinationRequest) -> Result<Self, ValidationError> {
        let topic = raw
            .topic
            .ok_or_else(|| ValidationError::new(format!("{field}.topic"), "is required"))?;
        let topic = Topic::parse(topic)
            .map_err(|reason| ValidationError::new(format!("{field}.topic"), reason))?;
        let partition = raw
            .partition
            .ok_or_else(|| ValidationError::new(format!("{field}.partition"), "is required"))?;
        let partition = i32::try_from(partition)
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| {
                ValidationError::new(
                    format!("{field}.partition"),
                    format!("must be an integer from 0 to {}", i32::MAX),
                )
            })?;
        let kafka_conn_string = raw
            .kafka_conn_string
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ValidationError::new(format!("{field}.kafka_conn_string"), "is required")
            })?;
        Ok(Self {
            topic,
            partition,
            kafka_conn_string,
        })
    }
}

/// The body of `POST /tasks`, before validation. Unknown fields are ignored; objects must be JSON
/// objects (serde would otherwise take an array of the fields in order).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskRequest {
    /// The message to publish, as a string.
    pub payload: Option<String>,
    /// Where to publish it.
    #[serde(default, deserialize_with = "objects::optional")]
    pub destination: Option<DestinationRequest>,
    /// Where to publish it once every attempt has failed.
    #[serde(default, deserialize_with = "objects::optional")]
    pub dead_destination: Option<DestinationRequest>,
    /// How many delivery attempts to make.
    pub max_retries: Option<i64>,
    /// The base delay, in seconds.
    pub retry_delay_seconds: Option<i64>,
    /// An idempotency key: submitting the same one again returns the first task.
    pub id: Option<String>,
    /// The record key to publish with.
    pub key: Option<String>,
    /// Record headers to publish with.
    #[serde(default, deserialize_with = "objects::optional")]
    pub headers: Option<BTreeMap<String, String>>,
    /// How delays grow between attempts.
    #[serde(default, deserialize_with = "objects::optional")]
    pub backoff: Option<BackoffRequest>,
}

/// A backoff as it arrives, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BackoffRequest {
    /// `exponential` (the default), `fixed` or `linear`.
    pub strategy: Option<String>,
    /// Whether to spread each delay over its upper half.
    pub jitter: Option<bool>,
    /// A cap on one delay, in seconds, below the service's own.
    pub max_delay_seconds: Option<i64>,
}

impl TaskRequest {
    /// Deserializes a request that must be a JSON object at the top.
    pub fn deserialize_object<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        objects::required(deserializer)
    }
}

/// Deserializing structs from maps only.
mod objects {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::value::MapAccessDeserializer;
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }

    pub(super) fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        deserializer.deserialize_map(ObjectVisitor(PhantomData))
    }

    struct OptionalVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OptionalVisitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object or null")
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            required(deserializer).map(Some)
        }
    }

    pub(super) fn optional<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        deserializer.deserialize_option(OptionalVisitor(PhantomData))
    }
}

/// A validated submission: every field is known to be acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The bytes to publish.
    pub payload: String,
    /// Where to publish them.
    pub destination: Destination,
    /// Where to publish them once every attempt has failed.
    pub dead_destination: Option<Destination>,
    /// How many delivery attempts to make, 1 to [`MAX_RETRIES`].
    pub max_retries: u32,
    /// The base delay in seconds, 1 to [`MAX_RETRY_DELAY_SECONDS`].
    pub retry_delay_seconds: u32,
    /// How delays grow.
    pub backoff: Backoff,
    /// The client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The record key.
    pub key: Option<String>,
    /// The client's record headers.
    pub headers: Vec<(String, String)>,
    /// The W3C trace context the task was submitted under.
    pub traceparent: Option<String>,
}

impl TryFrom<TaskRequest> for NewTask {
    type Error = ValidationError;

    fn try_from(raw: TaskRequest) -> Result<Self, Self::Error> {
        let payload = raw
            .payload
            .ok_or_else(|| ValidationError::new("payload", "is required"))?;
        if payload.is_empty() {
            return Err(ValidationError::new("payload", "must not be empty"));
        }
        let destination = raw
            .destination
            .ok_or_else(|| ValidationError::new("destination", "is required"))?;
        let destination = Destination::parse("destination", destination)?;
        let dead_destination = raw
            .dead_destination
            .map(|d| Destination::parse("dead_destination", d))
            .transpose()?;
        let max_retries = bounded("max_retries", raw.max_retries, MAX_RETRIES)?;
        let retry_delay_seconds = bounded(
            "retry_delay_seconds",
            raw.retry_delay_seconds,
            MAX_RETRY_DELAY_SECONDS,
        )?;
        let idempotency_key = raw.id.map(|id| short_text("id", id)).transpose()?;
        let key = raw.key.map(|key| short_text("key", key)).transpose()?;
        let headers = parse_headers(raw.headers.unwrap_or_default())?;
        let backoff = raw
            .backoff
            .map(Backoff::parse)
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            payload,
            destination,
            dead_destination,
            max_retries,
            retry_delay_seconds,
            backoff,
            idempotency_key,
            key,
            headers,
            traceparent: None,
        })
    }
}

impl NewTask {
    /// Takes an idempotency key given outside the body (the `Idempotency-Key` header); the body's
    /// `id` wins when both are given.
    pub fn with_idempotency_key(mut self, key: Option<String>) -> Result<Self, ValidationError> {
        if self.idempotency_key.is_none() {
            self.idempotency_key = key.map(|k| short_text("Idempotency-Key", k)).transpose()?;
        }
        Ok(self)
    }

    /// Keeps the W3C `traceparent` the task was submitted under, when it is well formed.
    pub fn with_traceparent(mut self, traceparent: Option<&str>) -> Self {
        self.traceparent = traceparent.filter(|t| is_traceparent(t)).map(str::to_owned);
        self
    }
}

fn short_text(field: &str, text: String) -> Result<String, ValidationError> {
    if text.is_empty() || text.len() > MAX_KEY_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {MAX_KEY_LEN} bytes"),
        ));
    }
    Ok(text)
}

fn parse_headers(
    headers: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ValidationError> {
    if headers.len() > MAX_HEADERS {
        return Err(ValidationError::new(
            "headers",
            format!("must have at most {MAX_HEADERS} entries"),
        ));
    }
    headers
        .into_iter()
        .map(|(name, value)| {
            let field = format!("headers.{name}");
            if name.is_empty() || name.len() > MAX_KEY_LEN || value.len() > MAX_KEY_LEN {
                return Err(ValidationError::new(
                    field,
                    format!("names must be 1 to {MAX_KEY_LEN} bytes and values at most as long"),
                ));
            }
            if name
                .to_ascii_lowercase()
                .starts_with(RESERVED_HEADER_PREFIX)
            {
                return Err(ValidationError::new(
                    field,
                    format!("must not start with {RESERVED_HEADER_PREFIX}, which the service sets"),
                ));
            }
            Ok((name, value))
        })
        .collect()
}

/// `version-traceid-parentid-flags` in lowercase hex, as W3C Trace Context defines it.
fn is_traceparent(value: &str) -> bool {
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let not_zero = |s: &str| s.bytes().any(|b| b != b'0');
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && not_zero(parts[1])
        && hex(parts[2], 16)
        && not_zero(parts[2])
        && hex(parts[3], 2)
}

/// How a task's delay grows from one attempt to the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// `base * 2^failures`: the Go service's formula.
    #[default]
    Exponential,
    /// `base` every time.
    Fixed,
    /// `base * (failures + 1)`.
    Linear,
}

/// A task's backoff: its strategy, optional jitter and optional cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// How the delay grows.
    #[serde(default)]
    pub strategy: Strategy,
    /// Whether each delay is spread over its upper half (`delay/2` to `delay`), so that tasks that
    /// failed together do not retry together.
    #[serde(default)]
    pub jitter: bool,
    /// A cap on one delay, in seconds, applied below the service's `MAX_RETRY_DELAY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_seconds: Option<u32>,
}

impl Backoff {
    fn parse(raw: BackoffRequest) -> Result<Self, ValidationError> {
        let strategy = match raw.strategy.as_deref() {
            None | Some("exponential") => Strategy::Exponential,
            Some("fixed") => Strategy::Fixed,
            Some("linear") => Strategy::Linear,
            Some(_) => {
                return Err(ValidationError::new(
                    "backoff.strategy",
                    "must be exponential, fixed or linear",
                ));
            }
        };
        let max_delay_seconds = raw
            .max_delay_seconds
            .map(|max| {
                bounded(
                    "backoff.max_delay_seconds",
                    Some(max),
                    MAX_RETRY_DELAY_SECONDS,
                )
            })
            .transpose()?;
        Ok(Self {
            strategy,
            jitter: raw.jitter.unwrap_or(false),
            max_delay_seconds,
        })
    }
}

fn bounded(field: &str, value: Option<i64>, max: i64) -> Result<u32, ValidationError> {
    let value = value.ok_or_else(|| ValidationError::new(field, "is required"))?;
    if !(1..=max).contains(&value) {
        return Err(ValidationError::new(
            field,
            format!("must be an integer from 1 to {max}"),
        ));
    }
    u32::try_from(value).map_err(|_| ValidationError::new(field, "is out of range"))
}

/// Where a task stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its next delivery attempt.
    Scheduled,
    /// Every attempt failed; waiting to be published to the dead-letter destination.
    DeadLettering,
    /// Every attempt failed and there is no dead-letter destination: kept for an operator.
    Dead,
}

/// A task as the service keeps it.
/// (`Deserialize` reads the JSON records of earlier versions of the Redis store.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Task {
    /// Its identifier.
    pub id: TaskId,
    /// The bytes to publish, exactly as received.
    pub payload: String,
    /// Where delivery attempts publish.
    pub destination: Destination,
    /// Where the payload goes once every attempt has failed.
    #[serde(default)]
    pub dead_destination: Option<Destination>,
    /// How many delivery attempts it may make.
    pub max_retries: u32,
    /// The base delay in seconds.
    pub retry_delay_seconds: u32,
    /// Delivery attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Dead-letter publishes attempted so far.
    #[serde(default)]
    pub dead_letter_attempts: u32,
    /// Where it stands.
    pub state: TaskState,
    /// Why the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: Millis,
    /// When its next attempt is due (for a dead task: when it died).
    pub due_at: Millis,
    /// How delays grow.
    #[serde(default)]
    pub backoff: Backoff,
    /// The record key.
    #[serde(default)]
    pub key: Option<String>,
    /// The client's record headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The W3C trace context it was submitted under.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The client's idempotency key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// One Kafka record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The value.
    pub payload: &'a [u8],
    /// The key.
    pub key: Option<&'a [u8]>,
    /// The headers, in order.
    pub headers: Vec<(&'a str, String)>,
}

/// What must happen to a task after a failed publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try the destination again at the task's new `due_at`.
    Retry(Task),
    /// Budget spent: publish to the dead-letter destination now.
    DeadLetter(Task),
    /// Budget spent and nowhere to send it: keep it as dead.
    Bury(Task),
}

impl Task {
    /// A new task, its first attempt due one base delay after `now`.
    pub fn new(id: TaskId, new: NewTask, now: Millis, max_delay: Duration) -> Self {
        let mut task = Self {
            id,
            payload: new.payload,
            destination: new.destination,
            dead_destination: new.dead_destination,
            max_retries: new.max_retries,
            retry_delay_seconds: new.retry_delay_seconds,
            attempts: 0,
            dead_letter_attempts: 0,
            state: TaskState::Scheduled,
            last_error: None,
            created_at: now,
            due_at: now,
            backoff: new.backoff,
            key: new.key,
            headers: new.headers,
            traceparent: new.traceparent,
            idempotency_key: new.idempotency_key,
        };
        task.due_at = now.saturating_add(task.backoff(0, max_delay));
        task
    }

    /// The delay, in milliseconds, after `failures` failed publishes: by the task's strategy
    /// (`base * 2^failures` by default), capped at `max_delay` and the task's own cap, and with
    /// jitter spread over its upper half.
    pub fn backoff(&self, failures: u32, max_delay: Duration) -> Millis {
        let mut cap = i64::try_from(max_delay.as_millis()).unwrap_or(i64::MAX);
        if let Some(own) = self.backoff.max_delay_seconds {
            cap = cap.min(i64::from(own) * 1000);
        }
        let base = i64::from(self.retry_delay_seconds) * 1000;
        let nominal = match self.backoff.strategy {
            Strategy::Exponential => 1_i64
                .checked_shl(failures)
                .filter(|f| *f > 0)
                .and_then(|f| base.checked_mul(f)),
            Strategy::Fixed => Some(base),
            Strategy::Linear => base.checked_mul(i64::from(failures) + 1),
        };
        let delay = nominal.map_or(cap, |delay| delay.min(cap));
        if self.backoff.jitter {
            let half = delay / 2;
            half + ((delay - half) as f64 * self.jitter_fraction(failures)) as i64
        } else {
            delay
        }
    }

    /// A fraction in `[0, 1)` that differs from task to task and attempt to attempt, but is the
    /// same every time it is computed for one: jitter without a random number generator.
    fn jitter_fraction(&self, failures: u32) -> f64 {
        let mut x = (u128::from(self.id.0) as u64)
            ^ u64::from(failures).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// The record to publish for this attempt: the payload, key and client headers, plus retry
    /// metadata headers set afresh each time, so they never pile up.
    pub fn message(&self) -> Message<'_> {
        let mut headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .filter(|(name, _)| {
                self.traceparent.is_none() || !name.eq_ignore_ascii_case("traceparent")
            })
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        headers.push(("kafka-retry-task-id", self.id.to_string()));
        headers.push(("kafka-retry-attempt", self.attempt().to_string()));
        headers.push((
            "kafka-retry-original-topic",
            self.destination.topic.to_string(),
        ));
        headers.push((
            "kafka-retry-original-partition",
            self.destination.partition.to_string(),
        ));
        if let Some(traceparent) = &self.traceparent {
            headers.push(("traceparent", traceparent.clone()));
        }
        Message {
            payload: self.payload.as_bytes(),
            key: self.key.as_deref().map(str::as_bytes),
            headers,
        }
    }

    /// The same task revived with a fresh budget, due at `now`, its last error kept.
    pub fn revived(mut self, now: Millis) -> Self {
        self.attempts = 0;
        self.dead_letter_attempts = 0;
        self.state = TaskState::Scheduled;
        self.due_at = now;
        self
    }

    /// The attempt this publish is: 1 for the first delivery attempt.
    pub fn attempt(&self) -> u32 {
        match self.state {
            TaskState::Scheduled => self.attempts + 1,
            TaskState::DeadLettering | TaskState::Dead => self.attempts,
        }
    }

    /// Where the next publish goes: the destination, or the dead-letter destination once the
    /// budget is spent. `None` for a dead task.
    pub fn target(&self) -> Option<&Destination> {
        match self.state {
            TaskState::Scheduled => Some(&self.destination),
            TaskState::DeadLettering => self.dead_destination.as_ref(),
            TaskState::Dead => None,
        }
    }

    /// Records a failed publish at `now` and decides what comes next.
    pub fn fail(mut self, error: String, now: Millis, max_delay: Duration) -> AfterFailure {
        self.last_error = Some(error);
        match self.state {
            TaskState::Scheduled => {
                self.attempts += 1;
                if self.attempts < self.max_retries {
                    self.due_at = now.saturating_add(self.backoff(self.attempts, max_delay));
                    AfterFailure::Retry(self)
                } else if self.dead_destination.is_some() {
                    self.state = TaskState::DeadLettering;
                    self.due_at = now;
                    AfterFailure::DeadLetter(self)
                } else {
                    self.state = TaskState::Dead;
                    self.due_at = now;
                    AfterFailure::Bury(self)
                }
            }
            TaskState::DeadLettering => {
                self.dead_letter_attempts += 1;
                self.due_at =
                    now.saturating_add(self.backoff(self.dead_letter_attempts, max_delay));
                AfterFailure::Retry(self)
            }
            TaskState::Dead => {
                self.due_at = now;
                AfterFailure::Bury(self)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn destination(topic: &str) -> DestinationRequest {
        DestinationRequest {
            topic: Some(topic.into()),
            partition: Some(0),
            kafka_conn_string: Some("localhost:9092".into()),
        }
    }

    fn request() -> TaskRequest {
        TaskRequest {
            payload: Some(r#"{"user_id": 123}"#.into()),
            destination: Some(destination("orders")),
            dead_destination: Some(destination("orders-dlq")),
            max_retries: Some(5),
            retry_delay_seconds: Some(10),
            ..TaskRequest::default()
        }
    }

    fn task(max_retries: u32, dead: bool) -> Task {
        let mut raw = request();
        raw.max_retries = Some(i64::from(max_retries));
        if !dead {
            raw.dead_destination = None;
        }
        let new = NewTask::try_from(raw).expect("valid request");
        Task::new(TaskId::generate(), new, 0, DAY)
    }

    fn rejected(raw: TaskRequest) -> ValidationError {
        NewTask::try_from(raw).expect_err("request should be rejected")
    }

    #[test]
    fn backoff_follows_the_go_readme_table() {
        let task = task(5, true);
        let delays: Vec<Millis> = (0..5).map(|n| task.backoff(n, DAY) / 1000).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160]);
    }

    #[test]
    fn backoff_is_capped_and_never_overflows() {
        let task = task(100, true);
        assert_eq!(task.backoff(3, Duration::from_secs(30)), 30_000);
        assert_eq!(task.backoff(63, DAY), 86_400_000);
        assert_eq!(task.backoff(99, DAY), 86_400_000);
    }

    #[test]
    fn first_attempt_is_due_one_base_delay_after_creation() {
        let new = NewTask::try_from(request()).expect("valid");
        let task = Task::new(TaskId::generate(), new, 1_000, DAY);
        assert_eq!(task.due_at, 11_000);
        assert_eq!(task.attempt(), 1);
        assert_eq!(task.state, TaskState::Scheduled);
    }

    #[test]
    fn each_failure_doubles_the_delay_from_the_failure_time() {
        let mut task = task(5, true);
        let mut due = Vec::new();
        for failure_at in [10_000, 30_500, 71_000, 151_000] {
            match task.fail("boom".into(), failure_at, DAY) {
                AfterFailure::Retry(next) => task = next,
                other => panic!("expected a retry, got {other:?}"),
            }
            due.push(task.due_at - failure_at);
        }
        assert_eq!(due, [20_000, 40_000, 80_000, 160_000]);
        assert_eq!(task.attempts, 4);
        assert_eq!(task.attempt(), 5);
    }

    #[test]
    fn the_last_failure_goes_to_the_dead_letter_destination() {
        let task = task(1, true);
        let AfterFailure::DeadLetter(task) = task.fail("boom".into(), 500, DAY) else {
            panic!("expected dead-lettering");
        };
        assert_eq!(task.state, TaskState::DeadLettering);
        assert_eq!(task.target().map(|d| d.topic.as_str()), Some("orders-dlq"));
        assert_eq!(task.last_error.as_deref(), Some("boom"));
        assert_eq!(task.attempt(), 1);
    }

    #[test]
    fn a_failed_dead_letter_publish_is_retried_with_backoff() {
        let task = task(1, true);
        let AfterFailure::DeadLetter(task) = task.fail("boom".into(), 0, DAY) else {
            panic!("expected dead-lettering");
        };
        let AfterFailure::Retry(task) = task.fail("dlq down".into(), 1_000, DAY) else {
            panic!("expected a dead-letter retry");
        };
        assert_eq!(task.state, TaskState::DeadLettering);
        assert_eq!(task.dead_letter_attempts, 1);
        assert_eq!(task.due_at, 21_000);
    }

    #[test]
    fn without_a_dead_destination_an_exhausted_task_is_kept_as_dead() {
        let task = task(1, false);
        let AfterFailure::Bury(task) = task.fail("boom".into(), 7, DAY) else {
            panic!("expected a dead task");
        };
        assert_eq!(task.state, TaskState::Dead);
        assert_eq!(task.target(), None);
        assert_eq!(task.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn a_valid_request_keeps_every_field() {
        let new = NewTask::try_from(request()).expect("valid");
        assert_eq!(new.payload, r#"{"user_id": 123}"#);
        assert_eq!(new.destination.topic.as_str(), "orders");
        assert_eq!(new.max_retries, 5);
        assert_eq!(new.retry_delay_seconds, 10);
        assert!(new.dead_destination.is_some());
    }

    #[test]
    fn payload_must_be_present_and_non_empty() {
        let mut raw = request();
        raw.payload = None;
        assert_eq!(rejected(raw).to_string(), "payload is required");
        let mut raw = request();
        raw.payload = Some(String::new());
        assert_eq!(rejected(raw).field, "payload");
    }

    #[test]
    fn destination_is_required() {
        let mut raw = request();
        raw.destination = None;
        assert_eq!(rejected(raw).field, "destination");
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/es",
            "ünïcode",
            &"a".repeat(250),
        ] {
            let mut raw = request();
            raw.destination = Some(destination(bad));
            assert_eq!(rejected(raw).field, "destination.topic", "topic {bad:?}");
        }
        for good in ["a", "orders.v1", "my_topic-2", "...", &"a".repeat(249)] {
            assert!(Topic::parse(good.to_owned()).is_ok(), "topic {good:?}");
        }
    }

    #[test]
    fn partition_must_be_a_non_negative_i32() {
        for bad in [-1, i64::from(i32::MAX) + 1] {
            let mut raw = request();
            raw.destination = Some(DestinationRequest {
                partition: Some(bad),
                ..destination("t")
            });
            assert_eq!(rejected(raw).field, "destination.partition");
        }
        let mut raw = request();
        raw.destination = Some(DestinationRequest {
            partition: None,
            ..destination("t")
        });
        assert_eq!(
            rejected(raw).to_string(),
            "destination.partition is required"
        );
    }

    #[test]
    fn conn_string_must_not_be_blank() {
        let mut raw = request();
        raw.destination = Some(DestinationRequest {
            kafka_conn_string: Some("  ".into()),
            ..destination("t")
        });
        assert_eq!(rejected(raw).field, "destination.kafka_conn_string");
    }

    #[test]
    fn dead_destination_follows_the_same_rules() {
        let mut raw = request();
        raw.dead_destination = Some(destination("bad topic"));
        assert_eq!(rejected(raw).field, "dead_destination.topic");
        let mut raw = request();
        raw.dead_destination = Some(DestinationRequest::default());
        assert_eq!(
            rejected(raw).to_string(),
            "dead_destination.topic is required"
        );
    }

    #[test]
    fn max_retries_must_be_between_one_and_the_maximum() {
        for bad in [None, Some(0), Some(-3), Some(MAX_RETRIES + 1)] {
            let mut raw = request();
            raw.max_retries = bad;
            assert_eq!(rejected(raw).field, "max_retries", "value {bad:?}");
        }
        let mut raw = request();
        raw.max_retries = Some(MAX_RETRIES);
        assert!(NewTask::try_from(raw).is_ok());
    }

    #[test]
    fn retry_delay_must_be_between_one_second_and_the_maximum() {
        for bad in [None, Some(0), Some(-1), Some(MAX_RETRY_DELAY_SECONDS + 1)] {
            let mut raw = request();
            raw.retry_delay_seconds = bad;
            assert_eq!(rejected(raw).field, "retry_delay_seconds", "value {bad:?}");
        }
    }

    #[test]
    fn task_ids_round_trip_through_text() {
        let id = TaskId::generate();
        assert_eq!(id.to_string().parse::<TaskId>().ok(), Some(id));
        assert!("not-a-ulid".parse::<TaskId>().is_err());
        let overflowing = format!("8{}", &id.to_string()[1..]);
        assert!(
            overflowing.parse::<TaskId>().is_err(),
            "{overflowing} would alias another id"
        );
    }

    fn with_backoff(strategy: &str, jitter: bool, max: Option<i64>) -> Task {
        let mut raw = request();
        raw.backoff = Some(BackoffRequest {
            strategy: Some(strategy.into()),
            jitter: Some(jitter),
            max_delay_seconds: max,
        });
        Task::new(
            TaskId::generate(),
            NewTask::try_from(raw).expect("valid"),
            0,
            DAY,
        )
    }

    #[test]
    fn fixed_and_linear_strategies_grow_as_named() {
        let fixed = with_backoff("fixed", false, None);
        let linear = with_backoff("linear", false, None);
        let delays = |t: &Task| (0..4).map(|n| t.backoff(n, DAY) / 1000).collect::<Vec<_>>();
        assert_eq!(delays(&fixed), [10, 10, 10, 10]);
        assert_eq!(delays(&linear), [10, 20, 30, 40]);
    }

    #[test]
    fn a_task_may_cap_its_own_delays_below_the_service_cap() {
        let task = with_backoff("exponential", false, Some(25));
        assert_eq!(task.backoff(1, DAY), 20_000);
        assert_eq!(task.backoff(2, DAY), 25_000);
        assert_eq!(task.backoff(2, Duration::from_secs(15)), 15_000);
    }

    #[test]
    fn jitter_keeps_each_delay_in_its_upper_half_and_spreads_tasks() {
        let delays: Vec<Millis> = (0..50)
            .map(|_| with_backoff("exponential", true, None).backoff(3, DAY))
            .collect();
        assert!(
            delays.iter().all(|d| (40_000..=80_000).contains(d)),
            "{delays:?}"
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 40,
            "jitter spreads tasks: {} distinct",
            distinct.len()
        );
        let task = with_backoff("exponential", true, None);
        assert_eq!(
            task.backoff(2, DAY),
            task.backoff(2, DAY),
            "stable for one task"
        );
    }

    #[test]
    fn unknown_strategies_are_rejected() {
        let mut raw = request();
        raw.backoff = Some(BackoffRequest {
            strategy: Some("random".into()),
            ..BackoffRequest::default()
        });
        assert_eq!(rejected(raw).field, "backoff.strategy");
    }

    #[test]
    fn retry_headers_are_replaced_on_every_attempt_not_piled_up() {
        let mut raw = request();
        raw.key = Some("k-1".into());
        raw.headers = Some(BTreeMap::from([(
            "source".to_owned(),
            "billing".to_owned(),
        )]));
        let task = Task::new(
            TaskId::generate(),
            NewTask::try_from(raw).expect("valid"),
            0,
            DAY,
        );
        let first = task
            .message()
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect::<Vec<_>>();
        let AfterFailure::Retry(task) = task.fail("boom".into(), 10_000, DAY) else {
            panic!("expected a retry");
        };
        let second = task.message();
        assert_eq!(second.headers.len(), first.len());
        assert_eq!(second.key, Some(&b"k-1"[..]));
        let value = |name: &str| {
            second
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value("kafka-retry-attempt").as_deref(), Some("2"));
        assert_eq!(value("kafka-retry-task-id"), Some(task.id.to_string()));
        assert_eq!(
            value("kafka-retry-original-topic").as_deref(),
            Some("orders")
        );
        assert_eq!(
            value("kafka-retry-original-partition").as_deref(),
            Some("0")
        );
        assert_eq!(value("source").as_deref(), Some("billing"));
    }

    #[test]
    fn clients_may_not_set_the_services_own_headers() {
        let mut raw = request();
        raw.headers = Some(BTreeMap::from([(
            "Kafka-Retry-Attempt".to_owned(),
            "9".to_owned(),
        )]));
        assert_eq!(rejected(raw).field, "headers.Kafka-Retry-Attempt");
    }

    #[test]
    fn only_well_formed_traceparents_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let new = NewTask::try_from(request()).expect("valid");
        assert_eq!(
            new.clone()
                .with_traceparent(Some(good))
                .traceparent
                .as_deref(),
            Some(good)
        );
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            &good.to_uppercase(),
        ] {
            assert_eq!(
                new.clone().with_traceparent(Some(bad)).traceparent,
                None,
                "{bad}"
            );
        }
        let task = Task::new(TaskId::generate(), new.with_traceparent(Some(good)), 0, DAY);
        assert!(
            task.message()
                .headers
                .contains(&("traceparent", good.to_owned()))
        );
    }

    #[test]
    fn idempotency_keys_come_from_the_body_first_then_the_header() {
        let mut raw = request();
        raw.id = Some("body-key".into());
        let new = NewTask::try_from(raw).expect("valid");
        let new = new
            .with_idempotency_key(Some("header-key".into()))
            .expect("valid");
        assert_eq!(new.idempotency_key.as_deref(), Some("body-key"));
        let new = NewTask::try_from(request())
            .expect("valid")
            .with_idempotency_key(Some("header-key".into()))
            .expect("valid");
        assert_eq!(new.idempotency_key.as_deref(), Some("header-key"));
        let mut raw = request();
        raw.id = Some("x".repeat(MAX_KEY_LEN + 1));
        assert_eq!(rejected(raw).field, "id");
    }

    #[test]
    fn a_revived_task_has_a_fresh_budget_and_keeps_its_last_error() {
        let task = task(1, false);
        let AfterFailure::Bury(dead) = task.fail("boom".into(), 5, DAY) else {
            panic!("expected a dead task");
        };
        let revived = dead.revived(99);
        assert_eq!(revived.state, TaskState::Scheduled);
        assert_eq!(revived.attempts, 0);
        assert_eq!(revived.due_at, 99);
        assert_eq!(revived.last_error.as_deref(), Some("boom"));
    }
}
