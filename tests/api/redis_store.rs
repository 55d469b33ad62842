//! The Redis adapter against a real Redis: layout, atomic claims, leases and settling.

use std::time::Duration;

use kafka_retry::domain::{
    Created, DestinationRequest, NewTask, Outcome, Task, TaskId, TaskRequest, TaskStore,
};
use redis::AsyncCommands;

use crate::helpers::{redis_addr, store, unique};

fn task(now: i64, delay_seconds: i64) -> Task {
    let new = NewTask::try_from(TaskRequest {
        payload: Some("payload".into()),
        destination: Some(DestinationRequest {
            topic: Some("orders".into()),
            partition: Some(0),
            kafka_conn_string: Some("localhost:9092".into()),
        }),
        dead_destination: None,
        max_retries: Some(3),
        retry_delay_seconds: Some(delay_seconds),
        ..TaskRequest::default()
    })
    .expect("valid");
    Task::new(TaskId::generate(), new, now, Duration::from_secs(3600))
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}", redis_addr()))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers")
}

#[tokio::test]
async fn the_schedule_is_the_go_services_sorted_set_scored_in_milliseconds() {
    let prefix = unique("layout");
    let store = store(&redis_addr(), &prefix);
    let task = task(1_000, 5);
    store.create(&task).await.expect("created");
    let mut redis = raw().await;
    let schedule: Vec<(String, i64)> = redis
        .zrange_withscores(format!("{prefix}:tasks"), 0, -1)
        .await
        .expect("zrange");
    assert_eq!(schedule, [(task.id.to_string(), 6_000)]);
    let record: Vec<u8> = redis
        .hget(format!("{{{prefix}:tasks}}:records"), task.id.to_string())
        .await
        .expect("hget");
    assert_eq!(record[0], 1, "a version 1 record");
    assert!(record.windows(7).any(|w| w == b"payload"));
    store.clear().await.expect("clear");
}

#[tokio::test]
async fn json_records_written_by_earlier_versions_are_delivered_and_rewritten_compactly() {
    let prefix = unique("legacy");
    let store = store(&redis_addr(), &prefix);
    let mut redis = raw().await;
    let id = "01KBKC5ZJ4XAYH2W5JDSK1EFS8";
    let legacy = r#"{"id":"01KBKC5ZJ4XAYH2W5JDSK1EFS8","payload":"from before","destination":{"topic":"orders","partition":0,"kafka_conn_string":"localhost:9092"},"max_retries":3,"retry_delay_seconds":1,"state":"scheduled","created_at":1000,"due_at":1000}"#;
    let records = format!("{{{prefix}:tasks}}:records");
    let _: () = redis.hset(&records, id, legacy).await.expect("hset");
    let _: () = redis
        .zadd(format!("{prefix}:tasks"), id, 1_000)
        .await
        .expect("zadd");

    let found = store.record(id.parse().expect("id")).await.expect("find");
    assert_eq!(found.expect("found").payload, "from before");
    let claim = store.claim_due(2_000, 10, 32_000).await.expect("claim");
    assert_eq!(claim.tasks.len(), 1);
    let mut task = claim.tasks[0].clone();
    assert_eq!(task.id.to_string(), id);
    task.attempts = 1;
    task.due_at = 3_000;
    store
        .settle(32_000, &[Outcome::Reschedule(task.clone())])
        .await
        .expect("settle");
    let rewritten: Vec<u8> = redis.hget(&records, id).await.expect("hget");
    assert_eq!(rewritten[0], 1, "rewritten as a version 1 record");
    assert_eq!(store.record(task.id).await.expect("find"), Some(task));
    store.clear().await.expect("clear");
}

#[tokio::test]
async fn a_claim_takes_only_due_tasks_in_due_order_and_leases_them() {
    let store = store(&redis_addr(), &unique("claim"));
    let early = task(0, 1);
    let later = task(0, 2);
    let future = task(0, 60);
    for t in [&later, &future, &early] {
        store.create(t).await.expect("created");
    }
    let claim = store.claim_due(2_000, 10, 32_000).await.expect("claim");
    let ids: Vec<TaskId> = claim.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, [early.id, later.id]);
    assert_eq!(claim.tasks[0], early, "the record round-trips");
    assert_eq!(claim.next_due, Some(60_000));
    assert_eq!(store.counts().await.expect("counts").as_tuple(), (1, 2, 0));

    let again = store.claim_due(31_999, 10, 61_999).await.expect("claim");
    assert!(again.tasks.is_empty(), "leased tasks are not claimed twice");
    store.clear().await.expect("clear");
}

#[tokio::test]
async fn a_claim_respects_its_limit() {
    let store = store(&redis_addr(), &unique("limit"));
    for _ in 0..5 {
        store.create(&task(0, 1)).await.expect("created");
    }
    let claim = store.claim_due(5_000, 3, 9_000).await.expect("claim");
    assert_eq!(claim.tasks.len(), 3);
    assert_eq!(claim.next_due, Some(1_000), "two left, already due");
    store.clear().await.expect("clear");
}

#[tokio::test]
async fn a_lease_that_runs_out_is_claimed_again_and_the_stale_claim_cannot_settle() {
    let store = store(&redis_addr(), &unique("lease"));
    let t = task(0, 1);
    store.create(&t).await.expect("created");
    let first = store.claim_due(1_000, 10, 5_000).await.expect("claim");
    assert_eq!(first.tasks.len(), 1);
    let second = store.claim_due(5_000, 10, 9_000).await.expect("claim");
    assert_eq!(second.tasks.len(), 1, "an expired lease is claimed again");

    store
        .settle(5_000, &[Outcome::Done(t.id)])
        .await
        .expect("settle");
    assert!(
        store.record(t.id).await.expect("redis").is_some(),
        "stale claim ignored"
    );
    store
        .settle(9_000, &[Outcome::Done(t.id)])
        .await
        .expect("settle");
    assert!(store.record(t.id).await.expect("redis").is_none());
    assert_eq!(store.counts().await.expect("counts").as_tuple(), (0, 0, 0));
}

#[tokio::test]
async fn settling_reschedules_buries_and_forgets_in_one_step() {
    let store = store(&redis_addr(), &unique("settle"));
    let [a, b, c] = [task(0, 1), task(0, 1), task(0, 1)];
    for t in [&a, &b, &c] {
        store.create(t).await.expect("created");
    }
    store.claim_due(1_000, 10, 31_000).await.expect("claim");
    let mut retried = a.clone();
    retried.attempts = 1;
    retried.due_at = 3_000;
    let mut dead = b.clone();
    dead.attempts = 3;
    dead.last_error = Some("gone".into());
    let outcomes = [
        Outcome::Reschedule(retried.clone()),
        Outcome::Bury(dead.clone()),
        Outcome::Done(c.id),
    ];
    store.settle(31_000, &outcomes).await.expect("settle");
    assert_eq!(store.counts().await.expect("counts").as_tuple(), (1, 0, 1));
    assert_eq!(store.record(a.id).await.expect("redis"), Some(retried));
    assert_eq!(store.record(b.id).await.expect("redis"), Some(dead));
    assert_eq!(store.record(c.id).await.expect("redis"), None);
    let claim = store.claim_due(3_000, 10, 33_000).await.expect("claim");
    assert_eq!(claim.tasks.len(), 1);
    store.clear().await.expect("clear");
}

#[tokio::test]
async fn an_unreadable_record_is_moved_to_dead_not_dropped() {
    let prefix = unique("corrupt");
    let store = store(&redis_addr(), &prefix);
    let mut redis = raw().await;
    let _: () = redis
        .zadd(format!("{prefix}:tasks"), "01BADBADBADBADBADBADBADBAD", 1)
        .await
        .expect("zadd");
    let _: () = redis
        .hset(
            format!("{{{prefix}:tasks}}:records"),
            "01BADBADBADBADBADBADBADBAD",
            "not json",
        )
        .await
        .expect("hset");
    let claim = store.claim_due(1_000, 10, 31_000).await.expect("claim");
    assert!(claim.tasks.is_empty());
    assert_eq!(store.counts().await.expect("counts").as_tuple(), (0, 0, 1));
    store.clear().await.expect("clear");
}

#[tokio::test]
async fn the_store_talks_to_redis_over_tls_with_a_rediss_url() {
    let dir = std::env::temp_dir().join(unique("redis-tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = crate::helpers::free_port();
    let mut server = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--tls-auth-clients", "no", "--save", ""])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let store = store(
        &format!("rediss://127.0.0.1:{port}/#insecure"),
        &unique("tls"),
    );
    let task = task(0, 1);
    let mut stored = None;
    for _ in 0..100 {
        if store.create(&task).await.is_ok() {
            stored = store.record(task.id).await.ok().flatten();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(stored, Some(task));
}

#[tokio::test]
async fn concurrent_submissions_share_script_calls_and_each_gets_its_own_answer() {
    let store = store(&redis_addr(), &unique("coalesce"));
    let tasks: Vec<Task> = (0..500).map(|_| task(0, 1)).collect();
    let created = futures::future::join_all(tasks.iter().map(|t| store.create(t))).await;
    assert!(created.iter().all(|c| matches!(c, Ok(Created::New))));
    assert_eq!(store.counts().await.expect("counts").scheduled, 500);

    let keyed: Vec<Task> = (0..20)
        .map(|_| {
            let mut t = task(0, 1);
            t.idempotency_key = Some("same-key".into());
            t
        })
        .collect();
    let answers = futures::future::join_all(keyed.iter().map(|t| store.create(t))).await;
    let answers: Vec<Created> = answers.into_iter().map(|a| a.expect("stored")).collect();
    let new: Vec<usize> = (0..answers.len())
        .filter(|i| answers[*i] == Created::New)
        .collect();
    assert_eq!(new.len(), 1, "one submission wins the key");
    let winner = keyed[new[0]].id;
    assert!(
        answers
            .iter()
            .all(|a| *a == Created::New || *a == Created::Existing(winner)),
        "every other submission is answered with the winner's id"
    );
    assert_eq!(store.counts().await.expect("counts").scheduled, 501);
    store.clear().await.expect("clear");
}
