//! Standard Webhooks signatures, checked by an implementation that is not
//! ours: the `standardwebhooks` package from PyPI (scripts/test installs
//! it), run on what a real sink received from `deliver_one`. The producer
//! key and its secrets are made and rotated in a real Redis, through the
//! same store ingest's `keys` commands use.

use common::job::{Job, Method};
use common::queue::Queue;
use deliver::config::Config;
use deliver::deliverer::Deliverer;
use deliver::delivery_log::DeliveryLog;
use deliver::metrics::Metrics;
use deliver::signing::Signer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{Received, RedisServer, Sink, TempDir};

/// Runs the independent verifier on one received request with `secret`:
/// Ok, or its complaint.
fn verify_with_standardwebhooks(secret: &str, received: &Received) -> Result<(), String> {
    let python = std::env::var("POSTBACK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let headers: serde_json::Map<String, serde_json::Value> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .map(|h| (h.to_string(), received.header(h).unwrap_or_default().into()))
        .collect();
    let payload = if received.body.is_empty() {
        received.path_and_query.clone().into_bytes()
    } else {
        received.body.to_vec()
    };
    let dir = TempDir::new("swh");
    let payload_file = dir.path().join("payload");
    std::fs::write(&payload_file, &payload).unwrap();
    let script = r#"
import json, sys
try:
    from standardwebhooks import Webhook
except ImportError:
    sys.exit("the standardwebhooks package is missing: scripts/test installs it (pip install standardwebhooks)")
secret, headers, payload_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
Webhook(secret).verify(open(payload_file, "rb").read(), headers, json_parse=False)
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, secret, &serde_json::Value::Object(headers).to_string()])
        .arg(&payload_file)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct Setup {
    queue: Queue,
    deliverer: Deliverer,
    _dir: TempDir,
}

async fn setup(redis: &RedisServer, overlap: &str) -> Setup {
    let env = [
        ("REDIS_URL", redis.url()),
        ("POSTBACK_ALLOW_DESTINATIONS", "127.0.0.0/8".to_string()),
        ("DELIVER_SECRET_OVERLAP", overlap.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = Config::from_source(env.as_slice()).unwrap();
    let queue = crate::support::queue_at(&redis.url());
    let signer = Arc::new(Signer::new(None, config.secret_overlap));
    tokio::spawn(deliver::signing::refresh(signer.clone(), queue.handle()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !signer.is_loaded() {
        assert!(Instant::now() < deadline, "the secrets were not read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = TempDir::new("signing");
    let (log, _) = DeliveryLog::file(config.log_format, &dir.path().join("log"), config.log_max_bytes).unwrap();
    let deliverer = Deliverer::new(&config, log, Arc::new(Metrics::new()), signer).unwrap();
    Setup {
        queue,
        deliverer,
        _dir: dir,
    }
}

fn job(method: Method, url: &str, producer: &str) -> Job {
    Job {
        id: Job::new_id(),
        method,
        url: url.to_string(),
        data: serde_json::value::RawValue::from_string(r#"{ "b": 2,  "a": "é x" }"#.into()).unwrap(),
        attempt: 1,
        enqueued_at: common::now_ms(),
        request_id: None,
        producer: Some(producer.to_string()),
        headers: Default::default(),
    }
}

/// Delivers `job` until `done` says the signature is as wanted (the
/// secrets reload within a second or two after a change).
async fn delivered_until(s: &Setup, sink: &Sink, job: &Job, done: impl Fn(&Received) -> bool) -> Received {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = sink.count();
        s.deliverer.deliver_one(job).await;
        let received = sink.received()[before..]
            .first()
            .cloned()
            .expect("the sink got the request");
        if done(&received) || Instant::now() > deadline {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn deliveries_carry_signatures_a_standard_webhooks_library_accepts() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let made = common::producer::new_key().unwrap();
    let s = setup(&redis, "24h").await;
    s.queue.create_producer(&made, "shop", None).await.unwrap();

    // POST: the body, byte for byte, is what is signed.
    let post = job(Method::Post, &sink.url("/hook?x={a}"), &made.id);
    let received = delivered_until(&s, &sink, &post, |r| r.header("webhook-signature").is_some()).await;
    assert_eq!(received.header("webhook-id"), Some(post.id.as_str()));
    let timestamp: u64 = received.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(timestamp.abs_diff(common::now_ms() / 1000) < 60);
    assert_eq!(&received.body[..], post.data.get().as_bytes());
    verify_with_standardwebhooks(&made.signing_secret, &received).expect("the POST verifies");
    let other = common::producer::new_signing_secret().unwrap();
    assert!(
        verify_with_standardwebhooks(&other, &received).is_err(),
        "another secret does not verify"
    );

    // GET: the request target (path and query) is what is signed.
    let get = job(Method::Get, &sink.url("/hook?x={a}&y=1"), &made.id);
    let received = delivered_until(&s, &sink, &get, |_| true).await;
    assert_eq!(received.path_and_query, "/hook?x=%C3%A9%20x&y=1");
    assert!(received.body.is_empty());
    verify_with_standardwebhooks(&made.signing_secret, &received).expect("the GET verifies");

    // The id is the same on every attempt.
    let retry = Job {
        attempt: 2,
        ..post.clone()
    };
    let again = delivered_until(&s, &sink, &retry, |_| true).await;
    assert_eq!(again.header("webhook-id"), Some(post.id.as_str()));
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign_for_the_overlap_then_only_the_new() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let made = common::producer::new_key().unwrap();
    // Long enough for the secrets to reload (within about a second) and
    // for one delivery, short enough for a test.
    let s = setup(&redis, "3s").await;
    s.queue.create_producer(&made, "shop", None).await.unwrap();
    let post = job(Method::Post, &sink.url("/hook"), &made.id);
    let before = delivered_until(&s, &sink, &post, |r| r.header("webhook-signature").is_some()).await;
    assert_eq!(before.header("webhook-signature").unwrap().split(' ').count(), 1);

    let new_secret = common::producer::new_signing_secret().unwrap();
    assert!(s.queue.rotate_producer_secret(&made.id, &new_secret).await.unwrap());
    let rotated_at = Instant::now();
    let during = delivered_until(&s, &sink, &post, |r| {
        r.header("webhook-signature").is_some_and(|h| h.contains(' '))
    })
    .await;
    assert!(
        rotated_at.elapsed() < Duration::from_secs(3),
        "the overlap had passed already"
    );
    let signatures = during.header("webhook-signature").unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    verify_with_standardwebhooks(&new_secret, &during).expect("the new secret verifies");
    verify_with_standardwebhooks(&made.signing_secret, &during).expect("the old secret still verifies");

    // Past the overlap, only the new secret signs.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(rotated_at.elapsed())).await;
    let after = delivered_until(&s, &sink, &post, |r| {
        r.header("webhook-signature").is_some_and(|h| !h.contains(' '))
    })
    .await;
    assert_eq!(after.header("webhook-signature").unwrap().split(' ').count(), 1);
    verify_with_standardwebhooks(&new_secret, &after).expect("the new secret verifies");
    assert!(
        verify_with_standardwebhooks(&made.signing_secret, &after).is_err(),
        "the old secret is gone"
    );
}
