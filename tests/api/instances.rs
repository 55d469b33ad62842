//! Several instances over one Redis: each task published once, and claims of a dead instance
//! taken over once their lease runs out.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use kafka_retry::domain::TaskStore;

use crate::helpers::{TestApp, consume, create_topic, eventually, task_body, unique};

#[tokio::test]
async fn two_instances_deliver_each_of_a_thousand_tasks_exactly_once() {
    const TASKS: usize = 1000;
    let prefix = unique("pair");
    let batch = [("WORKER_BATCH_SIZE", "25")];
    let first = TestApp::spawn_with(&prefix, &batch).await;
    let second = TestApp::spawn_with(&prefix, &batch).await;
    let topic = create_topic(2).await;

    let instances = [&first, &second];
    let statuses: Vec<u16> = futures::stream::iter(0..TASKS)
        .map(|i| {
            let instance = instances[i % 2];
            let body = task_body(&format!("task-{i}"), &topic, (i % 2) as i32, 3, 1);
            async move { instance.post_task(&body).await.0 }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 201));

    let store = first.service.store();
    eventually(
        Duration::from_secs(60),
        "every task to be delivered",
        || async { (store.counts().await.expect("counts").as_tuple() == (0, 0, 0)).then_some(()) },
    )
    .await;
    let records = consume(
        &topic,
        TASKS,
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await;
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for record in &records {
        *seen.entry(record.payload.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), TASKS, "every task delivered");
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "delivered more than once: {}",
        duplicated.len()
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn tasks_claimed_by_a_dead_instance_are_delivered_once_the_lease_runs_out() {
    let prefix = unique("orphan");
    let topic = create_topic(1).await;
    let app = TestApp::spawn_with(&prefix, &[("POLL_INTERVAL", "200ms")]).await;
    let (status, _) = app.post_task(&task_body("orphan", &topic, 0, 3, 1)).await;
    assert_eq!(status, 201);
    app.stop().await;

    let store = crate::helpers::store(&crate::helpers::redis_addr(), &prefix);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = kafka_retry::domain::SystemClock;
    let now = kafka_retry::domain::Clock::now(&now);
    let claim = store.claim_due(now, 10, now + 1500).await.expect("claim");
    assert_eq!(claim.tasks.len(), 1, "the 'dead' instance claimed the task");

    let app = TestApp::spawn_with(&prefix, &[]).await;
    let records = consume(&topic, 1, Duration::from_secs(1), Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, b"orphan");
    assert!(
        records[0].timestamp >= now + 1500,
        "published before the lease ran out"
    );
    app.stop().await;
}
