//! What ingest counts, served as Prometheus text on `/metrics`.
//!
//! Label sets are bounded: the route is one of a fixed list and the status
//! a code, never a path, URL or id.

use common::queue::Depths;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FolderLabels {
    folder: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// ingest's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    accepted: Counter,
    queue: Family<StateLabels, Gauge>,
    redis_writable: Gauge,
    disk_free: Family<FolderLabels, Gauge>,
    /// The folders `disk_free` reports, set once at start.
    watched: std::sync::OnceLock<common::disk::Watched>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postback_ingest");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests by route and status", requests.clone());
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ])
        });
        registry.register(
            "request_duration_seconds",
            "Time to handle a request, by route",
            duration.clone(),
        );
        let accepted = Counter::default();
        registry.register("postbacks_accepted", "Postback jobs queued", accepted.clone());
        let queue = Family::<StateLabels, Gauge>::default();
        registry.register(
            "queue_jobs",
            "Jobs in the queue by state (ready, retry, dead, parked)",
            queue.clone(),
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
        Metrics {
            registry,
            requests,
            duration,
            accepted,
            queue,
            redis_writable,
            disk_free,
            watched: std::sync::OnceLock::new(),
        }
    }

    /// Records one handled request.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        self.requests.get_or_create(&RequestLabels { route, status }).inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// Records queued jobs.
    pub fn accepted(&self, jobs: usize) {
        self.accepted.inc_by(jobs as u64);
    }

    /// Records queue depths.
    pub fn set_depths(&self, d: Depths) {
        for (state, n) in d.by_state() {
            self.queue.get_or_create(&StateLabels { state }).set(n as i64);
        }
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

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.refresh_disks();
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
