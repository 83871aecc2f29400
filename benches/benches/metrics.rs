//! Metrics: one request's recording on the hot path, and the `/metrics` scrape.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate_benches::record_request;
use tollgate_metrics::Metrics;

fn metrics(c: &mut Criterion) {
    let m = Metrics::new();
    let t = m.target("gpt-4o", "openai");

    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record_request", |b| {
        b.iter(|| record_request(&m, &t, black_box("gpt-4o"), black_box("openai")))
    });
    // `Metrics::request` alone: the one label lookup left on the hot path.
    g.bench_function("request_counter_only", |b| {
        b.iter(|| m.request("chat", black_box("gpt-4o"), black_box("openai"), 200))
    });

    // A scrape of a gateway that has served 10 models × 3 providers, a few statuses each.
    let full = Metrics::new();
    let models = (0..10).map(|i| format!("model-{i}")).collect::<Vec<_>>();
    for model in &models {
        for provider in ["openai", "anthropic", "gemini"] {
            let tm = full.target(model, provider);
            for status in [200, 400, 429, 502] {
                full.request("chat", model, provider, status);
            }
            record_request(&full, &tm, model, provider);
            full.upstream_error(provider, "timeout");
        }
    }
    full.rate_limited("key", "requests");
    let bytes = full.encode().len() as u64;
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("encode_30_targets", |b| b.iter(|| black_box(full.encode())));
    g.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
