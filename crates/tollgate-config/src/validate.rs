//! From the raw file to a [`Config`]: every check, every error with its path.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_auth::KeyHash;

use crate::raw::{self, ConfigFile, ProviderKind};
use crate::{
    ActiveCheck, AdminSettings, Budget, Config, ConfigError, ConfigErrors, Failover, FailoverOn,
    HashOn, HealthPolicy, Key, LedgerSettings, LimitSettings, Limits, Model, ModelAccess,
    OnFailure, Pricing, Provider, ProviderTimeouts, RedisBackend, Secret, Server, StoreSettings,
    Strategy, Target, Team, TimeoutOverrides, Tls,
};

fn limits(errors: &mut Errors, path: &str, l: raw::LimitSpecSection) -> Limits {
    for (field, v) in [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("tpd", l.tpd),
        ("concurrent", l.concurrent),
        ("rpm_burst", l.rpm_burst),
        ("tpm_burst", l.tpm_burst),
    ] {
        if v == Some(0) {
            errors.push(
                format!("{path}.limits.{field}"),
                "must be at least 1 (omit it for no limit)",
            );
        }
    }
    if l.rpm_burst.is_some() && l.rpm.is_none() {
        errors.push(format!("{path}.limits.rpm_burst"), "needs `rpm`");
    }
    if l.tpm_burst.is_some() && l.tpm.is_none() {
        errors.push(format!("{path}.limits.tpm_burst"), "needs `tpm`");
    }
    let on_failure = l.on_failure.as_deref().and_then(|v| {
        let p = OnFailure::parse(v);
        if p.is_none() {
            errors.push(
                format!("{path}.limits.on_failure"),
                format!("unknown policy `{v}` (known: fail_open, fail_closed)"),
            );
        }
        p
    });
    Limits {
        rpm: l.rpm,
        tpm: l.tpm,
        tpd: l.tpd,
        concurrent: l.concurrent,
        rpm_burst: l.rpm_burst,
        tpm_burst: l.tpm_burst,
        on_failure,
    }
}

fn budget(errors: &mut Errors, path: &str, b: raw::BudgetSection) -> Budget {
    for (field, v) in [("daily_usd", b.daily_usd), ("monthly_usd", b.monthly_usd)] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            errors.push(
                format!("{path}.budget.{field}"),
                "must be a non-negative number",
            );
        }
    }
    if b.soft_pct.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
        errors.push(
            format!("{path}.budget.soft_pct"),
            "must be between 0 and 100",
        );
    }
    Budget {
        daily_usd: b.daily_usd,
        monthly_usd: b.monthly_usd,
        soft_pct: b.soft_pct,
    }
}

fn pricing(errors: &mut Errors, path: &str, p: raw::PricingSection) -> Pricing {
    for (field, v) in [
        ("input_per_mtok", p.input_per_mtok),
        ("output_per_mtok", p.output_per_mtok),
        (
            "cached_input_per_mtok",
            p.cached_input_per_mtok.unwrap_or(0.0),
        ),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            errors.push(format!("{path}.{field}"), "must be a non-negative number");
        }
    }
    Pricing {
        input_per_mtok: p.input_per_mtok,
        output_per_mtok: p.output_per_mtok,
        cached_input_per_mtok: p.cached_input_per_mtok.unwrap_or(p.input_per_mtok),
    }
}

fn model_access(
    errors: &mut Errors,
    path: &str,
    list: Option<Vec<String>>,
    known: &dyn Fn(&str) -> bool,
) -> ModelAccess {
    match list {
        None => ModelAccess::All,
        Some(list) if list.iter().any(|m| m == "*") => ModelAccess::All,
        Some(list) => {
            for (j, m) in list.iter().enumerate() {
                if !m.ends_with('*') && !known(m) {
                    errors.push(
                        format!("{path}.models[{j}]"),
                        format!("unknown model `{m}`"),
                    );
                }
            }
            ModelAccess::Only(list)
        }
    }
}

fn overrides(errors: &mut Errors, path: &str, t: raw::TimeoutOverridesSection) -> TimeoutOverrides {
    for (field, v) in [
        ("connect_ms", t.connect_ms),
        ("ttfb_ms", t.ttfb_ms),
        ("gap_ms", t.gap_ms),
        ("total_ms", t.total_ms),
    ] {
        if v == Some(0) {
            errors.push(format!("{path}.timeouts.{field}"), "must be at least 1");
        }
    }
    let d = |v: Option<u64>| v.map(Duration::from_millis);
    TimeoutOverrides {
        connect: d(t.connect_ms),
        ttfb: d(t.ttfb_ms),
        gap: d(t.gap_ms),
        total: d(t.total_ms),
    }
}

fn failover(errors: &mut Errors, path: &str, f: Option<raw::FailoverSection>) -> Failover {
    let mut out = Failover {
        on: FailoverOn {
            connect: true,
            timeout: true,
            rate_limited: true,
            server_error: true,
        },
        max_attempts: 3,
        deadline: Duration::from_secs(600),
    };
    let Some(f) = f else { return out };
    if let Some(on) = f.on {
        out.on = FailoverOn {
            connect: false,
            timeout: false,
            rate_limited: false,
            server_error: false,
        };
        for (i, w) in on.iter().enumerate() {
            match w.as_str() {
                "connect" => out.on.connect = true,
                "timeout" => out.on.timeout = true,
                "429" => out.on.rate_limited = true,
                "5xx" => out.on.server_error = true,
                other => errors.push(
                    format!("{path}.failover.on[{i}]"),
                    format!("`{other}` is not one of connect, timeout, 429, 5xx"),
                ),
            }
        }
    }
    if let Some(n) = f.max_attempts {
        if n == 0 {
            errors.push(
                format!("{path}.failover.max_attempts"),
                "must be at least 1",
            );
        }
        out.max_attempts = n.max(1);
    }
    if let Some(ms) = f.deadline_ms {
        if ms == 0 {
            errors.push(format!("{path}.failover.deadline_ms"), "must be at least 1");
        }
        out.deadline = Duration::from_millis(ms.max(1));
    }
    out
}

/// The price table: `prices_file`'s entries, overridden by `prices:`.
fn price_table(
    errors: &mut Errors,
    file: Option<&Path>,
    inline: BTreeMap<String, raw::PricingSection>,
    base_dir: Option<&Path>,
) -> BTreeMap<String, Pricing> {
    let mut table = BTreeMap::new();
    if let Some(f) = file {
        let f = resolve(base_dir, f);
        let parsed = std::fs::read_to_string(&f)
            .map_err(|e| format!("cannot read {}: {e}", f.display()))
            .and_then(|text| {
                serde_yaml::from_str::<raw::PricesFile>(&text)
                    .map_err(|e| format!("{}: {e}", f.display()))
            });
        match parsed {
            Ok(p) => {
                for (name, p) in p.prices {
                    let v = pricing(errors, &format!("prices_file:{name}"), p);
                    table.insert(name, v);
                }
            }
            Err(e) => errors.push("prices_file", e),
        }
    }
    for (name, p) in inline {
        let v = pricing(errors, &format!("prices.{name}"), p);
        table.insert(name, v);
    }
    table
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn addr(errors: &mut Errors, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(path, format!("`{s}` is not an IP:port address"));
            None
        }
    }
}

pub(crate) fn validate(file: ConfigFile, base_dir: Option<&Path>) -> Result<Config, ConfigErrors> {
    let mut errors = Errors(Vec::new());
    let server = server(&mut errors, file.server, base_dir);
    let mock_upstream = file
        .mock_upstream
        .and_then(|m| addr(&mut errors, "mock_upstream.listen", &m.listen));

    let mut providers = BTreeMap::new();
    let mut disabled = HashSet::new();
    // Providers with errors of their own: references to them are not errors twice.
    let mut broken = HashSet::new();
    for (name, p) in file.providers {
        match provider(&mut errors, &name, p, base_dir) {
            Some(Some(p)) => {
                providers.insert(name, p);
            }
            Some(None) => {
                disabled.insert(name);
            }
            None => {
                broken.insert(name);
            }
        }
    }

    let prices = price_table(
        &mut errors,
        file.prices_file.as_deref(),
        file.prices,
        base_dir,
    );
    let mut models = BTreeMap::new();
    let mut dropped_models = HashSet::new();
    for (name, m) in file.models {
        let path = format!("models.{name}");
        if m.targets.is_empty() {
            errors.push(
                format!("{path}.targets"),
                "a model needs at least one target",
            );
            continue;
        }
        let own_pricing = m
            .pricing
            .map(|p| pricing(&mut errors, &format!("{path}.pricing"), p));
        let model_pricing = own_pricing.or_else(|| prices.get(&name).copied());
        let mut targets = Vec::with_capacity(m.targets.len());
        for (i, t) in m.targets.into_iter().enumerate() {
            let tpath = format!("{path}.targets[{i}]");
            if t.model.is_empty() {
                errors.push(format!("{tpath}.model"), "must not be empty");
            }
            if t.weight == 0 {
                errors.push(format!("{tpath}.weight"), "must be at least 1");
            }
            if disabled.contains(&t.provider) || broken.contains(&t.provider) {
                continue;
            }
            if !providers.contains_key(&t.provider) {
                errors.push(
                    format!("{tpath}.provider"),
                    format!("unknown provider `{}`", t.provider),
                );
                continue;
            }
            let pricing = model_pricing.or_else(|| prices.get(&t.model).copied());
            let timeouts = overrides(&mut errors, &tpath, t.timeouts);
            targets.push(Target {
                timeouts,
                provider: t.provider,
                model: t.model,
                weight: t.weight,
                priority: t.priority,
                pricing,
            });
        }
        if targets.is_empty() {
            // Every target sat on an optional provider whose key is unset.
            dropped_models.insert(name);
            continue;
        }
        let limits = limits(&mut errors, &path, m.limits);
        let strategy = match m.strategy {
            None | Some(raw::StrategySection::Weighted) => Strategy::Weighted,
            Some(raw::StrategySection::LeastInFlight) => Strategy::LeastInFlight,
            Some(raw::StrategySection::Latency) => Strategy::Latency,
            Some(raw::StrategySection::ConsistentHash) => Strategy::ConsistentHash,
        };
        let hash_on = match m.hash_on.as_deref() {
            None => None,
            Some("key") => Some(HashOn::Key),
            Some(h) => match h.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Some(HashOn::Header(name.to_ascii_lowercase()))
                }
                _ => {
                    errors.push(format!("{path}.hash_on"), "is `key` or `header:<name>`");
                    None
                }
            },
        };
        if strategy == Strategy::ConsistentHash && hash_on.is_none() && m.hash_on.is_none() {
            errors.push(
                format!("{path}.hash_on"),
                "consistent_hash needs `hash_on: key` or `hash_on: header:<name>`",
            );
        }
        let failover = failover(&mut errors, &path, m.failover);
        let model_timeouts = overrides(&mut errors, &path, m.timeouts);
        models.insert(
            name.clone(),
            Model {
                name,
                targets,
                pricing: model_pricing,
                description: m.description,
                limits,
                strategy,
                hash_on,
                failover,
                timeouts: model_timeouts,
            },
        );
    }

    let mut keys = Vec::with_capacity(file.keys.len());
    let mut seen_names = HashSet::new();
    let mut seen_hashes = HashSet::new();
    for (i, k) in file.keys.into_iter().enumerate() {
        let path = format!("keys[{i}]");
        if k.name.is_empty() {
            errors.push(format!("{path}.name"), "must not be empty");
        } else if !seen_names.insert(k.name.clone()) {
            errors.push(
                format!("{path}.name"),
                format!("duplicate key name `{}`", k.name),
            );
        }
        let hash = match (&k.key, &k.hash) {
            (Some(_), Some(_)) => {
                errors.push(&path, "set either `key` or `hash`, not both");
                None
            }
            (None, None) => {
                errors.push(
                    &path,
                    "set `key` (usually `${ENV_VAR}`) or `hash` (see `tollgate hash-key`)",
                );
                None
            }
            (Some(plain), None) => {
                if plain.len() < 8 {
                    errors.push(format!("{path}.key"), "a key must be at least 8 characters");
                    None
                } else {
                    Some(KeyHash::of(plain))
                }
            }
            (None, Some(h)) => match KeyHash::parse(h) {
                Ok(h) => Some(h),
                Err(e) => {
                    errors.push(format!("{path}.hash"), e.to_string());
                    None
                }
            },
        };
        if let Some(h) = hash {
            if !seen_hashes.insert(h) {
                errors.push(&path, "the same key is configured twice");
            }
        }
        let known = |m: &str| models.contains_key(m) || dropped_models.contains(m);
        let models_access = model_access(&mut errors, &path, k.models, &known);
        let expires_at = k.expires_at.as_deref().and_then(|s| {
            match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                Ok(t) => Some(t.unix_timestamp()),
                Err(e) => {
                    errors.push(
                        format!("{path}.expires_at"),
                        format!("not an RFC 3339 time: {e}"),
                    );
                    None
                }
            }
        });
        let key_limits = limits(&mut errors, &path, k.limits);
        let key_budget = budget(&mut errors, &path, k.budget);
        if let Some(hash) = hash {
            keys.push(Key {
                name: k.name,
                hash,
                team: k.team,
                models: models_access,
                disabled: k.disabled,
                expires_at,
                limits: key_limits,
                budget: key_budget,
            });
        }
    }

    let mut teams = BTreeMap::new();
    for (id, t) in file.teams {
        let path = format!("teams.{id}");
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errors.push(&path, "a team id is letters, digits, `-`, `_` and `.`");
        }
        let known = |m: &str| models.contains_key(m) || dropped_models.contains(m);
        let team = Team {
            id: id.clone(),
            description: t.description,
            models: model_access(&mut errors, &path, t.models, &known),
            limits: limits(&mut errors, &path, t.limits),
            budget: budget(&mut errors, &path, t.budget),
        };
        teams.insert(id, team);
    }
    let global = limits(&mut errors, "limits.global", file.limits.global);
    let backend = file
        .limits
        .backend
        .and_then(|b| limits_backend(&mut errors, b));

    let store = file.store.map(|s| {
        let url = if let Some(p) = s.url.strip_prefix("sqlite://") {
            let p = Path::new(p);
            match base_dir {
                Some(b) if p.is_relative() && !p.as_os_str().is_empty() => {
                    format!("sqlite://{}", b.join(p).display())
                }
                _ => s.url.clone(),
            }
        } else if s.url.starts_with("postgres://") || s.url.starts_with("postgresql://") {
            s.url.clone()
        } else {
            errors.push("store.url", "must start with `sqlite://` or `postgres://`");
            s.url.clone()
        };
        if s.max_connections == 0 {
            errors.push("store.max_connections", "must be at least 1");
        }
        StoreSettings {
            url,
            max_connections: s.max_connections,
        }
    });
    let admin_token = match (file.admin.token, file.admin.token_hash) {
        (Some(_), Some(_)) => {
            errors.push("admin", "set either `token` or `token_hash`, not both");
            None
        }
        (Some(t), None) if t.is_empty() => None,
        (Some(t), None) if t.len() < 16 => {
            errors.push(
                "admin.token",
                "an admin token must be at least 16 characters",
            );
            None
        }
        (Some(t), None) => Some(KeyHash::of(&t)),
        (None, Some(h)) => match KeyHash::parse(&h) {
            Ok(h) => Some(h),
            Err(e) => {
                errors.push("admin.token_hash", e.to_string());
                None
            }
        },
        (None, None) => None,
    };
    let l = &file.ledger;
    if l.queue_capacity == 0 || l.batch_size == 0 || l.flush_interval_ms == 0 {
        errors.push(
            "ledger",
            "queue_capacity, batch_size and flush_interval_ms must be at least 1",
        );
    }
    let ledger = LedgerSettings {
        queue_capacity: l.queue_capacity,
        batch_size: l.batch_size,
        flush_interval: Duration::from_millis(l.flush_interval_ms),
    };

    if file.limits.default_completion_tokens == 0 {
        errors.push("limits.default_completion_tokens", "must be at least 1");
    }

    let mut seen_apis = HashSet::new();
    for (i, a) in file.apis.iter().enumerate() {
        let path = format!("apis[{i}]");
        if let Err(e) = a.compile() {
            for e in e.0 {
                errors.push(format!("{path}.{}", e.path), e.message);
            }
        }
        if !models.contains_key(&a.model) && !dropped_models.contains(&a.model) {
            errors.push(
                format!("{path}.model"),
                format!("unknown model `{}`", a.model),
            );
        }
        if !seen_apis.insert((a.name.clone(), a.version.clone())) {
            errors.push(
                format!("{path}.version"),
                format!("API `{}/{}` is defined twice", a.name, a.version),
            );
        }
    }

    if !errors.0.is_empty() {
        return Err(ConfigErrors(errors.0));
    }
    let server = server.ok_or_else(|| ConfigErrors(Vec::new()))?;
    Ok(Config {
        server,
        mock_upstream,
        providers,
        models,
        keys,
        limits: LimitSettings {
            default_completion_tokens: file.limits.default_completion_tokens,
            global,
            backend,
        },
        teams,
        store,
        admin: AdminSettings {
            token_hash: admin_token,
        },
        ledger,
        prices,
        health: HealthPolicy {
            eject_after: file.routing.eject_after.max(1),
            cooldown: Duration::from_millis(file.routing.cooldown_ms),
        },
        apis: file.apis,
    })
}

fn limits_backend(errors: &mut Errors, b: raw::LimitsBackendSection) -> Option<RedisBackend> {
    let p = "limits.backend";
    if b.kind != "redis" {
        errors.push(
            format!("{p}.kind"),
            format!("unknown backend `{}` (known: redis; omit `backend` to keep limits in each process)", b.kind),
        );
        return None;
    }
    let url = match b.url {
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => u,
        Some(u) => {
            errors.push(format!("{p}.url"), format!("`{u}` is not a redis:// URL"));
            return None;
        }
        None => {
            errors.push(format!("{p}.url"), "required for the redis backend");
            return None;
        }
    };
    let on_failure = match OnFailure::parse(&b.on_failure) {
        Some(p) => p,
        None => {
            let other = &b.on_failure;
            errors.push(
                format!("{p}.on_failure"),
                format!("unknown policy `{other}` (known: fail_open, fail_closed)"),
            );
            return None;
        }
    };
    for (field, v) in [
        ("pool_size", b.pool_size as u64),
        ("timeout_ms", b.timeout_ms),
        ("lease_secs", b.lease_secs),
        ("expected_nodes", u64::from(b.expected_nodes)),
    ] {
        if v == 0 {
            errors.push(format!("{p}.{field}"), "must be at least 1");
        }
    }
    Some(RedisBackend {
        url,
        pool_size: b.pool_size.max(1),
        key_prefix: b.key_prefix,
        timeout: Duration::from_millis(b.timeout_ms.max(1)),
        lease: Duration::from_secs(b.lease_secs.max(1)),
        on_failure,
        expected_nodes: b.expected_nodes.max(1),
    })
}

/// A path from the file, relative to the file's directory.
fn resolve(base_dir: Option<&Path>, p: &Path) -> PathBuf {
    match base_dir {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}

fn server(errors: &mut Errors, s: raw::ServerSection, base_dir: Option<&Path>) -> Option<Server> {
    if s.listen.is_empty() {
        errors.push("server.listen", "at least one listen address is needed");
    }
    let listen: Vec<SocketAddr> = s
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| addr(errors, &format!("server.listen[{i}]"), a))
        .collect();
    let admin_listen = addr(errors, "server.admin_listen", &s.admin_listen);
    if s.threads == 0 {
        errors.push("server.threads", "must be at least 1");
    }
    if s.max_body_bytes == 0 {
        errors.push("server.max_body_bytes", "must be at least 1");
    }
    for (field, v) in [
        ("client_read_ms", s.timeouts.client_read_ms),
        ("client_write_ms", s.timeouts.client_write_ms),
    ] {
        if v == 0 {
            errors.push(format!("server.timeouts.{field}"), "must be at least 1");
        }
    }
    let tls = s.tls.map(|t| {
        if t.listen.is_empty() {
            errors.push("server.tls.listen", "at least one listen address is needed");
        }
        let listen = t
            .listen
            .iter()
            .enumerate()
            .filter_map(|(i, a)| addr(errors, &format!("server.tls.listen[{i}]"), a))
            .collect::<Vec<_>>();
        for (field, path) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            let path = resolve(base_dir, path);
            if let Err(e) = std::fs::metadata(&path) {
                errors.push(
                    format!("server.tls.{field}"),
                    format!("cannot read {}: {e}", path.display()),
                );
            }
        }
        Tls {
            listen,
            cert_file: resolve(base_dir, &t.cert_file),
            key_file: resolve(base_dir, &t.key_file),
            h2: t.h2,
        }
    });
    let mut all: Vec<&SocketAddr> = listen.iter().collect();
    all.extend(tls.iter().flat_map(|t| t.listen.iter()));
    all.extend(admin_listen.iter());
    for (i, a) in all.iter().enumerate() {
        if all[..i].contains(a) && a.port() != 0 {
            errors.push("server", format!("{a} is used by two listeners"));
        }
    }
    Some(Server {
        listen,
        tls,
        h2c: s.h2c,
        admin_listen: admin_listen?,
        threads: s.threads,
        max_body_bytes: usize::try_from(s.max_body_bytes).unwrap_or(usize::MAX),
        client_read_timeout: Duration::from_millis(s.timeouts.client_read_ms),
        client_write_timeout: Duration::from_millis(s.timeouts.client_write_ms),
        grace_period: Duration::from_secs(s.grace_period_secs),
        graceful_shutdown_timeout: Duration::from_secs(s.graceful_shutdown_timeout_secs),
        upgrade_sock: s.upgrade_sock,
        pid_file: s.pid_file,
        access_log: s.access_log,
    })
}

/// `None`: errors recorded. `Some(None)`: optional and without a key, left out.
fn provider(
    errors: &mut Errors,
    name: &str,
    p: raw::ProviderSection,
    base_dir: Option<&Path>,
) -> Option<Option<Provider>> {
    let path = format!("providers.{name}");
    let before = errors.0.len();
    let set = [
        p.api_key.is_some(),
        p.api_key_file.is_some(),
        p.api_keys.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        errors.push(&path, "set one of `api_key`, `api_key_file` or `api_keys`");
    }
    // A pool: empty entries (unset `${VAR:-}`) are left out.
    let pool: Vec<Secret> = p
        .api_keys
        .iter()
        .flatten()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(|k| Secret(k.to_string()))
        .collect();
    let api_key = match (&p.api_key, &p.api_key_file) {
        _ if p.api_keys.is_some() => {
            if pool.is_empty() {
                Some(String::new())
            } else {
                None
            }
        }
        (Some(_), Some(_)) => None,
        (Some(k), None) => Some(k.trim().to_string()),
        (None, Some(f)) => {
            let f = resolve(base_dir, f);
            match std::fs::read_to_string(&f) {
                Ok(s) => Some(s.trim().to_string()),
                Err(e) => {
                    if !p.optional {
                        errors.push(
                            format!("{path}.api_key_file"),
                            format!("cannot read {}: {e}", f.display()),
                        );
                    }
                    Some(String::new())
                }
            }
        }
        (None, None) => None,
    };
    let api_keys = match api_key {
        Some(k) if k.is_empty() => {
            if p.optional {
                return Some(None);
            }
            errors.push(
                format!("{path}.api_key"),
                "is empty (mark the provider `optional: true` to skip it when its key is unset)",
            );
            None
        }
        Some(k) => Some(vec![Secret(k)]),
        None if !pool.is_empty() => Some(pool),
        None => {
            if matches!(
                p.kind,
                ProviderKind::Openai
                    | ProviderKind::Azure
                    | ProviderKind::Anthropic
                    | ProviderKind::Gemini
            ) {
                if p.optional {
                    return Some(None);
                }
                errors.push(
                    &path,
                    format!(
                        "a `{}` provider needs `api_key`, `api_key_file` or `api_keys`",
                        p.kind.as_str()
                    ),
                );
            }
            None
        }
    };
    let uri: Option<http::Uri> = match p.base_url.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.host().is_some() => Some(u),
        _ => {
            errors.push(
                format!("{path}.base_url"),
                format!("`{}` is not an absolute http(s) URL", p.base_url),
            );
            None
        }
    };
    let mut tls = false;
    let mut host = String::new();
    let mut port = 0;
    let mut base_path = String::new();
    if let Some(u) = &uri {
        match u.scheme_str() {
            Some("https") => tls = true,
            Some("http") => {}
            other => errors.push(
                format!("{path}.base_url"),
                format!("scheme `{}` is not http or https", other.unwrap_or("")),
            ),
        }
        if u.query().is_some() {
            errors.push(format!("{path}.base_url"), "must not have a query string");
        }
        host = u
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        port = u.port_u16().unwrap_or(if tls { 443 } else { 80 });
        base_path = u.path().trim_end_matches('/').to_string();
    }
    let api_version = match (p.kind, p.api_version) {
        (ProviderKind::Azure, None) => Some("2024-10-21".to_string()),
        (ProviderKind::Anthropic, None) => Some("2023-06-01".to_string()),
        (_, v) => v,
    };
    let t = &p.timeouts;
    let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d));
    let read = ms(t.read_ms, 120_000);
    let timeouts = ProviderTimeouts {
        connect: ms(t.connect_ms, 5_000),
        read,
        ttfb: t.ttfb_ms.map_or(read, Duration::from_millis),
        gap: t.gap_ms.map_or(read, Duration::from_millis),
        write: ms(t.write_ms, 30_000),
        idle: ms(t.idle_ms, 60_000),
        total: ms(t.total_ms, 600_000),
    };
    for (field, v) in [
        ("connect_ms", t.connect_ms),
        ("read_ms", t.read_ms),
        ("write_ms", t.write_ms),
        ("idle_ms", t.idle_ms),
        ("total_ms", t.total_ms),
        ("ttfb_ms", t.ttfb_ms),
        ("gap_ms", t.gap_ms),
    ] {
        if v == Some(0) {
            errors.push(format!("{path}.timeouts.{field}"), "must be at least 1");
        }
    }
    let mut headers = Vec::with_capacity(p.headers.len());
    for (k, v) in p.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            errors.push(format!("{path}.headers.{k}"), "not a valid header name");
        } else if http::HeaderValue::from_str(&v).is_err() {
            errors.push(format!("{path}.headers.{k}"), "not a valid header value");
        } else {
            headers.push((k, v));
        }
    }
    let health_check = p.health_check.map(|h| {
        if !h.path.starts_with('/') {
            errors.push(format!("{path}.health_check.path"), "must start with `/`");
        }
        if h.interval_ms == 0 || h.timeout_ms == 0 {
            errors.push(
                format!("{path}.health_check"),
                "interval_ms and timeout_ms must be at least 1",
            );
        }
        ActiveCheck {
            path: h.path,
            interval: Duration::from_millis(h.interval_ms.max(1)),
            timeout: Duration::from_millis(h.timeout_ms.max(1)),
        }
    });
    if errors.0.len() != before {
        return None;
    }
    Some(Some(Provider {
        health_check,
        name: name.to_string(),
        kind: p.kind,
        tls,
        host,
        port,
        base_path,
        api_keys: api_keys.unwrap_or_default(),
        api_version,
        timeouts,
        headers,
    }))
}
