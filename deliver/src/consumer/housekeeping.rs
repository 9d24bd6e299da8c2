//! Housekeeping: the heartbeat that keeps this worker's jobs its own, the
//! recovery of dead workers' jobs, and the promotion of due retries.

use super::{Context, Settings};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Heartbeat, recovery of dead workers' jobs, and promotion of due retries.
///
/// A worker whose heartbeat has expired is taken for dead only once this
/// worker's own housekeeping has gone through, without a failure, for a
/// whole heartbeat TTL: every live worker has then had as long to renew
/// its heartbeat. After Redis refused writes (a full disk, too few
/// replicas) or was away for longer than the TTL, every heartbeat has
/// expired at once, and the first worker able to write again would
/// otherwise hand the live workers' jobs to be delivered a second time.
/// Who crashed meanwhile is recovered one TTL later.
pub(super) async fn housekeeping(ctx: Arc<Context>, settings: Settings, stop: CancellationToken) {
    let mut tick = tokio::time::interval(settings.poll_every.min(settings.heartbeat_every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_heartbeat = Instant::now() + settings.heartbeat_every;
    let mut next_reclaim = Instant::now();
    // Since when every housekeeping has gone through (None: the last failed).
    let mut writing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let writing_long_enough = writing_since.is_some_and(|since| now - since >= settings.heartbeat_ttl);
        let (beat, reclaim) = (now >= next_heartbeat, now >= next_reclaim && writing_long_enough);
        if ctx.queue.housekeeping(beat, reclaim).await.is_ok() {
            writing_since.get_or_insert(now);
            if beat {
                next_heartbeat = now + settings.heartbeat_every;
            }
            if reclaim {
                next_reclaim = now + settings.heartbeat_every;
            }
        } else {
            writing_since = None;
        }
    }
}
