//! The whole path of a postback: ingest → Redis → deliver → a real HTTP
//! endpoint, and the delivery log it leaves.

use crate::support::{depths, fast_env, field, ids_at, job, set, spawn_ingest, Deliver};
use common::job::Method;
use common::queue::QueueKeys;
use deadpool_redis::redis;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use testkit::{post, wait_until, RedisServer, Reply, Sink};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_request_produces_exactly_the_expected_outbound_request() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let ingest = spawn_ingest(&redis, &[]);
    let deliver = Deliver::start(&fast_env(&redis));

    let body = json!({
        "endpoint": {"method": "GET", "url": sink.url("/data?title={mascot}&image={location}&foo={bar}")},
        "data": [{"mascot": "Gopher", "location": "https://blog.golang.org/gopher/gopher.png"}]
    });
    let response = post(&format!("{ingest}/ingest"), body.to_string()).await;
    assert_eq!(response.status, 202, "{}", response.body);
    let id = response.json()["ids"][0].as_str().unwrap().to_string();

    sink.wait_for(1, LIMIT).await;
    let got = &sink.received()[0];
    assert_eq!(got.method, "GET");
    assert_eq!(
        got.path_and_query,
        "/data?title=Gopher&image=https%3A%2F%2Fblog.golang.org%2Fgopher%2Fgopher.png&foo="
    );
    assert!(got.body.is_empty(), "GET must send no body");

    wait_until(LIMIT, "the delivery log line", || async { !deliver.log().is_empty() }).await;
    let line = &deliver.log()[0];
    assert_eq!(field(line, "id").as_deref(), Some(id.as_str()));
    assert_eq!(field(line, "attempt").as_deref(), Some("1"));
    assert_eq!(field(line, "method").as_deref(), Some("GET"));
    assert_eq!(field(line, "url"), Some(sink.url(&got.path_and_query)));
    assert_eq!(field(line, "status").as_deref(), Some("200"));
    assert_eq!(field(line, "response_body").as_deref(), Some("status 200"));
    assert!(field(line, "response_ms").unwrap().parse::<u64>().is_ok());
    let time = field(line, "delivery_time").unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
        "{time}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_item_request_is_delivered_a_thousand_times_each_with_its_own_url() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let ingest = spawn_ingest(&redis, &[]);
    let _deliver = Deliver::start(&fast_env(&redis));

    let data: Vec<_> = (0..1000).map(|i| json!({"n": i, "word": format!("w {i}")})).collect();
    let body = json!({"endpoint": {"method": "get", "url": sink.url("/p?n={n}&w={word}")}, "data": data});
    let response = post(&format!("{ingest}/i"), body.to_string()).await;
    assert_eq!(response.status, 202, "{}", response.body);

    sink.wait_for(1000, LIMIT).await;
    let paths: HashSet<String> = sink.received().into_iter().map(|r| r.path_and_query).collect();
    let expected: HashSet<String> = (0..1000).map(|i| format!("/p?n={i}&w=w%20{i}")).collect();
    assert_eq!(paths, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_put_and_patch_deliver_the_data_as_a_json_body() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let ingest = spawn_ingest(&redis, &[]);
    let _deliver = Deliver::start(&fast_env(&redis));

    // The body is the data object exactly as the producer wrote it: its key
    // order and spacing too (an endpoint may check a signature over it).
    let data = r#"{"kind": "buy",  "amount": 9.5, "tags": ["a"], "note": "caf\u00e9"}"#;
    for method in ["POST", "put", "Patch"] {
        let url = serde_json::to_string(&sink.url("/hook/{kind}")).unwrap();
        let body = format!(r#"{{"endpoint": {{"method": "{method}", "url": {url}}}, "data": [ {data} ]}}"#);
        assert_eq!(post(&format!("{ingest}/ingest"), body).await.status, 202);
    }
    sink.wait_for(3, LIMIT).await;
    let mut methods: Vec<String> = sink.received().iter().map(|r| r.method.clone()).collect();
    methods.sort();
    assert_eq!(methods, ["PATCH", "POST", "PUT"]);
    for got in sink.received() {
        assert_eq!(got.path_and_query, "/hook/buy");
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(String::from_utf8_lossy(&got.body), data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_bodies_are_cut_in_the_json_log() {
    let redis = RedisServer::start();
    let long_body = "x".repeat(5000);
    let sink = Sink::start(Arc::new(move |r, _| {
        if r.path_and_query.starts_with("/moved") {
            Reply::status(302).header("location", "/elsewhere")
        } else {
            Reply {
                body: long_body.clone(),
                ..Reply::status(200)
            }
        }
    }))
    .await;
    let mut env = fast_env(&redis);
    set(&mut env, "DELIVER_LOG_FORMAT", "json");
    set(&mut env, "DELIVER_LOG_BODY_MAX", "100");
    let deliver = Deliver::start(&env);
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    crate::support::enqueue(
        &mut conn,
        &keys,
        &[
            job(Method::Get, &sink.url("/moved"), json!({})),
            job(Method::Get, &sink.url("/long"), json!({})),
        ],
    )
    .await;

    wait_until(LIMIT, "two log lines", || async { deliver.log().len() >= 2 }).await;
    let lines: Vec<serde_json::Value> = deliver.log().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let moved = lines
        .iter()
        .find(|l| l["url"].as_str().unwrap().ends_with("/moved"))
        .unwrap();
    assert_eq!(moved["status"], "302");
    assert_eq!(moved["outcome"], "dead", "a redirect is final");
    let long = lines
        .iter()
        .find(|l| l["url"].as_str().unwrap().ends_with("/long"))
        .unwrap();
    assert_eq!(long["response_body"].as_str().unwrap().len(), 100);
    for key in [
        "delivery_time",
        "id",
        "attempt",
        "method",
        "url",
        "status",
        "response_ms",
        "response_body",
    ] {
        assert!(!long[key].is_null(), "{key} missing from {long}");
    }
    // Only the two requests: the redirect's target was never asked for.
    assert_eq!(sink.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_are_logged_with_their_error_kind() {
    let redis = RedisServer::start();
    let mut env = fast_env(&redis);
    set(&mut env, "DELIVER_RETRY_SCHEDULE", "");
    let deliver = Deliver::start(&env);
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let closed = format!("http://127.0.0.1:{}/x", testkit::free_port());
    crate::support::enqueue(
        &mut conn,
        &keys,
        &[
            job(Method::Get, &closed, json!({})),
            job(Method::Get, "http://no-such-host.invalid/x", json!({})),
        ],
    )
    .await;
    wait_until(LIMIT, "two log lines", || async { deliver.log().len() >= 2 }).await;
    let statuses: HashSet<String> = deliver.log().iter().filter_map(|l| field(l, "status")).collect();
    assert_eq!(statuses, HashSet::from(["connect".to_string(), "dns".to_string()]));
    assert_eq!(
        depths(&mut conn, &keys).await.dead,
        2,
        "with an empty schedule a failure is final"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_rides_out_a_redis_restart_without_being_restarted() {
    let mut redis = RedisServer::start();
    let sink = Sink::ok().await;
    let deliver = Deliver::start(&fast_env(&redis));
    let keys = QueueKeys::new("default");
    let first = job(Method::Get, &sink.url("/x?id={id}"), json!({"id": "before"}));
    crate::support::enqueue(&mut redis.connection().await, &keys, &[first]).await;
    sink.wait_for(1, LIMIT).await;

    redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    redis.restart();
    let second = job(Method::Get, &sink.url("/x?id={id}"), json!({"id": "after"}));
    crate::support::enqueue(&mut redis.connection().await, &keys, &[second]).await;
    sink.wait_for(2, LIMIT).await;
    assert_eq!(ids_at(&sink), ["before", "after"]);

    let messages = deliver.messages();
    let outages = messages.iter().filter(|m| m.contains("redis unavailable")).count();
    let recoveries = messages.iter().filter(|m| m.contains("redis is back")).count();
    assert_eq!(
        (outages, recoveries),
        (1, 1),
        "one line for the outage and one for its end: {messages:#?}"
    );
}

#[test]
fn a_bad_setting_stops_deliver_at_start_naming_the_variable() {
    let mut deliver = Deliver::start(&[("DELIVER_CONCURRENCY".to_string(), "many".to_string())]);
    let status = deliver.wait_exit(Duration::from_secs(10)).expect("deliver must exit");
    assert_eq!(status.code(), Some(2));
    let messages = deliver.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("DELIVER_CONCURRENCY"), "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_delivered_when_their_ca_is_trusted_and_refused_otherwise() {
    let redis = RedisServer::start();
    let ca = testkit::TestCa::new();
    let sink = Sink::tls(&ca).await;
    let dir = testkit::TempDir::new("ca");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;

    // Without the private CA: a TLS failure (final with an empty schedule).
    let mut env = fast_env(&redis);
    set(&mut env, "DELIVER_RETRY_SCHEDULE", "");
    let mut untrusting = Deliver::start(&env);
    crate::support::enqueue(
        &mut conn,
        &keys,
        &[job(Method::Get, &sink.url("/secure?id={id}"), json!({"id": "u"}))],
    )
    .await;
    wait_until(LIMIT, "a log line", || async { !untrusting.log().is_empty() }).await;
    let line = &untrusting.log()[0];
    assert_eq!(field(line, "status").as_deref(), Some("tls"), "{line}");
    assert_eq!(sink.count(), 0);
    untrusting.kill();

    // With DELIVER_EXTRA_CA_FILE: delivered over https.
    set(&mut env, "DELIVER_EXTRA_CA_FILE", ca_file.to_str().unwrap());
    let trusting = Deliver::start(&env);
    crate::support::enqueue(
        &mut conn,
        &keys,
        &[job(Method::Get, &sink.url("/secure?id={id}"), json!({"id": "t"}))],
    )
    .await;
    sink.wait_for(1, LIMIT).await;
    assert_eq!(sink.received()[0].path_and_query, "/secure?id=t");
    wait_until(LIMIT, "a log line", || async { !trusting.log().is_empty() }).await;
    assert_eq!(field(&trusting.log()[0], "status").as_deref(), Some("200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_deliver_sleeps() {
    let mut redis = RedisServer::start();
    let deliver = Deliver::start(&fast_env(&redis));
    // Registered: Redis has answered it, so what follows is an outage.
    let conn = redis.connection().await;
    wait_until(LIMIT, "deliver to register", || {
        let mut conn = conn.clone();
        async move {
            let workers: u64 = redis::cmd("SCARD")
                .arg("postback:{default}:workers")
                .query_async(&mut conn)
                .await
                .unwrap_or(0);
            workers > 0
        }
    })
    .await;
    drop(conn);
    redis.kill();
    wait_until(LIMIT, "the outage to be noticed", || async {
        deliver.messages().iter().any(|m| m.contains("redis unavailable"))
    })
    .await;
    let before = crate::support::cpu_time(&deliver);
    std::thread::sleep(Duration::from_secs(3));
    let used = crate::support::cpu_time(&deliver) - before;
    // A busy loop would burn close to 3 s; back-off keeps it to a few ms.
    assert!(
        used < Duration::from_millis(300),
        "deliver used {used:?} of CPU in 3 s while Redis was down"
    );
    let outages = deliver
        .messages()
        .iter()
        .filter(|m| m.contains("redis unavailable"))
        .count();
    assert_eq!(outages, 1, "the outage is logged once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_redis_at_start_is_information_not_an_error() {
    // supervisord starts every program at once: deliver may be up first.
    let mut redis = RedisServer::start();
    redis.kill();
    let deliver = Deliver::start(&fast_env(&redis));
    wait_until(LIMIT, "the wait to be logged", || async {
        deliver.messages().iter().any(|m| m.contains("waiting for redis"))
    })
    .await;
    redis.restart();
    wait_until(LIMIT, "redis to answer", || async {
        deliver.messages().iter().any(|m| m.contains("redis answers"))
    })
    .await;
    let alarming: Vec<String> = deliver
        .messages()
        .into_iter()
        .filter(|m| m.contains(" ERROR ") || m.contains(" WARN "))
        .collect();
    assert!(
        alarming.is_empty(),
        "a normal start logs no error or warning: {alarming:#?}"
    );
}

/// The scheduling policy (field 41 of `/proc/<pid>/task/<tid>/stat`) of
/// every thread of `pid`, by thread name.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        let (name, rest) = stat.split_once(" (").unwrap().1.rsplit_once(") ").unwrap();
        // `rest` starts at field 3.
        let policy = rest.split_whitespace().nth(41 - 3).unwrap().parse().unwrap();
        policies.push((name.to_string(), policy));
    }
    policies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_thread_runs_as_batch_work_unless_told_to_inherit() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let redis = RedisServer::start();
    for (setting, expected) in [(None, SCHED_BATCH), (Some("inherit"), SCHED_OTHER)] {
        let mut env = fast_env(&redis);
        if let Some(value) = setting {
            set(&mut env, "DELIVER_CPU_POLICY", value);
        }
        let deliver = Deliver::start(&env);
        // The delivery log's writer is the last thread to start.
        wait_until(LIMIT, "the worker's threads", || async {
            deliver.admin_url().is_some()
                && thread_policies(deliver.pid())
                    .iter()
                    .any(|(name, _)| name == "line-log")
        })
        .await;
        let policies = thread_policies(deliver.pid());
        assert!(policies.len() >= 3, "{policies:?}");
        assert!(
            policies.iter().all(|(_, policy)| *policy == expected),
            "DELIVER_CPU_POLICY={setting:?}: {policies:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_reach_the_endpoint_exactly_as_the_producer_wrote_them() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let ingest = spawn_ingest(&redis, &[]);
    let _deliver = Deliver::start(&fast_env(&redis));

    let url = serde_json::to_string(&sink.url("/v?f={f}&big={big}&z={z}&huge={huge}&deep={deep}&s={s}")).unwrap();
    let data = r#"{"f": 1.50e3, "big": 12345678901234567890123, "z": -0.0, "huge": 1e400,
        "deep": [[[[{"a" : [1.0, "x y"]}]]]], "s": " keep  spaces "}"#;
    let body = format!(r#"{{"endpoint": {{"method": "GET", "url": {url}}}, "data": [{data}]}}"#);
    let response = post(&format!("{ingest}/ingest"), body).await;
    assert_eq!(response.status, 202, "{}", response.body);
    sink.wait_for(1, LIMIT).await;
    assert_eq!(
        sink.received()[0].path_and_query,
        "/v?f=1.50e3&big=12345678901234567890123&z=-0.0&huge=1e400\
         &deep=%5B%5B%5B%5B%7B%22a%22%3A%5B1.0%2C%22x%20y%22%5D%7D%5D%5D%5D%5D&s=%20keep%20%20spaces%20"
    );

    // Nesting deeper than serde_json's own limit (128) is rendered in full:
    // items are never parsed into a tree. (Past the URL's 64 KiB, hyper
    // refuses it: an `invalid_url` dead letter, "uri too long".)
    let url = serde_json::to_string(&sink.url("/deep?d={d}")).unwrap();
    let deep = format!(
        r#"{{"endpoint": {{"method": "GET", "url": {url}}}, "data": [{{"d": {}1{}}}]}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let response = post(&format!("{ingest}/ingest"), deep).await;
    assert_eq!(response.status, 202, "{}", response.body);
    sink.wait_for(2, LIMIT).await;
    assert_eq!(
        sink.received()[1].path_and_query,
        format!("/deep?d={}1{}", "%5B".repeat(200), "%5D".repeat(200))
    );
}
