//! What to do after an attempt: done, try again later, or give up.
//!
//! Retried: network errors, timeouts, 408, 429 and 5xx, on the configured
//! schedule with jitter (so that jobs that failed together do not all come
//! back at the same instant). A `Retry-After` on 429 or 503 is honoured up
//! to a cap, and never shortens the schedule. Final: 3xx (redirects are not
//! followed), every other 4xx (410 Gone with a reason of its own), a URL
//! that cannot be built, and a destination the guard refuses
//! (`common::destination`).
//!
//! Which failures are the partner's (they count towards its circuit
//! breaker) and which answers pause it is decided here too
//! ([`partner_failed`], [`pause_for`]).

use crate::client::{Attempt, FailureKind};
use common::job::DeadReason;
use common::stats::Outcome;
use std::time::Duration;

/// The decision after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    /// Give up: the failure is final.
    Final,
    /// Give up: every attempt of the schedule was used.
    Exhausted,
    /// Give up: the destination guard refused the host's addresses.
    Blocked,
    /// Give up: 410, the endpoint says this URL is gone.
    Gone,
}

/// What a verdict means to each part that records it, decided here once.
impl Verdict {
    /// The delivery log's `outcome`, and the `outcome` of the statistics.
    pub fn outcome(self) -> Outcome {
        match self {
            Verdict::Delivered => Outcome::Delivered,
            Verdict::Retry(_) => Outcome::Retry,
            Verdict::Final | Verdict::Exhausted | Verdict::Blocked | Verdict::Gone => Outcome::Dead,
        }
    }

    /// Why the job is dead, if it is.
    pub fn dead_reason(self) -> Option<DeadReason> {
        match self {
            Verdict::Final => Some(DeadReason::FinalStatus),
            Verdict::Exhausted => Some(DeadReason::RetriesExhausted),
            Verdict::Blocked => Some(DeadReason::BlockedDestination),
            Verdict::Gone => Some(DeadReason::Gone),
            Verdict::Delivered | Verdict::Retry(_) => None,
        }
    }

    /// The delay before the next attempt, if there is one.
    pub fn retry_in(self) -> Option<Duration> {
        match self {
            Verdict::Retry(delay) => Some(delay),
            _ => None,
        }
    }
}

/// The retry schedule and its limits.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delays before attempts 2, 3, ...; its length + 1 is the most attempts.
    pub schedule: Vec<Duration>,
    /// Spread of each delay, in percent either way.
    pub jitter_pct: u32,
    /// Cap on an endpoint's `Retry-After`.
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// Decides what follows attempt number `attempt` (1-based).
    pub fn decide(&self, attempt: u32, outcome: &Attempt) -> Verdict {
        let retry_after = match &outcome.result {
            Ok(answer) if (200..300).contains(&answer.status) => return Verdict::Delivered,
            Ok(answer) if matches!(answer.status, 429 | 503) => answer.retry_after,
            Ok(answer) if answer.status == 408 || answer.status >= 500 => None,
            Ok(answer) if answer.status == 410 => return Verdict::Gone,
            Ok(_) => return Verdict::Final,
            Err(failure) if failure.kind == FailureKind::InvalidUrl => return Verdict::Final,
            Err(failure) if failure.kind == FailureKind::Blocked => return Verdict::Blocked,
            Err(_) => None,
        };
        let Some(base) = self.schedule.get(attempt.saturating_sub(1) as usize) else {
            return Verdict::Exhausted;
        };
        let mut delay = self.jittered(*base);
        if let Some(asked) = retry_after {
            delay = delay.max(asked.min(self.retry_after_max));
        }
        Verdict::Retry(delay)
    }

    /// How long the whole destination is to be left alone after `outcome`:
    /// the `Retry-After` of a 429 or 503 (a 429 without one: the schedule's
    /// first delay), capped like a job's own wait.
    pub fn pause_for(&self, outcome: &Attempt) -> Option<Duration> {
        let asked = match &outcome.result {
            Ok(answer) if answer.status == 429 => answer
                .retry_after
                .or_else(|| self.schedule.first().copied())
                .unwrap_or(Duration::from_secs(1)),
            Ok(answer) if answer.status == 503 => answer.retry_after?,
            _ => return None,
        };
        Some(asked.min(self.retry_after_max)).filter(|d| !d.is_zero())
    }

    fn jittered(&self, base: Duration) -> Duration {
        if self.jitter_pct == 0 {
            return base;
        }
        let spread = self.jitter_pct as f64 / 100.0;
        let factor = 1.0 + spread * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

/// Whether an attempt failed on the partner's side (network errors,
/// timeouts, 5xx, 429), counting towards its breaker; `None` when no
/// request reached it (a URL that cannot be built, a refused destination).
/// Other answers, 4xx included, are about the job, not the partner.
pub fn partner_failed(outcome: &Attempt) -> Option<bool> {
    match &outcome.result {
        Ok(answer) => Some(answer.status >= 500 || answer.status == 429),
        Err(failure) if matches!(failure.kind, FailureKind::InvalidUrl | FailureKind::Blocked) => None,
        Err(_) => Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Answer, Failure};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(5), Duration::from_secs(30)],
            jitter_pct: 0,
            retry_after_max: Duration::from_secs(60),
        }
    }

    fn answered(status: u16, retry_after: Option<u64>) -> Attempt {
        Attempt {
            result: Ok(Answer {
                status,
                body: String::new(),
                retry_after: retry_after.map(Duration::from_secs),
            }),
            elapsed: Duration::ZERO,
        }
    }

    fn failed(kind: FailureKind) -> Attempt {
        Attempt {
            result: Err(Failure {
                kind,
                message: String::new(),
            }),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn success_and_final_statuses() {
        let p = policy();
        assert_eq!(p.decide(1, &answered(200, None)), Verdict::Delivered);
        assert_eq!(p.decide(1, &answered(204, None)), Verdict::Delivered);
        assert_eq!(p.decide(1, &answered(302, None)), Verdict::Final);
        assert_eq!(p.decide(1, &answered(404, None)), Verdict::Final);
        assert_eq!(p.decide(1, &answered(400, None)), Verdict::Final);
        assert_eq!(p.decide(1, &failed(FailureKind::InvalidUrl)), Verdict::Final);
        assert_eq!(p.decide(1, &failed(FailureKind::Blocked)), Verdict::Blocked);
        assert_eq!(Verdict::Blocked.dead_reason(), Some(DeadReason::BlockedDestination));
    }

    #[test]
    fn transient_failures_follow_the_schedule_then_exhaust() {
        let p = policy();
        for attempt in [
            answered(500, None),
            answered(408, None),
            answered(429, None),
            failed(FailureKind::Timeout),
            failed(FailureKind::Connect),
        ] {
            assert_eq!(p.decide(1, &attempt), Verdict::Retry(Duration::from_secs(5)));
            assert_eq!(p.decide(2, &attempt), Verdict::Retry(Duration::from_secs(30)));
            assert_eq!(p.decide(3, &attempt), Verdict::Exhausted);
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_and_only_on_429_and_503() {
        let p = policy();
        assert_eq!(
            p.decide(1, &answered(429, Some(20))),
            Verdict::Retry(Duration::from_secs(20))
        );
        assert_eq!(
            p.decide(1, &answered(503, Some(999))),
            Verdict::Retry(Duration::from_secs(60))
        );
        assert_eq!(
            p.decide(1, &answered(503, Some(1))),
            Verdict::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            p.decide(1, &answered(500, Some(20))),
            Verdict::Retry(Duration::from_secs(5))
        );
    }

    #[test]
    fn each_verdict_is_recorded_one_way() {
        let retry = Verdict::Retry(Duration::from_secs(5));
        assert_eq!(Verdict::Delivered.outcome(), Outcome::Delivered);
        assert_eq!(retry.outcome(), Outcome::Retry);
        assert_eq!(Verdict::Final.outcome(), Outcome::Dead);
        assert_eq!(Verdict::Exhausted.outcome(), Outcome::Dead);
        assert_eq!(Verdict::Final.dead_reason(), Some(DeadReason::FinalStatus));
        assert_eq!(Verdict::Exhausted.dead_reason(), Some(DeadReason::RetriesExhausted));
        assert_eq!(retry.dead_reason(), None);
        assert_eq!(retry.retry_in(), Some(Duration::from_secs(5)));
        assert_eq!(Verdict::Delivered.retry_in(), None);
    }

    #[test]
    fn gone_is_final_with_its_own_reason() {
        let p = policy();
        assert_eq!(p.decide(1, &answered(410, None)), Verdict::Gone);
        assert_eq!(Verdict::Gone.dead_reason(), Some(DeadReason::Gone));
        assert_eq!(Verdict::Gone.outcome(), Outcome::Dead);
    }

    #[test]
    fn the_partner_fails_on_5xx_429_and_the_network_only() {
        for (attempt, failed) in [
            (answered(500, None), Some(true)),
            (answered(503, None), Some(true)),
            (answered(429, None), Some(true)),
            (failed(FailureKind::Timeout), Some(true)),
            (failed(FailureKind::Connect), Some(true)),
            (answered(200, None), Some(false)),
            (answered(404, None), Some(false)),
            (answered(408, None), Some(false)),
            (answered(410, None), Some(false)),
            (failed(FailureKind::InvalidUrl), None),
            (failed(FailureKind::Blocked), None),
        ] {
            assert_eq!(partner_failed(&attempt), failed, "{attempt:?}");
        }
    }

    #[test]
    fn a_429_or_a_503_with_retry_after_pauses_the_destination() {
        let p = policy();
        assert_eq!(p.pause_for(&answered(429, Some(3))), Some(Duration::from_secs(3)));
        assert_eq!(
            p.pause_for(&answered(429, None)),
            Some(Duration::from_secs(5)),
            "the schedule's first delay"
        );
        assert_eq!(
            p.pause_for(&answered(503, Some(999))),
            Some(Duration::from_secs(60)),
            "capped"
        );
        assert_eq!(p.pause_for(&answered(503, None)), None);
        assert_eq!(p.pause_for(&answered(500, Some(3))), None);
        assert_eq!(p.pause_for(&answered(200, None)), None);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let p = RetryPolicy {
            jitter_pct: 10,
            ..policy()
        };
        for _ in 0..1000 {
            let Verdict::Retry(d) = p.decide(1, &answered(500, None)) else {
                panic!()
            };
            assert!(
                d >= Duration::from_millis(4500) && d <= Duration::from_millis(5500),
                "{d:?}"
            );
        }
    }
}
