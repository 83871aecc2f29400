//! `kill -9` under load, then restart: every request whose response completed
//! more than a second before the kill is in the usage ledger, on SQLite and
//! on PostgreSQL. Runs the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_store::{Store, UsageQuery};

const KEY: &str = "tg-crash-test-key-0001";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

fn start(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn wait_healthy(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    loop {
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{admin}/healthz"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Graceful binary upgrade (Pingora's `-u` + SIGQUIT) under load: the new
/// process takes over the listening sockets, the old one finishes what it has
/// and flushes its ledger, and every completed request is in the ledger —
/// written by one process or the other, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_upgrade_loses_no_request_and_no_record() {
    let dir = tempfile::tempdir().unwrap();
    // The provider runs in the test, so it outlives both gateway processes.
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let ports = Ports {
        data: free_port(),
        admin: free_port(),
        mock: 0,
    };
    let store_url = format!("sqlite://{}/ledger.db", dir.path().display());
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{data}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
  upgrade_sock: "{dir}/upgrade.sock"
  pid_file: "{dir}/tollgate.pid"
  access_log: false
  grace_period_secs: 1
  graceful_shutdown_timeout_secs: 10
providers:
  mock: {{kind: openai_compatible, base_url: "{mock}/v1"}}
models:
  gpt-4o-mini:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 1, output_per_mtok: 2}}
keys:
  - {{name: crash, key: {KEY}}}
store: {{url: "{store_url}"}}
"#,
        data = ports.data,
        admin = ports.admin,
        dir = dir.path().display(),
        mock = mock.base_url(),
    );
    let config = dir.path().join("tollgate.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut old = start(&config);
    wait_healthy(ports.admin).await;

    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", ports.data);
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::builder().no_proxy().build().unwrap();
            let stream = i % 2 == 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
                    "messages": [{"role": "user", "content": "hello [[mock:words=20,gap_ms=5]]"}]});
                let r = c.post(&url).bearer_auth(KEY).json(&body).send().await;
                match r {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(t)
                            if !stream
                                || t.ends_with("data: [DONE]\n\n") && !t.contains("\"error\"") =>
                        {
                            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(t) => failed.lock().unwrap().push(format!("broken stream: {t}")),
                        Err(e) => failed.lock().unwrap().push(format!("body: {e}")),
                    },
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(format!("send: {e}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The new process waits for the sockets, then the old one hands them over.
    let mut new = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "-u", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    Command::new("kill")
        .args(["-QUIT", &old.id().to_string()])
        .status()
        .unwrap();
    let old_exit = tokio::task::spawn_blocking(move || old.wait().unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        old_exit.await.unwrap().success(),
        "the old process exits cleanly"
    );
    Command::new("kill")
        .args(["-TERM", &new.id().to_string()])
        .status()
        .unwrap();
    assert!(new.wait().unwrap().success());

    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(std::sync::atomic::Ordering::Relaxed);
    let store = Store::open(&store_url, 2).await.unwrap();
    let records = store.usage_count().await.unwrap();
    eprintln!(
        "upgrade test: {ok} requests completed, {} failed, {records} ledger records",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 200, "too little load to test: {ok}");
    assert_eq!(records as usize, ok, "every completed request, once");
}
