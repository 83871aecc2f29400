//! Added latency per request of the shared limits backend (Redis) over the
//! local one (in-process buckets).
//!
//! One request = one admit + one finish, through four layers (key, team, model,
//! global), each with requests- and tokens-per-minute limits far above what the
//! run takes, and a concurrency cap on the key: 420 tokens reserved, 380
//! settled. Every iteration is timed on its own, so the table shows p50, p99,
//! p99.9 and the mean, not only a mean as criterion would.
//!
//! Run with `cargo bench -p tollgate-benches --bench limits_backend`; it prints
//! a table to stderr. Redis is 127.0.0.1:6379 unless `TOLLGATE_TEST_REDIS`
//! names another (`redis://host:port[/db]`, no password); without one the
//! Redis rows are skipped. Every run has its own key prefix and deletes its
//! keys at the end (they would expire within two minutes anyway).
//! `TOLLGATE_BENCH_SAMPLES` changes the number of samples per row (20,000).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tollgate_limits::{Layer, Layers, LimitSet, Limits};
use tollgate_redis::{LayerRef, RedisLimits, RedisSettings};

/// Tokens reserved at admission, and what the response turned out to use.
const RESERVED: u64 = 420;
const ACTUAL: u64 = 380;
/// Concurrent requests in the concurrent rows, and the gateway-like runtime's
/// workers (`server.threads` defaults to the number of cores: 2 here).
const TASKS: usize = 32;
const WORKERS: usize = 2;
/// The gateway's defaults for the Redis backend: pool of 4, 50 ms timeout.
const POOL: usize = 4;
const GATEWAY_TIMEOUT: Duration = Duration::from_millis(50);

/// The layers of the request: scope and limits. Far from refusing anything.
fn layers_spec() -> [(Layer, &'static str, Limits); 4] {
    let big = Limits {
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
        ..Limits::default()
    };
    [
        (
            Layer::Key,
            "key:bench-key",
            Limits {
                concurrent: Some(10_000),
                ..big
            },
        ),
        (Layer::Team, "team:bench-team", big),
        (Layer::Model, "model:bench-model", big),
        (Layer::Global, "global", big),
    ]
}

fn local_layers() -> Layers {
    let now = Instant::now();
    let mut layers = Layers::default();
    for (layer, scope, limits) in layers_spec() {
        layers.push(
            layer,
            &Arc::new(LimitSet::shared(scope.to_string(), limits, 1, now)),
        );
    }
    layers
}

fn redis_layers() -> [LayerRef<'static>; 4] {
    layers_spec().map(|(layer, scope, limits)| LayerRef {
        layer,
        scope,
        limits,
    })
}

/// Samples (ns) of one row, with the wall time they took.
struct Row {
    name: String,
    ns: Vec<u64>,
    wall: Duration,
}

struct Stats {
    p50: u64,
    p99: u64,
    p999: u64,
    mean: f64,
    max: u64,
    per_sec: f64,
    over_timeout: usize,
}

impl Row {
    fn stats(&self) -> Stats {
        let mut v = self.ns.clone();
        v.sort_unstable();
        // Nearest rank.
        let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            p50: q(0.50),
            p99: q(0.99),
            p999: q(0.999),
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
            max: v[v.len() - 1],
            per_sec: v.len() as f64 / self.wall.as_secs_f64(),
            over_timeout: v
                .iter()
                .filter(|&&n| n > GATEWAY_TIMEOUT.as_nanos() as u64)
                .count(),
        }
    }
}

fn us(ns: f64) -> String {
    format!("{:.2} µs", ns / 1000.0)
}

struct Counts {
    samples: usize,
    warmup: usize,
}

// Local backend.

fn local_one(layers: &Layers) -> u64 {
    let t0 = Instant::now();
    let a = layers.admit(black_box(RESERVED), t0).unwrap();
    layers.finish(&a, Some(black_box(ACTUAL)), Instant::now());
    t0.elapsed().as_nanos() as u64
}

fn local_sequential(c: &Counts) -> Row {
    let layers = local_layers();
    for _ in 0..c.warmup {
        local_one(&layers);
    }
    let start = Instant::now();
    let ns = (0..c.samples).map(|_| local_one(&layers)).collect();
    Row {
        name: "local, sequential".into(),
        ns,
        wall: start.elapsed(),
    }
}

/// Two threads on the same layers: the buckets' contention when every request
/// goes through the same key, team, model and global scope.
fn local_threads(c: &Counts) -> Row {
    let layers = local_layers();
    let per = c.samples / WORKERS;
    let start = Instant::now();
    let ns = std::thread::scope(|s| {
        let hs: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..c.warmup {
                        local_one(&layers);
                    }
                    (0..per).map(|_| local_one(&layers)).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    Row {
        name: format!("local, {WORKERS} threads"),
        ns,
        wall: start.elapsed(),
    }
}

// Redis backend.

/// A runtime like one of the gateway's: multi-threaded, `WORKERS` workers.
fn gateway_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .unwrap()
}

async fn redis_one(r: &RedisLimits, layers: &[LayerRef<'_>], id: &str) -> u64 {
    let t0 = Instant::now();
    let a = match r.admit(layers, RESERVED, id).await {
        Ok(Ok(a)) => a,
        Ok(Err(rej)) => panic!("the bench's limits refused a request: {rej:?}"),
        Err(e) => panic!("Redis failed during the bench: {e}"),
    };
    r.finish(layers, a.reserved, Some(ACTUAL), id)
        .await
        .expect("finish");
    t0.elapsed().as_nanos() as u64
}

async fn redis_sequential(r: Arc<RedisLimits>, c: &Counts) -> Row {
    let (samples, warmup) = (c.samples, c.warmup);
    // Spawned, so that it runs on a worker as a request does in Pingora.
    let (ns, wall) = tokio::spawn(async move {
        let layers = redis_layers();
        for i in 0..warmup {
            redis_one(&r, &layers, &format!("w{i}")).await;
        }
        let start = Instant::now();
        let mut ns = Vec::with_capacity(samples);
        for i in 0..samples {
            let id = format!("s{i}");
            ns.push(redis_one(&r, &layers, &id).await);
        }
        (ns, start.elapsed())
    })
    .await
    .unwrap();
    Row {
        name: "redis, sequential".into(),
        ns,
        wall,
    }
}

async fn redis_concurrent(r: Arc<RedisLimits>, c: &Counts) -> Row {
    let per = c.samples / TASKS;
    let warmup = c.warmup / TASKS + 1;
    let ready = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (r, ready) = (r.clone(), ready.clone());
            tokio::spawn(async move {
                let layers = redis_layers();
                for i in 0..warmup {
                    redis_one(&r, &layers, &format!("w{t}-{i}")).await;
                }
                ready.wait().await;
                let mut ns = Vec::with_capacity(per);
                for i in 0..per {
                    let id = format!("c{t}-{i}");
                    ns.push(redis_one(&r, &layers, &id).await);
                }
                ns
            })
        })
        .collect();
    ready.wait().await;
    let start = Instant::now();
    let mut ns = Vec::with_capacity(per * TASKS);
    for t in tasks {
        ns.extend(t.await.unwrap());
    }
    Row {
        name: format!("redis, {TASKS} concurrent"),
        ns,
        wall: start.elapsed(),
    }
}

/// A plain RESP connection, for what the backend does not offer: the bare
/// round trip, the server's own script time, and deleting the run's keys.
struct Raw(BufStream<TcpStream>);

impl Raw {
    async fn connect(url: &str) -> std::io::Result<Raw> {
        let rest = url.trim_start_matches("redis://");
        let (addr, db) = rest.split_once('/').unwrap_or((rest, ""));
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut raw = Raw(BufStream::new(s));
        if !db.is_empty() {
            raw.cmd(&["SELECT", db]).await?;
        }
        Ok(raw)
    }

    /// Send a command, return its reply (simple, integer or bulk string).
    async fn cmd(&mut self, args: &[&str]) -> std::io::Result<String> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.write_all(out.as_bytes()).await?;
        self.0.flush().await?;
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        let line = line.trim_end();
        match line.as_bytes().first() {
            Some(b'$') => {
                let len: usize = line[1..].parse().unwrap_or(0);
                let mut body = vec![0; len + 2];
                self.0.read_exact(&mut body).await?;
                body.truncate(len);
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            Some(b'-') => Err(std::io::Error::other(line.to_string())),
            _ => Ok(line[1..].to_string()),
        }
    }

    /// Calls and µs spent in scripts so far (`INFO commandstats`, all clients).
    async fn script_usec(&mut self) -> std::io::Result<(u64, u64)> {
        let info = self.cmd(&["INFO", "commandstats"]).await?;
        let (mut calls, mut usec) = (0, 0);
        for line in info.lines() {
            let Some(rest) = line
                .strip_prefix("cmdstat_evalsha:")
                .or_else(|| line.strip_prefix("cmdstat_eval:"))
            else {
                continue;
            };
            for kv in rest.split(',') {
                match kv.split_once('=') {
                    Some(("calls", v)) => calls += v.parse::<u64>().unwrap_or(0),
                    Some(("usec", v)) => usec += v.parse::<u64>().unwrap_or(0),
                    _ => {}
                }
            }
        }
        Ok((calls, usec))
    }
}

/// The loopback round trip alone: PING on a raw connection, from the runtime.
async fn ping(raw: &mut Raw, c: &Counts) -> Row {
    for _ in 0..c.warmup {
        raw.cmd(&["PING"]).await.unwrap();
    }
    let start = Instant::now();
    let mut ns = Vec::with_capacity(c.samples);
    for _ in 0..c.samples {
        let t0 = Instant::now();
        raw.cmd(&["PING"]).await.unwrap();
        ns.push(t0.elapsed().as_nanos() as u64);
    }
    Row {
        name: "PING round trip (raw TCP)".into(),
        ns,
        wall: start.elapsed(),
    }
}

fn main() {
    let env_samples = std::env::var("TOLLGATE_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok());
    // `cargo test --benches` runs this without `--bench`: a short smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let c = match (env_samples, full) {
        (Some(n), _) => Counts {
            samples: n,
            warmup: (n / 10).max(TASKS),
        },
        (None, true) => Counts {
            samples: 20_000,
            warmup: 2_000,
        },
        (None, false) => Counts {
            samples: 640,
            warmup: 64,
        },
    };
    let url = std::env::var("TOLLGATE_TEST_REDIS").unwrap_or("redis://127.0.0.1:6379".into());

    // The clock reads a sample costs (two per sample; the local rows read it once more).
    let mut clock: Vec<u64> = (0..c.samples)
        .map(|_| {
            let t0 = Instant::now();
            black_box(Instant::now());
            t0.elapsed().as_nanos() as u64
        })
        .collect();
    clock.sort_unstable();

    let mut rows = vec![local_sequential(&c), local_threads(&c)];

    let rt = gateway_runtime();
    let prefix = format!(
        "tg-bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut notes = Vec::new();
    let redis = rt.block_on(async {
        let raw = Raw::connect(&url).await;
        let limits = RedisLimits::connect(RedisSettings {
            url: url.clone(),
            pool_size: POOL,
            key_prefix: prefix.clone(),
            // Generous: every sample is measured, none cut off; the rows
            // count how many would have passed the gateway's 50 ms default.
            timeout: Duration::from_secs(2),
            lease: Duration::from_secs(600),
        })
        .await;
        match (raw, limits) {
            (Ok(raw), Ok(limits)) => Some((raw, Arc::new(limits))),
            (Err(e), _) => {
                notes.push(format!("Redis rows skipped: no Redis at {url} ({e})"));
                None
            }
            (_, Err(e)) => {
                notes.push(format!("Redis rows skipped: no Redis at {url} ({e})"));
                None
            }
        }
    });
    if let Some((mut raw, limits)) = redis {
        rt.block_on(async {
            let before = raw.script_usec().await.unwrap_or((0, 0));
            rows.push(redis_sequential(limits.clone(), &c).await);
            let after = raw.script_usec().await.unwrap_or((0, 0));
            if after.0 > before.0 {
                notes.push(format!(
                    "Redis's own time per script (INFO commandstats, eval + evalsha, sequential row): {:.1} µs",
                    (after.1 - before.1) as f64 / (after.0 - before.0) as f64
                ));
            }
            rows.push(redis_concurrent(limits.clone(), &c).await);
            rows.push(ping(&mut raw, &c).await);
            // The run's keys: 4 scopes × rpm, tpm, tpd, conc.
            let keys: Vec<String> = layers_spec()
                .iter()
                .flat_map(|(_, scope, _)| {
                    ["rpm", "tpm", "tpd", "conc"].map(|w| format!("{prefix}:{scope}:{w}"))
                })
                .collect();
            let mut del = vec!["DEL"];
            del.extend(keys.iter().map(String::as_str));
            match raw.cmd(&del).await {
                Ok(n) => notes.push(format!("deleted the run's {n} Redis keys ({prefix}:*)")),
                Err(e) => notes.push(format!("could not delete {prefix}:* ({e}); they expire in 2 min")),
            }
        });
    }

    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    eprintln!(
        "\nlimits backend: one admit + one finish per request, 4 layers (key, team, model, global;\n\
         rpm + tpm each, concurrency cap on the key), {RESERVED} tokens reserved, {ACTUAL} settled.\n\
         {} samples per row after {} warm-up; concurrent rows: {WORKERS} threads (local) or {TASKS} tasks\n\
         on a {WORKERS}-worker runtime (redis); Redis {url}, pool {POOL}.\n",
        c.samples, c.warmup
    );
    eprintln!(
        "{:<w$}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>6}",
        "row", "samples", "p50", "p99", "p99.9", "mean", "max", "req/s", ">50ms"
    );
    let stats: Vec<Stats> = rows.iter().map(Row::stats).collect();
    for (r, s) in rows.iter().zip(&stats) {
        eprintln!(
            "{:<w$}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10.0}  {:>6}",
            r.name,
            r.ns.len(),
            us(s.p50 as f64),
            us(s.p99 as f64),
            us(s.p999 as f64),
            us(s.mean),
            us(s.max as f64),
            s.per_sec,
            s.over_timeout
        );
    }
    if stats.len() >= 4 {
        eprintln!("\nadded latency per request (redis − local):");
        for (label, redis, local) in [
            ("sequential", &stats[2], &stats[0]),
            ("concurrent", &stats[3], &stats[1]),
        ] {
            eprintln!(
                "  {label:<10}  p50 +{}  p99 +{}  mean +{}",
                us(redis.p50 as f64 - local.p50 as f64),
                us(redis.p99 as f64 - local.p99 as f64),
                us(redis.mean - local.mean)
            );
        }
    }
    eprintln!(
        "\nclock overhead per sample (two reads, p50): {} ns",
        clock[clock.len() / 2]
    );
    for n in notes {
        eprintln!("{n}");
    }
}
