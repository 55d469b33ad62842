//! How a task is written in the records hash.
//!
//! A record is one version byte and then the task's fields in postcard's compact binary form (no
//! field names, integers as varints), without the task id, which is the record's hash field
//! already. At a million pending tasks every byte of a record is a megabyte of Redis memory.
//!
//! Version 1 is the format below. Records written before it are JSON objects (they start with
//! `{`, which no version byte is); they are still read, and become version 1 when next written.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::domain::{
    Backoff, Destination, Millis, StoreError, Strategy, Task, TaskId, TaskState, Topic,
};

/// The version byte of the current format.
const VERSION: u8 = 1;

/// The first byte of a JSON record.
const JSON: u8 = b'{';

/// The fields of a task, in the order they are written. Appending fields needs a new version;
/// the order of these fields is the format.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    payload: Cow<'a, str>,
    destination: Place<'a>,
    dead_destination: Option<Place<'a>>,
    max_retries: u32,
    retry_delay_seconds: u32,
    attempts: u32,
    dead_letter_attempts: u32,
    state: u8,
    last_error: Option<Cow<'a, str>>,
    created_at: Millis,
    due_at: Millis,
    strategy: u8,
    jitter: bool,
    max_delay_seconds: Option<u32>,
    key: Option<Cow<'a, str>>,
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    traceparent: Option<Cow<'a, str>>,
    idempotency_key: Option<Cow<'a, str>>,
}

/// A destination as written.
#[derive(Serialize, Deserialize)]
struct Place<'a> {
    topic: Cow<'a, str>,
    partition: i32,
    kafka_conn_string: Cow<'a, str>,
}

impl<'a> Place<'a> {
    fn of(destination: &'a Destination) -> Self {
        Self {
            topic: Cow::Borrowed(destination.topic.as_str()),
            partition: destination.partition,
            kafka_conn_string: Cow::Borrowed(&destination.kafka_conn_string),
        }
    }

    fn into_destination(self) -> Result<Destination, StoreError> {
        Ok(Destination {
            topic: Topic::parse(self.topic.into_owned())
                .map_err(|e| StoreError(format!("cannot decode task: topic {e}")))?,
            partition: self.partition,
            kafka_conn_string: self.kafka_conn_string.into_owned(),
        })
    }
}

/// The record of `task`.
pub(super) fn encode(task: &Task) -> Result<Vec<u8>, StoreError> {
    let record = Record {
        payload: Cow::Borrowed(&task.payload),
        destination: Place::of(&task.destination),
        dead_destination: task.dead_destination.as_ref().map(Place::of),
        max_retries: task.max_retries,
        retry_delay_seconds: task.retry_delay_seconds,
        attempts: task.attempts,
        dead_letter_attempts: task.dead_letter_attempts,
        state: match task.state {
            TaskState::Scheduled => 0,
            TaskState::DeadLettering => 1,
            TaskState::Dead => 2,
        },
        last_error: borrowed(&task.last_error),
        created_at: task.created_at,
        due_at: task.due_at,
        strategy: match task.backoff.strategy {
            Strategy::Exponential => 0,
            Strategy::Fixed => 1,
            Strategy::Linear => 2,
        },
        jitter: task.backoff.jitter,
        max_delay_seconds: task.backoff.max_delay_seconds,
        key: borrowed(&task.key),
        headers: task
            .headers
            .iter()
            .map(|(name, value)| (Cow::Borrowed(name.as_str()), Cow::Borrowed(value.as_str())))
            .collect(),
        traceparent: borrowed(&task.traceparent),
        idempotency_key: borrowed(&task.idempotency_key),
    };
    let mut out = vec![VERSION];
    postcard::to_io(&record, &mut out)
        .map_err(|e| StoreError(format!("cannot encode task: {e}")))?;
    Ok(out)
}

/// The task `id` whose record is `raw`, in the current format or an earlier one.
pub(super) fn decode(id: &str, raw: &[u8]) -> Result<Task, StoreError> {
    let invalid = |e: &dyn std::fmt::Display| StoreError(format!("cannot decode task: {e}"));
    match raw.split_first() {
        Some((&VERSION, body)) => {
            let id: TaskId = id.parse().map_err(|e| invalid(&e))?;
            let record: Record<'_> = postcard::from_bytes(body).map_err(|e| invalid(&e))?;
            into_task(id, record)
        }
        Some((&JSON, _)) => serde_json::from_slice(raw).map_err(|e| invalid(&e)),
        Some((other, _)) => Err(invalid(&format!("unknown record version {other}"))),
        None => Err(invalid(&"empty record")),
    }
}

fn borrowed(text: &Option<String>) -> Option<Cow<'_, str>> {
    text.as_deref().map(Cow::Borrowed)
}

fn into_task(id: TaskId, record: Record<'_>) -> Result<Task, StoreError> {
    let owned = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
    let code = |what: &str, n: u8| StoreError(format!("cannot decode task: unknown {what} {n}"));
    Ok(Task {
        id,
        payload: record.payload.into_owned(),
        destination: record.destination.into_destination()?,
        dead_destination: record
            .dead_destination
            .map(Place::into_destination)
            .transpose()?,
        max_retries: record.max_retries,
        retry_delay_seconds: record.retry_delay_seconds,
        attempts: record.attempts,
        dead_letter_attempts: record.dead_letter_attempts,
        state: match record.state {
            0 => TaskState::Scheduled,
            1 => TaskState::DeadLettering,
            2 => TaskState::Dead,
            n => return Err(code("state", n)),
        },
        last_error: owned(record.last_error),
        created_at: record.created_at,
        due_at: record.due_at,
        backoff: Backoff {
            strategy: match record.strategy {
                0 => Strategy::Exponential,
                1 => Strategy::Fixed,
                2 => Strategy::Linear,
                n => return Err(code("backoff strategy", n)),
            },
            jitter: record.jitter,
            max_delay_seconds: record.max_delay_seconds,
        },
        key: owned(record.key),
        headers: record
            .headers
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect(),
        traceparent: owned(record.traceparent),
        idempotency_key: owned(record.idempotency_key),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{DestinationRequest, NewTask, TaskRequest};

    fn task(payload: &str) -> Task {
        let new = NewTask::try_from(TaskRequest {
            payload: Some(payload.into()),
            destination: Some(DestinationRequest {
                topic: Some("orders".into()),
                partition: Some(3),
                kafka_conn_string: Some("localhost:9092".into()),
            }),
            max_retries: Some(5),
            retry_delay_seconds: Some(10),
            ..TaskRequest::default()
        })
        .expect("valid");
        Task::new(
            TaskId::generate(),
            new,
            1_764_000_000_000,
            Duration::from_secs(86_400),
        )
    }

    fn full_task() -> Task {
        let mut task = task("{\"order\":42}");
        task.dead_destination = Some(Destination {
            topic: Topic::parse("orders.dead".into()).expect("topic"),
            partition: 0,
            kafka_conn_string: "dlq-1:9092,dlq-2:9092".into(),
        });
        task.attempts = 4;
        task.dead_letter_attempts = 2;
        task.state = TaskState::DeadLettering;
        task.last_error = Some("Broker: Not enough in-sync replicas".into());
        task.backoff = Backoff {
            strategy: Strategy::Linear,
            jitter: true,
            max_delay_seconds: Some(600),
        };
        task.key = Some("customer-7".into());
        task.headers = vec![
            ("source".into(), "billing".into()),
            ("é".into(), "ü".into()),
        ];
        task.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        task.idempotency_key = Some("order-42-retry".into());
        task
    }

    fn round_trip(task: &Task) -> Task {
        let raw = encode(task).expect("encoded");
        assert_eq!(raw[0], VERSION);
        decode(&task.id.to_string(), &raw).expect("decoded")
    }

    #[test]
    fn every_field_survives_a_round_trip() {
        let minimal = task(".");
        assert_eq!(round_trip(&minimal), minimal);
        let full = full_task();
        assert_eq!(round_trip(&full), full);
    }

    #[test]
    fn a_record_holds_little_beyond_its_payload() {
        let payload = "x".repeat(100);
        let raw = encode(&task(&payload)).expect("encoded");
        // Version, lengths, topic, partition, brokers, counters, two times, flags: 51 bytes here.
        assert!(raw.len() - payload.len() <= 51, "{} bytes", raw.len());
        assert!(!String::from_utf8_lossy(&raw).contains("payload"));
    }

    #[test]
    fn json_records_of_earlier_versions_are_still_read() {
        let minimal = r#"{"id":"01KBKC5ZJ4XAYH2W5JDSK1EFS8","payload":"hello","destination":{"topic":"orders","partition":3,"kafka_conn_string":"localhost:9092"},"max_retries":5,"retry_delay_seconds":10,"state":"scheduled","created_at":1764000000000,"due_at":1764000010000}"#;
        let task = decode("01KBKC5ZJ4XAYH2W5JDSK1EFS8", minimal.as_bytes()).expect("decoded");
        assert_eq!(task.id.to_string(), "01KBKC5ZJ4XAYH2W5JDSK1EFS8");
        assert_eq!(task.payload, "hello");
        assert_eq!(task.destination.partition, 3);
        assert_eq!((task.attempts, task.state), (0, TaskState::Scheduled));
        assert_eq!(task.backoff, Backoff::default());
        assert_eq!(task.due_at, 1_764_000_010_000);

        let full = r#"{"id":"01KBKC5ZJ4XAYH2W5JDSK1EFS8","payload":"{\"order\":42}","destination":{"topic":"orders","partition":3,"kafka_conn_string":"localhost:9092"},"dead_destination":{"topic":"orders.dead","partition":0,"kafka_conn_string":"dlq-1:9092,dlq-2:9092"},"max_retries":5,"retry_delay_seconds":10,"attempts":4,"dead_letter_attempts":2,"state":"dead_lettering","last_error":"Broker: Not enough in-sync replicas","created_at":1764000000000,"due_at":1764000010000,"backoff":{"strategy":"linear","jitter":true,"max_delay_seconds":600},"key":"customer-7","headers":[["source","billing"]],"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","idempotency_key":"order-42-retry"}"#;
        let task = decode("01KBKC5ZJ4XAYH2W5JDSK1EFS8", full.as_bytes()).expect("decoded");
        assert_eq!(task.state, TaskState::DeadLettering);
        assert_eq!(task.backoff.strategy, Strategy::Linear);
        assert_eq!(task.backoff.max_delay_seconds, Some(600));
        assert_eq!(task.headers, [("source".to_owned(), "billing".to_owned())]);
        let dead = task.dead_destination.as_ref().expect("dead");
        assert_eq!(dead.topic.as_str(), "orders.dead");
        // Written again, it is a version 1 record with the same content.
        assert_eq!(round_trip(&task), task);
    }

    #[test]
    fn damaged_or_unknown_records_are_errors_not_panics() {
        let task = full_task();
        let id = task.id.to_string();
        let raw = encode(&task).expect("encoded");
        for cut in 0..raw.len() {
            assert!(decode(&id, &raw[..cut]).is_err(), "cut at {cut}");
        }
        let mut future = raw.clone();
        future[0] = 2;
        let error = decode(&id, &future).expect_err("unknown version");
        assert!(error.0.contains("unknown record version 2"), "{error:?}");
        let mut record: Record<'_> = postcard::from_bytes(&raw[1..]).expect("record");
        record.state = 9;
        let mut bad_state = vec![VERSION];
        postcard::to_io(&record, &mut bad_state).expect("encoded");
        let error = decode(&id, &bad_state).expect_err("unknown state");
        assert!(error.0.contains("unknown state 9"), "{error:?}");
        assert!(decode("not-a-ulid", &raw).is_err());
    }
}
