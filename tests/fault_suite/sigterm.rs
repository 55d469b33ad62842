//! Scenario 8: SIGTERM while a claimed batch is being published and half of it hangs (its broker
//! is unreachable, so each of those publishes would wait for the whole message timeout).
//!
//! - 8a, the broker stays away: the service must stop cleanly and in bounded time (exit code 0
//!   within the shutdown grace, plus a little) and leave every claimed task either published or
//!   handed back to the schedule unchanged, with no lease behind for another instance to wait out.
//! - 8b, the broker comes back while the service is shutting down: a task handed back must not be
//!   published as well, or the next instance publishes it a second time without any crash. A
//!   fresh instance drains the schedule afterwards, and every task must arrive exactly once.

use kafka_retry::domain::TaskStore;
use std::time::{Duration, Instant};

use crate::brokers::Gate;
use crate::helpers::create_topic_on;
use crate::helpers::{ServiceProcess, kafka_addr, redis_addr, signal, store, unique};
use crate::ledger::{TopicRef, create_all, destination, now, tally, task};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

const GRACE: Duration = Duration::from_secs(5);
/// What "within the grace period" tolerates beyond it: settling, exiting.
const SLACK: Duration = Duration::from_secs(3);

async fn sigterm_with_hanging_publishes(broker_returns: bool, scenario: &str) {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let tasks: usize = size.pick(2_000, 5_000);

    let prefix = unique("fault-term");
    let redis = redis_addr();
    let store = store(&redis, &prefix);
    let view = RedisView::new(&redis, &store);
    let topic = create_topic_on(&kafka_addr(), 1, 1, &[]).await;
    // Every other task goes through a gate to the broker, closed for now.
    let mut gate = Gate::closed();
    let due = now() - 1_000;
    let ledger = create_all(
        &store,
        (0..tasks)
            .map(|i| {
                let brokers = if i % 2 == 0 {
                    kafka_addr()
                } else {
                    gate.addr()
                };
                let to = destination(&brokers, &topic, 0);
                task(format!("s8-{i}"), to, None, 3, 1, due)
            })
            .collect(),
    )
    .await;
    let grace = format!("{}s", GRACE.as_secs());
    let env = service_env(&[
        ("SHUTDOWN_GRACE", &grace),
        // Far longer than the grace: hanging publishes must be abandoned, not waited for.
        ("KAFKA_MESSAGE_TIMEOUT", "20s"),
        ("LEASE_DURATION", "60s"),
        ("WORKER_BATCH_SIZE", "1000"),
    ]);
    let mut service = blocking(|| ServiceProcess::start(&redis, &prefix, &env));

    // Let the worker claim a full batch and finish the publishes that can finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claimed = view.leased().await.len();
    signal(service.child.id(), "TERM");
    let term = Instant::now();
    let mut opened = false;
    let status = loop {
        if let Some(status) = service.child.try_wait().expect("process status") {
            break Some(status);
        }
        if broker_returns && !opened && term.elapsed() > GRACE + Duration::from_millis(500) {
            // The grace is over, so unfinished tasks have been handed back by now.
            gate.open(kafka_addr()).await;
            opened = true;
        }
        if term.elapsed() > GRACE * 4 {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exit_after = term.elapsed();
    drop(service);
    if broker_returns && !opened {
        // The service was quicker than the grace plus half a second: the broker returns now.
        gate.open(kafka_addr()).await;
    }

    let (_, leased, dead) = store.counts().await.expect("counts").as_tuple();
    let scheduled = view.scheduled().await;
    let handed_back: Vec<&str> = ledger
        .ids()
        .filter(|(_, id)| scheduled.contains(*id))
        .map(|(_, id)| id)
        .collect();
    let unchanged = view
        .records(&handed_back)
        .await
        .iter()
        .filter(|r| r.as_ref().is_some_and(|t| t.attempts == 0))
        .count();
    let destinations = [TopicRef {
        bootstrap: kafka_addr(),
        name: topic,
    }];
    let at_exit = tally(&ledger, &destinations, &[], &view).await;
    let (published_at_exit, published_and_handed_back) =
        (at_exit.delivered, at_exit.published_and_held);
    let mut notes = format!(
        "{claimed} claimed at SIGTERM; exit code {:?} after {} (grace {}); {leased} leases left; \
         {} back in the schedule ({unchanged} with no attempt counted), {} of them also \
         published",
        status.and_then(|s| s.code()),
        secs(exit_after),
        secs(GRACE),
        handed_back.len(),
        published_and_handed_back
    );
    let tally = if broker_returns {
        // What a redeploy would do next: another instance takes over the schedule.
        let next = blocking(|| ServiceProcess::start(&redis, &prefix, &env));
        let drained = drain(&store, Duration::from_secs(60), empty).await;
        drop(next);
        notes.push_str(if drained {
            "; then drained by a new instance"
        } else {
            "; a new instance did not drain it within 60 s"
        });
        tally(&ledger, &destinations, &[], &view).await
    } else {
        at_exit
    };
    notes.push_str(&format!("; {}", secs(started.elapsed())));
    report::record(tally.row(scenario, notes));

    let code = status.map(|s| s.code());
    assert!(code.is_some(), "still running {exit_after:?} after SIGTERM");
    assert_eq!(code.flatten(), Some(0), "exit code");
    assert!(claimed > 0, "SIGTERM came while tasks were claimed");
    assert_eq!(leased, 0, "no claim left behind");
    assert_eq!(dead, 0, "nothing buried");
    tally.assert_none_lost();
    if broker_returns {
        assert_eq!(
            published_and_handed_back, 0,
            "tasks handed back to the schedule although their publish went through"
        );
        tally.assert_no_duplicates();
        assert_eq!(tally.delivered, tasks, "every task delivered");
    } else {
        assert_eq!(
            published_at_exit + handed_back.len(),
            tasks,
            "every task published or back in the schedule"
        );
        tally.assert_no_duplicates();
    }
    assert!(
        exit_after <= GRACE + SLACK,
        "exited {exit_after:?} after SIGTERM; the grace is {GRACE:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_publishes_hanging_exits_0_in_time_and_hands_back_unfinished_tasks() {
    sigterm_with_hanging_publishes(
        false,
        "8a. SIGTERM under load, broker of half the tasks down",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_handed_back_at_sigterm_are_not_published_when_their_broker_returns() {
    sigterm_with_hanging_publishes(
        true,
        "8b. SIGTERM under load, that broker back during shutdown",
    )
    .await;
}
