//! What deliver counts, for Prometheus (`/metrics` on the admin listener)
//! and for the cluster-wide statistics in Redis (`common::stats`).
//!
//! Every attempt is recorded once, by [`Metrics::attempt`]: it bumps the
//! Prometheus counters and histograms (atomics, no lock contention) and
//! adds the attempt to this second's statistics, which [`flush_stats`]
//! writes to Redis once a second in one pipeline, whatever the load.

mod flush;

pub use flush::flush_stats;

use common::queue::Depths;
use common::stats::{Failure, Outcome, Second};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Labels of a watched folder: `log` or `data`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FolderLabels {
    folder: &'static str,
}

/// Labels of an attempt: a bounded set (never a URL or an id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    outcome: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// A shard's tag (bounded: POSTBACK_SHARDS and the shards it had) and a
/// state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardStateLabels {
    shard: String,
    state: &'static str,
}

/// A destination (`host:port`; bounded: only those that are not closed
/// are shown) and its state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
    state: &'static str,
}

/// The names of the destinations' states, as static label values.
fn state_label(state: &str) -> &'static str {
    match state {
        "open" => "open",
        "half_open" => "half_open",
        "paused" => "paused",
        "ramping" => "ramping",
        "disabled" => "disabled",
        "closed" => "closed",
        _ => "other",
    }
}

/// Seconds buckets shared by the response and end-to-end histograms.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How many failures wait for the next flush at most.
const FAILURES_BUFFERED: usize = 100;

/// deliver's metrics.
pub struct Metrics {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    retries: Counter,
    parked: Counter,
    held: Counter,
    unparked: Counter,
    dead_letters: Family<ReasonLabels, Counter>,
    response: Histogram,
    end_to_end: Histogram,
    in_flight: Gauge,
    redis_writable: Gauge,
    disk_free: Family<FolderLabels, Gauge>,
    /// The folders `disk_free` reports, set once at start.
    watched: std::sync::OnceLock<common::disk::Watched>,
    delivery_log_writable: Gauge,
    queue: Family<StateLabels, Gauge>,
    shard_queue: Family<ShardStateLabels, Gauge>,
    destination_state: Family<DestinationLabels, Gauge>,
    destination_changes: Family<StateLabels, Counter>,
    /// Attempts by outcome (delivered, retry, dead), for `/stats`.
    totals: [AtomicU64; 3],
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    seconds: BTreeMap<u64, Second>,
    failures: Vec<Failure>,
}

/// One attempt, as recorded.
pub struct AttemptRecord<'a> {
    /// What followed it.
    pub outcome: Outcome,
    /// The HTTP status, if there was an answer.
    pub status: Option<u16>,
    /// Time the request took.
    pub response: Duration,
    /// When the job was first accepted (ms since the epoch).
    pub enqueued_at_ms: u64,
    /// When the attempt ended (ms since the epoch).
    pub now_ms: u64,
    /// Why it became a dead letter, for `dead` outcomes.
    pub dead_reason: Option<&'static str>,
    /// For failures: the job id, method, URL, status text and answer.
    pub failure: Option<(&'a str, &'a str, &'a str, &'a str, &'a str)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postback_deliver");
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Delivery attempts by outcome and HTTP status class",
            attempts.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries_scheduled",
            "Retries scheduled after a failed attempt",
            retries.clone(),
        );
        let held = Counter::default();
        registry.register(
            "held",
            "Jobs held (parked with no attempt spent) because their destination's breaker was open, it asked for a pause, or its rate had no request left",
            held.clone(),
        );
        let parked = Counter::default();
        registry.register(
            "parked_busy_host",
            "Jobs parked unattempted because their host had all it may have in flight",
            parked.clone(),
        );
        let unparked = Counter::default();
        registry.register(
            "unparked",
            "Parked jobs taken back once their host had room",
            unparked.clone(),
        );
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Jobs moved to the dead-letter list, by reason",
            dead_letters.clone(),
        );
        let response = Histogram::new(SECONDS_BUCKETS);
        registry.register(
            "response_seconds",
            "Endpoint response time of an answered attempt (none for dns, connect, timeout, tls, blocked)",
            response.clone(),
        );
        let end_to_end = Histogram::new(SECONDS_BUCKETS);
        registry.register(
            "end_to_end_seconds",
            "Time from ingest accepting a job to its attempt being settled (delivered or dead)",
            end_to_end.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "jobs_in_flight",
            "Deliveries in progress in this process",
            in_flight.clone(),
        );
        let disk_free = Family::<FolderLabels, Gauge>::default();
        registry.register(
            "disk_free_bytes",
            "Free bytes on the disk of the log folder (folder=log) and of Redis' data folder on this host (folder=data, REDIS_DATA_DIR), as /metrics was read",
            disk_free.clone(),
        );
        let redis_writable = Gauge::default();
        registry.register(
            "redis_writable",
            "1 while Redis accepts this process's writes, 0 while it refuses them (full disk, too few replicas, maxmemory), as the last write found",
            redis_writable.clone(),
        );
        let delivery_log_writable = Gauge::default();
        registry.register(
            "delivery_log_writable",
            "1 while the delivery log takes lines, 0 while it cannot be written (a full disk): the worker then takes no jobs",
            delivery_log_writable.clone(),
        );
        let queue = Family::<StateLabels, Gauge>::default();
        registry.register(
            "queue_jobs",
            "Jobs in the queue by state (ready, retry, dead, parked)",
            queue.clone(),
        );
        let shard_queue = Family::<ShardStateLabels, Gauge>::default();
        registry.register(
            "shard_queue_jobs",
            "Jobs in each shard of the queue by state (ready, retry, dead, parked)",
            shard_queue.clone(),
        );
        let destination_state = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "destination_state",
            "1 for each destination that is not closed, labelled with its state (open, half_open, paused, disabled)",
            destination_state.clone(),
        );
        let destination_changes = Family::<StateLabels, Counter>::default();
        registry.register(
            "destination_state_changes",
            "Changes of a destination's state this process made, by the new state",
            destination_changes.clone(),
        );
        Metrics {
            registry,
            destination_state,
            destination_changes,
            attempts,
            retries,
            parked,
            held,
            unparked,
            dead_letters,
            response,
            end_to_end,
            in_flight,
            redis_writable,
            disk_free,
            watched: std::sync::OnceLock::new(),
            delivery_log_writable,
            queue,
            shard_queue,
            totals: Default::default(),
            pending: Mutex::new(Pending::default()),
        }
    }

    /// Records one settled attempt.
    pub fn attempt(&self, a: &AttemptRecord<'_>) {
        let status_class = match a.status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        };
        self.attempts
            .get_or_create(&AttemptLabels {
                outcome: a.outcome.as_str(),
                status_class,
            })
            .inc();
        self.totals[a.outcome as usize].fetch_add(1, Ordering::Relaxed);
        if a.status.is_some() {
            self.response.observe(a.response.as_secs_f64());
        }
        match a.outcome {
            Outcome::Retry => {
                self.retries.inc();
            }
            Outcome::Dead => self.dead(a.dead_reason.unwrap_or("final_status")),
            Outcome::Delivered => {}
        }
        if a.outcome != Outcome::Retry {
            self.end_to_end
                .observe(a.now_ms.saturating_sub(a.enqueued_at_ms) as f64 / 1000.0);
        }
        let failure = a.failure.map(|(id, method, url, status, body)| Failure {
            time_ms: a.now_ms,
            id: id.to_string(),
            method: method.to_string(),
            host: crate::hosts::destination_of(url).into_owned(),
            status: status.to_string(),
            body: body.chars().take(200).collect(),
        });
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .seconds
            .entry(a.now_ms / 1000)
            .or_default()
            .add(a.outcome, a.status.map(|_| a.response.as_millis() as u64));
        if let Some(failure) = failure {
            if pending.failures.len() < FAILURES_BUFFERED {
                pending.failures.push(failure);
            }
        }
    }

    /// Shows the destinations that are not closed, each with its state.
    pub fn destinations<'a>(&self, states: impl Iterator<Item = (&'a str, &'a str)>) {
        self.destination_state.clear();
        for (host, state) in states {
            self.destination_state
                .get_or_create(&DestinationLabels {
                    destination: host.to_string(),
                    state: state_label(state),
                })
                .set(1);
        }
    }

    /// Counts a change of a destination's state this process made.
    pub fn destination_changed(&self, state: &str) {
        self.destination_changes
            .get_or_create(&StateLabels {
                state: state_label(state),
            })
            .inc();
    }

    /// Records a job held because its destination's breaker is open, it
    /// asked for a pause, or its rate has no request left for now.
    pub fn held(&self) {
        self.held.inc();
    }

    /// Records a job parked because its host was busy.
    pub fn parked(&self) {
        self.parked.inc();
    }

    /// Records `n` parked jobs taken back.
    pub fn unparked(&self, n: usize) {
        self.unparked.inc_by(n as u64);
    }

    /// Records a dead letter that was never attempted (a malformed job).
    pub fn dead(&self, reason: &'static str) {
        self.dead_letters.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Marks a delivery as started; the guard marks it finished on drop.
    pub fn start_delivery(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Jobs in progress now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Records queue depths, each shard's (by tag) and their sum; returns
    /// the sum.
    pub fn set_depths(&self, by_shard: &[(String, Depths)]) -> Depths {
        let mut total = Depths::default();
        for (shard, d) in by_shard {
            for (state, n) in d.by_state() {
                let labels = ShardStateLabels {
                    shard: shard.clone(),
                    state,
                };
                self.shard_queue.get_or_create(&labels).set(n as i64);
            }
            total.add(d);
        }
        for (state, n) in total.by_state() {
            self.queue.get_or_create(&StateLabels { state }).set(n as i64);
        }
        total
    }

    /// Attempts so far by outcome (delivered, retry, dead), for `/stats`.
    pub fn totals(&self) -> (u64, u64, u64) {
        let [d, r, x] = &self.totals;
        (
            d.load(Ordering::Relaxed),
            r.load(Ordering::Relaxed),
            x.load(Ordering::Relaxed),
        )
    }

    /// The folders whose free space `/metrics` shows (once, at start).
    pub fn watch_disks(&self, watched: common::disk::Watched) {
        let _ = self.watched.set(watched);
    }

    /// Reads the watched folders' free space into the gauges.
    fn refresh_disks(&self) {
        for (folder, free) in self.watched.get().into_iter().flat_map(|w| w.free()) {
            // A folder that is not there (Redis' on a host without Redis)
            // has no sample.
            if let Some(free) = free {
                let gauge = self.disk_free.get_or_create(&FolderLabels { folder });
                gauge.set(i64::try_from(free).unwrap_or(i64::MAX));
            }
        }
    }

    /// Records whether Redis accepts writes (`Queue::refusing_writes`).
    pub fn set_redis_writable(&self, writable: bool) {
        self.redis_writable.set(i64::from(writable));
    }

    /// Records whether the delivery log takes lines
    /// ([`crate::delivery_log::DeliveryLog::writable`]).
    pub fn set_delivery_log_writable(&self, writable: bool) {
        self.delivery_log_writable.set(i64::from(writable));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.refresh_disks();
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements the in-flight gauge when a delivery ends.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_by_outcome_and_class() {
        let m = Metrics::new();
        let record = |outcome, status| AttemptRecord {
            outcome,
            status,
            response: Duration::from_millis(3),
            enqueued_at_ms: 0,
            now_ms: 1000,
            dead_reason: Some("final_status"),
            failure: None,
        };
        m.attempt(&record(Outcome::Delivered, Some(200)));
        m.attempt(&record(Outcome::Retry, Some(503)));
        m.attempt(&record(Outcome::Retry, None));
        m.attempt(&record(Outcome::Dead, Some(404)));
        assert_eq!(m.totals(), (1, 2, 1));
        let text = m.encode();
        assert!(
            text.contains(r#"postback_deliver_attempts_total{outcome="retry",status_class="5xx"} 1"#),
            "{text}"
        );
        assert!(text.contains("postback_deliver_retries_scheduled_total 2"), "{text}");
    }
}
