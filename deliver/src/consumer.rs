//! A consumer: takes jobs from one shard of the queue, hands them to the
//! [`Deliverer`], and settles their outcomes. One runs per shard; they share
//! the process's `Deliverer` (its client and limits).
//!
//! Four activities run side by side:
//! - the *fetcher* takes batches of jobs into this worker's in-flight list
//!   (at most twice `DELIVER_CONCURRENCY` in memory, over all the
//!   process's consumers), or blocks on Redis
//!   for one job when the queue is empty, so an idle worker costs nothing;
//!   it parks a job whose host is saturated, and takes parked jobs back
//!   once their host has room ([`crate::hosts`]);
//! - one *delivery task* per job waits for a slot of its host and a global
//!   one, and makes the attempt ([`Deliverer::deliver_gated`]), whose
//!   outcome goes to the settler;
//! - the *settler* records outcomes in batches, one round trip for many
//!   jobs (acknowledge, schedule a retry, dead-letter, or park);
//! - *housekeeping* keeps the heartbeat alive, returns the jobs of dead
//!   workers to the queue, and moves due retries back to it.
//!
//! On shutdown the fetcher stops, deliveries in flight get the grace period,
//! outcomes are settled, and whatever is still unsettled goes back to the
//! queue. A crash skips all that; the in-flight list in Redis is then
//! returned by the other workers (or this one's successor) once the
//! heartbeat expires. A take whose answer was lost is the one case a live
//! worker must clean up after itself (see `return_orphans`).

use crate::deliverer::Deliverer;
use common::job::Job;
use common::queue::{Settled, Settlement, WorkerQueue, MAX_BATCH};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
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
/// shards' consumers share the process's slots, each freed slot wakes one
/// of them, and each took what was free at that moment: with three shards
/// a take moved a third as many jobs as one consumer's would, and each
/// Redis master paid its per-call cost three times as often per job
/// (docs/PERFORMANCE.md). A backlog means jobs wait in Redis anyway, and
/// the process holds twice as many jobs as it has requests running, so a
/// few milliseconds here cost no delivery time.
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
    /// per shard, six consumers took six times what the process's hosts had
    /// room for, and parked the surplus in Redis only to take it back.
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
    let housekeeping = tokio::spawn(housekeeping(ctx.clone(), settings.clone(), stop_housekeeping.clone()));
    // Room for every job the fetcher may hold (see `fetch`; each outcome
    // carries its job's slot) plus one batch, so a finished delivery never
    // waits to hand over its outcome (and is never cut short at shutdown
    // after its request was made).
    let (settle_tx, settle_rx) = mpsc::channel(2 * settings.concurrency + settings.batch);
    let settler = tokio::spawn(settler(ctx.clone(), settle_rx, settings.batch));

    let mut deliveries = JoinSet::new();
    fetch(&ctx, &settings, &mut deliveries, &settle_tx, &shutdown).await;
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
    let returned = release(&ctx).await;
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

/// Takes jobs while there are free delivery slots, until shutdown.
async fn fetch(
    ctx: &Arc<Context>,
    settings: &Settings,
    deliveries: &mut JoinSet<()>,
    settle_tx: &mpsc::Sender<Handed>,
    shutdown: &CancellationToken,
) {
    // Jobs taken and not yet settled (waiting for their host, running, or
    // with the settler), by every consumer of the process: a job waiting
    // for a busy host holds no request slot, only one of these.
    let all_slots = settings.concurrency * 2;
    let slots = settings.slots.clone();
    let starter = Starter { ctx, settle_tx };
    // A connection of its own: its blocking take must not hold up the
    // settler's and housekeeping's commands.
    let queue = ctx.queue.handle();
    let mut backoff = BACKOFF_MIN;
    // A take failed after it may have reached Redis (see `return_orphans`).
    let mut unsure = false;
    let mut parked = Parked::new();
    // Whether the last take got all it asked for: the shard has a backlog.
    let mut backlog = false;
    loop {
        // Finished tasks keep a slot in the JoinSet until joined.
        while deliveries.try_join_next().is_some() {}
        if unsure {
            match return_orphans(ctx, &slots, all_slots, shutdown).await {
                None => return,
                Some(Ok(())) => unsure = false,
                Some(Err(_)) => {
                    if !pause(&mut backoff, shutdown).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(mut permits) = (tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            permit = slots.clone().acquire_owned() => permit.ok(),
        }) else {
            return;
        };

        if parked.due() {
            match unpark(ctx, &queue, &slots, permits, &mut parked).await {
                Ok((jobs, held)) => {
                    starter.start(jobs, held, deliveries).await;
                }
                Err(_) => {
                    unsure = true;
                    if !pause(&mut backoff, shutdown).await {
                        return;
                    }
                }
            }
            // The slot it started with may be in use now: begin again.
            continue;
        }
        let more = slots.available_permits().min(settings.batch - 1);
        if more > 0 {
            if let Ok(extra) = slots.clone().try_acquire_many_owned(more as u32) {
                permits.merge(extra);
            }
        }
        let wanted = settings.batch.saturating_sub(permits.num_permits());
        if backlog && wanted > 0 && !settings.fill_wait.is_zero() {
            let fill = slots.clone().acquire_many_owned(wanted as u32);
            if let Ok(Ok(extra)) = tokio::time::timeout(settings.fill_wait, fill).await {
                permits.merge(extra);
            }
        }
        let asked = permits.num_permits();
        let jobs = match queue.take(asked).await {
            Ok(taken) if !taken.is_empty() => {
                backlog = taken.len() == asked;
                Ok(taken)
            }
            // Queue empty: wait in Redis for the next job (no longer than
            // until parked jobs are to be looked at). On shutdown the wait
            // is abandoned; a job it may have moved is in our in-flight
            // list and goes back on release.
            Ok(_) => {
                backlog = false;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    one = queue.take_blocking(parked.block_wait()) => one.map(|one| one.into_iter().collect()),
                }
            }
            Err(e) => {
                backlog = false;
                Err(e)
            }
        };
        let Ok(jobs) = jobs else {
            unsure = true;
            if !pause(&mut backoff, shutdown).await {
                return;
            }
            continue;
        };
        backoff = BACKOFF_MIN;
        if starter.start(jobs, permits, deliveries).await > 0 {
            parked.seen();
        }
    }
}

/// When the fetcher looks at parked jobs: often while there are some (a
/// host's room comes back as its requests finish), seldom otherwise (only
/// to find those parked by a worker that has since stopped).
struct Parked {
    next: Instant,
    any: bool,
}

impl Parked {
    /// How often hosts with parked jobs are looked at.
    const EVERY: Duration = Duration::from_millis(100);
    /// The shortest blocking take while parked jobs are due soon.
    const SHORTEST_WAIT: Duration = Duration::from_millis(10);

    fn new() -> Self {
        Parked {
            next: Instant::now(),
            any: false,
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// This worker just parked a job: look again soon.
    fn seen(&mut self) {
        if !self.any {
            self.any = true;
            self.next = self.next.min(Instant::now() + Self::EVERY);
        }
    }

    /// After a look: `any` tells whether some host still has parked jobs.
    fn looked(&mut self, any: bool) {
        self.any = any;
        self.next = Instant::now() + if any { Self::EVERY } else { BLOCK_WAIT };
    }

    /// How long a blocking take may wait before parked jobs are due.
    fn block_wait(&self) -> Duration {
        if !self.any {
            return BLOCK_WAIT;
        }
        // Never 0: BLMOVE would wait forever.
        self.next
            .saturating_duration_since(Instant::now())
            .clamp(Self::SHORTEST_WAIT, BLOCK_WAIT)
    }
}

/// How many parked hosts one look considers (picked at random, so that all
/// get their turn when there are more).
const UNPARK_HOSTS: usize = 32;

/// Takes back parked jobs of hosts whose gates have room, as many as there
/// are free slots (`first` is one already held). Returns the jobs and their
/// slots.
async fn unpark(
    ctx: &Context,
    queue: &WorkerQueue,
    slots: &Arc<Semaphore>,
    first: OwnedSemaphorePermit,
    parked: &mut Parked,
) -> Result<(Vec<Vec<u8>>, OwnedSemaphorePermit), common::queue::QueueError> {
    let hosts = queue.parked_hosts(UNPARK_HOSTS).await?;
    parked.looked(!hosts.is_empty());
    let mut free = (slots.available_permits() + 1).min(MAX_BATCH);
    let mut wanted = Vec::new();
    for host in hosts {
        let n = ctx.deliverer.hosts().room(&host).min(free);
        if n > 0 {
            free -= n;
            wanted.push((host, n));
        }
    }
    let want: usize = wanted.iter().map(|(_, n)| n).sum();
    let mut held = first;
    if want > 1 {
        match slots.clone().try_acquire_many_owned(want as u32 - 1) {
            Ok(more) => held.merge(more),
            // Slots went meanwhile: take back what the one slot allows.
            Err(_) => {
                wanted.truncate(1);
                wanted[0].1 = 1;
            }
        }
    }
    let jobs = queue.unpark(&wanted).await?;
    ctx.deliverer.metrics().unparked(jobs.len());
    Ok((jobs, held))
}

/// Starts the delivery of jobs taken into the in-flight list.
struct Starter<'a> {
    ctx: &'a Arc<Context>,
    settle_tx: &'a mpsc::Sender<Handed>,
}

impl Starter<'_> {
    /// Starts a delivery task for each job (one slot of `permits` each; the
    /// slots left over are given back), or parks it if its host has all it
    /// may have in flight and waiting. Returns how many it parked.
    async fn start(
        &self,
        jobs: Vec<Vec<u8>>,
        mut permits: OwnedSemaphorePermit,
        deliveries: &mut JoinSet<()>,
    ) -> usize {
        let deliverer = &self.ctx.deliverer;
        let mut parked = 0;
        for taken in jobs {
            // One slot per job taken: the take asked for no more jobs than
            // `permits` holds.
            let Some(slot) = permits.split(1) else {
                log::error!("took more jobs than slots; the extra job stays in flight until this worker restarts");
                break;
            };
            let job = match Job::decode(&taken) {
                Ok(job) => job,
                Err(error) => {
                    let settlement = deliverer.malformed(&taken, &error.to_string());
                    let _ = self.settle_tx.send((Settled { taken, settlement }, slot)).await;
                    continue;
                }
            };
            let url = deliverer.url_of(&job);
            let host = crate::hosts::host_of(&url);
            let gate = deliverer.hosts().gate(host);
            if !gate.try_queue() {
                // Its host has all it may have in flight and waiting: the
                // job waits in Redis, not in a slot.
                deliverer.metrics().parked();
                parked += 1;
                let settlement = Settlement::Park { host: host.to_string() };
                let _ = self.settle_tx.send((Settled { taken, settlement }, slot)).await;
                continue;
            }
            let deliverer = deliverer.clone();
            let settle_tx = self.settle_tx.clone();
            deliveries.spawn(async move {
                let settlement = deliverer.deliver_gated(&job, url, &gate).await;
                let _ = settle_tx.send((Settled { taken, settlement }, slot)).await;
            });
        }
        parked
    }
}

/// An outcome on its way to Redis with its job's slot, which the settler
/// gives back once the outcome is recorded: while a slot is out, its job is
/// in this worker's in-flight list on this worker's behalf.
type Handed = (Settled, OwnedSemaphorePermit);

/// A take that failed may still have been carried out: Redis may have moved
/// the jobs into this worker's in-flight list and then died, or the
/// connection may have broken, before the answer arrived. Those jobs are in
/// no one's memory, and no other worker returns them while this one's
/// heartbeat goes on. So: wait until every job this worker holds is settled
/// (all slots back; deliveries in flight end within DELIVER_TIMEOUT_MS),
/// then whatever the in-flight list still has is such an orphan and goes
/// back to the queue. Taking pauses meanwhile; this happens only after
/// Redis errors. `None` if shutdown came first (the release at shutdown
/// then returns them).
async fn return_orphans(
    ctx: &Arc<Context>,
    slots: &Arc<Semaphore>,
    all_slots: usize,
    shutdown: &CancellationToken,
) -> Option<Result<(), common::queue::QueueError>> {
    let everything = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return None,
        all = slots.clone().acquire_many_owned(all_slots as u32) => all.ok(),
    };
    let returned = ctx.queue.return_in_flight().await;
    drop(everything);
    Some(returned.map(|n| {
        if n > 0 {
            log::warn!("returned {n} jobs to the queue that a take whose answer was lost had left in this worker's in-flight list");
        }
    }))
}

/// Records outcomes in batches until every sender is gone. A batch that
/// fails is retried as it is, so no outcome is dropped while Redis is away.
async fn settler(ctx: Arc<Context>, mut rx: mpsc::Receiver<Handed>, batch_max: usize) {
    let mut batch = Vec::with_capacity(batch_max);
    let mut slots = Vec::with_capacity(batch_max);
    let never = CancellationToken::new();
    while let Some((first, slot)) = rx.recv().await {
        batch.push(first);
        slots.push(slot);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok((next, slot)) => {
                    batch.push(next);
                    slots.push(slot);
                }
                Err(_) => break,
            }
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
async fn housekeeping(ctx: Arc<Context>, settings: Settings, stop: CancellationToken) {
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
                ctx.deliverer.hosts().prune();
            }
        } else {
            writing_since = None;
        }
    }
}

/// Hands this worker's unsettled jobs back to the queue, trying for a
/// little while if Redis is away (after that the heartbeat expires and
/// another worker does it).
async fn release(ctx: &Context) -> u64 {
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
