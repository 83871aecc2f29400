//! Translation cost per provider kind: request parse + translate, non-stream
//! response translation, and stream translation per event.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tollgate_benches::{
    fixture_stream, long_stream, response_ctx, small_request, target, text_response, tools_request,
    translate_stream, KINDS,
};
use tollgate_providers::{chat_request, chat_response};
use tollgate_schema::ChatRequest;

fn requests(c: &mut Criterion) {
    let small = small_request();
    let tools = tools_request();

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (name, body) in [("small", &small), ("tools", &tools)] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(ChatRequest::parse(black_box(body)).unwrap()))
        });
    }
    g.finish();

    for (name, body) in [("small", &small), ("tools", &tools)] {
        let mut g = c.benchmark_group(format!("parse_translate_{name}"));
        g.throughput(Throughput::Elements(1));
        for (kind, dir) in KINDS {
            let t = target(kind);
            g.bench_function(BenchmarkId::from_parameter(dir), |b| {
                b.iter(|| {
                    let req = ChatRequest::parse(black_box(body)).unwrap();
                    black_box(chat_request(&req, &t).unwrap())
                })
            });
        }
        g.finish();
    }
}

fn responses(c: &mut Criterion) {
    let ctx = response_ctx();
    let mut g = c.benchmark_group("response");
    g.throughput(Throughput::Elements(1));
    for (kind, dir) in KINDS {
        let body = Bytes::from(text_response(dir));
        g.bench_function(BenchmarkId::from_parameter(dir), |b| {
            b.iter(|| black_box(chat_response(kind, black_box(body.clone()), &ctx).unwrap()))
        });
    }
    g.finish();
}

fn streams(c: &mut Criterion) {
    // Throughput in events: criterion reports events/s, i.e. the cost per chunk.
    let mut out = Vec::with_capacity(64 * 1024);
    let mut g = c.benchmark_group("stream_fixture");
    for (kind, dir) in KINDS {
        let events = fixture_stream(kind);
        g.throughput(Throughput::Elements(events.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(dir), |b| {
            b.iter(|| black_box(translate_stream(kind, black_box(&events), &mut out)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("stream_50_chunks");
    for (kind, dir) in KINDS {
        let events = long_stream(kind, 50);
        g.throughput(Throughput::Elements(events.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(dir), |b| {
            b.iter(|| black_box(translate_stream(kind, black_box(&events), &mut out)))
        });
    }
    g.finish();
}

criterion_group!(benches, requests, responses, streams);
criterion_main!(benches);
