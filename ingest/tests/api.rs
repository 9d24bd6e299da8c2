//! Ingest against a real Redis and a real HTTP client: what it accepts,
//! what it refuses, and how it behaves when Redis goes away.

use common::job::{Job, Method};
use common::queue::QueueKeys;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use ingest::config::Config;
use ingest::startup::Application;
use std::time::{Duration, Instant};
use testkit::{get, http, post, wait_until, RedisServer};

const SAMPLE: &str = r#"{"endpoint":{"method":"GET","url":"http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}"},"data":[{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}]}"#;

struct TestApp {
    base: String,
    keys: QueueKeys,
    redis: RedisServer,
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn conn(&self) -> MultiplexedConnection {
        self.redis.connection().await
    }

    async fn queued(&self) -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(&self.keys.ready)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }
}

/// An in-process ingest on a Redis of its own. Producer keys are off
/// (`INGEST_AUTH=off`) unless `extra` says otherwise: the tests that are
/// not about keys send none. `extra` wins over these defaults.
async fn spawn_app(extra: &[(&str, &str)]) -> TestApp {
    spawn_app_on(RedisServer::start(), extra).await
}

async fn spawn_app_on(redis: RedisServer, extra: &[(&str, &str)]) -> TestApp {
    let (base, config) = spawn_ingest_at(&redis.url(), extra);
    TestApp {
        base,
        keys: QueueKeys::new(&config.queue),
        redis,
    }
}

/// An in-process ingest on the Redis at `redis_url`: its base URL.
fn spawn_ingest_at(redis_url: &str, extra: &[(&str, &str)]) -> (String, Config) {
    let mut env = extra.to_vec();
    env.extend_from_slice(&[
        ("INGEST_BIND", "127.0.0.1:0"),
        ("REDIS_URL", redis_url),
        ("INGEST_WORKERS", "2"),
        ("INGEST_ACCESS_LOG", "off"),
        ("INGEST_AUTH", "off"),
    ]);
    let config = Config::from_source(env.as_slice()).expect("test config");
    let app = Application::build(&config).expect("ingest builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    (base, config)
}

#[tokio::test]
async fn the_sample_is_accepted_and_queued_as_one_job() {
    let app = spawn_app(&[]).await;
    let response = post(&app.url("/ingest"), SAMPLE).await;
    assert_eq!(response.status, 202, "{}", response.body);
    let body = response.json();
    assert_eq!(body["accepted"], 1);
    let id = body["ids"][0].as_str().unwrap();

    let queued = app.queued().await;
    assert_eq!(queued.len(), 1);
    let job = Job::decode(queued[0].as_bytes()).unwrap();
    assert_eq!(job.id, id);
    assert_eq!(job.method, Method::Get);
    assert_eq!(
        job.url,
        "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}"
    );
    let data: serde_json::Value = serde_json::from_str(job.data.get()).unwrap();
    assert_eq!(data["location"], "https://blog.golang.org/gopher/gopher.png");
    assert_eq!(job.attempt, 1);
    assert!(job.enqueued_at > 0);
}

#[tokio::test]
async fn the_old_php_routes_accept_the_same_request() {
    let app = spawn_app(&[]).await;
    for path in ["/ingest.php", "/i"] {
        let response = post(&app.url(path), SAMPLE).await;
        assert_eq!(response.status, 202, "{path}: {}", response.body);
    }
    assert_eq!(app.queued().await.len(), 2);
}

#[tokio::test]
async fn a_thousand_items_are_queued_in_order_with_distinct_ids() {
    let app = spawn_app(&[]).await;
    let items: Vec<String> = (0..1000).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    let body = format!(
        r#"{{"endpoint":{{"method":"post","url":"http://h/{{n}}"}},"data":[{}]}}"#,
        items.join(",")
    );
    let response = post(&app.url("/ingest"), body).await;
    assert_eq!(response.status, 202, "{}", response.body);
    let ids: Vec<String> = serde_json::from_value(response.json()["ids"].clone()).unwrap();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 1000);
    // Workers take from the right (RPOP, BLMOVE RIGHT), so the list read
    // right to left is the order of delivery: the items' order, each with
    // the id the answer gave it at its place.
    let mut queued = app.queued().await;
    assert_eq!(queued.len(), 1000);
    queued.reverse();
    for (n, (raw, id)) in queued.iter().zip(&ids).enumerate() {
        let job = Job::decode(raw.as_bytes()).unwrap();
        assert_eq!(job.data.get(), format!(r#"{{"n":{n}}}"#), "item {n} out of order");
        assert_eq!(&job.id, id, "item {n} has another item's id");
    }
}

#[tokio::test]
async fn bad_input_gets_a_json_error_and_queues_nothing() {
    let app = spawn_app(&[("INGEST_MAX_BODY_BYTES", "2000"), ("INGEST_MAX_ITEMS", "3")]).await;
    let cases: Vec<(String, u16, &str)> = vec![
        ("this is not json".into(), 400, "invalid_json"),
        ("[1,2]".into(), 400, "not_an_object"),
        (r#"{"data":[{}]}"#.into(), 400, "missing_endpoint"),
        (r#"{"endpoint":[],"data":[{}]}"#.into(), 400, "invalid_endpoint"),
        (
            r#"{"endpoint":{"method":"TRACE","url":"http://h/"},"data":[{}]}"#.into(),
            400,
            "invalid_method",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"mailto:x@y"},"data":[{}]}"#.into(),
            400,
            "invalid_url",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http:///nohost"},"data":[{}]}"#.into(),
            400,
            "invalid_url",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"}}"#.into(),
            400,
            "missing_data",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":"x"}"#.into(),
            400,
            "invalid_data",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[]}"#.into(),
            400,
            "empty_data",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},1]}"#.into(),
            400,
            "invalid_item",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"a":1},{"b":1,"b":2}]}"#.into(),
            400,
            "duplicate_key",
        ),
        // A port out of range was once read as no port, and sent to 80.
        (
            r#"{"endpoint":{"method":"GET","url":"http://h:84313/x"},"data":[{}]}"#.into(),
            400,
            "invalid_url",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h:65536/"},"data":[{}]}"#.into(),
            400,
            "invalid_url",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://[::1%25lo]:9/x"},"data":[{}]}"#.into(),
            400,
            "invalid_url",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://[fe80::1%lo]/"},"data":[{}]}"#.into(),
            400,
            "invalid_url",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/?a={a}"},"data":[{"a":"\ud800"}]}"#.into(),
            400,
            "invalid_item",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/","headers":{"Proxy-Authorization":"Basic eDp5"}},"data":[{}]}"#
                .into(),
            400,
            "invalid_header",
        ),
        (
            r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},{},{},{}]}"#.into(),
            413,
            "too_many_items",
        ),
        (
            format!(
                r#"{{"endpoint":{{"method":"GET","url":"http://h/"}},"data":[{{"x":"{}"}}]}}"#,
                "a".repeat(3000)
            ),
            413,
            "body_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let response = post(&app.url("/ingest"), body.clone()).await;
        assert_eq!(response.status, status, "{code}: {}", response.body);
        let json = response.json();
        assert_eq!(json["error"]["code"], code, "{}", response.body);
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(app.queued().await.is_empty(), "a refused request queued something");
}

#[tokio::test]
async fn other_methods_get_405_and_unknown_routes_404_in_json() {
    let app = spawn_app(&[]).await;
    let response = get(&app.url("/ingest")).await;
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
    assert_eq!(response.json()["error"]["code"], "method_not_allowed");
    let response = http("PUT", &app.url("/i"), &[], "").await;
    assert_eq!(response.status, 405);
    let response = get(&app.url("/nope")).await;
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"]["code"], "not_found");
    // The pages answer HEAD as GET, without the body; other methods 405.
    for path in ["/metrics", "/health", "/stats", "/dashboard"] {
        let got = get(&app.url(path)).await;
        let head = http("HEAD", &app.url(path), &[], "").await;
        assert_eq!((head.status, got.status), (200, 200), "HEAD {path}: {}", head.body);
        assert!(head.body.is_empty(), "HEAD {path} has a body: {}", head.body);
        assert_eq!(head.header("content-type"), got.header("content-type"), "{path}");
        let refused = http("POST", &app.url(path), &[], "").await;
        assert_eq!(refused.status, 405, "POST {path}");
        assert_eq!(refused.header("allow"), Some("GET, HEAD"), "{path}");
        assert_eq!(refused.json()["error"]["code"], "method_not_allowed", "{path}");
    }
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_at_the_body_deadline_with_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(&[("INGEST_BODY_TIMEOUT_MS", "1000")]).await;
    let stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut from_ingest, mut to_ingest) = stream.into_split();
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        SAMPLE.len()
    );
    to_ingest.write_all(head.as_bytes()).await.unwrap();
    // A byte every 200 ms: no gap between reads is long, but the whole
    // body would take about a minute.
    let trickle = tokio::spawn(async move {
        for byte in SAMPLE.as_bytes() {
            if to_ingest.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"}") {
            match from_ingest.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("ingest answers before the body is in");
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cut off at the deadline, not at the body's end"
    );
    assert!(app.queued().await.is_empty(), "nothing of the cut request was queued");
}

#[tokio::test]
async fn a_refusal_of_too_many_headers_says_how_many_there_are() {
    let app = spawn_app(&[]).await;
    let headers: Vec<String> = (0..100).map(|i| format!(r#""X-H{i}":"v""#)).collect();
    let body = format!(
        r#"{{"endpoint":{{"method":"GET","url":"http://h/","headers":{{{}}}}},"data":[{{}}]}}"#,
        headers.join(",")
    );
    let response = post(&app.url("/ingest"), body).await;
    assert_eq!(response.status, 400, "{}", response.body);
    let message = response.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("has 100 headers"), "{message}");
}

#[tokio::test]
async fn without_redis_ingest_answers_503_quickly_and_recovers_without_restart() {
    let mut app = spawn_app(&[("INGEST_REDIS_TIMEOUT_MS", "500")]).await;
    assert_eq!(get(&app.url("/health")).await.status, 200);

    app.redis.kill();
    let started = Instant::now();
    let response = post(&app.url("/ingest"), SAMPLE).await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.json()["error"]["code"], "queue_unavailable");
    assert!(response.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503 took {:?}",
        started.elapsed()
    );
    let health = get(&app.url("/health")).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["redis"], "down");

    app.redis.restart();
    let base = app.base.clone();
    wait_until(Duration::from_secs(15), "ingest to accept again", || {
        let url = format!("{base}/ingest");
        async move { post(&url, SAMPLE).await.status == 202 }
    })
    .await;
    assert_eq!(get(&app.url("/health")).await.status, 200);
    assert_eq!(app.queued().await.len(), 1);
}

#[tokio::test]
async fn a_queue_over_its_limit_gets_503_queue_full() {
    let app = spawn_app(&[("INGEST_MAX_QUEUE", "5")]).await;
    let six = r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},{},{},{},{},{}]}"#;
    assert_eq!(post(&app.url("/ingest"), six).await.status, 202);
    let response = post(&app.url("/ingest"), SAMPLE).await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.json()["error"]["code"], "queue_full");
    assert!(response.header("retry-after").is_some());
    assert_eq!(app.queued().await.len(), 6);
}

/// `total_connections_received` from Redis' INFO.
async fn connections_received(conn: &mut MultiplexedConnection) -> u64 {
    testkit::redis_info(conn, "stats", "total_connections_received")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_full_redis_gets_503_without_a_new_connection_per_request() {
    let app = spawn_app(&[]).await;
    assert_eq!(post(&app.url("/ingest"), SAMPLE).await.status, 202);
    let mut conn = app.conn().await;
    // Full: every command that adds data is refused (policy noeviction).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = connections_received(&mut conn).await;
    for _ in 0..30 {
        let response = post(&app.url("/ingest"), SAMPLE).await;
        assert_eq!(response.status, 503, "{}", response.body);
        assert_eq!(response.json()["error"]["code"], "redis_full");
        assert!(response.body.contains("maxmemory"), "{}", response.body);
        assert!(response.header("retry-after").is_some());
    }
    // Redis answered each refusal on a working connection: keep it.
    let made = connections_received(&mut conn).await - before;
    assert!(made <= 2, "{made} new connections for 30 refused requests");
    assert_eq!(app.queued().await.len(), 1);
}

#[tokio::test]
async fn query_and_field_mistakes_get_json_errors_naming_them() {
    let app = spawn_app(&[]).await;
    for query in ["seconds=abc", "step=-1", "seconds=0"] {
        let response = get(&app.url(&format!("/stats?{query}"))).await;
        assert_eq!(response.status, 400, "{query}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], "invalid_query", "{query}");
    }
    let typo = r#"{"endpoint":{"metod":"GET","url":"http://h/"},"data":[{}]}"#;
    let response = post(&app.url("/ingest"), typo).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["code"], "unknown_field");
    assert!(response.body.contains("endpoint.metod"), "{}", response.body);
    assert!(app.queued().await.is_empty(), "nothing queued");
}

/// A request to `http://h/` with `headers` (JSON text) as `endpoint.headers`.
fn with_headers(headers: &str) -> String {
    format!(r#"{{"endpoint":{{"method":"POST","url":"http://h/","headers":{headers}}},"data":[{{"a":1}}]}}"#)
}

#[tokio::test]
async fn endpoint_headers_are_queued_with_the_job_and_bad_ones_get_400_invalid_header() {
    let app = spawn_app(&[]).await;
    let response = post(
        &app.url("/ingest"),
        with_headers(r#"{"X-Api-Token":"s3cret","User-Agent":"theirs"}"#),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.body);
    let queued = app.queued().await;
    let job = Job::decode(queued[0].as_bytes()).unwrap();
    let headers: Vec<(&str, &str)> = job.headers.iter().collect();
    assert_eq!(headers, [("X-Api-Token", "s3cret"), ("User-Agent", "theirs")]);

    let sixteen: Vec<String> = (0..16).map(|i| format!(r#""X-{i}":"v""#)).collect();
    let seventeen: Vec<String> = (0..17).map(|i| format!(r#""X-{i}":"v""#)).collect();
    assert_eq!(
        post(&app.url("/ingest"), with_headers(&format!("{{{}}}", sixteen.join(","))))
            .await
            .status,
        202
    );
    let refused = [
        (r#"{"X-A":"1\r\nX-Injected: 1"}"#.to_string(), "X-A"),
        (r#"{"X-A":"1\nb"}"#.into(), "X-A"),
        (r#"{"X-A":"nul\u0000"}"#.into(), "X-A"),
        (r#"{"X A":"1"}"#.into(), "X A"),
        (r#"{"X-A\r\n":"1"}"#.into(), "X-A"),
        (r#"{"Host":"elsewhere"}"#.into(), "Host"),
        (r#"{"content-length":"0"}"#.into(), "content-length"),
        (r#"{"Transfer-Encoding":"chunked"}"#.into(), "Transfer-Encoding"),
        (r#"{"Connection":"close"}"#.into(), "Connection"),
        (r#"{"webhook-signature":"v1,forged"}"#.into(), "webhook-signature"),
        (r#"{"X-A":"1","x-a":"2"}"#.into(), "x-a"),
        (r#"{"X-A":1}"#.into(), "X-A"),
        (r#"["X-A"]"#.into(), "endpoint.headers"),
        (format!("{{{}}}", seventeen.join(",")), "16"),
        (format!(r#"{{"X-A":"{}"}}"#, "v".repeat(8200)), "8192"),
    ];
    for (headers, named) in refused {
        let response = post(&app.url("/ingest"), with_headers(&headers)).await;
        assert_eq!(response.status, 400, "{headers}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], "invalid_header", "{headers}");
        let message = response.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(named), "{headers}: {message}");
        assert!(!message.contains("s3cret"));
    }
    let both =
        r#"{"endpoint":{"method":"GET","url":"http://u:p@h/","headers":{"Authorization":"Bearer x"}},"data":[{}]}"#;
    let response = post(&app.url("/ingest"), both).await;
    assert_eq!(response.json()["error"]["code"], "invalid_header", "{}", response.body);
    assert_eq!(app.queued().await.len(), 2, "only the two good requests queued");
}

#[tokio::test]
async fn replica_acknowledgements_are_waited_for_and_a_shortfall_is_503_not_replicated() {
    // A master with one replica: a 202 comes once the replica holds the jobs.
    let master = RedisServer::start();
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", &port]);
    let app = spawn_app_on(
        master,
        &[("INGEST_REPLICA_ACKS", "1"), ("INGEST_REPLICA_TIMEOUT_MS", "2000")],
    )
    .await;
    let mut replica_conn = replica.connection().await;
    wait_until(Duration::from_secs(10), "the replica in sync", || async {
        let link = testkit::redis_info(&mut replica.connection().await, "replication", "master_link_status").await;
        link.as_deref() == Some("up")
    })
    .await;
    let response = post(&app.url("/ingest"), SAMPLE).await;
    assert_eq!(response.status, 202, "{}", response.body);
    let on_replica: u64 = redis::cmd("LLEN")
        .arg(&app.keys.ready)
        .query_async(&mut replica_conn)
        .await
        .unwrap();
    assert_eq!(on_replica, 1, "the replica held the job when the 202 was sent");

    // Two are asked for and only one exists: 503, with the jobs queued.
    let short = spawn_ingest_at(
        &app.redis.url(),
        &[("INGEST_REPLICA_ACKS", "2"), ("INGEST_REPLICA_TIMEOUT_MS", "100")],
    )
    .0;
    let response = post(&format!("{short}/ingest"), SAMPLE).await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.json()["error"]["code"], "not_replicated");
    assert!(
        response.body.contains("Idempotency-Key"),
        "says how to retry safely: {}",
        response.body
    );
    assert!(response.header("retry-after").is_some());
    assert_eq!(
        app.queued().await.len(),
        2,
        "the jobs were queued on the master all the same"
    );

    // The master itself requires two replicas in reach
    // (min-replicas-to-write): it refuses the write, and the answer says
    // that nothing was queued.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("2")
        .query_async(&mut app.redis.connection().await)
        .await
        .unwrap();
    let response = post(&format!("{short}/ingest"), SAMPLE).await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.json()["error"]["code"], "replicas_unavailable");
    assert!(
        response.body.contains("nothing was queued"),
        "says nothing was queued: {}",
        response.body
    );
    assert!(response.header("retry-after").is_some());
    assert_eq!(app.queued().await.len(), 2, "nothing more was queued");
}

/// POSTs `body` to `path` over the Unix socket at `socket` (HTTP/1.1, one
/// request, connection closed by the client) and returns the status and body.
fn post_over_socket(socket: &std::path::Path, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect to the socket");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn ingest_also_serves_on_its_unix_socket_and_replaces_a_stale_one() {
    let dir = testkit::TempDir::new("ingest-socket");
    let socket = dir.path().join("ingest_00.sock");
    // A socket file left behind by a process that died.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let socket_setting = socket.to_str().unwrap().to_string();
    let app = spawn_app(&[("INGEST_SOCKET", socket_setting.as_str())]).await;

    let path = socket.clone();
    let (status, body) = tokio::task::spawn_blocking(move || post_over_socket(&path, "/ingest", SAMPLE))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let queued = app.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        Job::decode(queued[0].as_bytes()).unwrap().id,
        answer["ids"][0].as_str().unwrap()
    );
    // A request of ~200 KB arrives in several reads, and its ~80 KB answer
    // goes back whole (the socket's stream is ingest's own: src/unix_stream.rs).
    let items: Vec<String> = (0..2000)
        .map(|i| format!(r#"{{"mascot":"Gopher {i:04}","location":"https://blog.golang.org/gopher/gopher-{i:04}.png","padding":"{}"}}"#, "x".repeat(20)))
        .collect();
    let large = format!(
        r#"{{"endpoint":{{"method":"GET","url":"http://example.com:9/data?title={{mascot}}"}},"data":[{}]}}"#,
        items.join(",")
    );
    assert!(large.len() > 200_000, "{} bytes", large.len());
    let path = socket.clone();
    let (status, body) = tokio::task::spawn_blocking(move || post_over_socket(&path, "/ingest", &large))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ids"].as_array().map(Vec::len), Some(2000));
    assert_eq!(app.queued().await.len(), 2001);
    // Every local user may connect, as to a loopback port (nginx's workers
    // run as another user).
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o666);
    // The TCP listener still answers too.
    assert_eq!(get(&app.url("/health")).await.status, 200);
}

#[tokio::test]
async fn a_socket_path_that_is_busy_or_not_a_socket_is_refused_at_start() {
    let dir = testkit::TempDir::new("ingest-socket-busy");
    let redis = RedisServer::start();
    let url = redis.url();
    let build = |socket: &std::path::Path| {
        let socket = socket.to_str().unwrap().to_string();
        let env = [
            ("INGEST_BIND", "127.0.0.1:0"),
            ("REDIS_URL", url.as_str()),
            ("INGEST_ACCESS_LOG", "off"),
            ("INGEST_SOCKET", socket.as_str()),
        ];
        Application::build(&Config::from_source(env.as_slice()).unwrap()).map(|_| ())
    };
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let err = build(&file).unwrap_err().to_string();
    assert!(err.contains("INGEST_SOCKET") && err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    let busy = dir.path().join("busy.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&busy).unwrap();
    let err = build(&busy).unwrap_err().to_string();
    assert!(err.contains("another process is listening"), "{err}");

    let relative = [("INGEST_SOCKET", "ingest.sock"), ("REDIS_URL", url.as_str())];
    let err = Config::from_source(relative.as_slice()).unwrap_err().to_string();
    assert!(err.contains("INGEST_SOCKET"), "{err}");
}

#[tokio::test]
async fn the_binary_logs_one_access_line_per_request_with_its_request_id() {
    use std::io::{BufRead, BufReader};
    let redis = RedisServer::start();
    let port = testkit::free_port();
    let dir = testkit::TempDir::new("ingest-binary");
    let socket = dir.path().join("ingest_00.sock");
    let key = create_key(&redis.url(), "shop", &[]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env("REDIS_URL", redis.url())
        .env("INGEST_BIND", format!("127.0.0.1:{port}"))
        .env("INGEST_SOCKET", &socket)
        .env("INGEST_WORKERS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), "ingest to be healthy (keys read)", || {
        let url = format!("{base}/health");
        async move {
            std::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches("/health")).is_ok()
                && get(&url).await.status == 200
        }
    })
    .await;
    let bearer = format!("Bearer {}", key.key);
    let headers = [("x-request-id", "abc-42"), ("authorization", bearer.as_str())];
    let response = http("POST", &format!("{base}/ingest"), &headers, SAMPLE).await;
    assert_eq!(response.status, 202);
    assert_eq!(response.header("x-request-id"), Some("abc-42"));
    wait_until(Duration::from_secs(10), "the access line", || {
        let lines = lines.clone();
        async move { lines.lock().unwrap().iter().any(|l| l.contains("request_id=abc-42")) }
    })
    .await;
    let line = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("request_id=abc-42"))
        .cloned()
        .unwrap();
    for part in [
        "method=POST",
        "path=/ingest",
        "status=202",
        "accepted=1",
        "duration_us=",
    ] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
    assert!(
        line.contains(&format!("producer={}", key.id)),
        "the key's id is logged: {line}"
    );
    assert!(!line.contains(&key.key), "the key itself is never logged: {line}");
    // The socket serves the same app (the access log names it too).
    let path = socket.clone();
    let (status, _) = tokio::task::spawn_blocking(move || post_over_socket(&path, "/i", SAMPLE))
        .await
        .unwrap();
    assert_eq!(status, 401, "no key, over the socket too");
    wait_until(Duration::from_secs(10), "the access line of the socket request", || {
        let lines = lines.clone();
        async move { lines.lock().unwrap().iter().any(|l| l.contains("path=/i ")) }
    })
    .await;
    // SIGTERM: ingest stops accepting, finishes, and exits cleanly.
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ingest did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket file is removed at exit");
}

#[test]
fn the_binary_answers_help_and_version_and_lists_every_setting_and_route() {
    let run = |arg: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
            .arg(arg)
            .output()
            .unwrap()
    };
    let version = run("--version");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("ingest {}", env!("CARGO_PKG_VERSION"))
    );
    let help = run("--help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for setting in common::config::SHARED_SETTINGS.iter().chain(ingest::config::SETTINGS) {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(setting.var))
            .unwrap_or_else(|| panic!("{} missing from ingest --help:\n{help}", setting.var));
        assert!(line.contains(setting.shown_default()), "{line}");
    }
    for (path, _) in ingest::routes::ROUTES {
        assert!(help.contains(path), "{path} missing from ingest --help:\n{help}");
    }
    let bad = run("--bogus");
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn an_endpoint_at_a_private_literal_address_gets_400_blocked_destination() {
    let app = spawn_app(&[]).await;
    for url in [
        "http://127.0.0.1:6379/",
        "http://2130706433/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        let body = format!(r#"{{"endpoint":{{"method":"GET","url":"{url}"}},"data":[{{}}]}}"#);
        let response = post(&app.url("/ingest"), body).await;
        assert_eq!(response.status, 400, "{url}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], "blocked_destination", "{url}");
    }
    assert!(app.queued().await.is_empty(), "nothing was queued");
    // Opened by the allowlist, for that port only.
    let open = spawn_app(&[("POSTBACK_ALLOW_DESTINATIONS", "127.0.0.1:9000")]).await;
    let to = |port: u16| format!(r#"{{"endpoint":{{"method":"GET","url":"http://127.0.0.1:{port}/"}},"data":[{{}}]}}"#);
    assert_eq!(post(&open.url("/ingest"), to(9000)).await.status, 202);
    assert_eq!(post(&open.url("/ingest"), to(9001)).await.status, 400);
}

/// A key made with the real `ingest keys create` command.
struct MadeKey {
    id: String,
    key: String,
    signing_secret: String,
}

fn ingest_command(redis_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env("REDIS_URL", redis_url)
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .expect("the ingest binary runs")
}

fn create_key(redis_url: &str, name: &str, extra: &[&str]) -> MadeKey {
    let mut args = vec!["keys", "create", name, "--json"];
    args.extend_from_slice(extra);
    let out = ingest_command(redis_url, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("keys create --json prints JSON");
    assert_eq!(made["name"], name);
    MadeKey {
        id: made["id"].as_str().unwrap().to_string(),
        key: made["key"].as_str().unwrap().to_string(),
        signing_secret: made["signing_secret"].as_str().unwrap().to_string(),
    }
}

async fn post_with(url: &str, key: &str, body: &str) -> testkit::HttpResponse {
    http(
        "POST",
        url,
        &[("authorization", &format!("Bearer {key}"))],
        body.to_string(),
    )
    .await
}

/// An app with producer keys on, healthy (its keys read).
async fn spawn_keyed_app_on(redis: RedisServer, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("INGEST_AUTH", "keys")];
    env.extend_from_slice(extra);
    let app = spawn_app_on(redis, &env).await;
    wait_healthy(&app.base).await;
    app
}

async fn wait_healthy(base: &str) {
    let health = format!("{base}/health");
    wait_until(Duration::from_secs(10), "ingest to be healthy (keys read)", || {
        let health = health.clone();
        async move { get(&health).await.status == 200 }
    })
    .await;
}

#[tokio::test]
async fn with_keys_a_request_needs_a_valid_key_and_health_stays_open() {
    let redis = RedisServer::start();
    let made = create_key(&redis.url(), "shop", &[]);
    assert!(made.key.starts_with(&format!("pk_{}_", made.id)), "{}", made.key);
    assert!(made.signing_secret.starts_with("whsec_"));
    let app = spawn_keyed_app_on(redis, &[]).await;
    let missing = post(&app.url("/ingest"), SAMPLE).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.json()["error"]["code"], "missing_key");
    assert!(missing.header("www-authenticate").unwrap().starts_with("Bearer"));
    let wrong = post_with(
        &app.url("/ingest"),
        &format!("pk_{}_{}", made.id, "x".repeat(43)),
        SAMPLE,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_key");
    assert!(app.queued().await.is_empty(), "nothing queued without a valid key");
    assert_eq!(get(&app.url("/health")).await.status, 200);

    let by_header = http("POST", &app.url("/ingest"), &[("x-api-key", &made.key)], SAMPLE).await;
    assert_eq!(by_header.status, 202, "{}", by_header.body);
    assert_eq!(post_with(&app.url("/ingest"), &made.key, SAMPLE).await.status, 202);
    let queued = app.queued().await;
    assert_eq!(queued.len(), 2);
    let job = Job::decode(queued[0].as_bytes()).unwrap();
    assert_eq!(
        job.producer.as_deref(),
        Some(made.id.as_str()),
        "the job names its producer"
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_every_ingest_process_within_5_seconds() {
    let redis = RedisServer::start();
    let url = redis.url();
    let made = create_key(&url, "partner", &[]);
    let first = spawn_keyed_app_on(redis, &[]).await;
    // A second ingest process on the same Redis.
    let (second, _) = spawn_ingest_at(&url, &[("INGEST_AUTH", "keys")]);
    wait_healthy(&second).await;
    let ingests = [first.url("/ingest"), format!("{second}/ingest")];
    for ingest in &ingests {
        assert_eq!(post_with(ingest, &made.key, SAMPLE).await.status, 202);
    }
    let out = ingest_command(&url, &["keys", "revoke", &made.id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked_at = Instant::now();
    for ingest in &ingests {
        let ingest = ingest.clone();
        let key = made.key.clone();
        wait_until(Duration::from_secs(5), "the revoked key to be refused", || {
            let (ingest, key) = (ingest.clone(), key.clone());
            async move { post_with(&ingest, &key, SAMPLE).await.status == 401 }
        })
        .await;
    }
    println!("revoked key refused by both processes after {:?}", revoked_at.elapsed());
    // The list names it revoked, and never shows a key or a secret.
    let list = ingest_command(&url, &["keys", "list", "--json"]);
    let text = String::from_utf8_lossy(&list.stdout);
    let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed[0]["id"], made.id.as_str());
    assert!(listed[0]["revoked_ms"].as_u64().is_some(), "{text}");
    assert!(
        !text.contains(&made.key[16..]) && !text.contains(&made.signing_secret),
        "{text}"
    );
    assert!(!text.contains("secret_hash"), "{text}");
    let unknown = ingest_command(&url, &["keys", "revoke", "000000000000"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no key with id"));
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_and_queues_nothing_for_those() {
    let redis = RedisServer::start();
    let made = create_key(&redis.url(), "bursty", &["--rate", "3"]);
    let app = spawn_keyed_app_on(redis, &[]).await;
    let mut accepted = 0;
    let mut limited = 0;
    // Within one second (the counter's window), at most 3 get through.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) && limited == 0 {
        let response = post_with(&app.url("/ingest"), &made.key, SAMPLE).await;
        match response.status {
            202 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(response.json()["error"]["code"], "rate_limited");
                assert!(response.header("retry-after").is_some());
            }
            other => panic!("unexpected {other}: {}", response.body),
        }
    }
    assert!(limited > 0, "{accepted} accepted and none limited");
    assert!(
        accepted <= 6,
        "{accepted} accepted: at most 3 a second (two seconds touched at most)"
    );
    assert_eq!(app.queued().await.len(), accepted, "a 429 queued nothing");
}

#[tokio::test]
async fn an_idempotent_retry_gets_the_same_answer_and_queues_nothing_more() {
    let redis = RedisServer::start();
    let (a, b) = (create_key(&redis.url(), "a", &[]), create_key(&redis.url(), "b", &[]));
    let app = spawn_keyed_app_on(redis, &[]).await;
    let send = |key: &str, idempotency: &str, body: &str| {
        let (url, auth) = (app.url("/ingest"), format!("Bearer {key}"));
        let (idempotency, body) = (idempotency.to_string(), body.to_string());
        async move {
            http(
                "POST",
                &url,
                &[("authorization", &auth), ("idempotency-key", &idempotency)],
                body,
            )
            .await
        }
    };
    let first = send(&a.key, "order-17", SAMPLE).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    // The producer timed out and tries again: the same answer, once queued.
    let again = send(&a.key, "order-17", SAMPLE).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the same ids");
    assert_eq!(app.queued().await.len(), 1);
    // The same key with another body is a mistake, said so.
    let other = SAMPLE.replace("Gopher", "Ferris");
    let reused = send(&a.key, "order-17", &other).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.json()["error"]["code"], "idempotency_key_reused");
    // Keys are scoped to the producer: b's order-17 is its own.
    let theirs = send(&b.key, "order-17", &other).await;
    assert_eq!(theirs.status, 202);
    assert_ne!(theirs.body, first.body);
    assert_eq!(app.queued().await.len(), 2);
    // A key that is not 1 to 255 printable characters is refused.
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "tab\there"] {
        let response = send(&a.key, bad, SAMPLE).await;
        assert_eq!(response.status, 400, "{bad:?}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], "invalid_idempotency_key");
    }
    assert_eq!(app.queued().await.len(), 2);
}

#[tokio::test]
async fn idempotency_keys_expire_after_their_ttl() {
    let app = spawn_app(&[("INGEST_IDEMPOTENCY_TTL_S", "1")]).await;
    let url = app.url("/ingest");
    let send = || http("POST", &url, &[("idempotency-key", "k1")], SAMPLE);
    assert_eq!(send().await.status, 202);
    assert_eq!(send().await.header("idempotent-replayed"), Some("true"));
    wait_until(Duration::from_secs(5), "the key to expire", || {
        let url = url.clone();
        async move {
            let r = http("POST", &url, &[("idempotency-key", "k1")], SAMPLE).await;
            r.status == 202 && r.header("idempotent-replayed").is_none()
        }
    })
    .await;
    assert_eq!(app.queued().await.len(), 2);
}

#[tokio::test]
async fn producer_keys_are_made_and_checked_over_tls() {
    let certs = testkit::RedisCerts::new();
    let redis = RedisServer::start_tls(&certs);
    let url = redis.url();
    let tls = certs.env();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env("REDIS_URL", &url)
        .envs(tls.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        .args(["keys", "create", "shop", "--json"])
        .output()
        .expect("the ingest binary runs");
    assert!(
        out.status.success(),
        "ingest keys over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("keys create --json prints JSON");
    let key = made["key"].as_str().expect("a key").to_string();

    let mut env: Vec<(&str, &str)> = tls.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("INGEST_AUTH", "keys"));
    let (base, _) = spawn_ingest_at(&url, &env);
    wait_healthy(&base).await;
    assert_eq!(post_with(&format!("{base}/ingest"), &key, SAMPLE).await.status, 202);
    let mut conn = redis.connection().await;
    let queued: usize = redis::cmd("LLEN")
        .arg(&QueueKeys::new("default").ready)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(queued, 1, "the job is on the TLS Redis");
}

#[test]
fn tls_files_for_a_plain_redis_url_stop_ingest_at_start() {
    // (exit code, stderr) of ingest started with `url` and a CA file.
    let start = |url: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
            .env("REDIS_URL", url)
            .env("REDIS_TLS_CA_FILE", "/nonexistent/ca.crt")
            .output()
            .expect("the ingest binary runs");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = start("redis://127.0.0.1:1");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("REDIS_TLS_CA_FILE") && stderr.contains("rediss://"),
        "names the setting and the fix: {stderr}"
    );
    let (code, stderr) = start("rediss://127.0.0.1:1");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cannot read /nonexistent/ca.crt"),
        "names the file: {stderr}"
    );
}
