//! `postback-sink`, run as its real binary: counting, and
//! `/_sink/wait`, which the benchmark waits on instead of polling.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::get;

/// A running sink; killed on drop.
struct SinkProcess {
    child: Child,
    base: String,
}

impl SinkProcess {
    fn start() -> SinkProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postback-sink"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start postback-sink");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read the sink's first line");
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        SinkProcess {
            base: format!("http://{addr}"),
            child,
        }
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn wait_answers_once_the_count_is_reached_and_times_out_otherwise() {
    let sink = SinkProcess::start();
    let base = sink.base.clone();

    // A wait started before the requests arrive...
    let waiting = tokio::spawn({
        let base = base.clone();
        async move { get(&format!("{base}/_sink/wait?count=3")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "the wait answered before any request arrived");
    for n in 0..3 {
        assert_eq!(get(&format!("{base}/hit?n={n}")).await.status, 200);
    }
    // ... answers once they have.
    let answered = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait did not answer within 10 s of the third request")
        .expect("wait task");
    assert_eq!((answered.status, answered.body.as_str()), (200, "3"));

    // A count that is not reached: 504 with the count so far, after the timeout.
    let short = get(&format!("{base}/_sink/wait?count=5&timeout_ms=100")).await;
    assert_eq!((short.status, short.body.as_str()), (504, "3"));
    // Waits and counts are not counted themselves.
    assert_eq!(get(&format!("{base}/_sink/count")).await.body, "3");

    let bad = get(&format!("{base}/_sink/wait?count=many")).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("usage"), "{}", bad.body);
}
