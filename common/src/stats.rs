//! Cluster-wide delivery statistics: what is counted per second, and how
//! percentiles come out of the counts. They are kept in Redis so that every
//! process (and every restart) sees the same picture.
//!
//! Each deliver process adds up its attempts per second in memory and
//! flushes them once a second in one pipeline: `HINCRBY` on the hash of that
//! second (expiring after [`RETENTION_SECS`]), plus the queue depths it last
//! saw and the latest failures. Load does not change the number of round
//! trips. Ingest's `/stats` reads a window of seconds back in one pipeline.
//! That I/O is the queue handle's ([`crate::queue::stats`]).

use serde::{Deserialize, Serialize};

/// How long a second's statistics are kept.
pub const RETENTION_SECS: u64 = 3900;
/// How many recent failures are kept.
pub const FAILURES_KEPT: isize = 100;
/// Upper bounds (ms) of the response-time buckets; a last bucket holds
/// everything slower.
pub const RESPONSE_BUCKETS_MS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];
/// A process keeps the exact response times of a second while that second
/// has at most this many answered attempts. A window whose every answer
/// was kept so (light traffic: a test, a quiet hour) gets exact
/// percentiles; a bucket's estimate of a single 2 ms answer said 5.
pub const EXACT_KEPT: usize = 16;

/// The outcome of an attempt, as counted. The discriminants index arrays
/// of per-outcome counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered = 0,
    /// Failed, retry scheduled.
    Retry = 1,
    /// Failed for good.
    Dead = 2,
}

impl Outcome {
    /// The field name in a second's hash.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
        }
    }
}

/// Counts of one second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Attempts that delivered.
    pub delivered: u64,
    /// Attempts that failed and will be retried.
    pub retry: u64,
    /// Attempts that failed for good.
    pub dead: u64,
    /// Of those attempts, the ones that got no HTTP answer (dns, connect,
    /// timeout, tls, blocked, ...): counted apart and kept out of the
    /// response-time histogram, where a timeout's 10 s or a refused
    /// connection's 0 ms would say nothing about the endpoints' answers.
    #[serde(default)]
    pub transport: u64,
    /// Response-time histogram of the answered attempts: one count per
    /// [`RESPONSE_BUCKETS_MS`] bound, plus the overflow bucket.
    pub buckets: Vec<u64>,
    /// The answered attempts' exact response times (ms), while there are
    /// at most [`EXACT_KEPT`] of them; past that, none (`exact_dropped`).
    /// Times are exact for a window when there are as many as answers.
    #[serde(default)]
    pub exact: Vec<u64>,
    /// Whether this second had more answers than [`EXACT_KEPT`].
    #[serde(default)]
    pub exact_dropped: bool,
}

impl Second {
    /// Adds one attempt: answered in `answered_ms`, or `None` when no HTTP
    /// answer came (a transport error).
    pub fn add(&mut self, outcome: Outcome, answered_ms: Option<u64>) {
        match outcome {
            Outcome::Delivered => self.delivered += 1,
            Outcome::Retry => self.retry += 1,
            Outcome::Dead => self.dead += 1,
        }
        let Some(response_ms) = answered_ms else {
            self.transport += 1;
            return;
        };
        if self.buckets.is_empty() {
            self.buckets = vec![0; RESPONSE_BUCKETS_MS.len() + 1];
        }
        self.buckets[bucket_of(response_ms)] += 1;
        if !self.exact_dropped {
            if self.exact.len() < EXACT_KEPT {
                self.exact.push(response_ms);
            } else {
                self.exact = Vec::new();
                self.exact_dropped = true;
            }
        }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Second) {
        self.delivered += other.delivered;
        self.retry += other.retry;
        self.dead += other.dead;
        self.transport += other.transport;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        // Merged times stay exact only if both sides kept all of theirs.
        self.exact_dropped |= other.exact_dropped;
        if self.exact_dropped {
            self.exact = Vec::new();
        } else {
            self.exact.extend_from_slice(&other.exact);
        }
    }

    /// Whether every answered attempt's exact time is known, so that
    /// [`percentile_ms`](Self::percentile_ms) is exact.
    pub fn is_exact(&self) -> bool {
        !self.exact_dropped && self.exact.len() as u64 == self.buckets.iter().sum::<u64>()
    }

    /// The response time (ms) below which `quantile` of the answered
    /// attempts fell, or `None` without any. Exact (the nearest rank) when
    /// every answer's time is known ([`is_exact`](Self::is_exact));
    /// otherwise an estimate, linear within the bucket it falls in (as
    /// Prometheus' `histogram_quantile`), so it always lies within that
    /// bucket's bounds. Past the last bound it is that bound: the histogram
    /// knows no more.
    pub fn percentile_ms(&self, quantile: f64) -> Option<u64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        if self.is_exact() {
            let mut times = self.exact.clone();
            times.sort_unstable();
            let rank = (quantile.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as usize;
            return times.get(rank - 1).copied();
        }
        let rank = quantile.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &count) in self.buckets.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let lower = if i == 0 { 0 } else { RESPONSE_BUCKETS_MS[i - 1] };
                let Some(&upper) = RESPONSE_BUCKETS_MS.get(i) else {
                    return Some(lower);
                };
                let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                return Some(lower + ((upper - lower) as f64 * within).round() as u64);
            }
            below += count;
        }
        None
    }
}

/// The index of the response-time bucket `response_ms` falls in (one past
/// the last bound for anything slower).
pub fn bucket_of(response_ms: u64) -> usize {
    RESPONSE_BUCKETS_MS
        .iter()
        .position(|&le| response_ms <= le)
        .unwrap_or(RESPONSE_BUCKETS_MS.len())
}

/// A failed attempt as shown on the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// When, ms since the epoch.
    pub time_ms: u64,
    /// Job id.
    pub id: String,
    /// HTTP method.
    pub method: String,
    /// The endpoint's host (never the full URL: it may carry data).
    pub host: String,
    /// HTTP status or error kind.
    pub status: String,
    /// The first bytes of the answer or error.
    pub body: String,
}

/// One point of a time series: the counts of `step` seconds from `start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Point {
    /// First second of the point (Unix time).
    pub start: u64,
    /// Attempts delivered.
    pub delivered: u64,
    /// Attempts to be retried.
    pub retry: u64,
    /// Attempts dead-lettered.
    pub dead: u64,
    /// Of those, attempts that got no HTTP answer.
    pub transport: u64,
    /// Response-time percentiles of the answered attempts (ms, estimated
    /// within their histogram buckets: [`Second::percentile_ms`]), when
    /// there were any.
    pub p50_ms: Option<u64>,
    /// 90th percentile.
    pub p90_ms: Option<u64>,
    /// 99th percentile.
    pub p99_ms: Option<u64>,
    /// Whether the percentiles are exact: every answer's time was kept
    /// (at most [`EXACT_KEPT`] a second in each process), rather than
    /// estimated within its bucket.
    pub exact: bool,
    /// Ready jobs last recorded in the point.
    pub ready: Option<u64>,
    /// Jobs waiting for a retry, last recorded in the point.
    pub retrying: Option<u64>,
    /// Dead letters, last recorded in the point.
    pub dead_letters: Option<u64>,
}

/// Statistics of a window, as `/stats` returns them.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// The last second included (Unix time).
    pub until: u64,
    /// Length of the window in seconds.
    pub seconds: u64,
    /// Seconds per point.
    pub step: u64,
    /// Totals over the window.
    pub totals: Point,
    /// The series, oldest first.
    pub series: Vec<Point>,
    /// The latest failed attempts, newest first.
    pub failures: Vec<Failure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_answers_give_exact_percentiles() {
        let mut one = Second::default();
        one.add(Outcome::Delivered, Some(2));
        assert!(one.is_exact());
        assert_eq!((one.percentile_ms(0.5), one.percentile_ms(0.99)), (Some(2), Some(2)));
        let mut few = Second::default();
        for ms in [9, 1, 30, 2] {
            few.add(Outcome::Delivered, Some(ms));
        }
        few.add(Outcome::Retry, None);
        assert_eq!(few.percentile_ms(0.5), Some(2), "the 2nd of 4 by rank");
        assert_eq!(few.percentile_ms(0.9), Some(30));
        // Merged seconds stay exact while every answer was kept...
        let mut merged = one.clone();
        merged.merge(&few);
        assert!(merged.is_exact());
        assert_eq!(merged.percentile_ms(0.99), Some(30));
        // ...and not past EXACT_KEPT answers in a second.
        let mut busy = Second::default();
        for _ in 0..=EXACT_KEPT {
            busy.add(Outcome::Delivered, Some(2));
        }
        assert!(!busy.is_exact() && busy.exact.is_empty());
        assert_eq!(busy.percentile_ms(0.99), Some(5), "estimated within (0, 5] ms");
        merged.merge(&busy);
        assert!(!merged.is_exact());
    }

    /// A second past [`EXACT_KEPT`] answers: its percentiles are estimated.
    fn busy_second() -> Second {
        Second {
            exact_dropped: true,
            ..Second::default()
        }
    }

    #[test]
    fn percentiles_are_estimated_within_their_buckets() {
        let mut s = busy_second();
        for ms in [1, 2, 3, 4, 7, 7, 7, 30, 30, 900] {
            s.add(Outcome::Delivered, Some(ms));
        }
        // A timeout counts, but not as a response time.
        s.add(Outcome::Retry, None);
        assert_eq!((s.delivered, s.retry, s.transport), (10, 1, 1));
        // The 5th of 10 is the first of the three in (5, 10] ms.
        assert_eq!(s.percentile_ms(0.5), Some(7));
        assert_eq!(s.percentile_ms(0.9), Some(50));
        assert_eq!(s.percentile_ms(0.99), Some(950));
        assert_eq!(Second::default().percentile_ms(0.5), None);

        let mut halves = busy_second();
        for _ in 0..50 {
            halves.add(Outcome::Delivered, Some(2));
            halves.add(Outcome::Delivered, Some(400));
        }
        assert_eq!(halves.percentile_ms(0.5), Some(5));
        assert_eq!(halves.percentile_ms(0.99), Some(495), "49 of the 50 in (250, 500] ms");
        let mut slow = busy_second();
        slow.add(Outcome::Delivered, Some(60_000));
        assert_eq!(
            slow.percentile_ms(0.99),
            Some(30_000),
            "past the last bound: that bound"
        );
    }
}
