//! Delivery, retries and dead-lettering through the HTTP API, read back from Kafka.

use kafka_retry::domain::TaskStore;
use std::time::{Duration, Instant};

use kafka_retry::domain::{TaskId, TaskState};
use serde_json::json;

use crate::helpers::{TestApp, consume, create_topic, eventually, kafka_addr, task_body, unique};

#[tokio::test]
async fn a_task_is_published_once_due_to_its_partition_with_the_exact_bytes() {
    let app = TestApp::spawn().await;
    let topic = create_topic(3).await;
    let payload = "{\"user_id\": 123, \"note\": \"caf\u{e9} \u{1f680}\", \"n\": [1,2]}";
    let (status, body) = app.post_task(&task_body(payload, &topic, 2, 3, 1)).await;
    assert_eq!(status, 201, "{body}");
    let id: TaskId = body["task_id"]
        .as_str()
        .expect("task_id")
        .parse()
        .expect("ULID");
    let due_at = app
        .service
        .store()
        .record(id)
        .await
        .expect("redis answers")
        .expect("task stored")
        .due_at;

    let records = consume(
        &topic,
        1,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(records.len(), 1, "published exactly once");
    assert_eq!(records[0].partition, 2);
    assert_eq!(records[0].payload, payload.as_bytes());
    assert!(
        records[0].timestamp >= due_at,
        "published {} ms before it was due",
        due_at - records[0].timestamp
    );
    eventually(
        Duration::from_secs(5),
        "the task to be forgotten",
        || async {
            app.service
                .store()
                .record(id)
                .await
                .expect("redis")
                .is_none()
                .then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn failing_attempts_follow_the_backoff_until_the_dead_letter() {
    let app = TestApp::spawn().await;
    let topic = create_topic(1).await;
    let dead_topic = create_topic(1).await;
    let mut body = task_body("doomed", &topic, 7, 3, 1);
    body["dead_destination"] =
        json!({"topic": dead_topic, "partition": 0, "kafka_conn_string": kafka_addr()});
    let (status, answer) = app.post_task(&body).await;
    assert_eq!(status, 201, "{answer}");
    let id: TaskId = answer["task_id"]
        .as_str()
        .expect("task_id")
        .parse()
        .expect("ULID");

    let mut seen: Vec<(u32, i64)> = Vec::new();
    let start = Instant::now();
    loop {
        let record = app.service.store().record(id).await.expect("redis answers");
        let Some(task) = record else { break };
        assert_ne!(task.state, TaskState::Dead);
        if seen
            .last()
            .is_none_or(|(attempts, _)| *attempts != task.attempts)
        {
            seen.push((task.attempts, task.due_at));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never dead-lettered: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [0, 1, 2], "every attempt recorded in turn");
    for pair in seen.windows(2) {
        let ((_, previous_due), (failures, due)) = (pair[0], pair[1]);
        let delay = due - previous_due;
        let expected = 1000 * (1_i64 << failures);
        assert!(
            (expected..expected + 3000).contains(&delay),
            "after {failures} failures the next attempt came {delay} ms after the last, expected {expected}"
        );
    }
    let dead = consume(
        &dead_topic,
        1,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"doomed");
    let last_due = seen.last().map(|(_, due)| *due).unwrap_or_default();
    assert!(dead[0].timestamp >= last_due);
    app.stop().await;
}

#[tokio::test]
async fn an_exhausted_task_without_dead_destination_stays_visible_as_dead() {
    let app = TestApp::spawn().await;
    let topic = create_topic(1).await;
    let (status, answer) = app.post_task(&task_body("kept", &topic, 9, 1, 1)).await;
    assert_eq!(status, 201);
    let id: TaskId = answer["task_id"]
        .as_str()
        .expect("task_id")
        .parse()
        .expect("ULID");
    let store = app.service.store();
    let task = eventually(Duration::from_secs(15), "the task to die", || async {
        store
            .record(id)
            .await
            .expect("redis")
            .filter(|t| t.state == TaskState::Dead)
    })
    .await;
    assert_eq!(task.attempts, 1);
    assert!(task.last_error.is_some_and(|e| !e.is_empty()));
    assert_eq!(store.counts().await.expect("counts").as_tuple(), (0, 0, 1));
    app.stop().await;
}

#[tokio::test]
async fn a_task_stored_while_the_worker_sleeps_wakes_it_instead_of_waiting_for_the_poll() {
    let app = TestApp::spawn_with(&unique("alarm"), &[("POLL_INTERVAL", "60s")]).await;
    let topic = create_topic(1).await;
    // The worker has made its first, empty claim and sleeps for the poll interval.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posted = Instant::now();
    let (status, body) = app.post_task(&task_body("wake up", &topic, 0, 3, 1)).await;
    assert_eq!(status, 201, "{body}");

    // Due a second later; without the alarm the worker would look again after 60 s.
    let records = consume(
        &topic,
        1,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        records.len(),
        1,
        "delivered before the poll interval ran out"
    );
    assert_eq!(records[0].payload, b"wake up");
    assert!(posted.elapsed() < Duration::from_secs(60));
    app.stop().await;
}
