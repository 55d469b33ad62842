//! Scenario 6: Redis down when the service starts. Proves that the service starts anyway, reports
//! itself unhealthy (503) and refuses tasks while Redis is away, then recovers on its own once
//! Redis is up, without a restart: healthy again, taking tasks and delivering them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::helpers::create_topic_on;
use crate::helpers::{RedisServer, ServiceProcess, kafka_addr, post_task, store, unique};
use crate::ledger::{TopicRef, body, destination, post_all, tally};
use crate::report;
use crate::suite::{RedisView, Size, blocking, drain, empty, exclusive, secs, service_env};

async fn health(http: &reqwest::Client, address: SocketAddr) -> u16 {
    http.get(format!("http://{address}/health"))
        .send()
        .await
        .expect("health answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_without_redis_recovers_when_redis_comes_up() {
    let _one = exclusive().await;
    let started = Instant::now();
    let size = Size::get();
    let tasks: usize = size.pick(200, 1_000);

    let mut redis = RedisServer::start();
    blocking(|| redis.stop());
    let prefix = unique("fault-start");
    let store = store(&redis.addr(), &prefix);
    let view = RedisView::new(&redis.addr(), &store);
    let topic = create_topic_on(&kafka_addr(), 1, 1, &[]).await;
    let to = destination(&kafka_addr(), &topic, 0);
    let env = service_env(&[("REDIS_TIMEOUT", "1s")]);
    let mut service = blocking(|| ServiceProcess::start(&redis.addr(), &prefix, &env));
    let pid = service.child.id();
    let http = reqwest::Client::new();

    let unhealthy = health(&http, service.address).await;
    let (refused, _) =
        post_task(&http, service.address, &body("s6-refused", &to, None, 1, 1)).await;
    blocking(|| redis.restart());
    let back = Instant::now();
    let mut healthy = health(&http, service.address).await;
    while healthy != 200 && back.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        healthy = health(&http, service.address).await;
    }
    let recovery = back.elapsed();

    let bodies = (0..tasks)
        .map(|i| {
            let payload = format!("s6-{i}");
            let body = body(&payload, &to, None, 3, 1);
            (payload, body)
        })
        .collect();
    let ledger = post_all(vec![service.address], bodies, Duration::ZERO).await;
    let drained = drain(&store, Duration::from_secs(60), empty).await;
    let still_running = service.child.try_wait().expect("process status").is_none();
    drop(service);
    let destinations = [TopicRef {
        bootstrap: kafka_addr(),
        name: topic,
    }];
    let tally = tally(&ledger, &destinations, &[], &view).await;
    report::record(tally.row(
        "6. Redis down when the service starts",
        format!(
            "/health {unhealthy} and POST {refused} while down; /health 200 {} after Redis \
             started; same process (pid {pid}) throughout; {}",
            secs(recovery),
            secs(started.elapsed())
        ),
    ));
    assert_eq!(unhealthy, 503, "unhealthy while Redis is down");
    assert_eq!(refused, 503, "tasks refused while Redis is down");
    assert_eq!(healthy, 200, "healthy again within 30 s of Redis starting");
    assert!(still_running, "the service was not restarted");
    assert_eq!(ledger.refused, 0, "every task accepted once Redis is up");
    assert!(drained, "the schedule did not drain within a minute");
    tally.assert_none_lost();
    tally.assert_no_duplicates();
    assert_eq!(tally.delivered, tasks, "every task delivered");
}
