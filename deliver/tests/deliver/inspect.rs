//! The on-call engineer's commands on a real Redis with real delivery
//! logs: `deliver job ID` for a delivered, a retrying, a dead, a ready and
//! a parked job and an unknown id (a rotated log file included);
//! `deliver queue`; `deliver dead show`, `list --json --reason --host` and
//! `replay --host`.

use crate::support::{depths, enqueue, fast_env, job, set, Deliver};
use common::job::Method;
use common::queue::QueueKeys;
use deadpool_redis::redis;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use testkit::{wait_until, RedisServer, Reply, Sink, TempDir};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs a deliver command to its end: (exit code, stdout lines, stderr).
fn command(env: &[(String, String)], args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let mut run = Deliver::command(env, args);
    let code = run.wait_exit(Duration::from_secs(30)).and_then(|s| s.code());
    (code, run.log(), run.messages().join("\n"))
}

/// A sink answering by path: `/ok` 200, `/busy` 503, `/gone` 410.
async fn sink() -> Sink {
    Sink::start(Arc::new(|r, _| match r.path_and_query.split('?').next() {
        Some("/busy") => Reply::status(503),
        Some("/gone") => Reply::status(410).header("content-type", "text/plain"),
        _ => Reply::status(200),
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_job_tells_where_a_job_is_and_every_attempt_of_it() {
    let redis = RedisServer::start();
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let sink = sink().await;
    let logs = TempDir::new("inspect-logs");
    let mut env = fast_env(&redis);
    // One retry, an hour away: the retrying job stays put.
    set(&mut env, "DELIVER_RETRY_SCHEDULE", "1h");
    set(
        &mut env,
        "DELIVER_LOG_FILE",
        logs.path().join("deliver_00.delivery.log").to_str().unwrap(),
    );
    let delivered = job(Method::Get, &sink.url("/ok?n=1"), json!({}));
    let retrying = job(Method::Get, &sink.url("/busy?n=2"), json!({}));
    let dead = job(Method::Get, &sink.url("/gone?n=3"), json!({}));
    let mut worker = Deliver::start(&env);
    enqueue(&mut conn, &keys, &[delivered.clone(), retrying.clone(), dead.clone()]).await;
    sink.wait_for(3, LIMIT).await;
    wait_until(LIMIT, "three attempts in the delivery log", || async {
        std::fs::read_to_string(logs.path().join("deliver_00.delivery.log")).is_ok_and(|t| t.lines().count() == 3)
    })
    .await;
    worker.terminate();
    worker.wait_exit(LIMIT);

    // With no worker running: one job ready, one parked behind its host.
    let ready = job(Method::Get, &sink.url("/ok?n=4"), json!({}));
    enqueue(&mut conn, &keys, std::slice::from_ref(&ready)).await;
    let parked = job(Method::Get, "http://parked.example:8080/p", json!({}));
    let _: () = redis::pipe()
        .cmd("RPUSH")
        .arg(keys.parked_list("parked.example:8080"))
        .arg(parked.encode())
        .cmd("ZINCRBY")
        .arg(&keys.parked)
        .arg(1)
        .arg("parked.example:8080")
        .query_async(&mut conn)
        .await
        .unwrap();
    // An older attempt of the delivered job, in a rotated file.
    std::fs::write(
        logs.path().join("deliver_00.delivery.log.1"),
        format!(
            "delivery_time=2020-01-01T00:00:00.000Z id={} attempt=1 method=GET url=\"x\" status=500 response_ms=1 outcome=retry\n",
            delivered.id
        ),
    )
    .unwrap();

    let logs_arg = logs.path().to_str().unwrap().to_string();
    let story = |id: &str| command(&env, &["job", id, "--logs", &logs_arg]);
    let (code, out, err) = story(&delivered.id);
    assert_eq!(code, Some(0), "{err}");
    assert!(out[0].contains(": settled"), "{out:?}");
    assert!(out[1].contains("attempts in") && out[1].ends_with(": 2"), "{out:?}");
    assert!(
        out[2].contains("2020-01-01") && out[2].contains("status=500"),
        "oldest first: {out:?}"
    );
    assert!(out[3].contains("status=200"), "{out:?}");

    let (code, out, _) = story(&retrying.id);
    assert_eq!(code, Some(0));
    assert!(out[0].contains(": retry: attempt 2 due in "), "{out:?}");
    let (_, out, _) = story(&dead.id);
    assert!(
        out[0].contains(": dead: gone after 1 attempts, last status 410"),
        "{out:?}"
    );
    let (_, out, _) = story(&ready.id);
    assert!(out[0].contains(": ready"), "{out:?}");
    let (_, out, _) = story(&parked.id);
    assert!(
        out[0].contains(": parked: waiting for room at parked.example:8080"),
        "{out:?}"
    );
    let (code, out, _) = command(&env, &["job", &retrying.id, "--logs", &logs_arg, "--json"]);
    assert_eq!(code, Some(0));
    let answer: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(answer["state"], "retry");
    assert_eq!(answer["attempts"].as_array().map(Vec::len), Some(1));

    let (code, _, err) = story("0192aaaa-0000-7000-8000-000000000000");
    assert_eq!(code, Some(1), "an unknown id is an error");
    assert!(err.contains("no such job"), "{err}");

    // Without --logs, as on the stack, whose postback.env sets
    // DELIVER_LOG_DIR (each worker's DELIVER_LOG_FILE is not there)...
    let mut stack_env = env.clone();
    stack_env.retain(|(k, _)| k != "DELIVER_LOG_FILE");
    set(&mut stack_env, "DELIVER_LOG_DIR", &logs_arg);
    let (code, out, err) = command(&stack_env, &["job", &delivered.id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out[1].ends_with(": 2"), "DELIVER_LOG_DIR's logs are read: {out:?}");
    // ...and DELIVER_LOG_FILE itself is read whatever its name.
    let elsewhere = TempDir::new("inspect-own-log");
    let own = elsewhere.path().join("attempts.txt");
    std::fs::write(
        &own,
        format!(
            "delivery_time=2021-01-01T00:00:00.000Z id={} attempt=1 method=GET url=\"x\" status=200 response_ms=1 outcome=delivered\n",
            ready.id
        ),
    )
    .unwrap();
    let mut own_env = env.clone();
    set(&mut own_env, "DELIVER_LOG_FILE", own.to_str().unwrap());
    let (code, out, err) = command(&own_env, &["job", &ready.id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out[1].ends_with(": 1") && out[2].contains("2021-01-01"), "{out:?}");

    // The queue at a glance.
    let (code, out, err) = command(&env, &["queue"]);
    assert_eq!(code, Some(0), "{err}");
    let text = out.join("\n");
    for line in [
        "ready:     1",
        "in flight: 0",
        "retry:     1 (next due in ",
        "parked:    1",
        "dead:      1",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(
        text.contains("parked.example:8080") && text.lines().any(|l| l.trim() == "1  gone"),
        "{text}"
    );
    let (_, out, _) = command(&env, &["queue", "--json"]);
    let glance: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(glance["shards"][0]["depths"]["ready"], 1);
    assert_eq!(glance["dead_by_reason"]["gone"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_shown_filtered_and_replayed_by_host() {
    let redis = RedisServer::start();
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let gone = sink().await;
    let other = sink().await;
    let env = fast_env(&redis);
    let _worker = Deliver::start(&env);
    let first = job(Method::Get, &gone.url("/gone?n=1"), json!({"n": 1}));
    let second = job(Method::Get, &other.url("/gone?n=2"), json!({"n": 2}));
    enqueue(&mut conn, &keys, &[first.clone(), second.clone()]).await;
    wait_until(LIMIT, "two dead letters", || async {
        depths(&mut redis.connection().await, &keys).await.dead == 2
    })
    .await;

    let (code, out, err) = command(&env, &["dead", "show", &first.id]);
    assert_eq!(code, Some(0), "{err}");
    let text = out.join("\n");
    for part in [
        "reason:      gone",
        "last status: 410",
        "data:        {\"n\":1}",
        "answer:",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
    let host = gone.url("").trim_start_matches("http://").to_string();
    let (_, out, _) = command(&env, &["dead", "list", "--json", "--host", &host]);
    assert_eq!(out.len(), 1, "one letter of that host: {out:?}");
    let letter: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(letter["id"], first.id);
    let (_, out, _) = command(&env, &["dead", "list", "--reason", "retries_exhausted"]);
    assert_eq!(out.last().map(|l| l.starts_with("# 0 of 2")), Some(true), "{out:?}");

    let (code, out, _) = command(&env, &["dead", "replay", "--host", &host]);
    assert_eq!(code, Some(0));
    assert!(out.join("\n").contains("requeued 1 dead letters"), "{out:?}");
    let (code, _, err) = command(&env, &["dead", "show", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no such dead letter"), "{err}");
}

/// While Redis refuses writes (here `min-replicas-to-write` with no
/// replica, as a full disk's MISCONF does), the views an operator needs
/// most still answer: they only read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_views_answer_while_redis_refuses_writes() {
    let redis = RedisServer::start();
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let gone = sink().await;
    let env = fast_env(&redis);
    let mut worker = Deliver::start(&env);
    let dead = job(Method::Get, &gone.url("/gone?n=1"), json!({"n": 1}));
    enqueue(&mut conn, &keys, std::slice::from_ref(&dead)).await;
    wait_until(LIMIT, "a dead letter", || async {
        depths(&mut redis.connection().await, &keys).await.dead == 1
    })
    .await;
    worker.terminate();
    worker.wait_exit(LIMIT);
    let ready = job(Method::Get, &gone.url("/ok?n=2"), json!({"n": 2}));
    enqueue(&mut conn, &keys, std::slice::from_ref(&ready)).await;
    let ingest = crate::support::spawn_ingest(&redis, &[]);

    crate::support::refuse_writes(&redis, true).await;
    let refused: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg("1").query_async(&mut conn).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.to_string().contains("NOREPLICAS")),
        "Redis must refuse writes for this test: {refused:?}"
    );

    let (code, out, err) = command(&env, &["queue"]);
    assert_eq!(code, Some(0), "deliver queue: {err}");
    let text = out.join("\n");
    assert!(text.contains("ready:     1") && text.contains("dead:      1"), "{text}");
    let (code, out, err) = command(&env, &["dead", "list"]);
    assert_eq!(code, Some(0), "deliver dead list: {err}");
    assert!(out.join("\n").contains(&dead.id), "{out:?}");
    let (code, out, err) = command(&env, &["dead", "show", &dead.id]);
    assert_eq!(code, Some(0), "deliver dead show: {err}");
    assert!(out.join("\n").contains("last status: 410"), "{out:?}");
    let (code, out, err) = command(&env, &["job", &ready.id]);
    assert_eq!(code, Some(0), "deliver job: {err}");
    assert!(out[0].contains(": ready"), "{out:?}");
    for page in ["/stats", "/metrics", "/dashboard"] {
        let answer = testkit::get(&format!("{ingest}{page}")).await;
        assert_eq!(answer.status, 200, "{page}: {}", answer.body);
    }
}
