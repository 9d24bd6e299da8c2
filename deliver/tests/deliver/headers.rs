//! A producer's `endpoint.headers`, end to end: ingest queues them, deliver
//! sends them (a producer's User-Agent replacing ours), and their values
//! reach no log and no dead letter, yet a replayed letter sends them again.

use crate::support::{depths, fast_env, spawn_ingest, Deliver};
use common::queue::QueueKeys;
use deadpool_redis::redis;
use std::time::Duration;
use testkit::{post, switched, wait_until, RedisServer, Reply, Sink};

const LIMIT: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret-t0ken";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_headers_are_sent_kept_out_of_logs_and_letters_and_replayed() {
    let redis = RedisServer::start();
    let keys = QueueKeys::new("default");
    // 410 (final: a dead letter) until switched, then 200.
    let (responder, switch) = switched(Reply::status(410), Reply::status(200));
    let sink = Sink::start(responder).await;
    let ingest = spawn_ingest(&redis, &[]);
    let env = fast_env(&redis);
    let worker = Deliver::start(&env);

    let body = format!(
        r#"{{"endpoint":{{"method":"POST","url":"{}","headers":{{"X-Api-Token":"{SECRET}","User-Agent":"their-agent/1"}}}},"data":[{{"n":1}}]}}"#,
        sink.url("/hook?n={n}")
    );
    let answer = post(&format!("{ingest}/ingest"), body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["ids"][0].as_str().unwrap().to_string();
    wait_until(LIMIT, "a dead letter", || async {
        depths(&mut redis.connection().await, &keys).await.dead == 1
    })
    .await;

    let first = &sink.received()[0];
    assert_eq!(first.header("x-api-token"), Some(SECRET));
    assert_eq!(
        first.header("user-agent"),
        Some("their-agent/1"),
        "the producer's agent replaces ours"
    );
    assert!(first.header("content-type").is_some());

    let mut conn = redis.connection().await;
    let stored = crate::support::list(&mut conn, &keys.dead).await;
    assert!(
        !stored[0].contains(SECRET),
        "a value in the stored letter: {}",
        stored[0]
    );
    let letter: serde_json::Value = serde_json::from_str(&stored[0]).unwrap();
    assert_eq!(letter["header_names"], serde_json::json!(["X-Api-Token", "User-Agent"]));
    let kept: Option<String> = redis::cmd("HGET")
        .arg(&keys.dead_headers)
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        kept.is_some_and(|k| k.contains(SECRET)),
        "the values are kept beside the letter"
    );

    let shown = Deliver::command(&env, &["dead", "show", &id]);
    let mut shown = shown;
    assert_eq!(shown.wait_exit(LIMIT).and_then(|s| s.code()), Some(0));
    let text = shown.log().join("\n");
    assert!(text.contains("headers:     X-Api-Token, User-Agent"), "{text}");
    let mut listed = Deliver::command(&env, &["dead", "list", "--json"]);
    assert_eq!(listed.wait_exit(LIMIT).and_then(|s| s.code()), Some(0));
    let everything = format!("{text}\n{}\n{}", listed.log().join("\n"), worker.log().join("\n"));
    assert!(
        !everything.contains(SECRET),
        "a header value was shown or logged:\n{everything}"
    );

    switch.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut replay = Deliver::command(&env, &["dead", "replay", "--all"]);
    assert_eq!(replay.wait_exit(LIMIT).and_then(|s| s.code()), Some(0));
    assert!(
        replay.log().join("\n").contains("requeued 1 dead letters"),
        "{:?}",
        replay.log()
    );
    sink.wait_for(2, LIMIT).await;
    assert_eq!(
        sink.received()[1].header("x-api-token"),
        Some(SECRET),
        "the replay sends the headers again"
    );
    let left: u64 = redis::cmd("HLEN")
        .arg(&keys.dead_headers)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the replayed letter's values are gone from the side store");
    assert!(!worker.log().join("\n").contains(SECRET));
}
