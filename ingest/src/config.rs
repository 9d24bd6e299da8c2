//! Ingest's settings, read once from the environment at start.

use common::config::{self, ConfigError, Setting, Source};
use std::time::Duration;

/// Where ingest's access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// Standard output.
    Stdout,
    /// Nowhere.
    Off,
    /// This file, rotated by size so that it and its rotated copies take
    /// at most `max_bytes`.
    File {
        /// The live file.
        path: std::path::PathBuf,
        /// `INGEST_ACCESS_LOG_MAX_MB`, in bytes.
        max_bytes: u64,
    },
}

/// Every setting of `ingest`, with its environment variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// `REDIS_URL`: where the queue lives.
    pub redis_url: String,
    /// `REDIS_TLS_*_FILE`: the certificates of a TLS `REDIS_URL`.
    pub redis_tls: common::queue::RedisTls,
    /// `POSTBACK_QUEUE`: the queue's name; every Redis key derives from it.
    pub queue: String,
    /// `POSTBACK_SHARDS`: sub-queues a request's jobs are spread over (all
    /// of one request's on one).
    pub shards: usize,
    /// `INGEST_REPLICA_ACKS`: replicas that must hold a request's jobs
    /// before it is answered 202 (0: answer once the master has them).
    pub replica_acks: u32,
    /// `INGEST_REPLICA_TIMEOUT_MS`: how long to wait for them before
    /// answering 503 `not_replicated`.
    pub replica_timeout: Duration,
    /// `INGEST_BIND`: address to listen on.
    pub bind: String,
    /// `INGEST_REUSEPORT`: bind with SO_REUSEPORT, so that several ingest
    /// processes can share one port and the kernel spreads connections.
    pub reuse_port: bool,
    /// `INGEST_SOCKET`: also listen on this Unix socket (an absolute path),
    /// which is how nginx reaches ingest in the stack: no TCP/IP work on
    /// either side of the hop, and one socket per process.
    pub socket: Option<std::path::PathBuf>,
    /// `INGEST_WORKERS`: HTTP worker threads; by default the CPUs divided
    /// among the `INGEST_PROCS` processes of the machine.
    pub workers: usize,
    /// `INGEST_MAX_BODY_BYTES`: largest request body accepted.
    pub max_body_bytes: usize,
    /// `INGEST_BODY_TIMEOUT_MS`: longest time a request body may take to
    /// arrive, from its first piece; checked as each piece arrives, so a
    /// body still arriving past it is cut at its next piece (nginx's own
    /// timeout counts only the gaps between reads, so a trickle never
    /// trips it; a gap is nginx's to cut).
    pub body_timeout: Duration,
    /// `INGEST_MAX_ITEMS`: most data items in one request.
    pub max_items: usize,
    /// `INGEST_MAX_QUEUE`: above this many ready jobs, answer 503.
    pub max_queue: u64,
    /// `INGEST_REDIS_TIMEOUT_MS`: longest wait for Redis before answering 503.
    pub redis_timeout: Duration,
    /// `INGEST_KEEPALIVE_MS`: how long an idle connection is kept open.
    /// nginx's upstream keep-alive is rendered below it (stack.sh), so
    /// that nginx, never ingest, closes an idle connection: a request
    /// nginx sends on one that ingest is closing fails (a 503 from a
    /// healthy stack).
    pub keep_alive: Duration,
    /// `INGEST_SHUTDOWN_GRACE_MS`: how long requests in flight may finish
    /// after SIGTERM.
    pub shutdown_grace: Duration,
    /// `INGEST_ACCESS_LOG`: where the one line per request goes.
    pub access_log: AccessLog,
    /// `INGEST_IDEMPOTENCY_TTL_S`: how long an Idempotency-Key is kept.
    pub idempotency_ttl: Duration,
    /// `INGEST_AUTH`: whether requests need a producer key.
    pub auth: crate::auth::AuthMode,
    /// `POSTBACK_ALLOW_DESTINATIONS`, `POSTBACK_DENY_DESTINATIONS`: which
    /// literal addresses an endpoint may name (deliver checks every
    /// address again at connect time).
    pub destinations: common::destination::DestinationPolicy,
    /// `REDIS_DATA_DIR`: Redis' data folder on this host, for the
    /// free-space gauge.
    pub data_dir: Option<std::path::PathBuf>,
}

/// `INGEST_BIND`.
pub const BIND: Setting = Setting::new("INGEST_BIND", "127.0.0.1:3000", "address to listen on");
/// `INGEST_REUSEPORT`.
pub const REUSEPORT: Setting = Setting::new(
    "INGEST_REUSEPORT",
    "false",
    "share the port with other ingest processes (SO_REUSEPORT)",
);
/// `INGEST_SOCKET`.
pub const SOCKET: Setting = Setting::new(
    "INGEST_SOCKET",
    "",
    "also listen on this Unix socket path (nginx uses it)",
);
/// `INGEST_WORKERS`.
pub const WORKERS: Setting = Setting::new("INGEST_WORKERS", "", "HTTP worker threads").shown_as("CPUs ÷ INGEST_PROCS");
/// `INGEST_PROCS`.
pub const PROCS: Setting = Setting::new(
    "INGEST_PROCS",
    "1",
    "ingest processes on this machine (divides the default of INGEST_WORKERS)",
);
/// `INGEST_MAX_BODY_BYTES`.
pub const MAX_BODY_BYTES: Setting =
    Setting::new("INGEST_MAX_BODY_BYTES", "1048576", "largest request body (413 above)");
/// `INGEST_MAX_ITEMS`.
pub const MAX_ITEMS: Setting = Setting::new("INGEST_MAX_ITEMS", "10000", "most items in `data` (413 above)");
/// `INGEST_MAX_QUEUE`.
pub const MAX_QUEUE: Setting = Setting::new(
    "INGEST_MAX_QUEUE",
    "10000000",
    "ready jobs above which requests get 503",
);
/// `INGEST_BODY_TIMEOUT_MS`.
pub const BODY_TIMEOUT_MS: Setting = Setting::new(
    "INGEST_BODY_TIMEOUT_MS",
    "10000",
    "longest time for a request body to arrive (408 after it)",
);
/// `INGEST_REDIS_TIMEOUT_MS`.
pub const REDIS_TIMEOUT_MS: Setting =
    Setting::new("INGEST_REDIS_TIMEOUT_MS", "2000", "longest wait for Redis before a 503");
/// `INGEST_KEEPALIVE_MS`.
pub const KEEPALIVE_MS: Setting = Setting::new(
    "INGEST_KEEPALIVE_MS",
    "75000",
    "how long an idle connection is kept open (nginx's upstream keep-alive is set below it)",
);
/// `INGEST_SHUTDOWN_GRACE_MS`.
pub const SHUTDOWN_GRACE_MS: Setting = Setting::new(
    "INGEST_SHUTDOWN_GRACE_MS",
    "10000",
    "time for requests in flight after SIGTERM",
);
/// `INGEST_ACCESS_LOG`.
pub const ACCESS_LOG: Setting = Setting::new(
    "INGEST_ACCESS_LOG",
    "stdout",
    "one line per request: stdout, off, or a file (rotated within INGEST_ACCESS_LOG_MAX_MB)",
);
/// `INGEST_ACCESS_LOG_MAX_MB`.
pub const ACCESS_LOG_MAX_MB: Setting = Setting::new(
    "INGEST_ACCESS_LOG_MAX_MB",
    "1024",
    "MiB the access log file and its 9 rotated copies take at most (the stack sets it from POSTBACK_LOG_MAX_MB)",
);

/// `INGEST_AUTH`.
pub const AUTH: Setting = Setting::new(
    "INGEST_AUTH",
    "keys",
    "keys: every ingest request needs a producer key; off: anyone who reaches ingest may queue (trusted network only)",
);

/// `INGEST_IDEMPOTENCY_TTL_S`.
pub const IDEMPOTENCY_TTL_S: Setting = Setting::new(
    "INGEST_IDEMPOTENCY_TTL_S",
    "86400",
    "how long an Idempotency-Key's answer is kept for replays, seconds",
);

/// `INGEST_REPLICA_ACKS`.
pub const REPLICA_ACKS: Setting = Setting::new(
    "INGEST_REPLICA_ACKS",
    "0",
    "replicas that must hold a request's jobs (Redis WAIT) before 202; 0: the master's word is enough",
);

/// `INGEST_REPLICA_TIMEOUT_MS`.
pub const REPLICA_TIMEOUT_MS: Setting = Setting::new(
    "INGEST_REPLICA_TIMEOUT_MS",
    "500",
    "how long to wait for those replicas before answering 503 not_replicated",
);

/// The smallest body limit that still fits a request of one item.
const MAX_BODY_BYTES_MIN: usize = 64;

/// Every setting of ingest besides [`config::SHARED_SETTINGS`], in
/// `--help` order.
pub const SETTINGS: &[Setting] = &[
    AUTH,
    BIND,
    REUSEPORT,
    SOCKET,
    WORKERS,
    PROCS,
    MAX_BODY_BYTES,
    BODY_TIMEOUT_MS,
    MAX_ITEMS,
    MAX_QUEUE,
    REDIS_TIMEOUT_MS,
    KEEPALIVE_MS,
    SHUTDOWN_GRACE_MS,
    ACCESS_LOG,
    ACCESS_LOG_MAX_MB,
    IDEMPOTENCY_TTL_S,
    REPLICA_ACKS,
    REPLICA_TIMEOUT_MS,
];

impl Config {
    /// Reads and checks every setting.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Config, ConfigError> {
        let bind = config::string(src, &BIND);
        bind.parse::<std::net::SocketAddr>()
            .map_err(|_| ConfigError::new(BIND.var, &bind, "expected ip:port, e.g. 127.0.0.1:3000"))?;
        let redis_url = config::redis_url(src)?;
        Ok(Config {
            redis_tls: config::redis_tls(src, &redis_url)?,
            redis_url,
            queue: config::queue_name(src)?,
            shards: config::shards(src)?,
            replica_acks: config::parsed(src, &REPLICA_ACKS, "a whole number")?,
            replica_timeout: config::millis(src, &REPLICA_TIMEOUT_MS)?,
            destinations: config::destinations(src)?,
            data_dir: config::data_dir(src),
            idempotency_ttl: Duration::from_secs(config::count(src, &IDEMPOTENCY_TTL_S, 1)? as u64),
            auth: match config::string(src, &AUTH).as_str() {
                "keys" => crate::auth::AuthMode::Keys,
                "off" => crate::auth::AuthMode::Off,
                other => return Err(ConfigError::new(AUTH.var, other, "expected keys or off")),
            },
            bind,
            reuse_port: config::flag(src, &REUSEPORT)?,
            socket: match config::string(src, &SOCKET).as_str() {
                "" => None,
                path if path.starts_with('/') => Some(path.into()),
                other => {
                    return Err(ConfigError::new(
                        SOCKET.var,
                        other,
                        "expected an absolute path, e.g. /run/postback/ingest/ingest_00.sock",
                    ))
                }
            },
            workers: config::count_or(src, &WORKERS, config::threads_per_process(src, &PROCS)?, 1)?,
            max_body_bytes: config::count(src, &MAX_BODY_BYTES, MAX_BODY_BYTES_MIN)?,
            body_timeout: config::millis(src, &BODY_TIMEOUT_MS)?,
            max_items: config::count(src, &MAX_ITEMS, 1)?,
            max_queue: config::parsed(src, &MAX_QUEUE, "a whole number")?,
            redis_timeout: config::millis(src, &REDIS_TIMEOUT_MS)?,
            keep_alive: config::millis(src, &KEEPALIVE_MS)?,
            shutdown_grace: config::millis(src, &SHUTDOWN_GRACE_MS)?,
            access_log: match config::string(src, &ACCESS_LOG).as_str() {
                "stdout" => AccessLog::Stdout,
                "off" => AccessLog::Off,
                path if path.starts_with('/') => AccessLog::File {
                    path: path.into(),
                    max_bytes: config::count(src, &ACCESS_LOG_MAX_MB, 1)? as u64 * 1024 * 1024,
                },
                other => {
                    return Err(ConfigError::new(
                        ACCESS_LOG.var,
                        other,
                        "expected stdout, off, or an absolute file path",
                    ))
                }
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
        assert_eq!(config.max_body_bytes, 1 << 20);
        assert_eq!(config.access_log, AccessLog::Stdout);
        assert_eq!(config.socket, None);
    }

    #[test]
    fn settings_match_docs() {
        testkit::docs_table::assert_settings_match_docs(
            include_str!("../../docs/CONFIGURATION.md"),
            "ingest",
            SETTINGS,
        );
    }
}
