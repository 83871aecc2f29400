//! Test harness: the real Pingora data plane (`HttpProxy<Gateway>`) serving on
//! an ephemeral loopback port, in-process, against a mock provider.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use tokio::sync::watch;
use tollgate_config::Config;
use tollgate_metrics::Metrics;
use tollgate_mock::{MockConfig, MockServer};
use tollgate_proxy::{Gateway, LimiterRegistry, SharedSnapshot, Snapshot};

/// The provider key the mock demands; tests check it reaches the provider and nothing else does.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret";
/// The client key of the default test config.
pub const CLIENT_KEY: &str = "tg-test-client-key";

pub struct Harness {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub mock: MockServer,
    pub state: SharedSnapshot,
    _shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A config with `{mock}` replaced by the mock's base URL.
pub const BASE_CONFIG: &str = r#"
server:
  listen: ["127.0.0.1:1"]
  admin_listen: "127.0.0.1:1"
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
        let mock = MockServer::start(MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let yaml = template.replace("{mock}", &mock.base_url());
        let config = Config::from_yaml_with_env(&yaml, None, &|_| None).unwrap();
        let metrics = Arc::new(Metrics::new());
        let limiters = LimiterRegistry::default();
        let snap = Snapshot::build(&config, &limiters, &metrics, None).unwrap();
        let state: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snap));
        let conf = Arc::new(ServerConf::default());
        let app = Arc::new(pingora::proxy::http_proxy(
            &conf,
            Gateway::new(state.clone(), metrics.clone()),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
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
        Harness {
            addr,
            metrics,
            mock,
            state,
            _shutdown: tx,
            accept,
        }
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
        client()
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The metrics text.
    pub fn metrics_text(&self) -> String {
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
