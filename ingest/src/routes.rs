//! The routes, listed once in [`ROUTES`] (for the app, the metrics' route
//! label and `--help`), and their handlers: the ingest endpoint and its
//! aliases, and the JSON answers for unknown routes and methods. The
//! operator's pages are [`crate::pages`].

use crate::error::ApiError;
use crate::middleware::{Accepted, RequestId};
use crate::pages;
use crate::request;
use crate::startup::AppState;
use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::header;
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes_buf::read_body;
use common::queue::IdempotentPush;

/// What a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `POST`: queue postbacks.
    Ingest,
    /// `GET`: whether Redis answers.
    Health,
    /// `GET`: Prometheus text.
    Metrics,
    /// `GET`: delivery statistics as JSON.
    Stats,
    /// `GET`: the dashboard page.
    Dashboard,
}

impl Page {
    /// The metrics' `route` label: one of a fixed set, never a path.
    pub fn label(self) -> &'static str {
        match self {
            Page::Ingest => "ingest",
            Page::Health => "health",
            Page::Metrics => "metrics",
            Page::Stats => "stats",
            Page::Dashboard => "dashboard",
        }
    }
}

/// Every route: its path and what it serves. The aliases of `/ingest` keep
/// clients of the old PHP endpoint working.
pub const ROUTES: &[(&str, Page)] = &[
    ("/ingest", Page::Ingest),
    ("/ingest.php", Page::Ingest),
    ("/i", Page::Ingest),
    ("/health", Page::Health),
    ("/metrics", Page::Metrics),
    ("/stats", Page::Stats),
    ("/dashboard", Page::Dashboard),
];

/// The metrics' route label of a path (`other` for unknown paths).
pub fn route_of(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|(p, _)| *p == path)
        .map_or("other", |(_, page)| page.label())
}

/// The routes for `--help`, one line.
pub fn help_line() -> String {
    let paths = |ingest: bool| {
        ROUTES
            .iter()
            .filter(|(_, page)| (*page == Page::Ingest) == ingest)
            .map(|(path, _)| *path)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("Routes: POST {}; GET {}", paths(true), paths(false))
}

/// Adds every route of [`ROUTES`] to `app`, and the JSON 404 for the rest.
/// One resource per path: static paths match without a regex.
pub fn register<T>(app: App<T>) -> App<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    ROUTES
        .iter()
        .fold(app, |app, (path, page)| match page {
            // Any method but POST gets 405.
            Page::Ingest => app.service(
                web::resource(*path)
                    .route(web::post().to(ingest))
                    .default_service(web::to(method_not_allowed)),
            ),
            Page::Health => app.service(get_page(path, pages::health)),
            Page::Metrics => app.service(get_page(path, pages::metrics)),
            Page::Stats => app.service(get_page(path, pages::stats)),
            Page::Dashboard => app.service(get_page(path, pages::dashboard)),
        })
        .default_service(web::to(not_found))
}

/// A page's resource: GET, and HEAD as GET without the body (actix leaves
/// the body out of a HEAD answer and keeps its headers), which monitors
/// use to probe; any other method gets a JSON 405.
fn get_page<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|req: HttpRequest| async move {
            ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow: "GET, HEAD",
            }
            .error_response()
        }))
}

/// `POST /ingest` (also `/ingest.php` and `/i`): validate, queue one job per
/// data item in one round trip, answer 202 with the job ids.
pub async fn ingest(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Who is asking comes first: nothing of an unknown producer is read.
    let producer = state.producers.authorize(req.headers(), &state.last_key)?;
    if let Some(producer) = &producer {
        req.extensions_mut().insert(producer.clone());
        if let Some(limit) = producer.rate {
            let second = common::now_ms() / 1000;
            if state.queue.count_producer_request(&producer.id, second).await? > u64::from(limit) {
                return Err(ApiError::RateLimited { limit });
            }
        }
    }
    let body = read_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let request_id = req.extensions().get::<RequestId>().map(|id| id.0.clone());
    let accepted = request::parse(
        &body,
        state.max_items,
        request_id.as_deref(),
        producer.as_ref().map(|p| &*p.id),
        &state.urls,
    )?;
    state.backlog.check()?;
    let idempotency_key = idempotency_key(&req)?;

    // Ids are UUIDs (no characters to escape): the answer is written as it is.
    let mut answer = String::with_capacity(32 + accepted.ids.len() * 39);
    answer.push_str("{\"accepted\":");
    answer.push_str(&accepted.ids.len().to_string());
    answer.push_str(",\"ids\":[");
    for (i, id) in accepted.ids.iter().enumerate() {
        if i > 0 {
            answer.push(',');
        }
        answer.push('"');
        answer.push_str(id);
        answer.push('"');
    }
    answer.push_str("]}");

    let asked_at = std::time::Instant::now();
    let depth = match idempotency_key {
        None => state.queue.push(&accepted.jobs).await?,
        Some(key) => {
            // The record: what the body was, and what it was answered.
            let body_hash = common::producer::sha256_hex(&body);
            let record = format!("{body_hash}\n{answer}");
            let scope = producer.as_ref().map_or("-", |p| &*p.id);
            let key_hash = common::producer::sha256_hex(key.as_bytes());
            match state
                .queue
                .push_idempotent(scope, &key_hash, &record, state.idempotency_ttl, &accepted.jobs)
                .await?
            {
                IdempotentPush::Pushed(depth) => depth,
                IdempotentPush::Existed(kept) => return replay(&kept, &body_hash),
            }
        }
    };
    // The push answers its shard's length; round robin keeps the shards
    // about even, so that times the shards estimates the whole.
    state.backlog.observe(depth * state.queue.shards() as u64, asked_at);
    state.metrics.accepted(accepted.ids.len());
    let body = answer;
    let mut response = HttpResponse::Accepted().content_type("application/json").body(body);
    response.extensions_mut().insert(Accepted(accepted.ids.len()));
    Ok(response)
}

/// The longest `Idempotency-Key` accepted.
const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The request's `Idempotency-Key`, if it has one: 1 to 255 printable
/// ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    const IDEMPOTENCY_KEY: header::HeaderName = header::HeaderName::from_static("idempotency-key");
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= IDEMPOTENCY_KEY_MAX
                && key.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
        {
            Ok(Some(key))
        }
        _ => Err(ApiError::invalid(
            "invalid_idempotency_key",
            format!("`Idempotency-Key` must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"),
        )),
    }
}

/// The answer to a repeat of an idempotent request: the first answer again
/// if the body is the same, 422 if the key was used for another body.
fn replay(kept: &str, body_hash: &str) -> Result<HttpResponse, ApiError> {
    match kept.split_once('\n') {
        Some((hash, answer)) if hash == body_hash => {
            let mut response = HttpResponse::Accepted()
                .content_type("application/json")
                .insert_header(("idempotent-replayed", "true"))
                .body(answer.to_string());
            // Nothing new was queued.
            response.extensions_mut().insert(Accepted(0));
            Ok(response)
        }
        _ => Err(ApiError::IdempotencyKeyReused),
    }
}

/// Any method but POST on an ingest route.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        allow: "POST",
    }
    .error_response()
}

/// Any unknown path.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound {
        path: req.path().to_string(),
    }
    .error_response()
}

mod bytes_buf {
    //! Reading the body with a hard size limit, so an oversized request is
    //! refused with our JSON 413 before it is buffered, and a deadline for
    //! the whole of it, so a client that trickles its body (a byte every
    //! few seconds stays under every timeout between reads) is cut off
    //! with a JSON 408 (nginx streams the body to ingest for this). The
    //! deadline costs nothing on the usual path: a per-request timer was
    //! measured at ~600 instructions of ingest's ~76,000 per request.

    use crate::error::ApiError;
    use actix_web::{web, HttpRequest};
    use futures_util::StreamExt;
    use std::time::Duration;

    /// What a body of unknown length is first given room for.
    const UNDECLARED_BODY_GUESS: usize = 1024;

    pub async fn read_body(
        req: &HttpRequest,
        mut payload: web::Payload,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(UNDECLARED_BODY_GUESS).min(limit));
        // The deadline is checked as each piece arrives, from the second
        // on: no clock and no timer for a body that comes in one piece, as
        // nearly all do. A trickle is cut at its first piece past the
        // deadline; a pause between pieces is nginx's to cut
        // (client_body_timeout).
        let mut first_piece_at = None;
        while let Some(chunk) = payload.next().await {
            append(&mut body, chunk, limit)?;
            // A body of a declared length is complete at that length; the
            // stream's end would only come on another poll.
            if declared == Some(body.len()) {
                break;
            }
            let since = *first_piece_at.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > timeout {
                return Err(ApiError::BodyTimeout { timeout });
            }
        }
        Ok(body)
    }

    fn append(
        body: &mut Vec<u8>,
        chunk: Result<actix_web::web::Bytes, actix_web::error::PayloadError>,
        limit: usize,
    ) -> Result<(), ApiError> {
        let chunk =
            chunk.map_err(|e| ApiError::invalid("unreadable_body", format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
        Ok(())
    }
}
