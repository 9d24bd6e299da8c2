//! The producer key store in Redis, over one connection (see
//! [`crate::producer`] for the keys themselves; the key table is in
//! `docs/ARCHITECTURE.md`). The store is one slot (one hash tag), shared by
//! every queue and shard.

use super::{Queue, QueueError};
use crate::producer::{NewKey, ProducerRecord};
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

static ROTATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/rotate_secret.lua")));
static REVOKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/revoke_key.lua")));

const IDS: &str = "postback:{producers}:ids";
const VERSION: &str = "postback:{producers}:version";
/// How long a per-second request counter outlives its second.
const RATE_COUNTER_TTL_SECS: u64 = 5;

fn key_of(id: &str) -> String {
    format!("postback:{{producers}}:key:{id}")
}

/// Stores a new key, in one atomic step with the version's move.
pub async fn create<C: ConnectionLike>(
    conn: &mut C,
    key: &NewKey,
    name: &str,
    rate: Option<u32>,
    now_ms: u64,
) -> RedisResult<()> {
    redis::pipe()
        .atomic()
        .hset_multiple(
            key_of(&key.id),
            &[
                ("name", name.to_string()),
                ("secret_hash", key.secret_hash.clone()),
                ("created_ms", now_ms.to_string()),
                ("rate", rate.unwrap_or(0).to_string()),
                ("revoked_ms", "0".to_string()),
                ("signing_secret", key.signing_secret.clone()),
            ],
        )
        .ignore()
        .sadd(IDS, &key.id)
        .ignore()
        .incr(VERSION, 1)
        .ignore()
        .query_async(conn)
        .await
}

/// The store's version (0 before the first key).
pub async fn version<C: ConnectionLike>(conn: &mut C) -> RedisResult<u64> {
    let version: Option<u64> = redis::cmd("GET").arg(VERSION).query_async(conn).await?;
    Ok(version.unwrap_or(0))
}

/// Every key, with the version read before them: a change made while
/// they are read moves the version past the one returned, so the caller
/// reads again at its next look. (Not a MULTI: a full Redis refuses even
/// reads inside a transaction, and deliver must start on a full Redis.)
pub async fn load<C: ConnectionLike>(conn: &mut C) -> RedisResult<(u64, Vec<ProducerRecord>)> {
    let version = version(conn).await?;
    let ids: Vec<String> = redis::cmd("SMEMBERS").arg(IDS).query_async(conn).await?;
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HGETALL").arg(key_of(id));
    }
    let replies: Vec<redis::Value> = if ids.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn).await?
    };
    let records = ids
        .into_iter()
        .zip(replies)
        .filter_map(|(id, fields)| {
            let fields: HashMap<String, String> = redis::from_redis_value(fields).ok()?;
            ProducerRecord::from_fields(id, &fields)
        })
        .collect();
    Ok((version, records))
}

/// Revokes a key: 1, 2 if it was revoked already, 0 if unknown.
pub async fn revoke<C: ConnectionLike>(conn: &mut C, id: &str, now_ms: u64) -> RedisResult<u8> {
    REVOKE.key(key_of(id)).key(VERSION).arg(now_ms).invoke_async(conn).await
}

/// Makes `secret` the key's signing secret, the current one its previous:
/// false if the key is unknown.
pub async fn rotate_secret<C: ConnectionLike>(conn: &mut C, id: &str, secret: &str, now_ms: u64) -> RedisResult<bool> {
    let done: u8 = ROTATE
        .key(key_of(id))
        .key(VERSION)
        .arg(secret)
        .arg(now_ms)
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}

/// Counts one request of key `id` in `second`; returns the count so far
/// over every ingest process.
pub async fn count_request<C: ConnectionLike>(conn: &mut C, id: &str, second: u64) -> RedisResult<u64> {
    let key = format!("postback:{{producers}}:rate:{id}:{second}");
    let (count,): (u64,) = redis::pipe()
        .incr(&key, 1)
        .expire(&key, RATE_COUNTER_TTL_SECS as i64)
        .ignore()
        .query_async(conn)
        .await?;
    Ok(count)
}

impl Queue {
    /// Stores a new producer key.
    pub async fn create_producer(
        &self,
        key: &crate::producer::NewKey,
        name: &str,
        rate: Option<u32>,
    ) -> Result<(), QueueError> {
        self.run("producer keys", Duration::ZERO, async move |mut conn| {
            create(&mut conn, key, name, rate, crate::now_ms()).await
        })
        .await
    }

    /// The producer key store's version: it moves on at every change.
    pub async fn producers_version(&self) -> Result<u64, QueueError> {
        self.run("producer keys", Duration::ZERO, async move |mut conn| {
            version(&mut conn).await
        })
        .await
    }

    /// Every producer key, and the store version it was read at.
    pub async fn producers(&self) -> Result<(u64, Vec<crate::producer::ProducerRecord>), QueueError> {
        self.run("producer keys", Duration::ZERO, async move |mut conn| {
            load(&mut conn).await
        })
        .await
    }

    /// Revokes a producer key: 1, 2 if it was revoked already, 0 if unknown.
    pub async fn revoke_producer(&self, id: &str) -> Result<u8, QueueError> {
        self.run("producer keys", Duration::ZERO, async move |mut conn| {
            revoke(&mut conn, id, crate::now_ms()).await
        })
        .await
    }

    /// Gives a producer key a new signing secret; false if unknown.
    pub async fn rotate_producer_secret(&self, id: &str, secret: &str) -> Result<bool, QueueError> {
        self.run("producer keys", Duration::ZERO, async move |mut conn| {
            rotate_secret(&mut conn, id, secret, crate::now_ms()).await
        })
        .await
    }

    /// Counts one request of producer `id` in Unix second `second`, over
    /// every ingest process; returns the count so far.
    pub async fn count_producer_request(&self, id: &str, second: u64) -> Result<u64, QueueError> {
        self.run("rate limit", Duration::ZERO, async move |mut conn| {
            count_request(&mut conn, id, second).await
        })
        .await
    }
}
