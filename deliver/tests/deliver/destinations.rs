//! Destinations as partners, with real Redis, real sinks and real deliver
//! processes: the circuit breaker holds a failing partner's jobs with no
//! attempt spent and probes until it is back (a SIGKILL meanwhile loses
//! nothing); a `Retry-After` keeps the whole destination quiet; a disabled
//! destination's jobs become dead letters that a replay delivers after
//! `enable`; a rate limit holds at the receiver over two processes while
//! an unlimited neighbour goes at full speed.

use crate::support::{data_id, depths, enqueue, fast_env, ids_at, job, set, Deliver};
use common::job::Method;
use common::queue::destinations::{DestinationState, STATE_KEY};
use common::queue::QueueKeys;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use serde_json::json;
use std::time::{Duration, Instant};
use testkit::{switched, wait_until, RedisServer, Reply, Sink};

const LIMIT: Duration = Duration::from_secs(30);

/// The shared state of `destination`, if it is not closed.
async fn state(conn: &mut MultiplexedConnection, destination: &str) -> Option<DestinationState> {
    let json: Option<String> = redis::cmd("HGET")
        .arg(STATE_KEY)
        .arg(destination)
        .query_async(conn)
        .await
        .unwrap();
    json.map(|j| serde_json::from_str(&j).expect("a state the scripts wrote"))
}

/// The `host:port` of a sink, as deliver names its destination.
fn destination(sink: &Sink) -> String {
    sink.url("").trim_start_matches("http://").to_string()
}

/// Runs a deliver command to its end: (exit code, stdout, stderr).
fn command(env: &[(String, String)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut run = Deliver::command(env, args);
    let code = run.wait_exit(LIMIT).and_then(|s| s.code());
    (code, run.log().join("\n"), run.messages().join("\n"))
}

#[tokio::test]
async fn an_open_breaker_holds_jobs_with_no_attempt_spent_and_probes_until_the_partner_is_back() {
    let redis = RedisServer::start();
    let (responder, recovered) = switched(Reply::status(500), Reply::status(204));
    let sink = Sink::start(responder).await;
    let mut env = fast_env(&redis);
    // Four attempts at most, a second apart: without the breaker every job
    // would be a dead letter within about four seconds; the breaker opens
    // at the first report after the first attempts, within a second.
    set(&mut env, "DELIVER_RETRY_SCHEDULE", "1s,1s,1s");
    set(&mut env, "DELIVER_BREAKER_MIN_ATTEMPTS", "5");
    set(&mut env, "DELIVER_BREAKER_WINDOW", "30s");
    set(&mut env, "DELIVER_BREAKER_COOLDOWN", "1s");
    let mut first = Deliver::start(&env);
    let second = Deliver::start(&env);
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let jobs: Vec<_> = (0..60)
        .map(|n| job(Method::Get, &sink.url("/?id={id}"), json!({"id": format!("j{n}")})))
        .collect();
    enqueue(&mut conn, &keys, &jobs).await;

    let host = destination(&sink);
    wait_until(LIMIT, "the breaker to open", || async {
        matches!(
            state(&mut redis.connection().await, &host).await,
            Some(DestinationState::Open { .. } | DestinationState::HalfOpen { .. })
        )
    })
    .await;
    wait_until(LIMIT, "the other process to show the destination held", || async {
        let name = "postback_deliver_destination_state";
        let open = second.metric(name, &[("destination", &host), ("state", "open")]).await;
        let half_open = second
            .metric(name, &[("destination", &host), ("state", "half_open")])
            .await;
        open + half_open == 1.0
    })
    .await;

    // Two probes (cooldown 1 s, then 2 s): each a single request, every
    // other job held. The count starts once both processes have heard.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sink.count();
    let probes_seen = || async {
        let mut c = redis.connection().await;
        match state(&mut c, &host).await {
            Some(DestinationState::Open { cooldown_ms, .. }) => cooldown_ms >= 4000,
            _ => false,
        }
    };
    wait_until(LIMIT, "two failed probes (the cooldown doubled twice)", probes_seen).await;
    let during = sink.count() - before;
    assert!(
        during <= 2,
        "{during} requests while the breaker was open: only probes may go"
    );
    assert_eq!(
        depths(&mut conn, &keys).await.dead,
        0,
        "no job ran out of attempts while its destination was held"
    );
    // The on-call view says why the parked jobs wait.
    let (code, glance, err) = command(&env, &["queue"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        glance.contains(&format!("{host}  (held: {host}'s breaker is")),
        "`deliver queue` does not say the jobs are held by the breaker:\n{glance}"
    );

    // A crash meanwhile loses nothing: the held jobs are parked in Redis.
    first.kill();
    let _third = Deliver::start(&env);
    let back = Instant::now();
    recovered.store(true, std::sync::atomic::Ordering::SeqCst);
    // Every answer from `back` on is a 204.
    let delivered = || {
        sink.received()
            .iter()
            .zip(ids_at(&sink))
            .filter(|(request, _)| request.at >= back)
            .map(|(_, id)| id)
            .collect::<std::collections::HashSet<String>>()
    };
    wait_until(LIMIT, "every job delivered once the partner is back", || async {
        let delivered = delivered();
        jobs.iter().all(|j| delivered.contains(&data_id(j)))
            && depths(&mut redis.connection().await, &keys).await.parked == 0
    })
    .await;
    assert_eq!(depths(&mut conn, &keys).await.dead, 0);
    // The first request back is the probe; the held jobs then ramp up (10
    // a second, doubling), not all at once.
    let since_back: Vec<Instant> = sink.received().iter().map(|r| r.at).filter(|at| *at >= back).collect();
    let first_second = since_back[1..]
        .iter()
        .filter(|at| at.duration_since(since_back[0]) <= Duration::from_secs(1))
        .count();
    assert!(
        first_second <= 20,
        "{first_second} of {} held jobs went in the first second back (the ramp's first step is 10 a second, burst 10)",
        jobs.len()
    );
    wait_until(LIMIT, "the ramp to end: the destination closed", || async {
        state(&mut redis.connection().await, &host).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_breaker_open_past_disable_after_disables_its_destination() {
    let redis = RedisServer::start();
    let sink = Sink::start(std::sync::Arc::new(|_, _| Reply::status(503))).await;
    let mut env = fast_env(&redis);
    set(&mut env, "DELIVER_RETRY_SCHEDULE", "1s,1s,1s");
    set(&mut env, "DELIVER_BREAKER_MIN_ATTEMPTS", "3");
    set(&mut env, "DELIVER_BREAKER_COOLDOWN", "300ms");
    set(&mut env, "DELIVER_DISABLE_AFTER", "2s");
    let deliver = Deliver::start(&env);
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let jobs: Vec<_> = (0..10)
        .map(|n| job(Method::Get, &sink.url("/?id={id}"), json!({"id": format!("x{n}")})))
        .collect();
    enqueue(&mut conn, &keys, &jobs).await;
    let host = destination(&sink);
    wait_until(LIMIT, "the destination disabled by its breaker", || async {
        matches!(
            state(&mut redis.connection().await, &host).await,
            Some(DestinationState::Disabled { by, .. }) if by == "breaker"
        )
    })
    .await;
    wait_until(LIMIT, "every held job a dead letter", || async {
        depths(&mut redis.connection().await, &keys).await.dead == jobs.len() as u64
    })
    .await;
    let (_, dead, _) = command(&env, &["dead", "list", "--reason", "destination_disabled", "--json"]);
    assert_eq!(dead.lines().count(), jobs.len(), "{dead}");
    wait_until(
        LIMIT,
        "one log line saying it is disabled and how to undo it",
        || async {
            deliver.messages().iter().any(|l| {
                l.contains(&format!("destination {host}: disabled")) && l.contains("deliver destinations enable")
            })
        },
    )
    .await;
}

/// Two processes: the one that meets the 429 pauses the destination for
/// both, and neither sends a request to it before the pause is over,
/// jobs queued after the 429 included.
#[tokio::test]
async fn a_retry_after_keeps_the_whole_destination_quiet_for_that_long_in_every_process() {
    let redis = RedisServer::start();
    let sink = Sink::start(std::sync::Arc::new(|req, _| {
        if req.path_and_query.contains("id=first") {
            Reply::status(429).header("retry-after", "5")
        } else {
            Reply::status(204)
        }
    }))
    .await;
    let env = fast_env(&redis);
    let deliver = [Deliver::start(&env), Deliver::start(&env)];
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let url = sink.url("/?id={id}");
    enqueue(&mut conn, &keys, &[job(Method::Get, &url, json!({"id": "first"}))]).await;
    sink.wait_for(1, LIMIT).await;
    let asked_at = sink.received()[0].at;
    let host = destination(&sink);
    // Each process holds once its copy of the destinations has the pause
    // (within a second of the 429; the test waits for both).
    wait_until(LIMIT, "both processes to show the destination paused", || async {
        let mut paused = 0.0;
        for process in &deliver {
            paused += process
                .metric(
                    "postback_deliver_destination_state",
                    &[("destination", &host), ("state", "paused")],
                )
                .await;
        }
        paused == 2.0
    })
    .await;
    // Queued after the 429, one at a time, until each process has held
    // one (a blocked take that finds several jobs would take them all).
    let mut later = 0;
    wait_until(LIMIT, "each process to hold a job of the paused destination", || {
        later += 1;
        let job = job(Method::Get, &url, json!({"id": format!("later{later}")}));
        let (mut conn, keys, deliver) = (conn.clone(), &keys, &deliver);
        async move {
            enqueue(&mut conn, keys, &[job]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut each = true;
            for process in deliver {
                each &= process.metric("postback_deliver_held_total", &[]).await >= 1.0;
            }
            each
        }
    })
    .await;
    sink.wait_for(1 + later, LIMIT).await;
    for request in &sink.received()[1..] {
        let quiet = request.at.duration_since(asked_at);
        assert!(
            quiet >= Duration::from_millis(4900),
            "{} arrived {quiet:?} after the Retry-After: 5",
            request.path_and_query
        );
    }
}

#[tokio::test]
async fn a_disabled_destination_s_jobs_are_dead_letters_that_a_replay_delivers_after_enable() {
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let env = fast_env(&redis);
    let host = destination(&sink);
    let (code, out, err) = command(&env, &["destinations", "disable", &host]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("disabled"), "{out}");
    let (_, listed, _) = command(&env, &["destinations", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("one JSON line");
    assert_eq!(
        (listed["destination"].as_str(), listed["state"].as_str()),
        (Some(host.as_str()), Some("disabled"))
    );

    let _deliver = Deliver::start(&env);
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let jobs: Vec<_> = (0..3)
        .map(|n| job(Method::Get, &sink.url("/?id={id}"), json!({"id": format!("d{n}")})))
        .collect();
    enqueue(&mut conn, &keys, &jobs).await;
    wait_until(LIMIT, "three dead letters", || async {
        depths(&mut redis.connection().await, &keys).await.dead == 3
    })
    .await;
    assert_eq!(sink.count(), 0, "nothing is sent to a disabled destination");
    let (_, dead, _) = command(&env, &["dead", "list", "--reason", "destination_disabled"]);
    assert!(dead.contains("3 of 3 dead letters"), "{dead}");

    let (code, _, err) = command(&env, &["destinations", "enable", &host]);
    assert_eq!(code, Some(0), "{err}");
    let started = Instant::now();
    let (code, _, err) = command(&env, &["dead", "replay", "--reason", "destination_disabled"]);
    assert_eq!(code, Some(0), "{err}");
    sink.wait_for(3, LIMIT).await;
    let mut ids = ids_at(&sink);
    ids.sort();
    assert_eq!(ids, ["d0", "d1", "d2"], "replayed within {:?}", started.elapsed());
}

#[tokio::test]
async fn a_rate_limit_holds_at_the_receiver_over_two_processes_and_spares_the_neighbours() {
    let redis = RedisServer::start();
    let limited = Sink::ok().await;
    let neighbour = Sink::ok().await;
    let env = fast_env(&redis);
    let host = destination(&limited);
    let (code, out, err) = command(&env, &["destinations", "set", &host, "--rate", "20/s", "--burst", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("20/s burst 2"), "{out}");
    let (_, listed, _) = command(&env, &["destinations", "list"]);
    assert!(listed.contains(&format!("{host}  closed  20/s burst 2")), "{listed}");

    let _first = Deliver::start(&env);
    let _second = Deliver::start(&env);
    let keys = QueueKeys::new("default");
    let mut conn = redis.connection().await;
    let (limited_jobs, neighbour_jobs) = (240, 200);
    let jobs: Vec<_> = (0..limited_jobs)
        .map(|n| job(Method::Get, &limited.url("/?id={id}"), json!({"id": format!("l{n}")})))
        .chain(
            (0..neighbour_jobs).map(|n| job(Method::Get, &neighbour.url("/?id={id}"), json!({"id": format!("n{n}")}))),
        )
        .collect();
    enqueue(&mut conn, &keys, &jobs).await;

    neighbour.wait_for(neighbour_jobs, LIMIT).await;
    let limited_by_then = limited.count();
    assert!(
        limited_by_then < limited_jobs / 2,
        "the neighbour's {neighbour_jobs} jobs were delivered while the limited destination had had {limited_by_then}"
    );
    limited.wait_for(limited_jobs, LIMIT).await;
    let arrivals: Vec<Instant> = limited.received().iter().map(|r| r.at).collect();
    // Over any 10 s at the receiver, at most 10 % above the rate's 200.
    let busiest = arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(10))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 220, "{busiest} requests within 10 s at 20/s");
    let span = arrivals.last().unwrap().duration_since(arrivals[0]);
    assert!(
        span >= Duration::from_secs(11),
        "{limited_jobs} requests at 20/s (burst 2) took only {span:?}"
    );
}

#[tokio::test]
async fn a_destination_and_its_limits_are_named_as_the_help_says_or_refused() {
    let redis = RedisServer::start();
    let env = fast_env(&redis);
    for bad in ["partner.example", "https://partner.example:443", "partner.example:lots"] {
        let (code, _, err) = command(&env, &["destinations", "disable", bad]);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(err.contains("host:port") || err.contains("port"), "{bad}: {err}");
    }
    for bad in [
        &["--rate", "lots"][..],
        &["--rate", "5/h"],
        &["--burst", "3"],
        &["--concurrency", "0"],
    ] {
        let args: Vec<&str> = ["destinations", "set", "partner.example:443"]
            .iter()
            .chain(bad)
            .copied()
            .collect();
        let (code, _, err) = command(&env, &args);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(err.starts_with("error: "), "{bad:?}: {err}");
    }
    let (code, _, err) = command(&env, &["destinations", "set", "partner.example:443"]);
    assert_eq!(code, Some(1), "nothing to set: {err}");
    assert!(err.contains("--rate"), "{err}");
}
