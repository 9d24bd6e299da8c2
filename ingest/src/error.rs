//! The one error type of ingest's HTTP boundary. Every variant becomes a
//! status code and a JSON body `{"error": {"code": "...", "message": "..."}}`
//! that says what is wrong and what to do.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use common::queue::QueueError;
use serde_json::json;

/// Seconds a client is asked to wait before trying again after a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Why a request was not accepted. Nothing is queued when any of these is
/// returned, but for [`ApiError::NotReplicated`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not a valid postback request; `code` names the rule.
    #[error("{message}")]
    Invalid {
        /// Machine-readable rule name, e.g. `invalid_url`.
        code: &'static str,
        /// Human-readable explanation naming the field.
        message: String,
    },
    /// The body is larger than `INGEST_MAX_BODY_BYTES`.
    #[error("request body is larger than the limit of {limit} bytes; split the data into several requests")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive within `INGEST_BODY_TIMEOUT_MS`.
    #[error("the request body did not arrive within {} ms; send the whole request at once", timeout.as_millis())]
    BodyTimeout {
        /// The limit.
        timeout: std::time::Duration,
    },
    /// `data` has more items than `INGEST_MAX_ITEMS`.
    #[error("`data` has {count} items, more than the limit of {limit}; split it into several requests")]
    TooManyItems {
        /// Items sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Redis could not be reached, did not answer in time, or answered as
    /// something other than the queue's master.
    #[error("the queue is unavailable right now ({0}); nothing was queued, retry later")]
    QueueUnavailable(QueueError),
    /// Redis is out of memory and refused the jobs.
    #[error(
        "the queue's Redis is full ({0}); nothing was queued, retry later (operators: see RUNBOOK, \"Redis is full\")"
    )]
    RedisFull(QueueError),
    /// Redis refused the write because fewer replicas than its
    /// `min-replicas-to-write` are in reach: nothing was written.
    #[error("the queue's Redis has fewer replicas in reach than it must write to (min-replicas-to-write) ({0}); nothing was queued, retry later")]
    ReplicasUnavailable(QueueError),
    /// The jobs were queued on the master, but fewer replicas than
    /// `INGEST_REPLICA_ACKS` hold them in time: a failover now could lose
    /// them, and they may as well be delivered.
    #[error("the jobs were queued but fewer Redis replicas than required hold them ({0}); they may still be delivered. Retry with the same Idempotency-Key header so that a retry cannot queue them twice")]
    NotReplicated(QueueError),
    /// The queue is over `INGEST_MAX_QUEUE`.
    #[error("the queue holds {depth} jobs, more than its limit of {limit}; nothing was queued, retry later")]
    QueueFull {
        /// Ready jobs last seen.
        depth: u64,
        /// The limit.
        limit: u64,
    },
    /// No producer key in the request (`INGEST_AUTH=keys`).
    #[error("this route needs a producer key: send `Authorization: Bearer <key>` or `X-Api-Key: <key>` (keys are made with `ingest keys create NAME`)")]
    MissingKey,
    /// A key that is not one of the store's, or that was revoked.
    #[error("the producer key is not valid (unknown or revoked); ask the operator for a valid key")]
    InvalidKey,
    /// This process has not read the key store yet (just started, or Redis
    /// has been away since it started).
    #[error("the producer keys could not be read from Redis yet; nothing was queued, retry later")]
    KeysNotLoaded,
    /// The key is over its requests-per-second limit.
    #[error(
        "the producer key is over its limit of {limit} requests a second; nothing was queued, retry after a second"
    )]
    RateLimited {
        /// The key's limit.
        limit: u32,
    },
    /// The Idempotency-Key was used before with another body.
    #[error("this Idempotency-Key was used before for a different request body; nothing was queued. Use a new key for a new request")]
    IdempotencyKeyReused,
    /// A method the route does not serve: anything but POST on an ingest
    /// route, anything but GET and HEAD on a page.
    #[error("{method} is not allowed here; {}", if *allow == "POST" {
        "send POST with the JSON request as body"
    } else {
        "this page answers GET (and HEAD)"
    })]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods the route serves, as the `Allow` header says them.
        allow: &'static str,
    },
    /// No such route.
    #[error("no such route: {path}; post postbacks to /ingest")]
    NotFound {
        /// The path asked for.
        path: String,
    },
}

impl ApiError {
    /// Shorthand for [`ApiError::Invalid`].
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid { code, .. } => code,
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::TooManyItems { .. } => "too_many_items",
            ApiError::QueueUnavailable(_) => "queue_unavailable",
            ApiError::RedisFull(_) => "redis_full",
            ApiError::ReplicasUnavailable(_) => "replicas_unavailable",
            ApiError::NotReplicated(_) => "not_replicated",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::MissingKey => "missing_key",
            ApiError::InvalidKey => "invalid_key",
            ApiError::KeysNotLoaded => "queue_unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::NotFound { .. } => "not_found",
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::OutOfMemory(_) => ApiError::RedisFull(error),
            QueueError::NotReplicated { .. } => ApiError::NotReplicated(error),
            _ if error.is_too_few_replicas() => ApiError::ReplicasUnavailable(error),
            _ => ApiError::QueueUnavailable(error),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyItems { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueUnavailable(_)
            | ApiError::RedisFull(_)
            | ApiError::ReplicasUnavailable(_)
            | ApiError::NotReplicated(_)
            | ApiError::QueueFull { .. }
            | ApiError::KeysNotLoaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MissingKey | ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::QueueUnavailable(_)
            | ApiError::RedisFull(_)
            | ApiError::ReplicasUnavailable(_)
            | ApiError::NotReplicated(_)
            | ApiError::QueueFull { .. }
            | ApiError::KeysNotLoaded => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
            }
            ApiError::RateLimited { .. } => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::MissingKey | ApiError::InvalidKey => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"postback\""));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, *allow));
            }
            _ => {}
        }
        response.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}
