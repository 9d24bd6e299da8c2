//! The admin listener (`DELIVER_ADMIN_BIND`): `/metrics` for Prometheus,
//! `/health` for supervisors and load balancers, `/stats` (this process's
//! counters as flat JSON, for collectd's curl_json plugin). Loopback by
//! default: it is for operators, not for the world.

use crate::metrics::Metrics;
use bytes::Bytes;
use common::queue::Queue;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the admin pages show.
pub struct AdminState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether Redis answered the last operation.
    pub queue: Queue,
    /// The worker id.
    pub worker: String,
    /// Whether the delivery log can be written.
    pub delivery_log: common::line_log::LineLogWatch,
}

/// Binds the admin listener; serving starts with [`serve`].
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves admin requests until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, hyper::Error>(answer(&req, &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// GET and HEAD (hyper leaves the body out of a HEAD answer) serve a
/// page; any other method is a JSON 405.
fn answer<B>(req: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        let body = format!(
            r#"{{"error":{{"code":"method_not_allowed","message":"{} is not allowed here; admin pages answer GET (and HEAD)"}}}}"#,
            req.method()
        );
        let mut refusal = response(StatusCode::METHOD_NOT_ALLOWED, "application/json", body);
        refusal.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return refusal;
    }
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            state.metrics.set_redis_writable(!state.queue.refusing_writes());
            state.metrics.set_delivery_log_writable(state.delivery_log.writable());
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.encode(),
            )
        }
        "/health" => {
            // Redis refusing writes stops deliveries as surely as its
            // absence: nothing can be taken or settled. A delivery log that
            // cannot be written stops the taking too.
            let (answers, writes) = (!state.queue.is_down(), !state.queue.refusing_writes());
            let log_writable = state.delivery_log.writable();
            let up = answers && writes && log_writable;
            let body = serde_json::json!({
                "status": if up { "ok" } else { "unavailable" },
                "redis": if answers { "up" } else { "down" },
                "writes": if writes { "accepted" } else { "refused" },
                "delivery_log": if log_writable { "writable" } else { "failing" },
                // Why Redis cannot be used (a TLS certificate refused, say).
                "error": state.queue.failure(),
                "worker": state.worker,
                "in_flight": state.metrics.in_flight(),
            });
            let status = if up {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "application/json", body.to_string())
        }
        "/stats" => {
            let (delivered, retry, dead) = state.metrics.totals();
            let body = serde_json::json!({
                "delivered": delivered,
                "retry": retry,
                "dead": dead,
                "in_flight": state.metrics.in_flight(),
            });
            (StatusCode::OK, "application/json", body.to_string())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"code":"not_found","message":"admin pages: /metrics, /health, /stats"}}"#.to_string(),
        ),
    };
    response(status, content_type, body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
