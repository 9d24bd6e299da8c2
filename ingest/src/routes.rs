//! HTTP handlers: the ingest endpoint and its aliases, health, and the JSON
//! answers for unknown routes and methods.

use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::request;
use crate::startup::AppState;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes_buf::read_body;
use serde_json::json;

/// `POST /ingest` (also `/ingest.php` and `/i`): validate, queue one job per
/// data item in one round trip, answer 202 with the job ids.
pub async fn ingest(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let request_id = req.extensions().get::<RequestId>().map(|id| id.0.clone());
    let accepted = request::parse(&body, state.max_items, request_id.as_deref())?;
    state.backlog.check()?;

    let (keys, jobs) = (&state.keys, &accepted.jobs);
    let asked_at = std::time::Instant::now();
    let depth = state
        .redis("push", |mut conn| async move {
            common::queue::push(&mut conn, keys, jobs).await
        })
        .await
        .map_err(ApiError::QueueUnavailable)?;
    state.backlog.observe(depth, asked_at);
    state.metrics.accepted(accepted.ids.len());
    // Ids are UUIDs (no characters to escape): the answer is written as it is.
    let mut body = String::with_capacity(32 + accepted.ids.len() * 39);
    body.push_str("{\"accepted\":");
    body.push_str(&accepted.ids.len().to_string());
    body.push_str(",\"ids\":[");
    for (i, id) in accepted.ids.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(id);
        body.push('"');
    }
    body.push_str("]}");
    let mut response = HttpResponse::Accepted().content_type("application/json").body(body);
    response.extensions_mut().insert(Accepted(accepted.ids.len()));
    Ok(response)
}

/// The request's id: the caller's (or nginx's) `X-Request-Id` if it is a
/// sane token (printable ASCII, at most 128 bytes), otherwise a new one.
/// Stored in each job and printed in every log line about it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id for `req`.
    pub fn of(req: &actix_web::dev::ServiceRequest) -> RequestId {
        let given = req.headers().get("x-request-id").and_then(|v| v.to_str().ok());
        match given {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => {
                RequestId(v.to_string())
            }
            _ => RequestId(uuid::Uuid::now_v7().simple().to_string()),
        }
    }
}

/// How many jobs a response accepted, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Accepted(pub usize);

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}

/// Query of `GET /stats`.
#[derive(Debug, serde::Deserialize)]
pub struct StatsQuery {
    /// Window length in seconds (1 to 3600, default 3600).
    seconds: Option<u64>,
    /// Seconds per point (1 to 600, default 10).
    step: Option<u64>,
}

/// `GET /stats`: cluster-wide delivery statistics from Redis, with the
/// current queue depths.
pub async fn stats(query: web::Query<StatsQuery>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let seconds = query.seconds.unwrap_or(3600);
    let step = query.step.unwrap_or(10);
    if !(1..=3600).contains(&seconds) || !(1..=600).contains(&step) {
        return Err(ApiError::invalid(
            "invalid_query",
            "`seconds` must be 1 to 3600 and `step` 1 to 600",
        ));
    }
    let keys = &state.keys;
    let (depths, window) = state
        .redis("stats", |mut conn| async move {
            let depths = common::queue::depths(&mut conn, keys).await?;
            let until = common::now_ms() / 1000;
            let window = common::stats::read(&mut conn, keys, until, seconds, step, 20).await?;
            Ok((depths, window))
        })
        .await
        .map_err(ApiError::QueueUnavailable)?;
    Ok(HttpResponse::Ok().json(json!({"queue": depths, "window": window})))
}

/// `GET /dashboard`: one self-contained page (no external resources) that
/// charts `/stats` and refreshes itself.
pub async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
        ))
        .body(include_str!("dashboard.html"))
}

/// `GET /health`: 200 when Redis answers a PING in time, 503 otherwise.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let ping = state
        .redis("health", |mut conn| async move {
            deadpool_redis::redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
        })
        .await;
    match ping {
        Ok(_) => HttpResponse::Ok().json(json!({"status": "ok", "redis": "up"})),
        Err(e) => unhealthy(e),
    }
}

fn unhealthy(error: String) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
        .json(json!({"status": "unavailable", "redis": "down", "error": error}))
}

/// Any method but POST on an ingest route.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
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
    //! refused with our JSON 413 before it is buffered.

    use crate::error::ApiError;
    use actix_web::{web, HttpRequest};
    use futures_util::StreamExt;

    pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::invalid("unreadable_body", format!("could not read the request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
