//! Every Redis key of a queue, the shards and their hash tags, and the
//! record of which shards a queue has had.
//!
//! Every key of a queue carries its shard's hash tag (`postback:{q}:...`),
//! so each script touches one slot; the key table is in
//! `docs/ARCHITECTURE.md`.

use super::{Queue, QueueError};
use deadpool_redis::redis::{aio::ConnectionLike, RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

static SHARDS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/shards.lua")));

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

impl Queue {
    /// The ready list's key, for messages to operators.
    pub fn ready_key(&self) -> &str {
        &self.state.shards[0].ready
    }

    /// The dead-letter list's key, for messages to operators.
    pub fn dead_key(&self) -> &str {
        &self.state.shards[0].dead
    }

    /// Records this process's shards in Redis and returns the keys of
    /// every shard the queue has had: the shards to consume. A consumer's
    /// call (a write); the views read with [`Queue::every_shard`].
    pub async fn record_shards(&self) -> Result<Vec<QueueKeys>, QueueError> {
        let shards = &self.state.shards;
        let mine: Vec<&str> = shards.iter().map(QueueKeys::tag).collect();
        let tags = self
            .run("shards", Duration::ZERO, async move |mut conn| {
                record_shards(&mut conn, &shards[0], &mine).await
            })
            .await?;
        Ok(self.with_mine_first(tags))
    }

    /// The keys of every shard the queue has had, as the consumers
    /// recorded them, and this process's own: the shards to look at. Only
    /// reads, so the operator's views answer while Redis refuses writes
    /// (a full disk, too few replicas), when they are needed most.
    pub async fn every_shard(&self) -> Result<Vec<QueueKeys>, QueueError> {
        let shards = &self.state.shards;
        let tags = self
            .run("shards", Duration::ZERO, async move |mut conn| {
                known_shards(&mut conn, &shards[0]).await
            })
            .await?;
        Ok(self.with_mine_first(tags))
    }

    /// This process's shards first, in order, then the others of `tags`.
    fn with_mine_first(&self, tags: Vec<String>) -> Vec<QueueKeys> {
        let shards = &self.state.shards;
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
        self.state.shards.len()
    }
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
