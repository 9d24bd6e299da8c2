//! Idle connections of one destination, kept by its host gate
//! (`crate::hosts`), so that a delivery finds a connection in the gate it
//! already holds: no map keyed by host to look up again, no task spawned
//! to hand a connection back, nothing shared between destinations.
//!
//! An HTTP/1.1 connection serves one request at a time: a delivery takes
//! it from here and puts it back when the answer is read whole. An HTTP/2
//! connection (a TLS endpoint that chose `h2`) serves many at once: it
//! stays here and every delivery uses a clone of its sender. (Requests
//! that start together before the first connection is made each open
//! one; one of them is kept.)
//!
//! A connection idle for longer than [`IDLE_CONNECTION`] is closed: when a
//! delivery finds it, or when the host gates are swept (every 10 s, see
//! `crate::hosts`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an idle connection to an endpoint is kept for the next request
/// (and the TCP keep-alive probe interval on it): long enough to span the
/// gaps of a steady stream of postbacks, short enough not to hold many
/// sockets to endpoints that were sent one.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// The request body every delivery sends.
pub type Body = Full<Bytes>;

/// One connection's request sender.
pub enum Sender {
    /// HTTP/1.1: one request at a time.
    Http1(http1::SendRequest<Body>),
    /// HTTP/2: shared by every delivery to its destination.
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }
}

/// A connection waiting for its next request.
struct Kept {
    sender: Sender,
    /// Over TLS: `https://` and `http://` URLs of one `host:port` are one
    /// destination, but never share a connection.
    https: bool,
    since: Instant,
}

/// The idle connections of one destination, at most `max` of them.
pub struct Idle {
    kept: Mutex<Vec<Kept>>,
    max: usize,
}

impl Idle {
    /// Room for `max` idle connections: as many as the destination may
    /// have requests at once, so every connection a busy destination
    /// needs is kept between its requests.
    pub fn new(max: usize) -> Self {
        Idle {
            kept: Mutex::new(Vec::new()),
            max,
        }
    }

    /// A connection for a request over TLS (`https`) or not, if one is
    /// open: the most recently used, so that the others age out. Closed and
    /// expired ones found on the way are dropped (which closes them).
    pub fn take(&self, https: bool) -> Option<Sender> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut i = kept.len();
        while i > 0 {
            i -= 1;
            let entry = &kept[i];
            if entry.sender.is_closed() || now.duration_since(entry.since) >= IDLE_CONNECTION {
                kept.swap_remove(i);
                continue;
            }
            if entry.https != https {
                continue;
            }
            return match &mut kept[i] {
                Kept {
                    sender: Sender::Http2(sender),
                    since,
                    ..
                } => {
                    // In use, so not idle: it ages from its last request.
                    *since = now;
                    Some(Sender::Http2(sender.clone()))
                }
                Kept {
                    sender: Sender::Http1(_),
                    ..
                } => Some(kept.swap_remove(i).sender),
            };
        }
        None
    }

    /// Keeps `sender` for the next request, if there is room (else it is
    /// dropped, and closed). An HTTP/2 sender is kept once: its clones
    /// come back and are dropped here.
    pub fn put(&self, sender: Sender, https: bool) {
        if sender.is_closed() {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(sender, Sender::Http2(_))
            && kept
                .iter()
                .any(|k| k.https == https && matches!(k.sender, Sender::Http2(_)))
        {
            return;
        }
        if kept.len() < self.max {
            kept.push(Kept {
                sender,
                https,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle for [`IDLE_CONNECTION`] or closed by
    /// their server.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|k| !k.sender.is_closed() && now.duration_since(k.since) < IDLE_CONNECTION);
    }

    /// How many connections are idle here.
    pub fn len(&self) -> usize {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every kept connection `by` older, for tests of expiry.
    #[cfg(test)]
    pub(crate) fn kept_since_shift(&self, by: Duration) {
        for kept in self.kept.lock().unwrap().iter_mut() {
            kept.since -= by;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    /// An HTTP/1.1 sender on a real loopback connection, and the server's
    /// end of it.
    pub(crate) async fn connection() -> (Sender, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(client)).await.unwrap();
        tokio::spawn(connection);
        (Sender::Http1(sender), server)
    }

    #[tokio::test]
    async fn a_kept_connection_is_taken_once_and_only_for_its_scheme() {
        let idle = Idle::new(4);
        let (sender, _server) = connection().await;
        idle.put(sender, false);
        assert!(idle.take(true).is_none(), "an http connection is not used for https");
        assert!(idle.take(false).is_some());
        assert!(
            idle.take(false).is_none(),
            "an HTTP/1.1 connection serves one request at a time"
        );
    }

    #[tokio::test]
    async fn no_more_than_max_are_kept() {
        let idle = Idle::new(1);
        let (first, _a) = connection().await;
        let (second, _b) = connection().await;
        idle.put(first, false);
        idle.put(second, false);
        assert_eq!(idle.len(), 1);
    }

    #[tokio::test]
    async fn closed_and_expired_connections_are_dropped_not_handed_out() {
        let idle = Idle::new(4);
        let (closing, server) = connection().await;
        idle.put(closing, false);
        drop(server);
        testkit::wait_until(Duration::from_secs(5), "the client sees the close", || async {
            idle.kept.lock().unwrap()[0].sender.is_closed()
        })
        .await;
        assert!(idle.take(false).is_none());
        assert!(idle.is_empty(), "the closed connection was dropped");

        let (old, _server) = connection().await;
        idle.put(old, false);
        idle.kept_since_shift(IDLE_CONNECTION);
        idle.sweep();
        assert!(idle.is_empty(), "a connection idle for IDLE_CONNECTION is closed");
    }
}
