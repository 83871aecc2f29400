//! The running gateway's shared state, wired once: config snapshot, policy,
//! limit registry, store, ledger and metrics. The binary and the tests build
//! the same [`App`], so tests exercise the real wiring.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use std::path::PathBuf;
use tokio::sync::{watch, Notify};

use tollgate_config::{Config, ConfigErrors};
use tollgate_limits::period_starts;
use tollgate_metrics::Metrics;
use tollgate_store::{Store, StoreError};

use crate::ledger::Ledger;
use crate::policy::{Policy, Registry, SharedPolicy};
use crate::snapshot::{SharedSnapshot, Snapshot, SnapshotError};

/// How often the store's change counter is polled. Changes made through this
/// node's admin API apply at once; those of other nodes within this interval.
pub const POLICY_POLL: Duration = Duration::from_millis(250);

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The config could not become a snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The store could not be opened or read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The ledger writer could not start.
    #[error("ledger: {0}")]
    Ledger(#[from] std::io::Error),
    /// The shared limits backend could not be reached.
    #[error("limits.backend: {0}")]
    Limits(#[from] tollgate_redis::BackendError),
}

/// Everything the data plane and the admin API share.
pub struct App {
    /// The config in force: the one the process started with, or the last
    /// one reloaded.
    config: ArcSwap<Config>,
    /// The config the process started with: its listeners, threads and store
    /// stay in force until an upgrade, whatever a reload reads.
    started_with: Arc<Config>,
    /// The file the config came from, for a reload.
    config_path: Option<PathBuf>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Models and providers.
    pub snapshot: SharedSnapshot,
    /// Keys and teams.
    pub policy: SharedPolicy,
    /// Limit and budget state.
    pub registry: Arc<Registry>,
    /// The database, if configured.
    pub store: Option<Store>,
    /// The usage ledger, if there is a store.
    pub ledger: Option<Ledger>,
    /// Limits shared with other nodes through Redis, if configured.
    pub shared: Option<crate::shared::SharedLimits>,
    /// Prompt APIs and subscriptions, from the file and the store.
    pub catalog: crate::apis::SharedCatalog,
    /// The access log's writer, once the binary installs one; without it
    /// lines go to the `log` crate (target `tollgate::access`).
    pub access_log: std::sync::OnceLock<crate::access_log::AccessLog>,
    sync_now: Notify,
    sync_lock: tokio::sync::Mutex<()>,
    reload_lock: tokio::sync::Mutex<()>,
}

/// What a successful reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Settings that changed in the file but apply only to a new process
    /// (listeners, threads, store, ledger): they need an upgrade.
    pub needs_upgrade: Vec<String>,
}

/// Why a reload was refused; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The process was not started from a file.
    #[error("this gateway was not started from a config file")]
    NoFile,
    /// The new file is invalid.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The file is valid but cannot be put in force.
    #[error("{0}")]
    Apply(String),
}

impl App {
    /// Open the store (running migrations), load keys, teams and spend, start the ledger writer.
    pub async fn start(config: Config, metrics: Arc<Metrics>) -> Result<Arc<App>, AppError> {
        Self::start_from(config, None, metrics).await
    }

    /// [`App::start`], remembering the file so that [`App::reload`] can read it again.
    pub async fn start_from(
        config: Config,
        path: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<App>, AppError> {
        let registry = Arc::new(Registry::default());
        let shared = match &config.limits.backend {
            Some(b) => {
                registry.set_nodes(b.expected_nodes);
                Some(crate::shared::SharedLimits::connect(b).await?)
            }
            None => None,
        };
        let store = match &config.store {
            Some(s) => {
                if let Some(path) = s.url.strip_prefix("sqlite://") {
                    if let Some(dir) = std::path::Path::new(path).parent() {
                        if !dir.as_os_str().is_empty() {
                            std::fs::create_dir_all(dir)?;
                        }
                    }
                }
                Some(Store::open(&s.url, s.max_connections).await?)
            }
            None => None,
        };
        if let Some(store) = &store {
            // Budgets continue where the ledger left them.
            let (day, month) = period_starts(crate::steps::unix_now());
            let spent_day = store.spend_since(day * 1000).await?;
            let spent_month = store.spend_since(month * 1000).await?;
            registry.set_history(spent_day, spent_month);
            // Limits continue too: a restart or upgrade must not hand every
            // key a fresh minute and a fresh day.
            let now_ms = crate::steps::unix_ms();
            let minute = store.limit_usage(now_ms, 60_000, 1_000).await?;
            let day = store.limit_usage(now_ms, 86_400_000, 900_000).await?;
            registry.set_recent(
                &minute,
                Duration::from_secs(1),
                &day,
                Duration::from_secs(900),
            );
        }
        let snapshot = Snapshot::build(&config, &registry, &metrics, None)?;
        let policy = Policy::from_config(&config, &registry);
        let catalog = crate::apis::build_catalog(&config, store.as_ref()).await?;
        let ledger = match &store {
            Some(s) => Some(Ledger::start(s.clone(), config.ledger, &metrics)?),
            None => None,
        };
        let app = Arc::new(App {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            registry,
            store,
            ledger,
            shared,
            catalog: Arc::new(ArcSwap::from_pointee(catalog)),
            access_log: std::sync::OnceLock::new(),
            metrics,
            started_with: Arc::new(config.clone()),
            config: ArcSwap::from_pointee(config),
            config_path: path,
            sync_now: Notify::new(),
            sync_lock: tokio::sync::Mutex::new(()),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        app.sync_policy().await?;
        Ok(app)
    }

    /// Read the store's changes since the current policy, and swap in a new
    /// policy if there are any. Returns whether anything changed.
    pub async fn sync_policy(&self) -> Result<bool, StoreError> {
        let Some(store) = &self.store else {
            self.metrics
                .policy_keys()
                .set(self.policy.load().keys.len() as i64);
            return Ok(false);
        };
        // One sync at a time: two would race to apply the same changes.
        let _guard = self.sync_lock.lock().await;
        let current = self.policy.load_full();
        let version = store.version().await?;
        if version == current.version {
            return Ok(false);
        }
        let config = self.config();
        let next = with_store_changes(store, &current, &config, &self.registry, version).await?;
        // API and subscription writes bump the same counter; the catalog is
        // small, so it is rebuilt whole rather than patched.
        let catalog = crate::apis::build_catalog(&config, Some(store)).await?;
        self.metrics.policy_keys().set(next.keys.len() as i64);
        self.policy.store(Arc::new(next));
        self.catalog.store(Arc::new(catalog));
        Ok(true)
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Read the config file again and, if it is valid, put it in force:
    /// models, providers, limits, prices, keys and teams of the file. Requests
    /// already running keep the snapshot they started with. An invalid file
    /// changes nothing. Counted in `tollgate_config_reloads_total`.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let result = self.reload_inner().await;
        match &result {
            Ok(r) => {
                self.metrics.config_reload(true);
                log::info!("config reloaded");
                for s in &r.needs_upgrade {
                    log::warn!("config reload: `{s}` changed; it applies after an upgrade (SIGQUIT + serve -u)");
                }
            }
            Err(e) => {
                self.metrics.config_reload(false);
                log::error!("config reload refused, the running config stays: {e}");
            }
        }
        result
    }

    async fn reload_inner(&self) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        // One reload at a time: two would race to swap in their snapshots.
        let _reloading = self.reload_lock.lock().await;
        // Reading secrets files and resolving provider hosts block.
        let registry = self.registry.clone();
        let metrics = self.metrics.clone();
        let previous = self.snapshot.load_full();
        let (next, snapshot) = tokio::task::spawn_blocking(move || {
            let next = Config::load(&path).map_err(ReloadError::Invalid)?;
            let snapshot = Snapshot::build(&next, &registry, &metrics, Some(&previous))
                .map_err(|e| ReloadError::Apply(e.to_string()))?;
            Ok::<_, ReloadError>((next, snapshot))
        })
        .await
        .map_err(|e| ReloadError::Apply(e.to_string()))??;
        let needs_upgrade = fixed_settings_changed(&self.started_with, &next);

        // Keys and teams: the file's, then every store key on top, swapped in
        // once so that no request sees a policy without the store's keys.
        let _syncing = self.sync_lock.lock().await;
        let mut policy = Policy::from_config(&next, &self.registry);
        if let Some(store) = &self.store {
            let store_err = |e: StoreError| ReloadError::Apply(format!("store: {e}"));
            let version = store.version().await.map_err(store_err)?;
            // A policy from the file has version 0: every store key applies.
            policy = with_store_changes(store, &policy, &next, &self.registry, version)
                .await
                .map_err(store_err)?;
        }
        let catalog = crate::apis::build_catalog(&next, self.store.as_ref())
            .await
            .map_err(|e| ReloadError::Apply(format!("store: {e}")))?;
        self.catalog.store(Arc::new(catalog));
        self.config.store(Arc::new(next));
        self.snapshot.store(Arc::new(snapshot));
        self.metrics.policy_keys().set(policy.keys.len() as i64);
        self.policy.store(Arc::new(policy));
        Ok(Reloaded { needs_upgrade })
    }

    /// Apply a committed store write to this node's policy and catalog now.
    /// The write is stored whatever happens here, so a failed sync is not the
    /// caller's error: the background sync retries within a poll interval.
    pub async fn apply_store_write(&self) {
        if let Err(e) = self.sync_policy().await {
            log::warn!("change stored, but applying it now failed ({e}); the next poll will");
            self.request_sync();
        }
    }

    /// Ask the sync task to poll now (after a write through the admin API).
    pub fn request_sync(&self) {
        self.sync_now.notify_one();
    }

    /// Poll the store for key and team changes until `shutdown` turns true.
    pub async fn run_policy_sync(&self, mut shutdown: watch::Receiver<bool>) {
        if self.store.is_none() {
            return;
        }
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { return },
                _ = tokio::time::sleep(POLICY_POLL) => {}
                _ = self.sync_now.notified() => {}
            }
            match self.sync_policy().await {
                Ok(_) if failing => {
                    failing = false;
                    log::info!("policy sync: the store answers again");
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.policy_sync_errors().inc();
                    // Keep serving the last policy: the hot path never waits on the store.
                    if !failing {
                        log::error!("policy sync: cannot read the store: {e}");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Publish the gauges that mirror state kept elsewhere — every target's
    /// health, in-flight count and latency estimate, every team's and budgeted
    /// key's spend — right before a scrape, so they cost nothing per request.
    pub fn refresh_gauges(&self) {
        self.refresh_target_gauges();
        self.refresh_budget_gauges();
    }

    fn refresh_budget_gauges(&self) {
        let policy = self.policy.load();
        let now = crate::steps::unix_now();
        let teams = policy
            .teams
            .values()
            .map(|t| ("team", t.id.as_str(), &t.budget));
        // Teams always; keys only when they have a budget (bounded label cardinality).
        let keys = policy
            .keys
            .iter()
            .filter(|(_, k)| !k.budget.budget().is_unlimited())
            .map(|(_, k)| ("key", k.id.as_str(), &k.budget));
        for (scope, id, tracker) in teams.chain(keys) {
            let s = tracker.status(now);
            self.metrics.budget(
                scope,
                id,
                (s.day_spent, s.day_remaining()),
                (s.month_spent, s.month_remaining()),
                s.soft_reached(),
            );
        }
    }

    fn refresh_target_gauges(&self) {
        let snap = self.snapshot.load();
        let now = std::time::Instant::now();
        for m in snap.models.values() {
            for t in m.route.targets() {
                let healthy = t.state.circuit(now) == tollgate_router::Circuit::Closed
                    && t.state.retry_in(now).is_zero();
                self.metrics.target_state(
                    [&m.name, &t.provider.name, &t.upstream_model],
                    healthy,
                    t.state.in_flight(),
                    t.state.latency().map(|d| d.as_secs_f64()),
                );
            }
        }
    }

    /// Flush the ledger and stop its writer. Call after the data plane stopped.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(l) = &self.ledger {
            l.shutdown(timeout);
        }
        if let Some(a) = self.access_log.get() {
            a.shutdown();
        }
    }
}

/// `base` with the store's teams and the keys changed since `base.version`
/// applied, as of the store's change counter `version`.
async fn with_store_changes(
    store: &Store,
    base: &Policy,
    config: &Config,
    registry: &Registry,
    version: i64,
) -> Result<Policy, StoreError> {
    let changed = store.changed_keys(base.version).await?;
    let teams = store.list_teams().await?;
    let version = changed.last().map_or(version, |k| k.version.max(version));
    Ok(base.with_changes(config, registry, &teams, &changed, version))
}

/// Settings read once at process start: listeners, threads, files, store and
/// ledger. A reload reports them; an upgrade applies them.
fn fixed_settings_changed(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.server, &new.server);
    let mut changed = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            changed.push(name.to_string());
        }
    };
    check("server.listen", o.listen == n.listen);
    check("server.admin_listen", o.admin_listen == n.admin_listen);
    check("server.threads", o.threads == n.threads);
    check(
        "server.tls",
        o.tls
            .as_ref()
            .map(|t| (&t.listen, &t.cert_file, &t.key_file, t.h2))
            == n.tls
                .as_ref()
                .map(|t| (&t.listen, &t.cert_file, &t.key_file, t.h2)),
    );
    check("server.h2c", o.h2c == n.h2c);
    check("server.grace_period_secs", o.grace_period == n.grace_period);
    check(
        "server.graceful_shutdown_timeout_secs",
        o.graceful_shutdown_timeout == n.graceful_shutdown_timeout,
    );
    check("server.upgrade_sock", o.upgrade_sock == n.upgrade_sock);
    check("server.pid_file", o.pid_file == n.pid_file);
    check(
        "store",
        old.store.as_ref().map(|s| (&s.url, s.max_connections))
            == new.store.as_ref().map(|s| (&s.url, s.max_connections)),
    );
    check("ledger", old.ledger == new.ledger);
    check("limits.backend", old.limits.backend == new.limits.backend);
    check("mock_upstream", old.mock_upstream == new.mock_upstream);
    changed
}
