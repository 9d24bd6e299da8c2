//! The destinations' Redis commands (the scripts in `lua/destinations_*.lua`)
//! over any connection, and the queue handle's methods that call them.

use super::DestinationState;
use super::{
    counts_key, recent_key, tat_key, BUCKETS, COOLDOWN_MAX, POLICY_KEY, RAMP, RECENT, SEEN_KEY, STATE_KEY, VERSION_KEY,
    WINDOW_BUCKETS,
};
use super::{Activity, BreakerSettings, Change, Policy, Probe, Report, Snapshot};
use crate::queue::{Queue, QueueError, WorkerQueue};
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

static REPORT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/destinations_report.lua")));

static PROBE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/destinations_probe.lua")));

static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/destinations_lease.lua")));

/// The version, every destination that is not closed, and every policy.
pub async fn read<C: ConnectionLike>(conn: &mut C) -> RedisResult<Snapshot> {
    type Fields = Vec<(String, String)>;
    let (version, states, policies): (Option<u64>, Fields, Fields) = redis::pipe()
        .cmd("GET")
        .arg(VERSION_KEY)
        .cmd("HGETALL")
        .arg(STATE_KEY)
        .cmd("HGETALL")
        .arg(POLICY_KEY)
        .query_async(conn)
        .await?;
    Ok(Snapshot {
        version: version.unwrap_or(0),
        states: decoded(states, "state"),
        policies: decoded(policies, "limits"),
    })
}

/// Each `(host, JSON)` decoded; one that does not read is left out (and
/// said), as if it were not there.
fn decoded<T: serde::de::DeserializeOwned>(all: Vec<(String, String)>, what: &str) -> Vec<(String, T)> {
    all.into_iter()
        .filter_map(|(host, json)| match serde_json::from_str(&json) {
            Ok(value) => Some((host, value)),
            Err(e) => {
                log::warn!("destination {host}: unreadable {what} {json:?} ({e}); ignored");
                None
            }
        })
        .collect()
}

/// The version alone: whether a copy is still current.
pub async fn version<C: ConnectionLike>(conn: &mut C) -> RedisResult<u64> {
    let version: Option<u64> = redis::cmd("GET").arg(VERSION_KEY).query_async(conn).await?;
    Ok(version.unwrap_or(0))
}

/// Reports one process's news (see `lua/destinations_report.lua`): returns
/// the version after it and the changes it made.
pub async fn report<C: ConnectionLike>(
    conn: &mut C,
    settings: &BreakerSettings,
    worker: &str,
    now_ms: u64,
    news: &[(String, Report)],
) -> RedisResult<(u64, Vec<Change>)> {
    let window = settings.window.as_millis().max(WINDOW_BUCKETS as u128) as u64;
    let mut call = REPORT.prepare_invoke();
    call.key(STATE_KEY).key(VERSION_KEY).key(SEEN_KEY);
    for (host, _) in news {
        call.key(counts_key(host)).key(recent_key(host));
    }
    call.arg(now_ms)
        .arg(window)
        .arg(window / WINDOW_BUCKETS)
        .arg(settings.min_attempts)
        .arg(if settings.enabled { settings.failure_pct } else { 0 })
        .arg(settings.cooldown.as_millis() as u64)
        .arg(COOLDOWN_MAX.max(settings.cooldown).as_millis() as u64)
        .arg(settings.disable_after.as_millis() as u64)
        .arg(worker)
        .arg(RAMP.as_millis() as u64);
    for (host, news) in news {
        let probe = match news.probe {
            Probe::None => 0,
            Probe::Succeeded => 1,
            Probe::Failed => 2,
        };
        call.arg(host)
            .arg(news.attempts)
            .arg(news.failures)
            .arg(news.pause_until)
            .arg(probe)
            .arg(news.delivered);
        for i in 0..BUCKETS {
            call.arg(news.buckets.get(i).copied().unwrap_or(0));
        }
    }
    let reply: Vec<String> = call.invoke_async(conn).await?;
    let version = reply.first().and_then(|v| v.parse().ok()).unwrap_or(0);
    let changes = reply[1.min(reply.len())..]
        .chunks_exact(2)
        .map(|pair| Change {
            host: pair[0].clone(),
            state: pair[1].clone(),
        })
        .collect();
    Ok((version, changes))
}

/// The `limit` destinations attempted most recently in the last [`RECENT`],
/// each with its figures.
pub async fn activity<C: ConnectionLike>(conn: &mut C, now_ms: u64, limit: usize) -> RedisResult<Vec<Activity>> {
    let since = now_ms.saturating_sub(RECENT.as_millis() as u64);
    let hosts: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
        .arg(SEEN_KEY)
        .arg("+inf")
        .arg(since)
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .query_async(conn)
        .await?;
    if hosts.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for host in &hosts {
        pipe.cmd("HGETALL").arg(recent_key(host));
    }
    let minutes: Vec<Vec<(String, u64)>> = pipe.query_async(conn).await?;
    let first_minute = since / 60_000;
    Ok(hosts
        .into_iter()
        .zip(minutes)
        .map(|(destination, fields)| {
            let mut activity = Activity {
                destination,
                ..Activity::default()
            };
            let mut answers = crate::stats::Second {
                buckets: vec![0; BUCKETS],
                exact_dropped: true,
                ..crate::stats::Second::default()
            };
            for (field, n) in fields {
                let Some((minute, kind)) = field.split_once(':') else {
                    continue;
                };
                if minute.parse::<u64>().is_ok_and(|m| m >= first_minute) {
                    match kind {
                        "a" => activity.attempts += n,
                        "d" => activity.delivered += n,
                        "f" => activity.failed += n,
                        bucket => {
                            let slot = bucket.strip_prefix('b').and_then(|i| i.parse::<usize>().ok());
                            if let Some(slot) = slot.and_then(|i| answers.buckets.get_mut(i)) {
                                *slot += n;
                            }
                        }
                    }
                }
            }
            activity.p99_ms = answers.percentile_ms(0.99);
            activity
        })
        .collect())
}

/// Claims the probe of `host` for `worker` if its breaker is open and its
/// cooldown over (see `lua/destinations_probe.lua`).
pub async fn claim_probe<C: ConnectionLike>(
    conn: &mut C,
    host: &str,
    now_ms: u64,
    worker: &str,
    timeout: Duration,
) -> RedisResult<bool> {
    let claimed: u8 = PROBE
        .key(STATE_KEY)
        .key(VERSION_KEY)
        .arg(host)
        .arg(now_ms)
        .arg(worker)
        .arg(timeout.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(claimed == 1)
}

/// Sets `host`'s limits, or with `None` removes them (its rate's arrival
/// time is forgotten too).
pub async fn set_policy<C: ConnectionLike>(conn: &mut C, host: &str, policy: Option<&Policy>) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    match policy {
        Some(policy) => {
            let json = serde_json::to_string(policy).map_err(|e| std::io::Error::other(e.to_string()))?;
            pipe.cmd("HSET").arg(POLICY_KEY).arg(host).arg(json).ignore();
        }
        None => {
            pipe.cmd("HDEL").arg(POLICY_KEY).arg(host).ignore();
        }
    }
    pipe.cmd("DEL").arg(tat_key(host)).ignore();
    pipe.cmd("INCR").arg(VERSION_KEY).ignore();
    pipe.query_async(conn).await
}

/// Leases up to `n` requests of `host` at its `policy`'s rate, over every
/// process (see `lua/destinations_lease.lua`). Returns how many.
pub async fn lease<C: ConnectionLike>(
    conn: &mut C,
    host: &str,
    policy: &Policy,
    n: usize,
    now_ms: u64,
) -> RedisResult<usize> {
    LEASE
        .key(tat_key(host))
        .arg(now_ms)
        .arg(policy.interval_ms())
        .arg(policy.burst.max(1))
        .arg(n)
        .invoke_async(conn)
        .await
}

/// Disables `host` (an operator's decision), or enables it again: its state
/// and its counts are then forgotten, as for a destination never seen.
pub async fn set_disabled<C: ConnectionLike>(conn: &mut C, host: &str, disabled: bool, now_ms: u64) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    if disabled {
        let state = DestinationState::Disabled {
            since: now_ms,
            by: "operator".into(),
        };
        let json = serde_json::to_string(&state).map_err(|e| std::io::Error::other(e.to_string()))?;
        pipe.cmd("HSET").arg(STATE_KEY).arg(host).arg(json).ignore();
    } else {
        pipe.cmd("HDEL").arg(STATE_KEY).arg(host).ignore();
        pipe.cmd("DEL").arg(counts_key(host)).ignore();
    }
    pipe.cmd("INCR").arg(VERSION_KEY).ignore();
    pipe.query_async(conn).await
}

impl Queue {
    /// The destinations' version, state and limits.
    pub async fn destinations(&self) -> Result<Snapshot, QueueError> {
        self.run("destinations", Duration::ZERO, async move |mut conn| {
            read(&mut conn).await
        })
        .await
    }

    /// The `limit` destinations attempted most recently, with their figures
    /// of the last [`RECENT`] (see [`activity`]).
    pub async fn destination_activity(&self, limit: usize) -> Result<Vec<Activity>, QueueError> {
        self.run("destinations", Duration::ZERO, async move |mut conn| {
            activity(&mut conn, crate::now_ms(), limit).await
        })
        .await
    }

    /// The destinations' version alone.
    pub async fn destinations_version(&self) -> Result<u64, QueueError> {
        self.run("destinations", Duration::ZERO, async move |mut conn| {
            version(&mut conn).await
        })
        .await
    }

    /// Reports a process's news of destinations (see [`report`]).
    pub async fn report_destinations(
        &self,
        settings: &BreakerSettings,
        worker: &str,
        news: &[(String, Report)],
    ) -> Result<(u64, Vec<Change>), QueueError> {
        self.run("destinations", Duration::ZERO, async move |mut conn| {
            report(&mut conn, settings, worker, crate::now_ms(), news).await
        })
        .await
    }

    /// Sets or removes `host`'s limits (see [`set_policy`]).
    pub async fn set_destination_policy(&self, host: &str, policy: Option<&Policy>) -> Result<(), QueueError> {
        self.run("destinations", Duration::ZERO, async move |mut conn| {
            set_policy(&mut conn, host, policy).await
        })
        .await
    }

    /// Disables or enables `host` (see [`set_disabled`]).
    pub async fn set_destination_disabled(&self, host: &str, disabled: bool) -> Result<(), QueueError> {
        self.run("destinations", Duration::ZERO, async move |mut conn| {
            set_disabled(&mut conn, host, disabled, crate::now_ms()).await
        })
        .await
    }
}

impl WorkerQueue {
    /// Leases up to `n` requests of `host` at `policy`'s rate (see
    /// [`lease`]).
    pub async fn lease(&self, host: &str, policy: &Policy, n: usize) -> Result<usize, QueueError> {
        self.queue
            .run("destinations", Duration::ZERO, async move |mut conn| {
                lease(&mut conn, host, policy, n, crate::now_ms()).await
            })
            .await
    }

    /// Claims the probe of `host` for this worker (see [`claim_probe`]).
    pub async fn claim_probe(&self, host: &str, timeout: Duration) -> Result<bool, QueueError> {
        let worker = self.id.as_str();
        self.queue
            .run("destinations", Duration::ZERO, async move |mut conn| {
                claim_probe(&mut conn, host, crate::now_ms(), worker, timeout).await
            })
            .await
    }
}
