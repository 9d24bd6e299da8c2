//! What this process knows of each destination's shared state (see
//! `common::queue::destinations`): which partners' jobs to hold, which to
//! turn into dead letters, which job may go as a breaker's probe, and the
//! limits an operator set: a rate, spent from small leases of requests
//! taken from Redis for jobs that wait parked ([`Parked::Lease`]), and a
//! concurrency.
//!
//! The usual path costs one atomic load: while every destination is
//! closed, [`Destinations::admit`] looks at nothing else. Attempts are
//! counted in memory and reported once a second by [`run`], which also
//! reads the state again when its version has moved, so a change made by
//! any process reaches this one within about a second. A pause a partner
//! asks for holds this process's jobs at once and is reported at once.

use crate::metrics::Metrics;
use common::queue::destinations::{BreakerSettings, DestinationState, Policy, Probe, Report, Snapshot};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub mod command;
mod sync;

pub use sync::{run, sync};

/// How often news is reported and the version looked at.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How long leased requests may be spent: they were counted against the
/// rate when leased, so one kept longer could be sent in a later second
/// on top of that second's own.
const LEASE_VALID: Duration = Duration::from_millis(500);

/// What becomes of a job of a destination, decided at dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Deliver it.
    Go,
    /// Deliver it as the breaker's probe: its outcome closes the breaker
    /// or opens it again.
    Probe,
    /// Hold it (parked, no attempt spent): the breaker is open, the
    /// partner asked for a pause, or its rate has no request left for now.
    Hold,
    /// The destination is disabled: the job becomes a dead letter.
    Disabled,
}

/// One attempt at a destination, as its breaker and the dashboard count it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempted {
    /// The partner failed it (network, timeout, 5xx, 429).
    pub failed: bool,
    /// It was delivered (2xx).
    pub delivered: bool,
    /// Its response time, if it was answered.
    pub answered_ms: Option<u64>,
    /// A pause the partner asked for, until then (ms since the epoch).
    pub pause_until: Option<u64>,
    /// It was the breaker's probe.
    pub probe: bool,
}

/// What the fetcher may do with a destination's parked jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parked {
    /// Take them back as its gate has room.
    Free,
    /// Leave them.
    Held,
    /// Its cooldown is over: claim the probe, then take one back.
    ProbeDue,
    /// Disabled: take them back, to become dead letters.
    Drain,
    /// Rate-limited: lease requests at this rate, then take back as many.
    Lease(Policy),
}

/// What this process knows: the destinations that are not closed, and the
/// limits set.
#[derive(Default)]
struct Known {
    states: HashMap<String, DestinationState>,
    policies: HashMap<String, Policy>,
}

/// Requests leased for a rate-limited destination, to spend before `until`.
struct Tokens {
    left: usize,
    until: Instant,
}

/// The state of every destination that is not closed, as last read, and
/// what this process has to report.
pub struct Destinations {
    breaker: BreakerSettings,
    worker: String,
    probe_timeout: Duration,
    /// Whether any destination is not closed or has limits: the usual
    /// path's one check.
    any: AtomicBool,
    version: AtomicU64,
    known: RwLock<Known>,
    tokens: Mutex<HashMap<String, Tokens>>,
    news: Mutex<HashMap<String, Report>>,
    /// Probes this process holds and has yet to send, by destination.
    probes: Mutex<HashSet<String>>,
    report_now: Notify,
    metrics: Arc<Metrics>,
}

impl Destinations {
    /// Knows nothing yet: every destination closed until [`run`] reads.
    pub fn new(breaker: BreakerSettings, worker: &str, probe_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Destinations {
            breaker,
            worker: worker.to_string(),
            probe_timeout,
            any: AtomicBool::new(false),
            version: AtomicU64::new(u64::MAX),
            known: RwLock::new(Known::default()),
            tokens: Mutex::new(HashMap::new()),
            news: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashSet::new()),
            report_now: Notify::new(),
            metrics,
        }
    }

    /// How long a claimed probe is this process's before another may claim.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout
    }

    /// What becomes of a job for `host` now.
    pub fn admit(&self, host: &str) -> Admission {
        if !self.any.load(Ordering::Acquire) {
            return Admission::Go;
        }
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        match known.states.get(host) {
            None => {}
            Some(ramp @ DestinationState::Ramping { .. }) if ramp.ramp_rate(common::now_ms()).is_some() => {
                return if self.spend_token(host) {
                    Admission::Go
                } else {
                    Admission::Hold
                };
            }
            // A ramp that is over: as closed.
            Some(DestinationState::Ramping { .. }) => {}
            Some(DestinationState::Disabled { .. }) => return Admission::Disabled,
            Some(DestinationState::Paused { until, .. }) if *until <= common::now_ms() => {}
            Some(DestinationState::Paused { .. }) => return Admission::Hold,
            Some(DestinationState::Open { .. } | DestinationState::HalfOpen { .. }) => {
                return if self.probes.lock().unwrap_or_else(|e| e.into_inner()).remove(host) {
                    Admission::Probe
                } else {
                    Admission::Hold
                };
            }
        }
        match known.policies.get(host) {
            Some(policy) if policy.rate > 0 && !self.spend_token(host) => Admission::Hold,
            _ => Admission::Go,
        }
    }

    /// The requests in flight at once an operator set for `host`, if any.
    pub fn concurrency(&self, host: &str) -> Option<usize> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.policies.get(host)?.concurrency.map(|n| n as usize)
    }

    /// Spends one leased request of `host`, if one is left and still valid.
    fn spend_token(&self, host: &str) -> bool {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match tokens.get_mut(host) {
            Some(t) if t.left > 0 && t.until > Instant::now() => {
                t.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// `n` requests of `host` were leased for this process.
    pub fn leased(&self, host: &str, n: usize) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = tokens.entry(host.to_string()).or_insert(Tokens { left: 0, until: now });
        if entry.until <= now {
            entry.left = 0;
        }
        entry.left += n;
        entry.until = now + LEASE_VALID;
    }

    /// What the fetcher may do with `host`'s parked jobs now.
    pub fn parked(&self, host: &str) -> Parked {
        if !self.any.load(Ordering::Acquire) {
            return Parked::Free;
        }
        let now = common::now_ms();
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let free = || match known.policies.get(host) {
            Some(policy) if policy.rate > 0 => Parked::Lease(policy.clone()),
            _ => Parked::Free,
        };
        match known.states.get(host) {
            None => free(),
            Some(ramp @ DestinationState::Ramping { .. }) => match (ramp.ramp_rate(now), known.policies.get(host)) {
                (None, _) => free(),
                // Its own rate, if it has one: the ramp is for the others.
                (Some(_), Some(policy)) if policy.rate > 0 => Parked::Lease(policy.clone()),
                (Some(rate), policy) => Parked::Lease(Policy {
                    rate,
                    per_ms: 1000,
                    burst: rate,
                    concurrency: policy.and_then(|p| p.concurrency),
                }),
            },
            Some(DestinationState::Disabled { .. }) => Parked::Drain,
            Some(DestinationState::Paused { until, .. }) if *until <= now => free(),
            Some(DestinationState::Paused { .. }) => Parked::Held,
            Some(DestinationState::Open { until, .. }) if *until <= now => Parked::ProbeDue,
            Some(DestinationState::HalfOpen { probe_at, .. })
                if now.saturating_sub(*probe_at) >= self.probe_timeout.as_millis() as u64 =>
            {
                Parked::ProbeDue
            }
            Some(_) => Parked::Held,
        }
    }

    /// This process now holds `host`'s probe: the next job of `host` to be
    /// dispatched goes.
    pub fn probe_granted(&self, host: &str) {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string());
    }

    /// Counts an attempt at `host` (see [`Attempted`]); a pause it asked
    /// for holds this process's jobs at once, and a pause or a probe's end
    /// is reported at once.
    pub fn record(&self, host: &str, attempt: Attempted) {
        let Attempted {
            failed,
            delivered,
            answered_ms,
            pause_until,
            probe,
        } = attempt;
        {
            let mut news = self.news.lock().unwrap_or_else(|e| e.into_inner());
            let entry = match news.get_mut(host) {
                Some(entry) => entry,
                None => news.entry(host.to_string()).or_default(),
            };
            entry.attempts += 1;
            entry.failures += u64::from(failed);
            entry.delivered += u64::from(delivered);
            if let Some(ms) = answered_ms {
                if entry.buckets.is_empty() {
                    entry.buckets = vec![0; common::stats::RESPONSE_BUCKETS_MS.len() + 1];
                }
                entry.buckets[common::stats::bucket_of(ms)] += 1;
            }
            if probe {
                entry.probe = if failed { Probe::Failed } else { Probe::Succeeded };
            }
            if let Some(until) = pause_until {
                entry.pause_until = entry.pause_until.max(until);
            }
        }
        if let Some(until) = pause_until {
            self.pause_here(host, until);
        }
        if probe || pause_until.is_some() {
            self.report_now.notify_one();
        }
    }

    /// Holds `host`'s jobs in this process at once, until the report has
    /// made the pause everyone's.
    fn pause_here(&self, host: &str, until: u64) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if !known.states.contains_key(host) {
            known.states.insert(
                host.to_string(),
                DestinationState::Paused {
                    since: common::now_ms(),
                    until,
                },
            );
            self.any.store(true, Ordering::Release);
        }
    }

    /// The news to report; a pause or a ramp that is over is news too
    /// (the report closes it), so that it does not linger.
    fn take_news(&self) -> Vec<(String, Report)> {
        let now = common::now_ms();
        let mut news: Vec<(String, Report)> = self.news.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        for (host, state) in &known.states {
            let over = match state {
                DestinationState::Paused { until, .. } => *until <= now,
                ramp @ DestinationState::Ramping { .. } => ramp.ramp_rate(now).is_none(),
                _ => false,
            };
            if over && !news.iter().any(|(h, _)| h == host) {
                news.push((host.clone(), Report::default()));
            }
        }
        news
    }

    /// Puts news back after a report that failed, adding what came since.
    fn restore_news(&self, unsent: Vec<(String, Report)>) {
        let mut news = self.news.lock().unwrap_or_else(|e| e.into_inner());
        for (host, old) in unsent {
            let entry = news.entry(host).or_default();
            entry.attempts += old.attempts;
            entry.failures += old.failures;
            entry.delivered += old.delivered;
            if entry.buckets.len() < old.buckets.len() {
                entry.buckets.resize(old.buckets.len(), 0);
            }
            for (mine, theirs) in entry.buckets.iter_mut().zip(&old.buckets) {
                *mine += theirs;
            }
            entry.pause_until = entry.pause_until.max(old.pause_until);
            if entry.probe == Probe::None {
                entry.probe = old.probe;
            }
        }
    }

    fn replace(&self, snapshot: Snapshot) {
        let Snapshot {
            version,
            states,
            policies,
        } = snapshot;
        self.metrics
            .destinations(states.iter().map(|(host, state)| (host.as_str(), state.name())));
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.states = states.into_iter().collect();
        known.policies = policies.into_iter().collect();
        self.any.store(
            !known.states.is_empty() || !known.policies.is_empty(),
            Ordering::Release,
        );
        self.version.store(version, Ordering::Release);
    }
}
