//! The Kafka adapter against a real broker.

use std::time::{Duration, Instant};

use kafka_retry::domain::{Destination, Message, PublishError, Publisher, Topic};
use kafka_retry::kafka_publisher::{KafkaPublisher, KafkaSettings};

use crate::helpers::{consume, create_topic, free_port, kafka_addr};

fn publisher() -> KafkaPublisher {
    KafkaPublisher::new(KafkaSettings {
        message_timeout: Duration::from_secs(2),
        linger: Duration::from_millis(5),
        extra: Vec::new(),
    })
}

fn message(payload: &[u8]) -> Message<'_> {
    Message {
        payload,
        key: None,
        headers: Vec::new(),
    }
}

fn destination(topic: &str, partition: i32, brokers: &str) -> Destination {
    Destination {
        topic: Topic::parse(topic.to_owned()).expect("topic"),
        partition,
        kafka_conn_string: brokers.to_owned(),
    }
}

#[tokio::test]
async fn publishes_the_exact_bytes_key_and_headers_to_the_requested_partition() {
    let topic = create_topic(2).await;
    let publisher = publisher();
    let payload = b"\x00binary\xffbytes";
    let record = Message {
        payload,
        key: Some(b"order-42"),
        headers: vec![("a", "1".to_owned()), ("b", "two".to_owned())],
    };
    publisher
        .publish(&destination(&topic, 1, &kafka_addr()), &record)
        .await
        .expect("acknowledged");
    let records = consume(
        &topic,
        1,
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].partition, 1);
    assert_eq!(records[0].payload, payload);
    assert_eq!(records[0].key.as_deref(), Some(&b"order-42"[..]));
    assert_eq!(
        records[0].headers,
        [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "two".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_partition_that_does_not_exist_fails_the_publish() {
    let topic = create_topic(1).await;
    let error = publisher()
        .publish(&destination(&topic, 5, &kafka_addr()), &message(b"x"))
        .await
        .expect_err("no such partition");
    assert!(matches!(error, PublishError::Rejected(reason) if !reason.is_empty()));
}

#[tokio::test]
async fn an_unreachable_cluster_fails_within_the_message_timeout_not_minutes() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let start = Instant::now();
    let error = publisher()
        .publish(&destination("anything", 0, &nowhere), &message(b"x"))
        .await
        .expect_err("nobody there");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(error, PublishError::Rejected(reason) if !reason.is_empty()));
}

#[tokio::test]
async fn unsent_messages_are_withdrawn_on_request_and_say_so() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let publisher = KafkaPublisher::new(KafkaSettings {
        message_timeout: Duration::from_secs(30),
        linger: Duration::from_millis(5),
        extra: Vec::new(),
    });
    let target = destination("anything", 0, &nowhere);
    let record = message(b"x");
    let publish = publisher.publish(&target, &record);
    let withdraw = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        publisher.withdraw_unsent();
    };
    let start = Instant::now();
    let (result, ()) = tokio::join!(publish, withdraw);
    assert_eq!(result, Err(PublishError::Withdrawn));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}
