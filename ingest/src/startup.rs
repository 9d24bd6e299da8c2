//! Building and running the HTTP server. Tests call [`Application::build`]
//! with their own configuration, exactly as `main` does.

use crate::backlog::{self, Backlog};
use crate::config::{AccessLog, Config};
use crate::metrics::Metrics;
use crate::routes::{self, Accepted, RequestId};
use actix_web::dev::Service;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::HttpMessage;
use common::line_log::LineLog;
use std::time::Instant;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
use actix_web::dev::Server;
use actix_web::{web, App};
use common::queue::QueueKeys;
use common::redis_pool::{Outage, Shared};
use deadpool_redis::redis::{aio::MultiplexedConnection, RedisResult};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// What the handlers of one worker thread share.
pub struct AppState {
    /// This worker's Redis connection (one per worker, so each connection's
    /// I/O runs on the thread that uses it).
    pub redis: Shared,
    /// The queue's keys.
    pub keys: QueueKeys,
    /// Cached queue length for backpressure.
    pub backlog: Arc<Backlog>,
    /// Logs Redis outages once.
    pub outage: Arc<Outage>,
    /// See [`Config::max_body_bytes`].
    pub max_body_bytes: usize,
    /// See [`Config::max_items`].
    pub max_items: usize,
    /// See [`Config::redis_timeout`].
    pub redis_timeout: Duration,
    /// What ingest counts.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Runs `op` on this worker's Redis connection within
    /// `INGEST_REDIS_TIMEOUT_MS`, and records the outcome for outage
    /// logging; after an error that may have broken the connection, it is
    /// dropped, so the next request reconnects.
    pub async fn redis<T, Fut>(&self, what: &str, op: impl FnOnce(MultiplexedConnection) -> Fut) -> Result<T, String>
    where
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let run = async {
            let conn = self.redis.get().await?;
            op(conn).await.map_err(|e| {
                self.redis.failed(&e);
                e.to_string()
            })
        };
        let result = match tokio::time::timeout(self.redis_timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", self.redis_timeout.as_millis())),
        };
        match &result {
            Ok(_) => self.outage.succeeded(),
            Err(e) => self.outage.failed(what, e),
        }
        result
    }
}

/// A bound, ready-to-run ingest server.
pub struct Application {
    port: u16,
    server: Server,
    refresher: tokio::task::JoinHandle<()>,
    access_log_writer: Option<std::thread::JoinHandle<()>>,
    socket: Option<std::path::PathBuf>,
}

impl Application {
    /// Binds the listener and builds the server. Must be called inside a
    /// Tokio runtime (the backlog refresher is spawned on it).
    pub fn build(config: &Config) -> std::io::Result<Application> {
        let listener = bind(&config.bind, config.reuse_port)?;
        let port = listener.local_addr()?.port();
        let socket = config.socket.as_deref().map(bind_socket).transpose()?;
        let pool = common::redis_pool::connect(&config.redis_url, config.redis_pool, config.redis_timeout)
            .map_err(std::io::Error::other)?;
        let keys = QueueKeys::new(&config.queue);
        let backlog = Arc::new(Backlog::new(config.max_queue));
        let outage = Arc::new(Outage::new(&config.redis_url));
        let metrics = Arc::new(Metrics::new());
        let refresher = tokio::spawn(backlog::refresh(
            backlog.clone(),
            pool.clone(),
            keys.clone(),
            outage.clone(),
            metrics.clone(),
        ));
        let (access_log, access_log_writer) = match &config.access_log {
            AccessLog::Off => (None, None),
            AccessLog::Stdout => {
                let (log, writer) = LineLog::stdout();
                (Some(log), Some(writer))
            }
            AccessLog::File(path) => {
                let (log, writer) = LineLog::file(path).map_err(|e| {
                    std::io::Error::other(format!("cannot open INGEST_ACCESS_LOG {}: {e}", path.display()))
                })?;
                (Some(log), Some(writer))
            }
        };
        let (max_body_bytes, max_items, redis_timeout) =
            (config.max_body_bytes, config.max_items, config.redis_timeout);
        let app = move || {
            let state = web::Data::new(AppState {
                redis: Shared::new(pool.clone()),
                keys: keys.clone(),
                backlog: backlog.clone(),
                outage: outage.clone(),
                max_body_bytes,
                max_items,
                redis_timeout,
                metrics: metrics.clone(),
            });
            let metrics = metrics.clone();
            let access_log = access_log.clone();
            App::new()
                .app_data(state)
                .wrap_fn(move |req, srv| {
                    // Count, time and log every request, and give it an id.
                    let started = Instant::now();
                    let route = crate::metrics::route_of(req.path());
                    let request_id = RequestId::of(&req);
                    let logged = access_log
                        .as_ref()
                        .map(|_| (req.method().clone(), req.path().to_owned()));
                    req.extensions_mut().insert(request_id.clone());
                    let response = srv.call(req);
                    let metrics = metrics.clone();
                    let access_log = access_log.clone();
                    async move {
                        let mut response = response.await?;
                        let took = started.elapsed();
                        let status = response.status().as_u16();
                        metrics.request(route, status, took);
                        if let Ok(value) = HeaderValue::from_str(&request_id.0) {
                            response.headers_mut().insert(X_REQUEST_ID, value);
                        }
                        if let (Some(log), Some((method, path))) = (access_log, logged) {
                            let accepted = response.response().extensions().get::<Accepted>().map_or(0, |a| a.0);
                            log.write(&access_line(
                                &request_id.0,
                                method.as_str(),
                                &path,
                                status,
                                accepted,
                                took,
                            ));
                        }
                        Ok(response)
                    }
                })
                // The aliases keep clients of the old PHP endpoint working.
                // One resource per path: static paths match without a regex.
                .service(ingest_resource("/ingest"))
                .service(ingest_resource("/ingest.php"))
                .service(ingest_resource("/i"))
                .route("/health", web::get().to(routes::health))
                .route("/metrics", web::get().to(routes::metrics))
                .route("/stats", web::get().to(routes::stats))
                .route("/dashboard", web::get().to(routes::dashboard))
                .default_service(web::to(routes::not_found))
        };
        let server = crate::server::serve(app, listener, socket, config.workers, config.shutdown_grace)?;
        Ok(Application {
            port,
            server,
            refresher,
            access_log_writer,
            socket: config.socket.clone(),
        })
    }

    /// The port it listens on (useful when bound to port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then stops accepting and lets the
    /// requests in flight finish (up to the shutdown grace).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.refresher.abort();
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
        // The app (and its log handles) are gone once the server stops: let
        // the writer flush the last lines.
        if let Some(writer) = self.access_log_writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        result
    }
}

/// `POST path` queues postbacks; any other method gets 405.
fn ingest_resource(path: &str) -> actix_web::Resource {
    web::resource(path)
        .route(web::post().to(routes::ingest))
        .default_service(web::to(routes::method_not_allowed))
}

/// One access log line (logfmt).
fn access_line(request_id: &str, method: &str, path: &str, status: u16, accepted: usize, took: Duration) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(160 + path.len());
    line.push_str("time=");
    common::line_log::push_rfc3339_millis(&mut line, common::now_ms());
    let _ = writeln!(
        line,
        " request_id={request_id} method={method} path={path} status={status} accepted={accepted} duration_us={}",
        took.as_micros()
    );
    line
}

/// Binds the Unix socket at `path`, readable and writable by every local
/// user (like a loopback port; the nginx workers run as another user). A
/// socket left behind by a process that died is replaced; one that still
/// answers, or a path that is not a socket, is an error.
fn bind_socket(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    let in_use = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("INGEST_SOCKET {}: {why}", path.display()),
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(in_use("exists and is not a socket")),
        Ok(_) if UnixStream::connect(path).is_ok() => return Err(in_use("another process is listening on it")),
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on INGEST_SOCKET {}: {e}", path.display()),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Binds the listening socket, with SO_REUSEPORT when asked, so several
/// ingest processes under supervisord can serve one port.
fn bind(address: &str, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let address: std::net::SocketAddr = address.parse().map_err(std::io::Error::other)?;
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
