//! The delivery worker: claims due tasks and delivers them, with up to `WORKER_CONCURRENCY`
//! claims in flight at once, so that one slow cluster does not hold up the next batch. It claims
//! again at once while claims come back full, otherwise sleeps until the next task falls due or
//! `POLL_INTERVAL` passes, whichever is sooner, or until this instance stores a task due before
//! that (the service's [`Alarm`](crate::domain::Alarm)), and backs off for one interval on errors. With a
//! dead-task retention set, it also removes dead tasks past it, once a minute.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::{Publisher, TaskService, TaskStore};

/// How often dead tasks past their retention are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// When the worker wakes, how much it does at once, and how it stops.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The longest it sleeps between looks at the schedule.
    pub poll_interval: Duration,
    /// How many claims may be delivering at once.
    pub concurrency: usize,
    /// How long in-flight publishes may finish once shutdown starts.
    pub grace: Duration,
    /// How long dead tasks are kept; `None` keeps them until an operator acts.
    pub dead_task_retention: Option<Duration>,
}

/// Runs the worker until `shutdown` is cancelled. In-flight publishes then get `grace` to finish;
/// what is still unfinished after that is handed back to the schedule.
pub async fn run<S: TaskStore, P: Publisher>(
    service: Arc<TaskService<S, P>>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    info!(poll_interval = ?settings.poll_interval, concurrency = settings.concurrency, "worker started");
    let batch_size = service.settings().batch_size;
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut deliveries = JoinSet::new();
    let mut next_expiry = Instant::now();
    loop {
        if let Some(retention) = settings
            .dead_task_retention
            .filter(|_| Instant::now() >= next_expiry)
        {
            next_expiry = Instant::now() + EXPIRY_INTERVAL;
            if let Err(e) = service.expire_dead(retention).await {
                warn!(error = %e, "removing expired dead tasks failed; will try again");
            }
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
        service.alarm().awake();
        let pause = match service.claim().await {
            Ok(claim) if claim.tasks.is_empty() => {
                until(&service, claim.next_due, settings.poll_interval)
            }
            Ok(claim) => {
                let full = claim.tasks.len() >= batch_size;
                let next_due = claim.next_due;
                let delivering = service.clone();
                let give_up = give_up(shutdown.clone(), settings.grace);
                deliveries.spawn(async move {
                    let delivered = delivering.deliver(claim, give_up).await;
                    drop(slot);
                    delivered
                });
                if full {
                    Duration::ZERO
                } else {
                    until(&service, next_due, settings.poll_interval)
                }
            }
            Err(e) => {
                warn!(error = %e, "claiming due tasks failed; retrying after the poll interval");
                settings.poll_interval
            }
        };
        while let Some(done) = deliveries.try_join_next() {
            report(done);
        }
        if !pause.is_zero() {
            let wake_at = service
                .now()
                .saturating_add(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX));
            service.alarm().sleep_until(wake_at);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                () = service.alarm().rung() => {}
            }
        }
    }
    while let Some(done) = deliveries.join_next().await {
        report(done);
    }
    info!("worker stopped");
}

/// Resolves `grace` after shutdown starts.
async fn give_up(shutdown: CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// How long to sleep before the next claim: until the next task falls due, at most a poll interval.
fn until<S: TaskStore, P: Publisher>(
    service: &TaskService<S, P>,
    next_due: Option<i64>,
    poll_interval: Duration,
) -> Duration {
    next_due.map_or(poll_interval, |due| {
        let wait = due.saturating_sub(service.now()).max(0);
        poll_interval.min(Duration::from_millis(wait.unsigned_abs()))
    })
}

fn report<E: std::fmt::Display>(
    done: Result<Result<crate::domain::Step, E>, tokio::task::JoinError>,
) {
    match done {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "recording delivery outcomes failed; leases will run out"),
        Err(e) => warn!(error = %e, "a delivery task failed"),
    }
}
