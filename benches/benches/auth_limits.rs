//! Key lookup and rate limits, per request, with 100,000 keys loaded.
//!
//! The resource-policy target: auth + limit must stay within a few microseconds
//! per request at 100k keys.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate_auth::{KeyHash, KeyStore};
use tollgate_benches::{auth_and_admit, key_n, key_store, BENCH_LIMITS};
use tollgate_limits::KeyLimiter;

const KEYS: usize = 100_000;

fn auth(c: &mut Criterion) {
    let (store, headers) = key_store(KEYS, BENCH_LIMITS);
    let keys: Vec<String> = (0..KEYS as u64).map(key_n).collect();
    let misses: Vec<String> = (0..1024u64).map(|i| key_n(KEYS as u64 + 1 + i)).collect();

    let mut g = c.benchmark_group("auth_100k");
    g.throughput(Throughput::Elements(1));
    // Rotating over all keys: the map lookup misses the CPU cache as in production.
    let mut i = 0usize;
    g.bench_function("authenticate_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(store.authenticate(black_box(&keys[i])).is_some())
        })
    });
    let mut j = 0usize;
    g.bench_function("authenticate_miss", |b| {
        b.iter(|| {
            j = (j + 1) & 1023;
            black_box(store.authenticate(black_box(&misses[j])).is_none())
        })
    });
    // The digest alone, to split the lookup's cost.
    g.bench_function("sha256_of_key", |b| {
        b.iter(|| black_box(KeyHash::of(black_box(&keys[0]))))
    });
    g.finish();

    let mut g = c.benchmark_group("limits");
    g.throughput(Throughput::Elements(1));
    let l = KeyLimiter::new(BENCH_LIMITS, Instant::now());
    let now = Instant::now();
    g.bench_function("admit_settle_rpm_tpm", |b| {
        b.iter(|| {
            let a = l.admit(black_box(420), now).unwrap();
            l.settle(a.reserved, black_box(380), now);
        })
    });
    g.bench_function("admit_settle_rpm_tpm_with_clock", |b| {
        b.iter(|| {
            let a = l.admit(black_box(420), Instant::now()).unwrap();
            l.settle(a.reserved, black_box(380), Instant::now());
        })
    });
    // A key that is out of requests: the refusal path (the bucket never refills at `now`).
    let empty = KeyLimiter::new(
        tollgate_limits::KeyLimits {
            rpm: Some(1),
            tpm: Some(1000),
        },
        now,
    );
    let _ = empty.admit(1, now);
    g.bench_function("admit_refused", |b| {
        b.iter(|| black_box(empty.admit(black_box(10), now).is_err()))
    });
    g.finish();

    let mut g = c.benchmark_group("auth_limit_100k");
    g.throughput(Throughput::Elements(1));
    // The whole per-request path: header → key → limiter admit → settle, clock read included.
    let mut k = 0usize;
    g.bench_function("request_rotating_keys", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            let now = Instant::now();
            let (key, adm) =
                auth_and_admit(&store, black_box(headers[k].as_bytes()), 420, now).unwrap();
            key.limiter.settle(adm.reserved, 380, now);
        })
    });
    g.bench_function("request_hot_key", |b| {
        b.iter(|| {
            let now = Instant::now();
            let (key, adm) =
                auth_and_admit(&store, black_box(headers[42].as_bytes()), 420, now).unwrap();
            key.limiter.settle(adm.reserved, 380, now);
        })
    });
    g.bench_function("request_unknown_key", |b| {
        b.iter(|| {
            black_box(
                auth_and_admit(
                    &store,
                    black_box(b"Bearer tg-0000000000000000000000000000000000000000000000ff"),
                    420,
                    Instant::now(),
                )
                .is_err(),
            )
        })
    });
    g.finish();

    // Loading: what a config reload with 100k keys costs.
    let mut g = c.benchmark_group("keystore_load");
    g.sample_size(10);
    let hashes: Vec<KeyHash> = keys.iter().map(|k| KeyHash::of(k)).collect();
    g.bench_function("insert_100k_hashes", |b| {
        b.iter(|| {
            let mut s: KeyStore<u32> = KeyStore::with_capacity(KEYS);
            for h in &hashes {
                s.insert(*h, std::sync::Arc::new(0));
            }
            black_box(s.len())
        })
    });
    g.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
