//! One delivery cycle in-process: `consumer::step` takes a batch from a
//! real Redis, dispatches, delivers to a real sink and settles, and the
//! queue handle then shows where each job went.

use crate::support::{job, queue_at, unsigned, LOOPBACK_SINKS};
use common::job::{Job, Method};
use common::queue::{Depths, Place};
use deliver::config::Config;
use deliver::consumer::{step, Stepped};
use deliver::deliverer::Deliverer;
use deliver::delivery_log::DeliveryLog;
use deliver::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use testkit::{RedisServer, Reply, Sink, TempDir};

#[tokio::test]
async fn a_step_delivers_retries_parks_and_buries_and_redis_shows_each() {
    let redis = RedisServer::start();
    let sink = Sink::start(Arc::new(|req, _| {
        if req.path_and_query.starts_with("/broken") {
            Reply::status(500)
        } else {
            Reply::status(204)
        }
    }))
    .await;
    let dir = TempDir::new("step");
    // One request at a time per host: its gate holds five jobs (one
    // running, four waiting), so a sixth of the same host is parked.
    let env = [
        LOOPBACK_SINKS,
        ("DELIVER_PER_HOST_CONCURRENCY", "1"),
        ("DELIVER_RETRY_SCHEDULE", "1h"),
        ("DELIVER_RETRY_JITTER_PCT", "0"),
    ];
    let config = Config::from_source(env.as_slice()).expect("test settings are valid");
    let (log, _writer) = DeliveryLog::file(
        config.log_format,
        &dir.path().join("delivery.log"),
        config.log_max_bytes,
    )
    .expect("log opens");
    let deliverer = Deliverer::new(&config, log, Arc::new(Metrics::new()), unsigned()).expect("client builds");

    let queue = queue_at(&redis.url());
    let with_id = |path: &str, id: &str| {
        job(
            Method::Get,
            &sink.url(&format!("{path}?id={{id}}")),
            serde_json::json!({"id": id}),
        )
    };
    let broken = with_id("/broken", "broken");
    let jobs: Vec<Job> = vec![
        with_id("/ok", "ok1"),
        broken.clone(),
        with_id("/ok", "ok2"),
        with_id("/ok", "ok3"),
        with_id("/ok", "ok4"),
        with_id("/ok", "parked"),
    ];
    let mut queued: Vec<String> = jobs.iter().map(Job::encode).collect();
    queued.push("this is not a job".to_string());
    queue.push(&queued).await.expect("jobs are queued");

    let workers = queue.workers("step-test", Duration::from_secs(30));
    let worker = &workers[0];
    worker.heartbeat().await.expect("the worker registers");
    let stepped = tokio::time::timeout(Duration::from_secs(30), step(worker, &deliverer, 10))
        .await
        .expect("a step ends")
        .expect("the step reaches Redis");

    assert_eq!(
        stepped,
        Stepped {
            taken: 7,
            ran: 5,
            parked: 1,
            dead: 1,
            settled: 7
        }
    );
    let mut delivered = crate::support::ids_at(&sink);
    delivered.sort();
    assert_eq!(delivered, ["broken", "ok1", "ok2", "ok3", "ok4"]);

    assert_eq!(
        queue.depths().await.expect("depths"),
        Depths {
            ready: 0,
            retry: 1,
            dead: 1,
            parked: 1
        },
        "one retry, one dead letter, one parked job, nothing left ready"
    );
    match queue.find_job(&broken.id).await.expect("find") {
        Some((_, Place::Retry { job, .. })) => {
            assert_eq!(
                Job::decode(job.as_bytes()).expect("a job").attempt,
                2,
                "the retry is its second attempt"
            )
        }
        other => panic!("the failed job should wait for its retry, found {other:?}"),
    }
    match queue.find_job(&jobs[5].id).await.expect("find") {
        Some((_, Place::Parked { host })) => assert_eq!(host, sink.url("").trim_start_matches("http://")),
        other => panic!("the sixth job should be parked under its host, found {other:?}"),
    }
    let dead = queue.dead_letters(0).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    let letter = dead[0].1.as_ref().expect("the letter reads");
    assert_eq!(letter.reason.as_str(), "malformed");
    assert_eq!(letter.raw.as_deref(), Some("this is not a job"));
    for id in ["ok1", "ok2", "ok3", "ok4"] {
        let job = jobs.iter().find(|j| j.data.get().contains(id)).expect("a job of ours");
        assert_eq!(
            queue.find_job(&job.id).await.expect("find"),
            None,
            "{id} is acknowledged: gone"
        );
    }
    assert_eq!(worker.release().await.expect("release"), 0, "nothing is left in flight");
}
