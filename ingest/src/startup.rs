//! Building and running the HTTP server. Tests call [`Application::build`]
//! with their own configuration, exactly as `main` does.

use crate::auth::{self, Producers};
use crate::backlog::{self, Backlog};
use crate::config::{AccessLog, Config};
use crate::metrics::Metrics;
use crate::middleware::Observe;
use crate::routes;
use actix_web::dev::Server;
use actix_web::App;
use common::line_log::{LineLog, WhenFull};
use common::queue::{Queue, QueueConfig};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// Connections the kernel queues for ingest before it accepts them: room
/// for nginx's keep-alive pool and a burst of direct clients at once.
const LISTEN_BACKLOG: i32 = 1024;
/// Mode of ingest's Unix socket: any local user may connect, like the
/// loopback port (nginx's workers run as another user).
const SOCKET_MODE: u32 = 0o666;

/// What the handlers of one worker thread share.
pub struct AppState {
    /// This worker's handle on the queue (a connection of its own, so each
    /// connection's I/O runs on the thread that uses it).
    pub queue: Queue,
    /// Cached queue length for backpressure.
    pub backlog: Arc<Backlog>,
    /// See [`Config::max_body_bytes`].
    pub max_body_bytes: usize,
    /// See [`Config::body_timeout`].
    pub body_timeout: std::time::Duration,
    /// See [`Config::max_items`].
    pub max_items: usize,
    /// What ingest counts.
    pub metrics: Arc<Metrics>,
    /// Endpoint URLs checked against the rules and [`Config::destinations`],
    /// with this worker's last good one.
    pub urls: crate::request::UrlCheck,
    /// The producer keys, as this process last read them.
    pub producers: Arc<Producers>,
    /// This worker's last accepted key.
    pub last_key: auth::LastKey,
    /// See [`Config::idempotency_ttl`].
    pub idempotency_ttl: Duration,
}

/// The queue handle ingest uses (also for `ingest keys`).
pub fn queue(config: &Config) -> Result<Queue, common::queue::QueueError> {
    Queue::new(&QueueConfig {
        url: config.redis_url.clone(),
        tls: config.redis_tls.clone(),
        name: config.queue.clone(),
        timeout: config.redis_timeout,
        longest_block: Duration::ZERO,
        shards: config.shards,
        replica_acks: config.replica_acks,
        replica_timeout: config.replica_timeout,
    })
}

/// A bound, ready-to-run ingest server.
pub struct Application {
    port: u16,
    server: Server,
    refresher: tokio::task::JoinHandle<()>,
    keys_refresher: tokio::task::JoinHandle<()>,
    /// Follows the sentinels' master switches (`REDIS_URL` with sentinels).
    switch_follower: tokio::task::JoinHandle<()>,
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
        let queue = queue(config).map_err(std::io::Error::other)?;
        let backlog = Arc::new(Backlog::new(config.max_queue));
        let metrics = Arc::new(Metrics::new());
        let log_dir = match &config.access_log {
            AccessLog::File { path, .. } => path.parent(),
            AccessLog::Stdout | AccessLog::Off => None,
        };
        metrics.watch_disks(common::disk::Watched::new(log_dir, config.data_dir.as_deref()));
        let refresher = tokio::spawn(backlog::refresh(backlog.clone(), queue.handle(), metrics.clone()));
        let producers = Arc::new(Producers::new(config.auth));
        let keys_refresher = tokio::spawn(auth::refresh(producers.clone(), queue.handle()));
        let switches = queue.handle();
        let switch_follower = tokio::spawn(async move { switches.follow_master_switches().await });
        let (access_log, access_log_writer) = match &config.access_log {
            AccessLog::Off => (None, None),
            AccessLog::Stdout => {
                let (log, writer) = LineLog::stdout(WhenFull::Drop);
                (Some(log), Some(writer))
            }
            AccessLog::File { path, max_bytes } => {
                let (log, writer) = LineLog::file(path, *max_bytes, WhenFull::Drop).map_err(|e| {
                    std::io::Error::other(format!("cannot open INGEST_ACCESS_LOG {}: {e}", path.display()))
                })?;
                (Some(log), Some(writer))
            }
        };
        let (max_body_bytes, body_timeout, max_items, idempotency_ttl) = (
            config.max_body_bytes,
            config.body_timeout,
            config.max_items,
            config.idempotency_ttl,
        );
        let destinations = Arc::new(config.destinations.clone());
        let app = move || {
            let state = actix_web::web::Data::new(AppState {
                queue: queue.handle(),
                backlog: backlog.clone(),
                max_body_bytes,
                body_timeout,
                max_items,
                metrics: metrics.clone(),
                urls: crate::request::UrlCheck::new(destinations.clone()),
                producers: producers.clone(),
                last_key: auth::LastKey::default(),
                idempotency_ttl,
            });
            let app = App::new()
                .app_data(state)
                .wrap(Observe::new(metrics.clone(), access_log.clone()));
            routes::register(app)
        };
        let server = crate::server::serve(
            app,
            listener,
            socket,
            config.workers,
            config.keep_alive,
            config.shutdown_grace,
        )?;
        Ok(Application {
            port,
            server,
            refresher,
            keys_refresher,
            switch_follower,
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
        self.keys_refresher.abort();
        self.switch_follower.abort();
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
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
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
