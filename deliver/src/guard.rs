//! deliver's side of the destination guard (`common::destination`): the
//! TCP connector under the HTTP client. It resolves the host itself, asks
//! the policy about every address, and connects only to an address the
//! policy allowed, so what was checked is what is reached: no second
//! lookup that a rebinding DNS server could answer differently, and no URL
//! form (a name, `127.1`, `2130706433`, `0x7f000001`, `[::ffff:127.0.0.1]`)
//! that reaches an address without it being checked. A refused address
//! opens no connection.
//!
//! TLS sits above this connector (hyper-rustls), so a certificate is still
//! checked against the host name of the URL.

use common::destination::{DestinationPolicy, Refusal};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The URL's host or port names no place to connect to (a port out
    /// of range is never read as the default one).
    #[error("{0}")]
    Url(common::url_parts::AuthorityProblem),
    /// The name did not resolve.
    #[error("dns error: {host} did not resolve ({source})")]
    Dns {
        /// The name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Every address of the host is refused by the destination policy.
    #[error(
        "destination {addr} is not allowed ({}); no connection was made. \
         If it is meant to receive postbacks, add it to POSTBACK_ALLOW_DESTINATIONS",
        why(*.refusal)
    )]
    Blocked {
        /// The first refused address.
        addr: SocketAddr,
        /// Why.
        refusal: Refusal,
    },
    /// Connecting took longer than the delivery timeout.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    /// Connecting failed (refused, unreachable).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

fn why(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::NotPublic => "not a public address",
        Refusal::Denied => "listed in POSTBACK_DENY_DESTINATIONS",
    }
}

/// The guarded TCP connector.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<DestinationPolicy>,
    connect_timeout: Duration,
    keepalive: Duration,
}

impl GuardedConnector {
    /// Connects where `policy` allows, each try within `connect_timeout`,
    /// with TCP keep-alive probes every `keepalive` on the connection.
    pub fn new(policy: DestinationPolicy, connect_timeout: Duration, keepalive: Duration) -> Self {
        GuardedConnector {
            policy: Arc::new(policy),
            connect_timeout,
            keepalive,
        }
    }

    /// The addresses of `host` at `port` that the policy allows, or why
    /// there are none.
    pub async fn allowed_addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectFailure> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            // The system resolver, as any client would use: it also reads
            // numeric forms such as `127.1` and `2130706433`.
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| ConnectFailure::Dns {
                    host: host.to_string(),
                    source,
                })?
                .collect(),
        };
        let mut refused = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| match self.policy.check(*addr) {
                Ok(()) => true,
                Err(refusal) => {
                    refused.get_or_insert((*addr, refusal));
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (true, Some((addr, refusal))) => Err(ConnectFailure::Blocked { addr, refusal }),
            (true, None) => Err(ConnectFailure::Dns {
                host: host.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            }),
            (false, _) => Ok(allowed),
        }
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<TcpStream>, ConnectFailure> {
        // `Uri::port_u16` reads `:65536` as no port at all; the one rule
        // of what a URL's port is decides here too. (Once per connection,
        // not per request: the string is of no cost beside a handshake.)
        let url = uri.to_string();
        let target = common::url_parts::host_port(&url).map_err(ConnectFailure::Url)?;
        let mut last = None;
        for addr in self.allowed_addresses(target.host, target.port).await? {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Best effort, as hyper's own connector does.
                    let _ = stream.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new().with_time(self.keepalive);
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(source)) => last = Some(ConnectFailure::Connect { addr, source }),
                Err(_) => last = Some(ConnectFailure::Timeout(addr)),
            }
        }
        Err(last.unwrap_or(ConnectFailure::NoHost))
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}
