//! `postback-load`: the benchmark's load generator for ingest.
//!
//! Two modes, both over keep-alive connections to 127.0.0.1, or to the
//! RFC 2544 benchmark range 198.18.0.0/15 that the network-namespace test
//! (`scripts/lab/tests/hosts-stack.sh`) gives its hosts on this machine:
//! - `--rate R --seconds S`: R requests a second for S seconds, each with
//!   one item carrying its send time (`t`, µs since the epoch), so that the
//!   sink's arrival times give end-to-end latency;
//! - `--jobs N --items K`: N jobs in requests of K items, as fast as
//!   `--connections` allow (to fill the queue before a drain).
//!
//! The postback URL is `--target` with `{t}` and `{n}` placeholders; `n`
//! counts from `--first-n`. It prints one line: `sent=.. accepted=..
//! errors=.. late=..`, and with `--accepted-log FILE` writes the `n` of
//! every job answered 202 there, one a line (for loss and duplicate
//! checks). A request with no answer within `--timeout-ms` is an error.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends postback requests to ingest on loopback, at a fixed rate or as
/// fast as its connections allow.
#[derive(clap::Parser)]
#[command(name = "postback-load", version)]
struct Options {
    /// ingest's URL (loopback or 198.18.0.0/15 only), e.g.
    /// http://127.0.0.1:8080/ingest.
    #[arg(long)]
    url: String,
    /// The postback URL template, with {t} (send time, µs) and {n}.
    #[arg(long)]
    target: String,
    /// Requests a second (with --seconds).
    #[arg(long, default_value_t = 0, requires = "seconds", conflicts_with = "jobs")]
    rate: u64,
    /// How long to send at --rate.
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Jobs to queue as fast as possible (instead of --rate).
    #[arg(long, default_value_t = 0)]
    jobs: u64,
    /// Jobs per request with --jobs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    items: u64,
    /// Connections to ingest.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// A file holding the producer key to send (a file, not an argument:
    /// arguments show in `ps`).
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// The first job's `n`.
    #[arg(long, default_value_t = 0)]
    first_n: u64,
    /// Write the `n` of every accepted job to this file.
    #[arg(long)]
    accepted_log: Option<std::path::PathBuf>,
    /// How long a request may go unanswered before it counts as an error.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// Whether `url` is on loopback or in 198.18.0.0/15, the RFC 2544
/// benchmark range (addresses of this machine's test namespaces).
fn allowed(url: &str) -> bool {
    let Some(host) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split(['/', ':']).next())
    else {
        return false;
    };
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => ip.is_loopback() || (ip.octets()[0] == 198 && ip.octets()[1] & 0xfe == 18),
        Err(_) => host == "localhost",
    }
}

fn options() -> Result<Options, String> {
    let o = <Options as clap::Parser>::parse();
    if (o.rate == 0) == (o.jobs == 0) {
        return Err("need either --rate with --seconds or --jobs".into());
    }
    if !allowed(&o.url) {
        return Err("--url must be on loopback or in 198.18.0.0/15 (this machine's test namespaces)".into());
    }
    Ok(o)
}

fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    late: AtomicU64,
    /// The first `n` of each accepted request, with its item count (kept
    /// only with `--accepted-log`).
    accepted_ns: Option<std::sync::Mutex<Vec<(u64, u64)>>>,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn post(
    client: &HttpClient,
    url: &str,
    auth: Option<&str>,
    body: String,
    counts: &Counts,
    (first, items): (u64, u64),
    timeout: Duration,
) {
    counts.sent.fetch_add(1, Ordering::Relaxed);
    let mut request = hyper::Request::post(url);
    if let Some(auth) = auth {
        request = request.header(hyper::header::AUTHORIZATION, auth);
    }
    let request = request.body(Full::new(Bytes::from(body)));
    let ok = match request {
        Ok(request) => {
            let answer = async {
                let response = client.request(request).await.ok()?;
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                Some(status)
            };
            tokio::time::timeout(timeout, answer).await.ok().flatten() == Some(202)
        }
        Err(_) => false,
    };
    if ok {
        counts.accepted.fetch_add(items, Ordering::Relaxed);
        if let Some(ns) = &counts.accepted_ns {
            ns.lock().unwrap_or_else(|e| e.into_inner()).push((first, items));
        }
    } else {
        counts.errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn body(target: &str, items: impl Iterator<Item = (u128, u64)>) -> String {
    let data: Vec<String> = items.map(|(t, n)| format!(r#"{{"t":{t},"n":{n}}}"#)).collect();
    format!(
        r#"{{"endpoint":{{"method":"GET","url":"{target}"}},"data":[{}]}}"#,
        data.join(",")
    )
}

#[tokio::main]
async fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("postback-load: {e}");
            std::process::exit(2);
        }
    };
    let auth: Option<Arc<str>> = match &o.key_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(key) => Some(format!("Bearer {}", key.trim()).into()),
            Err(e) => {
                eprintln!("postback-load: cannot read --key-file {}: {e}", path.display());
                std::process::exit(2);
            }
        },
    };
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(o.connections.into())
        .build_http();
    let counts = Arc::new(Counts {
        accepted_ns: o.accepted_log.as_ref().map(|_| Default::default()),
        ..Counts::default()
    });
    let timeout = Duration::from_millis(o.timeout_ms);
    let slots = Arc::new(tokio::sync::Semaphore::new(o.connections.into()));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(nanos) = 1_000_000_000u64.checked_div(o.rate) {
        // Fixed rate: a request every 1/R s whatever the answers; if every
        // connection is busy the request is late (counted), never dropped.
        let period = Duration::from_nanos(nanos);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let total = o.rate * o.seconds;
        for n in o.first_n..o.first_n + total {
            tick.tick().await;
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    counts.late.fetch_add(1, Ordering::Relaxed);
                    slots.clone().acquire_owned().await.expect("semaphore closed")
                }
            };
            let (client, counts, url, auth) = (client.clone(), counts.clone(), o.url.clone(), auth.clone());
            let body = body(&o.target, std::iter::once((now_us(), n)));
            tasks.spawn(async move {
                post(&client, &url, auth.as_deref(), body, &counts, (n, 1), timeout).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
    } else {
        let started = Instant::now();
        let mut n = o.first_n;
        let end = o.first_n + o.jobs;
        while n < end {
            let k = o.items.min(end - n);
            let permit = slots.clone().acquire_owned().await.expect("semaphore closed");
            let (client, counts, url, auth) = (client.clone(), counts.clone(), o.url.clone(), auth.clone());
            let body = body(&o.target, (n..n + k).map(|i| (0, i)));
            tasks.spawn(async move {
                post(&client, &url, auth.as_deref(), body, &counts, (n, k), timeout).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
            n += k;
        }
        eprintln!("postback-load: queued {} jobs in {:.2?}", o.jobs, started.elapsed());
    }
    while tasks.join_next().await.is_some() {}
    if let (Some(path), Some(ns)) = (&o.accepted_log, &counts.accepted_ns) {
        use std::io::Write as _;
        let mut text = String::new();
        for &(first, items) in ns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for n in first..first + items {
                text.push_str(&n.to_string());
                text.push('\n');
            }
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        if let Err(e) = written {
            eprintln!("postback-load: cannot write --accepted-log {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    println!(
        "sent={} accepted={} errors={} late={}",
        counts.sent.load(Ordering::Relaxed),
        counts.accepted.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        counts.late.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_and_the_benchmark_range_are_allowed() {
        for url in [
            "http://127.0.0.1:80/ingest",
            "http://localhost/x",
            "http://198.18.0.11/ingest",
            "http://198.19.255.1:8080/",
        ] {
            assert!(super::allowed(url), "{url}");
        }
        for url in [
            "http://198.20.0.1/",
            "http://10.0.0.1/",
            "http://example.com/",
            "https://127.0.0.1/",
        ] {
            assert!(!super::allowed(url), "{url}");
        }
    }
}
