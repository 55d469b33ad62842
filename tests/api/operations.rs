//! What an operator and a client see beyond delivery, on the real Redis and Kafka: inspection,
//! cancel, retry of dead tasks, idempotent and batch submission, record keys and headers, trace
//! context, and metrics.

use std::time::Duration;

use kafka_retry::domain::TaskId;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};

use crate::helpers::{TestApp, consume, create_topic, eventually, kafka_addr, task_body};

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{}{path}", app.address))
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn send(app: &TestApp, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("http://{}{path}", app.address))
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn task_id(answer: &Value) -> String {
    answer["task_id"].as_str().expect("task_id").to_owned()
}

#[tokio::test]
async fn a_dead_task_is_visible_and_once_retried_is_delivered() {
    let prefix = crate::helpers::unique("revive");
    let refresh = [("KAFKA_PRODUCER_TOPIC_METADATA_REFRESH_INTERVAL_MS", "500")];
    let app = TestApp::spawn_with(&prefix, &refresh).await;
    let topic = create_topic(1).await;
    let (status, answer) = app
        .post_task(&task_body("second chance", &topic, 1, 1, 1))
        .await;
    assert_eq!(status, 201);
    let id = task_id(&answer);
    let dead = eventually(Duration::from_secs(15), "the task to die", || async {
        let (_, view) = get(&app, &format!("/tasks/{id}")).await;
        (view["state"] == "dead").then_some(view)
    })
    .await;
    assert_eq!(dead["attempts"], 1);
    assert!(dead["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    let (_, listed) = get(&app, "/tasks?state=dead").await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["tasks"][0]["task_id"], id.as_str());

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()
        .expect("admin");
    for result in admin
        .create_partitions([&NewPartitions::new(&topic, 2)], &AdminOptions::new())
        .await
        .expect("answered")
    {
        result.expect("partition added");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, answer) = send(&app, reqwest::Method::POST, &format!("/tasks/{id}/retry")).await;
    assert_eq!(status, 200, "{answer}");
    let records = consume(
        &topic,
        1,
        Duration::from_millis(500),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, b"second chance");
    assert_eq!(records[0].partition, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_task_is_never_published() {
    let app = TestApp::spawn().await;
    let topic = create_topic(1).await;
    let (_, answer) = app
        .post_task(&task_body("cancel me", &topic, 0, 3, 2))
        .await;
    let id = task_id(&answer);
    let (status, _) = send(&app, reqwest::Method::DELETE, &format!("/tasks/{id}")).await;
    assert_eq!(status, 200);
    let (_, keep) = app.post_task(&task_body("keep me", &topic, 0, 3, 2)).await;
    let records = consume(&topic, 1, Duration::from_secs(1), Duration::from_secs(20)).await;
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [b"keep me".as_slice()], "{keep}");
    assert_eq!(get(&app, &format!("/tasks/{id}")).await.0, 404);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_holds_across_instances_and_publishes_once() {
    let prefix = crate::helpers::unique("idem");
    let first = TestApp::spawn_with(&prefix, &[]).await;
    let second = TestApp::spawn_with(&prefix, &[]).await;
    let topic = create_topic(1).await;
    let mut body = task_body("once", &topic, 0, 3, 1);
    body["id"] = json!("client-retry-17");
    let (status_a, a) = first.post_task(&body).await;
    let (status_b, b) = second.post_task(&body).await;
    assert_eq!((status_a, status_b), (201, 200));
    assert_eq!(a["task_id"], b["task_id"]);
    let records = consume(&topic, 1, Duration::from_secs(2), Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn records_carry_key_headers_retry_metadata_and_trace_context() {
    let app = TestApp::spawn().await;
    let topic = create_topic(1).await;
    let mut body = task_body("with headers", &topic, 0, 3, 1);
    body["key"] = json!("customer-9");
    body["headers"] = json!({"source": "billing", "content-type": "application/json"});
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = reqwest::Client::new()
        .post(format!("http://{}/tasks", app.address))
        .header("traceparent", traceparent)
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 201);
    let id: TaskId = task_id(&response.json().await.expect("json"))
        .parse()
        .expect("ulid");
    let records = consume(
        &topic,
        1,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(&b"customer-9"[..]));
    let header = |name: &str| {
        record
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("source"), ["billing"]);
    assert_eq!(header("content-type"), ["application/json"]);
    assert_eq!(header("kafka-retry-task-id"), [id.to_string().as_str()]);
    assert_eq!(header("kafka-retry-attempt"), ["1"]);
    assert_eq!(header("kafka-retry-original-topic"), [topic.as_str()]);
    assert_eq!(header("traceparent"), [traceparent]);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_schedules_the_good_tasks_and_reports_the_bad() {
    let app = TestApp::spawn().await;
    let topic = create_topic(1).await;
    let mut bad = task_body("bad", &topic, 0, 3, 1);
    bad["destination"]["topic"] = json!("no spaces allowed");
    let body =
        json!({"tasks": [task_body("b1", &topic, 0, 3, 1), bad, task_body("b2", &topic, 0, 3, 1)]});
    let response = reqwest::Client::new()
        .post(format!("http://{}/tasks/batch", app.address))
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.expect("json");
    let statuses: Vec<u64> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [201, 400, 201]);
    let records = consume(&topic, 2, Duration::from_secs(1), Duration::from_secs(20)).await;
    let mut payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["b1", "b2"]);
    app.stop().await;
}

#[tokio::test]
async fn metrics_use_the_go_readmes_names_and_count_what_happened() {
    let app = TestApp::spawn().await;
    let topic = create_topic(1).await;
    let (status, _) = app.post_task(&task_body("counted", &topic, 0, 3, 1)).await;
    assert_eq!(status, 201);
    consume(
        &topic,
        1,
        Duration::from_millis(200),
        Duration::from_secs(20),
    )
    .await;
    let text = eventually(
        Duration::from_secs(10),
        "metrics to show the delivery",
        || async {
            let text = reqwest::get(format!("http://{}/metrics", app.address))
                .await
                .expect("answered")
                .text()
                .await
                .expect("text");
            text.contains("kafka_retry_tasks_processed_total")
                .then_some(text)
        },
    )
    .await;
    for name in [
        "kafka_retry_tasks_created_total",
        "kafka_retry_tasks_processed_total",
        "kafka_retry_processing_duration_seconds_bucket",
        "kafka_retry_lateness_seconds_bucket",
        "kafka_retry_tasks_scheduled",
        "kafka_retry_tasks_in_flight",
        "kafka_retry_tasks_dead",
        "kafka_retry_http_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    app.stop().await;
}
