//! The queue handle: the one door through which ingest and deliver reach
//! Redis.
//!
//! A [`Queue`] owns the connection, the keys, the outage log and the
//! deadline of every operation, and offers the protocol as methods. Callers
//! never see a connection or a key, so what stands behind the handle (one
//! Redis, a Sentinel-watched master or a Cluster, see [`target`]) does not
//! touch them.
//!
//! The queue is split into `POSTBACK_SHARDS` shards, each with a hash tag
//! of its own (see [`protocol::shard_tag`]), so that in a Cluster they
//! spread over slots and masters. A push puts all of one request's jobs on
//! one shard, round robin; operator operations cover every shard; a worker
//! gets one [`WorkerQueue`] per shard to consume. Every shard a queue has
//! had is recorded in Redis ([`Queue::record_shards`]), so that after
//! `POSTBACK_SHARDS` changed the shards no longer pushed to are still
//! drained and still seen by operators.
//!
//! - [`protocol`]: the keys and commands over one connection (what the
//!   handle calls; tests use it to set up and inspect a queue);
//! - [`producers`]: the producer key store, likewise;
//! - [`QueueError`]: why an operation failed, by kind;
//! - `connection`: connecting (pool, sentinels, cluster) and the shared
//!   connection.

mod connection;
mod error;
pub mod producers;
pub mod protocol;
pub mod target;

pub use error::QueueError;
pub use protocol::{Depths, IdempotentPush, Overview, Place, QueueKeys, Settled, Settlement, WorkerLoad, MAX_BATCH};
pub use target::{Target, TargetError};

use crate::job::DeadLetter;
use crate::stats::{Failure, Second, Window};
use connection::{Connection, Connector, Outage, Shared};
use deadpool_redis::redis::RedisResult;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Extra time for an operator's search through a deep queue.
const FIND_DEADLINE: Duration = Duration::from_secs(60);

/// How to reach a queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// `REDIS_URL`.
    pub url: String,
    /// `POSTBACK_QUEUE`: the name inside every key's hash tag.
    pub name: String,
    /// The deadline of every operation; a blocking take gets its wait on
    /// top of it.
    pub timeout: Duration,
    /// The longest wait of a blocking take this process sends (zero for a
    /// producer): the connection's own response timeout must outlast it.
    pub longest_block: Duration,
    /// `POSTBACK_SHARDS`: how many shards pushes spread over (at least 1).
    pub shards: usize,
    /// `INGEST_REPLICA_ACKS`: how many replicas must hold a push before it
    /// counts as done (0: do not wait).
    pub replica_acks: u32,
    /// `INGEST_REPLICA_TIMEOUT_MS`: how long a push waits for them.
    pub replica_timeout: Duration,
}

/// A handle on the queue. Clones share one multiplexed connection;
/// [`Queue::handle`] makes one with a connection of its own.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Inner>,
    conn: Arc<Shared>,
}

/// What every handle of one queue shares.
struct Inner {
    connector: Arc<Connector>,
    /// The keys of each of the `POSTBACK_SHARDS` shards pushes go to.
    shards: Vec<QueueKeys>,
    /// The shard the next push goes to.
    next_shard: AtomicUsize,
    outage: Outage,
    timeout: Duration,
    /// The connection's response timeout, for errors redis-rs times out.
    response_timeout: Duration,
    replica_acks: u32,
    replica_timeout: Duration,
}

impl Queue {
    /// A handle on the queue `config` names. Connects lazily: a Redis that
    /// is down at start is an outage like any other, not a start failure.
    pub fn new(config: &QueueConfig) -> Result<Queue, QueueError> {
        let target = Target::parse(&config.url)?;
        // A push's wait for replicas comes on top of its own deadline.
        let response_timeout = config.timeout + config.longest_block.max(config.replica_timeout);
        let connector = Arc::new(Connector::new(&target, response_timeout)?);
        let shared = Arc::new(Inner {
            connector: connector.clone(),
            shards: (0..config.shards.max(1))
                .map(|i| QueueKeys::shard(&config.name, i, config.shards))
                .collect(),
            next_shard: AtomicUsize::new(0),
            outage: Outage::new(&target),
            timeout: config.timeout,
            response_timeout,
            replica_acks: config.replica_acks,
            replica_timeout: config.replica_timeout,
        });
        Ok(Queue {
            conn: Arc::new(Shared::new(connector)),
            shared,
        })
    }

    /// A handle with a connection of its own, sharing everything else. A
    /// connection's I/O runs on the runtime thread that made it, so each
    /// thread that sends many commands (an ingest worker) wants its own;
    /// so does a task that blocks (deliver's fetcher), lest it hold up the
    /// commands of others.
    pub fn handle(&self) -> Queue {
        Queue {
            shared: self.shared.clone(),
            conn: Arc::new(Shared::new(self.shared.connector.clone())),
        }
    }

    /// Follows the master switches the sentinels announce, for the life
    /// of the process (spawn it once); returns at once unless `REDIS_URL`
    /// names sentinels. See `connection.rs`.
    pub async fn follow_master_switches(&self) {
        self.shared.connector.follow_switches().await
    }

    /// How many master switches the sentinels have announced since start.
    pub fn master_switches(&self) -> u64 {
        self.shared.connector.switches()
    }

    /// Whether the last operation of any handle failed (for `/health`).
    pub fn is_down(&self) -> bool {
        self.shared.outage.is_down()
    }

    /// Whether Redis refuses writes while it answers (`MISCONF`: a full
    /// disk; `NOREPLICAS`; `maxmemory`), as the last write found: from the
    /// first refused write until that operation goes through again.
    pub fn refusing_writes(&self) -> bool {
        self.shared.outage.refusing_writes()
    }

    /// The ready list's key, for messages to operators.
    pub fn ready_key(&self) -> &str {
        &self.shared.shards[0].ready
    }

    /// The dead-letter list's key, for messages to operators.
    pub fn dead_key(&self) -> &str {
        &self.shared.shards[0].dead
    }

    /// Runs `op` on this handle's connection within the deadline (plus
    /// `extra`), sorts a failure by kind, replaces a connection the failure
    /// may have broken, and logs an outage's start and end once.
    async fn run<T, Fut>(
        &self,
        what: &str,
        extra: Duration,
        op: impl FnOnce(Connection) -> Fut,
    ) -> Result<T, QueueError>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = self.shared.timeout + extra;
        // When the connection was made, in outages begun (see Outage).
        let mut made_after = None;
        let attempt = async {
            let (conn, made) = self.conn.get(self.shared.outage.starts()).await?;
            made_after = Some(made);
            op(conn).await
        };
        let result = match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(QueueError::from_redis(e, self.shared.response_timeout)),
            Err(_) => Err(QueueError::Timeout(deadline)),
        };
        match &result {
            Ok(_) => self.shared.outage.succeeded_on(what),
            // Redis answers: no outage, and the connection is fine.
            Err(e @ (QueueError::WritesRefused(_) | QueueError::OutOfMemory(_))) => {
                self.shared.outage.writes_refused(what, e);
            }
            Err(e) => {
                self.conn.failed(e);
                self.shared.outage.failed_on(what, e, made_after);
            }
        }
        result
    }

    /// Queues encoded jobs on one shard in one `LPUSH`: a request's jobs
    /// are queued wholly or not at all. Returns that shard's ready length.
    /// With replica acknowledgements asked for, it returns once enough
    /// replicas hold the jobs, or fails with [`QueueError::NotReplicated`]
    /// (the jobs are queued all the same, and may be delivered).
    pub async fn push(&self, jobs: &[String]) -> Result<u64, QueueError> {
        let shards = &self.shared.shards;
        let keys = &shards[self.shared.next_shard.fetch_add(1, Ordering::Relaxed) % shards.len()];
        let depth = self
            .run("push", Duration::ZERO, |mut conn| async move {
                protocol::push(&mut conn, keys, jobs).await
            })
            .await?;
        self.replicated(keys).await?;
        Ok(depth)
    }

    /// Waits for the replica acknowledgements asked for (if any) of the
    /// writes this handle made on `keys`' shard.
    async fn replicated(&self, keys: &QueueKeys) -> Result<(), QueueError> {
        let (wanted, timeout) = (self.shared.replica_acks, self.shared.replica_timeout);
        if wanted == 0 {
            return Ok(());
        }
        let acked = self
            .run("replication", timeout, |mut conn| async move {
                conn.wait_replicas(&keys.ready, wanted, timeout).await
            })
            .await?;
        if acked < u64::from(wanted) {
            return Err(QueueError::NotReplicated { acked, wanted });
        }
        Ok(())
    }

    /// Queues `jobs` under an Idempotency-Key (`key_hash`: its SHA-256,
    /// hex) of `producer`, unless the key was used within `ttl`: then
    /// nothing is queued and the record kept then comes back. One shard
    /// per key, so that a repeat meets the first request's record.
    pub async fn push_idempotent(
        &self,
        producer: &str,
        key_hash: &str,
        record: &str,
        ttl: Duration,
        jobs: &[String],
    ) -> Result<IdempotentPush, QueueError> {
        let shards = &self.shared.shards;
        let shard = key_hash
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let keys = &shards[shard % shards.len()];
        let record_key = keys.idempotency(producer, key_hash);
        let pushed = self
            .run("push", Duration::ZERO, |mut conn| async move {
                protocol::push_idempotent(&mut conn, keys, &record_key, record, ttl, jobs).await
            })
            .await?;
        self.replicated(keys).await?;
        Ok(pushed)
    }

    /// Redis answers a `PING`.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.run("health", Duration::ZERO, |mut conn| async move {
            protocol::ping(&mut conn).await
        })
        .await
    }

    /// Depths of every shard, added up.
    pub async fn depths(&self) -> Result<Depths, QueueError> {
        let mut total = Depths::default();
        for (_, d) in self.depths_by_shard().await? {
            total.add(&d);
        }
        Ok(total)
    }

    /// Depths of each shard, by its tag (a shard that fills while the
    /// others drain is a stuck consumer or a hot shard).
    pub async fn depths_by_shard(&self) -> Result<Vec<(String, Depths)>, QueueError> {
        let mut all = Vec::new();
        for keys in &self.every_shard().await? {
            let d = self
                .run("queue length", Duration::ZERO, |mut conn| async move {
                    protocol::depths(&mut conn, keys).await
                })
                .await?;
            all.push((keys.tag().to_string(), d));
        }
        Ok(all)
    }

    /// Every shard at a glance (see [`protocol::overview`]), by tag.
    pub async fn overview(&self, top_hosts: usize) -> Result<Vec<(String, Overview)>, QueueError> {
        let mut all = Vec::new();
        for keys in &self.every_shard().await? {
            let overview = self
                .run("queue overview", Duration::ZERO, |mut conn| async move {
                    protocol::overview(&mut conn, keys, top_hosts).await
                })
                .await?;
            all.push((keys.tag().to_string(), overview));
        }
        Ok(all)
    }

    /// Where job `id` is, in whichever shard holds it (see
    /// [`protocol::find`]); `None`: in no list, so settled (or never
    /// queued).
    pub async fn find_job(&self, id: &str) -> Result<Option<(String, Place)>, QueueError> {
        for keys in &self.every_shard().await? {
            // A deep queue takes many round trips: a generous deadline.
            let place = self
                .run("find a job", FIND_DEADLINE, |mut conn| async move {
                    protocol::find(&mut conn, keys, id).await
                })
                .await?;
            if let Some(place) = place {
                return Ok(Some((keys.tag().to_string(), place)));
            }
        }
        Ok(None)
    }

    /// The newest `limit` dead letters of every shard (0: all), each as
    /// stored (needed to replay it) and decoded (`None` if unreadable).
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<(String, Option<DeadLetter>)>, QueueError> {
        let mut letters = Vec::new();
        let shards = self.every_shard().await?;
        for keys in &shards {
            letters.extend(
                self.run("dead letters", Duration::ZERO, |mut conn| async move {
                    protocol::dead_letters(&mut conn, keys, limit).await
                })
                .await?,
            );
        }
        if shards.len() > 1 {
            letters.sort_by_key(|(_, letter)| std::cmp::Reverse(letter.as_ref().map_or(0, |l| l.dead_at)));
            if limit > 0 {
                letters.truncate(limit);
            }
        }
        Ok(letters)
    }

    /// Requeues dead letters, each given as stored and decoded, on the
    /// shard that holds it (see [`protocol::replay`]). Returns how many were
    /// requeued.
    pub async fn replay(&self, letters: &[(String, DeadLetter)]) -> Result<u64, QueueError> {
        let mut requeued = 0;
        // A letter is removed only from the list that holds it, so trying
        // every shard requeues each letter once.
        for keys in &self.every_shard().await? {
            requeued += self
                .run("replay", Duration::ZERO, |mut conn| async move {
                    protocol::replay(&mut conn, keys, letters).await
                })
                .await?;
        }
        Ok(requeued)
    }

    /// Empties every shard's dead-letter list. Returns how many went.
    pub async fn purge_dead(&self) -> Result<u64, QueueError> {
        let mut removed = 0;
        for keys in &self.every_shard().await? {
            removed += self
                .run("purge", Duration::ZERO, |mut conn| async move {
                    protocol::purge_dead(&mut conn, keys).await
                })
                .await?;
        }
        Ok(removed)
    }

    /// Records this process's shards in Redis and returns the keys of
    /// every shard the queue has had: the shards to consume. A consumer's
    /// call (a write); the views read with [`Queue::every_shard`].
    pub async fn record_shards(&self) -> Result<Vec<QueueKeys>, QueueError> {
        let shards = &self.shared.shards;
        let mine: Vec<&str> = shards.iter().map(QueueKeys::tag).collect();
        let tags = self
            .run("shards", Duration::ZERO, |mut conn| async move {
                protocol::record_shards(&mut conn, &shards[0], &mine).await
            })
            .await?;
        Ok(self.with_mine_first(tags))
    }

    /// The keys of every shard the queue has had, as the consumers
    /// recorded them, and this process's own: the shards to look at. Only
    /// reads, so the operator's views answer while Redis refuses writes
    /// (a full disk, too few replicas), when they are needed most.
    pub async fn every_shard(&self) -> Result<Vec<QueueKeys>, QueueError> {
        let shards = &self.shared.shards;
        let tags = self
            .run("shards", Duration::ZERO, |mut conn| async move {
                protocol::known_shards(&mut conn, &shards[0]).await
            })
            .await?;
        Ok(self.with_mine_first(tags))
    }

    /// This process's shards first, in order, then the others of `tags`.
    fn with_mine_first(&self, tags: Vec<String>) -> Vec<QueueKeys> {
        let shards = &self.shared.shards;
        let mut all: Vec<QueueKeys> = shards.clone();
        let mut others: Vec<&String> = tags
            .iter()
            .filter(|t| !all.iter().any(|k| k.tag() == t.as_str()))
            .collect();
        others.sort();
        all.extend(others.into_iter().map(|tag| QueueKeys::new(tag)));
        all
    }

    /// How many shards pushes go to (`POSTBACK_SHARDS`).
    pub fn shards(&self) -> usize {
        self.shared.shards.len()
    }

    /// Adds one process's counts, the depths it saw and its recent failures
    /// to the cluster-wide statistics (see [`crate::stats`]).
    pub async fn flush_stats(
        &self,
        seconds: &BTreeMap<u64, Second>,
        depths: Option<(u64, Depths)>,
        failures: &[Failure],
    ) -> Result<(), QueueError> {
        let keys = &self.shared.shards[0];
        self.run("statistics", Duration::ZERO, |mut conn| async move {
            crate::stats::flush(&mut conn, keys, seconds, depths, failures).await
        })
        .await
    }

    /// The statistics of `seconds` seconds up to `until`, by `step`, with
    /// the latest `failures` (see [`crate::stats::read`]).
    pub async fn stats_window(
        &self,
        until: u64,
        seconds: u64,
        step: u64,
        failures: usize,
    ) -> Result<Window, QueueError> {
        let keys = &self.shared.shards[0];
        self.run("statistics", Duration::ZERO, |mut conn| async move {
            crate::stats::read(&mut conn, keys, until, seconds, step, failures).await
        })
        .await
    }

    /// Stores a new producer key.
    pub async fn create_producer(
        &self,
        key: &crate::producer::NewKey,
        name: &str,
        rate: Option<u32>,
    ) -> Result<(), QueueError> {
        self.run("producer keys", Duration::ZERO, |mut conn| async move {
            producers::create(&mut conn, key, name, rate, crate::now_ms()).await
        })
        .await
    }

    /// The producer key store's version: it moves on at every change.
    pub async fn producers_version(&self) -> Result<u64, QueueError> {
        self.run("producer keys", Duration::ZERO, |mut conn| async move {
            producers::version(&mut conn).await
        })
        .await
    }

    /// Every producer key, and the store version it was read at.
    pub async fn producers(&self) -> Result<(u64, Vec<crate::producer::ProducerRecord>), QueueError> {
        self.run("producer keys", Duration::ZERO, |mut conn| async move {
            producers::load(&mut conn).await
        })
        .await
    }

    /// Revokes a producer key: 1, 2 if it was revoked already, 0 if unknown.
    pub async fn revoke_producer(&self, id: &str) -> Result<u8, QueueError> {
        self.run("producer keys", Duration::ZERO, |mut conn| async move {
            producers::revoke(&mut conn, id, crate::now_ms()).await
        })
        .await
    }

    /// Gives a producer key a new signing secret; false if unknown.
    pub async fn rotate_producer_secret(&self, id: &str, secret: &str) -> Result<bool, QueueError> {
        self.run("producer keys", Duration::ZERO, |mut conn| async move {
            producers::rotate_secret(&mut conn, id, secret, crate::now_ms()).await
        })
        .await
    }

    /// Counts one request of producer `id` in Unix second `second`, over
    /// every ingest process; returns the count so far.
    pub async fn count_producer_request(&self, id: &str, second: u64) -> Result<u64, QueueError> {
        self.run("rate limit", Duration::ZERO, |mut conn| async move {
            producers::count_request(&mut conn, id, second).await
        })
        .await
    }

    /// This worker's view of each of the `POSTBACK_SHARDS` shards, to
    /// consume it.
    pub fn workers(&self, id: &str, heartbeat_ttl: Duration) -> Vec<WorkerQueue> {
        self.shared
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
    queue: Queue,
    keys: Arc<QueueKeys>,
    id: String,
    heartbeat_ttl: Duration,
}

impl WorkerQueue {
    fn keys(&self) -> &QueueKeys {
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
            .run("take", Duration::ZERO, |mut conn| async move {
                protocol::take(&mut conn, keys, id, max, ttl).await
            })
            .await
    }

    /// Waits up to `wait` for one job and takes it into the in-flight list.
    /// Give it a handle of its own: the wait holds the connection.
    pub async fn take_blocking(&self, wait: Duration) -> Result<Option<Vec<u8>>, QueueError> {
        let (keys, id) = (self.keys(), self.id.as_str());
        self.queue
            .run("take", wait, |mut conn| async move {
                protocol::take_blocking(&mut conn, keys, id, wait).await
            })
            .await
    }

    /// Records a batch of outcomes (see [`protocol::settle`]). Returns how
    /// many were still this worker's to settle.
    pub async fn settle(&self, outcomes: &[Settled]) -> Result<u64, QueueError> {
        let (keys, id) = (self.keys(), self.id.as_str());
        self.queue
            .run("settle", Duration::ZERO, |mut conn| async move {
                protocol::settle(&mut conn, keys, id, outcomes).await
            })
            .await
    }

    /// Up to `max` hosts with parked jobs, picked at random.
    pub async fn parked_hosts(&self, max: usize) -> Result<Vec<String>, QueueError> {
        let keys = self.keys();
        self.queue
            .run("unpark", Duration::ZERO, |mut conn| async move {
                protocol::parked_hosts(&mut conn, keys, max).await
            })
            .await
    }

    /// Moves up to `n` parked jobs of each `(host, n)` into the in-flight
    /// list. Returns the jobs moved.
    pub async fn unpark(&self, wanted: &[(String, usize)]) -> Result<Vec<Vec<u8>>, QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("unpark", Duration::ZERO, |mut conn| async move {
                protocol::unpark(&mut conn, keys, id, ttl, wanted).await
            })
            .await
    }

    /// Marks this worker alive and registered.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("heartbeat", Duration::ZERO, |mut conn| async move {
                protocol::heartbeat(&mut conn, keys, id, id, ttl).await
            })
            .await
    }

    /// One housekeeping round in one go: the heartbeat if `beat`, the
    /// recovery of dead workers' jobs if `reclaim`, and every due retry
    /// moved back to the ready list.
    pub async fn housekeeping(&self, beat: bool, reclaim: bool) -> Result<(), QueueError> {
        let (keys, id, ttl) = (self.keys(), self.id.as_str(), self.heartbeat_ttl);
        self.queue
            .run("housekeeping", Duration::ZERO, |mut conn| async move {
                if beat {
                    protocol::heartbeat(&mut conn, keys, id, id, ttl).await?;
                }
                if reclaim {
                    protocol::reclaim_dead_workers(&mut conn, keys, id).await?;
                }
                while protocol::promote_due(&mut conn, keys, MAX_BATCH).await? == MAX_BATCH as u64 {}
                Ok(())
            })
            .await
    }

    /// Hands back all of this worker's in-flight jobs while it holds none
    /// in memory (see [`protocol::return_in_flight`]).
    pub async fn return_in_flight(&self) -> Result<u64, QueueError> {
        let (keys, id) = (self.keys(), self.id.as_str());
        self.queue
            .run("return orphans", Duration::ZERO, |mut conn| async move {
                protocol::return_in_flight(&mut conn, keys, id).await
            })
            .await
    }

    /// A stopping worker's unsettled jobs back to the queue.
    pub async fn release(&self) -> Result<u64, QueueError> {
        let (keys, id) = (self.keys(), self.id.as_str());
        self.queue
            .run("release", Duration::ZERO, |mut conn| async move {
                protocol::release(&mut conn, keys, id).await
            })
            .await
    }
}
