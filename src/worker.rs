//! The delivery worker: a loop around [`TaskService::deliver_due`] that only decides when to wake.
//! It runs a step at once while steps come back full, otherwise sleeps until the next task falls
//! due or `POLL_INTERVAL` passes, whichever is sooner, and backs off for one interval on errors.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::{Publisher, TaskService, TaskStore};

/// Runs the worker until `shutdown` is cancelled. In-flight publishes then get `grace` to finish;
/// what is still unfinished after that is handed back to the schedule.
pub async fn run<S: TaskStore, P: Publisher>(
    service: Arc<TaskService<S, P>>,
    poll_interval: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    info!(poll_interval = ?poll_interval, "worker started");
    let batch_size = service.settings().batch_size;
    while !shutdown.is_cancelled() {
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
