//! The queue handle: the one door through which ingest and deliver reach
//! Redis.
//!
//! A [`Queue`] owns the connection, the keys, the outage log and the
//! deadline of every operation, and offers the protocol as methods. Callers
//! never see a connection or a key, so what stands behind the handle (one
//! Redis, a Sentinel-watched master or a Cluster, see [`target`]) does not
//! touch them. Every method is one use of `Queue::run`, the one generic
//! call: it names the operation (for the outage log), sets its deadline and
//! sorts its failure; each sits next to the Redis commands it sends.
//!
//! The queue is split into `POSTBACK_SHARDS` shards, each with a hash tag
//! of its own (see [`keys::shard_tag`]), so that in a Cluster they spread
//! over slots and masters. A push puts all of one request's jobs on one
//! shard, round robin; operator operations cover every shard; a worker
//! gets one [`WorkerQueue`] per shard to consume. Every shard a queue has
//! had is recorded in Redis ([`Queue::record_shards`]), so that after
//! `POSTBACK_SHARDS` changed the shards no longer pushed to are still
//! drained and still seen by operators.
//!
//! One module per role, each with its Redis commands (public, over any
//! connection: tests use them to set up and inspect a queue) and the
//! handle's methods that call them:
//! - [`keys`]: every key, the shards' hash tags and slots;
//! - [`push`]: producing (and waiting for replicas);
//! - [`worker`]: the worker protocol (take, park and unpark, heartbeat,
//!   reclaim, promote, release) and [`settle`] its outcomes;
//! - [`views`] and [`dead`]: the operator's views and dead letters;
//! - [`stats`]: the statistics' I/O; [`producer_store`]: producer keys;
//!   [`destinations`]: each partner's breaker, pause or disabling;
//! - connecting: [`target`] (where `REDIS_URL` points), `connect` (one
//!   server, Sentinel's master, a Cluster), `sentinel` (following master
//!   switches), [`tls`] (the certificates of a TLS connection) and
//!   `outage` (the outage log); [`QueueError`], why an
//!   operation failed, by kind.
//!
//! Every script starts with `#!lua flags=allow-oom` (Redis 7): a full
//! Redis (`maxmemory` reached, `noeviction`) must still let workers
//! register, take, settle and hand back jobs, or a full queue could never
//! be drained. The scripts only move or remove data; producers' `LPUSH` is
//! refused when full.

mod connect;
pub mod dead;
pub mod destinations;
mod error;
pub mod keys;
mod outage;
pub mod producer_store;
pub mod push;
mod sentinel;
pub mod settle;
pub mod stats;
pub mod target;
pub mod tls;
pub mod views;
pub mod worker;

pub use error::QueueError;
pub use keys::QueueKeys;
pub use push::IdempotentPush;
pub use settle::{Settled, Settlement};
pub use target::{Target, TargetError};
pub use tls::RedisTls;
pub use views::{Depths, Overview, Place, WorkerLoad};
pub use worker::{WorkerQueue, MAX_BATCH};

use connect::{Connection, Connector, SharedConnection};
use deadpool_redis::redis::RedisResult;
use outage::Outage;
use std::sync::atomic::AtomicUsize;
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
    /// `POSTBACK_SHARDS`: how many shards pushes spread over (at least 1).
    pub shards: usize,
    /// `INGEST_REPLICA_ACKS`: how many replicas must hold a push before it
    /// counts as done (0: do not wait).
    pub replica_acks: u32,
    /// `INGEST_REPLICA_TIMEOUT_MS`: how long a push waits for them.
    pub replica_timeout: Duration,
    /// The certificates of a TLS `REDIS_URL` (`REDIS_TLS_*_FILE`).
    pub tls: RedisTls,
}

/// A handle on the queue. Clones share one multiplexed connection;
/// [`Queue::handle`] makes one with a connection of its own.
#[derive(Clone)]
pub struct Queue {
    state: Arc<QueueState>,
    conn: Arc<SharedConnection>,
}

/// What every handle of one queue shares.
struct QueueState {
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
        let connector = Arc::new(Connector::new(&target, &config.tls, response_timeout)?);
        let state = Arc::new(QueueState {
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
            conn: Arc::new(SharedConnection::new(connector)),
            state,
        })
    }

    /// A handle with a connection of its own, sharing everything else. A
    /// connection's I/O runs on the runtime thread that made it, so each
    /// thread that sends many commands (an ingest worker) wants its own;
    /// so does a task that blocks (deliver's fetcher), lest it hold up the
    /// commands of others.
    pub fn handle(&self) -> Queue {
        Queue {
            state: self.state.clone(),
            conn: Arc::new(SharedConnection::new(self.state.connector.clone())),
        }
    }

    /// Follows the master switches the sentinels announce, for the life
    /// of the process (spawn it once); returns at once unless `REDIS_URL`
    /// names sentinels. See `sentinel.rs`.
    pub async fn follow_master_switches(&self) {
        self.state.connector.follow_switches().await
    }

    /// How many master switches the sentinels have announced since start.
    pub fn master_switches(&self) -> u64 {
        self.state.connector.switches()
    }

    /// Whether the last operation of any handle failed (for `/health`).
    pub fn is_down(&self) -> bool {
        self.state.outage.is_down()
    }

    /// Why Redis cannot be used, while it cannot (the failure that began
    /// the outage: for `/health`).
    pub fn failure(&self) -> Option<String> {
        self.state.outage.failure()
    }

    /// Whether Redis refuses writes while it answers (`MISCONF`: a full
    /// disk; `NOREPLICAS`; `maxmemory`), as the last write found: from the
    /// first refused write until that operation goes through again.
    pub fn refusing_writes(&self) -> bool {
        self.state.outage.refusing_writes()
    }

    /// Runs `op` on this handle's connection within the deadline (plus
    /// `extra`), sorts a failure by kind, replaces a connection the failure
    /// may have broken, and logs an outage's start and end once.
    async fn run<T>(
        &self,
        what: &str,
        extra: Duration,
        op: impl AsyncFnOnce(Connection) -> RedisResult<T>,
    ) -> Result<T, QueueError> {
        let deadline = self.state.timeout + extra;
        // When the connection was made, in outages begun (see Outage).
        let mut made_after = None;
        let attempt = async {
            let (conn, made) = self.conn.get(self.state.outage.starts()).await?;
            made_after = Some(made);
            op(conn).await
        };
        let result = match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(QueueError::from_redis(e, self.state.response_timeout)),
            Err(_) => Err(QueueError::Timeout(deadline)),
        };
        match &result {
            Ok(_) => self.state.outage.succeeded_on(what),
            // Redis answers: no outage, and the connection is fine.
            Err(e @ (QueueError::WritesRefused(_) | QueueError::OutOfMemory(_))) => {
                self.state.outage.writes_refused(what, e);
            }
            Err(e) => {
                self.conn.failed(e);
                self.state
                    .outage
                    .failed_on(what, e, made_after, matches!(e, QueueError::Tls(_)));
            }
        }
        result
    }

    /// [`Queue::run`] on every shard the queue has had
    /// ([`Queue::every_shard`]), one after the other: each shard's tag with
    /// its answer. The operator's operations cover every shard this way.
    async fn on_every_shard<T>(
        &self,
        what: &str,
        extra: Duration,
        op: impl AsyncFn(Connection, &QueueKeys) -> RedisResult<T>,
    ) -> Result<Vec<(String, T)>, QueueError> {
        let mut all = Vec::new();
        for keys in self.every_shard().await? {
            let answer = self.run(what, extra, async |conn| op(conn, &keys).await).await?;
            all.push((keys.tag().to_string(), answer));
        }
        Ok(all)
    }
}
