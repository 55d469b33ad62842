//! Scenario 3: the Kafka broker stopped under load, then started again. Proves that attempts that
//! fail while the broker is away are retried on the backoff and delivered once the broker is
//! back, that none is dead-lettered while its budget lasts, and that nothing is lost. The broker is
//! a private one on free ports, so the shared broker other tests use is never stopped.

use std::time::{Duration, Instant};

use crate::brokers::PrivateBroker;
use crate::helpers::create_topic_on;
use crate::helpers::{RedisServer, ServiceProcess, store, unique};
use crate::ledger::{Ledger, TopicRef, create_all, destination, now, tally, task};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

/// How many tasks held in Redis have failed attempts behind them, and the most any has.
async fn failed_attempts(view: &RedisView, ledger: &Ledger) -> (usize, u32) {
    let held = view.held().await;
    let ids: Vec<&str> = ledger
        .ids()
        .map(|(_, id)| id)
        .filter(|id| held.contains(*id))
        .collect();
    let attempts: Vec<u32> = view
        .records(&ids)
        .await
        .into_iter()
        .flatten()
        .map(|task| task.attempts)
        .filter(|attempts| *attempts > 0)
        .collect();
    (attempts.len(), attempts.into_iter().max().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_delays_delivery_but_loses_and_dead_letters_nothing() {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let tasks: usize = size.pick(1_000, 5_000);
    let outage = Duration::from_secs(size.pick(10, 30));
    let lead = Duration::from_secs(size.pick(4, 10));

    let redis = RedisServer::start();
    let mut broker = blocking(|| PrivateBroker::start(redis.port));
    let bootstrap = broker.bootstrap();
    let topic = create_topic_on(&bootstrap, 2, 1, &[]).await;
    let dead_topic = create_topic_on(&bootstrap, 1, 1, &[]).await;
    let prefix = unique("fault-broker");
    let store = store(&redis.addr(), &prefix);
    let view = RedisView::new(&redis.addr(), &store);

    // Tasks fall due evenly from just before the outage to just after it. Ten attempts, one
    // second apart at first and at most five seconds (plus the message timeout each) apart later:
    // a budget of well over a minute, longer than the outage.
    let window = i64::try_from((lead * 2 + outage).as_millis()).expect("window");
    let first_due = now() + 500;
    let dead = destination(&bootstrap, &dead_topic, 0);
    let ledger = create_all(
        &store,
        (0..tasks)
            .map(|i| {
                let to = destination(&bootstrap, &topic, i32::from(i % 2 == 1));
                let due = first_due + window * i64::try_from(i).expect("index") / tasks as i64;
                task(format!("s3-{i}"), to, Some(dead.clone()), 10, 1, due)
            })
            .collect(),
    )
    .await;
    let env = service_env(&[
        ("KAFKA_BROKERS", &bootstrap),
        // Big batches: every task that falls due during the outage gets attempts that fail.
        ("WORKER_BATCH_SIZE", "1000"),
        ("KAFKA_MESSAGE_TIMEOUT", "3s"),
        ("LEASE_DURATION", "10s"),
        ("MAX_RETRY_DELAY", "5s"),
    ]);
    let service = blocking(|| ServiceProcess::start(&redis.addr(), &prefix, &env));

    tokio::time::sleep(lead).await;
    let stopping = Instant::now();
    blocking(|| broker.stop());
    let stopped = Instant::now();
    tokio::time::sleep(outage).await;
    let failed = failed_attempts(&view, &ledger).await;
    blocking(|| broker.start_again());
    let away = stopped.elapsed();
    let stop_took = stopped - stopping;

    let drained = drain(&store, Duration::from_secs(120), empty).await;
    drop(service);
    let destinations = [TopicRef {
        bootstrap: bootstrap.clone(),
        name: topic,
    }];
    let dead_letters = [TopicRef {
        bootstrap,
        name: dead_topic,
    }];
    let tally = tally(&ledger, &destinations, &dead_letters, &view).await;
    report::record(tally.row(
        &format!(
            "3. Kafka broker stopped for {}s under load",
            outage.as_secs()
        ),
        format!(
            "broker down {} (stop took {}, then {} paused, restart until ready); \
             when it restarted {} tasks had failed attempts, up to {} each (of 10; backoff 1 s \
             doubling to at most 5 s); {}",
            secs(away),
            secs(stop_took),
            secs(outage),
            failed.0,
            failed.1,
            secs(started.elapsed())
        ),
    ));
    assert!(drained, "the schedule did not drain within 2 minutes");
    tally.assert_none_lost();
    assert_eq!(
        tally.dead_lettered, 0,
        "dead-lettered although the budget outlasts the outage"
    );
    assert_eq!(tally.delivered, tally.tasks, "every task delivered");
}
