//! Producing: a request's jobs queued on one shard in one `LPUSH`, or
//! under an Idempotency-Key once, and the wait for replicas a producer may
//! ask for.

use super::{Queue, QueueError, QueueKeys};
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script};
use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Duration;

static PUSH_IDEMPOTENT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/push_idempotent.lua")));

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

impl Queue {
    /// Queues encoded jobs on one shard in one `LPUSH`: a request's jobs
    /// are queued wholly or not at all. Returns that shard's ready length.
    /// With replica acknowledgements asked for, it returns once enough
    /// replicas hold the jobs, or fails with [`QueueError::NotReplicated`]
    /// (the jobs are queued all the same, and may be delivered).
    pub async fn push(&self, jobs: &[String]) -> Result<u64, QueueError> {
        let shards = &self.state.shards;
        let keys = &shards[self.state.next_shard.fetch_add(1, Ordering::Relaxed) % shards.len()];
        let depth = self
            .run("push", Duration::ZERO, async move |mut conn| {
                push(&mut conn, keys, jobs).await
            })
            .await?;
        self.replicated(keys).await?;
        Ok(depth)
    }

    /// Waits for the replica acknowledgements asked for (if any) of the
    /// writes this handle made on `keys`' shard.
    async fn replicated(&self, keys: &QueueKeys) -> Result<(), QueueError> {
        let (wanted, timeout) = (self.state.replica_acks, self.state.replica_timeout);
        if wanted == 0 {
            return Ok(());
        }
        let acked = self
            .run("replication", timeout, async move |mut conn| {
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
        let shards = &self.state.shards;
        let shard = key_hash
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let keys = &shards[shard % shards.len()];
        let record_key = keys.idempotency(producer, key_hash);
        let pushed = self
            .run("push", Duration::ZERO, async move |mut conn| {
                push_idempotent(&mut conn, keys, &record_key, record, ttl, jobs).await
            })
            .await?;
        self.replicated(keys).await?;
        Ok(pushed)
    }
}
