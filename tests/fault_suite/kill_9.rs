//! Scenario 1: the service killed with SIGKILL again and again while tasks fall due, restarted
//! each time. Proves that a crash loses nothing (tasks live in Redis, a claim is a lease that runs
//! out) and that the only duplicates are tasks in flight at a kill: published by the killed
//! process but not yet settled, so published again once their lease ran out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::helpers::create_topic_on;
use crate::helpers::{ServiceProcess, kafka_addr, redis_addr, store, unique};
use crate::ledger::{TopicRef, create_all, destination, now, tally, task};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

const BATCH: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_task_and_duplicates_only_tasks_in_flight_at_a_kill() {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let kills: u32 = size.pick(3, 20);
    let tasks: usize = size.pick(1_000, 10_000);
    // Kills come at uneven gaps so they land at different points of a worker step.
    let gaps: Vec<Duration> = (0..kills)
        .map(|k| Duration::from_millis(900 + u64::from(k * 377 % 900)))
        .collect();
    let window: Duration = gaps.iter().sum();

    let prefix = unique("fault-kill");
    let redis = redis_addr();
    let store = store(&redis, &prefix);
    let view = RedisView::new(&redis, &store);
    let topic = create_topic_on(&kafka_addr(), 4, 1, &[]).await;
    let to = |i: usize| {
        destination(
            &kafka_addr(),
            &topic,
            i32::try_from(i % 4).expect("partition"),
        )
    };
    // Due times spread evenly over the whole kill window, so tasks keep falling due across kills.
    let first_due = now() + 500;
    let spread = i64::try_from(window.as_millis()).expect("window");
    let ledger = create_all(
        &store,
        (0..tasks)
            .map(|i| {
                let offset = spread * i64::try_from(i).expect("index") / tasks as i64;
                task(format!("s1-{i}"), to(i), None, 5, 1, first_due + offset)
            })
            .collect(),
    )
    .await;

    let batch = BATCH.to_string();
    let env = service_env(&[
        ("WORKER_BATCH_SIZE", &batch),
        ("LEASE_DURATION", "4s"),
        ("KAFKA_MESSAGE_TIMEOUT", "3s"),
    ]);
    let mut service = blocking(|| ServiceProcess::start(&redis, &prefix, &env));
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut hit = 0;
    for gap in &gaps {
        tokio::time::sleep(*gap).await;
        service.child.kill().expect("kill -9");
        service.child.wait().expect("reaped");
        // Whatever is leased now was claimed by the dead process (or by one killed before it and
        // not yet taken over): the tasks in flight at this kill.
        let leased = view.leased().await;
        hit += usize::from(!leased.is_empty());
        in_flight.extend(leased);
        service = blocking(|| ServiceProcess::start(&redis, &prefix, &env));
    }
    let drained = drain(&store, Duration::from_secs(120), empty).await;
    drop(service);

    let destinations = [TopicRef {
        bootstrap: kafka_addr(),
        name: topic,
    }];
    let tally = tally(&ledger, &destinations, &[], &view).await;
    let outside: Vec<&String> = tally
        .duplicates
        .keys()
        .filter(|payload| {
            ledger
                .id_of(payload)
                .is_none_or(|id| !in_flight.contains(id))
        })
        .collect();
    report::record(tally.row(
        &format!("1. kill -9 x{kills}, restarted each time"),
        format!(
            "{hit} of {kills} kills hit a claimed batch; {} tasks in flight at kills; \
             duplicates allowed <= {}; {} of the duplicated were not in flight; {}",
            in_flight.len(),
            kills as usize * BATCH,
            outside.len(),
            secs(started.elapsed())
        ),
    ));
    assert!(drained, "the schedule did not drain within 2 minutes");
    tally.assert_none_lost();
    assert!(
        outside.is_empty(),
        "tasks duplicated without being in flight at a kill: {outside:?}"
    );
    assert!(
        tally.duplicated() <= kills as usize * BATCH,
        "{} duplicates for {kills} kills of batches of {BATCH}",
        tally.duplicated()
    );
}
