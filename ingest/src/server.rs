//! Serving the app on ingest's listeners: its TCP port and, when set, the
//! Unix socket nginx reaches it on.
//!
//! Put together from actix-server and actix-http, as actix-web's
//! `HttpServer` does, because `HttpServer` serves a Unix socket only with
//! tokio's `UnixStream`, and that costs a needless wake-up per answer (see
//! [`crate::unix_stream`]). Everything else is as `HttpServer` sets it: its
//! timeouts (but the keep-alive, `INGEST_KEEPALIVE_MS`), and idle
//! keep-alive connections closed when the server stops.

use crate::unix_stream::ReadInterestStream;
use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol, Response};
use actix_server::{GracefulShutdownSignal, Server};
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::App;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// `HttpServer`'s: how long a client that closed its side may take to read
/// the rest of the answer.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the `T` of an `App<T>` is (actix-web's own bound, named once): its
/// services, answering with bodies of type `B`.
pub trait AppServices<B>:
    ServiceFactory<ServiceRequest, Config = (), Response = ServiceResponse<B>, Error = actix_web::Error, InitError = ()>
    + 'static
{
}

impl<T, B> AppServices<B> for T where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static
{
}

/// Starts `workers` threads, each serving an app made by `app`, on
/// `listener` and on `socket`, keeping idle connections open for
/// `keep_alive`. The server stops on SIGTERM or SIGINT and lets requests
/// in flight finish within `shutdown_grace`.
pub fn serve<F, T, B>(
    app: F,
    listener: std::net::TcpListener,
    socket: Option<UnixListener>,
    workers: usize,
    keep_alive: Duration,
    shutdown_grace: Duration,
) -> std::io::Result<Server>
where
    F: Fn() -> App<T> + Clone + Send + 'static,
    T: AppServices<B>,
    B: MessageBody + 'static,
{
    let builder = Server::build()
        .workers(workers)
        .shutdown_timeout(shutdown_grace.as_secs().max(1));
    let shutdown = builder.graceful_shutdown_signal();
    let tcp = {
        let (app, shutdown) = (app.clone(), shutdown.clone());
        move || {
            fn_service(|io: tokio::net::TcpStream| async {
                // As `HttpServer` does: requests know their peer's address.
                let peer = io.peer_addr().ok();
                Ok::<_, DispatchError>((io, Protocol::Http1, peer))
            })
            .and_then(http_service(&app, keep_alive, shutdown.clone()))
        }
    };
    let builder = builder.listen("ingest", listener, tcp)?;
    let builder = match socket {
        Some(socket) => builder.listen_uds("ingest-socket", socket, move || {
            fn_service(|io: tokio::net::UnixStream| async {
                // Leaves tokio's event loop and joins it again, registered
                // for readability only: once per connection, and nginx
                // keeps its connections to ingest open.
                let stream = io
                    .into_std()
                    .and_then(ReadInterestStream::new)
                    .map_err(DispatchError::Io)?;
                Ok::<_, DispatchError>((stream, Protocol::Http1, None))
            })
            .and_then(http_service(&app, keep_alive, shutdown.clone()))
        })?,
        None => builder,
    };
    Ok(builder.run())
}

/// HTTP/1.1 over `Io`, serving an app made by `app`, with `HttpServer`'s
/// settings but `keep_alive`.
fn http_service<Io, F, T, B>(
    app: &F,
    keep_alive: Duration,
    shutdown: GracefulShutdownSignal,
) -> impl ServiceFactory<(Io, Protocol, Option<SocketAddr>), Config = (), Response = (), Error = DispatchError, InitError = ()>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    F: Fn() -> App<T>,
    T: AppServices<B>,
    B: MessageBody + 'static,
{
    let service = app()
        .into_factory()
        .map_err(|error: actix_web::Error| Response::from(error.error_response()));
    HttpService::build()
        .keep_alive(keep_alive)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .graceful_shutdown_signal(move || {
            let shutdown = shutdown.clone();
            async move { shutdown.notified().await }
        })
        // The app builds no URLs from its host name, so the default will do.
        .finish(map_config(service, |()| AppConfig::default()))
}
