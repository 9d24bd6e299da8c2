//! Micro-benchmarks of the per-job hot path: filling a URL template and
//! encoding/decoding a job. `cargo bench -p common`; results in README.

use common::job::{Job, JobEncoder, Method};
use common::template;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Map, Value};
use std::hint::black_box;

const SAMPLE_URL: &str = "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}";

fn sample_data() -> Map<String, Value> {
    json!({"mascot": "Gopher", "location": "https://blog.golang.org/gopher/gopher.png"})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn template_benches(c: &mut Criterion) {
    let data = sample_data();
    let mut out = String::with_capacity(256);
    c.bench_function("template: render the sample", |b| {
        b.iter(|| template::render_into(&mut out, black_box(SAMPLE_URL), black_box(&data), ""))
    });

    let wide_url = format!(
        "https://postback.example.com/cb?{}",
        (0..20).map(|i| format!("p{i}={{k{i}}}")).collect::<Vec<_>>().join("&")
    );
    let wide_data: Map<String, Value> = (0..20)
        .map(|i| (format!("k{i}"), Value::String(format!("value {i}/é&="))))
        .collect();
    c.bench_function("template: render 20 placeholders", |b| {
        b.iter(|| template::render_into(&mut out, black_box(&wide_url), black_box(&wide_data), ""))
    });
}

fn job_benches(c: &mut Criterion) {
    let raw_data = serde_json::value::RawValue::from_string(
        r#"{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}"#.to_string(),
    )
    .unwrap_or_else(|_| unreachable!("valid JSON"));
    let id = Job::new_id();
    let encoder = JobEncoder::new(
        Method::Get,
        SAMPLE_URL,
        1_764_308_665_000,
        Some("60457ea7a17a1a279b005ffc71b29711"),
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
