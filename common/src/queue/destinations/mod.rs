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

mod commands;

pub use commands::{activity, claim_probe, lease, read, report, set_disabled, set_policy, version};

use serde::{Deserialize, Serialize};
use std::time::Duration;

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
