//! Scenario 5: the dead-letter cluster unreachable while tasks exhaust their retries. Proves that
//! such tasks are neither dropped nor silently parked: they stay in Redis in the
//! `dead_lettering` state, visible in their records, and their dead-letter publish is retried on
//! the backoff (`dead_letter_attempts` keeps growing). Once the cluster is reachable again every
//! one of them lands on the dead-letter topic.

use kafka_retry::domain::TaskStore;
use std::time::{Duration, Instant};

use kafka_retry::domain::TaskState;

use crate::brokers::Gate;
use crate::helpers::create_topic_on;
use crate::helpers::{ServiceProcess, kafka_addr, redis_addr, store, unique};
use crate::ledger::{TopicRef, create_all, destination, now, tally, task};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

/// What the records said while the dead-letter cluster was away.
#[derive(Debug, Default)]
struct Parked {
    /// Tasks whose record says `dead_lettering`.
    dead_lettering: usize,
    /// Tasks with no record at all.
    missing: usize,
    /// The fewest and most dead-letter attempts among them.
    attempts: (u32, u32),
}

async fn parked(view: &RedisView, ids: &[&str]) -> Parked {
    let mut parked = Parked {
        attempts: (u32::MAX, 0),
        ..Parked::default()
    };
    for record in view.records(ids).await {
        match record {
            Some(task) if task.state == TaskState::DeadLettering => {
                parked.dead_lettering += 1;
                parked.attempts.0 = parked.attempts.0.min(task.dead_letter_attempts);
                parked.attempts.1 = parked.attempts.1.max(task.dead_letter_attempts);
            }
            Some(_) => {}
            None => parked.missing += 1,
        }
    }
    parked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dead_letter_cluster_keeps_exhausted_tasks_visible_and_retried() {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let tasks: usize = size.pick(300, 2_000);

    let prefix = unique("fault-dlq");
    let redis = redis_addr();
    let store = store(&redis, &prefix);
    let view = RedisView::new(&redis, &store);
    let topic = create_topic_on(&kafka_addr(), 1, 1, &[]).await;
    let dead_topic = create_topic_on(&kafka_addr(), 1, 1, &[]).await;
    let mut gate = Gate::closed();
    // Partition 7 of a one-partition topic: the broker is there, every attempt still fails.
    let to = destination(&kafka_addr(), &topic, 7);
    let dead = destination(&gate.addr(), &dead_topic, 0);
    let first_due = now() + 500;
    let ledger = create_all(
        &store,
        (0..tasks)
            .map(|i| {
                let due = first_due + 2_000 * i64::try_from(i).expect("index") / tasks as i64;
                task(format!("s5-{i}"), to.clone(), Some(dead.clone()), 1, 1, due)
            })
            .collect(),
    )
    .await;
    let env = service_env(&[
        // Each step waits for its slowest publish (here a dead-letter publish timing out), so
        // big batches are what lets every task retry within seconds.
        ("WORKER_BATCH_SIZE", "1000"),
        ("KAFKA_MESSAGE_TIMEOUT", "2s"),
        ("LEASE_DURATION", "5s"),
        ("MAX_RETRY_DELAY", "2s"),
    ]);
    let service = blocking(|| ServiceProcess::start(&redis, &prefix, &env));

    // Unreachable until every task is dead-lettering and has had its dead-letter publish retried.
    let ids: Vec<&str> = ledger.ids().map(|(_, id)| id).collect();
    let away = Instant::now();
    let mut seen = parked(&view, &ids).await;
    while !(seen.dead_lettering == tasks && seen.attempts.0 >= 2)
        && away.elapsed() < Duration::from_secs(90)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        seen = parked(&view, &ids).await;
    }
    let held_while_away = view.held().await;
    let in_dead_set = store.counts().await.expect("counts").as_tuple().2;
    let away = away.elapsed();

    gate.open(kafka_addr()).await;
    let back = Instant::now();
    let drained = drain(&store, Duration::from_secs(60), empty).await;
    let back = back.elapsed();
    drop(service);
    let destinations = [TopicRef {
        bootstrap: kafka_addr(),
        name: topic,
    }];
    let dead_letters = [TopicRef {
        bootstrap: kafka_addr(),
        name: dead_topic,
    }];
    let tally = tally(&ledger, &destinations, &dead_letters, &view).await;
    let held = ids
        .iter()
        .filter(|id| held_while_away.contains(**id))
        .count();
    report::record(tally.row(
        "5. dead-letter cluster unreachable, then back",
        format!(
            "while unreachable ({}): {held} held, {} as dead_lettering with {}..{} dead-letter \
             attempts, {} records missing, {in_dead_set} in the dead set; reachable again: \
             drained in {}; {}",
            secs(away),
            seen.dead_lettering,
            seen.attempts.0,
            seen.attempts.1,
            seen.missing,
            secs(back),
            secs(started.elapsed())
        ),
    ));
    assert_eq!(held, tasks, "every task held in Redis while unreachable");
    assert_eq!(seen.missing, 0, "every task has its record");
    assert_eq!(
        seen.dead_lettering, tasks,
        "every task visibly dead-lettering"
    );
    assert!(
        seen.attempts.0 >= 2,
        "dead-letter publishes retried: at least {} attempts",
        seen.attempts.0
    );
    assert!(
        drained,
        "the schedule did not drain once the cluster was back"
    );
    tally.assert_none_lost();
    assert_eq!(
        tally.delivered, 0,
        "nothing reached the failing destination"
    );
    assert_eq!(
        tally.dead_lettered, tasks,
        "every task dead-lettered at last"
    );
}
