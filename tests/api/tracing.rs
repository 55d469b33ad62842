//! OpenTelemetry export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans of a task reach an
//! OTLP/HTTP collector and continue the trace of the request that submitted it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

use crate::helpers::{
    ServiceProcess, consume, create_topic, eventually, redis_addr, signal, task_body, unique,
};

/// A collector that keeps the bodies of `POST /v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let keep = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().expect("lock").push(body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn spans_reach_the_collector_under_the_submitters_trace() {
    let (endpoint, received) = collector().await;
    let topic = create_topic(1).await;
    let mut service = ServiceProcess::start(
        &redis_addr(),
        &unique("otel"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let response = reqwest::Client::new()
        .post(format!("http://{}/tasks", service.address))
        .header("traceparent", &traceparent)
        .json(&task_body("traced", &topic, 0, 3, 1))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 201);
    let records = consume(
        &topic,
        1,
        Duration::from_millis(200),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(records.len(), 1);
    signal(service.child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || service.child.wait())
        .await
        .expect("joined")
        .expect("exited");
    assert!(status.success());

    let trace_bytes: Vec<u8> = (0..trace_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).expect("hex"))
        .collect();
    let exported = eventually(Duration::from_secs(5), "spans at the collector", || async {
        let bodies = received.lock().expect("lock").clone();
        let all: Vec<u8> = bodies.iter().flat_map(|b| b.to_vec()).collect();
        (contains(&all, b"task.submit") && contains(&all, b"kafka.publish")).then_some(all)
    })
    .await;
    assert!(
        contains(&exported, &trace_bytes),
        "the spans carry the submitter's trace id"
    );
}
