//! Scenario 2: Redis stopped and restarted under load, once cleanly (SIGTERM) and once killed
//! (SIGKILL), with AOF persistence and `appendfsync always`. Proves that every task the API
//! accepted (201) survives both, and that an outage shorter than the lease duplicates nothing: the
//! worker keeps retrying to record outcomes until Redis is back.
//!
//! The fsync trade-off: `appendfsync always` (what this scenario runs) acknowledges a write only
//! once it is on disk, so even a Redis crash loses nothing acknowledged. The `everysec` default of
//! `scripts/services.sh` loses up to one second of acknowledged writes on a crash (accepted tasks,
//! or settled outcomes that then publish again), though nothing on a clean restart.

use std::time::{Duration, Instant};

use crate::helpers::create_topic_on;
use crate::helpers::{RedisServer, ServiceProcess, kafka_addr, signal, store, unique};
use crate::ledger::{TopicRef, body, destination, post_all, tally};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

/// The pid of the Redis server at `addr`, as it reports it.
async fn redis_pid(addr: &str) -> u32 {
    let client = redis::Client::open(format!("redis://{addr}")).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await
        .expect("INFO server");
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .expect("process_id in INFO")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_or_killed_under_load_loses_no_accepted_task() {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let tasks: usize = size.pick(1_000, 5_000);
    let outage = Duration::from_secs(size.pick(3, 10));
    let lead = Duration::from_secs(size.pick(3, 8));

    let mut redis = RedisServer::start();
    let prefix = unique("fault-redis");
    let store = store(&redis.addr(), &prefix);
    let view = RedisView::new(&redis.addr(), &store);
    let topic = create_topic_on(&kafka_addr(), 2, 1, &[]).await;
    let env = service_env(&[
        ("WORKER_BATCH_SIZE", "100"),
        // Longer than an outage: outcomes recorded late are still this instance's to record.
        ("LEASE_DURATION", "20s"),
        ("KAFKA_MESSAGE_TIMEOUT", "3s"),
        ("REDIS_TIMEOUT", "1s"),
    ]);
    let service = blocking(|| ServiceProcess::start(&redis.addr(), &prefix, &env));

    // Submissions and due times run through both outages and past them.
    let bodies = (0..tasks)
        .map(|i| {
            let payload = format!("s2-{i}");
            let to = destination(&kafka_addr(), &topic, i32::from(i % 2 == 1));
            let delay = 1 + u32::try_from(i % 3).expect("delay");
            let body = body(&payload, &to, None, 5, delay);
            (payload, body)
        })
        .collect();
    let load = tokio::spawn(post_all(
        vec![service.address],
        bodies,
        lead * 3 + outage * 2,
    ));

    tokio::time::sleep(lead).await;
    let clean = Instant::now();
    blocking(|| redis.stop());
    tokio::time::sleep(outage).await;
    blocking(|| redis.restart());
    let clean = clean.elapsed();

    tokio::time::sleep(lead).await;
    let crash = Instant::now();
    signal(redis_pid(&redis.addr()).await, "KILL");
    // Reaps the killed process (SIGTERM to a dead process is harmless).
    blocking(|| redis.stop());
    tokio::time::sleep(outage).await;
    blocking(|| redis.restart());
    let crash = crash.elapsed();

    let ledger = load.await.expect("load finished");
    let drained = drain(&store, Duration::from_secs(90), empty).await;
    drop(service);
    let destinations = [TopicRef {
        bootstrap: kafka_addr(),
        name: topic,
    }];
    let tally = tally(&ledger, &destinations, &[], &view).await;
    report::record(tally.row(
        "2. Redis stopped, then killed, under load (AOF, appendfsync always)",
        format!(
            "down {} after SIGTERM and {} after SIGKILL; {} POSTs refused (503) while down, \
             {} of them stored after all; {}",
            secs(clean),
            secs(crash),
            ledger.refused,
            tally.strays,
            secs(started.elapsed())
        ),
    ));
    assert!(drained, "the schedule did not drain within 90 s");
    tally.assert_none_lost();
    tally.assert_no_duplicates();
}
