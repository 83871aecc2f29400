//! Operations on the real binary under load: zero-downtime upgrade (SIGQUIT
//! and `serve -u -d`, as the systemd unit does it), config reload (SIGHUP and
//! the admin API), graceful shutdown on SIGTERM, TLS with HTTP/2 and h2c.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{alive, client, free_port, metric, scrape, signal, start, wait_healthy, Load};
use tollgate_store::Store;

const KEY: &str = "tg-ops-test-key-00001";
const ADMIN: &str = "tg-ops-admin-token-0001";

struct Gateway {
    data: u16,
    admin: u16,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn new() -> Gateway {
        Gateway {
            data: free_port(),
            admin: free_port(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `server:` with this gateway's ports and files, then `rest`.
    fn write(&self, extra_server: &str, rest: &str) -> std::path::PathBuf {
        let yaml = format!(
            r#"
server:
  listen: ["127.0.0.1:{data}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
  upgrade_sock: "{dir}/upgrade.sock"
  pid_file: "{dir}/tollgate.pid"
  access_log: false
  grace_period_secs: 20
  graceful_shutdown_timeout_secs: 5
{extra_server}
admin: {{token: "{ADMIN}"}}
{rest}
"#,
            data = self.data,
            admin = self.admin,
            dir = self.dir.path().display(),
        );
        let path = self.dir.path().join("tollgate.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn chat_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/chat/completions", self.data)
    }
}

fn models(mock: &str, extra: &str) -> String {
    format!(
        r#"
providers:
  mock: {{kind: openai_compatible, base_url: "{mock}/v1"}}
models:
  gpt-4o-mini:
    targets: [{{provider: mock, model: gpt-4o-mini}}]
    pricing: {{input_per_mtok: 1, output_per_mtok: 2}}
{extra}
keys:
  - {{name: ops, key: {KEY}, budget: {{daily_usd: 1000}}}}
"#
    )
}

fn assert_no_failures(what: &str, failed: &[String]) {
    assert!(
        failed.is_empty(),
        "{what}: {} failed requests, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

async fn chat(url: &str, model: &str, prompt: &str, stream: bool) -> (u16, String) {
    let r = client()
        .post(url)
        .bearer_auth(KEY)
        .json(&serde_json::json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// The systemd unit's upgrade: SIGQUIT to the running process, then
/// `serve -u -d`, whose parent exits only once the new daemon holds the
/// listening sockets. Under steady streaming and plain load, no request fails,
/// no stream breaks, and the ledger has every completed request exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_fails_no_request_and_breaks_no_stream() {
    // The provider runs in the test, so it outlives both gateway processes.
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let gw = Gateway::new();
    let store_url = format!("sqlite://{}/ledger.db", gw.dir.path().display());
    let config = gw.write(
        "",
        &format!(
            "{}\nstore: {{url: \"{store_url}\"}}",
            models(&mock.base_url(), "")
        ),
    );
    let mut old = start(&config);
    wait_healthy(gw.admin).await;

    let load = Load::start(
        gw.chat_url(),
        KEY,
        "gpt-4o-mini",
        16,
        "hello [[mock:words=12,gap_ms=2]]",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = load.completed();
    // A long stream that the old process must finish after the hand-over.
    let url = gw.chat_url();
    let long = tokio::spawn(async move {
        chat(&url, "gpt-4o-mini", "hi [[mock:words=60,gap_ms=50]]", true).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    signal(old.id(), "QUIT");
    let upgraded = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "-u", "-d", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(
        upgraded.success(),
        "`serve -u -d` reports the new daemon ready"
    );
    let new_pid: u32 = std::fs::read_to_string(gw.dir.path().join("tollgate.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old.id());
    let old_exit = tokio::task::spawn_blocking(move || old.wait().unwrap());

    // Keep the load on until well past the hand-over and 2,000 requests.
    let deadline = Instant::now() + Duration::from_secs(60);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while load.completed() < 2000 + before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (plain, streams, failed) = load.finish().await;
    let (status, body) = long.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.ends_with("data: [DONE]\n\n") && body.matches("word").count() == 60,
        "the 3-second stream finished whole on the old process: {body}"
    );
    assert!(
        old_exit.await.unwrap().success(),
        "the old process drains and exits cleanly"
    );

    // The new process continued the budget from the ledger the old one wrote.
    let key = client()
        .get(format!(
            "http://127.0.0.1:{}/admin/v1/keys/config:ops",
            gw.admin
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let spent = key["spend"]["daily_usd"].as_f64().unwrap_or(0.0);
    assert!(spent > 0.0, "spend carried over: {key}");

    signal(new_pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(new_pid) {
        assert!(Instant::now() < deadline, "the new process did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = Store::open(&store_url, 2)
        .await
        .unwrap()
        .usage_count()
        .await
        .unwrap();
    eprintln!(
        "upgrade: {plain} plain + {streams} streamed completed, {} failed, {records} ledger records",
        failed.len()
    );
    assert_no_failures("upgrade", &failed);
    assert!(
        plain + streams >= 2000,
        "too little load: {}",
        plain + streams
    );
    assert!(streams >= 300, "too few streams: {streams}");
    assert_eq!(
        records as usize,
        plain + streams + 1,
        "every completed request (and the long stream), once"
    );
}

/// SIGHUP and `POST /admin/v1/reload`: an invalid file is refused with every
/// error and its path, the old config keeps serving; a valid one is applied;
/// a stream running on a model the new config removes finishes on the
/// snapshot it started with; no request of the steady load fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_invalid_config_and_applies_valid_under_load() {
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let gw = Gateway::new();
    let slow = "  slow-model:\n    targets: [{provider: mock, model: slow}]";
    let config = gw.write("", &models(&mock.base_url(), slow));
    let mut child = start(&config);
    wait_healthy(gw.admin).await;
    let load = Load::start(
        gw.chat_url(),
        KEY,
        "gpt-4o-mini",
        8,
        "hello [[mock:words=8,gap_ms=2]]",
    );
    let reload = || async {
        let r = client()
            .post(format!("http://127.0.0.1:{}/admin/v1/reload", gw.admin))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    let reloads = |result: &'static str| async move {
        metric(
            &scrape(gw.admin).await,
            &format!("tollgate_config_reloads_total{{result=\"{result}\"}}"),
        )
    };

    // 1. Invalid, by SIGHUP: refused, counted, still serving the old models.
    let valid_text = std::fs::read_to_string(&config).unwrap();
    let invalid = valid_text
        .replace(
            "provider: mock, model: slow",
            "provider: nowhere, model: slow",
        )
        .replace("daily_usd: 1000", "daily_usd: -5");
    std::fs::write(&config, &invalid).unwrap();
    signal(child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads("failed").await < 1.0 {
        assert!(Instant::now() < deadline, "SIGHUP reload was not attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloads("ok").await, 0.0);
    let (status, _) = chat(&gw.chat_url(), "slow-model", "hi", false).await;
    assert_eq!(status, 200, "the old config keeps serving");

    // 2. Invalid, by the admin API: every error with its path.
    let (status, body) = reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    let paths: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"models.slow-model.targets[0].provider"),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("keys[0].budget")),
        "{paths:?}"
    );
    assert_eq!(reloads("failed").await, 2.0);

    // 3. Valid: `slow-model` goes, `new-model` comes; a stream already on
    // `slow-model` finishes.
    let url = gw.chat_url();
    let running = tokio::spawn(async move {
        chat(&url, "slow-model", "hi [[mock:words=30,gap_ms=50]]", true).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A prompt API arrives with it.
    let next = valid_text.replace(
        slow,
        "  new-model:\n    targets: [{provider: mock, model: brand-new}]",
    ) + "\napis:\n  - {name: echo, team: elsewhere, status: published, model: new-model, prompt: \"say {{x}}\", variables: [{name: x}]}\n";
    std::fs::write(&config, &next).unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["needs_upgrade"], serde_json::json!([]));
    let (status, body) = chat(&gw.chat_url(), "new-model", "hi", false).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = chat(&gw.chat_url(), "slow-model", "hi", false).await;
    assert_eq!(status, 404, "{body}");
    let catalog: serde_json::Value = client()
        .get(gw.chat_url().replace("/v1/chat/completions", "/catalog"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(catalog["apis"][0]["id"], "echo/v1", "{catalog}");
    let (status, body) = running.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.ends_with("data: [DONE]\n\n") && body.matches("word").count() == 30,
        "the running stream finished whole: {body}"
    );

    // 4. A setting only a new process can apply is reported, the rest applies.
    let moved = next.replace("threads: 2", "threads: 3");
    std::fs::write(&config, &moved).unwrap();
    signal(child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads("ok").await < 2.0 {
        assert!(Instant::now() < deadline, "SIGHUP reload did not apply");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = reload().await;
    assert_eq!(status, 200);
    assert_eq!(body["needs_upgrade"], serde_json::json!(["server.threads"]));

    let (plain, streams, failed) = load.finish().await;
    eprintln!(
        "reload: {plain} plain + {streams} streamed completed, {} failed",
        failed.len()
    );
    assert_no_failures("reload", &failed);
    assert!(
        plain + streams > 100,
        "too little load: {}",
        plain + streams
    );
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

/// SIGTERM: the listener closes at once, running streams finish, and the
/// process exits as soon as they have, well inside the 20 s bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_running_streams_then_exits() {
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let gw = Gateway::new();
    let config = gw.write("", &models(&mock.base_url(), ""));
    let mut child = start(&config);
    wait_healthy(gw.admin).await;
    let mut running = Vec::new();
    for _ in 0..4 {
        let url = gw.chat_url();
        running.push(tokio::spawn(async move {
            chat(&url, "gpt-4o-mini", "hi [[mock:words=40,gap_ms=50]]", true).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    signal(child.id(), "TERM");
    for r in running {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.ends_with("data: [DONE]\n\n") && body.matches("word").count() == 40);
    }
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success());
    let took = t0.elapsed();
    // ~2 s of stream left; the bound is 20 s.
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gw.data)).is_err(),
        "the listener is closed"
    );
}

fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, &cert_pem).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k, cert_pem.into_bytes())
}

/// TLS on the data listener: HTTP/2 by ALPN and HTTP/1.1, plain and streamed;
/// h2c (prior knowledge) on the plain listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_http2_and_http1_and_plain_listener_h2c() {
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let gw = Gateway::new();
    let tls_port = free_port();
    let (cert, key, pem) = self_signed(gw.dir.path());
    let config = gw.write(
        &format!(
            "  h2c: true\n  tls: {{listen: [\"127.0.0.1:{tls_port}\"], cert_file: {}, key_file: {}}}",
            cert.display(),
            key.display()
        ),
        &models(&mock.base_url(), ""),
    );
    let mut child = start(&config);
    wait_healthy(gw.admin).await;
    let root = reqwest::Certificate::from_pem(&pem).unwrap();
    let https = format!("https://localhost:{tls_port}/v1/chat/completions");
    let body = |stream: bool| {
        serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
            "messages": [{"role": "user", "content": "hi [[mock:words=5]]"}]})
    };
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root.clone())
        .resolve("localhost", ([127, 0, 0, 1], tls_port).into())
        .build()
        .unwrap();
    let h1 = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root)
        .resolve("localhost", ([127, 0, 0, 1], tls_port).into())
        .http1_only()
        .build()
        .unwrap();
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let cases = [
        (&h2, https.as_str(), reqwest::Version::HTTP_2),
        (&h1, https.as_str(), reqwest::Version::HTTP_11),
        (&h2c, gw.chat_url().leak() as &str, reqwest::Version::HTTP_2),
    ];
    for (c, url, version) in cases {
        for stream in [false, true] {
            let r = c
                .post(url)
                .bearer_auth(KEY)
                .json(&body(stream))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{url} {version:?} stream={stream}");
            assert_eq!(r.version(), version, "{url}");
            let text = r.text().await.unwrap();
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                assert_eq!(text.matches("word").count(), 5, "{text}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    v["choices"][0]["message"]["content"],
                    "word0 word1 word2 word3 word4"
                );
            }
        }
    }
    // Keys stay required over TLS.
    let r = h2.post(&https).json(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

/// Limit state survives an upgrade: the new process charges its buckets with
/// what the ledger says was taken in the last minute and day, so a key that
/// spent its minute in the old process is still refused in the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_survive_an_upgrade() {
    let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default())
        .await
        .unwrap();
    let gw = Gateway::new();
    let store_url = format!("sqlite://{}/ledger.db", gw.dir.path().display());
    let limited = "tg-ops-limited-key-0001";
    let config = gw.write(
        "",
        &format!(
            "{}  - {{name: limited, key: {limited}, limits: {{rpm: 5}}}}\nstore: {{url: \"{store_url}\"}}",
            models(&mock.base_url(), "")
        ),
    );
    let mut old = start(&config);
    wait_healthy(gw.admin).await;
    let send = || async {
        client()
            .post(gw.chat_url())
            .bearer_auth(limited)
            .json(&serde_json::json!({"model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    };
    for i in 0..5 {
        assert_eq!(send().await.status(), 200, "request {i}");
    }
    assert_eq!(
        send().await.status(),
        429,
        "the old process enforces the limit"
    );
    // The ledger writes every 100 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut new = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "-u", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(old.id(), "QUIT");
    let old_exit = tokio::task::spawn_blocking(move || old.wait().unwrap());
    assert!(old_exit.await.unwrap().success());

    let r = send().await;
    assert_eq!(r.status(), 429, "the new process remembers the minute");
    assert_eq!(r.headers()["x-ratelimit-scope-requests"], "key");
    let wait: f64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0.0 && wait <= 60.0, "retry-after {wait}");
    // Another key was not charged with it.
    let (status, _) = chat(&gw.chat_url(), "gpt-4o-mini", "hi", false).await;
    assert_eq!(status, 200);
    signal(new.id(), "TERM");
    assert!(new.wait().unwrap().success());
}
