//! The binary as operators run it: restarts, kill -9, Redis outages, SIGTERM, bad configuration.

use kafka_retry::domain::TaskStore;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    RedisServer, ServiceProcess, consume, create_topic, eventually, post_task, signal, store,
    task_body, unique,
};

async fn health(http: &reqwest::Client, service: &ServiceProcess) -> (u16, Value) {
    let response = http
        .get(format!("http://{}/health", service.address))
        .send()
        .await
        .expect("health answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tasks_survive_kill_9_and_a_redis_restart() {
    let mut redis = RedisServer::start();
    let prefix = unique("kill");
    let topic = create_topic(1).await;
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&redis.addr(), &prefix, &[]);
    for i in 0..20 {
        let (status, _) = post_task(
            &http,
            service.address,
            &task_body(&format!("k{i}"), &topic, 0, 3, 2),
        )
        .await;
        assert_eq!(status, 201);
    }
    service.child.kill().expect("kill -9");
    service.child.wait().expect("reaped");
    redis.stop();
    redis.restart();
    let service = ServiceProcess::start(&redis.addr(), &prefix, &[]);
    let records = consume(&topic, 20, Duration::from_secs(1), Duration::from_secs(30)).await;
    let mut payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    payloads.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(payloads, expected, "each task delivered exactly once");
    drop(service);
}

#[tokio::test]
async fn health_and_creation_follow_redis_down_and_back() {
    let mut redis = RedisServer::start();
    let prefix = unique("health");
    let topic = create_topic(1).await;
    let http = reqwest::Client::new();
    let service = ServiceProcess::start(&redis.addr(), &prefix, &[]);
    assert_eq!(
        health(&http, &service).await,
        (200, serde_json::json!({"status": "healthy"}))
    );

    redis.stop();
    let start = Instant::now();
    let (status, body) = post_task(&http, service.address, &task_body("x", &topic, 0, 1, 1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "failed to schedule task");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "bounded, took {:?}",
        start.elapsed()
    );
    let (status, body) = health(&http, &service).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["error"], "redis connection failed");

    redis.restart();
    eventually(Duration::from_secs(15), "health to recover", || async {
        (health(&http, &service).await.0 == 200).then_some(())
    })
    .await;
    let (status, _) = post_task(&http, service.address, &task_body("y", &topic, 0, 1, 1)).await;
    assert_eq!(status, 201);
    let records = consume(
        &topic,
        1,
        Duration::from_millis(500),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].payload, b"y",
        "nothing half-written from the failed request"
    );
}

#[tokio::test]
async fn sigterm_stops_the_service_with_exit_code_zero() {
    let redis = RedisServer::start();
    let prefix = unique("term");
    let topic = create_topic(1).await;
    let http = reqwest::Client::new();
    let mut service = ServiceProcess::start(&redis.addr(), &prefix, &[]);
    let (status, _) = post_task(&http, service.address, &task_body("t", &topic, 0, 1, 60)).await;
    assert_eq!(status, 201);
    signal(service.child.id(), "TERM");
    let exit = tokio::task::spawn_blocking(move || {
        let status = service.child.wait();
        (status, service)
    })
    .await
    .expect("joined");
    let status = exit.0.expect("exited");
    assert!(status.success(), "exit status {status:?}");
    let store = store(&redis.addr(), &prefix);
    assert_eq!(
        store.counts().await.expect("counts").as_tuple(),
        (1, 0, 0),
        "the task is kept"
    );
}

#[test]
fn an_invalid_setting_stops_start_up_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_kafka-retry"))
        .env_clear()
        .env("POLL_INTERVAL", "often")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("POLL_INTERVAL"), "{stderr}");
}
