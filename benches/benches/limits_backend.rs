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
/// Concurrent requests in the concurrent Redis rows, and the gateway-like
/// runtime's workers (`server.threads` defaults to the number of cores: 2 here).
const TASKS: [usize; 2] = [4, 32];
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
    let ready = std::sync::Barrier::new(WORKERS + 1);
    let (ns, wall) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..c.warmup {
                        local_one(&layers);
                    }
                    ready.wait();
                    (0..per).map(|_| local_one(&layers)).collect::<Vec<_>>()
                })
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        let ns = hs
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>();
        (ns, start.elapsed())
    });
    Row {
        name: format!("local, {WORKERS} threads"),
        ns,
        wall,
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

/// `n` requests from `tasks` tasks on the runtime (spawned, so that they run
/// on its workers as requests do in Pingora), each task one request at a time.
/// Timed from when every task is ready; `tag` keeps request ids apart.
async fn redis_row(r: &Arc<RedisLimits>, n: usize, tasks: usize, tag: &str) -> Row {
    let per = n / tasks;
    let ready = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (r, ready, tag) = (r.clone(), ready.clone(), tag.to_string());
            tokio::spawn(async move {
                let layers = redis_layers();
                ready.wait().await;
                let mut ns = Vec::with_capacity(per);
                for i in 0..per {
                    let id = format!("{tag}-{t}-{i}");
                    ns.push(redis_one(&r, &layers, &id).await);
                }
                ns
            })
        })
        .collect();
    ready.wait().await;
    let start = Instant::now();
    let mut ns = Vec::with_capacity(per * tasks);
    for h in handles {
        ns.extend(h.await.unwrap());
    }
    Row {
        name: if tasks == 1 {
            "redis, sequential".into()
        } else {
            format!("redis, {tasks} concurrent")
        },
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

    /// What the server has spent so far (all clients: a Redis that others use
    /// at the same time blurs it).
    async fn server(&mut self) -> Server {
        let mut srv = Server::default();
        let Ok(info) = self.cmd(&["INFO", "all"]).await else {
            return srv;
        };
        for line in info.lines() {
            if let Some(rest) = line
                .strip_prefix("cmdstat_evalsha:")
                .or_else(|| line.strip_prefix("cmdstat_eval:"))
            {
                for kv in rest.split(',') {
                    match kv.split_once('=') {
                        Some(("calls", v)) => srv.scripts += v.parse::<u64>().unwrap_or(0),
                        Some(("usec", v)) => srv.script_us += v.parse::<u64>().unwrap_or(0),
                        _ => {}
                    }
                }
            } else if let Some(v) = line
                .strip_prefix("used_cpu_user_main_thread:")
                .or_else(|| line.strip_prefix("used_cpu_sys_main_thread:"))
            {
                srv.cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
        srv
    }
}

/// Scripts run, µs spent in them (`INFO commandstats`) and CPU seconds of
/// Redis's main thread (`INFO cpu`).
#[derive(Clone, Copy, Default)]
struct Server {
    scripts: u64,
    script_us: u64,
    cpu_s: f64,
}

/// What Redis itself spent during a row.
fn server_note(row: &Row, before: Server, after: Server) -> Option<String> {
    let calls = after.scripts.checked_sub(before.scripts)?;
    if calls == 0 {
        return None;
    }
    Some(format!(
        "{}: Redis ran {:.2} scripts per request, {:.1} µs each (commandstats); its main thread was busy {:.0}% of the row",
        row.name,
        calls as f64 / row.ns.len() as f64,
        after.script_us.saturating_sub(before.script_us) as f64 / calls as f64,
        100.0 * (after.cpu_s - before.cpu_s) / row.wall.as_secs_f64()
    ))
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
            warmup: (n / 10).max(64),
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
            for tasks in std::iter::once(1).chain(TASKS) {
                redis_row(&limits, c.warmup, tasks, &format!("w{tasks}")).await;
                let before = raw.server().await;
                let row = redis_row(&limits, c.samples, tasks, &format!("r{tasks}")).await;
                notes.extend(server_note(&row, before, raw.server().await));
                rows.push(row);
            }
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
                Err(e) => notes.push(format!(
                    "could not delete {prefix}:* ({e}); they expire in 2 min"
                )),
            }
        });
    }

    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    eprintln!(
        "\nlimits backend: one admit + one finish per request, 4 layers (key, team, model, global;\n\
         rpm + tpm each, concurrency cap on the key), {RESERVED} tokens reserved, {ACTUAL} settled.\n\
         {} samples per row after {} warm-up; concurrent rows: {WORKERS} threads (local) or {:?} tasks\n\
         on a {WORKERS}-worker runtime (redis); Redis {url}, pool {POOL}.\n",
        c.samples, c.warmup, TASKS
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
    // Rows 2.. (but the last, PING) are Redis's: each against the local row
    // alike in concurrency (sequential, or the local threads).
    if rows.len() > 3 {
        eprintln!("\nadded latency per request (redis − local):");
        for (i, (r, s)) in rows.iter().zip(&stats).enumerate().skip(2) {
            if i == rows.len() - 1 {
                break;
            }
            let local = if i == 2 { &stats[0] } else { &stats[1] };
            eprintln!(
                "  {:<w$}  p50 +{}  p99 +{}  mean +{}",
                r.name,
                us(s.p50 as f64 - local.p50 as f64),
                us(s.p99 as f64 - local.p99 as f64),
                us(s.mean - local.mean)
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
