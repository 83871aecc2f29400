//! Who may do what: client keys and teams, from the config file and from the
//! store, each with its limit set and budget tracker.
//!
//! The hot path reads a [`Policy`] through one `ArcSwap` load and never waits
//! on the store. A background task ([`crate::App::run_policy_sync`]) polls the
//! store's change counter and swaps in a new `Policy` with the changed keys
//! applied; limit and budget state lives in the [`Registry`], so a rebuild
//! keeps every key's spent requests, tokens and dollars.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tollgate_auth::{KeyHash, KeyStore};
use tollgate_config::{Budget, Config, Limits, ModelAccess};
use tollgate_limits::{BudgetTracker, History, LimitSet};
use tollgate_store::{BudgetSpec, KeyRecord, LimitSpec, LimitUsage, Spend, Team};

/// The current policy, shared by every worker.
pub type SharedPolicy = Arc<ArcSwap<Policy>>;

/// Where a key or team is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config file: read-only at run time.
    Config,
    /// The store: managed through the admin API.
    Store,
}

impl Source {
    /// For the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Store => "store",
        }
    }
}

/// A client key and what it may do.
#[derive(Debug)]
pub struct KeyEntry {
    /// Stable id: the store's, or `config:<name>` for keys in the config file.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Team id.
    pub team: Option<String>,
    /// Allowed models (the team's list narrows it further).
    pub models: ModelAccess,
    /// Disabled keys are refused.
    pub disabled: bool,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// The key's own limits.
    pub limits: Arc<LimitSet>,
    /// The key's spend and budget.
    pub budget: Arc<BudgetTracker>,
    /// Where it is defined.
    pub source: Source,
}

/// A team: limits and budget shared by its keys.
#[derive(Debug)]
pub struct TeamEntry {
    /// Id.
    pub id: String,
    /// Models the team's keys may use.
    pub models: ModelAccess,
    /// Shared limits.
    pub limits: Arc<LimitSet>,
    /// Shared spend and budget.
    pub budget: Arc<BudgetTracker>,
    /// Where it is defined.
    pub source: Source,
}

/// Keys and teams, immutable; replaced whole.
pub struct Policy {
    /// Client keys by digest.
    pub keys: KeyStore<KeyEntry>,
    /// Teams by id.
    pub teams: HashMap<String, Arc<TeamEntry>>,
    /// Store keys: id → current digest (to drop the old digest on rotation).
    by_id: HashMap<String, KeyHash>,
    /// The store's change counter this policy reflects.
    pub version: i64,
}

/// Limit sets and budget trackers by scope (`key:<id>`, `team:<id>`,
/// `model:<name>`, `global`): they outlive every [`Policy`] and snapshot.
pub struct Registry {
    limits: Mutex<HashMap<String, Arc<LimitSet>>>,
    budgets: Mutex<HashMap<String, Arc<BudgetTracker>>>,
    /// Spend already in the ledger when this process started: (today, this month).
    history: Mutex<(Spend, Spend)>,
    /// What each scope took in the last minute and day, per the ledger when
    /// this process started; charged once, to the scope's first limit set.
    recent: Mutex<HashMap<String, History>>,
    /// Nodes that share the limits (through Redis): local buckets hold 1/n.
    nodes: std::sync::atomic::AtomicU32,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            limits: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            history: Mutex::new((Spend::default(), Spend::default())),
            recent: Mutex::new(HashMap::new()),
            nodes: std::sync::atomic::AtomicU32::new(1),
        }
    }
}

impl Registry {
    /// Seed spend from the ledger (today's and this month's, by key and team).
    pub fn set_history(&self, day: Spend, month: Spend) {
        *self.history.lock() = (day, month);
    }

    /// Limits are shared by `nodes` nodes: the local buckets (used while the
    /// shared state is out of reach) hold a 1/`nodes` share. Call before any
    /// limit set exists.
    pub fn set_nodes(&self, nodes: u32) {
        self.nodes
            .store(nodes.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Seed limit state from the ledger's recent usage (bin 0 the newest):
    /// `minute` in `minute_bin`s, `day` in `day_bin`s.
    pub fn set_recent(
        &self,
        minute: &[LimitUsage],
        minute_bin: Duration,
        day: &[LimitUsage],
        day_bin: Duration,
    ) {
        let mut recent: HashMap<String, History> = HashMap::new();
        let scopes = |u: &LimitUsage| {
            let mut s = vec![
                format!("key:{}", u.key_id),
                format!("model:{}", u.model),
                "global".to_string(),
            ];
            if let Some(t) = &u.team_id {
                s.push(format!("team:{t}"));
            }
            s
        };
        let add = |v: &mut Vec<f64>, bin: usize, n: u64| {
            if v.len() <= bin {
                v.resize(bin + 1, 0.0);
            }
            v[bin] += n as f64;
        };
        for u in minute {
            for scope in scopes(u) {
                let h = recent.entry(scope).or_default();
                add(&mut h.minute_requests, u.bin, u.requests);
                add(&mut h.minute_tokens, u.bin, u.tokens);
            }
        }
        for u in day {
            for scope in scopes(u) {
                add(
                    &mut recent.entry(scope).or_default().day_tokens,
                    u.bin,
                    u.tokens,
                );
            }
        }
        for h in recent.values_mut() {
            h.minute_bin = minute_bin;
            h.day_bin = day_bin;
        }
        *self.recent.lock() = recent;
    }

    /// The limit set of a scope: kept while its limits are unchanged, fresh when they change.
    pub fn limit_set(&self, scope: &str, limits: Limits, now: Instant) -> Arc<LimitSet> {
        let mut map = self.limits.lock();
        match map.get(scope) {
            Some(s) if s.limits() == limits => s.clone(),
            _ => {
                let nodes = self.nodes.load(std::sync::atomic::Ordering::Relaxed);
                let s = Arc::new(LimitSet::shared(scope.to_string(), limits, nodes, now));
                if let Some(h) = self.recent.lock().remove(scope) {
                    s.charge_history(&h, now);
                }
                map.insert(scope.to_string(), s.clone());
                s
            }
        }
    }

    /// The budget tracker of a scope; its spend survives a change of budget.
    pub fn budget(&self, scope: &str, budget: Budget, now_unix: i64) -> Arc<BudgetTracker> {
        let mut map = self.budgets.lock();
        if let Some(t) = map.get(scope) {
            t.set_budget(budget);
            return t.clone();
        }
        let (day, month) = {
            let h = self.history.lock();
            let pick = |s: &Spend| match scope.split_once(':') {
                Some(("key", id)) => s.by_key.get(id).copied().unwrap_or(0.0),
                Some(("team", id)) => s.by_team.get(id).copied().unwrap_or(0.0),
                _ => 0.0,
            };
            (pick(&h.0), pick(&h.1))
        };
        let t = Arc::new(BudgetTracker::new(budget, day, month, now_unix));
        map.insert(scope.to_string(), t.clone());
        t
    }

    /// A scope's tracker, if it has one.
    pub fn existing_budget(&self, scope: &str) -> Option<Arc<BudgetTracker>> {
        self.budgets.lock().get(scope).cloned()
    }

    fn forget(&self, scope: &str) {
        self.limits.lock().remove(scope);
        self.budgets.lock().remove(scope);
    }
}

/// Convert the store's limit spec.
pub fn limits_of(s: &LimitSpec) -> Limits {
    Limits {
        rpm: s.rpm,
        tpm: s.tpm,
        tpd: s.tpd,
        concurrent: s.concurrent,
        rpm_burst: s.rpm_burst,
        tpm_burst: s.tpm_burst,
        on_failure: s
            .on_failure
            .as_deref()
            .and_then(tollgate_config::OnFailure::parse),
    }
}

/// Convert the store's budget spec.
pub fn budget_of(s: &BudgetSpec) -> Budget {
    Budget {
        daily_usd: s.daily_usd,
        monthly_usd: s.monthly_usd,
        soft_pct: s.soft_pct,
    }
}

fn access_of(models: &Option<Vec<String>>) -> ModelAccess {
    match models {
        None => ModelAccess::All,
        Some(l) if l.iter().any(|m| m == "*") => ModelAccess::All,
        Some(l) => ModelAccess::Only(l.clone()),
    }
}

/// The id of a key defined in the config file.
pub fn config_key_id(name: &str) -> String {
    format!("config:{name}")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Policy {
    /// The keys and teams of the config file alone.
    pub fn from_config(config: &Config, reg: &Registry) -> Policy {
        let now = Instant::now();
        let unix = now_unix();
        let mut keys = KeyStore::with_capacity(config.keys.len());
        for k in &config.keys {
            let id = config_key_id(&k.name);
            let scope = format!("key:{id}");
            keys.insert(
                k.hash,
                Arc::new(KeyEntry {
                    limits: reg.limit_set(&scope, k.limits, now),
                    budget: reg.budget(&scope, k.budget, unix),
                    id,
                    name: k.name.clone(),
                    team: k.team.clone(),
                    models: k.models.clone(),
                    disabled: k.disabled,
                    expires_at: k.expires_at,
                    source: Source::Config,
                }),
            );
        }
        let teams = config_teams(config, reg, now, unix);
        Policy {
            keys,
            teams,
            by_id: HashMap::new(),
            version: 0,
        }
    }

    /// A new policy: this one with the store's teams (all of them) and the
    /// keys changed since [`Policy::version`] applied.
    pub fn with_changes(
        &self,
        config: &Config,
        reg: &Registry,
        teams: &[Team],
        changed: &[KeyRecord],
        version: i64,
    ) -> Policy {
        let now = Instant::now();
        let unix = now_unix();
        let mut all_teams = config_teams(config, reg, now, unix);
        for t in teams {
            if all_teams.contains_key(&t.id) {
                log::warn!(
                    "team `{}` is defined in the config file and in the store; the config file wins",
                    t.id
                );
                continue;
            }
            let scope = format!("team:{}", t.id);
            all_teams.insert(
                t.id.clone(),
                Arc::new(TeamEntry {
                    id: t.id.clone(),
                    models: access_of(&t.models),
                    limits: reg.limit_set(&scope, limits_of(&t.limits), now),
                    budget: reg.budget(&scope, budget_of(&t.budget), unix),
                    source: Source::Store,
                }),
            );
        }
        // A team gone from the store takes its limit and budget state with it,
        // so one re-created under the same id starts fresh.
        for (id, t) in &self.teams {
            if t.source == Source::Store && !all_teams.contains_key(id) {
                reg.forget(&format!("team:{id}"));
            }
        }
        let mut keys = self.keys.clone();
        let mut by_id = self.by_id.clone();
        for r in changed {
            if let Some(old) = by_id.remove(&r.id) {
                keys.remove(&old);
            }
            let scope = format!("key:{}", r.id);
            if r.deleted {
                reg.forget(&scope);
                continue;
            }
            let hash = match KeyHash::from_hex(&r.hash) {
                Ok(h) => h,
                Err(e) => {
                    log::error!("store key {}: bad hash: {e}", r.id);
                    continue;
                }
            };
            if keys.get(&hash).is_some_and(|k| k.source == Source::Config) {
                log::warn!(
                    "store key {} has the same secret as a key in the config file; ignored",
                    r.id
                );
                continue;
            }
            let entry = Arc::new(KeyEntry {
                id: r.id.clone(),
                name: r.name.clone(),
                team: r.team_id.clone(),
                models: access_of(&r.models),
                disabled: r.disabled,
                expires_at: r.expires_at,
                limits: reg.limit_set(&scope, limits_of(&r.limits), now),
                budget: reg.budget(&scope, budget_of(&r.budget), unix),
                source: Source::Store,
            });
            keys.upsert(hash, entry);
            by_id.insert(r.id.clone(), hash);
        }
        // Config keys point at teams that may have been rebuilt: nothing to do, a
        // key names its team by id and requests look it up in `teams`.
        Policy {
            keys,
            teams: all_teams,
            by_id,
            version,
        }
    }

    /// The team of a key, if it names one that exists.
    pub fn team_of(&self, key: &KeyEntry) -> Option<&Arc<TeamEntry>> {
        key.team.as_ref().and_then(|t| self.teams.get(t))
    }
}

fn config_teams(
    config: &Config,
    reg: &Registry,
    now: Instant,
    unix: i64,
) -> HashMap<String, Arc<TeamEntry>> {
    config
        .teams
        .values()
        .map(|t| {
            let scope = format!("team:{}", t.id);
            (
                t.id.clone(),
                Arc::new(TeamEntry {
                    id: t.id.clone(),
                    models: t.models.clone(),
                    limits: reg.limit_set(&scope, t.limits, now),
                    budget: reg.budget(&scope, t.budget, unix),
                    source: Source::Config,
                }),
            )
        })
        .collect()
}
