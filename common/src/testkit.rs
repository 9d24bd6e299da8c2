//! Test helpers shared by the integration tests of both services (feature
//! `testkit`): a real `redis-server` on a free loopback port, a real HTTP
//! sink that records what it receives, a plain HTTP client, and waiting on a
//! condition with a deadline. Everything started here is stopped on drop,
//! also when a test fails.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago, for a server the test
/// starts as a separate process. It is taken below the kernel's ephemeral
/// range (a port in that range can become the local end of some outgoing
/// connection before the server binds it) and never twice in one process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 12_000)
        .unwrap_or(32_768);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = u64::from(std::process::id()) << 32 ^ u64::from(nanos);
    for attempt in 0..1000u64 {
        let offset =
            (seed.wrapping_mul(6364136223846793005).wrapping_add(attempt * 7919)) % u64::from(ephemeral_low - 10_000);
        let port = 10_000 + offset as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 below {ephemeral_low}")
}

/// A fresh, empty folder under the system temp folder, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates the folder; `label` appears in its name.
    pub fn new(label: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "postback-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("cannot create temp dir");
        TempDir(path)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of the test's own, on a free port, with its data in a
/// temp folder. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts Redis without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts Redis with `appendonly yes` and `appendfsync always`, so a
    /// SIGKILL loses nothing it acknowledged.
    pub fn start_durable() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
    }

    /// Starts Redis with extra command-line options.
    pub fn start_with(options: &[&str]) -> Self {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
            extra: options.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start redis-server: is the redis-server package installed? (scripts/test installs it)");
        self.child = Some(child);
        wait_blocking(Duration::from_secs(10), || self.ping()).expect("redis-server did not answer PING within 10 s");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it answers `PING` right now.
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Kills it with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A connection for a test to inspect or prepare the queue.
    pub async fn connection(&self) -> deadpool_redis::redis::aio::MultiplexedConnection {
        deadpool_redis::redis::Client::open(self.url())
            .expect("bad redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("cannot connect to the test redis-server")
    }
}

/// One field of Redis' `INFO section` (its `field:value` line), as text.
pub async fn redis_info(
    conn: &mut deadpool_redis::redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> Option<String> {
    let info: String = deadpool_redis::redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a Redis server that loses one answer on purpose:
/// once [`arm`](ReplyCutter::arm)ed, the first reply that contains the
/// marker is never passed on and its connection is closed, as when Redis
/// carries out a command and dies (or the network fails) before the answer
/// leaves. For tests of a client that cannot know whether its command took
/// effect. Stopped on drop.
pub struct ReplyCutter {
    port: u16,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl ReplyCutter {
    /// Listens on a free loopback port and forwards every connection to
    /// Redis on `redis_port`.
    pub async fn start(redis_port: u16) -> ReplyCutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the proxy on 127.0.0.1");
        let port = listener.local_addr().expect("proxy address").port();
        let marker: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (marker_, cuts_) = (marker.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            // Dropped with the accept task, which aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (marker, cuts) = (marker_.clone(), cuts_.clone());
                connections.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let requests = tokio::io::copy(&mut client_rx, &mut server_tx);
                    let replies = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = match server_rx.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let chunk = &buffer[..n];
                            let cut = {
                                let mut marker = marker.lock().unwrap_or_else(|e| e.into_inner());
                                let hit = marker
                                    .as_deref()
                                    .is_some_and(|m| chunk.windows(m.len()).any(|w| w == m));
                                if hit {
                                    *marker = None;
                                }
                                hit
                            };
                            if cut {
                                cuts.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            if client_tx.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either direction ending closes both sockets.
                    tokio::select! {
                        _ = requests => {}
                        _ = replies => {}
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        ReplyCutter {
            port,
            marker,
            cuts,
            accept,
        }
    }

    /// `redis://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Loses the next reply that contains `marker`.
    pub fn arm(&self, marker: &str) {
        *self.marker.lock().unwrap_or_else(|e| e.into_inner()) = Some(marker.as_bytes().to_vec());
    }

    /// How many replies it has lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for ReplyCutter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Polls `condition` every 20 ms until it holds or `limit` has passed.
pub fn wait_blocking(limit: Duration, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("condition not met within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_blocking`]: polls until `condition` resolves to
/// true or `limit` has passed, and panics with `what` if it never does.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

    async fn serve(responder: Responder, tls: Option<tokio_rustls::TlsAcceptor>) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind sink");
        let addr = listener.local_addr().expect("sink has no address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
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
                            if let Ok(stream) = acceptor.accept(stream).await {
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

/// An HTTP response as a test sees it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request with a fresh connection and reads the answer.
pub async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> HttpResponse {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(body.into())).expect("bad test request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// POSTs `body` to `url`, the way `curl -d` would (form content type, raw
/// JSON body).
pub async fn post(url: &str, body: impl Into<Bytes>) -> HttpResponse {
    http(
        "POST",
        url,
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    )
    .await
}

/// GETs `url`.
pub async fn get(url: &str) -> HttpResponse {
    http("GET", url, &[], Bytes::new()).await
}

/// A throw-away certificate authority and a `localhost` server certificate
/// it signed, for testing HTTPS delivery with a private CA.
pub struct TestCa {
    ca_pem: String,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
}

impl TestCa {
    /// Generates the CA and the server certificate.
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        let server_cert = server_params.signed_by(&server_key, &issuer).expect("server cert");
        TestCa {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().to_vec(),
            server_key: server_key.serialize_der(),
        }
    }

    /// The CA certificate as PEM, for `DELIVER_EXTRA_CA_FILE`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into()),
            )
            .expect("server tls config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
