//! Brings the delivery worker's next look at the schedule forward when a task is stored that
//! falls due before it.
//!
//! The worker sleeps until the next due task or the poll interval, whichever is sooner. A task
//! stored meanwhile that is due earlier (a short first delay, a retry made due now) would
//! otherwise wait for that look. The alarm knows when the worker plans to look next; storing a
//! task due before that rings it. It works within one instance: other instances still find the
//! task by their own next look.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

use super::task::Millis;

/// When the worker next looks at the schedule, and a bell that brings the look forward.
#[derive(Debug)]
pub struct Alarm {
    next_look: AtomicI64,
    bell: Notify,
}

impl Default for Alarm {
    fn default() -> Self {
        Self {
            next_look: AtomicI64::new(Millis::MAX),
            bell: Notify::new(),
        }
    }
}

impl Alarm {
    /// The worker is about to claim: a task stored from now until it sleeps rings, because the
    /// claim may not have seen it.
    pub fn awake(&self) {
        self.next_look.store(Millis::MAX, Ordering::SeqCst);
    }

    /// The worker has claimed and will look again at `at` unless rung.
    pub fn sleep_until(&self, at: Millis) {
        self.next_look.store(at, Ordering::SeqCst);
    }

    /// A task was stored due at `due`: rings if that is before the worker's next look.
    pub fn stored(&self, due: Millis) {
        if self.next_look.fetch_min(due, Ordering::SeqCst) > due {
            self.bell.notify_one();
        }
    }

    /// Resolves once rung; at once if it rang since the last wait.
    pub async fn rung(&self) {
        self.bell.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn rings(alarm: &Alarm) -> bool {
        tokio::time::timeout(Duration::from_millis(20), alarm.rung())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_task_due_before_the_next_look_rings_and_a_later_one_does_not() {
        let alarm = Alarm::default();
        alarm.sleep_until(10_000);
        alarm.stored(12_000);
        assert!(!rings(&alarm).await);
        alarm.stored(9_000);
        assert!(rings(&alarm).await);
        // The next look is now 9,000: a task due at 9,500 adds nothing.
        alarm.stored(9_500);
        assert!(!rings(&alarm).await);
    }

    #[tokio::test]
    async fn while_the_worker_claims_every_stored_task_rings_once_for_its_next_sleep() {
        let alarm = Alarm::default();
        alarm.awake();
        alarm.stored(50_000);
        alarm.stored(60_000);
        alarm.sleep_until(40_000);
        assert!(rings(&alarm).await, "the ring waits for the sleep");
        assert!(!rings(&alarm).await, "and rings once");
    }
}
