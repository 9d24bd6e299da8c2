//! `postback-sink`: a small, fast keep-alive HTTP endpoint for the stack
//! tests and the benchmark. It answers every request with one status,
//! counts requests, and can record each one (arrival time in microseconds
//! since the epoch, method, path and query) to a file.
//!
//! Usage: postback-sink --listen 127.0.0.1:0 [--status 200] [--delay-ms 0]
//!        [--record FILE]
//! It prints `listening on ADDR` once bound. `GET /_sink/count` answers the
//! number of requests received so far (not counting itself).
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

struct Options {
    listen: String,
    status: u16,
    delay: Duration,
    record: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        listen: "127.0.0.1:0".into(),
        status: 200,
        delay: Duration::ZERO,
        record: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => o.listen = value()?,
            "--status" => o.status = value()?.parse().map_err(|_| "--status takes a number")?,
            "--delay-ms" => o.delay = Duration::from_millis(value()?.parse().map_err(|_| "--delay-ms takes a number")?),
            "--record" => o.record = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

struct State {
    count: AtomicU64,
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
        common::line_log::LineLog::to(file).0
    });
    let state = Arc::new(State {
        count: AtomicU64::new(0),
        status: options.status,
        delay: options.delay,
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

async fn answer(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    if req.uri().path() == "/_sink/count" {
        let count = state.count.load(Ordering::Relaxed).to_string();
        return Ok(Response::new(Full::new(Bytes::from(count))));
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
    state.count.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = hyper::StatusCode::from_u16(state.status).unwrap_or(hyper::StatusCode::OK);
    Ok(response)
}
