//! How the queue handle connects to Redis: a deadpool of multiplexed
//! connections with every wait bounded, so that a Redis that is down turns
//! into a quick error (503 at ingest, a back-off at deliver), never a hang.
//!
//! Hot paths do not check a connection out of the pool per command: deadpool
//! pings a connection each time it hands it out, which doubles the round
//! trips. They use a [`Shared`] multiplexed connection instead, taken from
//! the pool once and cloned per command; redis-rs pipelines the commands of
//! all its clones on one socket, and a broken connection is replaced.

use super::QueueError;
use deadpool::managed::Manager as _;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{AsyncConnectionConfig, RedisError};
use deadpool_redis::{Manager, Pool, PoolConfig, Runtime, Timeouts};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Builds a pool of at most `max_size` connections to `url`.
///
/// `response_timeout` bounds every command; it must be longer than the
/// longest blocking command the caller sends (deliver's `BLMOVE`).
pub(crate) fn connect(url: &str, max_size: usize, response_timeout: Duration) -> Result<Pool, QueueError> {
    let connect_timeout = response_timeout.min(Duration::from_secs(2));
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    let manager = Manager::new_with_config(url, connection).map_err(QueueError::Refused)?;
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
        .map_err(|e| QueueError::Refused(RedisError::from(std::io::Error::other(e.to_string()))))
}

/// Logs a Redis outage once when it starts and once when it ends, however
/// many operations fail in between, so an outage is two log lines, not a
/// flood.
#[derive(Debug)]
pub(crate) struct Outage {
    down: AtomicBool,
    /// Where Redis was looked for, without credentials: an error such as
    /// "No such file or directory" means little without the socket's path.
    address: String,
}

impl Outage {
    /// Outages of the Redis at `url`.
    pub(crate) fn new(url: &str) -> Self {
        use deadpool_redis::redis::{ConnectionAddr, IntoConnectionInfo};
        let address = match url.into_connection_info() {
            Ok(info) => match info.addr() {
                ConnectionAddr::Unix(path) => format!(" at unix:{}", path.display()),
                other => format!(" at {other}"),
            },
            Err(_) => String::new(),
        };
        Outage {
            down: AtomicBool::new(false),
            address,
        }
    }

    /// Records a failed operation; logs only the first of an outage.
    pub(crate) fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!(
                "redis unavailable{} ({what}: {error}); retrying with back-off until it answers",
                self.address
            );
        }
    }

    /// Records a successful operation; logs the end of an outage.
    pub(crate) fn succeeded(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            log::info!("redis is back");
        }
    }

    /// Whether the last operation failed.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

/// One multiplexed connection shared by many tasks, made with a pool's
/// settings on the runtime of the first task that needs it, and replaced
/// after an error that may have broken it.
pub(crate) struct Shared {
    pool: Pool,
    current: std::sync::Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Shared {
    /// A shared connection made with `pool`'s settings when first needed.
    pub(crate) fn new(pool: Pool) -> Self {
        Shared {
            pool,
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A handle on the connection (cheap: a clone), connecting if needed.
    pub(crate) async fn get(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        // One task connects; the others wait for its result.
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        // A new connection, not one from the pool: redis-rs runs a
        // connection's I/O task on the runtime that created it, and a pooled
        // connection may have been made on another thread (ingest's main
        // thread, say), which would cost two cross-thread wake-ups per
        // command. The connect timeout of the pool's config still applies.
        let conn = self.pool.manager().create().await?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection after an error that may have broken it (see
    /// [`QueueError::replaces_connection`]), so the next `get` makes a new
    /// one.
    pub(crate) fn failed(&self, error: &QueueError) {
        if error.replaces_connection() {
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_names_where_redis_was_looked_for_without_the_password() {
        let tcp = Outage::new("redis://default:secret@127.0.0.1:6390/0");
        assert_eq!(tcp.address, " at 127.0.0.1:6390");
        let unix = Outage::new("redis+unix:///run/postback/redis/redis.sock?user=default&pass=secret");
        assert_eq!(unix.address, " at unix:/run/postback/redis/redis.sock");
        assert_eq!(Outage::new("nonsense").address, "");
    }
}
