//! A consumer: takes jobs from one shard of the queue, hands them to the
//! [`Deliverer`], and settles their outcomes. One runs per shard; they share
//! the process's `Deliverer` (its client and limits).
//!
//! One delivery cycle is take → [`Deliverer::dispatch`] → [`Deliverer::run`]
//! → settle; [`step`] does it once, in order, in one call (tests call it).
//! A running consumer does the same work as a pipeline, so that a batch's
//! slowest request never holds up the next take or the other outcomes.
//! Four activities run side by side:
//! - the *fetcher* ([`taking`]) takes batches of jobs into this worker's
//!   in-flight list (at most twice `DELIVER_CONCURRENCY` in memory, over
//!   all the process's consumers), waiting in Redis for the first when the
//!   queue is empty, so an idle worker costs nothing; it parks a job whose
//!   host is saturated, and takes parked jobs back once their host has
//!   room ([`crate::hosts`]);
//! - one *delivery task* per job runs it ([`Deliverer::run`]: a slot of
//!   its host and a global one, then the attempt), and hands the outcome
//!   to the settler;
//! - the *settler* ([`settling`]) records outcomes in batches, one round
//!   trip for many jobs (acknowledge, schedule a retry, dead-letter, or
//!   park);
//! - [`housekeeping`] keeps the heartbeat alive, returns the jobs of dead
//!   workers to the queue, and moves due retries back to it.
//!
//! On shutdown the fetcher stops, deliveries in flight get the grace period,
//! outcomes are settled, and whatever is still unsettled goes back to the
//! queue. A crash skips all that; the in-flight list in Redis is then
//! returned by the other workers (or this one's successor) once the
//! heartbeat expires. A take whose answer was lost is the one case a live
//! worker must clean up after itself (see `return_orphans`).

mod housekeeping;
mod settling;
mod taking;

use crate::deliverer::{Deliverer, Dispatch};
use common::queue::{QueueError, Settled, WorkerQueue};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long an idle fetcher blocks on Redis for a new job per call.
pub const BLOCK_WAIT: Duration = Duration::from_secs(1);
/// Back-off bounds while Redis is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping consumer keeps trying to record outcomes and hand
/// back its jobs while Redis is away; after that the heartbeat expires and
/// another worker returns them.
const STOP_DEADLINE: Duration = BACKOFF_MAX;

/// With several shards, the most a take waits for `DELIVER_BATCH` free
/// slots while its shard has a backlog (its last take was full). The
/// shards' consumers share the process's slots and each freed slot wakes
/// one of them: without the wait each would take what was free at that
/// moment, a small batch, and every Redis master would pay its per-call
/// cost for a fraction of the jobs. A backlog means jobs wait in Redis
/// anyway, and the process holds twice as many jobs as it has requests
/// running, so a few milliseconds here cost no delivery time.
const FILL_WAIT: Duration = Duration::from_millis(2);

/// What a consumer did when it stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Deliveries still running when the grace period ended.
    pub cut_short: usize,
    /// Jobs handed back to the queue.
    pub returned: u64,
}

/// The consumer's own settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DELIVER_CONCURRENCY`: requests at once; twice as many jobs may be
    /// held (waiting for their host, running, or being settled).
    pub concurrency: usize,
    /// `DELIVER_BATCH`: most jobs taken or settled per round trip.
    pub batch: usize,
    /// `DELIVER_HEARTBEAT_MS`.
    pub heartbeat_every: Duration,
    /// `DELIVER_HEARTBEAT_TTL_MS`: also how long this worker's own writes
    /// must have gone through before it may take a silent worker for dead.
    pub heartbeat_ttl: Duration,
    /// `DELIVER_POLL_MS`: how often due retries are promoted.
    pub poll_every: Duration,
    /// `DELIVER_SHUTDOWN_GRACE_MS`.
    pub shutdown_grace: Duration,
    /// How long a take waits for a full batch of free slots while its
    /// shard has a backlog ([`FILL_WAIT`] with several shards, else none).
    pub fill_wait: Duration,
    /// The jobs a process may hold, twice `DELIVER_CONCURRENCY`, shared by
    /// its consumers (clones of these settings share it): with one budget
    /// per shard, each consumer would take what the process's hosts have
    /// room for, and the surplus would be parked only to be taken back.
    pub slots: Arc<Semaphore>,
}

impl Settings {
    /// The consumer's part of deliver's configuration.
    pub fn of(config: &crate::config::Config) -> Self {
        Settings {
            concurrency: config.concurrency,
            batch: config.batch,
            heartbeat_every: config.heartbeat_every,
            heartbeat_ttl: config.heartbeat_ttl,
            poll_every: config.poll_every,
            shutdown_grace: config.shutdown_grace,
            fill_wait: if config.shards > 1 { FILL_WAIT } else { Duration::ZERO },
            slots: Arc::new(Semaphore::new(config.concurrency * 2)),
        }
    }
}

/// What one [`step`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stepped {
    /// Jobs taken into the worker's in-flight list.
    pub taken: usize,
    /// Jobs delivered (whatever the answer: acknowledged, retried or dead).
    pub ran: usize,
    /// Jobs parked: their destination was full, open or paused.
    pub parked: usize,
    /// Dead letters made with no attempt: taken strings that were not
    /// jobs, jobs of a disabled destination.
    pub dead: usize,
    /// Outcomes recorded (fewer than `taken` only if some jobs were no
    /// longer this worker's, see [`WorkerQueue::settle`]).
    pub settled: u64,
}

/// One delivery cycle, in order: takes up to `max` jobs from `queue` into
/// its worker's in-flight list, decides each one's fate, runs those to be
/// delivered (at once, each through its host's gate and the global limit),
/// and settles every outcome in one round trip. The worker must be alive
/// ([`WorkerQueue::heartbeat`]). [`run`] does this work as a pipeline.
pub async fn step(queue: &WorkerQueue, deliverer: &Deliverer, max: usize) -> Result<Stepped, QueueError> {
    let jobs = queue.take(max).await?;
    let mut stepped = Stepped {
        taken: jobs.len(),
        ..Stepped::default()
    };
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut running = Vec::new();
    for taken in jobs {
        let settlement = match deliverer.dispatch(&taken) {
            Dispatch::Run(delivery) => {
                running.push(async move {
                    let settlement = deliverer.run(delivery).await;
                    Settled { taken, settlement }
                });
                continue;
            }
            Dispatch::Park(settlement) => {
                stepped.parked += 1;
                settlement
            }
            Dispatch::Dead(settlement) => {
                stepped.dead += 1;
                settlement
            }
        };
        outcomes.push(Settled { taken, settlement });
    }
    stepped.ran = running.len();
    outcomes.extend(futures_util::future::join_all(running).await);
    stepped.settled = queue.settle(&outcomes).await?;
    Ok(stepped)
}

/// What the tasks of one consumer share.
struct Context {
    queue: WorkerQueue,
    deliverer: Arc<Deliverer>,
}

/// Consumes `queue` until `shutdown` is cancelled, then stops gracefully.
pub async fn run(
    queue: WorkerQueue,
    deliverer: Arc<Deliverer>,
    settings: Settings,
    shutdown: CancellationToken,
) -> Stopped {
    let ctx = Arc::new(Context { queue, deliverer });
    // Be registered and alive before taking anything, so no other worker
    // can mistake this one's fresh in-flight list for an orphan.
    if !first_heartbeat(&ctx, &shutdown).await {
        return Stopped::default();
    }
    let stop_housekeeping = CancellationToken::new();
    let housekeeping = tokio::spawn(housekeeping::housekeeping(
        ctx.clone(),
        settings.clone(),
        stop_housekeeping.clone(),
    ));
    // Room for every job the fetcher may hold (see `fetch`; each outcome
    // carries its job's slot) plus one batch, so a finished delivery never
    // waits to hand over its outcome (and is never cut short at shutdown
    // after its request was made).
    let (settle_tx, settle_rx) = mpsc::channel(2 * settings.concurrency + settings.batch);
    let settler = tokio::spawn(settling::settler(ctx.clone(), settle_rx, settings.batch));

    let mut deliveries = JoinSet::new();
    taking::fetch(&ctx, &settings, &mut deliveries, &settle_tx, &shutdown).await;
    drop(settle_tx);

    log::info!(
        "shutting down: no longer taking jobs; waiting up to {} ms for {} deliveries in flight",
        settings.shutdown_grace.as_millis(),
        deliveries.len()
    );
    let grace = tokio::time::timeout(settings.shutdown_grace, async {
        while deliveries.join_next().await.is_some() {}
    });
    let cut_short = if grace.await.is_ok() { 0 } else { deliveries.len() };
    deliveries.shutdown().await;
    // The settler ends once the last delivery task has dropped its sender.
    if tokio::time::timeout(STOP_DEADLINE, settler).await.is_err() {
        log::warn!("could not record every outcome (redis unavailable); those jobs stay in flight and will be returned to the queue");
    }
    stop_housekeeping.cancel();
    let _ = housekeeping.await;
    let returned = settling::release(&ctx).await;
    Stopped { cut_short, returned }
}

async fn first_heartbeat(ctx: &Context, shutdown: &CancellationToken) -> bool {
    let mut backoff = BACKOFF_MIN;
    loop {
        if ctx.queue.heartbeat().await.is_ok() {
            return true;
        }
        if !pause(&mut backoff, shutdown).await {
            return false;
        }
    }
}

/// Sleeps for the current back-off (doubling it, up to the cap); false if
/// shutdown came first.
async fn pause(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}
