//! `kill -9` under load, then restart: every request whose response completed
//! more than a second before the kill is in the usage ledger, on SQLite and
//! on PostgreSQL. Runs the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{free_port, start, wait_healthy};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_store::{Store, UsageQuery};

const KEY: &str = "tg-crash-test-key-0001";

struct Ports {
    data: u16,
    admin: u16,
    mock: u16,
}

fn write_config(dir: &Path, store_url: &str, p: &Ports) -> std::path::PathBuf {
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{data}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
  upgrade_sock: "{dir}/upgrade.sock"
  pid_file: "{dir}/tollgate.pid"
  access_log: false
mock_upstream: {{listen: "127.0.0.1:{mock}"}}
providers:
  mock: {{kind: openai_compatible, base_url: "http://127.0.0.1:{mock}/v1"}}
models:
  gpt-4o-mini:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 1, output_per_mtok: 2}}
keys:
  - {{name: crash, key: {KEY}}}
store: {{url: "{store_url}"}}
admin: {{token: "tg-crash-admin-token-000"}}
"#,
        data = p.data,
        admin = p.admin,
        mock = p.mock,
        dir = dir.display(),
    );
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn crash_and_recover(store_url: &str, dir: &Path) {
    let ports = Ports {
        data: free_port(),
        admin: free_port(),
        mock: free_port(),
    };
    let config = write_config(dir, store_url, &ports);
    let mut child = start(&config);
    wait_healthy(ports.admin).await;

    // Load: 16 clients in a loop, each remembering when each response completed.
    let done: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let done = done.clone();
        let stop = stop.clone();
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", ports.data);
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::builder().no_proxy().build().unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}))
                    .send()
                    .await;
                let Ok(r) = r else { continue };
                let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
                if r.status() == 200 && r.bytes().await.is_ok() {
                    done.lock().unwrap().push((id, Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    let done = done.lock().unwrap().clone();
    let must: Vec<&String> = done
        .iter()
        .filter(|(_, t)| *t + Duration::from_secs(1) < killed)
        .map(|(id, _)| id)
        .collect();
    assert!(must.len() > 100, "too little load to test: {}", must.len());

    let store = Store::open(store_url, 2).await.unwrap();
    // A batch whose INSERT reached PostgreSQL before the kill still commits
    // (the server finishes a statement it has whole): wait until the ledger
    // stops changing before taking its measure.
    let mut last = store.usage_count().await.unwrap();
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    while stable_since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = store.usage_count().await.unwrap();
        if n != last {
            last = n;
            stable_since = Instant::now();
        }
    }
    let mut in_ledger = std::collections::HashSet::new();
    let q = UsageQuery {
        from_ms: 0,
        to_ms: i64::MAX,
        ..UsageQuery::default()
    };
    let mut after = None;
    loop {
        let page = store
            .usage_records(&q, 10_000, after.clone())
            .await
            .unwrap();
        for r in &page {
            in_ledger.insert(r.request_id.clone());
        }
        match page.last() {
            Some(l) if page.len() == 10_000 => after = Some((l.ts_ms, l.request_id.clone())),
            _ => break,
        }
    }
    let missing: Vec<&&String> = must.iter().filter(|id| !in_ledger.contains(**id)).collect();
    eprintln!(
        "crash test ({}): {} completed, {} more than 1 s before the kill, {} in the ledger, {} missing",
        store_url.split(':').next().unwrap_or(""),
        done.len(),
        must.len(),
        in_ledger.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} records lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // Restart on the same store: it comes up, serves, and its budgets see the old spend.
    let mut child = start(&config);
    wait_healthy(ports.admin).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = c
        .get(format!(
            "http://127.0.0.1:{}/admin/v1/keys/config:crash",
            ports.admin
        ))
        .bearer_auth("tg-crash-admin-token-000")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let spend = store
        .spend_since(0)
        .await
        .unwrap()
        .by_key
        .get("config:crash")
        .copied()
        .unwrap();
    assert!(
        (v["spend"]["monthly_usd"].as_f64().unwrap() - spend).abs() < 1e-9,
        "{v} vs {spend}"
    );
    let r = c
        .post(format!("http://127.0.0.1:{}/v1/chat/completions", ports.data))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "again"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A graceful stop writes what is queued.
    let pid = child.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let after_stop = store.usage_count().await.unwrap();
    assert_eq!(after_stop as usize, in_ledger.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_older_than_a_second_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.path().display());
    crash_and_recover(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_older_than_a_second_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let pg = tollgate_store::testing::empty_postgres().await;
    crash_and_recover(pg.url(), dir.path()).await;
}
