//! The outage log: a Redis outage is two log lines (its start and its
//! end), and Redis refusing writes is logged apart.

use super::target::Target;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Logs a Redis outage once when it starts and once when it ends, however
/// many operations fail in between, so an outage is two log lines, not a
/// flood. Before Redis has answered once, a failure is a start-up wait
/// (supervisord starts every program at once, so the services often come
/// up before Redis), logged as information; once it has, an error.
///
/// A connection made before an outage began can still fail after it
/// ended (one that sat unused through it, say): that is the same outage,
/// already logged as over, so it is not logged again
/// ([`Outage::failed_on`]).
///
/// Redis refusing writes while it answers (a full disk's `MISCONF`, too
/// few replicas, `maxmemory`) is no outage: it is logged apart, once when
/// a write is first refused and once when that same operation, a write,
/// goes through again. A read that succeeds meanwhile says nothing of it.
#[derive(Debug)]
pub(crate) struct Outage {
    down: AtomicBool,
    /// The operation a write was first refused to, while they are (empty:
    /// writes are accepted).
    refused: std::sync::Mutex<String>,
    /// The failure that began the current outage, for `/health`.
    first_failure: std::sync::Mutex<String>,
    /// Whether an operation has succeeded yet.
    answered: AtomicBool,
    /// How many outages have begun.
    starts: AtomicU64,
    /// Where Redis was looked for, without credentials: an error such as
    /// "No such file or directory" means little without the socket's path.
    address: String,
}

impl Outage {
    /// Outages of the Redis `target` names.
    pub(crate) fn new(target: &Target) -> Self {
        Outage {
            down: AtomicBool::new(false),
            refused: std::sync::Mutex::new(String::new()),
            first_failure: std::sync::Mutex::new(String::new()),
            answered: AtomicBool::new(false),
            starts: AtomicU64::new(0),
            address: format!(" at {}", target.describe()),
        }
    }

    /// How many outages have begun so far; a connection made now has
    /// lived through none of them.
    pub(crate) fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// Records an operation that failed on a connection made when
    /// [`starts`](Self::starts) was `made_after` (`None`: no connection
    /// was had). A connection older than the last outage's start is a
    /// leftover of it: it is replaced without a word. (If that outage is
    /// over and a new one is beginning, the next operation, on a new
    /// connection, says so.)
    /// A failure that no wait will mend (a TLS certificate refused) is an
    /// error even before Redis has answered once: `is_setup_fault`.
    pub(crate) fn failed_on(
        &self,
        what: &str,
        error: &dyn std::fmt::Display,
        made_after: Option<u64>,
        is_setup_fault: bool,
    ) {
        if made_after.is_some_and(|made| made < self.starts()) {
            log::debug!("a connection from before the last outage failed ({what}: {error}); replaced");
            return;
        }
        self.failed(what, error, is_setup_fault);
    }

    /// Records a failed operation; logs only the first of an outage.
    fn failed(&self, what: &str, error: &dyn std::fmt::Display, is_setup_fault: bool) {
        if self.down.swap(true, Ordering::Relaxed) {
            return;
        }
        *self.first_failure.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
        self.starts.fetch_add(1, Ordering::Relaxed);
        if is_setup_fault {
            log::error!(
                "cannot use redis{} ({what}: {error}); retrying with back-off until that is mended",
                self.address
            );
        } else if self.answered.load(Ordering::Relaxed) {
            log::error!(
                "redis unavailable{} ({what}: {error}); retrying with back-off until it answers",
                self.address
            );
        } else {
            log::info!("waiting for redis{} to answer ({what}: {error})", self.address);
        }
    }

    /// Records that Redis refused `what`, a write, while it answers; logs
    /// the first refusal of a stretch.
    pub(crate) fn writes_refused(&self, what: &str, error: &dyn std::fmt::Display) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.is_empty() {
            refused.push_str(what);
            log::error!(
                "redis{} refuses writes ({what}: {error}); reads still work, writes are tried again until it accepts them",
                self.address
            );
        }
    }

    /// Whether writes are being refused (see [`writes_refused`](Self::writes_refused)).
    pub(crate) fn refusing_writes(&self) -> bool {
        !self.refused.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Records that `what` succeeded; logs the end of an outage, and the
    /// end of refused writes when `what` is the write first refused.
    pub(crate) fn succeeded_on(&self, what: &str) {
        {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if !refused.is_empty() && *refused == what {
                refused.clear();
                log::info!("redis accepts writes again ({what})");
            }
        }
        self.succeeded();
    }

    /// Records a successful operation; logs the end of an outage.
    pub(crate) fn succeeded(&self) {
        if !self.answered.load(Ordering::Relaxed) && !self.answered.swap(true, Ordering::Relaxed) {
            if self.down.swap(false, Ordering::Relaxed) {
                log::info!("redis answers{}", self.address);
            }
            return;
        }
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            log::info!("redis is back");
        }
    }

    /// Whether the last operation failed.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// What began the current outage, if one is on.
    pub(crate) fn failure(&self) -> Option<String> {
        self.is_down()
            .then(|| self.first_failure.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_from_before_an_outage_failing_after_it_is_no_new_outage() {
        let outage = Outage::new(&Target::parse("redis://127.0.0.1:6390").unwrap());
        outage.succeeded();
        // Made before the outage: an idle connection, and the one in use.
        let idle = outage.starts();
        outage.failed_on("take", &"connection reset", Some(outage.starts()), false);
        assert!(outage.is_down());
        // Reconnected during the outage, and it answers: the end.
        let made_during = outage.starts();
        outage.succeeded();
        assert!(!outage.is_down());
        // The idle one fails now: the same outage, already over.
        outage.failed_on("producer keys", &"broken pipe", Some(idle), false);
        assert!(!outage.is_down(), "a leftover of the last outage started a new one");
        // The one made during it fails later: a new outage.
        outage.failed_on("take", &"connection reset", Some(made_during), false);
        assert!(outage.is_down());
        // No connection at all (connecting failed): an outage too.
        outage.succeeded();
        outage.failed_on("take", &"connection refused", None, false);
        assert!(outage.is_down());
    }

    #[test]
    fn an_outage_names_where_redis_was_looked_for_without_the_password() {
        let outage = |url: &str| Outage::new(&Target::parse(url).unwrap()).address;
        assert_eq!(outage("redis://default:secret@127.0.0.1:6390/0"), " at 127.0.0.1:6390");
        assert_eq!(
            outage("redis+unix:///run/postback/redis/redis.sock?user=default&pass=secret"),
            " at unix:/run/postback/redis/redis.sock"
        );
        assert_eq!(outage("redis-cluster://:secret@h:7000"), " at the cluster of h:7000");
        assert_eq!(outage("nonsense"), " at an unreadable REDIS_URL");
    }
}
