//! Test harness: the real Pingora data plane (`HttpProxy<Gateway>`) serving on
//! an ephemeral loopback port, in-process, against a mock provider.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use tokio::sync::watch;
use tollgate_config::Config;
use tollgate_metrics::Metrics;
use tollgate_mock::{MockConfig, MockServer};
// For `on_both_stores!`, which runs in the test crates.
use tollgate_proxy::{App, Gateway, SharedSnapshot};
pub use tollgate_store;

/// The provider key the mock demands; tests check it reaches the provider and nothing else does.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret";
/// The client key of the default test config.
pub const CLIENT_KEY: &str = "tg-test-client-key";

/// The admin token of [`Harness::with_store`].
pub const ADMIN_TOKEN: &str = "tg-test-admin-token-0123456789";

pub struct Harness {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub mock: MockServer,
    pub state: SharedSnapshot,
    pub app: Arc<App>,
    /// One client for every request of this harness: a request whose response
    /// was read to the end leaves its connection for the next, and the gateway
    /// reads that next request only after the previous one's accounting ran.
    pub http: reqwest::Client,
    _shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Serve a Pingora app on an ephemeral loopback port.
async fn serve<A: ServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    rx: watch::Receiver<bool>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // As Pingora's own listener does: without it every response on a
            // kept-alive connection waits for the peer's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut next: Option<Stream> = Some(Box::new(L4Stream::from(tcp)));
                while let Some(s) = next {
                    next = app.process_new(s, &rx).await;
                }
            });
        }
    });
    (addr, task)
}

/// A config with `{mock}` replaced by the mock's base URL.
pub const BASE_CONFIG: &str = r#"
server:
  listen: ["127.0.0.1:1"]
  admin_listen: "127.0.0.1:2"
  max_body_bytes: 33554432
providers:
  mock:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    timeouts: {connect_ms: 1000, read_ms: 5000, total_ms: 20000}
  dead:
    kind: openai_compatible
    base_url: "http://127.0.0.1:9/v1"
    timeouts: {connect_ms: 500}
  slow:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    timeouts: {read_ms: 300}
models:
  gpt-4o-mini:
    targets: [{provider: mock, model: mock-mini}]
    pricing: {input_per_mtok: 1.0, output_per_mtok: 2.0}
  text-embedding-3-small:
    targets: [{provider: mock, model: mock-embed}]
  secret-model:
    targets: [{provider: mock, model: mock-secret}]
  broken:
    targets: [{provider: dead, model: x}]
  sluggish:
    targets: [{provider: slow, model: "slow@hang=1"}]
keys:
  - name: test
    key: tg-test-client-key
    team: qa
    models: [gpt-4o-mini, text-embedding-3-small, broken, sluggish, "gpt-*"]
  - name: limited
    key: tg-limited-key-1
    models: ["*"]
    limits: {rpm: 2}
  - name: tokens
    key: tg-tokens-key-1
    models: ["*"]
    limits: {tpm: 1000}
  - name: off
    key: tg-disabled-key
    disabled: true
  - name: old
    key: tg-expired-key-1
    expires_at: "2020-01-01T00:00:00Z"
"#;

impl Harness {
    /// Start with [`BASE_CONFIG`].
    pub async fn start() -> Harness {
        Harness::with_config(BASE_CONFIG).await
    }

    /// Start with a config template.
    pub async fn with_config(template: &str) -> Harness {
        Harness::build(template, None).await
    }

    /// Start with a config template plus a store at `store_url`, the admin API
    /// behind [`ADMIN_TOKEN`], and a ledger flushing every 20 ms.
    pub async fn with_store(template: &str, store_url: &str) -> Harness {
        Harness::build(template, Some(store_url)).await
    }

    async fn build(template: &str, store_url: Option<&str>) -> Harness {
        let mock = MockServer::start(MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            // Enough for the balancing tests to count every request.
            record_limit: 4096,
        })
        .await
        .unwrap();
        let mut yaml = template.replace("{mock}", &mock.base_url());
        if let Some(url) = store_url {
            yaml.push_str(&format!(
                "\nstore: {{url: \"{url}\", max_connections: 4}}\nadmin: {{token: \"{ADMIN_TOKEN}\"}}\nledger: {{flush_interval_ms: 20}}\n"
            ));
        }
        let config = Config::from_yaml_with_env(&yaml, None, &|_| None).unwrap();
        let metrics = Arc::new(Metrics::new());
        let app = App::start(config, metrics.clone()).await.unwrap();
        let conf = Arc::new(ServerConf::default());
        let proxy = Arc::new(pingora::proxy::http_proxy(&conf, Gateway::new(app.clone())));
        let (tx, rx) = watch::channel(false);
        let (addr, t1) = serve(proxy, rx.clone()).await;
        let admin = Arc::new(tollgate_admin::AdminApp::new(app.clone()));
        let (admin_addr, t2) = serve(admin, rx.clone()).await;
        let sync_app = app.clone();
        let sync_rx = rx.clone();
        let t3 = tokio::spawn(async move { sync_app.run_policy_sync(sync_rx).await });
        let check_app = app.clone();
        let t4 = tokio::spawn(async move { check_app.run_active_checks(rx).await });
        Harness {
            addr,
            admin_addr,
            metrics,
            mock,
            state: app.snapshot.clone(),
            app,
            http: client(),
            _shutdown: tx,
            tasks: vec![t1, t2, t3, t4],
        }
    }

    /// An admin API URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// Call the admin API with the admin token; returns status and JSON (or text as a JSON string).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = client()
            .request(method.parse().unwrap(), self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POST JSON with the default client key.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.post_as(CLIENT_KEY, path, body).await
    }

    pub async fn post_as(
        &self,
        key: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `x-ratelimit-remaining-tokens` for `key`, read from `GET /v1/models`.
    pub async fn tokens_remaining(&self, key: &str) -> u64 {
        let r = self
            .http
            .get(self.url("/v1/models"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        r.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Wait (at most 5 s) until `key` has at least `n` tokens left: a
    /// request's reservation is settled in its accounting step, just after the
    /// client got the last byte.
    pub async fn tokens_back(&self, key: &str, n: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = self.tokens_remaining(key).await;
            if left >= n || std::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The metrics text, gauges refreshed as the admin listener does before a scrape.
    pub fn metrics_text(&self) -> String {
        self.app.refresh_gauges();
        String::from_utf8(self.metrics.encode()).unwrap()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Split an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The value of a metric sample line that starts with `prefix` (name and labels).
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Run `body(store_url)` once on a fresh SQLite file and once on a fresh PostgreSQL database.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, guard) = $crate::tollgate_store::testing::fresh_sqlite().await;
                drop(store);
                super::$name(guard.url()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let (store, guard) = $crate::tollgate_store::testing::fresh_postgres().await;
                drop(store);
                super::$name(guard.url()).await;
            }
        }
    )*};
}
