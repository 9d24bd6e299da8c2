//! Micro-benchmarks of the per-job hot path: filling a URL template and
//! encoding/decoding a job. `cargo bench -p common`; results in docs/PERFORMANCE.md.

use common::job::{Job, JobEncoder, Method};
use common::template;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::value::RawValue;
use std::hint::black_box;

const SAMPLE_URL: &str = "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}";

const SAMPLE_DATA: &str = r#"{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}"#;

fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).unwrap_or_else(|_| unreachable!("valid JSON"))
}

/// A JSON object of `n` fields `k0`..`k{n-1}`, each `value(i)`.
fn object(n: usize, value: impl Fn(usize) -> String) -> Box<RawValue> {
    let fields: Vec<String> = (0..n).map(|i| format!(r#""k{i}":"{}""#, value(i))).collect();
    raw(format!("{{{}}}", fields.join(",")))
}

/// Reading the fields is part of each render: deliver does both per job.
fn bench_render(c: &mut Criterion, name: &str, url: &str, data: &RawValue) {
    let mut out = String::with_capacity(256);
    c.bench_function(name, |b| {
        b.iter(|| {
            let fields = template::Fields::parse(black_box(data)).unwrap_or_default();
            template::render_into(&mut out, black_box(url), &fields, "")
        })
    });
}

fn template_benches(c: &mut Criterion) {
    bench_render(
        c,
        "template: render the sample",
        SAMPLE_URL,
        &raw(SAMPLE_DATA.to_string()),
    );

    let wide_url = format!(
        "https://postback.example.com/cb?{}",
        (0..20).map(|i| format!("p{i}={{k{i}}}")).collect::<Vec<_>>().join("&")
    );
    let wide_data = object(20, |i| format!("value {i}/é&="));
    bench_render(c, "template: render 20 placeholders", &wide_url, &wide_data);

    // A producer may send an object of many fields: past 64 they are
    // sorted once and found by binary search instead of a scan each.
    let huge_data = object(1000, |i| format!("value {i}"));
    bench_render(
        c,
        "template: read 1,000 fields, render 20 placeholders",
        &wide_url,
        &huge_data,
    );
}

fn job_benches(c: &mut Criterion) {
    let raw_data = raw(SAMPLE_DATA.to_string());
    let id = Job::new_id();
    let encoder = JobEncoder::new(
        Method::Get,
        SAMPLE_URL,
        &Default::default(),
        1_764_308_665_000,
        Some("60457ea7a17a1a279b005ffc71b29711"),
        Some("0123456789ab"),
    );
    c.bench_function("job: encode (ingest)", |b| {
        b.iter(|| black_box(&encoder).encode(&id, &raw_data))
    });
    let encoded = encoder.encode(&id, &raw_data);
    c.bench_function("job: decode (deliver)", |b| {
        b.iter(|| Job::decode(black_box(encoded.as_bytes())))
    });
}

criterion_group!(benches, template_benches, job_benches);
criterion_main!(benches);
