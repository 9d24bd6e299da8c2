//! Settling: outcomes are recorded in Redis in batches, one round trip for
//! many jobs (acknowledge, schedule a retry, dead-letter, or park), and a
//! stopping worker hands its unsettled jobs back to the queue.

use super::{pause, Context, BACKOFF_MIN, STOP_DEADLINE};
use common::queue::Settled;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// An outcome on its way to Redis with its job's slot, which the settler
/// gives back once the outcome is recorded: while a slot is out, its job is
/// in this worker's in-flight list on this worker's behalf.
pub(super) type Handed = (Settled, OwnedSemaphorePermit);

/// How long the settler gathers outcomes to record with the first one when
/// fewer than a batch are at hand. In a steady trickle, where each take
/// brings one job, this records several outcomes per round trip instead of
/// one each (a Redis call and its wake-up saved per job); under load the
/// batch fills first. It delays only the bookkeeping, never a request: a
/// slot is held a little longer, and a crash within it delivers those jobs
/// again, as it would any job whose outcome was not yet recorded.
const GATHER: Duration = Duration::from_millis(5);

/// Records outcomes in batches until every sender is gone. A batch that
/// fails is retried as it is, so no outcome is dropped while Redis is away.
pub(super) async fn settler(ctx: Arc<Context>, mut rx: mpsc::Receiver<Handed>, batch_max: usize) {
    let mut batch = Vec::with_capacity(batch_max);
    let mut slots = Vec::with_capacity(batch_max);
    let never = CancellationToken::new();
    while let Some((first, slot)) = rx.recv().await {
        batch.push(first);
        slots.push(slot);
        let gathered_by = tokio::time::Instant::now() + GATHER;
        while batch.len() < batch_max {
            let next = match rx.try_recv() {
                Ok(next) => Some(next),
                Err(TryRecvError::Empty) => tokio::time::timeout_at(gathered_by, rx.recv()).await.ok().flatten(),
                Err(TryRecvError::Disconnected) => None,
            };
            let Some((next, slot)) = next else { break };
            batch.push(next);
            slots.push(slot);
        }
        let mut backoff = BACKOFF_MIN;
        let mut tried_before = false;
        loop {
            match ctx.queue.settle(&batch).await {
                Ok(settled) => {
                    if (settled as usize) < batch.len() {
                        // A retried batch may have been recorded by the
                        // attempt whose answer was lost: then nothing is amiss.
                        let why = if tried_before {
                            "recorded by an earlier attempt whose answer was lost, or returned to the queue while this worker was presumed dead"
                        } else {
                            "returned to the queue while this worker was presumed dead"
                        };
                        log::warn!(
                            "{} outcomes not recorded: their jobs were no longer in this worker's in-flight list ({why})",
                            batch.len() - settled as usize
                        );
                    }
                    break;
                }
                Err(_) => {
                    tried_before = true;
                    pause(&mut backoff, &never).await;
                }
            }
        }
        batch.clear();
        slots.clear();
    }
}

/// Hands this worker's unsettled jobs back to the queue, trying for a
/// little while if Redis is away (after that the heartbeat expires and
/// another worker does it).
pub(super) async fn release(ctx: &Context) -> u64 {
    let deadline = Instant::now() + STOP_DEADLINE;
    let mut backoff = BACKOFF_MIN;
    let never = CancellationToken::new();
    loop {
        match ctx.queue.release().await {
            Ok(returned) => return returned,
            Err(e) if Instant::now() >= deadline => {
                log::warn!("could not return unsettled jobs to the queue ({e}); they will be recovered when this worker's heartbeat expires");
                return 0;
            }
            Err(_) => {
                pause(&mut backoff, &never).await;
            }
        }
    }
}
