//! Scenario 4: on a 3-broker cluster (replication 3, `min.insync.replicas=2`), the leader of the
//! destination partition killed with SIGKILL under load. Proves that acks=all with the idempotent
//! producer rides out a leader failover: every task delivered, none lost, none duplicated, as long
//! as the message timeout outlasts the failover.

use std::time::{Duration, Instant};

use crate::brokers::{Cluster, partition_leader};
use crate::helpers::create_topic_on;
use crate::helpers::{ServiceProcess, redis_addr, store, unique};
use crate::ledger::{TopicRef, create_all, destination, now, tally, task};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_partition_leader_loses_and_duplicates_nothing() {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let tasks: usize = size.pick(1_000, 10_000);
    let lead = Duration::from_secs(size.pick(4, 10));
    let after = Duration::from_secs(size.pick(10, 30));

    let cluster = blocking(Cluster::up);
    let bootstrap = cluster.bootstrap();
    let topic = create_topic_on(&bootstrap, 1, 3, &[("min.insync.replicas", "2")]).await;
    let prefix = unique("fault-leader");
    let redis = redis_addr();
    let store = store(&redis, &prefix);
    let view = RedisView::new(&redis, &store);

    // Tasks fall due evenly from before the kill until well after it.
    let window = i64::try_from((lead + after).as_millis()).expect("window");
    let first_due = now() + 500;
    let to = destination(&bootstrap, &topic, 0);
    let ledger = create_all(
        &store,
        (0..tasks)
            .map(|i| {
                let due = first_due + window * i64::try_from(i).expect("index") / tasks as i64;
                task(format!("s4-{i}"), to.clone(), None, 5, 1, due)
            })
            .collect(),
    )
    .await;
    let env = service_env(&[
        ("KAFKA_BROKERS", &bootstrap),
        ("WORKER_BATCH_SIZE", "100"),
        // Longer than a failover (the controller notices a dead broker within its 9 s session
        // timeout), so librdkafka's own retries, deduplicated by the brokers, carry every message.
        ("KAFKA_MESSAGE_TIMEOUT", "30s"),
        ("LEASE_DURATION", "60s"),
    ]);
    let service = blocking(|| ServiceProcess::start(&redis, &prefix, &env));

    tokio::time::sleep(lead).await;
    let leader = blocking(|| partition_leader(&bootstrap, &topic, 0));
    let killed = Instant::now();
    cluster.kill_9(leader);
    let new_leader = blocking(|| {
        let start = Instant::now();
        loop {
            let now_leader = partition_leader(&bootstrap, &topic, 0);
            if now_leader != leader || start.elapsed() > Duration::from_secs(60) {
                return now_leader;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let failover = killed.elapsed();
    tokio::time::sleep(after.saturating_sub(failover)).await;
    let restart = Instant::now();
    blocking(|| cluster.start_stopped_nodes());
    let restart = restart.elapsed();

    let drained = drain(&store, Duration::from_secs(120), empty).await;
    drop(service);
    let destinations = [TopicRef {
        bootstrap,
        name: topic,
    }];
    let tally = tally(&ledger, &destinations, &[], &view).await;
    drop(cluster);
    report::record(tally.row(
        "4. partition leader killed (3 brokers, RF 3, min ISR 2)",
        format!(
            "node {leader} killed, node {new_leader} leader after {}; node {leader} restarted \
             in {}; {}",
            secs(failover),
            secs(restart),
            secs(started.elapsed())
        ),
    ));
    assert!(drained, "the schedule did not drain within 2 minutes");
    tally.assert_none_lost();
    tally.assert_no_duplicates();
    assert_eq!(tally.delivered, tally.tasks, "every task delivered");
}
