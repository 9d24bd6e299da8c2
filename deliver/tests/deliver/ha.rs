//! No single point of failure, and room to grow: the queue on a master
//! watched by Sentinel that is SIGKILLed under load, and one queue sharded
//! over a Redis Cluster that loses a master mid-drain. Real redis-server
//! processes (sentinels and cluster nodes included), the real deliver
//! binary, an in-process ingest and a real sink, all on loopback.

use crate::support::{fast_env, fast_env_at, set, spawn_ingest_at, Deliver};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{http, Cluster, RedisServer, SentinelSet, Sink};

/// The environment of a deliver process on the queue at `url`.
fn deliver_env(url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = fast_env_at(url);
    for (k, v) in extra {
        set(&mut env, k, v);
    }
    env
}

/// How often each `n` arrived at the sink.
fn arrivals(sink: &Sink) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for r in sink.received() {
        if let Some(n) = r.query_param("n").and_then(|n| n.parse().ok()) {
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    seen
}

fn body(sink: &Sink, ns: impl Iterator<Item = u64>) -> String {
    let data: Vec<String> = ns.map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    format!(
        r#"{{"endpoint":{{"method":"GET","url":"{}"}},"data":[{}]}}"#,
        sink.url("/ha?n={n}"),
        data.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_under_load_loses_no_accepted_job() {
    let mut set = SentinelSet::start();
    let sink = Sink::ok().await;
    let url = set.url();
    let ingest = spawn_ingest_at(
        &url,
        &[("INGEST_REPLICA_ACKS", "1"), ("INGEST_REPLICA_TIMEOUT_MS", "500")],
    );
    let env = deliver_env(&url, &[]);
    let workers = [Deliver::start(&env), Deliver::start(&env)];

    // Producers posting one job a request as fast as they can.
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let last_accept = Arc::new(Mutex::new(Instant::now()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..4 {
        let (accepted, refused, last_accept, stop, next) = (
            accepted.clone(),
            refused.clone(),
            last_accept.clone(),
            stop.clone(),
            next.clone(),
        );
        let (endpoint, template) = (format!("{ingest}/ingest"), body(&sink, std::iter::once(0)));
        producers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed) as u64;
                let request = template.replace(r#"{"n":0}"#, &format!(r#"{{"n":{n}}}"#));
                let answer = http("POST", &endpoint, &[("content-type", "application/json")], request).await;
                match answer.status {
                    202 => {
                        accepted.lock().unwrap().insert(n);
                        *last_accept.lock().unwrap() = Instant::now();
                    }
                    503 => {
                        assert!(answer.header("retry-after").is_some(), "a 503 says when to retry");
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected answer {other}: {}", answer.body),
                }
            }
        }));
    }
    testkit::wait_until(Duration::from_secs(20), "200 jobs accepted before the kill", || {
        let n = accepted.lock().unwrap().len();
        async move { n >= 200 }
    })
    .await;

    set.master.kill();
    let killed_at = Instant::now();
    // With the one replica promoted there is no replica left to
    // acknowledge writes: the old master comes back (as supervisord would
    // restart it), as a replica of the master the sentinels name now (what
    // the start script of a Sentinel set-up does, see docs/OPERATIONS.md).
    let promoted = testkit::wait_blocking(Duration::from_secs(15), || {
        set.master_port() == Some(set.replica.port())
    });
    assert!(promoted.is_ok(), "the sentinels promoted the replica within 15 s");
    let new_master = set.replica.port();
    set.master.restart_as_replica_of(new_master);
    testkit::wait_until(
        Duration::from_secs(15).saturating_sub(killed_at.elapsed()),
        "ingest answering 202 again within 15 s of the kill",
        || {
            let back = *last_accept.lock().unwrap() > killed_at + Duration::from_millis(1500);
            async move { back }
        },
    )
    .await;
    let recovered_in = killed_at.elapsed();
    // Some more load on the new master, then stop. The bound only catches
    // a hang: each request waits for a replica's acknowledgement, and on a
    // machine busy with the other tests 100 of them once took over 10 s.
    let before = accepted.lock().unwrap().len();
    testkit::wait_until(Duration::from_secs(30), "more jobs accepted on the new master", || {
        let n = accepted.lock().unwrap().len();
        async move { n >= before + 100 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.expect("a producer failed");
    }

    let accepted = accepted.lock().unwrap().clone();
    testkit::wait_until(Duration::from_secs(30), "every accepted job delivered", || {
        let seen = arrivals(&sink);
        let all = accepted.iter().all(|n| seen.contains_key(n));
        async move { all }
    })
    .await;
    let seen = arrivals(&sink);
    let twice = seen.values().filter(|&&c| c > 1).count();
    println!(
        "sentinel failover: {} jobs accepted, ingest back {} ms after the kill, {} requests answered 503 meanwhile, {} jobs arrived more than once",
        accepted.len(),
        recovered_in.as_millis(),
        refused.load(Ordering::Relaxed),
        twice
    );
    let logs: Vec<String> = workers.iter().flat_map(|w| w.messages()).collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("moved from") && l.contains(&set.replica.port().to_string())),
        "deliver logs the switch, naming the new master: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_queue_sharded_over_a_cluster_survives_losing_a_master() {
    let mut cluster = Cluster::start(3);
    // Slow answers, so the drain is still going when a master dies.
    let sink = Sink::start(Arc::new(|_, _| {
        testkit::Reply::status(200).after(Duration::from_millis(5))
    }))
    .await;
    let url = cluster.url();
    let ingest = spawn_ingest_at(&url, &[("POSTBACK_SHARDS", "6")]);

    // 3,000 jobs, 10 a request, with no deliver running.
    for request in 0..300u64 {
        let answer = http(
            "POST",
            &format!("{ingest}/ingest"),
            &[("content-type", "application/json")],
            body(&sink, request * 10..request * 10 + 10),
        )
        .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    for &port in &masters {
        assert!(
            cluster.dbsize(port) > 0,
            "the master on {port} holds some of the shards' keys"
        );
    }

    let env = deliver_env(&url, &[("POSTBACK_SHARDS", "6"), ("DELIVER_CONCURRENCY", "8")]);
    let _workers = [Deliver::start(&env), Deliver::start(&env)];
    sink.wait_for(500, Duration::from_secs(30)).await;
    let victim = *masters
        .iter()
        .max_by_key(|&&p| cluster.dbsize(p))
        .unwrap_or(&masters[0]);
    cluster.kill(victim);
    let killed_at = Instant::now();
    testkit::wait_until(
        Duration::from_secs(20),
        "a replica promoted in the dead master's place",
        || {
            let ok = cluster.master_ports().len() == 3 && cluster.is_ok();
            async move { ok }
        },
    )
    .await;
    let promoted_in = killed_at.elapsed();

    testkit::wait_until(Duration::from_secs(60), "all 3,000 jobs delivered", || {
        let n = arrivals(&sink).len();
        async move { n == 3000 }
    })
    .await;
    let seen = arrivals(&sink);
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (0..3000).collect::<Vec<_>>());
    println!(
        "cluster: master {victim} killed after {} deliveries, replica promoted in {} ms, {} jobs arrived more than once",
        500,
        promoted_in.as_millis(),
        seen.values().filter(|&&c| c > 1).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_beyond_a_lowered_shard_count_is_still_drained() {
    use crate::support::{enqueue, job};
    use common::job::Method;
    use common::queue::{keys, QueueKeys};
    let redis = RedisServer::start();
    let sink = Sink::ok().await;
    let mut conn = redis.connection().await;
    // The queue had three shards (recorded when they were in use); shard 2
    // still holds jobs.
    let old: Vec<QueueKeys> = (0..3).map(|i| QueueKeys::shard("default", i, 3)).collect();
    let tags: Vec<&str> = old.iter().map(QueueKeys::tag).collect();
    assert_eq!(keys::record_shards(&mut conn, &old[0], &tags).await.unwrap().len(), 3);
    let jobs: Vec<_> = (0..20)
        .map(|n| job(Method::Get, &sink.url(&format!("/left?n={n}")), serde_json::json!({})))
        .collect();
    enqueue(&mut conn, &old[2], &jobs).await;

    // deliver now runs with POSTBACK_SHARDS=1 and still drains shard 2.
    let mut env = fast_env(&redis);
    set(&mut env, "POSTBACK_SHARDS", "1");
    let worker = Deliver::start(&env);
    sink.wait_for(20, Duration::from_secs(20)).await;
    assert_eq!(arrivals(&sink).len(), 20);
    assert!(
        worker
            .messages()
            .iter()
            .any(|l| l.contains("consuming shard {default:2of3") && l.contains("too")),
        "deliver says it consumes the extra shard: {:#?}",
        worker.messages()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_s_depths_are_a_metric_labelled_with_its_tag() {
    use common::queue::QueueKeys;
    use deadpool_redis::redis;
    let redis = RedisServer::start();
    let mut env = fast_env(&redis);
    set(&mut env, "POSTBACK_SHARDS", "3");
    let worker = Deliver::start(&env);
    // Two dead letters on shard 1, one on shard 2, none on shard 0.
    let shards: Vec<QueueKeys> = (0..3).map(|i| QueueKeys::shard("default", i, 3)).collect();
    let mut conn = redis.connection().await;
    for (shard, letters) in [(1, 2), (2, 1)] {
        for n in 0..letters {
            let letter =
                format!(r#"{{"id":"x{n}","reason":"final_status","attempts":1,"last_status":"410","dead_at":1}}"#);
            let _: u64 = redis::cmd("LPUSH")
                .arg(&shards[shard].dead)
                .arg(letter)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let dead_of = |i: usize| [("shard", shards[i].tag().to_string()), ("state", "dead".to_string())];
    testkit::wait_until(
        Duration::from_secs(20),
        "each shard's dead letters in /metrics",
        || async {
            if worker.admin_url().is_none() {
                return false;
            }
            let mut counts = Vec::new();
            for i in 0..3 {
                let labels = dead_of(i);
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                counts.push(worker.metric("postback_deliver_shard_queue_jobs", &labels).await);
            }
            counts == [0.0, 2.0, 1.0]
        },
    )
    .await;
    assert_eq!(
        worker.metric("postback_deliver_queue_jobs", &[("state", "dead")]).await,
        3.0,
        "the unlabelled gauge is their sum"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_switch_the_sentinels_announce_is_followed_before_the_next_write() {
    use common::queue::QueueKeys;
    let set = SentinelSet::start();
    let queue = crate::support::queue_at(&set.url());
    let follower = queue.handle();
    tokio::spawn(async move { follower.follow_master_switches().await });
    queue
        .push(&["before".to_string()])
        .await
        .expect("a write to the first master");
    testkit::wait_until(
        Duration::from_secs(10),
        "the handle to listen to a sentinel",
        || async { set.subscribers() > 0 },
    )
    .await;

    // Graceful: the old master stays up, and takes writes until the
    // sentinels make it a replica, which then drops them.
    set.failover();
    testkit::wait_until(Duration::from_secs(20), "the announced switch to be heard", || async {
        queue.master_switches() >= 1
    })
    .await;
    assert_eq!(set.master_port(), Some(set.replica.port()), "the replica was promoted");
    queue
        .push(&["after".to_string()])
        .await
        .expect("the first write after the switch");
    let mut new_master = set.replica.connection().await;
    let ready = crate::support::list(&mut new_master, &QueueKeys::new("default").ready).await;
    assert!(
        ready.contains(&"after".to_string()),
        "the write went to the new master: {ready:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_demoted_by_hand_is_left_for_the_one_the_sentinels_name() {
    use deadpool_redis::redis;
    let set = SentinelSet::start();
    let sink = Sink::ok().await;
    let url = set.url();
    let ingest = spawn_ingest_at(&url, &[]);
    let worker = Deliver::start(&deliver_env(&url, &[]));
    let post = |n: u64| {
        let body = body(&sink, [n].into_iter());
        let ingest = ingest.clone();
        async move { http("POST", &format!("{ingest}/ingest"), &[], body).await.status }
    };
    assert_eq!(post(1).await, 202);
    sink.wait_for(1, Duration::from_secs(20)).await;

    // By hand: the replica becomes the master, the master its replica, and
    // the sentinels are told. No +switch-master is announced: the services
    // learn it from the old master's READONLY (and UNBLOCKED) answers.
    let (old, new) = (set.master.port(), set.replica.port());
    let mut conn = set.replica.connection().await;
    let _: String = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut conn = set.master.connection().await;
    let _: String = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new)
        .query_async(&mut conn)
        .await
        .unwrap();
    set.monitor(new);

    let mut n = 2;
    let started = Instant::now();
    while post(n).await != 202 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ingest did not find the new master"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sink.wait_for(2, Duration::from_secs(20)).await;
    assert!(
        arrivals(&sink).contains_key(&n),
        "the job accepted through the new master is delivered"
    );
    let moved = format!("moved from 127.0.0.1:{old} to 127.0.0.1:{new}");
    testkit::wait_until(Duration::from_secs(10), "deliver to log the move", || async {
        worker.messages().iter().any(|l| l.contains(&moved))
    })
    .await;
}
