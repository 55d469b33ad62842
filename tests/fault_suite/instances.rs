//! Scenario 7: two and then three instances over one Redis, under load, each taking submissions
//! and delivering. Proves that claims are exclusive: every task is published exactly once, however
//! the instances race for the schedule.

use std::time::{Duration, Instant};

use crate::helpers::create_topic_on;
use crate::helpers::{ServiceProcess, kafka_addr, redis_addr, store, unique};
use crate::ledger::{TopicRef, body, destination, post_all, tally};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

async fn instances_publish_each_task_once(instances: usize, scenario: &str) {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let tasks: usize = size.pick(1_000, 10_000);

    let prefix = unique("fault-instances");
    let redis = redis_addr();
    let store = store(&redis, &prefix);
    let view = RedisView::new(&redis, &store);
    let topic = create_topic_on(&kafka_addr(), 3, 1, &[]).await;
    // Small batches: more claims, so more chances for two instances to race for the same tasks.
    let env = service_env(&[("WORKER_BATCH_SIZE", "50")]);
    let services: Vec<ServiceProcess> = (0..instances)
        .map(|_| blocking(|| ServiceProcess::start(&redis, &prefix, &env)))
        .collect();

    // Submissions spread over a few seconds, round robin, each due one second later: every
    // instance is claiming while the others are, and while new tasks arrive.
    let bodies = (0..tasks)
        .map(|i| {
            let payload = format!("s7-{instances}-{i}");
            let to = destination(
                &kafka_addr(),
                &topic,
                i32::try_from(i % 3).expect("partition"),
            );
            let body = body(&payload, &to, None, 3, 1);
            (payload, body)
        })
        .collect();
    let addresses = services.iter().map(|s| s.address).collect();
    let pace = Duration::from_secs(size.pick(3, 10));
    let ledger = post_all(addresses, bodies, pace).await;
    let drained = drain(&store, Duration::from_secs(90), empty).await;
    drop(services);
    let destinations = [TopicRef {
        bootstrap: kafka_addr(),
        name: topic,
    }];
    let tally = tally(&ledger, &destinations, &[], &view).await;
    report::record(tally.row(
        scenario,
        format!(
            "{} submissions refused; batches of 50; {}",
            ledger.refused,
            secs(started.elapsed())
        ),
    ));
    assert_eq!(ledger.refused, 0, "every submission accepted");
    assert!(drained, "the schedule did not drain within 90 s");
    tally.assert_none_lost();
    tally.assert_no_duplicates();
    assert_eq!(tally.delivered, tasks, "every task delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_one_redis_publish_each_task_once() {
    instances_publish_each_task_once(2, "7a. two instances over one Redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_over_one_redis_publish_each_task_once() {
    instances_publish_each_task_once(3, "7b. three instances over one Redis").await;
}
