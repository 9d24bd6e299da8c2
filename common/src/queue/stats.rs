//! The statistics' I/O: one deliver process's counts flushed, and a
//! window of seconds read back for ingest's `/stats`, each in one
//! pipeline. What is counted, and how percentiles come out of it, is
//! [`crate::stats`].

use super::{Depths, Queue, QueueError, QueueKeys};
use crate::stats::{Failure, Point, Second, Window, FAILURES_KEPT, RESPONSE_BUCKETS_MS, RETENTION_SECS};
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Flushes one process's counts of some seconds, the queue depths it last
/// saw, and its recent failures, in one round trip.
pub async fn flush<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    seconds: &BTreeMap<u64, Second>,
    depths: Option<(u64, Depths)>,
    failures: &[Failure],
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for (second, counts) in seconds {
        let key = keys.stats(*second);
        for (field, n) in [
            ("delivered", counts.delivered),
            ("retry", counts.retry),
            ("dead", counts.dead),
            ("transport", counts.transport),
        ] {
            if n > 0 {
                pipe.cmd("HINCRBY").arg(&key).arg(field).arg(n).ignore();
            }
        }
        for (i, n) in counts.buckets.iter().enumerate() {
            if *n > 0 {
                pipe.cmd("HINCRBY").arg(&key).arg(format!("b{i}")).arg(*n).ignore();
            }
        }
        // Exact times as `x<ms>` counts: processes and flushes add up.
        if !counts.exact_dropped {
            let mut times = counts.exact.clone();
            times.sort_unstable();
            for run in times.chunk_by(|a, b| a == b) {
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg(format!("x{}", run[0]))
                    .arg(run.len())
                    .ignore();
            }
        }
        pipe.cmd("EXPIRE").arg(&key).arg(RETENTION_SECS).ignore();
    }
    if let Some((second, d)) = depths {
        let key = keys.stats(second);
        pipe.cmd("HSET")
            .arg(&key)
            .arg("ready")
            .arg(d.ready)
            .arg("retrying")
            .arg(d.retry)
            .arg("dead_letters")
            .arg(d.dead)
            .ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(RETENTION_SECS).ignore();
    }
    if !failures.is_empty() {
        let encoded: Vec<String> = failures.iter().filter_map(|f| serde_json::to_string(f).ok()).collect();
        pipe.cmd("LPUSH").arg(keys.failures()).arg(encoded).ignore();
        pipe.cmd("LTRIM")
            .arg(keys.failures())
            .arg(0)
            .arg(FAILURES_KEPT - 1)
            .ignore();
    }
    pipe.query_async(conn).await
}

/// Reads `seconds` seconds up to `until` (inclusive), grouped by `step`.
pub async fn read<C: ConnectionLike>(
    conn: &mut C,
    keys: &QueueKeys,
    until: u64,
    seconds: u64,
    step: u64,
    failures: usize,
) -> RedisResult<Window> {
    let step = step.max(1);
    let first = until + 1 - seconds.max(1);
    let mut pipe = redis::pipe();
    for second in first..=until {
        pipe.cmd("HGETALL").arg(keys.stats(second));
    }
    pipe.cmd("LRANGE")
        .arg(keys.failures())
        .arg(0)
        .arg(failures.saturating_sub(1) as i64);
    let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let failure_list: Vec<String> = redis::from_redis_value(replies.pop().unwrap_or(redis::Value::Nil))?;

    let mut totals = Second::default();
    let mut series = Vec::new();
    let mut current = (
        Second::default(),
        Point {
            start: first,
            ..Point::default()
        },
    );
    for (offset, reply) in replies.into_iter().enumerate() {
        let second = first + offset as u64;
        if second >= current.1.start + step {
            series.push(finish(current));
            current = (
                Second::default(),
                Point {
                    start: second,
                    ..Point::default()
                },
            );
        }
        let fields: HashMap<String, u64> = redis::from_redis_value(reply)?;
        let counts = parse_second(&fields);
        current.0.merge(&counts);
        totals.merge(&counts);
        for (name, slot) in [
            ("ready", &mut current.1.ready),
            ("retrying", &mut current.1.retrying),
            ("dead_letters", &mut current.1.dead_letters),
        ] {
            if let Some(v) = fields.get(name) {
                *slot = Some(*v);
            }
        }
    }
    series.push(finish(current));
    let totals = finish((
        totals,
        Point {
            start: first,
            ..Point::default()
        },
    ));
    let failures = failure_list
        .iter()
        .filter_map(|f| serde_json::from_str(f).ok())
        .collect();
    Ok(Window {
        until,
        seconds,
        step,
        totals,
        series,
        failures,
    })
}

fn parse_second(fields: &HashMap<String, u64>) -> Second {
    let mut s = Second {
        delivered: fields.get("delivered").copied().unwrap_or(0),
        retry: fields.get("retry").copied().unwrap_or(0),
        dead: fields.get("dead").copied().unwrap_or(0),
        transport: fields.get("transport").copied().unwrap_or(0),
        buckets: vec![0; RESPONSE_BUCKETS_MS.len() + 1],
        exact: Vec::new(),
        exact_dropped: false,
    };
    for (i, slot) in s.buckets.iter_mut().enumerate() {
        *slot = fields.get(&format!("b{i}")).copied().unwrap_or(0);
    }
    let answered: u64 = s.buckets.iter().sum();
    for (field, count) in fields {
        if let Some(ms) = field.strip_prefix('x').and_then(|ms| ms.parse::<u64>().ok()) {
            // Never more than the answers: a count out of line is no time.
            let room = answered.saturating_sub(s.exact.len() as u64);
            s.exact.extend(std::iter::repeat_n(ms, (*count).min(room) as usize));
        }
    }
    s
}

fn finish((counts, mut point): (Second, Point)) -> Point {
    point.delivered = counts.delivered;
    point.retry = counts.retry;
    point.dead = counts.dead;
    point.transport = counts.transport;
    point.p50_ms = counts.percentile_ms(0.50);
    point.p90_ms = counts.percentile_ms(0.90);
    point.p99_ms = counts.percentile_ms(0.99);
    point.exact = counts.is_exact() && point.p99_ms.is_some();
    point
}

impl Queue {
    /// Adds one process's counts, the depths it saw and its recent failures
    /// to the cluster-wide statistics (see [`crate::stats`]).
    pub async fn flush_stats(
        &self,
        seconds: &BTreeMap<u64, Second>,
        depths: Option<(u64, Depths)>,
        failures: &[Failure],
    ) -> Result<(), QueueError> {
        let keys = &self.state.shards[0];
        self.run("statistics", Duration::ZERO, async move |mut conn| {
            flush(&mut conn, keys, seconds, depths, failures).await
        })
        .await
    }

    /// The statistics of `seconds` seconds up to `until`, by `step`, with
    /// the latest `failures` (see [`read`]).
    pub async fn stats_window(
        &self,
        until: u64,
        seconds: u64,
        step: u64,
        failures: usize,
    ) -> Result<Window, QueueError> {
        let keys = &self.state.shards[0];
        self.run("statistics", Duration::ZERO, async move |mut conn| {
            read(&mut conn, keys, until, seconds, step, failures).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_times_are_read_back_from_their_counts() {
        let fields: HashMap<String, u64> = [("delivered", 3), ("b0", 3), ("x2", 2), ("x4", 1)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let second = parse_second(&fields);
        assert!(second.is_exact());
        assert_eq!(second.percentile_ms(0.99), Some(4));
        let missing: HashMap<String, u64> = [("delivered", 3), ("b0", 3), ("x2", 2)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        assert!(!parse_second(&missing).is_exact(), "one answer's time is not known");
    }
}
