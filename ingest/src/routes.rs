//! HTTP handlers: the ingest endpoint and its aliases, health, and the JSON
//! answers for unknown routes and methods.

use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::request;
use crate::startup::AppState;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
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
    let request_id = request_id(&req);
    let accepted = request::parse(&body, state.max_items, request_id)?;
    state.backlog.check()?;

    let push = async {
        let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
        common::queue::push(&mut *conn, &state.keys, &accepted.jobs)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(state.redis_timeout, push).await {
        Ok(Ok(depth)) => {
            state.outage.succeeded();
            state.backlog.observe(depth);
        }
        Ok(Err(e)) => {
            state.outage.failed("push", &e);
            return Err(ApiError::QueueUnavailable(e));
        }
        Err(_) => {
            let e = format!("no answer within {} ms", state.redis_timeout.as_millis());
            state.outage.failed("push", &e);
            return Err(ApiError::QueueUnavailable(e));
        }
    }
    Ok(HttpResponse::Accepted().json(json!({"accepted": accepted.ids.len(), "ids": accepted.ids})))
}

/// The caller's `X-Request-Id`, if it is a sane token (printable ASCII, at
/// most 128 bytes); anything else is ignored rather than logged.
fn request_id(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("x-request-id")?.to_str().ok()?;
    let sane = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    sane.then_some(value)
}

/// `GET /health`: 200 when Redis answers a PING in time, 503 otherwise.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let ping = async {
        let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(&mut *conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(state.redis_timeout, ping).await {
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({"status": "ok", "redis": "up"})),
        Ok(Err(e)) => unhealthy(e),
        Err(_) => unhealthy(format!("no answer within {} ms", state.redis_timeout.as_millis())),
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
