//! Micro-benchmarks of what #17 added to each delivery attempt: the
//! Standard Webhooks signature and the credentials check of the URL.
//! `cargo bench -p deliver`; results in docs/PERFORMANCE.md.
//!
//! These run on the machine's own SHA-256 instructions, which callgrind
//! (scripts/bench-instructions) cannot use: under valgrind ring falls back
//! to its AVX code, several times the instructions.

use common::job::{Job, JobEncoder, Method};
use criterion::{criterion_group, criterion_main, Criterion};
use deliver::signing::Signer;
use serde_json::value::RawValue;
use std::hint::black_box;
use std::time::Duration;

const SAMPLE_DATA: &str = r#"{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}"#;
/// A filled-in sample URL's request target: what a GET's signature covers.
const SAMPLE_TARGET: &str = "/data?title=Gopher&image=https%3A%2F%2Fblog.golang.org%2Fgopher%2Fgopher.png&foo=";
const SAMPLE_URL: &str = "http://sample-domain-endpoint.example/data?title=Gopher&image=https%3A%2F%2Fblog.golang.org%2Fgopher%2Fgopher.png&foo=";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn sample_job() -> Job {
    let data = RawValue::from_string(SAMPLE_DATA.to_string()).unwrap_or_else(|_| unreachable!("valid JSON"));
    let encoder = JobEncoder::new(Method::Get, "http://x/{mascot}", &Default::default(), 1, None, None);
    let encoded = encoder.encode(&Job::new_id(), &data);
    Job::decode(encoded.as_bytes()).unwrap_or_else(|_| unreachable!("a job just encoded"))
}

fn signing_benches(c: &mut Criterion) {
    let job = sample_job();
    let signer = Signer::new(Some(SECRET), Duration::from_secs(86_400));
    c.bench_function("signing: the three headers of a GET postback", |b| {
        b.iter(|| signer.headers(black_box(&job), black_box(SAMPLE_TARGET.as_bytes()), 1_764_000_000, 0))
    });
}

fn credentials_benches(c: &mut Criterion) {
    c.bench_function("credentials: a URL without any", |b| {
        b.iter_batched(
            || SAMPLE_URL.to_string(),
            |url| deliver::credentials::extract(black_box(url)),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = signing_benches, credentials_benches
}
criterion_main!(benches);
