//! Redis over TLS (`rediss://`, `rediss-sentinel://`, `rediss-cluster://`):
//! jobs go from ingest to the sink through a Redis, a Sentinel set and a
//! Cluster that speak only TLS and ask for client certificates; the
//! operator commands work over TLS; a server whose certificate another CA
//! signed is refused, and the log and `/health` say it is a certificate
//! problem. Certificates are made by the test (testkit's `RedisCerts`).

use crate::support::{fast_env_at, set, spawn_ingest_at, Deliver};
use std::collections::BTreeSet;
use std::time::Duration;
use testkit::{http, Cluster, RedisCerts, RedisServer, SentinelSet, Sink};

/// deliver's environment for the queue at `url`, with `certs`' settings.
fn env_over_tls(url: &str, certs: &RedisCerts) -> Vec<(String, String)> {
    let mut env = fast_env_at(url);
    for (var, value) in certs.env() {
        set(&mut env, &var, &value);
    }
    env
}

/// Starts an in-process ingest on the TLS queue at `url`.
fn ingest_over_tls(url: &str, certs: &RedisCerts, extra: &[(&str, &str)]) -> String {
    let tls = certs.env();
    let mut settings: Vec<(&str, &str)> = tls.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    settings.extend_from_slice(extra);
    spawn_ingest_at(url, &settings)
}

/// Posts jobs `ns` (one a request) and checks each was accepted.
async fn post(ingest: &str, sink: &Sink, ns: std::ops::Range<u64>) {
    for n in ns {
        let body = format!(
            r#"{{"endpoint":{{"method":"GET","url":"{}"}},"data":[{{"n":{n}}}]}}"#,
            sink.url("/tls?n={n}")
        );
        let answer = http(
            "POST",
            &format!("{ingest}/ingest"),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(answer.status, 202, "job {n}: {}", answer.body);
    }
}

/// The distinct `n`s that arrived.
fn arrived(sink: &Sink) -> BTreeSet<u64> {
    sink.received()
        .iter()
        .filter_map(|r| r.query_param("n")?.parse().ok())
        .collect()
}

async fn wait_for_all(sink: &Sink, n: u64, what: &str) {
    testkit::wait_until(Duration::from_secs(30), what, || {
        let done = arrived(sink) == (0..n).collect();
        async move { done }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_operator_commands_go_through_a_redis_that_speaks_only_tls() {
    let certs = RedisCerts::new();
    let redis = RedisServer::start_tls(&certs);
    assert!(redis.url().starts_with("rediss://"));
    let sink = Sink::ok().await;
    let ingest = ingest_over_tls(&redis.url(), &certs, &[]);
    post(&ingest, &sink, 0..20).await;

    let env = env_over_tls(&redis.url(), &certs);
    let mut queue = Deliver::command(&env, &["queue", "--json"]);
    assert_eq!(
        queue.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0),
        "{:?}",
        queue.messages()
    );
    let glance: serde_json::Value = serde_json::from_str(&queue.log().join("\n")).expect("deliver queue --json");
    let ready: u64 = glance["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["depths"]["ready"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(ready, 20, "deliver queue over TLS sees the 20 jobs: {glance}");

    let worker = Deliver::start(&env);
    wait_for_all(&sink, 20, "the 20 jobs delivered over a TLS Redis").await;
    testkit::wait_until(Duration::from_secs(10), "the admin address", || {
        let found = worker.admin_url().is_some();
        async move { found }
    })
    .await;
    let health = testkit::get(&format!("{}/health", worker.admin_url().unwrap())).await;
    assert_eq!(health.status, 200, "{}", health.body);
    let mut dead = Deliver::command(&env, &["dead", "list"]);
    assert_eq!(
        dead.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0),
        "deliver dead list over TLS: {:?}",
        dead.messages()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_another_ca_signed_is_refused_and_named() {
    let certs = RedisCerts::new();
    let redis = RedisServer::start_tls(&certs);
    // The services trust a CA of their own, not the one that signed
    // Redis' certificate (nor does the system).
    let other = RedisCerts::new();
    let mut env = env_over_tls(&redis.url(), &other);
    set(
        &mut env,
        "REDIS_TLS_CERT_FILE",
        &certs.file("client.crt").display().to_string(),
    );
    set(
        &mut env,
        "REDIS_TLS_KEY_FILE",
        &certs.file("client.key").display().to_string(),
    );
    let worker = Deliver::start(&env);
    testkit::wait_until(Duration::from_secs(20), "the refusal logged", || {
        let logged = worker.messages().iter().any(|m| m.contains("TLS with redis failed"));
        async move { logged }
    })
    .await;
    let line = worker
        .messages()
        .into_iter()
        .find(|m| m.contains("TLS with redis failed"))
        .unwrap_or_default();
    assert!(
        line.contains("certificate") && line.contains("REDIS_TLS_CA_FILE"),
        "the log says it is a certificate problem and what to check: {line}"
    );
    let health = testkit::get(&format!("{}/health", worker.admin_url().expect("admin address"))).await;
    assert_eq!(health.status, 503, "{}", health.body);
    let body = health.json();
    assert_eq!(body["redis"], "down", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS") && e.contains("certificate")),
        "deliver's /health names the TLS problem: {body}"
    );

    // ingest says the same on its /health.
    let ingest = spawn_ingest_at(
        &redis.url(),
        &[("REDIS_TLS_CA_FILE", &other.file("ca.crt").display().to_string())],
    );
    let health = testkit::get(&format!("{ingest}/health")).await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS") && e.contains("certificate")),
        "ingest's /health names the TLS problem: {}",
        health.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_told_redis_asked_for_one() {
    let certs = RedisCerts::new();
    let redis = RedisServer::start_tls(&certs);
    let ca = certs.file("ca.crt").display().to_string();
    let ingest = spawn_ingest_at(&redis.url(), &[("REDIS_TLS_CA_FILE", &ca)]);
    let health = testkit::get(&format!("{ingest}/health")).await;
    assert_eq!(health.status, 503, "{}", health.body);
    let error = health.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("TLS") && error.contains("REDIS_TLS_CERT_FILE"),
        "the answer points to the client certificate: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_set_over_tls_serves_the_queue_and_is_followed_through_a_failover() {
    let certs = RedisCerts::new();
    let set_ = SentinelSet::start_tls(&certs);
    let url = set_.url();
    assert!(url.starts_with("rediss-sentinel://"), "{url}");
    let sink = Sink::ok().await;
    let ingest = ingest_over_tls(&url, &certs, &[]);
    let env = env_over_tls(&url, &certs);
    let _worker = Deliver::start(&env);
    post(&ingest, &sink, 0..10).await;
    wait_for_all(&sink, 10, "10 jobs through the TLS sentinels' master").await;

    let before = set_.master_port();
    set_.failover();
    testkit::wait_until(Duration::from_secs(30), "the sentinels name the other node", || {
        let now = set_.master_port();
        async move { now.is_some() && now != before }
    })
    .await;
    // Writes go to the new master: ingest follows the switch it hears of
    // over TLS, or finds the master anew after a READONLY.
    testkit::wait_until(Duration::from_secs(30), "ingest accepts jobs again", || {
        let ingest = ingest.clone();
        let body = format!(
            r#"{{"endpoint":{{"method":"GET","url":"{}"}},"data":[{{"n":10}}]}}"#,
            sink.url("/tls?n={n}")
        );
        async move {
            http(
                "POST",
                &format!("{ingest}/ingest"),
                &[("content-type", "application/json")],
                body,
            )
            .await
            .status
                == 202
        }
    })
    .await;
    post(&ingest, &sink, 11..20).await;
    wait_for_all(&sink, 20, "20 jobs, 10 of them after the failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_over_tls_serves_a_sharded_queue() {
    let certs = RedisCerts::new();
    let cluster = Cluster::start_tls(3, &certs);
    let url = cluster.url();
    assert!(url.starts_with("rediss-cluster://"), "{url}");
    let sink = Sink::ok().await;
    let ingest = ingest_over_tls(&url, &certs, &[("POSTBACK_SHARDS", "6")]);
    post(&ingest, &sink, 0..60).await;
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    assert!(
        masters.iter().filter(|&&port| cluster.dbsize(port) > 0).count() >= 2,
        "the shards spread over the masters"
    );
    let mut env = env_over_tls(&url, &certs);
    set(&mut env, "POSTBACK_SHARDS", "6");
    let _worker = Deliver::start(&env);
    wait_for_all(&sink, 60, "60 jobs through a TLS cluster").await;
}
