//! The destination guard at connect time, in-process against real sinks
//! on loopback: with the default policy every way of writing a loopback
//! address reaches nothing and the job is dead at once; an allowlisted
//! `ip:port` is reached while another port of the same address is not.
//! (Private and metadata addresses beyond loopback are covered by the
//! policy's unit tests and ingest's: a test never sends traffic off
//! 127.0.0.0/8, even when what it tests is broken.)

use crate::support::unsigned;
use common::job::{Job, Method};
use common::queue::Settlement;
use deliver::config::Config;
use deliver::deliverer::Deliverer;
use deliver::delivery_log::DeliveryLog;
use deliver::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use testkit::{wait_blocking, Sink, TempDir};

fn deliverer(dir: &TempDir, allow: &str) -> (Deliverer, std::path::PathBuf) {
    let env = [
        ("POSTBACK_ALLOW_DESTINATIONS", allow),
        ("DELIVER_TIMEOUT_MS", "1000"),
        ("DELIVER_RETRY_SCHEDULE", "5s"),
    ];
    let config = Config::from_source(&env).expect("test settings are valid");
    let path = dir.path().join("delivery.log");
    let (log, _writer) = DeliveryLog::file(config.log_format, &path, config.log_max_bytes).unwrap();
    (
        Deliverer::new(&config, log, Arc::new(Metrics::new()), unsigned()).unwrap(),
        path,
    )
}

fn job(url: &str, data: serde_json::Value) -> Job {
    Job {
        id: Job::new_id(),
        method: Method::Get,
        url: url.to_string(),
        data: serde_json::value::to_raw_value(&data).unwrap(),
        attempt: 1,
        enqueued_at: common::now_ms(),
        request_id: None,
        producer: None,
        headers: Default::default(),
    }
}

fn logged(path: &std::path::Path, id: &str) -> String {
    let mut line = String::new();
    wait_blocking(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .find(|l| l.contains(id))
            .map(|l| line = l.to_string())
            .is_some()
    })
    .expect("the attempt is logged");
    line
}

#[tokio::test]
async fn every_form_of_a_loopback_address_is_blocked_by_default() {
    let sink = Sink::ok().await;
    let port = sink.url("").rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let dir = TempDir::new("guard-default");
    let (deliverer, log) = deliverer(&dir, "");
    let forms = [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://127.1:{port}/x"),
        format!("http://2130706433:{port}/x"),
        format!("http://0x7f000001:{port}/x"),
        format!("http://0177.0.0.1:{port}/x"),
        format!("http://0.0.0.0:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://[::1]:{port}/x"),
        // The host comes from the data: only the connector can tell.
        format!("http://{{host}}:{port}/x"),
        format!("https://127.0.0.1:{port}/x"),
    ];
    for url in &forms {
        let job = job(url, serde_json::json!({"host": "127.0.0.1"}));
        let settlement = deliverer.deliver_one(&job).await;
        let Settlement::Dead { letter } = settlement else {
            panic!("{url}: not dead at once: {settlement:?}");
        };
        assert_eq!(letter.reason.as_str(), "blocked_destination", "{url}");
        assert_eq!(letter.last_status, "blocked");
        let line = logged(&log, &job.id);
        assert!(line.contains(" status=blocked "), "{url}: {line}");
        assert!(
            line.contains(&format!(":{port} is not allowed")),
            "the address is named: {line}"
        );
    }
    assert_eq!(sink.count(), 0, "no request reached the sink");
}

#[tokio::test]
async fn an_allowlisted_ip_and_port_is_reached_and_another_port_is_not() {
    let (open, closed) = (Sink::ok().await, Sink::ok().await);
    let port_of = |s: &Sink| s.url("").rsplit(':').next().unwrap().to_string();
    let dir = TempDir::new("guard-allow");
    let allow = format!("127.0.0.1/32:{}", port_of(&open));
    let (deliverer, _) = deliverer(&dir, &allow);
    let delivered = deliverer
        .deliver_one(&job(&open.url("/ok"), serde_json::json!({})))
        .await;
    assert!(matches!(delivered, Settlement::Ack), "{delivered:?}");
    // The name resolves to the same allowed address and port.
    let by_name = format!("http://localhost:{}/ok", port_of(&open));
    assert!(matches!(
        deliverer.deliver_one(&job(&by_name, serde_json::json!({}))).await,
        Settlement::Ack
    ));
    let refused = deliverer
        .deliver_one(&job(&closed.url("/no"), serde_json::json!({})))
        .await;
    assert!(
        matches!(&refused, Settlement::Dead { letter } if letter.reason.as_str() == "blocked_destination"),
        "{refused:?}"
    );
    assert_eq!((open.count(), closed.count()), (2, 0));
}
