//! One delivery, in-process: `Deliverer::deliver_one` against a real sink,
//! for each kind of answer and failure, with the settlement it decides and
//! the delivery log line it writes. No Redis: a delivery does not touch the
//! queue.

use crate::support::unsigned;
use common::job::{Job, Method};
use common::queue::Settlement;
use deliver::config::Config;
use deliver::deliverer::Deliverer;
use deliver::delivery_log::DeliveryLog;
use deliver::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use testkit::{free_port, wait_blocking, Reply, Sink, TempDir, TestCa};

/// A deliverer with a short timeout, no jitter and two retries, logging to
/// a file in `dir`, with loopback sinks allowed.
fn deliverer(dir: &TempDir, extra: &[(&str, &str)]) -> (Deliverer, PathBuf) {
    let mut env = vec![
        crate::support::LOOPBACK_SINKS,
        ("DELIVER_TIMEOUT_MS", "500"),
        ("DELIVER_RETRY_SCHEDULE", "5s,30s"),
        ("DELIVER_RETRY_JITTER_PCT", "0"),
        ("DELIVER_RETRY_AFTER_MAX_MS", "3600000"),
    ];
    env.extend_from_slice(extra);
    let config = Config::from_source(env.as_slice()).expect("test settings are valid");
    let path = dir.path().join("delivery.log");
    let (log, _writer) = DeliveryLog::file(config.log_format, &path, config.log_max_bytes).expect("the log file opens");
    let deliverer = Deliverer::new(&config, log, Arc::new(Metrics::new()), unsigned()).expect("the client builds");
    (deliverer, path)
}

fn job(url: &str, attempt: u32) -> Job {
    Job {
        id: Job::new_id(),
        method: Method::Get,
        url: url.to_string(),
        data: serde_json::value::to_raw_value(&serde_json::json!({"v": "a b"})).unwrap(),
        attempt,
        enqueued_at: common::now_ms(),
        request_id: Some("req-1".into()),
        producer: None,
        headers: Default::default(),
    }
}

/// The delivery log line of job `id`, once the writer has written it.
fn log_line(path: &PathBuf, id: &str) -> String {
    let mut found = String::new();
    wait_blocking(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        match text.lines().find(|l| l.contains(id)) {
            Some(line) => {
                found = line.to_string();
                true
            }
            None => false,
        }
    })
    .expect("the attempt is logged");
    found
}

/// What a settlement says, in one comparable word (and the delay or the
/// dead reason).
fn kind(settlement: &Settlement) -> String {
    match settlement {
        Settlement::Ack => "ack".into(),
        Settlement::Retry { delay, next } => {
            let next = Job::decode(next.as_bytes()).expect("the retry is a job");
            format!("retry {}s attempt {}", delay.as_secs(), next.attempt)
        }
        Settlement::Park { host } => format!("park {host}"),
        Settlement::Dead { letter } => format!("dead {}", letter.reason.as_str()),
    }
}

fn by_path() -> testkit::Responder {
    Arc::new(|req, _| match req.path_and_query.split('?').next().unwrap_or("") {
        "/ok" => Reply::status(204),
        "/redirect" => Reply::status(302).header("location", "http://127.0.0.1:1/elsewhere"),
        "/missing" => Reply::status(404),
        "/gone" => Reply::status(410),
        "/slow-client" => Reply::status(408),
        "/busy" => Reply::status(429).header("retry-after", "120"),
        "/broken" => Reply::status(500),
        "/unavailable" => Reply::status(503),
        "/hang" => Reply::hang(),
        _ => Reply::status(400),
    })
}

#[tokio::test]
async fn each_answer_and_failure_settles_as_the_policy_says() {
    let sink = Sink::start(by_path()).await;
    let dir = TempDir::new("deliver-one");
    let (deliverer, log) = deliverer(&dir, &[]);
    let closed = format!("http://127.0.0.1:{}/x", free_port());
    let cases: Vec<(String, u32, &str, &str)> = vec![
        (sink.url("/ok?v={v}"), 1, "ack", "204"),
        (sink.url("/redirect"), 1, "dead final_status", "302"),
        (sink.url("/missing"), 1, "dead final_status", "404"),
        // Gone for good: final, with a reason of its own.
        (sink.url("/gone"), 1, "dead gone", "410"),
        (sink.url("/slow-client"), 1, "retry 5s attempt 2", "408"),
        // Retry-After above the schedule's delay is honoured.
        (sink.url("/busy"), 1, "retry 120s attempt 2", "429"),
        (sink.url("/broken"), 2, "retry 30s attempt 3", "500"),
        // The schedule has two retries: a third failure is the last.
        (sink.url("/unavailable"), 3, "dead retries_exhausted", "503"),
        (sink.url("/hang"), 1, "retry 5s attempt 2", "timeout"),
        (closed, 1, "retry 5s attempt 2", "connect"),
        ("http://no-such-host.invalid/x".into(), 1, "retry 5s attempt 2", "dns"),
    ];
    for (url, attempt, expected, status) in cases {
        let job = job(&url, attempt);
        let settlement = deliverer.deliver_one(&job).await;
        assert_eq!(kind(&settlement), expected, "{url}");
        let line = log_line(&log, &job.id);
        assert!(line.contains(&format!(" status={status} ")), "{url}: {line}");
        assert!(line.contains(" request_id=req-1"), "{line}");
        if let Settlement::Dead { letter } = &settlement {
            assert_eq!(letter.id, job.id);
            assert_eq!(letter.attempts, attempt);
            assert_eq!(letter.last_status, status);
            assert!(letter.job.is_some(), "a dead letter keeps its job for replay");
        }
    }
    // The placeholder was filled, percent-encoded.
    let ok = sink
        .received()
        .into_iter()
        .find(|r| r.path_and_query.starts_with("/ok"))
        .unwrap();
    assert_eq!(ok.path_and_query, "/ok?v=a%20b");
    // Redirects are not followed: nothing reached the redirect's target.
    assert!(sink.received().iter().all(|r| r.path_and_query != "/elsewhere"));
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_failure_and_a_trusted_one_delivers() {
    let ca = TestCa::new();
    let sink = Sink::tls(&ca).await;
    let dir = TempDir::new("deliver-one-tls");
    let (untrusting, log) = deliverer(&dir, &[]);
    let job1 = job(&sink.url("/x"), 1);
    assert_eq!(kind(&untrusting.deliver_one(&job1).await), "retry 5s attempt 2");
    assert!(log_line(&log, &job1.id).contains(" status=tls "));

    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let trusted = TempDir::new("deliver-one-tls-trusted");
    let (trusting, _) = deliverer(&trusted, &[("DELIVER_EXTRA_CA_FILE", ca_file.to_str().unwrap())]);
    assert_eq!(kind(&trusting.deliver_one(&job(&sink.url("/x"), 1)).await), "ack");
    assert_eq!(sink.count(), 1, "only the trusted attempt got through");
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_as_basic_auth_and_never_shown() {
    let sink = Sink::start(by_path()).await;
    let dir = TempDir::new("deliver-one-userinfo");
    let (deliverer, log) = deliverer(&dir, &[]);
    let with_credentials = |path: &str| sink.url(path).replacen("http://", "http://shop:s3cret@", 1);
    let ok = job(&with_credentials("/ok"), 1);
    assert_eq!(kind(&deliverer.deliver_one(&ok).await), "ack");
    let received = sink.received().pop().unwrap();
    // "shop:s3cret"
    assert_eq!(received.header("authorization"), Some("Basic c2hvcDpzM2NyZXQ="));
    let line = log_line(&log, &ok.id);
    assert!(line.contains("shop:***@"), "{line}");
    assert!(!line.contains("s3cret"), "the password is not logged: {line}");

    let missing = job(&with_credentials("/missing"), 1);
    let Settlement::Dead { letter } = deliverer.deliver_one(&missing).await else {
        panic!("a 404 is final");
    };
    let url = letter.url.as_deref().unwrap();
    assert!(url.contains("shop:***@") && !url.contains("s3cret"), "{url}");
    assert!(!log_line(&log, &missing.id).contains("s3cret"));
}

#[tokio::test]
async fn a_url_with_no_place_to_go_is_final_and_never_sent_to_another_port() {
    let sink = Sink::start(by_path()).await;
    let dir = TempDir::new("deliver-one-invalid-url");
    let (deliverer, log) = deliverer(&dir, &[]);
    let port = sink
        .url("")
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u32>()
        .unwrap();
    for url in [
        // An empty placeholder empties the host; a value that is no host
        // name (`a b`, escaped) makes one no resolver reads.
        format!("http://{{missing}}:{port}/ok"),
        format!("http://{{v}}:{port}/ok"),
        // Out of range: once read as "no port", and sent to port 80.
        format!("http://127.0.0.1:{}/ok", port + 65536),
        "http://127.0.0.1:65536/ok".to_string(),
        // A zone id names an interface of this machine, not a destination.
        format!("http://[::1%25lo]:{port}/ok"),
    ] {
        let job = job(&url, 1);
        let settlement = deliverer.deliver_one(&job).await;
        assert_eq!(kind(&settlement), "dead final_status", "{url}");
        let line = log_line(&log, &job.id);
        assert!(line.contains(" status=invalid_url "), "{url}: {line}");
    }
    assert_eq!(sink.count(), 0, "no request was sent anywhere");
}

#[tokio::test]
async fn deliveries_to_one_host_share_a_kept_connection_and_name_the_host_as_curl_does() {
    let sink = Sink::start(by_path()).await;
    let dir = TempDir::new("deliver-one-kept");
    let (deliverer, _) = deliverer(&dir, &[]);
    for _ in 0..5 {
        assert_eq!(kind(&deliverer.deliver_one(&job(&sink.url("/ok"), 1)).await), "ack");
    }
    // A 404 is an answer read whole: its connection is kept too.
    assert_eq!(
        kind(&deliverer.deliver_one(&job(&sink.url("/missing"), 1)).await),
        "dead final_status"
    );
    assert_eq!(sink.count(), 6);
    assert_eq!(sink.connections(), 1, "every request went on the first connection");
    let port = sink.url("").rsplit(':').next().unwrap().to_string();
    for received in sink.received() {
        // The port is not the scheme's own, so it is part of Host; the
        // request target is the path alone.
        assert_eq!(received.header("host"), Some(format!("127.0.0.1:{port}").as_str()));
        assert!(received.path_and_query.starts_with('/'), "{received:?}");
    }

    // A server that closes after each answer gets a new connection for
    // each request, and no attempt fails for it.
    let closing = Sink::start(Arc::new(|_, _| Reply::status(200).header("connection", "close"))).await;
    for _ in 0..3 {
        assert_eq!(kind(&deliverer.deliver_one(&job(&closing.url("/x"), 1)).await), "ack");
    }
    assert_eq!(closing.connections(), 3);
}

#[tokio::test]
async fn a_connection_whose_answer_was_not_read_to_its_end_is_not_used_again() {
    // A body longer than deliver reads (256 KiB): the rest is not drained,
    // so that connection is closed and the next request opens another.
    let big = "x".repeat(300 * 1024);
    let sink = Sink::start(Arc::new(move |_, _| Reply {
        body: big.clone(),
        ..Reply::status(200)
    }))
    .await;
    let dir = TempDir::new("deliver-one-undrained");
    let (deliverer, _) = deliverer(&dir, &[]);
    for _ in 0..2 {
        assert_eq!(kind(&deliverer.deliver_one(&job(&sink.url("/big"), 1)).await), "ack");
    }
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn an_endpoint_that_chooses_http2_gets_every_request_on_one_connection() {
    let ca = TestCa::new();
    let sink = Sink::tls_h2(&ca).await;
    let dir = TempDir::new("deliver-one-h2");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let (deliverer, _) = deliverer(&dir, &[("DELIVER_EXTRA_CA_FILE", ca_file.to_str().unwrap())]);
    let first = deliverer.deliver_one(&job(&sink.url("/h2"), 1)).await;
    assert_eq!(kind(&first), "ack");
    // At once, on the kept connection.
    let jobs: Vec<Job> = (0..4).map(|_| job(&sink.url("/h2?v={v}"), 1)).collect();
    let settlements = futures_util::future::join_all(jobs.iter().map(|job| deliverer.deliver_one(job))).await;
    assert!(settlements.iter().all(|s| kind(s) == "ack"));
    assert_eq!(sink.count(), 5);
    assert_eq!(sink.connections(), 1, "HTTP/2 requests share the connection");
    let received = sink.received();
    assert!(
        received.iter().all(|r| r.header("host").is_none()),
        "HTTP/2 names the host in :authority"
    );
    assert!(received.iter().any(|r| r.path_and_query == "/h2?v=a%20b"));
}
