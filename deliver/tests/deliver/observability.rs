//! What an operator sees: Prometheus metrics of both services, cluster-wide
//! statistics in Redis, the dashboard in a real headless Chromium, and the
//! request id that traces a postback through the logs.

use crate::support::{fast_env, field, metric, refuse_writes, spawn_ingest, Deliver};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{get, http, post, wait_until, RedisServer, Reply, Sink};

const LIMIT: Duration = Duration::from_secs(60);

/// A sink answering by the `kind` query parameter: `ok` 200; `flaky` 500
/// once per id then 200; `gone` 404.
fn by_kind() -> testkit::Responder {
    let seen = Mutex::new(HashMap::<String, u32>::new());
    Arc::new(move |r, _| match r.query_param("kind") {
        Some("flaky") => {
            let id = r.query_param("id").unwrap_or("").to_string();
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(id).or_default();
            *n += 1;
            Reply::status(if *n == 1 { 500 } else { 200 })
        }
        Some("gone") => Reply {
            body: "no such campaign".into(),
            ..Reply::status(404)
        },
        _ => Reply::status(200),
    })
}

async fn post_kind(ingest: &str, sink: &Sink, kind: &str, n: usize) {
    let data: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("{kind}{i}"), "kind": kind}))
        .collect();
    let body = json!({"endpoint": {"method": "GET", "url": sink.url("/cb?kind={kind}&id={id}")}, "data": data});
    let response = testkit::post(&format!("{ingest}/ingest"), body.to_string()).await;
    assert_eq!(response.status, 202, "{}", response.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_stats_match_a_load_of_successes_retries_and_dead_letters() {
    let redis = RedisServer::start();
    let sink = Sink::start(by_kind()).await;
    let ingest = spawn_ingest(&redis, &[]);
    let mut env = fast_env(&redis);
    // The counts are exact: no worker may be presumed dead (and its jobs
    // tried again) because a loaded machine stalled it for half a second.
    crate::support::set(&mut env, "DELIVER_HEARTBEAT_TTL_MS", "5000");
    let a = Deliver::start(&env);
    let b = Deliver::start(&env);
    let (ok, flaky, gone) = (300, 40, 25);
    post_kind(&ingest, &sink, "ok", ok).await;
    post_kind(&ingest, &sink, "flaky", flaky).await;
    post_kind(&ingest, &sink, "gone", gone).await;
    sink.wait_for(ok + 2 * flaky + gone, LIMIT).await;

    let deliver_sum = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let (a, b) = (&a, &b);
        async move { a.metric(name, labels).await + b.metric(name, labels).await }
    };
    wait_until(LIMIT, "every attempt counted", || async {
        deliver_sum("postback_deliver_attempts_total", &[]).await == (ok + 2 * flaky + gone) as f64
    })
    .await;
    assert_eq!(
        deliver_sum("postback_deliver_attempts_total", &[("outcome", "delivered")]).await,
        (ok + flaky) as f64
    );
    assert_eq!(
        deliver_sum(
            "postback_deliver_attempts_total",
            &[("outcome", "retry"), ("status_class", "5xx")]
        )
        .await,
        flaky as f64
    );
    assert_eq!(
        deliver_sum(
            "postback_deliver_attempts_total",
            &[("outcome", "dead"), ("status_class", "4xx")]
        )
        .await,
        gone as f64
    );
    assert_eq!(
        deliver_sum("postback_deliver_retries_scheduled_total", &[]).await,
        flaky as f64
    );
    assert_eq!(
        deliver_sum("postback_deliver_dead_letters_total", &[("reason", "final_status")]).await,
        gone as f64
    );
    assert_eq!(
        deliver_sum("postback_deliver_response_seconds_count", &[]).await,
        (ok + 2 * flaky + gone) as f64
    );
    assert_eq!(
        deliver_sum("postback_deliver_end_to_end_seconds_count", &[]).await,
        (ok + flaky + gone) as f64
    );
    let admin = get(&format!("{}/health", a.admin_url().expect("admin address logged"))).await;
    assert_eq!((admin.status, admin.json()["redis"].clone()), (200, json!("up")));
    // HEAD is GET without the body (monitors probe with it); nothing else.
    for page in ["/metrics", "/health", "/stats"] {
        let url = format!("{}{page}", a.admin_url().unwrap());
        let head = http("HEAD", &url, &[], "").await;
        assert_eq!(head.status, 200, "HEAD {page}");
        assert!(head.body.is_empty(), "HEAD {page} has a body");
        let refused = http("POST", &url, &[], "").await;
        assert_eq!(
            (refused.status, refused.header("allow")),
            (405, Some("GET, HEAD")),
            "POST {page}"
        );
        assert_eq!(refused.json()["error"]["code"], "method_not_allowed");
    }

    let ingest_metrics = get(&format!("{ingest}/metrics")).await.body;
    assert_eq!(
        metric(&ingest_metrics, "postback_ingest_postbacks_accepted_total", &[]),
        (ok + flaky + gone) as f64
    );
    assert_eq!(
        metric(
            &ingest_metrics,
            "postback_ingest_requests_total",
            &[("route", "ingest"), ("status", "202")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &ingest_metrics,
            "postback_ingest_request_duration_seconds_count",
            &[("route", "ingest")]
        ),
        3.0
    );

    // The same counts, cluster-wide, from Redis (flushed once a second).
    wait_until(LIMIT, "/stats to show every attempt", || async {
        let stats = get(&format!("{ingest}/stats")).await.json();
        stats["window"]["totals"]["delivered"] == json!(ok + flaky)
            && stats["window"]["totals"]["retry"] == json!(flaky)
            && stats["window"]["totals"]["dead"] == json!(gone)
    })
    .await;
    let stats = get(&format!("{ingest}/stats?seconds=120&step=10")).await.json();
    assert_eq!(stats["queue"]["dead"], json!(gone));
    assert_eq!(stats["queue"]["parked"], json!(0));
    assert_eq!(stats["window"]["series"].as_array().unwrap().len(), 12);
    let failures = stats["window"]["failures"].as_array().unwrap();
    assert!(!failures.is_empty());
    for failure in failures {
        assert_eq!(failure["host"], json!(sink.url("").trim_start_matches("http://")));
        assert_eq!(failure["method"], "GET");
        match failure["status"].as_str() {
            Some("404") => assert_eq!(failure["body"], "no such campaign"),
            Some("500") => assert_eq!(failure["body"], "status 500"),
            other => panic!("unexpected failure status {other:?}"),
        }
    }
    assert!(stats["window"]["totals"]["p99_ms"].as_u64().is_some());
    wait_until(LIMIT, "the queue gauge on ingest", || async {
        metric(
            &get(&format!("{ingest}/metrics")).await.body,
            "postback_ingest_queue_jobs",
            &[("state", "dead")],
        ) == gone as f64
    })
    .await;

    // Each destination's last five minutes, over both processes: the
    // flaky jobs' first answers were the partner's failures.
    let host = sink.url("").trim_start_matches("http://").to_string();
    wait_until(LIMIT, "the sink's destination figures in /stats", || async {
        let stats = get(&format!("{ingest}/stats?seconds=60")).await.json();
        let mut shown = stats["destinations"][0].clone();
        let p99 = shown.as_object_mut().and_then(|o| o.remove("p99_ms"));
        p99.is_some_and(|p| p.as_u64().is_some())
            && shown
                == json!({
                    "destination": host, "state": "closed", "since_ms": null, "limits": null,
                    "attempts": ok + 2 * flaky + gone, "delivered": ok + flaky, "failed": flaky,
                })
    })
    .await;

    dashboard_in_chromium(&ingest, ok + flaky).await;
}

/// Runs headless Chromium (Debian's package) on `url` with `extra` flags,
/// with the flags that keep it off the network and a fresh profile.
async fn chromium(url: String, extra: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let profile = testkit::TempDir::new("chromium");
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .args([
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1366,900",
                "--hide-scrollbars",
            ])
            .arg("--virtual-time-budget=8000")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium must be installed (scripts/test installs the chromium package)")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_without_an_answer_are_counted_apart_and_out_of_the_percentiles() {
    let redis = RedisServer::start();
    let ingest = spawn_ingest(&redis, &[]);
    let _deliver = Deliver::start(&fast_env(&redis));
    // A port nothing listens on: every attempt is a refused connection.
    let closed = testkit::free_port();
    let body = json!({"endpoint": {"method": "GET", "url": format!("http://127.0.0.1:{closed}/x")}, "data": [{}]});
    assert_eq!(post(&format!("{ingest}/ingest"), body.to_string()).await.status, 202);
    // fast_env: two retries, so three attempts, the last one dead.
    wait_until(LIMIT, "three unanswered attempts in /stats", || async {
        get(&format!("{ingest}/stats")).await.json()["window"]["totals"]["transport"] == json!(3)
    })
    .await;
    let totals = get(&format!("{ingest}/stats")).await.json()["window"]["totals"].clone();
    assert_eq!((totals["retry"].clone(), totals["dead"].clone()), (json!(2), json!(1)));
    assert_eq!(totals["p99_ms"], json!(null), "no answer, no response time: {totals}");
}

/// Whether `text` reads as a UUID (job ids are UUIDv7).
fn is_uuid(text: &str) -> bool {
    text.bytes().enumerate().all(|(i, b)| {
        if matches!(i, 8 | 13 | 18 | 23) {
            b == b'-'
        } else {
            b.is_ascii_hexdigit()
        }
    })
}

/// Loads the dashboard in headless Chromium: no console error, no failed
/// request, the totals of the load shown, and a screenshot in target/.
async fn dashboard_in_chromium(ingest: &str, delivered: usize) {
    let url = format!("{ingest}/dashboard");
    let dom = chromium(url.clone(), vec!["--dump-dom".into()]).await;
    let html = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(
        html.contains(r#"data-state="ok""#),
        "the dashboard did not load its statistics:\n{html}\n{log}"
    );
    assert!(
        html.contains(&format!(r#"data-delivered="{delivered}""#)),
        "the dashboard does not show {delivered} deliveries:\n{html}"
    );
    assert!(
        html.contains(r#"id="t-parked">0<"#),
        "the dashboard does not show the parked jobs:\n{html}"
    );
    assert!(
        html.contains(r#"data-destinations="1""#)
            && html.contains(&format!(r#"data-delivered="{delivered}"><td class="dest">"#)),
        "the destinations table does not show the sink's {delivered} deliveries:\n{html}"
    );
    // Each failure names its job, for `deliver job ID`.
    let id_cell = html.find(r#"<td class="id">"#).map(|at| &html[at + 15..]);
    assert!(
        id_cell.is_some_and(|cell| cell.get(..36).is_some_and(is_uuid)),
        "the failures table shows no job id:\n{html}"
    );
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Failed to load resource") || l.contains("Uncaught"))
        .collect();
    assert!(console_errors.is_empty(), "console errors: {console_errors:#?}");

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let taken = chromium(url, vec![format!("--screenshot={}", shot.display())]).await;
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    assert!(
        std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false),
        "no screenshot at {shot:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_is_in_the_delivery_log_of_each_of_its_jobs() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let ingest = spawn_ingest(&redis, &[]);
    let deliver = Deliver::start(&fast_env(&redis));
    let body =
        json!({"endpoint": {"method": "GET", "url": sink.url("/r?n={n}")}, "data": [{"n": 1}, {"n": 2}, {"n": 3}]});
    let response = http(
        "POST",
        &format!("{ingest}/ingest"),
        &[("x-request-id", "trace-me-123")],
        body.to_string(),
    )
    .await;
    assert_eq!(response.status, 202);
    assert_eq!(response.header("x-request-id"), Some("trace-me-123"));
    let ids: Vec<String> = serde_json::from_value(response.json()["ids"].clone()).unwrap();
    wait_until(LIMIT, "three log lines", || async { deliver.log().len() >= 3 }).await;
    for id in ids {
        let line = deliver
            .log()
            .into_iter()
            .find(|l| field(l, "id").as_deref() == Some(id.as_str()))
            .unwrap();
        assert_eq!(field(&line, "request_id").as_deref(), Some("trace-me-123"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_answer_shows_as_a_point_with_its_exact_time_on_the_dashboard() {
    let redis = RedisServer::start();
    let sink = Sink::start(Arc::new(|_, _| Reply::status(200).after(Duration::from_millis(30)))).await;
    let ingest = spawn_ingest(&redis, &[]);
    let _deliver = Deliver::start(&fast_env(&redis));
    let body = json!({"endpoint": {"method": "GET", "url": sink.url("/one")}, "data": [{}]});
    assert_eq!(post(&format!("{ingest}/ingest"), body.to_string()).await.status, 202);
    wait_until(LIMIT, "the one answer in /stats", || async {
        get(&format!("{ingest}/stats")).await.json()["window"]["totals"]["delivered"] == json!(1)
    })
    .await;
    let totals = get(&format!("{ingest}/stats")).await.json()["window"]["totals"].clone();
    assert_eq!(totals["exact"], json!(true), "{totals}");
    let p99 = totals["p99_ms"].as_u64().expect("a p99 of one answer");
    assert!((30..1000).contains(&p99), "the sink answered after 30 ms: {totals}");
    assert_eq!(
        (totals["p50_ms"].as_u64(), totals["p90_ms"].as_u64()),
        (Some(p99), Some(p99))
    );

    let dom = chromium(format!("{ingest}/dashboard"), vec!["--dump-dom".into()]).await;
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains(r#"data-state="ok""#),
        "the dashboard did not load:\n{html}"
    );
    assert!(
        html.contains(&format!(r#"id="t-p99">{p99} ms<"#)),
        "the p99 tile does not show the exact {p99} ms:\n{html}"
    );
    // p50, p90 and p99 of the one point: three values drawn.
    let canvas = html
        .split("<canvas ")
        .find(|tag| tag.contains(r#"id="c-latency""#))
        .and_then(|tag| tag.split('>').next())
        .expect("the response-time chart");
    assert!(
        canvas.contains(r#"data-drawn="3""#),
        "the response-time chart draws nothing for one point: <canvas {canvas}>"
    );
}

/// Redis answering but refusing writes (a full disk's MISCONF; here
/// min-replicas-to-write with no replica) is named as such by both
/// services, in /health and /metrics and on the dashboard, and logged as a
/// refusal of writes,
/// not as an outage; its end is logged once writes go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_are_seen_in_health_metrics_the_dashboard_and_the_log() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let ingest = spawn_ingest(&redis, &[]);
    let deliver = Deliver::start(&fast_env(&redis));
    let body = json!({"endpoint": {"method": "GET", "url": sink.url("/w")}, "data": [{}]}).to_string();
    assert_eq!(post(&format!("{ingest}/ingest"), body.clone()).await.status, 202);
    sink.wait_for(1, LIMIT).await;
    wait_until(LIMIT, "deliver's admin address", || async {
        deliver.admin_url().is_some()
    })
    .await;
    let admin = deliver.admin_url().unwrap();
    let writable = |url: String, name: &'static str| async move { metric(&get(&url).await.body, name, &[]) };

    refuse_writes(&redis, true).await;
    // The refusal lasts 2 s: deliver's once-a-second statistics flush (a
    // pipeline, whose error redis-rs reports apart) is refused too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = post(&format!("{ingest}/ingest"), body.clone()).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    // NOREPLICAS is named as such: nothing was queued (a full disk's
    // MISCONF would be queue_unavailable).
    assert_eq!(refused.json()["error"]["code"], "replicas_unavailable");
    let health = get(&format!("{ingest}/health")).await;
    assert_eq!(
        (
            health.status,
            health.json()["redis"].clone(),
            health.json()["writes"].clone()
        ),
        (503, json!("up"), json!("refused"))
    );
    assert_eq!(
        writable(format!("{ingest}/metrics"), "postback_ingest_redis_writable").await,
        0.0
    );
    // deliver finds out at its next take or heartbeat.
    wait_until(LIMIT, "deliver's /health to name refused writes", || async {
        get(&format!("{admin}/health")).await.json()["writes"] == json!("refused")
    })
    .await;
    let health = get(&format!("{admin}/health")).await;
    assert_eq!((health.status, health.json()["redis"].clone()), (503, json!("up")));
    assert_eq!(
        writable(format!("{admin}/metrics"), "postback_deliver_redis_writable").await,
        0.0
    );
    // The dashboard says so, above everything else.
    let dom = chromium(format!("{ingest}/dashboard"), vec!["--dump-dom".into()]).await;
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains(r#"data-state="ok""#),
        "the dashboard did not load:\n{html}"
    );
    assert!(
        html.contains(r#"data-writes="refused""#) && html.contains(r#"<p id="writes-banner" role="alert">"#),
        "no banner for refused writes:\n{html}"
    );

    refuse_writes(&redis, false).await;
    assert_eq!(post(&format!("{ingest}/ingest"), body).await.status, 202);
    assert_eq!(get(&format!("{ingest}/health")).await.status, 200);
    assert_eq!(
        writable(format!("{ingest}/metrics"), "postback_ingest_redis_writable").await,
        1.0
    );
    sink.wait_for(2, LIMIT).await;
    wait_until(LIMIT, "deliver's /health back to ok", || async {
        get(&format!("{admin}/health")).await.status == 200
    })
    .await;
    assert_eq!(
        writable(format!("{admin}/metrics"), "postback_deliver_redis_writable").await,
        1.0
    );
    wait_until(LIMIT, "deliver to log that writes are accepted again", || async {
        deliver
            .messages()
            .iter()
            .any(|m| m.contains("redis accepts writes again"))
    })
    .await;
    let messages = deliver.messages();
    assert_eq!(
        messages.iter().filter(|m| m.contains("refuses writes")).count(),
        1,
        "{messages:#?}"
    );
    assert!(
        !messages
            .iter()
            .any(|m| m.contains("redis unavailable") || m.contains("redis is back")),
        "a refusal of writes is no outage: {messages:#?}"
    );
}

/// A delivery log on a full disk (`/dev/full` refuses every write): the
/// worker takes no more jobs and says so in its log, `/health` and
/// metrics; at exit, the line it could never write is reported lost, not
/// dropped silently. The disk-full stack test (scripts/lab/tests) shows
/// the recovery once there is room again.
#[tokio::test]
async fn a_delivery_log_that_cannot_be_written_stops_the_taking_and_is_seen() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let ingest = spawn_ingest(&redis, &[]);
    let mut env = fast_env(&redis);
    crate::support::set(&mut env, "DELIVER_LOG_FILE", "/dev/full");
    let mut deliver = Deliver::start(&env);
    let one = |n: usize| {
        let data: Vec<_> = (0..n).map(|i| json!({ "i": i })).collect();
        json!({"endpoint": {"method": "GET", "url": sink.url("/w?i={i}")}, "data": data}).to_string()
    };
    assert_eq!(post(&format!("{ingest}/ingest"), one(1)).await.status, 202);
    sink.wait_for(1, LIMIT).await;
    wait_until(LIMIT, "deliver to say it takes no jobs", || async {
        deliver.messages().iter().any(|m| m.contains("taking no jobs"))
    })
    .await;
    let admin = deliver.admin_url().expect("admin address logged");
    let health = get(&format!("{admin}/health")).await;
    assert_eq!(
        (health.status, health.json()["delivery_log"].clone()),
        (503, json!("failing")),
        "{}",
        health.body
    );
    assert_eq!(deliver.metric("postback_deliver_delivery_log_writable", &[]).await, 0.0);

    assert_eq!(post(&format!("{ingest}/ingest"), one(20)).await.status, 202);
    // A worker that took jobs would deliver these in milliseconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.count(), 1, "jobs were delivered with no line to log them");
    let stats: serde_json::Value = get(&format!("{ingest}/stats")).await.json();
    assert_eq!(stats["queue"]["ready"], 20, "{stats}");

    deliver.terminate();
    let status = deliver
        .wait_exit(LIMIT)
        .expect("deliver exits once its last line's patience is spent");
    assert!(status.success(), "{status:?}");
    let messages = deliver.messages();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("LOST: 1 lines of the log /dev/full")),
        "the unwritten line is reported: {messages:#?}"
    );
}
