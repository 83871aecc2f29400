//! Key lookup and rate limits, per request, with 100,000 keys loaded.
//!
//! The resource-policy target: auth + limit must stay within a few microseconds
//! per request at 100k keys.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate_auth::{KeyHash, KeyStore};
use tollgate_benches::{auth_and_admit, key_n, policy_bench, settle};
use tollgate_limits::{Layer, Layers, LimitSet, Limits};

const KEYS: usize = 100_000;

fn auth(c: &mut Criterion) {
    let pb = policy_bench(KEYS);
    let store = &pb.policy.keys;
    let headers = &pb.headers;
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
    let big = Limits {
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
        ..Limits::default()
    };
    let now = Instant::now();
    let set = std::sync::Arc::new(LimitSet::new(big, now));
    let mut one = Layers::default();
    one.push(Layer::Key, &set);
    g.bench_function("admit_settle_rpm_tpm_one_layer", |b| {
        b.iter(|| {
            let a = one.admit(black_box(420), now).unwrap();
            one.finish(&a, Some(black_box(380)), now);
        })
    });
    let mut four = Layers::default();
    for l in [Layer::Key, Layer::Team, Layer::Model, Layer::Global] {
        four.push(
            l,
            &std::sync::Arc::new(LimitSet::new(
                Limits {
                    tpd: Some(1_000_000_000_000_000),
                    concurrent: Some(1_000_000),
                    ..big
                },
                now,
            )),
        );
    }
    g.bench_function("admit_settle_four_layers_all_limits", |b| {
        b.iter(|| {
            let a = four.admit(black_box(420), now).unwrap();
            four.finish(&a, Some(black_box(380)), now);
        })
    });
    // A key that is out of requests: the refusal path (the bucket never refills at `now`).
    let empty = std::sync::Arc::new(LimitSet::new(
        Limits {
            rpm: Some(1),
            tpm: Some(1000),
            ..Limits::default()
        },
        now,
    ));
    let mut refused = Layers::default();
    refused.push(Layer::Key, &empty);
    let _ = refused.admit(1, now);
    g.bench_function("admit_refused", |b| {
        b.iter(|| black_box(refused.admit(black_box(10), now).is_err()))
    });
    g.finish();

    let mut g = c.benchmark_group("auth_limit_100k");
    g.throughput(Throughput::Elements(1));
    // The whole per-request policy path — header → key → team → model access →
    // key, team, model and global limits → key and team budgets — then its
    // accounting, clock reads included.
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let mut k = 0usize;
    g.bench_function("request_rotating_keys", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            let (now, u) = (Instant::now(), unix());
            let a = auth_and_admit(&pb, black_box(headers[k].as_bytes()), 420, now, u).unwrap();
            settle(a, 380, 0.0001, now, u);
        })
    });
    g.bench_function("request_hot_key", |b| {
        b.iter(|| {
            let (now, u) = (Instant::now(), unix());
            let a = auth_and_admit(&pb, black_box(headers[42].as_bytes()), 420, now, u).unwrap();
            settle(a, 380, 0.0001, now, u);
        })
    });
    g.bench_function("request_unknown_key", |b| {
        b.iter(|| {
            black_box(
                auth_and_admit(
                    &pb,
                    black_box(b"Bearer tg-0000000000000000000000000000000000000000000000ff"),
                    420,
                    Instant::now(),
                    unix(),
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
