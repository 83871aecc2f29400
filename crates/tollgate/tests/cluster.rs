//! Several gateway processes, one policy: limits shared through a Redis of
//! the test's own (so it can be stopped), keys and the ledger in one
//! PostgreSQL. Runs the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, free_port, metric, scrape, signal, start, wait_healthy};

const ADMIN: &str = "tg-cluster-admin-token-01";
const LIMITED: &str = "tg-cluster-limited-key-01";
const TOKENS: &str = "tg-cluster-tokens-key-001";
const SPENDER: &str = "tg-cluster-spender-key-01";
const STRICT: &str = "tg-cluster-strict-key-001";

/// A redis-server of the test's own, on a free port, keeping nothing on disk.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make services installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            port,
            child: Some(child),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Node {
    data: u16,
    admin: u16,
    child: Child,
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.data)
    }
    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &Path,
    name: &str,
    data: u16,
    admin: u16,
    mock: &str,
    redis: u16,
    store: Option<&str>,
    on_failure: &str,
    nodes: u32,
) -> PathBuf {
    let store = store.map_or(String::new(), |u| format!("store: {{url: \"{u}\"}}"));
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{data}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
  upgrade_sock: "{dir}/{name}.sock"
  pid_file: "{dir}/{name}.pid"
  access_log: false
  grace_period_secs: 5
  graceful_shutdown_timeout_secs: 5
admin: {{token: "{ADMIN}"}}
providers:
  mock: {{kind: openai_compatible, base_url: "{mock}/v1"}}
models:
  gpt-4o-mini:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 1, output_per_mtok: 2}}
keys:
  - {{name: limited, key: {LIMITED}, limits: {{rpm: 100}}}}
  - {{name: tokens, key: {TOKENS}, limits: {{tpd: 600}}}}
  - {{name: spender, key: {SPENDER}, budget: {{daily_usd: 0.002}}}}
  - {{name: strict, key: {STRICT}, limits: {{rpm: 100, on_failure: fail_closed}}}}
limits:
  backend:
    kind: redis
    url: "redis://127.0.0.1:{redis}"
    key_prefix: "tg-cluster-{redis}"
    timeout_ms: 200
    on_failure: {on_failure}
    expected_nodes: {nodes}
{store}
"#,
        dir = dir.display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn nodes(
    dir: &Path,
    count: usize,
    mock: &str,
    redis: u16,
    store: Option<&str>,
    on_failure: &str,
) -> Vec<Node> {
    let mut out = Vec::new();
    for i in 0..count {
        let (data, admin) = (free_port(), free_port());
        let config = write_config(
            dir,
            &format!("node{i}"),
            data,
            admin,
            mock,
            redis,
            store,
            on_failure,
            count as u32,
        );
        out.push(Node {
            data,
            admin,
            child: start(&config),
        });
    }
    for n in &out {
        wait_healthy(n.admin).await;
    }
    out
}

async fn chat(url: &str, key: &str, prompt: &str) -> (u16, serde_json::Value) {
    let r = client()
        .post(url)
        .bearer_auth(key)
        .json(
            &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 20,
            "messages": [{"role": "user", "content": prompt}]}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Three nodes, load spread across them: a 100 rpm key gets 100 ± 2 requests
/// a minute in total (not 100 per node); a 600 tokens-per-day key is never
/// overspent by more than one request, nor is a USD budget; a key disabled through one node's
/// admin API is refused by every node within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_enforce_one_limit_and_one_policy() {
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let redis = Redis::start(free_port());
    let pg = tollgate_store::testing::empty_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = Arc::new(
        nodes(
            dir.path(),
            3,
            &mock.base_url(),
            redis.port,
            Some(pg.url()),
            "fail_closed",
        )
        .await,
    );

    // A key made through node 0 works on every node; disabled through node 1,
    // every node refuses it within a second.
    let made: serde_json::Value = client()
        .post(nodes[0].admin("/admin/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "roaming"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in nodes.iter() {
        loop {
            let (status, _) = chat(&n.url("/v1/chat/completions"), secret, "hi").await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "new key not seen by a node");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let r = client()
        .post(nodes[1].admin(&format!("/admin/v1/keys/{id}/disable")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let disabled_at = Instant::now();
    let mut slowest = Duration::ZERO;
    for n in nodes.iter() {
        loop {
            let (status, body) = chat(&n.url("/v1/chat/completions"), secret, "hi").await;
            if status == 401 {
                assert_eq!(body["error"]["code"], "api_key_disabled");
                break;
            }
            assert!(
                disabled_at.elapsed() < Duration::from_secs(1),
                "node {} still accepts the disabled key after 1 s",
                n.data
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest = slowest.max(disabled_at.elapsed());
    }
    eprintln!("cluster: a key disabled on one node was refused by all within {slowest:?}");

    // Tokens per day across nodes: admitted reservations never exceed it, so
    // what was used cannot either (by more than one request's worth).
    let mut used = 0u64;
    let mut refused = 0;
    for i in 0..40 {
        let n = &nodes[i % 3];
        let (status, body) = chat(
            &n.url("/v1/chat/completions"),
            TOKENS,
            "tell me [[mock:words=15]]",
        )
        .await;
        match status {
            200 => used += body["usage"]["total_tokens"].as_u64().unwrap(),
            429 => refused += 1,
            s => panic!("status {s}: {body}"),
        }
    }
    eprintln!("cluster: tokens-per-day 600: used {used}, {refused} refused");
    assert!(refused > 0, "the daily tokens ran out");
    assert!(used <= 600, "used {used} of 600 tokens");

    // A $0.002 daily budget across nodes: spent once, not once per node.
    let (mut ok, mut most) = (0, 0.0f64);
    for i in 0..90 {
        let n = &nodes[i % 3];
        let (status, body) = chat(
            &n.url("/v1/chat/completions"),
            SPENDER,
            "spend [[mock:words=15]]",
        )
        .await;
        match status {
            200 => {
                ok += 1;
                let u = &body["usage"];
                let cost = u["prompt_tokens"].as_f64().unwrap() * 1e-6
                    + u["completion_tokens"].as_f64().unwrap() * 2e-6;
                most = most.max(cost);
            }
            429 => assert_eq!(body["error"]["code"], "insufficient_quota", "{body}"),
            s => panic!("status {s}: {body}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = tollgate_store::Store::open(pg.url(), 2).await.unwrap();
    let spent = store.spend_since(0).await.unwrap().by_key["config:spender"];
    eprintln!("cluster: $0.002 budget across 3 nodes: {ok} admitted, ${spent:.6} spent (one request ≤ ${most:.6})");
    assert!(ok < 90, "the budget ran out");
    assert!(spent <= 0.002 + most + 1e-9, "spent ${spent} of $0.002");

    // 100 rpm across three nodes. Spend the initial burst, then count what is
    // admitted in one minute: the refill, 100 — not 300.
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..6 {
        let (nodes, accepted, counting, stop) = (
            nodes.clone(),
            accepted.clone(),
            counting.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let n = &nodes[i % 3];
                i += 1;
                let (status, body) = chat(&n.url("/v1/chat/completions"), LIMITED, "hi").await;
                match status {
                    200 if counting.load(Ordering::Relaxed) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    200 | 429 => {}
                    s => panic!("status {s}: {body}"),
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    // The burst of 100 goes within the first second or two.
    let t0 = Instant::now();
    loop {
        let (status, _) = chat(&nodes[0].url("/v1/chat/completions"), LIMITED, "hi").await;
        if status == 429 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the burst never ran out"
        );
    }
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(60)).await;
    counting.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = accepted.load(Ordering::Relaxed);
    eprintln!("cluster: 100 rpm key across 3 nodes: {n} accepted in 60 s");
    assert!(
        (98..=102).contains(&n),
        "{n} accepted in a minute, want 100 ± 2"
    );
    for n in nodes.iter() {
        signal(n.child.id(), "TERM");
    }
}

/// Redis stops under load: a fail-closed node answers 503 at once (no hang),
/// a fail-open node keeps serving on its local share — except for a key whose
/// own limits say `on_failure: fail_closed`; both return to the
/// shared limits when Redis is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_follows_the_failure_policy_and_recovers() {
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let port = free_port();
    let mut redis = Redis::start(port);
    let dir = tempfile::tempdir().unwrap();
    let (closed_data, closed_admin) = (free_port(), free_port());
    let (open_data, open_admin) = (free_port(), free_port());
    let closed = Node {
        data: closed_data,
        admin: closed_admin,
        child: start(&write_config(
            dir.path(),
            "closed",
            closed_data,
            closed_admin,
            &mock.base_url(),
            port,
            None,
            "fail_closed",
            2,
        )),
    };
    let open = Node {
        data: open_data,
        admin: open_admin,
        child: start(&write_config(
            dir.path(),
            "open",
            open_data,
            open_admin,
            &mock.base_url(),
            port,
            None,
            "fail_open",
            2,
        )),
    };
    wait_healthy(closed.admin).await;
    wait_healthy(open.admin).await;
    for n in [&closed, &open] {
        let (status, _) = chat(&n.url("/v1/chat/completions"), LIMITED, "hi").await;
        assert_eq!(status, 200);
    }

    redis.kill();
    // Fail closed: 503 `limits_unavailable`, promptly.
    let t = Instant::now();
    let (status, body) = chat(&closed.url("/v1/chat/completions"), LIMITED, "hi").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "limits_unavailable");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        t.elapsed()
    );
    // Fail open: served, on the local share of 100 rpm between 2 nodes: 50.
    let mut ok = 0;
    for _ in 0..60 {
        let (status, _) = chat(&open.url("/v1/chat/completions"), LIMITED, "hi").await;
        match status {
            200 => ok += 1,
            429 => {}
            s => panic!("fail_open answered {s}"),
        }
    }
    assert_eq!(ok, 50, "the local share is limit ÷ expected nodes");
    // A limit that says fail_closed overrides the node's fail_open.
    let (status, body) = chat(&open.url("/v1/chat/completions"), STRICT, "hi").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "limits_unavailable");
    let m = scrape(open.admin).await;
    assert_eq!(metric(&m, "tollgate_limits_backend_up"), 0.0);
    assert!(metric(&m, "tollgate_limits_fallback_total{policy=\"fail_open\"}") >= 60.0);
    let m = scrape(closed.admin).await;
    assert!(metric(&m, "tollgate_limits_fallback_total{policy=\"fail_closed\"}") >= 1.0);

    // Redis returns (empty): both nodes share again, no restart.
    let _redis = Redis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in [&closed, &open] {
        loop {
            let (status, _) = chat(&n.url("/v1/chat/completions"), LIMITED, "hi").await;
            if status == 200 && metric(&scrape(n.admin).await, "tollgate_limits_backend_up") == 1.0
            {
                break;
            }
            assert!(Instant::now() < deadline, "node {} did not recover", n.data);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for n in [&closed, &open] {
        signal(n.child.id(), "TERM");
    }
}
