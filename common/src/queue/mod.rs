//! The queue handle: the one door through which ingest and deliver reach
//! Redis.
//!
//! A [`Queue`] owns the connection, the keys, the outage log and the
//! deadline of every operation, and offers the protocol as methods. Callers
//! never see a connection or a key, so what stands behind the handle (one
//! Redis today; several shards, a Sentinel-watched master or a Cluster
//! later) can change without touching them. The handle keeps a list of
//! shards, today of length one: producer operations pick a shard, operator
//! operations cover all of them, and a worker gets one [`WorkerQueue`] per
//! shard to consume.
//!
//! - [`protocol`]: the keys and commands over one connection (what the
//!   handle calls; tests use it to set up and inspect a queue);
//! - [`producers`]: the producer key store, likewise;
//! - [`QueueError`]: why an operation failed, by kind;
//! - `connection`: the pool and the shared multiplexed connection.

mod connection;
mod error;
pub mod producers;
pub mod protocol;

pub use error::QueueError;
pub use protocol::{Depths, IdempotentPush, QueueKeys, Settled, Settlement, MAX_BATCH};

use crate::job::DeadLetter;
use crate::stats::{Failure, Second, Window};
use connection::{Outage, Shared};
use deadpool_redis::redis::{aio::MultiplexedConnection, RedisResult};
use deadpool_redis::Pool;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// How many connections the pool may hold.
    pub pool_size: usize,
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
    pool: Pool,
    /// One entry per shard; one shard today.
    shards: Vec<QueueKeys>,
    /// The shard the next push goes to.
    next_shard: AtomicUsize,
    outage: Outage,
    timeout: Duration,
    /// The connection's response timeout, for errors redis-rs times out.
    response_timeout: Duration,
}

impl Queue {
    /// A handle on the queue `config` names. Connects lazily: a Redis that
    /// is down at start is an outage like any other, not a start failure.
    pub fn new(config: &QueueConfig) -> Result<Queue, QueueError> {
        let response_timeout = config.timeout + config.longest_block;
        let pool = connection::connect(&config.url, config.pool_size, response_timeout)?;
        let shared = Arc::new(Inner {
            pool: pool.clone(),
            shards: vec![QueueKeys::new(&config.name)],
            next_shard: AtomicUsize::new(0),
            outage: Outage::new(&config.url),
            timeout: config.timeout,
            response_timeout,
        });
        Ok(Queue {
            conn: Arc::new(Shared::new(pool)),
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
            conn: Arc::new(Shared::new(self.shared.pool.clone())),
        }
    }

    /// Whether the last operation of any handle failed (for `/health`).
    pub fn is_down(&self) -> bool {
        self.shared.outage.is_down()
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
        op: impl FnOnce(MultiplexedConnection) -> Fut,
    ) -> Result<T, QueueError>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = self.shared.timeout + extra;
        let attempt = async {
            let conn = self.conn.get().await?;
            op(conn).await
        };
        let result = match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(QueueError::from_redis(e, self.shared.response_timeout)),
            Err(_) => Err(QueueError::Timeout(deadline)),
        };
        match &result {
            Ok(_) => self.shared.outage.succeeded(),
            Err(e) => {
                self.conn.failed(e);
                self.shared.outage.failed(what, e);
            }
        }
        result
    }

    /// Queues encoded jobs on one shard in one `LPUSH`: a request's jobs
    /// are queued wholly or not at all. Returns that shard's ready length.
    pub async fn push(&self, jobs: &[String]) -> Result<u64, QueueError> {
        let shards = &self.shared.shards;
        let keys = &shards[self.shared.next_shard.fetch_add(1, Ordering::Relaxed) % shards.len()];
        self.run("push", Duration::ZERO, |mut conn| async move {
            protocol::push(&mut conn, keys, jobs).await
        })
        .await
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
        self.run("push", Duration::ZERO, |mut conn| async move {
            protocol::push_idempotent(&mut conn, keys, &record_key, record, ttl, jobs).await
        })
        .await
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
        for keys in &self.shared.shards {
            let d = self
                .run("queue length", Duration::ZERO, |mut conn| async move {
                    protocol::depths(&mut conn, keys).await
                })
                .await?;
            total.ready += d.ready;
            total.retry += d.retry;
            total.dead += d.dead;
            total.parked += d.parked;
        }
        Ok(total)
    }

    /// The newest `limit` dead letters of every shard (0: all), each as
    /// stored (needed to replay it) and decoded (`None` if unreadable).
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<(String, Option<DeadLetter>)>, QueueError> {
        let mut letters = Vec::new();
        for keys in &self.shared.shards {
            letters.extend(
                self.run("dead letters", Duration::ZERO, |mut conn| async move {
                    protocol::dead_letters(&mut conn, keys, limit).await
                })
                .await?,
            );
        }
        if self.shared.shards.len() > 1 {
            letters.sort_by_key(|(_, letter)| std::cmp::Reverse(letter.as_ref().map_or(0, |l| l.dead_at)));
            if limit > 0 {
                letters.truncate(limit);
            }
        }
        Ok(letters)
    }

    /// Requeues dead letters, `(stored letter, encoded job)` pairs, each on
    /// the shard that holds it. Returns how many were requeued (a letter
    /// already gone is skipped).
    pub async fn replay(&self, pairs: &[(String, String)]) -> Result<u64, QueueError> {
        let mut requeued = 0;
        // A letter is removed only from the list that holds it, so trying
        // every shard requeues each letter once.
        for keys in &self.shared.shards {
            requeued += self
                .run("replay", Duration::ZERO, |mut conn| async move {
                    protocol::replay(&mut conn, keys, pairs).await
                })
                .await?;
        }
        Ok(requeued)
    }

    /// Empties every shard's dead-letter list. Returns how many went.
    pub async fn purge_dead(&self) -> Result<u64, QueueError> {
        let mut removed = 0;
        for keys in &self.shared.shards {
            removed += self
                .run("purge", Duration::ZERO, |mut conn| async move {
                    protocol::purge_dead(&mut conn, keys).await
                })
                .await?;
        }
        Ok(removed)
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

    /// This worker's view of each shard, to consume it.
    pub fn workers(&self, id: &str, heartbeat_ttl: Duration) -> Vec<WorkerQueue> {
        (0..self.shared.shards.len())
            .map(|shard| WorkerQueue {
                queue: self.clone(),
                shard,
                id: id.to_string(),
                heartbeat_ttl,
            })
            .collect()
    }
}

/// One worker's operations on one shard: taking, settling, parking, its
/// heartbeat and the recovery of other workers' jobs.
#[derive(Clone)]
pub struct WorkerQueue {
    queue: Queue,
    shard: usize,
    id: String,
    heartbeat_ttl: Duration,
}

impl WorkerQueue {
    fn keys(&self) -> &QueueKeys {
        &self.queue.shared.shards[self.shard]
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
