//! `postback-sink`: a small, fast keep-alive HTTP endpoint for the stack
//! tests and the benchmark. It answers every request with one status,
//! counts requests, and can record each one (arrival time in microseconds
//! since the epoch, method, path and query) to a file.
//!
//! Usage: postback-sink --listen 127.0.0.1:0 [--status 200] [--delay-ms 0]
//!        [--record FILE]
//! It prints `listening on ADDR` once bound. `GET /_sink/count` answers the
//! number of requests received so far (not counting itself).
//! `GET /_sink/wait?count=N[&timeout_ms=T]` answers that number once it
//! reaches N (200), or when T ms (default 600,000) have passed (504): one
//! request instead of a polling loop, whose process starts (~10 ms of CPU
//! each here) would take CPU from what the benchmark measures.
//!
//! Records go through the same shared-buffer line log as the services'
//! logs (written within 100 ms, no thread woken per request): the sink
//! shares the machine with what the benchmark measures, and a cross-thread
//! wake-up per recorded request made it cost as much CPU as deliver.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A small, fast keep-alive HTTP endpoint on loopback for tests and the
/// benchmark: answers every request with one status and counts them.
#[derive(clap::Parser)]
#[command(name = "postback-sink", version)]
struct Options {
    /// Address to listen on (port 0: any free port; it prints the one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The status of every answer.
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Wait this long before each answer.
    #[arg(long = "delay-ms", default_value_t = 0)]
    delay_ms: u64,
    /// Record each request (arrival µs, method, path and query) to this file.
    #[arg(long)]
    record: Option<String>,
}

fn options() -> Result<Options, String> {
    Ok(<Options as clap::Parser>::parse())
}

struct State {
    count: AtomicU64,
    /// The lowest count a `/_sink/wait` waits for (`u64::MAX`: none).
    lowest_wanted: AtomicU64,
    reached: tokio::sync::Notify,
    status: u16,
    delay: Duration,
    record: Option<common::line_log::LineLog>,
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "postback-sink: {e}\nusage: postback-sink --listen ADDR [--status N] [--delay-ms N] [--record FILE]"
            );
            std::process::exit(2);
        }
    };
    let record = options.record.as_ref().map(|path| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| {
                eprintln!("postback-sink: cannot open {path}: {e}");
                std::process::exit(2);
            });
        // The sink runs until it is killed: its writer thread is never joined.
        common::line_log::LineLog::to(file, common::line_log::WhenFull::Wait).0
    });
    let state = Arc::new(State {
        count: AtomicU64::new(0),
        lowest_wanted: AtomicU64::new(u64::MAX),
        reached: tokio::sync::Notify::new(),
        status: options.status,
        delay: Duration::from_millis(options.delay_ms),
        record,
    });
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("postback-sink: cannot listen on {}: {e}", options.listen);
            std::process::exit(2);
        });
    println!(
        "listening on {}",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `/_sink/wait`: waits until the count reaches `count`. Woken by the
/// request that reaches the lowest count waited for, so a wait costs the
/// counted requests one atomic load each, and nothing periodic (a 1 ms
/// timer here made the sink's threads wake 1,000 times a second and cost
/// the drain more than the polling it replaced).
async fn wait_for_count(query: &str, state: &State) -> Response<Full<Bytes>> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.parse::<u64>())
    };
    let (target, timeout_ms) = match (param("count"), param("timeout_ms").unwrap_or(Ok(600_000))) {
        (Some(Ok(target)), Ok(timeout_ms)) => (target, timeout_ms),
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"usage: /_sink/wait?count=N[&timeout_ms=T] (whole numbers)\n",
            )));
            *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let deadline = tokio::time::sleep(Duration::from_millis(timeout_ms));
    tokio::pin!(deadline);
    let reached = loop {
        let woken = state.reached.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // SeqCst here and in `answer`: either this load sees the request
        // that reached the target, or that request sees this target.
        state.lowest_wanted.fetch_min(target, Ordering::SeqCst);
        if state.count.load(Ordering::SeqCst) >= target {
            break true;
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = &mut deadline => break false,
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(state.count.load(Ordering::SeqCst).to_string())));
    if !reached {
        *response.status_mut() = hyper::StatusCode::GATEWAY_TIMEOUT;
    }
    response
}

async fn answer(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    match req.uri().path() {
        "/_sink/count" => {
            let count = state.count.load(Ordering::Relaxed).to_string();
            return Ok(Response::new(Full::new(Bytes::from(count))));
        }
        "/_sink/wait" => return Ok(wait_for_count(req.uri().query().unwrap_or(""), &state).await),
        _ => {}
    }
    let line = state.record.as_ref().map(|_| {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        (req.method().clone(), path.to_owned())
    });
    // Read the whole body so the connection can be reused.
    let _ = req.into_body().collect().await;
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    if let (Some(log), Some((method, path))) = (&state.record, line) {
        log.write_with(|buffer| {
            let _ = writeln!(buffer, "{at} {method} {path}");
        });
    }
    let count = state.count.fetch_add(1, Ordering::SeqCst) + 1;
    if count >= state.lowest_wanted.load(Ordering::SeqCst) {
        // Every waiter checks again and says what it still waits for.
        state.lowest_wanted.store(u64::MAX, Ordering::SeqCst);
        state.reached.notify_waiters();
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = hyper::StatusCode::from_u16(state.status).unwrap_or(hyper::StatusCode::OK);
    Ok(response)
}
