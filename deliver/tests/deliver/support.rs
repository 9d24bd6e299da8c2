//! Helpers for deliver's integration tests: the real `deliver` binary as a
//! child process (its log lines captured), an in-process ingest, and jobs
//! written straight onto the queue.

use common::job::{Job, Method};
use common::queue::QueueKeys;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use prometheus_parse::{Scrape, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::RedisServer;

/// Loopback, where the tests' sinks listen, opened for delivery: the
/// destination guard refuses it by default. Only the tests about the
/// guard itself run without it.
pub const LOOPBACK_SINKS: (&str, &str) = ("POSTBACK_ALLOW_DESTINATIONS", "127.0.0.0/8");

/// `POSTBACK_TEST_SHARDS=N` (scripts/test's second pass over the pipeline
/// and reliability tests): the services run with `POSTBACK_SHARDS=N`, and
/// the helpers below queue jobs on every shard and add up every shard's
/// lists, so that the same tests show the same behaviour sharded.
pub fn test_shards() -> usize {
    std::env::var("POSTBACK_TEST_SHARDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// The keys of every shard of the queue whose shard 0 is `keys`.
pub fn shards_of(keys: &QueueKeys) -> Vec<QueueKeys> {
    let n = test_shards();
    (0..n).map(|i| QueueKeys::shard(keys.tag(), i, n)).collect()
}

/// Settings that make a test run in seconds: a millisecond retry schedule,
/// short heartbeats, no jitter; and loopback sinks allowed.
pub fn fast_env(redis: &RedisServer) -> Vec<(String, String)> {
    fast_env_at(&redis.url())
}

/// [`fast_env`] for the queue at `url` (any `REDIS_URL`).
pub fn fast_env_at(url: &str) -> Vec<(String, String)> {
    let shards = test_shards().to_string();
    [
        ("POSTBACK_SHARDS", shards.as_str()),
        ("REDIS_URL", url),
        LOOPBACK_SINKS,
        ("DELIVER_RETRY_SCHEDULE", "50ms,100ms"),
        ("DELIVER_RETRY_JITTER_PCT", "0"),
        ("DELIVER_HEARTBEAT_MS", "100"),
        ("DELIVER_HEARTBEAT_TTL_MS", "500"),
        ("DELIVER_POLL_MS", "20"),
        ("DELIVER_TIMEOUT_MS", "2000"),
        ("DELIVER_SHUTDOWN_GRACE_MS", "3000"),
        ("DELIVER_ADMIN_BIND", "127.0.0.1:0"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A signer with no secrets: deliveries go unsigned (tests not about
/// signatures).
pub fn unsigned() -> std::sync::Arc<deliver::signing::Signer> {
    std::sync::Arc::new(deliver::signing::Signer::new(None, Duration::from_secs(1)))
}

/// A queue handle of the test's own on the queue at `url` (any
/// `REDIS_URL`): queue "default", one shard, a 2 s deadline.
pub fn queue_at(url: &str) -> common::queue::Queue {
    common::queue::Queue::new(&queue_config(url)).expect("a queue handle for the test")
}

/// The settings of [`queue_at`]'s handle: one shard of the default queue.
pub fn queue_config(url: &str) -> common::queue::QueueConfig {
    common::queue::QueueConfig {
        url: url.to_string(),
        name: "default".into(),
        timeout: Duration::from_secs(2),
        longest_block: Duration::ZERO,
        shards: 1,
        replica_acks: 0,
        replica_timeout: Duration::ZERO,
        tls: Default::default(),
    }
}

/// Replaces or adds `key` in an environment list.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

/// A running `deliver` process; killed on drop.
pub struct Deliver {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn capture(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

impl Deliver {
    /// Starts `deliver` with exactly `env` (plus PATH).
    pub fn start(env: &[(String, String)]) -> Deliver {
        Self::command(env, &[])
    }

    /// Runs `deliver` with arguments (e.g. `dead list`).
    pub fn command(env: &[(String, String)], args: &[&str]) -> Deliver {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deliver"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the deliver binary");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        capture(child.stdout.take().unwrap(), stdout.clone());
        capture(child.stderr.take().unwrap(), stderr.clone());
        Deliver { child, stdout, stderr }
    }

    /// Delivery log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Operational log lines (stderr) so far.
    pub fn messages(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The admin listener's base URL, once the process has logged it.
    pub fn admin_url(&self) -> Option<String> {
        self.messages().iter().find_map(|m| {
            let rest = m.split("admin listening on ").nth(1)?;
            Some(format!("http://{}", rest.split_whitespace().next()?))
        })
    }

    /// The sum of metric `name`'s samples whose labels include `labels`, on
    /// this process's /metrics now.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let admin = self.admin_url().expect("admin address logged");
        metric(&testkit::get(&format!("{admin}/metrics")).await.body, name, labels)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Deliver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A first-attempt job for `url` with `data`.
pub fn job(method: Method, url: &str, data: serde_json::Value) -> Job {
    Job {
        id: Job::new_id(),
        method,
        url: url.to_string(),
        data: serde_json::value::to_raw_value(&data).expect("data prints as JSON"),
        attempt: 1,
        enqueued_at: common::now_ms(),
        request_id: None,
        producer: None,
        headers: Default::default(),
    }
}

/// The `id` field of a job's data (tests give their jobs one to tell them
/// apart).
pub fn data_id(job: &Job) -> String {
    let data: serde_json::Value = serde_json::from_str(job.data.get()).expect("job data is JSON");
    data["id"].as_str().expect("the data has a string id").to_string()
}

/// Queues jobs (in chunks, as several producers would), each on the next
/// shard in turn when the tests run sharded.
pub async fn enqueue(conn: &mut MultiplexedConnection, keys: &QueueKeys, jobs: &[Job]) {
    let shards = shards_of(keys);
    for (i, job) in jobs.iter().enumerate().filter(|_| shards.len() > 1) {
        let shard = &shards[i % shards.len()];
        common::queue::push::push(conn, shard, &[job.encode()]).await.unwrap();
    }
    for chunk in jobs.chunks(1000).filter(|_| shards.len() == 1) {
        let encoded: Vec<String> = chunk.iter().map(Job::encode).collect();
        common::queue::push::push(conn, keys, &encoded).await.unwrap();
    }
}

/// Queues a raw string, as a foreign producer might.
pub async fn enqueue_raw(conn: &mut MultiplexedConnection, keys: &QueueKeys, raw: &str) {
    common::queue::push::push(conn, keys, &[raw.to_string()]).await.unwrap();
}

/// Every element of the list at `key`, head first.
pub async fn list(conn: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap()
}

/// Queue depths, of every shard.
pub async fn depths(conn: &mut MultiplexedConnection, keys: &QueueKeys) -> common::queue::Depths {
    let mut total = common::queue::Depths::default();
    for shard in shards_of(keys) {
        total.add(&common::queue::views::depths(conn, &shard).await.unwrap());
    }
    total
}

/// Total length of all in-flight lists, of every shard.
pub async fn in_flight(conn: &mut MultiplexedConnection, keys: &QueueKeys) -> usize {
    let mut total = 0;
    for shard in shards_of(keys) {
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&shard.workers)
            .query_async(conn)
            .await
            .unwrap();
        for w in workers {
            let n: usize = redis::cmd("LLEN")
                .arg(shard.inflight(&w))
                .query_async(conn)
                .await
                .unwrap();
            total += n;
        }
    }
    total
}

/// The `id` query parameter of each request the sink received.
pub fn ids_at(sink: &testkit::Sink) -> Vec<String> {
    sink.received()
        .iter()
        .filter_map(|r| r.query_param("id").map(str::to_string))
        .collect()
}

/// Starts an in-process ingest on a free port; returns its base URL.
pub fn spawn_ingest(redis: &RedisServer, extra: &[(&str, &str)]) -> String {
    spawn_ingest_at(&redis.url(), extra)
}

/// Starts an in-process ingest on the queue at `url` (any `REDIS_URL`).
pub fn spawn_ingest_at(url: &str, extra: &[(&str, &str)]) -> String {
    let shards = test_shards().to_string();
    // The first of a name wins: `extra` before the defaults.
    let mut env = extra.to_vec();
    env.extend_from_slice(&[
        ("POSTBACK_SHARDS", shards.as_str()),
        ("INGEST_BIND", "127.0.0.1:0"),
        ("REDIS_URL", url),
        ("INGEST_WORKERS", "1"),
        ("INGEST_ACCESS_LOG", "off"),
        LOOPBACK_SINKS,
        // deliver's tests send no producer keys.
        ("INGEST_AUTH", "off"),
    ]);
    let config = ingest::config::Config::from_source(env.as_slice()).expect("test ingest config");
    let app = ingest::startup::Application::build(&config).expect("ingest builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    base
}

/// Parses a logfmt line into (key, value) pairs, unquoting values.
pub fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => other,
                            });
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        pairs.push((key.to_string(), value));
        rest = next.trim_start();
    }
    pairs
}

/// The value of `key` in a logfmt line.
pub fn field(line: &str, key: &str) -> Option<String> {
    logfmt(line).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// CPU time (user + system) the process has used so far, from /proc.
pub fn cpu_time(process: &Deliver) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.pid())).expect("process gone");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports in clock ticks, 100 per second on every supported platform.
    Duration::from_millis(ticks * 10)
}

/// Parses Prometheus text and sums each metric's samples whose labels
/// include `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("metrics must parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Makes Redis refuse writes while it answers (`refuse`), or accept them
/// again: `min-replicas-to-write 1` with no replica, so that every write
/// gets NOREPLICAS, as a full disk's MISCONF would refuse it.
pub async fn refuse_writes(redis: &RedisServer, refuse: bool) {
    let _: () = deadpool_redis::redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg(if refuse { "1" } else { "0" })
        .query_async(&mut redis.connection().await)
        .await
        .expect("CONFIG SET min-replicas-to-write");
}
