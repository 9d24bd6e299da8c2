//! Ingest's settings, read once from the environment at start.

use common::config::{self, ConfigError, Source};
use std::time::Duration;

/// Where ingest's access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// Standard output.
    Stdout,
    /// Nowhere.
    Off,
    /// This file, rotated by size.
    File(std::path::PathBuf),
}

/// Every setting of `ingest`, with its environment variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// `REDIS_URL`: where the queue lives.
    pub redis_url: String,
    /// `POSTBACK_QUEUE`: the queue's name; every Redis key derives from it.
    pub queue: String,
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
    /// `INGEST_MAX_ITEMS`: most data items in one request.
    pub max_items: usize,
    /// `INGEST_MAX_QUEUE`: above this many ready jobs, answer 503.
    pub max_queue: u64,
    /// `INGEST_REDIS_TIMEOUT_MS`: longest wait for Redis before answering 503.
    pub redis_timeout: Duration,
    /// `INGEST_REDIS_POOL`: Redis connections.
    pub redis_pool: usize,
    /// `INGEST_SHUTDOWN_GRACE_MS`: how long requests in flight may finish
    /// after SIGTERM.
    pub shutdown_grace: Duration,
    /// `INGEST_ACCESS_LOG`: where the one line per request goes.
    pub access_log: AccessLog,
}

/// The `--help` table of this service's own settings (besides
/// [`config::SHARED_SETTINGS`]): variable, default, meaning.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("INGEST_BIND", "127.0.0.1:3000", "address to listen on"),
    (
        "INGEST_REUSEPORT",
        "false",
        "share the port with other ingest processes (SO_REUSEPORT)",
    ),
    (
        "INGEST_SOCKET",
        "(none)",
        "also listen on this Unix socket path (nginx uses it)",
    ),
    ("INGEST_WORKERS", "CPUs / INGEST_PROCS", "HTTP worker threads"),
    (
        "INGEST_PROCS",
        "1",
        "ingest processes on this machine (divides the default of INGEST_WORKERS)",
    ),
    ("INGEST_MAX_BODY_BYTES", "1048576", "largest request body (413 above)"),
    ("INGEST_MAX_ITEMS", "10000", "most items in `data` (413 above)"),
    (
        "INGEST_MAX_QUEUE",
        "10000000",
        "ready jobs above which requests get 503",
    ),
    ("INGEST_REDIS_TIMEOUT_MS", "2000", "longest wait for Redis before a 503"),
    ("INGEST_REDIS_POOL", "16", "Redis connections"),
    (
        "INGEST_SHUTDOWN_GRACE_MS",
        "10000",
        "time for requests in flight after SIGTERM",
    ),
    (
        "INGEST_ACCESS_LOG",
        "stdout",
        "one line per request: stdout, off, or a file (rotated at 200 MiB)",
    ),
    ("RUST_LOG", "info", "log filter (error, warn, info, debug)"),
];

impl Config {
    /// Reads and checks every setting.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Config, ConfigError> {
        let bind = config::string(src, "INGEST_BIND", "127.0.0.1:3000");
        bind.parse::<std::net::SocketAddr>()
            .map_err(|_| ConfigError::new("INGEST_BIND", &bind, "expected ip:port, e.g. 127.0.0.1:3000"))?;
        Ok(Config {
            redis_url: config::redis_url(src)?,
            queue: config::queue_name(src)?,
            bind,
            reuse_port: flag(src, "INGEST_REUSEPORT")?,
            socket: match config::string(src, "INGEST_SOCKET", "").as_str() {
                "" => None,
                path if path.starts_with('/') => Some(path.into()),
                other => {
                    return Err(ConfigError::new(
                        "INGEST_SOCKET",
                        other,
                        "expected an absolute path, e.g. /run/postback/ingest/ingest_00.sock",
                    ))
                }
            },
            workers: config::count(
                src,
                "INGEST_WORKERS",
                config::threads_per_process(src, "INGEST_PROCS")?,
                1,
            )?,
            max_body_bytes: config::count(src, "INGEST_MAX_BODY_BYTES", 1 << 20, 64)?,
            max_items: config::count(src, "INGEST_MAX_ITEMS", 10_000, 1)?,
            max_queue: config::parsed(src, "INGEST_MAX_QUEUE", 10_000_000, "a whole number")?,
            redis_timeout: config::millis(src, "INGEST_REDIS_TIMEOUT_MS", 2_000)?,
            redis_pool: config::count(src, "INGEST_REDIS_POOL", 16, 1)?,
            shutdown_grace: config::millis(src, "INGEST_SHUTDOWN_GRACE_MS", 10_000)?,
            access_log: match config::string(src, "INGEST_ACCESS_LOG", "stdout").as_str() {
                "stdout" => AccessLog::Stdout,
                "off" => AccessLog::Off,
                path if path.starts_with('/') => AccessLog::File(path.into()),
                other => {
                    return Err(ConfigError::new(
                        "INGEST_ACCESS_LOG",
                        other,
                        "expected stdout, off, or an absolute file path",
                    ))
                }
            },
        })
    }
}

/// Reads a yes/no setting (1/0, true/false, yes/no), default no.
fn flag(src: &(impl Source + ?Sized), var: &str) -> Result<bool, ConfigError> {
    match config::string(src, var, "false").to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(ConfigError::new(var, other, "expected true or false")),
    }
}
