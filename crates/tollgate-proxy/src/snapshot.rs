//! The runtime form of a [`Config`]: everything the hot path looks up, built
//! once per config load and swapped atomically. A request loads the snapshot
//! once and keeps it, so a reload never changes a request midway.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use tollgate_config::{Config, Failover, HashOn, Pricing, ProviderKind, ProviderTimeouts};
use tollgate_limits::LimitSet;
use tollgate_metrics::{Metrics, TargetMetrics};
use tollgate_router::{Cooldown, Routable, Route, TargetState};

use crate::policy::Registry;

/// The current snapshot, shared by every worker.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Everything a request needs from the config file, immutable. (Keys and
/// teams are in the [`crate::policy::Policy`], which changes more often.)
pub struct Snapshot {
    /// Public models.
    pub models: HashMap<String, Arc<ModelEntry>>,
    /// Model names in order, for `/v1/models`.
    pub model_names: Vec<String>,
    /// Providers.
    pub providers: HashMap<String, Arc<ProviderEntry>>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Completion tokens reserved when a request sets none.
    pub default_completion_tokens: u64,
    /// Client read timeout.
    pub client_read_timeout: Duration,
    /// Client write timeout.
    pub client_write_timeout: Duration,
    /// Write access-log lines.
    pub access_log: bool,
    /// Limits on the whole gateway.
    pub global_limits: Arc<LimitSet>,
}

/// A public model.
pub struct ModelEntry {
    /// Public name.
    pub name: String,
    /// Targets by tier.
    pub route: Route<Arc<TargetEntry>>,
    /// Prices (for the budget estimate; the cost uses the target's).
    pub pricing: Option<Pricing>,
    /// Limits on the model across all keys.
    pub limits: Arc<LimitSet>,
    /// For consistent hashing: what to hash.
    pub hash_on: Option<HashOn>,
    /// When and how far to fail over.
    pub failover: Failover,
}

/// One (provider, upstream model) a model can go to.
pub struct TargetEntry {
    /// The provider.
    pub provider: Arc<ProviderEntry>,
    /// Model name at the provider.
    pub upstream_model: String,
    /// Metric handles for (public model, provider).
    pub metrics: TargetMetrics,
    /// Prices of this target's model.
    pub pricing: Option<Pricing>,
    /// Timeouts: the target's over the model's over the provider's.
    pub timeouts: ProviderTimeouts,
    /// Priority tier.
    pub priority: u32,
    /// Weight within the tier.
    pub weight: u32,
    /// Health, in-flight count, latency estimate.
    pub state: TargetState,
    /// `provider/model`, for consistent hashing and the admin API.
    pub id: String,
}

impl Routable for TargetEntry {
    fn state(&self) -> &TargetState {
        &self.state
    }
    fn hash_id(&self) -> &str {
        &self.id
    }
}

/// One credential of a provider's key pool, with its own cooldown.
pub struct KeySlot {
    /// Credential and protocol headers for this key.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Not used before it ends (after a 429 or 401 on it).
    pub cooldown: Cooldown,
}

/// A provider with its prebuilt headers and peers.
pub struct ProviderEntry {
    /// Name.
    pub name: String,
    /// Wire format.
    pub kind: ProviderKind,
    /// Path prefix.
    pub base_path: String,
    /// `Host` header value.
    pub host_header: HeaderValue,
    /// The key pool (one slot, with no credential, for keyless providers).
    pub keys: Vec<KeySlot>,
    /// Extra headers sent on every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Azure / Anthropic API version.
    pub api_version: Option<String>,
    /// Timeouts.
    pub timeouts: ProviderTimeouts,
    /// Active health check, if configured.
    pub health_check: Option<tollgate_config::ActiveCheck>,
    host: String,
    port: u16,
    tls: bool,
    peers: ArcSwap<Vec<HttpPeer>>,
    next: AtomicUsize,
    next_key: AtomicUsize,
}

impl ProviderEntry {
    /// A key to use now (round robin over those not cooling down), with its index.
    pub fn pick_key(&self, now: Instant) -> Option<(usize, &KeySlot)> {
        let n = self.keys.len();
        let start = self.next_key.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !self.keys[i].cooldown.active(now))
            .map(|i| (i, &self.keys[i]))
    }

    /// Time until some key is usable again.
    pub fn keys_back_in(&self, now: Instant) -> Duration {
        self.keys
            .iter()
            .map(|k| k.cooldown.left(now))
            .min()
            .unwrap_or_default()
    }

    /// A peer to connect to (round robin over resolved addresses), if any resolved.
    pub fn peer(&self) -> Option<HttpPeer> {
        let peers = self.peers.load();
        if peers.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % peers.len();
        Some(peers[i].clone())
    }

    /// The resolved peers (for active health checks).
    pub fn peers(&self) -> Arc<Vec<HttpPeer>> {
        self.peers.load_full()
    }

    /// Host name (for SNI and the `Host` of health checks).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether TLS is used.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Whether any address is known.
    pub fn is_resolved(&self) -> bool {
        !self.peers.load().is_empty()
    }

    /// Host and port to resolve.
    pub fn authority(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// Replace the peers with these addresses.
    pub fn set_addrs(&self, addrs: &[SocketAddr]) {
        let peers = addrs.iter().map(|a| self.make_peer(*a)).collect();
        self.peers.store(Arc::new(peers));
    }

    fn make_peer(&self, addr: SocketAddr) -> HttpPeer {
        // SNI is always the provider's host: an empty SNI would turn certificate checks off.
        let mut p = HttpPeer::new(addr, self.tls, self.host.clone());
        let o = &mut p.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect * 2);
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(self.timeouts.idle);
        o.alpn = ALPN::H1;
        o.verify_cert = true;
        o.verify_hostname = true;
        p
    }
}

/// A snapshot could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A provider's credentials cannot be a header value.
    #[error("provider `{0}`: credentials or version contain characters not allowed in a header")]
    Header(String),
}

impl Snapshot {
    /// Build from a validated config. Resolves provider host names (blocking: call it
    /// at startup or from a background task, never on a request).
    pub fn build(
        config: &Config,
        registry: &Registry,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let now = Instant::now();
        let mut providers = HashMap::new();
        for (name, p) in &config.providers {
            let secrets: Vec<Option<&str>> = if p.api_keys.is_empty() {
                vec![None]
            } else {
                p.api_keys.iter().map(|k| Some(k.expose())).collect()
            };
            let mut keys = Vec::with_capacity(secrets.len());
            for secret in secrets {
                let headers =
                    tollgate_providers::static_headers(p.kind, secret, p.api_version.as_deref())
                        .map_err(|_| SnapshotError::Header(name.clone()))?;
                keys.push(KeySlot {
                    headers,
                    cooldown: Cooldown::default(),
                });
            }
            let mut headers = Vec::with_capacity(p.headers.len());
            for (k, v) in &p.headers {
                let k = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| SnapshotError::Header(name.clone()))?;
                let v =
                    HeaderValue::from_str(v).map_err(|_| SnapshotError::Header(name.clone()))?;
                headers.push((k, v));
            }
            let default_port = if p.tls { 443 } else { 80 };
            let host_header = if p.port == default_port {
                HeaderValue::from_str(&p.host)
            } else if p.host.contains(':') {
                HeaderValue::from_str(&format!("[{}]:{}", p.host, p.port))
            } else {
                HeaderValue::from_str(&format!("{}:{}", p.host, p.port))
            }
            .map_err(|_| SnapshotError::Header(name.clone()))?;
            let entry = Arc::new(ProviderEntry {
                name: name.clone(),
                kind: p.kind,
                base_path: p.base_path.clone(),
                host_header,
                keys,
                headers,
                api_version: p.api_version.clone(),
                timeouts: p.timeouts,
                health_check: p.health_check.clone(),
                host: p.host.clone(),
                port: p.port,
                tls: p.tls,
                peers: ArcSwap::from_pointee(Vec::new()),
                next: AtomicUsize::new(0),
                next_key: AtomicUsize::new(0),
            });
            // Resolution failing here is not fatal: the resolver service keeps trying.
            match (p.host.as_str(), p.port).to_socket_addrs() {
                Ok(addrs) => entry.set_addrs(&addrs.collect::<Vec<_>>()),
                Err(e) => {
                    let carried = previous
                        .and_then(|s| s.providers.get(name))
                        .filter(|old| old.authority() == entry.authority())
                        .map(|old| old.peers.load_full());
                    match carried {
                        Some(peers) => entry.peers.store(peers),
                        None => log::warn!("provider {name}: cannot resolve {}: {e}", p.host),
                    }
                }
            }
            providers.insert(name.clone(), entry);
        }
        let mut models = HashMap::new();
        for (name, m) in &config.models {
            let targets = m
                .targets
                .iter()
                .filter_map(|t| {
                    let provider = providers.get(&t.provider)?.clone();
                    let timeouts = t.timeouts.over(&m.timeouts).apply(&provider.timeouts);
                    Some((
                        t.priority,
                        t.weight,
                        Arc::new(TargetEntry {
                            metrics: metrics.target(name, &t.provider),
                            id: format!("{}/{}", t.provider, t.model),
                            provider,
                            upstream_model: t.model.clone(),
                            pricing: t.pricing,
                            timeouts,
                            priority: t.priority,
                            weight: t.weight,
                            state: TargetState::new(config.health),
                        }),
                    ))
                })
                .collect();
            models.insert(
                name.clone(),
                Arc::new(ModelEntry {
                    name: name.clone(),
                    route: Route::new(targets, m.strategy),
                    hash_on: m.hash_on.clone(),
                    failover: m.failover,
                    pricing: m
                        .pricing
                        .or_else(|| m.targets.first().and_then(|t| t.pricing)),
                    limits: registry.limit_set(&format!("model:{name}"), m.limits, now),
                }),
            );
        }
        Ok(Snapshot {
            global_limits: registry.limit_set("global", config.limits.global, now),
            model_names: config.models.keys().cloned().collect(),
            models,
            providers,
            max_body_bytes: config.server.max_body_bytes,
            default_completion_tokens: config.limits.default_completion_tokens,
            client_read_timeout: config.server.client_read_timeout,
            client_write_timeout: config.server.client_write_timeout,
            access_log: config.server.access_log,
        })
    }
}
