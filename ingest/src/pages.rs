//! The operator's pages: `/health` (for load balancers and monitors),
//! `/metrics` (Prometheus text), `/stats` (delivery statistics as JSON) and
//! `/dashboard` (one self-contained page charting `/stats`). Each answers
//! GET and HEAD ([`crate::routes::ROUTES`] lists them).

use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::startup::AppState;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.set_redis_writable(!state.queue.refusing_writes());
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}

/// How many destinations `/stats` shows at most: those held, disabled
/// or limited, then the most recently attempted.
const STATS_DESTINATIONS: usize = 20;

/// How many of the latest failed attempts `/stats` shows.
const STATS_FAILURES: usize = 20;
/// `/stats` windows: at most an hour (the statistics' retention) ...
const STATS_SECONDS_MAX: u64 = 3600;
/// ... in points of at most ten minutes, ten seconds by default.
const STATS_STEP_MAX: u64 = 600;
const STATS_STEP_DEFAULT: u64 = 10;

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
pub async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Parsed here, not by actix's extractor, whose refusal is plain text.
    let query = web::Query::<StatsQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::invalid(
            "invalid_query",
            format!("{e}; `seconds` and `step` are whole numbers, e.g. /stats?seconds=300&step=60"),
        )
    })?;
    let seconds = query.seconds.unwrap_or(STATS_SECONDS_MAX);
    let step = query.step.unwrap_or(STATS_STEP_DEFAULT);
    if !(1..=STATS_SECONDS_MAX).contains(&seconds) || !(1..=STATS_STEP_MAX).contains(&step) {
        return Err(ApiError::invalid(
            "invalid_query",
            format!("`seconds` must be 1 to {STATS_SECONDS_MAX} and `step` 1 to {STATS_STEP_MAX}"),
        ));
    }
    let depths = state.queue.depths().await?;
    let until = common::now_ms() / 1000;
    let window = state.queue.stats_window(until, seconds, step, STATS_FAILURES).await?;
    // As this process's last write found it: the statistics are reads,
    // which Redis serves while it refuses writes.
    let writes = if state.queue.refusing_writes() {
        "refused"
    } else {
        "accepted"
    };
    let destinations = destinations(&state.queue).await?;
    Ok(HttpResponse::Ok().json(json!({
        "queue": depths,
        "window": window,
        "redis_writes": writes,
        "destinations": destinations,
    })))
}

/// The destinations for `/stats`: every one held, disabled or limited,
/// then the most recently attempted, each with its state and its figures
/// of the last five minutes (`common::queue::destinations::RECENT`).
async fn destinations(queue: &common::queue::Queue) -> Result<Vec<serde_json::Value>, ApiError> {
    let snapshot = queue.destinations().await?;
    let activity = queue.destination_activity(STATS_DESTINATIONS).await?;
    let mut hosts: Vec<&str> = snapshot.states.iter().map(|(h, _)| h.as_str()).collect();
    hosts.extend(snapshot.policies.iter().map(|(h, _)| h.as_str()));
    hosts.extend(activity.iter().map(|a| a.destination.as_str()));
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert(*h));
    hosts.truncate(STATS_DESTINATIONS);
    Ok(hosts
        .into_iter()
        .map(|host| {
            let state = snapshot.states.iter().find(|(h, _)| h == host).map(|(_, s)| s);
            let limits = snapshot
                .policies
                .iter()
                .find(|(h, _)| h == host)
                .map(|(_, p)| p.shown());
            let figures = activity
                .iter()
                .find(|a| a.destination == host)
                .cloned()
                .unwrap_or_default();
            json!({
                "destination": host,
                "state": state.map_or("closed", |s| s.name()),
                "since_ms": state.map(|s| s.since()),
                "limits": limits,
                "attempts": figures.attempts,
                "delivered": figures.delivered,
                "failed": figures.failed,
                "p99_ms": figures.p99_ms,
            })
        })
        .collect())
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
/// With `INGEST_AUTH=keys` it is 503 also until the producer keys have
/// been read once: until then no request could be accepted.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let ping = state.queue.ping().await;
    let keys = state.producers.state();
    let writes = if state.queue.refusing_writes() {
        "refused"
    } else {
        "accepted"
    };
    match ping {
        Ok(_) if keys == "loading" => unhealthy("up", writes, keys, "the producer keys have not been read yet".into()),
        Ok(_) if writes == "refused" => unhealthy(
            "up",
            writes,
            keys,
            "redis answers but refuses writes (a full disk? see RUNBOOK): nothing can be queued".into(),
        ),
        Ok(_) => HttpResponse::Ok().json(json!({"status": "ok", "redis": "up", "writes": writes, "keys": keys})),
        Err(e) => unhealthy("down", writes, keys, e.to_string()),
    }
}

fn unhealthy(redis: &str, writes: &str, keys: &str, error: String) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
        .json(json!({"status": "unavailable", "redis": redis, "writes": writes, "keys": keys, "error": error}))
}
