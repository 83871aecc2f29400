//! The file's shape, exactly as written (serde, unknown fields denied).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub mock_upstream: Option<MockSection>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSection>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelSection>,
    #[serde(default)]
    pub keys: Vec<KeySection>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub teams: BTreeMap<String, TeamSection>,
    #[serde(default)]
    pub store: Option<StoreSection>,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub ledger: LedgerSection,
    #[serde(default)]
    pub prices_file: Option<PathBuf>,
    #[serde(default)]
    pub prices: BTreeMap<String, PricingSection>,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub apis: Vec<tollgate_apis::ApiSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutingSection {
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            eject_after: default_eject_after(),
            cooldown_ms: default_cooldown_ms(),
        }
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutOverridesSection {
    pub connect_ms: Option<u64>,
    pub ttfb_ms: Option<u64>,
    pub gap_ms: Option<u64>,
    pub total_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StrategySection {
    Weighted,
    LeastInFlight,
    Latency,
    ConsistentHash,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailoverSection {
    #[serde(default)]
    pub on: Option<Vec<String>>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeamSection {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub limits: LimitSpecSection,
    #[serde(default)]
    pub budget: BudgetSection,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetSection {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub soft_pct: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreSection {
    pub url: String,
    #[serde(default = "default_store_connections")]
    pub max_connections: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSection {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LedgerSection {
    #[serde(default = "default_ledger_queue")]
    pub queue_capacity: usize,
    #[serde(default = "default_ledger_batch")]
    pub batch_size: usize,
    #[serde(default = "default_ledger_flush")]
    pub flush_interval_ms: u64,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            queue_capacity: default_ledger_queue(),
            batch_size: default_ledger_batch(),
            flush_interval_ms: default_ledger_flush(),
        }
    }
}

/// The file named by `prices_file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PricesFile {
    pub prices: BTreeMap<String, PricingSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    #[serde(default)]
    pub timeouts: ServerTimeouts,
    #[serde(default = "default_grace")]
    pub grace_period_secs: u64,
    #[serde(default = "default_shutdown")]
    pub graceful_shutdown_timeout_secs: u64,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: PathBuf,
    #[serde(default = "default_pid_file")]
    pub pid_file: PathBuf,
    #[serde(default = "yes")]
    pub access_log: bool,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub h2c: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub listen: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default = "yes")]
    pub h2: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            threads: default_threads(),
            max_body_bytes: default_max_body(),
            timeouts: ServerTimeouts::default(),
            grace_period_secs: default_grace(),
            graceful_shutdown_timeout_secs: default_shutdown(),
            upgrade_sock: default_upgrade_sock(),
            pid_file: default_pid_file(),
            access_log: true,
            tls: None,
            h2c: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerTimeouts {
    #[serde(default = "default_client_read_ms")]
    pub client_read_ms: u64,
    #[serde(default = "default_client_write_ms")]
    pub client_write_ms: u64,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            client_read_ms: default_client_read_ms(),
            client_write_ms: default_client_write_ms(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MockSection {
    pub listen: String,
}

/// The wire format a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// api.openai.com.
    Openai,
    /// Any server speaking OpenAI's API (vLLM, Ollama, Mistral, Groq, DeepSeek…).
    OpenaiCompatible,
    /// Azure OpenAI deployments.
    Azure,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini API.
    Gemini,
}

impl ProviderKind {
    /// The name used in config, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::Azure => "azure",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderSection {
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub api_keys: Option<Vec<String>>,
    #[serde(default)]
    pub optional: bool,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub timeouts: ProviderTimeoutsSection,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckSection {
    pub path: String,
    #[serde(default = "default_check_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout")]
    pub timeout_ms: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderTimeoutsSection {
    pub connect_ms: Option<u64>,
    pub read_ms: Option<u64>,
    pub write_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub total_ms: Option<u64>,
    pub ttfb_ms: Option<u64>,
    pub gap_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelSection {
    pub targets: Vec<TargetSection>,
    #[serde(default)]
    pub pricing: Option<PricingSection>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub limits: LimitSpecSection,
    #[serde(default)]
    pub strategy: Option<StrategySection>,
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub failover: Option<FailoverSection>,
    #[serde(default)]
    pub timeouts: TimeoutOverridesSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetSection {
    pub provider: String,
    pub model: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub timeouts: TimeoutOverridesSection,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct PricingSection {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeySection {
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub limits: LimitSpecSection,
    #[serde(default)]
    pub budget: BudgetSection,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitSpecSection {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub tpd: Option<u64>,
    pub concurrent: Option<u64>,
    pub rpm_burst: Option<u64>,
    pub tpm_burst: Option<u64>,
    pub on_failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    #[serde(default = "default_completion_tokens")]
    pub default_completion_tokens: u64,
    #[serde(default)]
    pub global: LimitSpecSection,
    #[serde(default)]
    pub backend: Option<LimitsBackendSection>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            default_completion_tokens: default_completion_tokens(),
            global: LimitSpecSection::default(),
            backend: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsBackendSection {
    pub kind: String,
    pub url: Option<String>,
    #[serde(default = "default_redis_pool")]
    pub pool_size: usize,
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_redis_lease")]
    pub lease_secs: u64,
    #[serde(default = "default_on_failure")]
    pub on_failure: String,
    #[serde(default = "default_expected_nodes")]
    pub expected_nodes: u32,
}

fn default_redis_pool() -> usize {
    4
}
fn default_redis_prefix() -> String {
    "tollgate".into()
}
fn default_redis_timeout() -> u64 {
    50
}
fn default_redis_lease() -> u64 {
    600
}
fn default_on_failure() -> String {
    "fail_open".into()
}
fn default_expected_nodes() -> u32 {
    1
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:8080".into()]
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
fn default_max_body() -> u64 {
    32 * 1024 * 1024
}
fn default_grace() -> u64 {
    60
}
fn default_shutdown() -> u64 {
    5
}
fn default_client_read_ms() -> u64 {
    60_000
}
fn default_client_write_ms() -> u64 {
    60_000
}
fn default_upgrade_sock() -> PathBuf {
    PathBuf::from("/tmp/tollgate_upgrade.sock")
}
fn default_pid_file() -> PathBuf {
    PathBuf::from("/tmp/tollgate.pid")
}
fn default_completion_tokens() -> u64 {
    1024
}
fn default_store_connections() -> u32 {
    8
}
fn default_ledger_queue() -> usize {
    65_536
}
fn default_ledger_batch() -> usize {
    512
}
fn default_ledger_flush() -> u64 {
    100
}
fn default_check_interval() -> u64 {
    10_000
}
fn default_check_timeout() -> u64 {
    2_000
}
fn default_eject_after() -> u32 {
    3
}
fn default_cooldown_ms() -> u64 {
    10_000
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
