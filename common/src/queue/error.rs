//! The one error type of the Redis boundary.
//!
//! redis-rs reports every failure as a `RedisError`; callers need to know
//! which kind it was to answer well (ingest: 503 `queue_unavailable` or
//! `redis_full`; deliver: back off, reconnect, or find a new master), so
//! the kind is decided once, here, instead of by matching message strings.

use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};
use std::time::Duration;

/// Why a queue operation failed. Each variant keeps the `RedisError` it
/// came from as its source, except a deadline that passed with no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached, or the connection broke.
    #[error("cannot reach redis ({0})")]
    Unavailable(#[source] RedisError),
    /// The TLS handshake with Redis failed: a certificate refused (the
    /// server's by us, or ours by the server), or no protocol in common.
    #[error(
        "TLS with redis failed, a certificate problem ({0}): check that REDIS_TLS_CA_FILE holds the CA that signed \
         the server's certificate, that the certificate names the host REDIS_URL gives, and, if Redis asks for \
         client certificates (tls-auth-clients), REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE"
    )]
    Tls(#[source] RedisError),
    /// No answer within the operation's deadline.
    #[error("no answer from redis within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Redis is full (`maxmemory` reached with `noeviction`) and refused a
    /// write that would add data.
    #[error("redis is full: maxmemory reached ({0})")]
    OutOfMemory(#[source] RedisError),
    /// The node answered as a read-only replica: it was a master and has
    /// been demoted, so the master is elsewhere now.
    #[error("redis answered as a read-only replica; the master has moved ({0})")]
    ReadOnly(#[source] RedisError),
    /// A Redis Cluster node said the key's slot lives on another node
    /// (`MOVED`, `ASK`), or the cluster is down for that slot.
    #[error("redis cluster redirect or outage ({0})")]
    Cluster(#[source] RedisError),
    /// A script was not in the server's cache (`NOSCRIPT`) and could not be
    /// loaded.
    #[error("redis script missing ({0})")]
    ScriptMissing(#[source] RedisError),
    /// Redis answered something this version cannot read.
    #[error("unexpected answer from redis ({0})")]
    BadReply(#[source] RedisError),
    /// Redis answers, but refuses every write: it cannot persist them
    /// (`MISCONF`: a full disk, a failed save) or has too few replicas
    /// (`NOREPLICAS`: `min-replicas-to-write`). Reads still work.
    #[error("redis refuses writes, reads still work ({0})")]
    WritesRefused(#[source] RedisError),
    /// Redis refused the command for another reason (wrong password, ACL,
    /// a wrong key type).
    #[error("redis refused the command ({0})")]
    Refused(#[source] RedisError),
    /// The write was made, but fewer replicas than asked for
    /// (`INGEST_REPLICA_ACKS`) acknowledged it in time.
    #[error("only {acked} of {wanted} redis replicas acknowledged the write in time")]
    NotReplicated {
        /// How many did.
        acked: u64,
        /// How many were asked for.
        wanted: u32,
    },
    /// `REDIS_URL` cannot be used.
    #[error("REDIS_URL: {0}")]
    BadUrl(#[from] super::TargetError),
}

/// The error code Redis answered (`OOM`, `MISCONF`, ...), also of a failed
/// pipeline (its first failure), for which redis-rs gives no code of its own
/// when the code is not one it knows.
fn server_code(error: &RedisError) -> Option<String> {
    if let Some(code) = error.code() {
        return Some(code.to_string());
    }
    let failures = error.clone().into_server_errors()?;
    failures.first().map(|(_, failure)| failure.code().to_string())
}

impl QueueError {
    /// Sorts a redis-rs error by what a caller should do about it.
    /// `deadline` is what a timeout reported by redis-rs itself waited.
    pub fn from_redis(error: RedisError, deadline: Duration) -> Self {
        if error.is_timeout() {
            return QueueError::Timeout(deadline);
        }
        if super::tls::is_tls_failure(&error) {
            return QueueError::Tls(error);
        }
        match server_code(&error).as_deref() {
            Some("OOM") => return QueueError::OutOfMemory(error),
            Some("MISCONF" | "NOREPLICAS") => return QueueError::WritesRefused(error),
            // A blocked command (deliver's BLMOVE) let go because its master
            // was just made a replica: the master moved, as for READONLY.
            Some("UNBLOCKED") => return QueueError::ReadOnly(error),
            _ => {}
        }
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::ReadOnly) => QueueError::ReadOnly(error),
            ErrorKind::Server(
                ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown,
            )
            | ErrorKind::ClusterConnectionNotFound => QueueError::Cluster(error),
            // No master right now (a failover in progress): an outage.
            ErrorKind::MasterNameNotFoundBySentinel | ErrorKind::NoValidReplicasFoundBySentinel => {
                QueueError::Unavailable(error)
            }
            ErrorKind::Server(ServerErrorKind::NoScript) => QueueError::ScriptMissing(error),
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => QueueError::BadReply(error),
            ErrorKind::Io | ErrorKind::Client | ErrorKind::Server(ServerErrorKind::BusyLoading) => {
                QueueError::Unavailable(error)
            }
            _ => QueueError::Refused(error),
        }
    }

    /// The short name of the kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            QueueError::Unavailable(_) => "unavailable",
            QueueError::Tls(_) => "tls",
            QueueError::Timeout(_) => "timeout",
            QueueError::OutOfMemory(_) => "out_of_memory",
            QueueError::ReadOnly(_) => "read_only",
            QueueError::Cluster(_) => "cluster",
            QueueError::ScriptMissing(_) => "script_missing",
            QueueError::BadReply(_) => "bad_reply",
            QueueError::WritesRefused(_) => "writes_refused",
            QueueError::Refused(_) => "refused",
            QueueError::NotReplicated { .. } => "not_replicated",
            QueueError::BadUrl(_) => "bad_url",
        }
    }

    /// Whether Redis refused a write for want of replicas in reach
    /// (`NOREPLICAS`: `min-replicas-to-write`): the write was not made.
    pub fn is_too_few_replicas(&self) -> bool {
        match self {
            QueueError::WritesRefused(e) => server_code(e).as_deref() == Some("NOREPLICAS"),
            _ => false,
        }
    }

    /// Whether the connection that saw this error may be broken, or point
    /// at the wrong node, and should be replaced. An error answer from a
    /// healthy master (`OOM`, a refused command) leaves it as good as
    /// before: replacing it then would cost a connection per refusal.
    pub fn replaces_connection(&self) -> bool {
        !matches!(
            self,
            QueueError::OutOfMemory(_)
                | QueueError::WritesRefused(_)
                | QueueError::Refused(_)
                | QueueError::BadReply(_)
                | QueueError::NotReplicated { .. }
                | QueueError::BadUrl(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> RedisError {
        // An error answer as it arrives on the wire.
        let wire = format!("-{code} {detail}\r\n");
        let value = deadpool_redis::redis::parse_redis_value(wire.as_bytes()).unwrap();
        value.extract_error().unwrap_err()
    }

    #[test]
    fn server_answers_are_sorted_by_kind() {
        let t = Duration::from_secs(1);
        let cases = [
            (
                "OOM",
                "command not allowed when used memory > 'maxmemory'.",
                "out_of_memory",
            ),
            ("READONLY", "You can't write against a read only replica.", "read_only"),
            (
                "UNBLOCKED",
                "force unblock from blocking operation, instance state changed (master -> replica?)",
                "read_only",
            ),
            ("MOVED", "3999 127.0.0.1:6381", "cluster"),
            ("ASK", "3999 127.0.0.1:6381", "cluster"),
            ("NOSCRIPT", "No matching script.", "script_missing"),
            (
                "WRONGTYPE",
                "Operation against a key holding the wrong kind of value",
                "refused",
            ),
            ("LOADING", "Redis is loading the dataset in memory", "unavailable"),
        ];
        for (code, detail, kind) in cases {
            let error = QueueError::from_redis(server(code, detail), t);
            assert_eq!(error.kind(), kind, "{code}: {error}");
            assert!(error.to_string().contains(detail), "the source is kept: {error}");
        }
    }

    fn t(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn io_failures_are_unavailability_and_replace_the_connection() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let error = QueueError::from_redis(io, Duration::from_secs(1));
        assert_eq!(error.kind(), "unavailable");
        assert!(error.replaces_connection());
        assert!(std::error::Error::source(&error).is_some());
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let tls = RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, refused));
        let error = QueueError::from_redis(tls, Duration::from_secs(1));
        assert_eq!(error.kind(), "tls");
        assert!(error.to_string().contains("REDIS_TLS_CA_FILE"), "{error}");
        let noreplicas = QueueError::from_redis(server("NOREPLICAS", "Not enough good replicas to write."), t(1));
        assert!(noreplicas.is_too_few_replicas() && noreplicas.kind() == "writes_refused");
        let misconf = QueueError::from_redis(server("MISCONF", "Errors writing to the AOF file"), t(1));
        assert!(!misconf.is_too_few_replicas() && misconf.kind() == "writes_refused");
        let oom = QueueError::from_redis(server("OOM", "full"), Duration::from_secs(1));
        assert!(!oom.replaces_connection());
    }
}
