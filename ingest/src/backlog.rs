//! Backpressure: refuse new work while the queue is over its limit.
//!
//! Asking Redis for the queue length on every request would double the
//! round trips, so a background task refreshes a cached length a few times
//! a second, and every successful push updates it for free (LPUSH answers
//! with the new length).

use crate::error::ApiError;
use crate::metrics::Metrics;
use common::queue::QueueKeys;
use common::redis_pool::Outage;
use deadpool_redis::Pool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the cached length is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The last known length of the ready list, checked against the limit.
#[derive(Debug)]
pub struct Backlog {
    ready: AtomicU64,
    limit: u64,
}

impl Backlog {
    /// A backlog that refuses work above `limit` ready jobs.
    pub fn new(limit: u64) -> Self {
        Backlog {
            ready: AtomicU64::new(0),
            limit,
        }
    }

    /// Records a freshly observed length.
    pub fn observe(&self, ready: u64) {
        self.ready.store(ready, Ordering::Relaxed);
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
/// the task is aborted: one pipelined round trip per refresh.
pub async fn refresh(backlog: Arc<Backlog>, pool: Pool, keys: QueueKeys, outage: Arc<Outage>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            common::queue::depths(&mut *conn, &keys)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(depths) => {
                outage.succeeded();
                backlog.observe(depths.ready);
                metrics.set_depths(depths);
            }
            Err(e) => outage.failed("queue length", &e),
        }
    }
}
