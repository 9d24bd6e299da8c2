//! How both services connect to Redis: a deadpool of multiplexed
//! connections with every wait bounded, so that a Redis that is down turns
//! into a quick error (503 at ingest, a back-off at deliver), never a hang.

use deadpool_redis::redis::AsyncConnectionConfig;
use deadpool_redis::{Manager, Pool, PoolConfig, Runtime, Timeouts};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Builds a pool of at most `max_size` connections to `url`.
///
/// `response_timeout` bounds every command; it must be longer than the
/// longest blocking command the caller sends (deliver's `BLMOVE`).
pub fn connect(url: &str, max_size: usize, response_timeout: Duration) -> Result<Pool, String> {
    let connect_timeout = response_timeout.min(Duration::from_secs(2));
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    let manager = Manager::new_with_config(url, connection).map_err(|e| e.to_string())?;
    let mut config = PoolConfig::new(max_size);
    config.timeouts = Timeouts {
        wait: Some(response_timeout),
        create: Some(connect_timeout),
        recycle: Some(response_timeout),
    };
    Pool::builder(manager)
        .config(config)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}

/// Logs a Redis outage once when it starts and once when it ends, however
/// many operations fail in between, so an outage is two log lines, not a
/// flood.
#[derive(Debug, Default)]
pub struct Outage {
    down: AtomicBool,
}

impl Outage {
    /// Records a failed operation; logs only the first of an outage.
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!("redis unavailable ({what}: {error}); retrying with back-off until it answers");
        }
    }

    /// Records a successful operation; logs the end of an outage.
    pub fn succeeded(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            log::info!("redis is back");
        }
    }

    /// Whether the last operation failed.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}
