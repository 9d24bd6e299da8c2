//! Destinations: the shared state of each partner (`host:port` of a
//! filled-in URL) that is not simply open for delivery: its circuit breaker
//! open or half-open after failures, a pause it asked for (`Retry-After`),
//! or disabled; and the limits an operator set for it ([`Policy`]: a rate,
//! taken in small leases by `lua/destinations_lease.lua`, and a
//! concurrency). A destination without an entry is closed: delivered to.
//!
//! The state lives in Redis under a hash tag of its own, `{destinations}`,
//! shared by every queue and shard, so that every deliver process agrees.
//! Each process keeps a copy and reads it again when [`VERSION_KEY`] moves
//! (deliver's `destinations` module): no round trip per delivery. Its
//! attempts and failures reach Redis once a second in one script call
//! (`lua/destinations_report.lua`), which also opens the breaker when the
//! shared window holds enough failures.

use super::{Queue, QueueError, WorkerQueue};
use deadpool_redis::redis::{self, aio::ConnectionLike, RedisResult, Script};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;
use std::time::Duration;

static REPORT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/destinations_report.lua")));
static PROBE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/destinations_probe.lua")));
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/destinations_lease.lua")));

/// Every destination that is not closed: host -> JSON [`DestinationState`].
pub const STATE_KEY: &str = "postback:{destinations}:state";
/// Every destination an operator set limits for: host -> JSON [`Policy`].
pub const POLICY_KEY: &str = "postback:{destinations}:policy";
/// Moves on at every change of [`STATE_KEY`] or [`POLICY_KEY`].
pub const VERSION_KEY: &str = "postback:{destinations}:version";

/// The theoretical arrival time of a rate-limited destination's next
/// request (GCRA, see `lua/destinations_lease.lua`).
pub fn tat_key(host: &str) -> String {
    format!("postback:{{destinations}}:tat:{host}")
}

/// An operator's limits for one destination (`deliver destinations set`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Requests allowed per `per_ms`, over every process (0: no rate).
    pub rate: u32,
    /// 1000 (a rate per second) or 60000 (per minute).
    pub per_ms: u64,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
    /// Requests in flight at once, instead of `DELIVER_PER_HOST_CONCURRENCY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl Policy {
    /// The time between two requests at the rate, in ms.
    pub fn interval_ms(&self) -> f64 {
        self.per_ms as f64 / f64::from(self.rate.max(1))
    }

    /// As the operator wrote it: `50/s burst 50`, `concurrency 4`.
    pub fn shown(&self) -> String {
        let mut parts = Vec::new();
        if self.rate > 0 {
            let unit = if self.per_ms == 60_000 { "m" } else { "s" };
            parts.push(format!("{}/{unit} burst {}", self.rate, self.burst));
        }
        if let Some(n) = self.concurrency {
            parts.push(format!("concurrency {n}"));
        }
        parts.join(" ")
    }
}

/// Everything a deliver process follows: the version, the destinations
/// that are not closed, and those with limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// [`VERSION_KEY`]'s value when read.
    pub version: u64,
    /// Every destination that is not closed.
    pub states: Vec<(String, DestinationState)>,
    /// Every destination with limits.
    pub policies: Vec<(String, Policy)>,
}

/// The sliding window of a destination's attempts and failures, in
/// buckets (see `lua/destinations_report.lua`).
pub fn counts_key(host: &str) -> String {
    format!("postback:{{destinations}}:counts:{host}")
}

/// The destinations attempted in the last [`RECENT`], scored by when.
pub const SEEN_KEY: &str = "postback:{destinations}:seen";
/// A destination's attempts, deliveries and failures per minute, for the
/// last [`RECENT`].
pub fn recent_key(host: &str) -> String {
    format!("postback:{{destinations}}:recent:{host}")
}
/// How far back the dashboard's destination figures go.
pub const RECENT: Duration = Duration::from_secs(300);

/// A destination's state, when it is not closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DestinationState {
    /// The breaker is open: its jobs are held, with no attempt spent, until
    /// `until`, when one probe may go.
    Open {
        /// Since when (ms since the epoch).
        since: u64,
        /// When a probe may go.
        until: u64,
        /// This cooldown; it doubles while probes keep failing.
        cooldown_ms: u64,
        /// When the breaker first opened without a success since.
        opened_at: u64,
    },
    /// One probe is in flight; everything else is still held.
    HalfOpen {
        /// Since when.
        since: u64,
        /// The cooldown that led here.
        cooldown_ms: u64,
        /// When the breaker first opened without a success since.
        opened_at: u64,
        /// The worker that holds the probe.
        probe: String,
        /// When it claimed it.
        probe_at: u64,
    },
    /// The partner asked for a pause (`Retry-After` on a 429 or 503): held
    /// until `until`, then closed.
    Paused {
        /// Since when.
        since: u64,
        /// Until when.
        until: u64,
    },
    /// Just closed after a probe succeeded: for [`RAMP`] its jobs go at a
    /// rate that starts at [`RAMP_FIRST_RATE`] a second and doubles every
    /// second (or at its own rate, if it has one), so that the held jobs
    /// do not all go at once.
    Ramping {
        /// Since when.
        since: u64,
    },
    /// Disabled by an operator or after a breaker open too long: its jobs
    /// become dead letters (`destination_disabled`) until it is enabled.
    Disabled {
        /// Since when.
        since: u64,
        /// `operator` or `breaker`.
        by: String,
    },
}

impl DestinationState {
    /// The state's name: `open`, `half_open`, `paused` or `disabled`.
    pub fn name(&self) -> &'static str {
        match self {
            DestinationState::Open { .. } => "open",
            DestinationState::HalfOpen { .. } => "half_open",
            DestinationState::Paused { .. } => "paused",
            DestinationState::Ramping { .. } => "ramping",
            DestinationState::Disabled { .. } => "disabled",
        }
    }

    /// Since when it is in this state (ms since the epoch).
    pub fn since(&self) -> u64 {
        match self {
            DestinationState::Open { since, .. }
            | DestinationState::HalfOpen { since, .. }
            | DestinationState::Paused { since, .. }
            | DestinationState::Ramping { since }
            | DestinationState::Disabled { since, .. } => *since,
        }
    }

    /// Whether it still holds jobs at `now` (a pause ends by itself; a
    /// ramp limits, it does not hold).
    pub fn holds(&self, now_ms: u64) -> bool {
        match self {
            DestinationState::Paused { until, .. } => *until > now_ms,
            DestinationState::Ramping { .. } => false,
            _ => true,
        }
    }

    /// The rate a ramp allows at `now`, while it lasts.
    pub fn ramp_rate(&self, now_ms: u64) -> Option<u32> {
        let DestinationState::Ramping { since } = self else {
            return None;
        };
        let age = now_ms.saturating_sub(*since);
        (age < RAMP.as_millis() as u64).then(|| RAMP_FIRST_RATE << (age / 1000).min(20))
    }
}

/// The outcome of a probe, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Probe {
    /// No probe of this worker ended.
    #[default]
    None,
    /// The probe got an answer that is not the partner's failure: close.
    Succeeded,
    /// The probe failed: open again, for twice as long.
    Failed,
}

/// One process's news of one destination since its last report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Attempts made.
    pub attempts: u64,
    /// Of them, the partner's failures (network, timeout, 5xx, 429).
    pub failures: u64,
    /// Of them, deliveries (2xx).
    pub delivered: u64,
    /// The answered attempts by response-time bucket
    /// (`common::stats::RESPONSE_BUCKETS_MS`; empty: none).
    pub buckets: Vec<u64>,
    /// A pause asked for, until then (ms since the epoch; 0: none).
    pub pause_until: u64,
    /// The outcome of this worker's probe, if one ended.
    pub probe: Probe,
}

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// `DELIVER_BREAKER`: off counts nothing towards opening.
    pub enabled: bool,
    /// `DELIVER_BREAKER_WINDOW`: how far back attempts count.
    pub window: Duration,
    /// `DELIVER_BREAKER_MIN_ATTEMPTS`: fewer never open it.
    pub min_attempts: u64,
    /// `DELIVER_BREAKER_FAILURE_PCT`: the share of failures that opens it.
    pub failure_pct: u64,
    /// `DELIVER_BREAKER_COOLDOWN`: the first wait before a probe.
    pub cooldown: Duration,
    /// `DELIVER_DISABLE_AFTER`: open this long without a success disables.
    pub disable_after: Duration,
}

/// How long a destination ramps up after its breaker closes.
pub const RAMP: Duration = Duration::from_secs(10);
/// The ramp's first second: this many requests, then twice as many each
/// second (10, 20, 40, … 5,120 a second in the tenth).
pub const RAMP_FIRST_RATE: u32 = 10;

/// The longest cooldown: it doubles after each failed probe up to this.
pub const COOLDOWN_MAX: Duration = Duration::from_secs(600);

/// Response-time buckets a report carries per destination.
const BUCKETS: usize = crate::stats::RESPONSE_BUCKETS_MS.len() + 1;

/// How many buckets the window is counted in.
const WINDOW_BUCKETS: u64 = 6;

/// A change of state a script made, to log and count once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The destination.
    pub host: String,
    /// Its new state: a [`DestinationState::name`], or `closed`.
    pub state: String,
}

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

/// One destination's last [`RECENT`], for the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// The destination.
    pub destination: String,
    /// Attempts, over every process.
    pub attempts: u64,
    /// Of them, deliveries (2xx).
    pub delivered: u64,
    /// Of them, the partner's failures.
    pub failed: u64,
    /// The 99th percentile of its response times (ms), estimated within
    /// its histogram bucket as the dashboard's totals are; none without
    /// an answer.
    pub p99_ms: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_as_the_scripts_write_them() {
        let open: DestinationState = serde_json::from_str(
            r#"{"state":"open","since":1765000000000,"until":1765000030000,"cooldown_ms":30000,"opened_at":1765000000000}"#,
        )
        .unwrap();
        assert_eq!(open.name(), "open");
        assert!(open.holds(1765000040000), "open holds until a probe closes it");
        let paused: DestinationState = serde_json::from_str(r#"{"state":"paused","since":1,"until":3000}"#).unwrap();
        assert!(paused.holds(2999) && !paused.holds(3000), "a pause ends by itself");
        let disabled = DestinationState::Disabled {
            since: 5,
            by: "operator".into(),
        };
        let json = serde_json::to_string(&disabled).unwrap();
        assert_eq!(json, r#"{"state":"disabled","since":5,"by":"operator"}"#);
        assert_eq!(serde_json::from_str::<DestinationState>(&json).unwrap(), disabled);
    }

    #[test]
    fn a_ramp_doubles_every_second_then_ends() {
        let ramp = DestinationState::Ramping { since: 10_000 };
        assert_eq!(ramp.ramp_rate(10_000), Some(10));
        assert_eq!(ramp.ramp_rate(11_500), Some(20));
        assert_eq!(ramp.ramp_rate(19_999), Some(10 << 9));
        assert_eq!(ramp.ramp_rate(20_000), None, "over after RAMP");
        assert!(!ramp.holds(10_000), "a ramp limits, it does not hold");
    }

    #[test]
    fn every_destination_key_shares_one_slot() {
        for key in [
            STATE_KEY.to_string(),
            POLICY_KEY.to_string(),
            VERSION_KEY.to_string(),
            counts_key("h:80"),
            tat_key("h:80"),
            SEEN_KEY.to_string(),
            recent_key("h:80"),
        ] {
            assert!(key.starts_with("postback:{destinations}:"), "{key}");
        }
    }
}
