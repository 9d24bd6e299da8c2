//! The queue protocol: every Redis key of a queue and every command on it,
//! over any one connection. [`super::Queue`] is how the services call it;
//! tests call these functions directly to set up and inspect a queue.
//!
//! The key table, the lifecycle of a job and why nothing is lost are in
//! `docs/ARCHITECTURE.md` (written once there). Two rules that shape the
//! code below:
//!
//! - every key of a queue carries the queue's name as a Redis Cluster hash
//!   tag (`postback:{q}:...`), so each script touches one slot;
//! - every script starts with `#!lua flags=allow-oom` (Redis 7): a full
//!   Redis (`maxmemory` reached, `noeviction`) must still let workers
//!   register, take, settle and hand back jobs, or a full queue could never
//!   be drained. The scripts only move or remove data; producers' `LPUSH`
//!   is refused when full.

use crate::job::DeadLetter;
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script, ScriptInvocation};
use std::sync::LazyLock;
use std::time::Duration;

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/take.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/settle.lua")));
static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/promote.lua")));
static RECLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/reclaim.lua")));
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/heartbeat.lua")));
static RETURN_IN_FLIGHT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/return_in_flight.lua")));
static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/replay.lua")));
static PURGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/purge.lua")));
static UNPARK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/unpark.lua")));
static DEPTHS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/depths.lua")));
static SHARDS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/shards.lua")));
static PUSH_IDEMPOTENT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/push_idempotent.lua")));

/// The most jobs moved by one script call; far below Lua's `unpack` limit.
pub const MAX_BATCH: usize = 1000;

/// The Redis keys of one named queue.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    prefix: String,
    /// Jobs waiting for delivery.
    pub ready: String,
    /// Jobs waiting for a retry, scored by due time.
    pub retry: String,
    /// Dead letters.
    pub dead: String,
    /// The header values of dead letters' jobs, by job id (a hash): kept
    /// out of the letters, which are for showing, and back in the job when
    /// it is replayed.
    pub dead_headers: String,
    /// Ids of workers that may own an in-flight list.
    pub workers: String,
    /// Hosts with parked jobs, each scored by how many.
    pub parked: String,
    /// Every shard's tag the queue has had (kept in shard 0's keys).
    pub shards: String,
}

impl QueueKeys {
    /// The keys of queue `name` (see the module table).
    pub fn new(name: &str) -> Self {
        let prefix = format!("postback:{{{name}}}");
        QueueKeys {
            ready: format!("{prefix}:ready"),
            retry: format!("{prefix}:retry"),
            dead: format!("{prefix}:dead"),
            dead_headers: format!("{prefix}:dead-headers"),
            workers: format!("{prefix}:workers"),
            parked: format!("{prefix}:parked"),
            shards: format!("{prefix}:shards"),
            prefix,
        }
    }

    /// The keys of shard `index` of `count` of queue `name` (see
    /// [`shard_tag`]).
    pub fn shard(name: &str, index: usize, count: usize) -> Self {
        QueueKeys::new(&shard_tag(name, index, count))
    }

    /// The hash tag's content: which slot the keys live in.
    pub fn tag(&self) -> &str {
        let start = self.prefix.find('{').map_or(0, |i| i + 1);
        let end = self.prefix.rfind('}').unwrap_or(self.prefix.len());
        &self.prefix[start..end]
    }

    /// The in-flight list of `worker`.
    pub fn inflight(&self, worker: &str) -> String {
        format!("{}:inflight:{worker}", self.prefix)
    }

    /// The parked jobs of `host` (`host:port`).
    pub fn parked_list(&self, host: &str) -> String {
        format!("{}:parked:{host}", self.prefix)
    }

    /// The record of an Idempotency-Key (its SHA-256, hex) of `producer`.
    pub fn idempotency(&self, producer: &str, key_hash: &str) -> String {
        format!("{}:idem:{producer}:{key_hash}", self.prefix)
    }

    /// The heartbeat key of `worker`.
    pub fn heartbeat(&self, worker: &str) -> String {
        format!("{}:heartbeat:{worker}", self.prefix)
    }

    /// The statistics of one second (Unix time).
    pub fn stats(&self, second: u64) -> String {
        format!("{}:stats:{second}", self.prefix)
    }

    /// The latest failed attempts.
    pub fn failures(&self) -> String {
        format!("{}:failures", self.prefix)
    }
}

/// The hash tag of shard `index` of `count`. Shard 0 is always the queue's
/// own name (`postback:{default}:…`, the keys of an unsharded queue). With
/// more than one shard, shard `i` gets the tag `name:iofN`, or
/// `name:iofN~k` with the smallest `k` that puts it in a Redis Cluster
/// slot within [`SLOT_WINDOW`] past `slot(name) + i * 16384 / N`: the
/// shards sit evenly around the slot space, so a cluster whose masters hold
/// equal ranges of slots (what `redis-cli --cluster create` makes) gets an
/// equal share of them when N is a multiple of the masters.
pub fn shard_tag(name: &str, index: usize, count: usize) -> String {
    if index == 0 || count <= 1 {
        return name.to_string();
    }
    let start = u32::from(slot_of(name.as_bytes()));
    let target = (start + (index as u32 * SLOTS) / count as u32) % SLOTS;
    let plain = format!("{name}:{index}of{count}");
    let near = |tag: &str| (u32::from(slot_of(tag.as_bytes())) + SLOTS - target) % SLOTS < SLOT_WINDOW;
    if near(&plain) {
        return plain;
    }
    // About SLOTS / SLOT_WINDOW (1,024) tries; bounded all the same.
    (1..SLOTS * 4)
        .map(|k| format!("{plain}~{k}"))
        .find(|tag| near(tag))
        .unwrap_or(plain)
}

/// Slots of a Redis Cluster.
const SLOTS: u32 = 16384;
/// How far past its target slot a shard may land.
pub const SLOT_WINDOW: u32 = 16;

/// The Redis Cluster slot of a hash tag's content: CRC16 (XMODEM) modulo
/// 16384, as Redis computes it.
pub fn slot_of(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

/// Records `tags` as shards of the queue; returns every shard tag it has
/// had (see `lua/shards.lua`). `keys` are shard 0's.
pub async fn record_shards<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    tags: &[&str],
) -> RedisResult<Vec<String>> {
    SHARDS.key(&keys.shards).arg(tags).invoke_async(conn).await
}

/// Every shard tag the queue has had, as recorded by [`record_shards`]: a
/// plain read, which Redis serves while it refuses writes.
pub async fn known_shards<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys) -> RedisResult<Vec<String>> {
    redis::cmd("SMEMBERS").arg(&keys.shards).query_async(conn).await
}

/// Queues encoded jobs in one `LPUSH`: a request's jobs are queued wholly
/// or not at all. Returns the ready list's new length.
pub async fn push<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, jobs: &[String]) -> RedisResult<u64> {
    redis::cmd("LPUSH").arg(&keys.ready).arg(jobs).query_async(conn).await
}

/// What a push under an Idempotency-Key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentPush {
    /// The jobs were queued; the ready list's new length.
    Pushed(u64),
    /// The key was used before: nothing was queued; the record it kept
    /// (what [`push_idempotent`] was given as `record` then).
    Existed(String),
}

/// Queues `jobs` unless `record_key` exists, keeping `record` under it for
/// `ttl`, in one atomic step (see `lua/push_idempotent.lua`).
pub async fn push_idempotent<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    record_key: &str,
    record: &str,
    ttl: Duration,
    jobs: &[String],
) -> RedisResult<IdempotentPush> {
    let (pushed, value): (u8, redis::Value) = PUSH_IDEMPOTENT
        .key(&keys.ready)
        .key(record_key)
        .arg(ttl.as_secs().max(1))
        .arg(record)
        .arg(jobs)
        .invoke_async(conn)
        .await?;
    if pushed == 1 {
        Ok(IdempotentPush::Pushed(redis::from_redis_value(value)?))
    } else {
        Ok(IdempotentPush::Existed(redis::from_redis_value(value)?))
    }
}

/// One shard at a glance, for operators (`deliver queue`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Overview {
    /// Jobs waiting for delivery.
    pub ready: u64,
    /// Jobs waiting for a retry.
    pub retry: u64,
    /// When the next retry is due, in ms since the epoch.
    pub next_retry_ms: Option<u64>,
    /// Each registered worker's in-flight jobs, and whether its heartbeat
    /// is alive.
    pub in_flight: Vec<WorkerLoad>,
    /// Parked jobs, all hosts.
    pub parked: u64,
    /// The hosts with the most parked jobs (at most the number asked for),
    /// most first.
    pub parked_hosts: Vec<(String, u64)>,
    /// Dead letters.
    pub dead: u64,
}

/// One worker's share of a shard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerLoad {
    /// The worker's id.
    pub worker: String,
    /// Jobs in its in-flight list.
    pub jobs: u64,
    /// Whether its heartbeat key exists.
    pub alive: bool,
}

/// The shard at a glance, with the `top_hosts` hosts that have the most
/// parked jobs. Two round trips; read-only.
pub async fn overview<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, top_hosts: usize) -> RedisResult<Overview> {
    type Counts = (u64, u64, Vec<(String, f64)>, Vec<String>, Vec<(String, f64)>, u64);
    let (ready, retry, next, workers, parked, dead): Counts = redis::pipe()
        .cmd("LLEN")
        .arg(&keys.ready)
        .cmd("ZCARD")
        .arg(&keys.retry)
        .cmd("ZRANGE")
        .arg(&keys.retry)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .cmd("SMEMBERS")
        .arg(&keys.workers)
        .cmd("ZRANGE")
        .arg(&keys.parked)
        .arg(0)
        .arg(-1)
        .arg("REV")
        .arg("WITHSCORES")
        .cmd("LLEN")
        .arg(&keys.dead)
        .query_async(conn)
        .await?;
    let mut in_flight = Vec::with_capacity(workers.len());
    if !workers.is_empty() {
        let mut pipe = redis::pipe();
        for worker in &workers {
            pipe.cmd("LLEN")
                .arg(keys.inflight(worker))
                .cmd("EXISTS")
                .arg(keys.heartbeat(worker));
        }
        let counts: Vec<u64> = pipe.query_async(conn).await?;
        for (worker, pair) in workers.into_iter().zip(counts.chunks(2)) {
            in_flight.push(WorkerLoad {
                worker,
                jobs: pair.first().copied().unwrap_or(0),
                alive: pair.get(1).copied().unwrap_or(0) == 1,
            });
        }
    }
    Ok(Overview {
        ready,
        retry,
        next_retry_ms: next.first().map(|(_, due)| *due as u64),
        in_flight,
        parked: parked.iter().map(|(_, n)| *n as u64).sum(),
        parked_hosts: parked.into_iter().take(top_hosts).map(|(h, n)| (h, n as u64)).collect(),
        dead,
    })
}

/// Where a job is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// Waiting for delivery.
    Ready,
    /// Being delivered (or taken) by this worker.
    InFlight {
        /// The worker's id.
        worker: String,
    },
    /// Waiting for its next attempt, due then (ms since the epoch).
    Retry {
        /// When.
        due_ms: u64,
        /// The job as queued (its attempt number).
        job: String,
    },
    /// Waiting for room at its host.
    Parked {
        /// `host:port`.
        host: String,
    },
    /// A dead letter.
    Dead {
        /// The letter as stored.
        letter: String,
    },
}

/// Entries read per round trip while looking for a job.
const FIND_CHUNK: isize = 1000;

/// Looks for job `id` in every list of the shard: ready, every in-flight
/// list, retry, parked, dead. Reads each list in chunks of 1,000 (jobs and
/// letters are JSON that starts with their id), so on a deep queue this is
/// many round trips: an operator's command, never the services'.
pub async fn find<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys, id: &str) -> RedisResult<Option<Place>> {
    let prefix = format!("{{\"id\":{}", serde_json::Value::from(id));
    let starts = |entry: &str| entry.starts_with(&prefix);
    if find_in_list(conn, &keys.ready, &starts).await?.is_some() {
        return Ok(Some(Place::Ready));
    }
    let workers: Vec<String> = redis::cmd("SMEMBERS").arg(&keys.workers).query_async(conn).await?;
    for worker in workers {
        if find_in_list(conn, &keys.inflight(&worker), &starts).await?.is_some() {
            return Ok(Some(Place::InFlight { worker }));
        }
    }
    let mut start = 0;
    loop {
        let chunk: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&keys.retry)
            .arg(start)
            .arg(start + FIND_CHUNK - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        if let Some((job, due)) = chunk.iter().find(|(job, _)| starts(job)) {
            return Ok(Some(Place::Retry {
                due_ms: *due as u64,
                job: job.clone(),
            }));
        }
        if (chunk.len() as isize) < FIND_CHUNK {
            break;
        }
        start += FIND_CHUNK;
    }
    let hosts: Vec<String> = redis::cmd("ZRANGE")
        .arg(&keys.parked)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    for host in hosts {
        if find_in_list(conn, &keys.parked_list(&host), &starts).await?.is_some() {
            return Ok(Some(Place::Parked { host }));
        }
    }
    Ok(find_in_list(conn, &keys.dead, &starts)
        .await?
        .map(|letter| Place::Dead { letter }))
}

async fn find_in_list<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    found: &impl Fn(&str) -> bool,
) -> RedisResult<Option<String>> {
    let mut start = 0;
    loop {
        let chunk: Vec<String> = redis::cmd("LRANGE")
            .arg(key)
            .arg(start)
            .arg(start + FIND_CHUNK - 1)
            .query_async(conn)
            .await?;
        if let Some(entry) = chunk.iter().find(|e| found(e)) {
            return Ok(Some(entry.clone()));
        }
        if (chunk.len() as isize) < FIND_CHUNK {
            return Ok(None);
        }
        start += FIND_CHUNK;
    }
}

/// Redis answers a `PING`.
pub async fn ping<C: ConnectionLike>(conn: &mut C) -> RedisResult<()> {
    redis::cmd("PING").query_async::<String>(conn).await.map(drop)
}

/// How many jobs wait in the ready list, the retry set, the dead-letter
/// list and the parked lists, in one round trip.
pub async fn depths<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys) -> RedisResult<Depths> {
    let (ready, retry, dead, parked): (u64, u64, u64, u64) = DEPTHS
        .key(&keys.ready)
        .key(&keys.retry)
        .key(&keys.dead)
        .key(&keys.parked)
        .invoke_async(conn)
        .await?;
    Ok(Depths {
        ready,
        retry,
        dead,
        parked,
    })
}

/// Queue depths at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Depths {
    /// Jobs waiting for delivery.
    pub ready: u64,
    /// Jobs waiting for a retry.
    pub retry: u64,
    /// Dead letters.
    pub dead: u64,
    /// Jobs parked until their host has room.
    pub parked: u64,
}

impl Depths {
    /// Adds `other`'s depths to these (another shard's, say).
    pub fn add(&mut self, other: &Depths) {
        self.ready += other.ready;
        self.retry += other.retry;
        self.dead += other.dead;
        self.parked += other.parked;
    }

    /// Each depth with its name, as the `state` label of the queue gauges.
    pub fn by_state(&self) -> [(&'static str, u64); 4] {
        [
            ("ready", self.ready),
            ("retry", self.retry),
            ("dead", self.dead),
            ("parked", self.parked),
        ]
    }
}

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

/// Waits up to `wait` for one job and takes it into `worker`'s in-flight
/// list (`BLMOVE`), so an idle worker wakes as soon as a job arrives
/// without polling. The connection's response timeout must exceed `wait`.
pub async fn take_blocking<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    worker: &str,
    wait: Duration,
) -> RedisResult<Option<Vec<u8>>> {
    redis::cmd("BLMOVE")
        .arg(&keys.ready)
        .arg(keys.inflight(worker))
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(wait.as_secs_f64())
        .query_async(conn)
        .await
}

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
    info: &str,
    ttl: Duration,
) -> RedisResult<()> {
    // A script, not a pipeline, for its allow-oom flag.
    HEARTBEAT
        .key(keys.heartbeat(worker))
        .key(&keys.workers)
        .arg(info)
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

/// The newest `limit` dead letters, each as stored (needed to replay it)
/// and decoded (`None` if it is not a dead letter this version can read).
pub async fn dead_letters<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    limit: usize,
) -> RedisResult<Vec<(String, Option<DeadLetter>)>> {
    let stop = if limit == 0 { -1 } else { limit as i64 - 1 };
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(&keys.dead)
        .arg(0)
        .arg(stop)
        .query_async(conn)
        .await?;
    Ok(raw
        .into_iter()
        .map(|stored| {
            let letter = serde_json::from_str(&stored).ok();
            (stored, letter)
        })
        .collect())
}

/// Requeues dead letters, each given as stored and decoded, as jobs with a
/// fresh attempt count and their headers' values back from the side store.
/// Returns how many were requeued. Skipped: a letter already gone (another
/// replay took it), one with no job (malformed), and one whose header
/// values are not here (it would go out without them).
pub async fn replay<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    letters: &[(String, DeadLetter)],
) -> RedisResult<u64> {
    let mut requeued = 0;
    for chunk in letters.chunks(MAX_BATCH) {
        let with_headers: Vec<&str> = chunk
            .iter()
            .filter(|(_, l)| !l.header_names.is_empty())
            .map(|(_, l)| l.id.as_str())
            .collect();
        let values: Vec<Option<String>> = if with_headers.is_empty() {
            Vec::new()
        } else {
            redis::cmd("HMGET")
                .arg(&keys.dead_headers)
                .arg(&with_headers)
                .query_async(conn)
                .await?
        };
        let mut call = REPLAY.prepare_invoke();
        call.key(&keys.dead).key(&keys.ready).key(&keys.dead_headers);
        let mut any = false;
        // The values come in the order of the letters that have headers.
        let mut values = values.into_iter();
        for (stored, letter) in chunk {
            let headers = if letter.header_names.is_empty() {
                crate::headers::Headers::default()
            } else {
                match values.next().flatten().as_deref().map(serde_json::from_str) {
                    Some(Ok(headers)) => headers,
                    _ => continue,
                }
            };
            let Some(job) = &letter.job else { continue };
            let job = crate::job::Job {
                attempt: 1,
                headers,
                ..job.clone()
            };
            call.arg(stored).arg(job.encode()).arg(&letter.id);
            any = true;
        }
        if any {
            requeued += call.invoke_async::<u64>(conn).await?;
        }
    }
    Ok(requeued)
}

/// Empties the dead-letter list. Returns how many letters it removed.
pub async fn purge_dead<C: ConnectionLike>(conn: &mut C, keys: &QueueKeys) -> RedisResult<u64> {
    PURGE.key(&keys.dead).key(&keys.dead_headers).invoke_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // CLUSTER KEYSLOT of Redis' own examples.
        assert_eq!(slot_of(b"somekey"), 11058);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"hello"), 866);
        assert_eq!(slot_of(b"default"), 5718);
    }

    #[test]
    fn shard_zero_is_the_unsharded_queue_and_the_others_sit_evenly_around_the_slots() {
        assert_eq!(QueueKeys::shard("default", 0, 6).ready, QueueKeys::new("default").ready);
        assert_eq!(shard_tag("default", 0, 1), "default");
        let third = QueueKeys::shard("default", 3, 6);
        assert!(third.ready.starts_with("postback:{default:3of6"), "{}", third.ready);
        assert!(third.tag().starts_with("default:3of6"));
        assert_eq!(QueueKeys::new("default").shards, "postback:{default}:shards");
        for count in [2, 3, 4, 6, 12, 64] {
            let start = u32::from(slot_of(b"default"));
            for index in 1..count {
                let slot = u32::from(slot_of(shard_tag("default", index, count).as_bytes()));
                let target = (start + index as u32 * SLOTS / count as u32) % SLOTS;
                assert!(
                    (slot + SLOTS - target) % SLOTS < SLOT_WINDOW,
                    "{index} of {count}: {slot} for {target}"
                );
            }
        }
        // Six shards on three masters of equal slot ranges: two each.
        let mut per_master = [0; 3];
        for index in 0..6 {
            per_master[usize::from(slot_of(shard_tag("default", index, 6).as_bytes())) * 3 / SLOTS as usize] += 1;
        }
        assert_eq!(per_master, [2, 2, 2]);
    }

    #[test]
    fn all_keys_of_a_queue_share_one_hash_tag() {
        let keys = QueueKeys::new("default");
        assert_eq!(keys.ready, "postback:{default}:ready");
        assert_eq!(keys.retry, "postback:{default}:retry");
        assert_eq!(keys.dead, "postback:{default}:dead");
        assert_eq!(keys.workers, "postback:{default}:workers");
        assert_eq!(keys.inflight("w1"), "postback:{default}:inflight:w1");
        assert_eq!(keys.heartbeat("w1"), "postback:{default}:heartbeat:w1");
        assert_eq!(keys.parked, "postback:{default}:parked");
        assert_eq!(keys.parked_list("h:80"), "postback:{default}:parked:h:80");
    }
}
