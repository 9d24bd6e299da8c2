//! Settling: what becomes of each taken job (acknowledged, retried, dead,
//! parked), recorded for a batch in one or two round trips.

use super::{QueueError, QueueKeys, WorkerQueue};
use crate::job::DeadLetter;
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script, ScriptInvocation};
use std::sync::LazyLock;
use std::time::Duration;

static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/settle.lua")));

/// What became of one taken job, to be recorded by [`settle`].
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Delivered: forget the job.
    Ack,
    /// Failed, to be tried again after `delay`.
    Retry {
        /// The job for its next attempt, encoded.
        next: String,
        /// How long to wait before it is due.
        delay: Duration,
    },
    /// Not attempted (its host has all it may have in flight): parked
    /// until it has room.
    Park {
        /// The host (`host:port`) it waits for.
        host: String,
    },
    /// Failed for good.
    Dead {
        /// The dead letter to keep (boxed: it is much larger than the
        /// other variants, and rare).
        letter: Box<DeadLetter>,
    },
}

/// A taken job's exact bytes (how the in-flight list knows it) with what
/// became of it.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The bytes taken from the queue.
    pub taken: Vec<u8>,
    /// What to record.
    pub settlement: Settlement,
}

/// Records a batch of outcomes: one round trip when every outcome is an
/// acknowledgement (the usual case), two otherwise. Returns how many were
/// still owned by `worker` (the others were reclaimed meanwhile and are
/// another worker's to settle).
///
/// An acknowledgement is a plain `LREM`, pipelined, not a step of the
/// script: it only removes, so it needs no atomic company, and Redis hashes
/// every string that enters Lua, byte by byte (its strings are interned),
/// which made the script a large part of Redis' work in a drain. `LREM` is
/// also allowed when
/// Redis is full, like the scripts (see the note at the top).
pub async fn settle<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    outcomes: &[Settled],
) -> RedisResult<u64> {
    let inflight = keys.inflight(worker);
    let mut acks = redis::Pipeline::with_capacity(outcomes.len());
    let mut others = None;
    // One key per parked host, however many of its jobs the batch parks.
    let mut parked_hosts: Vec<&str> = Vec::new();
    for Settled { taken, settlement } in outcomes {
        match settlement {
            // From the oldest end: a delivered job is usually among the
            // oldest taken.
            Settlement::Ack => {
                let mut lrem = redis::Cmd::with_capacity(4, 5 + inflight.len() + 1 + taken.len());
                lrem.arg("LREM").arg(&inflight).arg(1).arg(taken);
                acks.add_command(lrem);
            }
            Settlement::Park { host } => {
                let call = settle_script(&mut others, keys, &inflight);
                let index = match parked_hosts.iter().position(|h| h == host) {
                    Some(i) => i,
                    None => {
                        parked_hosts.push(host);
                        call.key(keys.parked_list(host));
                        parked_hosts.len() - 1
                    }
                };
                // KEYS is 1-based in Lua and starts with five fixed keys.
                call.arg("p").arg(taken).arg(index + 6).arg(host);
            }
            Settlement::Retry { next, delay } => {
                let call = settle_script(&mut others, keys, &inflight);
                call.arg("r").arg(taken).arg(next).arg(delay.as_millis() as u64);
            }
            Settlement::Dead { letter } => {
                let call = settle_script(&mut others, keys, &inflight);
                call.arg("d").arg(taken).arg(letter.encode()).arg(0);
                if !letter.header_values.is_empty() {
                    call.arg("h").arg(&letter.id).arg(letter.header_values.to_json()).arg(0);
                }
            }
        }
    }
    let mut settled = 0;
    if let Some(call) = others {
        settled += call.invoke_async::<u64>(conn).await?;
    }
    if !acks.is_empty() {
        let removed: Vec<u64> = acks.query_async(conn).await?;
        settled += removed.iter().sum::<u64>();
    }
    Ok(settled)
}

/// The settle script's call of a batch, begun at its first outcome.
fn settle_script<'a>(
    call: &'a mut Option<ScriptInvocation<'static>>,
    keys: &QueueKeys,
    inflight: &str,
) -> &'a mut ScriptInvocation<'static> {
    call.get_or_insert_with(|| {
        let mut call = SETTLE.prepare_invoke();
        call.key(inflight)
            .key(&keys.retry)
            .key(&keys.dead)
            .key(&keys.parked)
            .key(&keys.dead_headers);
        call
    })
}

impl WorkerQueue {
    /// Records a batch of outcomes (see [`settle()`]). Returns how
    /// many were still this worker's to settle.
    pub async fn settle(&self, outcomes: &[Settled]) -> Result<u64, QueueError> {
        let (keys, id) = (self.keys(), self.id.as_str());
        self.queue
            .run("settle", Duration::ZERO, async move |mut conn| {
                settle(&mut conn, keys, id, outcomes).await
            })
            .await
    }
}
