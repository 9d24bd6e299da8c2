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

/// The take that starts each cycle: one round trip takes a batch, or waits
/// in Redis for the first job of an empty queue and takes whatever came
/// with it; a Redis that lost its scripts (a restart) costs nothing.
#[tokio::test]
async fn a_waiting_take_gets_a_batch_waits_for_the_first_job_and_survives_a_lost_script_cache() {
    let redis = RedisServer::start();
    let mut queue_config = crate::support::queue_config(&redis.url());
    queue_config.longest_block = Duration::from_secs(5);
    let queue = common::queue::Queue::new(&queue_config).expect("a queue handle");
    let workers = queue.workers("take-test", Duration::from_secs(30));
    let worker = workers[0].handle();
    let encoded = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| job(Method::Get, "http://example.test/", serde_json::json!({"i": i})).encode())
            .collect()
    };

    // A backlog: the oldest first, no more than asked, in one call.
    let queued = encoded(5);
    queue.push(&queued).await.expect("queued");
    let taken = worker.take_waiting(3, Duration::from_secs(1)).await.expect("the take");
    let taken: Vec<String> = taken.into_iter().map(|j| String::from_utf8(j).unwrap()).collect();
    assert_eq!(taken, queued[..3], "the three oldest, oldest first");
    assert_eq!(queue.depths().await.expect("depths").ready, 2);
    let job = Job::decode(taken[0].as_bytes()).expect("a job");
    assert_eq!(
        queue.find_job(&job.id).await.expect("find"),
        Some((
            "default".to_string(),
            Place::InFlight {
                worker: worker.id().to_string()
            }
        )),
        "a taken job is in the worker's in-flight list"
    );
    let rest = worker.take_waiting(10, Duration::from_secs(1)).await.expect("the take");
    assert_eq!(rest.len(), 2, "what was left");

    // An empty queue: the take waits until jobs arrive, and the jobs that
    // arrived together come in the same call (the first by BLMOVE, the
    // rest by the take pipelined behind it).
    let waiting = tokio::spawn({
        let worker = worker.clone();
        async move { worker.take_waiting(10, Duration::from_secs(5)).await }
    });
    let mut conn = redis.connection().await;
    testkit::wait::wait_until(Duration::from_secs(5), "the take to wait in Redis", || {
        let mut conn = conn.clone();
        async move {
            testkit::redis::redis_info(&mut conn, "clients", "blocked_clients")
                .await
                .as_deref()
                == Some("1")
        }
    })
    .await;
    let arrived = encoded(4);
    queue.push(&arrived).await.expect("queued");
    let taken = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting take returns once jobs arrive")
        .expect("the task ends")
        .expect("the take");
    let taken: Vec<String> = taken.into_iter().map(|j| String::from_utf8(j).unwrap()).collect();
    assert_eq!(
        taken, arrived,
        "the four that arrived together, in one call, oldest first"
    );

    // Nothing arrives: the wait ends with nothing taken.
    let none = worker
        .take_waiting(10, Duration::from_millis(100))
        .await
        .expect("the take");
    assert!(none.is_empty());

    // Redis forgot its scripts: the rest's take loads it and goes again.
    let () = deadpool_redis::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("SCRIPT FLUSH");
    let queued = encoded(3);
    queue.push(&queued).await.expect("queued");
    let taken = worker.take_waiting(10, Duration::from_secs(1)).await.expect("the take");
    assert_eq!(taken.len(), 3, "every job, the script loaded again");
    assert_eq!(queue.depths().await.expect("depths").ready, 0);
}
