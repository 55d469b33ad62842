//! The delivery worker: a loop around [`TaskService::deliver_due`] that only decides when to wake.
//! It runs a step at once while steps come back full, otherwise sleeps until the next task falls
//! due or `POLL_INTERVAL` passes, whichever is sooner, and backs off for one interval on errors.
//! With a dead-task retention set, it also removes dead tasks past it, once a minute.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::{Publisher, TaskService, TaskStore};

/// How often dead tasks past their retention are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// When the worker wakes and how it stops.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The longest it sleeps between looks at the schedule.
    pub poll_interval: Duration,
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
    let WorkerSettings {
        poll_interval,
        grace,
        dead_task_retention,
    } = settings;
    info!(poll_interval = ?poll_interval, "worker started");
    let batch_size = service.settings().batch_size;
    let mut next_expiry = Instant::now();
    while !shutdown.is_cancelled() {
        if let Some(retention) = dead_task_retention.filter(|_| Instant::now() >= next_expiry) {
            next_expiry = Instant::now() + EXPIRY_INTERVAL;
            if let Err(e) = service.expire_dead(retention).await {
                warn!(error = %e, "removing expired dead tasks failed; will try again");
            }
        }
        let give_up = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            }
        };
        let pause = match service.deliver_due(give_up).await {
            Ok(step) if step.claimed >= batch_size => Duration::ZERO,
            Ok(step) => step.next_due.map_or(poll_interval, |due| {
                let wait = due.saturating_sub(service.now()).max(0);
                poll_interval.min(Duration::from_millis(wait.unsigned_abs()))
            }),
            Err(e) => {
                warn!(error = %e, "worker step failed; retrying after the poll interval");
                poll_interval
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
    info!("worker stopped");
}
