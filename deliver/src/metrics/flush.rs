//! The statistics' flush: once a second a process's counts, the queue
//! depths it saw and its latest failures go to Redis in one pipeline
//! (`common::queue::stats`), kept for the next second while Redis is away.

use super::{Metrics, Pending, FAILURES_BUFFERED};
use std::time::Duration;

impl Metrics {
    fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn restore_pending(&self, mut old: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (second, counts) in std::mem::take(&mut pending.seconds) {
            old.seconds.entry(second).or_default().merge(&counts);
        }
        // Keep within the retention: older seconds would expire anyway.
        while old.seconds.len() > common::stats::RETENTION_SECS as usize {
            old.seconds.pop_first();
        }
        old.failures.truncate(FAILURES_BUFFERED);
        pending.seconds = old.seconds;
        if pending.failures.is_empty() {
            pending.failures = old.failures;
        }
    }
}

/// How often a process adds its counts to the statistics in Redis: the
/// statistics' resolution is a second.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Writes the pending statistics to Redis once a second, with the queue
/// depths, until `stop` is cancelled (then flushes one last time).
pub async fn flush_stats(
    metrics: std::sync::Arc<Metrics>,
    queue: common::queue::Queue,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let pending = metrics.take_pending();
        let flushed = async {
            let depths = metrics.set_depths(&queue.depths_by_shard().await?);
            let now = common::now_ms() / 1000;
            queue
                .flush_stats(&pending.seconds, Some((now, depths)), &pending.failures)
                .await
        }
        .await;
        if flushed.is_err() {
            // Redis is away or full (the queue handle logs outages): keep
            // the counts for the next second.
            metrics.restore_pending(pending);
        }
        if stopping {
            return;
        }
    }
}
