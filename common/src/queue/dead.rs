//! Dead letters: listing them, replaying them onto the queue, purging
//! them.

use super::{Queue, QueueError, QueueKeys, MAX_BATCH};
use crate::job::DeadLetter;
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/replay.lua")));
static PURGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/purge.lua")));

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

impl Queue {
    /// The newest `limit` dead letters of every shard (0: all), each as
    /// stored (needed to replay it) and decoded (`None` if unreadable).
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<(String, Option<DeadLetter>)>, QueueError> {
        let by_shard = self
            .on_every_shard("dead letters", Duration::ZERO, async |mut conn, keys| {
                dead_letters(&mut conn, keys, limit).await
            })
            .await?;
        let several = by_shard.len() > 1;
        let mut letters: Vec<_> = by_shard.into_iter().flat_map(|(_, letters)| letters).collect();
        if several {
            letters.sort_by_key(|(_, letter)| std::cmp::Reverse(letter.as_ref().map_or(0, |l| l.dead_at)));
            if limit > 0 {
                letters.truncate(limit);
            }
        }
        Ok(letters)
    }

    /// Requeues dead letters, each given as stored and decoded, on the
    /// shard that holds it (see [`replay`]). Returns how many were
    /// requeued.
    pub async fn replay(&self, letters: &[(String, DeadLetter)]) -> Result<u64, QueueError> {
        // A letter is removed only from the list that holds it, so trying
        // every shard requeues each letter once.
        let by_shard = self
            .on_every_shard("replay", Duration::ZERO, async |mut conn, keys| {
                replay(&mut conn, keys, letters).await
            })
            .await?;
        Ok(by_shard.iter().map(|(_, n)| n).sum())
    }

    /// Empties every shard's dead-letter list. Returns how many went.
    pub async fn purge_dead(&self) -> Result<u64, QueueError> {
        let by_shard = self
            .on_every_shard("purge", Duration::ZERO, async |mut conn, keys| {
                purge_dead(&mut conn, keys).await
            })
            .await?;
        Ok(by_shard.iter().map(|(_, n)| n).sum())
    }
}
