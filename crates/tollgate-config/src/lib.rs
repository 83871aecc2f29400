//! Tollgate's configuration file: YAML in, a validated immutable [`Config`] out.
//!
//! Loading happens in two steps, as everywhere a config can be reloaded: the
//! fallible one here (parse, expand `${ENV}`, check every field and every
//! cross-reference, collecting *all* errors with their YAML paths), and an
//! infallible swap elsewhere. Unknown fields are errors: a typo must not
//! silently turn a limit off.

mod env;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::ProviderKind;
use tollgate_auth::KeyHash;
pub use tollgate_limits::{Budget, Limits, OnFailure};
pub use tollgate_router::{HealthPolicy, Strategy};

/// One problem in a config file, with the path of the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path, e.g. `models.gpt-4o.targets[0].provider`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A secret string (provider key) that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for building credentials headers.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listeners, limits on client requests, process settings.
    pub server: Server,
    /// Address of the built-in mock provider, if it should run.
    pub mock_upstream: Option<SocketAddr>,
    /// Providers by name (only enabled ones).
    pub providers: BTreeMap<String, Provider>,
    /// Public models by name.
    pub models: BTreeMap<String, Model>,
    /// Static client keys.
    pub keys: Vec<Key>,
    /// Gateway-wide limit settings.
    pub limits: LimitSettings,
    /// Static teams by id.
    pub teams: BTreeMap<String, Team>,
    /// The database, if any (keys and teams managed at run time, usage ledger).
    pub store: Option<StoreSettings>,
    /// The admin API.
    pub admin: AdminSettings,
    /// The usage ledger's writer.
    pub ledger: LedgerSettings,
    /// The price table (`prices_file` overridden by `prices:`), by model name.
    pub prices: BTreeMap<String, Pricing>,
    /// Passive health of targets.
    pub health: HealthPolicy,
    /// Prompt APIs defined in the file (checked; compiled again by the data plane).
    pub apis: Vec<tollgate_apis::ApiSpec>,
}

/// A team: shared model access, limits and budget for its keys.
#[derive(Clone, Debug)]
pub struct Team {
    /// Id (keys name it in `team:`).
    pub id: String,
    /// Free text.
    pub description: Option<String>,
    /// Models the team's keys may use (a key's own list narrows it further).
    pub models: ModelAccess,
    /// Limits shared by all the team's keys together.
    pub limits: Limits,
    /// Budget shared by all the team's keys together.
    pub budget: Budget,
}

/// `store:`
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `sqlite://path` (relative paths resolved against the config file's
    /// directory) or `postgres://…`.
    pub url: String,
    /// Connection pool size.
    pub max_connections: u32,
}

/// `admin:`
#[derive(Clone, Debug, Default)]
pub struct AdminSettings {
    /// The admin token's stored form; without it the admin API answers 403.
    pub token_hash: Option<KeyHash>,
}

/// `ledger:`
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LedgerSettings {
    /// Records waiting to be written, at most.
    pub queue_capacity: usize,
    /// Records per database transaction, at most.
    pub batch_size: usize,
    /// Longest a record waits before its batch is written.
    pub flush_interval: Duration,
}

/// `server:`
#[derive(Clone, Debug)]
pub struct Server {
    /// Data-plane listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Admin listener (metrics, health).
    pub admin_listen: SocketAddr,
    /// Worker threads for the data plane.
    pub threads: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Timeout for reading each piece of a client's request body.
    pub client_read_timeout: Duration,
    /// Timeout for each write to a client.
    pub client_write_timeout: Duration,
    /// The longest a stopping process lets running requests and streams
    /// finish (it exits as soon as none is left).
    pub grace_period: Duration,
    /// Then, how long its runtimes get to stop and its ledger to flush.
    pub graceful_shutdown_timeout: Duration,
    /// Unix socket for the listening-socket hand-over on upgrade.
    pub upgrade_sock: PathBuf,
    /// PID file.
    pub pid_file: PathBuf,
    /// Write one JSON access-log line per request.
    pub access_log: bool,
    /// TLS listeners, if any.
    pub tls: Option<Tls>,
    /// Accept HTTP/2 without TLS (prior knowledge) on the plain listeners.
    pub h2c: bool,
}

/// TLS on the data plane.
#[derive(Clone, Debug)]
pub struct Tls {
    /// Addresses that speak TLS.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Offer HTTP/2 through ALPN.
    pub h2: bool,
}

/// One upstream provider.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Name used in `models.*.targets[].provider`.
    pub name: String,
    /// Wire format.
    pub kind: ProviderKind,
    /// Whether TLS is used.
    pub tls: bool,
    /// Host name (SNI, `Host` header, DNS).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix from `base_url`, without a trailing slash (e.g. `/v1`).
    pub base_path: String,
    /// Credentials: one key, or a pool rotated on 429 and 401.
    pub api_keys: Vec<Secret>,
    /// Azure `api-version` or Anthropic `anthropic-version`.
    pub api_version: Option<String>,
    /// Timeouts towards this provider.
    pub timeouts: ProviderTimeouts,
    /// Extra headers sent on every request.
    pub headers: Vec<(String, String)>,
    /// Active health check, if configured.
    pub health_check: Option<ActiveCheck>,
}

/// An active health check: `GET path` on every address of the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveCheck {
    /// Path (with the provider's credentials), e.g. `/v1/models`.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Connect and read timeout of one check.
    pub timeout: Duration,
}

/// Upstream timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProviderTimeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// Each read of a non-streamed body.
    pub read: Duration,
    /// From sending the request to the response header (and, for a stream, its first chunk).
    pub ttfb: Duration,
    /// Longest gap between two chunks of a stream.
    pub gap: Duration,
    /// Each write.
    pub write: Duration,
    /// Idle time a pooled connection is kept.
    pub idle: Duration,
    /// The whole exchange, from connect to the last byte.
    pub total: Duration,
}

/// Per-million-token prices in USD.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pricing {
    /// Input tokens.
    pub input_per_mtok: f64,
    /// Output tokens.
    pub output_per_mtok: f64,
    /// Cached input tokens (defaults to the input price).
    pub cached_input_per_mtok: f64,
}

impl Pricing {
    /// Cost in USD of one request.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        let cached = cached.min(prompt);
        ((prompt - cached) as f64 * self.input_per_mtok
            + cached as f64 * self.cached_input_per_mtok
            + completion as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// One place a model is served.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Provider name.
    pub provider: String,
    /// The model's name at that provider (the Azure deployment for `azure`).
    pub model: String,
    /// Relative share of traffic within its priority tier.
    pub weight: u32,
    /// Lower tiers are tried first.
    pub priority: u32,
    /// Prices of what this target serves: the model's, else the price table's
    /// entry for the upstream model.
    pub pricing: Option<Pricing>,
    /// Timeouts that override the model's and the provider's.
    pub timeouts: TimeoutOverrides,
}

/// Timeouts a model or target sets over its provider's (`None` = inherit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutOverrides {
    /// Connect.
    pub connect: Option<Duration>,
    /// Time to first byte.
    pub ttfb: Option<Duration>,
    /// Gap between stream chunks.
    pub gap: Option<Duration>,
    /// One attempt, whole.
    pub total: Option<Duration>,
}

impl TimeoutOverrides {
    /// `self` where set, else `base`.
    pub fn over(&self, base: &TimeoutOverrides) -> TimeoutOverrides {
        TimeoutOverrides {
            connect: self.connect.or(base.connect),
            ttfb: self.ttfb.or(base.ttfb),
            gap: self.gap.or(base.gap),
            total: self.total.or(base.total),
        }
    }

    /// Applied to a provider's timeouts.
    pub fn apply(&self, p: &ProviderTimeouts) -> ProviderTimeouts {
        ProviderTimeouts {
            connect: self.connect.unwrap_or(p.connect),
            ttfb: self.ttfb.unwrap_or(p.ttfb),
            gap: self.gap.unwrap_or(p.gap),
            total: self.total.unwrap_or(p.total),
            ..*p
        }
    }
}

/// Which failures move a request to the next target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverOn {
    /// Cannot connect (refused, unreachable, TLS).
    pub connect: bool,
    /// Connect, first byte or chunk gap timed out (before anything reached the client).
    pub timeout: bool,
    /// The provider answered 429.
    pub rate_limited: bool,
    /// The provider answered 5xx.
    pub server_error: bool,
}

/// Failover settings of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failover {
    /// What triggers it.
    pub on: FailoverOn,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The whole request, all attempts, from arrival.
    pub deadline: Duration,
}

/// What consistent hashing hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// The client key's id.
    Key,
    /// A request header's value (lower-case name).
    Header(String),
}

/// A public model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Public name.
    pub name: String,
    /// Where it is served, only targets whose provider is enabled.
    pub targets: Vec<Target>,
    /// Prices, if known: the model's own, else the price table's entry for its name.
    pub pricing: Option<Pricing>,
    /// Free text for the catalog.
    pub description: Option<String>,
    /// Limits on the model across all keys.
    pub limits: Limits,
    /// How targets within a tier are ordered.
    pub strategy: Strategy,
    /// For [`Strategy::ConsistentHash`]: what to hash.
    pub hash_on: Option<HashOn>,
    /// When and how far to fail over.
    pub failover: Failover,
    /// Timeouts over the providers'.
    pub timeouts: TimeoutOverrides,
}

/// Which models a key may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelAccess {
    /// Every model.
    All,
    /// Names or `prefix*` patterns.
    Only(Vec<String>),
}

impl ModelAccess {
    /// Whether `model` is allowed.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelAccess::All => true,
            ModelAccess::Only(list) => list.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => p == model,
            }),
        }
    }
}

/// A static client key.
#[derive(Clone, Debug)]
pub struct Key {
    /// Display name (logged; the secret never is).
    pub name: String,
    /// Stored form.
    pub hash: KeyHash,
    /// Team, if any.
    pub team: Option<String>,
    /// Allowed models.
    pub models: ModelAccess,
    /// Refused when true.
    pub disabled: bool,
    /// Refused after this Unix time (seconds).
    pub expires_at: Option<i64>,
    /// Limits.
    pub limits: Limits,
    /// Budget.
    pub budget: Budget,
}

/// `limits:`
#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// Completion tokens to reserve when a request sets no `max_tokens`.
    pub default_completion_tokens: u64,
    /// Limits on the whole gateway.
    pub global: Limits,
    /// Where limit state lives: `None` in this process only.
    pub backend: Option<RedisBackend>,
}

/// `limits.backend: {kind: redis, …}`: limit state shared by every node.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisBackend {
    /// `redis://host:port/db`.
    pub url: String,
    /// Multiplexed connections.
    pub pool_size: usize,
    /// Prefix of every key.
    pub key_prefix: String,
    /// The longest a decision waits for Redis.
    pub timeout: Duration,
    /// How long a concurrency slot outlives a node that died holding it.
    pub lease: Duration,
    /// What a request gets while Redis does not answer.
    pub on_failure: OnFailure,
    /// Nodes sharing the limits: while Redis is away, each node enforces
    /// limit ÷ this on its own.
    pub expected_nodes: u32,
}

impl Config {
    /// Load and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::from_yaml(&text, path.parent())
    }

    /// Parse and validate YAML text; relative file paths resolve against `base_dir`.
    pub fn from_yaml(text: &str, base_dir: Option<&Path>) -> Result<Config, ConfigErrors> {
        Config::from_yaml_with_env(text, base_dir, &|name| std::env::var(name).ok())
    }

    /// As [`Config::from_yaml`], with an explicit environment (for tests).
    pub fn from_yaml_with_env(
        text: &str,
        base_dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: e
                    .location()
                    .map(|l| format!("line {} column {}", l.line(), l.column()))
                    .unwrap_or_default(),
                message: format!("invalid YAML: {e}"),
            }])
        })?;
        let mut errors = Vec::new();
        env::expand(&mut value, &mut String::new(), env, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let file: raw::ConfigFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigErrors(vec![ConfigError {
                path: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            }])
        })?;
        validate::validate(file, base_dir)
    }
}

#[cfg(test)]
mod tests;
