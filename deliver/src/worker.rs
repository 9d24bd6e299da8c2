//! The worker loop: take jobs, deliver them concurrently, settle outcomes.
//!
//! Four activities run side by side in one process:
//! - the *fetcher* takes batches of jobs into this worker's in-flight list
//!   (at most twice `DELIVER_CONCURRENCY` in memory), or blocks on Redis
//!   for one job when the queue is empty, so an idle worker costs nothing;
//!   it parks a job whose host is saturated, and takes parked jobs back
//!   once their host has room ([`crate::hosts`], `common::queue`);
//! - one *delivery task* per job waits for a slot of its host and a global
//!   one, makes the request, logs the attempt and hands the outcome to the
//!   settler;
//! - the *settler* records outcomes in batches, one script call for many
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

use crate::client::HttpClient;
use crate::config::Config;
use crate::delivery_log::{DeliveryLog, Record};
use crate::metrics::{AttemptRecord, Metrics};
use crate::retry::{RetryPolicy, Verdict};
use bytes::Bytes;
use common::job::{DeadLetter, DeadReason, Job};
use common::queue::{self, QueueKeys, Settlement};
use common::redis_pool::{Outage, Shared};
use deadpool_redis::redis::{aio::MultiplexedConnection, RedisResult};
use deadpool_redis::Pool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long an idle fetcher blocks on Redis for a new job per call.
const BLOCK_WAIT: Duration = Duration::from_secs(1);
/// Back-off bounds while Redis is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// The Redis pool could not be built.
    #[error("redis: {0}")]
    Redis(String),
    /// The admin listener could not bind.
    #[error("cannot listen on DELIVER_ADMIN_BIND {0}: {1}")]
    Admin(std::net::SocketAddr, std::io::Error),
}

/// What a worker did when it stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Deliveries still running when the grace period ended.
    pub cut_short: usize,
    /// Jobs handed back to the queue.
    pub returned: u64,
}

/// Everything the tasks of one worker share.
struct Context {
    id: String,
    keys: QueueKeys,
    /// For the fetcher's own connection (its blocking take must not hold
    /// up other commands).
    pool: Pool,
    /// Shared by every other task.
    redis: Arc<Shared>,
    client: HttpClient,
    policy: RetryPolicy,
    log: DeliveryLog,
    outage: Arc<Outage>,
    metrics: Arc<Metrics>,
    unmatched_default: String,
    heartbeat_ttl: Duration,
    hosts: crate::hosts::Hosts,
}

impl Context {
    /// Runs `op` on the shared Redis connection and records the outcome for
    /// outage logging; after an error the connection is dropped, so the
    /// next operation reconnects.
    async fn redis<T, Fut>(&self, what: &str, op: impl FnOnce(MultiplexedConnection) -> Fut) -> Result<T, String>
    where
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let result = match self.redis.get().await {
            Ok(conn) => op(conn).await.map_err(|e| {
                self.redis.failed(&e);
                e.to_string()
            }),
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.outage.succeeded(),
            Err(e) => self.outage.failed(what, e),
        }
        result
    }
}

/// A unique id for this process: host, pid and a random suffix (a restarted
/// process must never take over a predecessor's in-flight list while that
/// list may still be in use).
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    format!("{}-{}-{:04x}", host.trim(), std::process::id(), fastrand::u16(..))
}

/// Runs a worker until `shutdown` is cancelled, then stops gracefully.
pub async fn run(config: &Config, log: DeliveryLog, shutdown: CancellationToken) -> Result<Stopped, StartError> {
    let client = HttpClient::new(
        config.timeout,
        config.log_body_max,
        config.concurrency,
        config.extra_ca_file.as_deref(),
    )?;
    // Commands must be allowed to outlast the blocking take.
    let pool = common::redis_pool::connect(&config.redis_url, 8, BLOCK_WAIT + Duration::from_secs(4))
        .map_err(StartError::Redis)?;
    let ctx = Arc::new(Context {
        id: new_worker_id(),
        keys: QueueKeys::new(&config.queue),
        redis: Arc::new(Shared::new(pool.clone())),
        pool,
        client,
        policy: RetryPolicy {
            schedule: config.retry_schedule.clone(),
            jitter_pct: config.retry_jitter_pct,
            retry_after_max: config.retry_after_max,
        },
        log,
        outage: Arc::new(Outage::new(&config.redis_url)),
        metrics: Arc::new(Metrics::new()),
        unmatched_default: config.unmatched_default.clone(),
        heartbeat_ttl: config.heartbeat_ttl,
        hosts: crate::hosts::Hosts::new(config.per_host_concurrency),
    });
    log::info!(
        "deliver worker {} started on queue {:?} (concurrency {}, timeout {} ms)",
        ctx.id,
        config.queue,
        config.concurrency,
        config.timeout.as_millis()
    );

    let admin = crate::admin::bind(config.admin_bind)
        .await
        .map_err(|e| StartError::Admin(config.admin_bind, e))?;
    log::info!(
        "admin listening on {} (/metrics, /health, /stats)",
        admin
            .local_addr()
            .map_err(|e| StartError::Admin(config.admin_bind, e))?
    );
    let admin = tokio::spawn(crate::admin::serve(
        admin,
        Arc::new(crate::admin::AdminState {
            metrics: ctx.metrics.clone(),
            outage: ctx.outage.clone(),
            worker: ctx.id.clone(),
        }),
    ));

    // Be registered and alive before taking anything, so no other worker
    // can mistake this one's fresh in-flight list for an orphan.
    if !first_heartbeat(&ctx, &shutdown).await {
        admin.abort();
        return Ok(Stopped::default());
    }
    let stop_stats = CancellationToken::new();
    let stats = tokio::spawn(crate::metrics::flush_stats(
        ctx.metrics.clone(),
        ctx.redis.clone(),
        ctx.keys.clone(),
        stop_stats.clone(),
    ));
    let stop_housekeeping = CancellationToken::new();
    let housekeeping = tokio::spawn(housekeeping(ctx.clone(), config.clone(), stop_housekeeping.clone()));
    // Room for every job the fetcher may hold (see `fetch`; each outcome
    // carries its job's slot) plus one batch, so a finished delivery never
    // waits to hand over its outcome (and is never cut short at shutdown
    // after its request was made).
    let (settle_tx, settle_rx) = mpsc::channel(2 * config.concurrency + config.batch);
    let settler = tokio::spawn(settler(ctx.clone(), settle_rx, config.batch));

    let mut deliveries = JoinSet::new();
    fetch(&ctx, config, &mut deliveries, &settle_tx, &shutdown).await;
    drop(settle_tx);

    log::info!(
        "shutting down: no longer taking jobs; waiting up to {} ms for {} deliveries in flight",
        config.shutdown_grace.as_millis(),
        deliveries.len()
    );
    let grace = tokio::time::timeout(config.shutdown_grace, async {
        while deliveries.join_next().await.is_some() {}
    });
    let cut_short = if grace.await.is_ok() { 0 } else { deliveries.len() };
    deliveries.shutdown().await;
    // The settler ends once the last delivery task has dropped its sender.
    if tokio::time::timeout(BACKOFF_MAX, settler).await.is_err() {
        log::warn!("could not record every outcome (redis unavailable); those jobs stay in flight and will be returned to the queue");
    }
    stop_housekeeping.cancel();
    let _ = housekeeping.await;
    stop_stats.cancel();
    let _ = tokio::time::timeout(BACKOFF_MAX, stats).await;
    let returned = release(&ctx).await;
    admin.abort();
    log::info!("stopped: {cut_short} deliveries cut short by the grace period, {returned} unsettled jobs returned to the queue");
    Ok(Stopped { cut_short, returned })
}

async fn first_heartbeat(ctx: &Context, shutdown: &CancellationToken) -> bool {
    let mut backoff = BACKOFF_MIN;
    loop {
        let beat = ctx
            .redis("heartbeat", |mut conn| async move {
                queue::heartbeat(&mut conn, &ctx.keys, &ctx.id, &ctx.id, ctx.heartbeat_ttl).await
            })
            .await;
        if beat.is_ok() {
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
    config: &Config,
    deliveries: &mut JoinSet<()>,
    settle_tx: &mpsc::Sender<Handed>,
    shutdown: &CancellationToken,
) {
    // Jobs taken and not yet settled (waiting for their host, running, or
    // with the settler), and requests running: a job waiting for a busy host
    // holds no request slot.
    let all_slots = config.concurrency * 2;
    let slots = Arc::new(Semaphore::new(all_slots));
    let starter = Starter {
        ctx,
        running: Arc::new(Semaphore::new(config.concurrency)),
        settle_tx,
    };
    let mut backoff = BACKOFF_MIN;
    let mut conn = None;
    // A take failed after it may have reached Redis (see `return_orphans`).
    let mut unsure = false;
    let mut parked = Parked::new();
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
        let mut permits = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
        };

        let mut connection = match conn.take() {
            Some(c) => c,
            None => match ctx.pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    ctx.outage.failed("take", &e);
                    if !pause(&mut backoff, shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        if parked.due() {
            match unpark(ctx, &mut connection, &slots, permits, &mut parked).await {
                Ok((jobs, held)) => {
                    starter.start(jobs, held, deliveries).await;
                    conn = Some(connection);
                }
                Err(e) => {
                    unsure = true;
                    ctx.outage.failed("unpark", &e);
                    if !pause(&mut backoff, shutdown).await {
                        return;
                    }
                }
            }
            // The slot it started with may be in use now: begin again.
            continue;
        }
        let more = slots.available_permits().min(config.batch - 1);
        if more > 0 {
            if let Ok(extra) = slots.clone().try_acquire_many_owned(more as u32) {
                permits.merge(extra);
            }
        }
        let taken = queue::take(
            &mut connection,
            &ctx.keys,
            &ctx.id,
            permits.num_permits(),
            ctx.heartbeat_ttl,
        )
        .await;
        let jobs = match taken {
            Ok(taken) if !taken.is_empty() => taken,
            Ok(_) => {
                // Queue empty: wait in Redis for the next job (no longer
                // than until parked jobs are to be looked at). On shutdown
                // the wait is abandoned with its connection; a job it may
                // have moved is in our in-flight list and goes back on release.
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        drop(deadpool_redis::Connection::take(connection));
                        return;
                    }
                    one = queue::take_blocking(&mut connection, &ctx.keys, &ctx.id, parked.block_wait()) => match one {
                        Ok(one) => one.into_iter().collect(),
                        Err(e) => {
                            unsure = true;
                            ctx.outage.failed("take", &e);
                            if !pause(&mut backoff, shutdown).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            }
            Err(e) => {
                unsure = true;
                ctx.outage.failed("take", &e);
                if !pause(&mut backoff, shutdown).await {
                    return;
                }
                continue;
            }
        };
        ctx.outage.succeeded();
        backoff = BACKOFF_MIN;
        conn = Some(connection);
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
            .clamp(Duration::from_millis(10), BLOCK_WAIT)
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
    conn: &mut deadpool_redis::Connection,
    slots: &Arc<Semaphore>,
    first: OwnedSemaphorePermit,
    parked: &mut Parked,
) -> RedisResult<(Vec<Vec<u8>>, OwnedSemaphorePermit)> {
    let hosts = queue::parked_hosts(conn, &ctx.keys, UNPARK_HOSTS).await?;
    parked.looked(!hosts.is_empty());
    let mut free = (slots.available_permits() + 1).min(queue::MAX_BATCH);
    let mut wanted = Vec::new();
    for host in hosts {
        let n = ctx.hosts.room(&host).min(free);
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
    let jobs = queue::unpark(conn, &ctx.keys, &ctx.id, ctx.heartbeat_ttl, &wanted).await?;
    ctx.metrics.unparked(jobs.len());
    Ok((jobs, held))
}

/// Starts the delivery of jobs taken into the in-flight list.
struct Starter<'a> {
    ctx: &'a Arc<Context>,
    running: Arc<Semaphore>,
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
        let ctx = self.ctx;
        let mut parked = 0;
        for raw in jobs {
            let permit = permits.split(1).expect("one slot per job taken");
            let job = match Job::decode(&raw) {
                Ok(job) => job,
                Err(error) => {
                    deliveries.spawn(settle_after(
                        malformed(ctx.clone(), raw, error.to_string()),
                        permit,
                        self.settle_tx.clone(),
                    ));
                    continue;
                }
            };
            let mut url = String::with_capacity(job.url.len() + 64);
            common::template::render_into(&mut url, &job.url, &job.fields(), &ctx.unmatched_default);
            let host = crate::hosts::host_of(&url);
            let gate = ctx.hosts.gate(host);
            if !gate.try_queue() {
                // Its host has all it may have in flight and waiting: the
                // job waits in Redis, not in a slot.
                ctx.metrics.parked();
                parked += 1;
                let host = host.to_string();
                let _ = self
                    .settle_tx
                    .send((Settlement::Park { taken: raw, host }, permit))
                    .await;
                continue;
            }
            let delivery = deliver(ctx.clone(), job, url, raw, gate, self.running.clone());
            deliveries.spawn(settle_after(delivery, permit, self.settle_tx.clone()));
        }
        parked
    }
}

/// An outcome on its way to Redis with its job's slot, which the settler
/// gives back once the outcome is recorded: while a slot is out, its job is
/// in this worker's in-flight list on this worker's behalf.
type Handed = (Settlement, OwnedSemaphorePermit);

/// Runs `work` and hands its outcome, with the job's slot, to the settler.
async fn settle_after(
    work: impl std::future::Future<Output = Settlement>,
    slot: OwnedSemaphorePermit,
    settle: mpsc::Sender<Handed>,
) {
    let settlement = work.await;
    let _ = settle.send((settlement, slot)).await;
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
) -> Option<Result<(), String>> {
    let everything = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return None,
        all = slots.clone().acquire_many_owned(all_slots as u32) => all.expect("the slot semaphore is never closed"),
    };
    let returned = ctx
        .redis("return orphans", |mut conn| async move {
            queue::return_in_flight(&mut conn, &ctx.keys, &ctx.id).await
        })
        .await;
    drop(everything);
    Some(returned.map(|n| {
        if n > 0 {
            log::warn!("returned {n} jobs to the queue that a take whose answer was lost had left in this worker's in-flight list");
        }
    }))
}

/// Waits for a request slot of the job's host and a global one, then makes
/// the attempt.
async fn deliver(
    ctx: Arc<Context>,
    job: Job,
    url: String,
    raw: Vec<u8>,
    gate: Arc<crate::hosts::Gate>,
    running: Arc<Semaphore>,
) -> Settlement {
    let _host = gate.enter().await;
    let _running = running.acquire().await.expect("the running semaphore is never closed");
    let _in_flight = ctx.metrics.start_delivery();
    attempt(&ctx, job, url, raw).await
}

async fn attempt(ctx: &Context, job: Job, url: String, raw: Vec<u8>) -> Settlement {
    let body = job
        .method
        .has_body()
        .then(|| Bytes::copy_from_slice(job.data.get().as_bytes()));
    let outcome = ctx.client.send(job.method, &url, body).await;
    let verdict = ctx.policy.decide(job.attempt, &outcome);

    let (status, response_body) = match &outcome.result {
        Ok(answer) => (answer.status.to_string(), answer.body.as_str()),
        Err(failure) => (failure.kind.as_str().to_string(), failure.message.as_str()),
    };
    let (label, retry_in_ms) = match verdict {
        Verdict::Delivered => ("delivered", None),
        Verdict::Retry(delay) => ("retry", Some(delay.as_millis() as u64)),
        Verdict::Final | Verdict::Exhausted => ("dead", None),
    };
    let now = common::now_ms();
    ctx.log.write(&Record {
        delivery_time_ms: now,
        id: &job.id,
        attempt: job.attempt,
        method: job.method.as_str(),
        url: &url,
        status: &status,
        response_ms: outcome.elapsed.as_millis() as u64,
        response_body,
        outcome: label,
        retry_in_ms,
        request_id: job.request_id.as_deref(),
    });

    let failed = verdict != Verdict::Delivered;
    ctx.metrics.attempt(&AttemptRecord {
        outcome: match verdict {
            Verdict::Delivered => common::stats::Outcome::Delivered,
            Verdict::Retry(_) => common::stats::Outcome::Retry,
            Verdict::Final | Verdict::Exhausted => common::stats::Outcome::Dead,
        },
        status: outcome.result.as_ref().ok().map(|a| a.status),
        response: outcome.elapsed,
        enqueued_at_ms: job.enqueued_at,
        now_ms: now,
        dead_reason: Some(if verdict == Verdict::Final {
            "final_status"
        } else {
            "retries_exhausted"
        }),
        failure: failed.then_some((
            job.id.as_str(),
            job.method.as_str(),
            url.as_str(),
            status.as_str(),
            response_body,
        )),
    });

    match verdict {
        Verdict::Delivered => Settlement::Ack { taken: raw },
        Verdict::Retry(delay) => {
            let next = Job {
                attempt: job.attempt + 1,
                ..job
            }
            .encode();
            Settlement::Retry {
                taken: raw,
                next,
                delay,
            }
        }
        Verdict::Final | Verdict::Exhausted => {
            let reason = if verdict == Verdict::Final {
                DeadReason::FinalStatus
            } else {
                DeadReason::RetriesExhausted
            };
            let detail = (!response_body.is_empty()).then(|| response_body.to_string());
            let letter = DeadLetter {
                id: job.id.clone(),
                reason,
                attempts: job.attempt,
                last_status: status,
                method: Some(job.method),
                url: Some(url),
                detail,
                dead_at: now,
                job: Some(job),
                raw: None,
            };
            Settlement::Dead {
                taken: raw,
                letter: Box::new(letter),
            }
        }
    }
}

/// A queued string that is not a job: keep it aside, never retry it.
async fn malformed(ctx: Arc<Context>, raw: Vec<u8>, error: String) -> Settlement {
    let error = error.as_str();
    let text = String::from_utf8_lossy(&raw).into_owned();
    // Keep the producer's id when there is one, so it can be traced.
    let id = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
        .unwrap_or_else(Job::new_id);
    let now = common::now_ms();
    log::warn!("malformed job {id} moved to the dead letters: {error}");
    ctx.metrics.dead("malformed");
    ctx.log.write(&Record {
        delivery_time_ms: now,
        id: &id,
        attempt: 0,
        method: "-",
        url: "-",
        status: "malformed",
        response_ms: 0,
        response_body: error,
        outcome: "dead",
        retry_in_ms: None,
        request_id: None,
    });
    let letter = DeadLetter {
        id,
        reason: DeadReason::Malformed,
        attempts: 0,
        last_status: "malformed".into(),
        method: None,
        url: None,
        detail: Some(error.to_string()),
        dead_at: now,
        job: None,
        raw: Some(text),
    };
    Settlement::Dead {
        taken: raw,
        letter: Box::new(letter),
    }
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
            let (keys, id, outcomes) = (&ctx.keys, &ctx.id, &batch);
            let result = ctx
                .redis("settle", |mut conn| async move {
                    queue::settle(&mut conn, keys, id, outcomes).await
                })
                .await;
            match result {
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
async fn housekeeping(ctx: Arc<Context>, config: Config, stop: CancellationToken) {
    let mut tick = tokio::time::interval(config.poll_every.min(config.heartbeat_every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_heartbeat = Instant::now() + config.heartbeat_every;
    // Recover right away at start: a predecessor may have crashed.
    let mut next_reclaim = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let (beat, reclaim) = (now >= next_heartbeat, now >= next_reclaim);
        let ctx_ref = &*ctx;
        let done = ctx
            .redis("housekeeping", |mut conn| async move {
                if beat {
                    queue::heartbeat(
                        &mut conn,
                        &ctx_ref.keys,
                        &ctx_ref.id,
                        &ctx_ref.id,
                        ctx_ref.heartbeat_ttl,
                    )
                    .await?;
                }
                if reclaim {
                    queue::reclaim_dead_workers(&mut conn, &ctx_ref.keys, &ctx_ref.id).await?;
                }
                while queue::promote_due(&mut conn, &ctx_ref.keys, queue::MAX_BATCH).await? == queue::MAX_BATCH as u64 {
                }
                Ok(())
            })
            .await;
        if done.is_ok() {
            if beat {
                next_heartbeat = now + config.heartbeat_every;
            }
            if reclaim {
                next_reclaim = now + config.heartbeat_every;
                ctx.hosts.prune();
            }
        }
    }
}

/// Hands this worker's unsettled jobs back to the queue, trying for a
/// little while if Redis is away (after that the heartbeat expires and
/// another worker does it).
async fn release(ctx: &Context) -> u64 {
    let deadline = Instant::now() + BACKOFF_MAX;
    let mut backoff = BACKOFF_MIN;
    let never = CancellationToken::new();
    loop {
        let result = ctx
            .redis("release", |mut conn| async move {
                queue::release(&mut conn, &ctx.keys, &ctx.id).await
            })
            .await;
        match result {
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
