//! The outbound HTTP client: HTTP/1.1 (and HTTP/2 where a TLS endpoint
//! chooses it) over rustls with the webpki roots, plus an optional CA file
//! for private endpoints, on connections kept between requests by each
//! host's gate (`crate::pool`); and the classification of every failure
//! into a short kind (`timeout`, `dns`, `connect`, `tls`, ...) for logs and
//! retries.
//!
//! hyper's own connections (`hyper::client::conn`) rather than
//! hyper-util's pooled client: the gate a delivery holds already names its
//! destination, so the pool's own lookups of the host (a SipHash of it,
//! byte by byte, several times a request) and the task it spawns per
//! request to take a connection back were work for nothing (figures in
//! docs/PERFORMANCE.md).
//! What that client did that matters here is done the same way: the
//! `Host` header (without a default port), the origin-form request target
//! on HTTP/1.1, and a request that a kept connection closed before
//! sending is sent again on a new one.

use crate::guard::{ConnectFailure, GuardedConnector};
use crate::pool::{Body, Idle, Sender, IDLE_CONNECTION};
use bytes::Bytes;
use common::destination::DestinationPolicy;
use common::job::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Past this many bytes the rest of a response body is not read; the
/// connection is dropped instead of drained.
const DRAIN_LIMIT: usize = 256 * 1024;
/// Room first given to a kept response body; it grows up to
/// `DELIVER_LOG_BODY_MAX`.
const BODY_FIRST_ROOM: usize = 4096;

type Connector = hyper_rustls::HttpsConnector<GuardedConnector>;

/// The HTTP client that makes postback requests.
#[derive(Clone)]
pub struct HttpClient {
    connector: Connector,
    timeout: Duration,
    body_max: usize,
}

/// What the endpoint answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The first `body_max` bytes of the body, as text.
    pub body: String,
    /// `Retry-After`, when given as seconds or an HTTP date.
    pub retry_after: Option<Duration>,
}

/// Why no answer was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No complete answer within the timeout.
    Timeout,
    /// The host name did not resolve.
    Dns,
    /// The TCP connection failed (refused, unreachable).
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The connection broke or the answer was not valid HTTP.
    Io,
    /// The filled-in URL is not a valid URL (e.g. a value made the host
    /// invalid). Retrying cannot help.
    InvalidUrl,
    /// The destination guard refused every address of the host; no
    /// connection was made. Retrying cannot help.
    Blocked,
}

impl FailureKind {
    /// The name used as `status` in the delivery log.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Io => "io",
            FailureKind::InvalidUrl => "invalid_url",
            FailureKind::Blocked => "blocked",
        }
    }
}

/// A request that got no usable answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The kind, for logs and the retry decision.
    pub kind: FailureKind,
    /// The underlying error, for the log.
    pub message: String,
}

/// The result of one attempt and how long it took.
#[derive(Debug)]
pub struct Attempt {
    /// The answer or the failure.
    pub result: Result<Answer, Failure>,
    /// Time from sending to the end of reading the answer.
    pub elapsed: Duration,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("DELIVER_EXTRA_CA_FILE {path}: {problem}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

impl HttpClient {
    /// Builds the client. `extra_ca` adds trusted CAs to the webpki roots;
    /// connections go only where `destinations` allows.
    pub fn new(
        timeout: Duration,
        body_max: usize,
        extra_ca: Option<&Path>,
        destinations: DestinationPolicy,
    ) -> Result<HttpClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            add_ca_file(&mut roots, path)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let tcp = GuardedConnector::new(destinations, timeout, IDLE_CONNECTION);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        Ok(HttpClient {
            connector,
            timeout,
            body_max,
        })
    }

    /// Sends one request to `uri` (`Err`: it did not parse) with `headers`
    /// as they are (see [`request_headers`]) on one of `idle`'s
    /// connections or a new one, and reads the answer, all within the
    /// timeout. The connection goes back to `idle` when the answer was
    /// read whole. Redirects are not followed: a 3xx is an answer like any
    /// other.
    ///
    /// Not an `async fn`: its future is part of every delivery task, which
    /// tokio copies when it spawns and completes one, and an `async fn`'s
    /// future keeps room for its arguments beside its own state. Here they
    /// go straight into the boxed exchange; the future holds a pointer.
    pub fn send_to<'a>(
        &'a self,
        method: Method,
        uri: Result<http::Uri, Failure>,
        body: Option<Bytes>,
        headers: http::HeaderMap,
        idle: &'a Arc<Idle>,
    ) -> impl Future<Output = Attempt> + 'a {
        // Boxed: hyper's request future was a quarter of a delivery's
        // 2.6 KB of state.
        let exchange = Box::pin(self.exchange(method, uri, body, headers, idle));
        async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(self.timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(Failure {
                    kind: FailureKind::Timeout,
                    message: format!("no complete answer within {} ms", self.timeout.as_millis()),
                }),
            };
            Attempt {
                result,
                elapsed: started.elapsed(),
            }
        }
    }

    async fn exchange(
        &self,
        method: Method,
        uri: Result<http::Uri, Failure>,
        body: Option<Bytes>,
        headers: http::HeaderMap,
        idle: &Arc<Idle>,
    ) -> Result<Answer, Failure> {
        let uri = uri?;
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        // Built in place rather than through http's request builder, whose
        // conversions copy every value and grow the header map one by one.
        let mut request = http::Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method.as_http();
        *request.headers_mut() = headers;
        let response = loop {
            let (mut sender, reused) = match idle.take(https) {
                Some(sender) => (sender, true),
                None => (self.connect(&uri).await?, false),
            };
            let sent = match &mut sender {
                Sender::Http1(http1) => {
                    http1_form(&mut request, &uri)?;
                    http1.try_send_request(request).await
                }
                Sender::Http2(http2) => {
                    *request.uri_mut() = uri.clone();
                    request.headers_mut().remove(http::header::HOST);
                    http2.try_send_request(request).await
                }
            };
            match sent {
                Ok(response) => break (response, sender),
                Err(mut error) => match error.take_message() {
                    // Closed by the server before it was sent: once more,
                    // on a new connection (a fresh one that fails has
                    // nothing to blame but the endpoint).
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(classify(Stage::Exchange, &error.into_error())),
                },
            }
        };
        let (response, sender) = response;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(parse_retry_after);
        let mut body = response.into_body();
        let mut kept = Vec::with_capacity(self.body_max.min(BODY_FIRST_ROOM));
        let mut seen = 0usize;
        let mut whole = true;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure {
                kind: FailureKind::Io,
                message: e.to_string(),
            })?;
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                let room = self.body_max.saturating_sub(kept.len());
                kept.extend_from_slice(&data[..data.len().min(room)]);
                if seen > DRAIN_LIMIT {
                    whole = false;
                    break;
                }
            }
        }
        // A connection whose answer was not read to its end is closed.
        if whole {
            give_back(idle, sender, https);
        }
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&kept).into_owned(),
            retry_after,
        })
    }

    /// A new connection to `uri`'s destination: TCP where the guard allows,
    /// TLS for `https`, HTTP/2 if the endpoint chose it in the handshake.
    /// Its connection task runs on its own until the connection closes.
    async fn connect(&self, uri: &http::Uri) -> Result<Sender, Failure> {
        use tower_service::Service as _;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| classify(Stage::Connect, e.as_ref()))?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(|e| classify(Stage::Connect, e.as_ref()))?;
        let handshake = |e: hyper::Error| classify(Stage::Connect, &e);
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(handshake)?;
            tokio::spawn(connection);
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(handshake)?;
            tokio::spawn(connection);
            Ok(Sender::Http1(sender))
        }
    }
}

/// Makes `request` an HTTP/1.1 request for `uri`: the origin-form target
/// (path and query) and, unless it has one from a first try, a `Host`
/// header with the port only where it is not the scheme's own (as
/// hyper-util's client, and curl, write it). Producers cannot set `Host`
/// (`common::headers`).
fn http1_form(request: &mut http::Request<Body>, uri: &http::Uri) -> Result<(), Failure> {
    *request.uri_mut() = match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => http::Uri::from(path.clone()),
        _ => http::Uri::default(),
    };
    if request.headers().contains_key(http::header::HOST) {
        return Ok(());
    }
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().filter(|&port| {
        let default = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        port != default
    });
    let value = match port {
        None => http::HeaderValue::from_str(host),
        Some(port) => http::HeaderValue::from_maybe_shared(Bytes::from(format!("{host}:{port}"))),
    }
    .map_err(|e| Failure {
        kind: FailureKind::InvalidUrl,
        message: format!("the host {host:?} is not a valid Host header: {e}"),
    })?;
    request.headers_mut().insert(http::header::HOST, value);
    Ok(())
}

/// Puts `sender` back among `idle`'s connections once it can take the next
/// request: at once if it can, which is the usual case after a whole
/// answer; otherwise (its connection is still finishing the last one)
/// from a task that waits for that.
fn give_back(idle: &Arc<Idle>, sender: Sender, https: bool) {
    match sender {
        Sender::Http1(mut http1) if !http1.is_ready() => {
            if http1.is_closed() {
                return;
            }
            let idle = idle.clone();
            tokio::spawn(async move {
                let ready = tokio::time::timeout(IDLE_CONNECTION, http1.ready()).await;
                if matches!(ready, Ok(Ok(()))) {
                    idle.put(Sender::Http1(http1), https);
                }
            });
        }
        sender => idle.put(sender, https),
    }
}

/// A request's header map with room for `more` headers beside deliver's
/// own `User-Agent` (and `Content-Type: application/json` for a request
/// with a body), which are in it already, and the `Host` the client adds.
/// The caller inserts its headers by value (no copy of a value, no growth
/// of the map); a producer's `User-Agent` or `Content-Type` replaces ours.
pub fn request_headers(more: usize, has_body: bool) -> http::HeaderMap {
    const USER_AGENT: http::HeaderValue =
        http::HeaderValue::from_static(concat!("postback-deliver/", env!("CARGO_PKG_VERSION")));
    const JSON: http::HeaderValue = http::HeaderValue::from_static("application/json");
    let mut map = http::HeaderMap::with_capacity(more + 3);
    map.insert(http::header::USER_AGENT, USER_AGENT);
    if has_body {
        map.insert(http::header::CONTENT_TYPE, JSON);
    }
    map
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), ClientError> {
    let fail = |problem: String| ClientError::CaFile {
        path: path.display().to_string(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(file)) {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(())
}

/// Where a request failed: making its connection (TCP, TLS, the HTTP
/// handshake) or in the exchange on it.
#[derive(Clone, Copy)]
enum Stage {
    Connect,
    Exchange,
}

/// Sorts an error into a kind by walking its chain of causes; the message
/// is the chain's, joined by `: `.
fn classify(stage: Stage, error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut kind = match stage {
        Stage::Connect => FailureKind::Connect,
        Stage::Exchange => FailureKind::Io,
    };
    let mut message = String::new();
    let mut source = Some(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if let Some(failure) = cause.downcast_ref::<ConnectFailure>() {
            kind = match failure {
                ConnectFailure::Blocked { .. } => FailureKind::Blocked,
                ConnectFailure::Dns { .. } => FailureKind::Dns,
                ConnectFailure::Timeout(_) => FailureKind::Timeout,
                ConnectFailure::NoHost | ConnectFailure::Url(_) => FailureKind::InvalidUrl,
                ConnectFailure::Connect { .. } => FailureKind::Connect,
            };
        } else if is_tls(cause) {
            kind = FailureKind::Tls;
        } else if text.contains("dns error") || text.contains("failed to lookup address") {
            kind = FailureKind::Dns;
        } else if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut && matches!(stage, Stage::Connect) {
                kind = FailureKind::Timeout;
            }
        }
        // A cause whose text its wrapper repeats adds nothing.
        if !message.ends_with(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        source = cause.source();
    }
    Failure { kind, message }
}

/// A postback URL as a request URI; a URL that does not parse, or whose
/// host and port name no place to send to (`common::url_parts::host_port`:
/// an empty host, a port out of range, a zone id), is an `invalid_url`
/// failure, final: a placeholder's value made it so, and no retry helps.
pub fn parse_url(url: &str) -> Result<http::Uri, Failure> {
    let invalid = |message: String| Failure {
        kind: FailureKind::InvalidUrl,
        message,
    };
    common::url_parts::host_port(url).map_err(|problem| invalid(problem.to_string()))?;
    url.parse().map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))
}

/// Whether `error` is a rustls error, possibly wrapped in `io::Error`s
/// (hyper-rustls wraps tokio-rustls' `io::Error` in another one, and
/// `io::Error::source` skips the wrapped error itself).
fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    match error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// `Retry-After` as seconds (`120`) or an HTTP date.
fn parse_retry_after(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_as_seconds_or_date() {
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static("7")),
            Some(Duration::from_secs(7))
        );
        let past = http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(&http::HeaderValue::from_static("soon")), None);
    }
}
