//! Deliver's settings, read once from the environment at start.

use crate::cpu_policy::CpuPolicy;
use common::config::{self, ConfigError, Setting, Source};
use common::queue::destinations::BreakerSettings;
use std::path::PathBuf;
use std::time::Duration;

/// How delivery log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` pairs, one line per attempt.
    Logfmt,
    /// One JSON object per line with the same fields.
    Json,
}

/// Every setting of `deliver`, with its environment variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// `REDIS_URL`: where the queue lives.
    pub redis_url: String,
    /// `REDIS_TLS_*_FILE`: the certificates of a TLS `REDIS_URL`.
    pub redis_tls: common::queue::RedisTls,
    /// `POSTBACK_QUEUE`: the queue's name.
    pub queue: String,
    /// `POSTBACK_SHARDS`: sub-queues to consume (and any more the queue
    /// has had, see `common::queue::Queue::shard_count`).
    pub shards: usize,
    /// `DELIVER_CONCURRENCY`: deliveries in flight at once.
    pub concurrency: usize,
    /// `DELIVER_THREADS`: runtime worker threads of this process; by default
    /// the CPUs divided among the `DELIVER_PROCS` processes of the machine.
    pub threads: usize,
    /// `DELIVER_PER_HOST_CONCURRENCY`: deliveries in flight at once to one
    /// host (`host:port`), so a slow endpoint cannot hold every slot.
    pub per_host_concurrency: usize,
    /// `DELIVER_TIMEOUT_MS`: longest time for one outbound request.
    pub timeout: Duration,
    /// `DELIVER_UNMATCHED_DEFAULT`: value of a `{key}` with no data.
    pub unmatched_default: String,
    /// `DELIVER_LOG_FORMAT`: `logfmt` or `json`.
    pub log_format: LogFormat,
    /// `DELIVER_LOG_FILE`: where the delivery log goes; stdout when unset.
    pub log_file: Option<PathBuf>,
    /// `DELIVER_LOG_MAX_MB`, in bytes: the delivery log file and its
    /// rotated copies together.
    pub log_max_bytes: u64,
    /// `DELIVER_LOG_DIR`: the folder of the delivery logs, for `deliver
    /// job` when `DELIVER_LOG_FILE` is not set (the stack writes it into
    /// postback.env, where each worker's own `DELIVER_LOG_FILE` is not).
    pub log_dir: Option<PathBuf>,
    /// `DELIVER_LOG_BODY_MAX`: bytes of response body kept in the log.
    pub log_body_max: usize,
    /// `DELIVER_EXTRA_CA_FILE`: PEM file of extra trusted CAs.
    pub extra_ca_file: Option<PathBuf>,
    /// `DELIVER_RETRY_SCHEDULE`: delays before attempts 2, 3, ...
    pub retry_schedule: Vec<Duration>,
    /// `DELIVER_RETRY_JITTER_PCT`: each delay varies by up to this percentage.
    pub retry_jitter_pct: u32,
    /// `DELIVER_RETRY_AFTER_MAX_MS`: cap on an endpoint's `Retry-After`.
    pub retry_after_max: Duration,
    /// `DELIVER_SHUTDOWN_GRACE_MS`: time for deliveries in flight after SIGTERM.
    pub shutdown_grace: Duration,
    /// `DELIVER_HEARTBEAT_MS`: how often this process says it is alive.
    pub heartbeat_every: Duration,
    /// `DELIVER_HEARTBEAT_TTL_MS`: silence after which it is presumed dead
    /// and its in-flight jobs are returned to the queue.
    pub heartbeat_ttl: Duration,
    /// `DELIVER_POLL_MS`: how often due retries are moved back to the queue.
    pub poll_every: Duration,
    /// `DELIVER_BATCH`: most jobs taken or settled per Redis round trip.
    pub batch: usize,
    /// `DELIVER_ADMIN_BIND` with `DELIVER_INSTANCE` added to its port: where
    /// `/metrics`, `/health` and `/stats` are served.
    pub admin_bind: std::net::SocketAddr,
    /// `DELIVER_CPU_POLICY`: `batch` (Linux `SCHED_BATCH`) or `inherit`.
    pub cpu_policy: CpuPolicy,
    /// `POSTBACK_ALLOW_DESTINATIONS`, `POSTBACK_DENY_DESTINATIONS`: where
    /// postbacks may go.
    pub destinations: common::destination::DestinationPolicy,
    /// `REDIS_DATA_DIR`: Redis' data folder on this host, for the
    /// free-space gauge.
    pub data_dir: Option<std::path::PathBuf>,
    /// `DELIVER_SIGNING_SECRET`: signs jobs that have no producer.
    pub signing_secret: Option<String>,
    /// `DELIVER_SECRET_OVERLAP`: a rotated-out secret signs this long.
    pub secret_overlap: Duration,
    /// `DELIVER_BREAKER*`, `DELIVER_DISABLE_AFTER`: when a destination's
    /// breaker opens, for how long, and when it is disabled.
    pub breaker: BreakerSettings,
}

macro_rules! settings {
    ($($(#[$doc:meta])* $name:ident = $var:literal, $default:literal $(shown $shown:literal)?, $meaning:literal;)*) => {
        $($(#[$doc])* pub const $name: Setting = Setting::new($var, $default, $meaning)$(.shown_as($shown))?;)*
        /// Every setting of deliver besides [`config::SHARED_SETTINGS`],
        /// in `--help` order.
        pub const SETTINGS: &[Setting] = &[$($name),*];
    };
}

settings! {
    /// `DELIVER_CONCURRENCY`.
    CONCURRENCY = "DELIVER_CONCURRENCY", "256", "deliveries in flight at once";
    /// `DELIVER_THREADS`.
    THREADS = "DELIVER_THREADS", "" shown "CPUs ÷ DELIVER_PROCS", "runtime threads of this process";
    /// `DELIVER_PROCS`.
    PROCS = "DELIVER_PROCS", "1", "deliver processes on this machine (divides the default of DELIVER_THREADS)";
    /// `DELIVER_PER_HOST_CONCURRENCY`.
    PER_HOST_CONCURRENCY = "DELIVER_PER_HOST_CONCURRENCY", "32", "deliveries in flight at once to one host:port";
    /// `DELIVER_TIMEOUT_MS`.
    TIMEOUT_MS = "DELIVER_TIMEOUT_MS", "10000", "longest time for one outbound request";
    /// `DELIVER_UNMATCHED_DEFAULT`.
    UNMATCHED_DEFAULT = "DELIVER_UNMATCHED_DEFAULT", "" shown "empty", "value of a {key} missing from the data";
    /// `DELIVER_LOG_FORMAT`.
    LOG_FORMAT = "DELIVER_LOG_FORMAT", "logfmt", "delivery log format: logfmt or json";
    /// `DELIVER_LOG_FILE`.
    LOG_FILE = "DELIVER_LOG_FILE", "" shown "stdout", "delivery log file, rotated within DELIVER_LOG_MAX_MB";
    /// `DELIVER_LOG_MAX_MB`.
    LOG_MAX_MB = "DELIVER_LOG_MAX_MB", "2048", "MiB the delivery log file and its 9 rotated copies take at most (the stack sets it from POSTBACK_LOG_MAX_MB)";
    /// `DELIVER_LOG_DIR`.
    LOG_DIR = "DELIVER_LOG_DIR", "" shown "unset", "folder `deliver job` reads delivery logs from when DELIVER_LOG_FILE is unset";
    /// `DELIVER_LOG_BODY_MAX`.
    LOG_BODY_MAX = "DELIVER_LOG_BODY_MAX", "1024", "bytes of response body kept in the log";
    /// `DELIVER_EXTRA_CA_FILE`.
    EXTRA_CA_FILE = "DELIVER_EXTRA_CA_FILE", "", "PEM file of CAs trusted besides the webpki roots";
    /// `DELIVER_RETRY_SCHEDULE`.
    RETRY_SCHEDULE = "DELIVER_RETRY_SCHEDULE", "5s,30s,2m,10m,1h,6h", "delays before attempts 2, 3, ... (ms, s, m, h, d; empty: no retries)";
    /// `DELIVER_RETRY_JITTER_PCT`.
    RETRY_JITTER_PCT = "DELIVER_RETRY_JITTER_PCT", "10", "random spread of each retry delay, in percent";
    /// `DELIVER_RETRY_AFTER_MAX_MS`.
    RETRY_AFTER_MAX_MS = "DELIVER_RETRY_AFTER_MAX_MS", "3600000", "cap on an endpoint's Retry-After";
    /// `DELIVER_SHUTDOWN_GRACE_MS`.
    SHUTDOWN_GRACE_MS = "DELIVER_SHUTDOWN_GRACE_MS", "10000", "time for deliveries in flight after SIGTERM";
    /// `DELIVER_HEARTBEAT_MS`.
    HEARTBEAT_MS = "DELIVER_HEARTBEAT_MS", "2000", "how often the process marks itself alive";
    /// `DELIVER_HEARTBEAT_TTL_MS`.
    HEARTBEAT_TTL_MS = "DELIVER_HEARTBEAT_TTL_MS", "10000", "silence after which its jobs go back to the queue";
    /// `DELIVER_POLL_MS`.
    POLL_MS = "DELIVER_POLL_MS", "250", "how often due retries return to the queue";
    /// `DELIVER_BATCH`.
    BATCH = "DELIVER_BATCH", "64", "most jobs taken or settled per Redis round trip";
    /// `DELIVER_ADMIN_BIND`.
    ADMIN_BIND = "DELIVER_ADMIN_BIND", "127.0.0.1:3001", "admin listener: /metrics, /health, /stats";
    /// `DELIVER_INSTANCE`.
    INSTANCE = "DELIVER_INSTANCE", "0", "added to the admin port, so numbered processes each get one";
    /// `DELIVER_SIGNING_SECRET`.
    SIGNING_SECRET = "DELIVER_SIGNING_SECRET", "", "whsec_ secret that signs jobs without a producer key (INGEST_AUTH=off); unset: those go unsigned";
    /// `DELIVER_SECRET_OVERLAP`.
    SECRET_OVERLAP = "DELIVER_SECRET_OVERLAP", "24h", "how long a rotated-out signing secret still signs beside the new one";
    /// `DELIVER_CPU_POLICY`.
    CPU_POLICY = "DELIVER_CPU_POLICY", "batch", "batch: run as SCHED_BATCH (yield to the request path); inherit: as started";
    /// `DELIVER_BREAKER`.
    BREAKER = "DELIVER_BREAKER", "on", "each destination's circuit breaker: on or off (off: failures never hold its jobs)";
    /// `DELIVER_BREAKER_MIN_ATTEMPTS`.
    BREAKER_MIN_ATTEMPTS = "DELIVER_BREAKER_MIN_ATTEMPTS", "10", "fewer attempts to a destination within the window never open its breaker";
    /// `DELIVER_BREAKER_WINDOW`.
    BREAKER_WINDOW = "DELIVER_BREAKER_WINDOW", "60s", "how far back a destination's attempts count for its breaker";
    /// `DELIVER_BREAKER_FAILURE_PCT`.
    BREAKER_FAILURE_PCT = "DELIVER_BREAKER_FAILURE_PCT", "70", "share of failed attempts (network, timeout, 5xx, 429) in the window that opens the breaker";
    /// `DELIVER_BREAKER_COOLDOWN`.
    BREAKER_COOLDOWN = "DELIVER_BREAKER_COOLDOWN", "30s", "first wait before an open breaker's probe; doubles while probes fail, up to 10m";
    /// `DELIVER_DISABLE_AFTER`.
    DISABLE_AFTER = "DELIVER_DISABLE_AFTER", "5d", "a breaker open this long without a success disables its destination";
}

/// A setting read as a duration with a unit (`60s`, `5d`).
fn duration(src: &(impl Source + ?Sized), setting: &Setting) -> Result<Duration, ConfigError> {
    let text = config::string(src, setting);
    config::parse_duration(&text).map_err(|p| ConfigError::new(setting.var, &text, p))
}

impl Config {
    /// How long a breaker's probe claim holds before another process may
    /// claim it: long enough for its request to end and be reported.
    pub fn probe_timeout(&self) -> Duration {
        self.timeout * 2 + crate::destinations::REFRESH * 2
    }
}

impl Config {
    /// Reads and checks every setting.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Config, ConfigError> {
        let log_format = match config::string(src, &LOG_FORMAT).as_str() {
            "logfmt" => LogFormat::Logfmt,
            "json" => LogFormat::Json,
            other => return Err(ConfigError::new(LOG_FORMAT.var, other, "expected logfmt or json")),
        };
        let cpu_policy = match config::string(src, &CPU_POLICY).as_str() {
            "batch" => CpuPolicy::Batch,
            "inherit" => CpuPolicy::Inherit,
            other => return Err(ConfigError::new(CPU_POLICY.var, other, "expected batch or inherit")),
        };
        let path = |setting: &Setting| {
            Some(config::string(src, setting))
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        let extra_ca_file = path(&EXTRA_CA_FILE);
        if let Some(path) = &extra_ca_file {
            if !path.is_file() {
                return Err(ConfigError::new(
                    EXTRA_CA_FILE.var,
                    &path.display().to_string(),
                    "no such file",
                ));
            }
        }
        let heartbeat_every = config::millis(src, &HEARTBEAT_MS)?;
        let heartbeat_ttl = config::millis(src, &HEARTBEAT_TTL_MS)?;
        if heartbeat_ttl < heartbeat_every * 2 {
            return Err(ConfigError::new(
                HEARTBEAT_TTL_MS.var,
                &heartbeat_ttl.as_millis().to_string(),
                "must be at least twice DELIVER_HEARTBEAT_MS, or a live process could be presumed dead",
            ));
        }
        let retry_jitter_pct: u32 = config::parsed(src, &RETRY_JITTER_PCT, "a whole percentage")?;
        if retry_jitter_pct > 100 {
            return Err(ConfigError::new(
                RETRY_JITTER_PCT.var,
                &retry_jitter_pct.to_string(),
                "must be 0 to 100",
            ));
        }
        let admin = config::string(src, &ADMIN_BIND);
        let mut admin_bind: std::net::SocketAddr = admin
            .parse()
            .map_err(|_| ConfigError::new(ADMIN_BIND.var, &admin, "expected ip:port, e.g. 127.0.0.1:3001"))?;
        let instance: u16 = config::parsed(src, &INSTANCE, "a small whole number")?;
        if admin_bind.port() != 0 {
            let port = admin_bind.port().checked_add(instance).ok_or_else(|| {
                ConfigError::new(
                    INSTANCE.var,
                    &instance.to_string(),
                    "makes the admin port larger than 65535",
                )
            })?;
            admin_bind.set_port(port);
        }
        let signing_secret = Some(config::string(src, &SIGNING_SECRET)).filter(|s| !s.is_empty());
        if let Some(secret) = &signing_secret {
            if common::producer::signing_key(secret).is_none_or(|k| k.len() < 16) {
                return Err(ConfigError::new(
                    SIGNING_SECRET.var,
                    "(not shown)",
                    "expected whsec_ and the base64 of at least 16 bytes, as ingest keys create prints",
                ));
            }
        }
        let overlap = config::string(src, &SECRET_OVERLAP);
        let secret_overlap =
            config::parse_duration(&overlap).map_err(|p| ConfigError::new(SECRET_OVERLAP.var, &overlap, p))?;
        let redis_url = config::redis_url(src)?;
        Ok(Config {
            signing_secret,
            secret_overlap,
            admin_bind,
            cpu_policy,
            redis_tls: config::redis_tls(src, &redis_url)?,
            redis_url,
            queue: config::queue_name(src)?,
            shards: config::shards(src)?,
            destinations: config::destinations(src)?,
            data_dir: config::data_dir(src),
            concurrency: config::count(src, &CONCURRENCY, 1)?,
            threads: config::count_or(src, &THREADS, config::threads_per_process(src, &PROCS)?, 1)?,
            per_host_concurrency: config::count(src, &PER_HOST_CONCURRENCY, 1)?,
            timeout: config::millis(src, &TIMEOUT_MS)?,
            unmatched_default: config::string(src, &UNMATCHED_DEFAULT),
            log_format,
            log_file: path(&LOG_FILE),
            log_dir: path(&LOG_DIR),
            log_max_bytes: config::count(src, &LOG_MAX_MB, 1)? as u64 * 1024 * 1024,
            log_body_max: config::parsed(src, &LOG_BODY_MAX, "a whole number of bytes")?,
            extra_ca_file,
            retry_schedule: config::durations(src, &RETRY_SCHEDULE)?,
            retry_jitter_pct,
            retry_after_max: config::millis(src, &RETRY_AFTER_MAX_MS)?,
            shutdown_grace: config::millis(src, &SHUTDOWN_GRACE_MS)?,
            heartbeat_every,
            heartbeat_ttl,
            poll_every: config::millis(src, &POLL_MS)?,
            batch: config::count(src, &BATCH, 1)?.min(common::queue::MAX_BATCH),
            breaker: BreakerSettings {
                enabled: config::flag(src, &BREAKER)?,
                window: duration(src, &BREAKER_WINDOW)?,
                min_attempts: config::count(src, &BREAKER_MIN_ATTEMPTS, 1)? as u64,
                failure_pct: match config::parsed::<u64>(src, &BREAKER_FAILURE_PCT, "a percentage, 1 to 100")? {
                    pct @ 1..=100 => pct,
                    _ => {
                        let value = config::string(src, &BREAKER_FAILURE_PCT);
                        return Err(ConfigError::new(
                            BREAKER_FAILURE_PCT.var,
                            &value,
                            "expected a percentage, 1 to 100",
                        ));
                    }
                },
                cooldown: duration(src, &BREAKER_COOLDOWN)?,
                disable_after: duration(src, &DISABLE_AFTER)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_source(&[] as &[(&str, &str)]).unwrap();
        assert_eq!(config.concurrency, 256);
        assert_eq!(config.retry_schedule.len(), 6);
        assert_eq!(config.retry_schedule[2], Duration::from_secs(120));
        assert_eq!(config.log_format, LogFormat::Logfmt);
        assert_eq!(config.cpu_policy, CpuPolicy::Batch);
    }

    #[test]
    fn each_instance_gets_its_own_admin_port() {
        let config =
            Config::from_source(&[("DELIVER_ADMIN_BIND", "127.0.0.1:4000"), ("DELIVER_INSTANCE", "2")]).unwrap();
        assert_eq!(config.admin_bind.to_string(), "127.0.0.1:4002");
    }

    #[test]
    fn the_cpus_are_shared_among_the_deliver_processes_by_default() {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap();
        let threads = |env: &[(&str, &str)]| Config::from_source(env).unwrap().threads;
        assert_eq!(threads(&[]), cpus);
        assert_eq!(threads(&[("DELIVER_PROCS", "2")]), (cpus / 2).max(1));
        let many = (cpus * 4).to_string();
        assert_eq!(threads(&[("DELIVER_PROCS", many.as_str())]), 1);
        assert_eq!(threads(&[("DELIVER_PROCS", "2"), ("DELIVER_THREADS", "3")]), 3);
        let err = Config::from_source(&[("DELIVER_PROCS", "0")]).unwrap_err();
        assert_eq!(err.var, "DELIVER_PROCS");
    }

    #[test]
    fn settings_match_docs() {
        let docs = include_str!("../../docs/CONFIGURATION.md");
        testkit::docs_table::assert_settings_match_docs(docs, "deliver", SETTINGS);
        // The settings both services read, checked here once.
        testkit::docs_table::assert_settings_match_docs(docs, "both", config::SHARED_SETTINGS);
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_source(&[("DELIVER_LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(err.var, "DELIVER_LOG_FORMAT");
        let err = Config::from_source(&[("DELIVER_CPU_POLICY", "fifo")]).unwrap_err();
        assert_eq!(err.var, "DELIVER_CPU_POLICY");
        let err = Config::from_source(&[("DELIVER_RETRY_SCHEDULE", "5s,soon")]).unwrap_err();
        assert_eq!(err.var, "DELIVER_RETRY_SCHEDULE");
        let err =
            Config::from_source(&[("DELIVER_HEARTBEAT_MS", "1000"), ("DELIVER_HEARTBEAT_TTL_MS", "1500")]).unwrap_err();
        assert_eq!(err.var, "DELIVER_HEARTBEAT_TTL_MS");
    }
}
