//! A real HTTP/1.1 server (plain or TLS, or HTTP/2 over TLS) that records
//! every request and answers as a test scripts it.
use crate::{wait_until, TestCa};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method name.
    pub method: String,
    /// Path and query, exactly as sent.
    pub path_and_query: String,
    /// Request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, still percent-encoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let query = self.path_and_query.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// How the sink answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer (hold the connection open).
    pub hang: bool,
}

impl Reply {
    /// An immediate answer with `status` and a short body.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: format!("status {status}"),
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// A request that is never answered.
    pub fn hang() -> Self {
        Reply {
            hang: true,
            ..Reply::status(200)
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answers after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Decides the reply for a request; gets the request and how many requests
/// the sink had received before it.
pub type Responder = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

/// A responder that answers `before` until its switch is turned on, then
/// `after` (an endpoint that is down, then comes back). Returns the switch.
pub fn switched(before: Reply, after: Reply) -> (Responder, Arc<std::sync::atomic::AtomicBool>) {
    let on = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switch = on.clone();
    let responder: Responder = Arc::new(move |_, _| {
        if on.load(std::sync::atomic::Ordering::SeqCst) {
            after.clone()
        } else {
            before.clone()
        }
    });
    (responder, switch)
}

/// A real HTTP/1.1 server on 127.0.0.1 that records every request.
pub struct Sink {
    addr: SocketAddr,
    scheme: &'static str,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// A sink that answers 200 to everything.
    pub async fn ok() -> Sink {
        Sink::start(Arc::new(|_, _| Reply::status(200))).await
    }

    /// A sink that answers with `responder`.
    pub async fn start(responder: Responder) -> Sink {
        Sink::serve(responder, None).await
    }

    /// An HTTPS sink answering 200, with a certificate for `localhost`
    /// signed by `ca` (see [`TestCa`]).
    pub async fn tls(ca: &TestCa) -> Sink {
        Sink::serve(Arc::new(|_, _| Reply::status(200)), Some(ca.acceptor())).await
    }

    /// An HTTPS sink like [`Sink::tls`] that speaks HTTP/2, chosen in the
    /// TLS handshake (ALPN `h2`).
    pub async fn tls_h2(ca: &TestCa) -> Sink {
        Sink::serve(
            Arc::new(|_, _| Reply::status(200)),
            Some(ca.acceptor_offering(&[b"h2"])),
        )
        .await
    }

    async fn serve(responder: Responder, tls: Option<tokio_rustls::TlsAcceptor>) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind sink");
        let addr = listener.local_addr().expect("sink has no address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let log = log.clone();
                let responder = responder.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        let responder = responder.clone();
                        async move { Ok::<_, hyper::Error>(answer(req, &log, &responder).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let h2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                                let _ = h2.serve_connection(TokioIo::new(stream), service).await;
                            } else {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Sink {
            addr,
            scheme,
            received,
            connections,
            task,
        }
    }

    /// `http://127.0.0.1:<port><path>` (`https://localhost:<port>` for a
    /// TLS sink, matching its certificate).
    pub fn url(&self, path: &str) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}{path}", self.addr.port()),
            _ => format!("http://{}{path}", self.addr),
        }
    }

    /// Everything received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// How many requests have arrived.
    pub fn count(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// How many connections have been accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) {
        wait_until(limit, &format!("{n} requests at the sink"), || async {
            self.count() >= n
        })
        .await;
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(req: Request<Incoming>, log: &Mutex<Vec<Received>>, responder: &Responder) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    let reply = {
        let mut log = log.lock().expect("sink log poisoned");
        let reply = responder(&received, log.len());
        log.push(received);
        reply
    };
    if reply.hang {
        std::future::pending::<()>().await;
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        response = response.header(k, v);
    }
    response
        .body(Full::new(Bytes::from(reply.body)))
        .expect("bad test reply")
}
