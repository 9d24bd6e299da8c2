//! The worker protocol: a worker takes jobs into its own in-flight list,
//! parks those of a full host and takes them back, keeps a heartbeat,
//! returns the jobs of workers whose heartbeat expired, promotes due
//! retries, and hands its jobs back when it stops. Settling is in
//! [`super::settle`]. Why nothing is lost is in `docs/ARCHITECTURE.md`.

use super::{Queue, QueueError, QueueKeys};
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/take.lua")));
static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/promote.lua")));
static RECLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/reclaim.lua")));
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/heartbeat.lua")));
static RETURN_IN_FLIGHT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/return_in_flight.lua")));
static UNPARK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/unpark.lua")));

/// The most jobs moved by one script call; far below Lua's `unpack` limit.
pub const MAX_BATCH: usize = 1000;

/// Takes up to `max` jobs (at most [`MAX_BATCH`]) into `worker`'s in-flight
/// list without waiting, and returns them oldest first. Restores the
/// worker's registration and heartbeat (for `heartbeat_ttl`) if Redis lost
/// them.
pub async fn take<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    max: usize,
    heartbeat_ttl: Duration,
) -> RedisResult<Vec<Vec<u8>>> {
    TAKE.key(&keys.ready)
        .key(keys.inflight(worker))
        .key(&keys.workers)
        .key(keys.heartbeat(worker))
        .arg(max.clamp(1, MAX_BATCH))
        .arg(worker)
        .arg(heartbeat_ttl.as_millis() as u64)
        .invoke_async(conn)
        .await
}

/// Takes up to `max` jobs like [`take`], first waiting up to `wait` for one
/// if the queue is empty (`BLMOVE`), so an idle worker wakes as soon as a
/// job arrives without polling. One round trip either way: the take of the
/// rest is pipelined behind the `BLMOVE`, which Redis answers first (at
/// once when there are jobs, else when one arrives or the wait ends), so a
/// steady trickle of jobs costs one call per job rather than a wait and a
/// take that finds nothing. The connection's response timeout must exceed
/// `wait`.
pub async fn take_waiting<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    max: usize,
    heartbeat_ttl: Duration,
    wait: Duration,
) -> RedisResult<Vec<Vec<u8>>> {
    let inflight = keys.inflight(worker);
    let mut first = redis::cmd("BLMOVE");
    first
        .arg(&keys.ready)
        .arg(&inflight)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(wait.as_secs_f64());
    let rest = max.clamp(1, MAX_BATCH) - 1;
    if rest == 0 {
        return match first.query_async::<Option<Vec<u8>>>(conn).await {
            Ok(one) => Ok(one.into_iter().collect()),
            // Refused (a full Redis refuses BLMOVE, a denyoom write): the
            // take script is allowed then, and takes the job if there is
            // one; with none, the refusal stands (the caller backs off).
            Err(refused) if refused.code().is_some() => {
                let jobs = take(conn, keys, worker, 1, heartbeat_ttl).await?;
                if jobs.is_empty() {
                    Err(refused)
                } else {
                    Ok(jobs)
                }
            }
            Err(e) => Err(e),
        };
    }
    let mut take_rest = TAKE.key(&keys.ready);
    take_rest
        .key(&inflight)
        .key(&keys.workers)
        .key(keys.heartbeat(worker))
        .arg(rest)
        .arg(worker)
        .arg(heartbeat_ttl.as_millis() as u64);
    let (first, more): (RedisResult<redis::Value>, RedisResult<redis::Value>) = redis::pipe()
        .add_command(first)
        .invoke_script(&take_rest)
        .ignore_errors()
        .query_async(conn)
        .await?;
    let first = first.and_then(parse::<Option<Vec<u8>>>);
    let more = match more.and_then(parse::<Vec<Vec<u8>>>) {
        // Redis lost its script cache (a restart, a failover): the take
        // loads it and goes again.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            take(conn, keys, worker, rest, heartbeat_ttl).await
        }
        more => more,
    };
    match (first, more) {
        (Ok(one), Ok(more)) => Ok(one.into_iter().chain(more).collect()),
        // Refused as above, while the take script ran: its jobs are all
        // there is.
        (Err(_), Ok(more)) if !more.is_empty() => Ok(more),
        // Even with a job from BLMOVE: a failed take is one that may have
        // moved jobs, and the caller returns its in-flight list's orphans.
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn parse<T: redis::FromRedisValue>(value: redis::Value) -> RedisResult<T> {
    Ok(redis::from_redis_value(value)?)
}

/// Hosts with parked jobs: up to `max` of them, picked at random so that
/// every host gets its turn when there are more.
pub async fn parked_hosts<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, max: usize) -> RedisResult<Vec<String>> {
    redis::cmd("ZRANDMEMBER")
        .arg(&keys.parked)
        .arg(max.clamp(1, MAX_BATCH))
        .query_async(conn)
        .await
}

/// Moves parked jobs into `worker`'s in-flight list: for each `(host, n)`,
/// up to `n` of that host's oldest. Restores the worker's registration and
/// heartbeat like [`take`]. Returns the jobs moved.
pub async fn unpark<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    heartbeat_ttl: Duration,
    wanted: &[(String, usize)],
) -> RedisResult<Vec<Vec<u8>>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut call = UNPARK.prepare_invoke();
    call.key(keys.inflight(worker))
        .key(&keys.workers)
        .key(keys.heartbeat(worker))
        .key(&keys.parked)
        .arg(worker)
        .arg(heartbeat_ttl.as_millis() as u64);
    for (host, n) in wanted {
        call.key(keys.parked_list(host)).arg(host).arg((*n).clamp(1, MAX_BATCH));
    }
    call.invoke_async(conn).await
}

/// Moves up to `max` due retries back to the ready list. Returns how many.
pub async fn promote_due<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, max: usize) -> RedisResult<u64> {
    PROMOTE
        .key(&keys.retry)
        .key(&keys.ready)
        .arg(max.clamp(1, MAX_BATCH))
        .invoke_async(conn)
        .await
}

/// Marks `worker` alive for `ttl` and registers it in the worker set.
pub async fn heartbeat<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    ttl: Duration,
) -> RedisResult<()> {
    // A script, not a pipeline, for its allow-oom flag.
    HEARTBEAT
        .key(keys.heartbeat(worker))
        .key(&keys.workers)
        .arg(ttl.as_millis() as u64)
        .arg(worker)
        .invoke_async::<()>(conn)
        .await
}

/// Returns the in-flight jobs of every registered worker whose heartbeat
/// has expired to the ready list. Returns how many jobs were returned.
pub async fn reclaim_dead_workers<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, me: &str) -> RedisResult<u64> {
    let workers: Vec<String> = redis::cmd("SMEMBERS").arg(&keys.workers).query_async(conn).await?;
    let mut returned = 0;
    for worker in workers.iter().filter(|w| *w != me) {
        let moved = reclaim(conn, keys, worker).await?;
        if moved > 0 {
            log::warn!("worker {worker} stopped heartbeating; returned its {moved} in-flight jobs to the queue");
            returned += moved as u64;
        }
    }
    Ok(returned)
}

/// A stopping worker hands back its unsettled jobs: it drops its heartbeat
/// and reclaims its own in-flight list. Returns how many jobs it returned.
pub async fn release<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, worker: &str) -> RedisResult<u64> {
    redis::cmd("DEL")
        .arg(keys.heartbeat(worker))
        .query_async::<()>(conn)
        .await?;
    Ok(reclaim(conn, keys, worker).await?.max(0) as u64)
}

/// Hands all of a running `worker`'s in-flight jobs back to the queue,
/// keeping its heartbeat and registration. Only for a worker that holds none
/// of them in memory: it recovers the jobs of a take whose answer was lost,
/// which no other worker would return while this one is alive. Returns how
/// many jobs it returned.
pub async fn return_in_flight<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, worker: &str) -> RedisResult<u64> {
    RETURN_IN_FLIGHT
        .key(keys.inflight(worker))
        .key(&keys.ready)
        .invoke_async(conn)
        .await
}

async fn reclaim<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, worker: &str) -> RedisResult<i64> {
    RECLAIM
        .key(keys.heartbeat(worker))
        .key(keys.inflight(worker))
        .key(&keys.ready)
        .key(&keys.workers)
        .arg(worker)
        .invoke_async(conn)
        .await
}

impl Queue {
    /// This worker's view of each of the `POSTBACK_SHARDS` shards, to
    /// consume it.
    pub fn workers(&self, id: &str, heartbeat_ttl: Duration) -> Vec<WorkerQueue> {
        self.state
            .shards
            .iter()
            .map(|keys| self.worker(keys.clone(), id, heartbeat_ttl))
            .collect()
    }

    /// This worker's view of the shard with `keys`, which may be one that
    /// is no longer pushed to (see [`Queue::every_shard`]).
    pub fn worker(&self, keys: QueueKeys, id: &str, heartbeat_ttl: Duration) -> WorkerQueue {
        WorkerQueue {
            queue: self.clone(),
            keys: Arc::new(keys),
            id: id.to_string(),
            heartbeat_ttl,
        }
    }
}

/// One worker's operations on one shard: taking, settling, parking, its
/// heartbeat and the recovery of other workers' jobs.
#[derive(Clone)]
pub struct WorkerQueue {
    pub(super) queue: Queue,
    keys: Arc<QueueKeys>,
    pub(super) id: String,
    heartbeat_ttl: Duration,
}

impl WorkerQueue {
    pub(super) fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// The shard's hash tag, for log lines.
    pub fn shard(&self) -> &str {
        self.keys.tag()
    }

    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The same view with a connection of its own (see [`Queue::handle`]).
    pub fn handle(&self) -> WorkerQueue {
        WorkerQueue {
            queue: self.queue.handle(),
            ..self.clone()
        }
    }

    /// Takes up to `max` jobs (at most [`MAX_BATCH`]) into this worker's
    /// in-flight list without waiting, oldest first.
    pub async fn take(&self, max: usize) -> Result<Vec<Vec<u8>>, QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("take", Duration::ZERO, async move |mut conn| {
                take(&mut conn, keys, id, max, ttl).await
            })
            .await
    }

    /// Takes up to `max` jobs into this worker's in-flight list, waiting up
    /// to `wait` for the first if the queue is empty: one round trip. Give
    /// it a handle of its own: the wait holds the connection.
    pub async fn take_waiting(&self, max: usize, wait: Duration) -> Result<Vec<Vec<u8>>, QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("take", wait, async move |mut conn| {
                take_waiting(&mut conn, keys, id, max, ttl, wait).await
            })
            .await
    }

    /// Up to `max` hosts with parked jobs, picked at random.
    pub async fn parked_hosts(&self, max: usize) -> Result<Vec<String>, QueueError> {
        let keys = self.keys();
        self.queue
            .run("unpark", Duration::ZERO, async move |mut conn| {
                parked_hosts(&mut conn, keys, max).await
            })
            .await
    }

    /// Moves up to `n` parked jobs of each `(host, n)` into the in-flight
    /// list. Returns the jobs moved.
    pub async fn unpark(&self, wanted: &[(String, usize)]) -> Result<Vec<Vec<u8>>, QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("unpark", Duration::ZERO, async move |mut conn| {
                unpark(&mut conn, keys, id, ttl, wanted).await
            })
            .await
    }

    /// Marks this worker alive and registered.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("heartbeat", Duration::ZERO, async move |mut conn| {
                heartbeat(&mut conn, keys, id, ttl).await
            })
            .await
    }

    /// One housekeeping round in one go: the heartbeat if `beat`, the
    /// recovery of dead workers' jobs if `reclaim`, and every due retry
    /// moved back to the ready list.
    pub async fn housekeeping(&self, beat: bool, reclaim: bool) -> Result<(), QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("housekeeping", Duration::ZERO, async move |mut conn| {
                if beat {
                    heartbeat(&mut conn, keys, id, ttl).await?;
                }
                if reclaim {
                    reclaim_dead_workers(&mut conn, keys, id).await?;
                }
                while promote_due(&mut conn, keys, MAX_BATCH).await? == MAX_BATCH as u64 {}
                Ok(())
            })
            .await
    }

    /// Hands back all of this worker's in-flight jobs while it holds none
    /// in memory (see [`return_in_flight()`]).
    pub async fn return_in_flight(&self) -> Result<u64, QueueError> {
        let (keys, id) = (self.keys(), self.id.as_str());
        self.queue
            .run("return orphans", Duration::ZERO, async move |mut conn| {
                return_in_flight(&mut conn, keys, id).await
            })
            .await
    }

    /// A stopping worker's unsettled jobs back to the queue.
    pub async fn release(&self) -> Result<u64, QueueError> {
        let (keys, id) = (self.keys(), self.id.as_str());
        self.queue
            .run("release", Duration::ZERO, async move |mut conn| {
                release(&mut conn, keys, id).await
            })
            .await
    }
}
