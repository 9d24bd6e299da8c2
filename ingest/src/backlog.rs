//! Backpressure: refuse new work while the queue is over its limit.
//!
//! Asking Redis for the queue length on every request would double the
//! round trips, so a background task refreshes a cached length a few times
//! a second, and every successful push updates it for free (LPUSH answers
//! with the new length).

use crate::error::ApiError;
use crate::metrics::Metrics;
use common::queue::Queue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the cached length is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The last known length of the ready list, checked against the limit.
#[derive(Debug)]
pub struct Backlog {
    ready: AtomicU64,
    /// When the query that saw `ready` was sent. The refresher's answer
    /// can arrive after a push's answer to a later query; it must not put
    /// back the older, shorter length.
    seen_at: Mutex<Option<Instant>>,
    limit: u64,
}

impl Backlog {
    /// A backlog that refuses work above `limit` ready jobs.
    pub fn new(limit: u64) -> Self {
        Backlog {
            ready: AtomicU64::new(0),
            seen_at: Mutex::new(None),
            limit,
        }
    }

    /// Records a length seen by a query sent at `asked_at`, unless a query
    /// sent later has been recorded already.
    pub fn observe(&self, ready: u64, asked_at: Instant) {
        let mut seen_at = self.seen_at.lock().unwrap_or_else(|e| e.into_inner());
        if seen_at.is_none_or(|seen| asked_at >= seen) {
            *seen_at = Some(asked_at);
            self.ready.store(ready, Ordering::Relaxed);
        }
    }

    /// `Err(QueueFull)` while the queue is over its limit.
    pub fn check(&self) -> Result<(), ApiError> {
        let depth = self.ready.load(Ordering::Relaxed);
        if depth > self.limit {
            return Err(ApiError::QueueFull {
                depth,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// Refreshes `backlog` (and the queue gauges of `metrics`) from Redis until
/// the task is aborted: one round trip per refresh. A failure is logged by
/// the queue handle, once per outage.
pub async fn refresh(backlog: Arc<Backlog>, queue: Queue, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let asked_at = Instant::now();
        if let Ok(depths) = queue.depths().await {
            backlog.observe(depths.ready, asked_at);
            metrics.set_depths(depths);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_answer_does_not_undo_a_newer_one() {
        let backlog = Backlog::new(5);
        let (refresh_sent, push_sent) = (Instant::now(), Instant::now() + Duration::from_millis(1));
        // The push's answer (6 ready) arrives first, then the refresher's
        // to its earlier query (0 ready).
        backlog.observe(6, push_sent);
        backlog.observe(0, refresh_sent);
        assert!(backlog.check().is_err(), "the queue is over its limit");
        // A later refresh sees the queue drained.
        backlog.observe(0, push_sent + Duration::from_millis(1));
        assert!(backlog.check().is_ok());
    }
}
