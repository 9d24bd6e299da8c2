//! Taking: the fetcher moves batches of jobs into this worker's in-flight
//! list while the process has free slots (waiting in Redis for the first
//! when the queue is empty), parks the jobs of full hosts, takes parked
//! jobs back once their host has room, and starts a delivery task for each
//! job that runs. Outcomes go to the settler ([`super::settling`]).

use super::settling::Handed;
use super::{pause, Context, Settings, BACKOFF_MIN, BLOCK_WAIT};
use crate::deliverer::Dispatch;
use common::queue::{QueueError, Settled, WorkerQueue, MAX_BATCH};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a worker whose delivery log cannot be written looks again.
const LOG_RECHECK: Duration = Duration::from_millis(200);

/// A take that waited this long for its job found an idle queue: the next
/// asks for one job alone (`BLMOVE`), the quickest answer when that job
/// arrives. Shorter waits mean jobs are flowing, and the next take also
/// takes whatever came with its first.
const IDLE_GAP: Duration = Duration::from_millis(5);

/// Takes no job until the delivery log takes lines again (a full disk):
/// every attempt must have its line, and lines wait in memory meanwhile,
/// so the deliveries in flight finish and no new one starts. False on
/// shutdown.
async fn hold_while_the_log_fails(ctx: &Context, shutdown: &CancellationToken) -> bool {
    log::warn!(
        "the delivery log cannot be written: taking no jobs until it can (deliveries in flight finish; their lines wait in memory)"
    );
    while !ctx.deliverer.log_writable() {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(LOG_RECHECK) => {}
        }
    }
    log::info!("the delivery log takes lines again: taking jobs");
    true
}

/// Takes jobs while there are free delivery slots, until shutdown.
pub(super) async fn fetch(
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
    // A connection of its own: its waiting take must not hold up the
    // settler's and housekeeping's commands.
    let queue = ctx.queue.handle();
    let mut backoff = BACKOFF_MIN;
    // A take failed after it may have reached Redis (see `return_orphans`).
    let mut unsure = false;
    let mut parked = Parked::new();
    // Whether the last take got all it asked for: the shard has a backlog.
    let mut backlog = false;
    // Whether the last take waited long for its job: the queue is idle.
    let mut idle = true;
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
        if !ctx.deliverer.log_writable() {
            if !hold_while_the_log_fails(ctx, shutdown).await {
                return;
            }
            continue;
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
        // Unless the last take found a backlog, the take waits in Redis for
        // the next job if the queue is empty (no longer than until parked
        // jobs are to be looked at). After a long wait it asks for that one
        // job alone: the take of more behind it would cost an idle queue's
        // next job some latency and find nothing. On shutdown the wait is
        // abandoned; a job it may have moved is in our in-flight list and
        // goes back on release.
        let jobs = if backlog {
            queue.take(asked).await
        } else {
            let started = Instant::now();
            let max = if idle { 1 } else { asked };
            let taken = tokio::select! {
                _ = shutdown.cancelled() => return,
                taken = queue.take_waiting(max, parked.block_wait()) => taken,
            };
            // One job (or none) after a long wait: the queue was empty. A
            // slow take that came back with several found jobs waiting.
            if let Ok(jobs) = &taken {
                idle = jobs.len() <= 1 && started.elapsed() >= IDLE_GAP;
            }
            taken
        };
        backlog = jobs.as_ref().is_ok_and(|taken| taken.len() == asked);
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
/// are free slots (`first` is one already held): for a rate-limited host
/// as many as it could lease, and one job of each host whose breaker's
/// probe this worker could claim. Returns the jobs and their slots.
async fn unpark(
    ctx: &Context,
    queue: &WorkerQueue,
    slots: &Arc<Semaphore>,
    first: OwnedSemaphorePermit,
    parked: &mut Parked,
) -> Result<(Vec<Vec<u8>>, OwnedSemaphorePermit), QueueError> {
    let hosts = queue.parked_hosts(UNPARK_HOSTS).await?;
    parked.looked(!hosts.is_empty());
    let free = (slots.available_permits() + 1).min(MAX_BATCH);
    let plan = ctx.deliverer.plan_unpark(hosts, free);
    let mut wanted = plan.wanted;
    let mut room = free - wanted.iter().map(|(_, n)| n).sum::<usize>();
    for (host, policy, n) in plan.leases {
        if room == 0 {
            break;
        }
        // Leased requests not spent within a moment lapse (see
        // `destinations::LEASE_VALID`), so lease only what is taken back.
        if let Ok(leased @ 1..) = queue.lease(&host, &policy, n.min(room)).await {
            ctx.deliverer.leased(&host, leased);
            wanted.push((host, leased));
            room -= leased;
        }
    }
    for host in plan.probes {
        if room == 0 {
            break;
        }
        // A claim refused (another worker holds it) or failed leaves the
        // host's jobs held.
        if let Ok(true) = queue.claim_probe(&host, ctx.deliverer.probe_timeout()).await {
            ctx.deliverer.probe_granted(&host);
            wanted.push((host, 1));
            room -= 1;
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
    ctx.deliverer.unparked(jobs.len());
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
            let settlement = match deliverer.dispatch(&taken) {
                Dispatch::Run(delivery) => {
                    let deliverer = deliverer.clone();
                    let settle_tx = self.settle_tx.clone();
                    deliveries.spawn(async move {
                        let settlement = deliverer.run(delivery).await;
                        let _ = settle_tx.send((Settled { taken, settlement }, slot)).await;
                    });
                    continue;
                }
                // Its host has all it may have in flight and waiting: the
                // job waits in Redis, not in a slot.
                Dispatch::Park(settlement) => {
                    parked += 1;
                    settlement
                }
                Dispatch::Dead(settlement) => settlement,
            };
            let _ = self.settle_tx.send((Settled { taken, settlement }, slot)).await;
        }
        parked
    }
}

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
) -> Option<Result<(), QueueError>> {
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
