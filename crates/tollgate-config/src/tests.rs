use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_KEY" => Some("sk-test".into()),
        "DEV_KEY" => Some("tg-dev-key-123".into()),
        _ => None,
    }
}

fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    Config::from_yaml_with_env(yaml, None, &env)
}

const GOOD: &str = r#"
server:
  listen: ["127.0.0.1:8080"]
  admin_listen: "127.0.0.1:9090"
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    api_key: ${OPENAI_KEY}
  local:
    kind: openai_compatible
    base_url: http://127.0.0.1:4010/v1/
  anthropic:
    kind: anthropic
    base_url: https://api.anthropic.com
    api_key: ${ANTHROPIC_KEY:-}
    optional: true
models:
  gpt-4o:
    targets:
      - {provider: openai, model: gpt-4o-2024-08-06}
      - {provider: local, model: llama, weight: 3, priority: 1}
    pricing: {input_per_mtok: 2.5, output_per_mtok: 10}
  claude:
    targets:
      - {provider: anthropic, model: claude-sonnet-4-5}
keys:
  - name: dev
    key: ${DEV_KEY}
    models: [gpt-4o, claude]
    limits: {rpm: 60, tpm: 1000}
    expires_at: "2030-01-01T00:00:00Z"
  - name: ops
    hash: sha256:0000000000000000000000000000000000000000000000000000000000000000
"#;

#[test]
fn good_config_loads() {
    let c = load(GOOD).unwrap();
    let openai = &c.providers["openai"];
    assert!(openai.tls);
    assert_eq!(openai.port, 443);
    assert_eq!(openai.host, "api.openai.com");
    assert_eq!(openai.base_path, "/v1");
    assert_eq!(openai.api_keys[0].expose(), "sk-test");
    assert_eq!(c.providers["local"].base_path, "/v1");
    assert_eq!(c.providers["local"].port, 4010);
    // The optional provider without a key is left out, and so is its only model.
    assert!(!c.providers.contains_key("anthropic"));
    assert!(!c.models.contains_key("claude"));
    let m = &c.models["gpt-4o"];
    assert_eq!(m.targets.len(), 2);
    assert_eq!(m.targets[1].weight, 3);
    assert_eq!(m.pricing.unwrap().cached_input_per_mtok, 2.5);
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.keys[0].hash, tollgate_auth::KeyHash::of("tg-dev-key-123"));
    assert_eq!(c.keys[0].limits.rpm, Some(60));
    assert!(c.keys[0].expires_at.is_some());
    assert!(c.keys[0].models.allows("gpt-4o"));
    assert!(!c.keys[0].models.allows("gpt-4"));
    assert_eq!(c.keys[1].models, ModelAccess::All);
    assert_eq!(c.server.max_body_bytes, 32 * 1024 * 1024);
    // Secrets never print.
    assert!(!format!("{c:?}").contains("sk-test"));
}

fn paths(yaml: &str) -> Vec<String> {
    load(yaml)
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| e.path)
        .collect()
}

#[test]
fn unknown_field_has_its_path() {
    let yaml = GOOD.replace("weight: 3", "wieght: 3");
    let errs = load(&yaml).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].path, "models.gpt-4o.targets[1].wieght");
    assert!(
        errs.0[0].message.contains("wieght"),
        "{}",
        errs.0[0].message
    );
}

#[test]
fn cross_references_checked() {
    let yaml = GOOD.replace(
        "{provider: local, model: llama",
        "{provider: lokal, model: llama",
    );
    assert_eq!(paths(&yaml), vec!["models.gpt-4o.targets[1].provider"]);
    let yaml = GOOD.replace("models: [gpt-4o, claude]", "models: [gpt-5]");
    assert_eq!(paths(&yaml), vec!["keys[0].models[0]"]);
}

#[test]
fn every_error_reported() {
    let yaml = GOOD
        .replace("admin_listen: \"127.0.0.1:9090\"", "admin_listen: nowhere")
        .replace("${DEV_KEY}", "short")
        .replace("rpm: 60", "rpm: 0")
        .replace("2030-01-01T00:00:00Z", "tomorrow")
        .replace("https://api.openai.com/v1", "ftp://x");
    let p = paths(&yaml);
    for want in [
        "server.admin_listen",
        "keys[0].key",
        "keys[0].limits.rpm",
        "keys[0].expires_at",
        "providers.openai.base_url",
    ] {
        assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}");
    }
}

#[test]
fn env_errors() {
    let yaml = GOOD.replace("${OPENAI_KEY}", "${MISSING_VAR}");
    assert_eq!(paths(&yaml), vec!["providers.openai.api_key"]);
    let yaml = GOOD.replace("${OPENAI_KEY}", "${bad-name}");
    assert_eq!(paths(&yaml), vec!["providers.openai.api_key"]);
    assert_eq!(env::expand_str("a${X:-b}c", &|_| None).unwrap(), "abc");
}

#[test]
fn keys_need_one_secret_form() {
    let yaml = GOOD.replace("    key: ${DEV_KEY}\n", "");
    assert_eq!(paths(&yaml), vec!["keys[0]"]);
    let yaml = GOOD.replace("sha256:0000", "sha256:zz00");
    assert_eq!(paths(&yaml), vec!["keys[1].hash"]);
}

#[test]
fn required_provider_key() {
    let yaml = GOOD.replace("api_key: ${OPENAI_KEY}", "");
    assert_eq!(paths(&yaml), vec!["providers.openai"]);
}

#[test]
fn bad_yaml_and_types() {
    assert!(!load("server: [").unwrap_err().0.is_empty());
    let errs = load("server:\n  max_body_bytes: lots\n").unwrap_err();
    assert_eq!(errs.0[0].path, "server.max_body_bytes");
}

#[test]
fn pricing_cost() {
    let p = Pricing {
        input_per_mtok: 2.0,
        output_per_mtok: 8.0,
        cached_input_per_mtok: 1.0,
    };
    let c = p.cost(1_000_000, 500_000, 1_000_000);
    assert!((c - (1.0 + 0.5 + 8.0)).abs() < 1e-9);
}

#[test]
fn shipped_example_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/tollgate.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    Config::from_yaml_with_env(&text, path.parent(), &|_| None).unwrap();
}

const POLICY: &str = r#"
providers:
  local:
    kind: openai_compatible
    base_url: http://127.0.0.1:4010/v1
models:
  gpt-4o:
    targets: [{provider: local, model: gpt-4o-2024-08-06}, {provider: local, model: other}]
    limits: {rpm: 1000, concurrent: 50}
  mini:
    targets: [{provider: local, model: gpt-4o-mini}]
    pricing: {input_per_mtok: 9, output_per_mtok: 9}
prices:
  gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10, cached_input_per_mtok: 1.25}
  other: {input_per_mtok: 1, output_per_mtok: 1}
  gpt-4o-mini: {input_per_mtok: 0.15, output_per_mtok: 0.6}
teams:
  research:
    models: [gpt-4o]
    limits: {tpm: 100000, tpd: 5000000}
    budget: {daily_usd: 10, monthly_usd: 200, soft_pct: 75}
keys:
  - name: a
    key: tg-aaaaaaaa
    team: research
    limits: {rpm: 60, rpm_burst: 10, concurrent: 4}
    budget: {monthly_usd: 5}
limits:
  global: {rpm: 100000}
store: {url: "sqlite://data/t.db"}
admin: {token: "an-admin-token-of-some-length"}
ledger: {batch_size: 100}
"#;

#[test]
fn policy_sections_load() {
    let c = Config::from_yaml_with_env(POLICY, Some(Path::new("/etc/tg")), &env).unwrap();
    let t = &c.teams["research"];
    assert_eq!(t.limits.tpd, Some(5_000_000));
    assert_eq!(t.budget.daily_usd, Some(10.0));
    assert!(!t.models.allows("mini"));
    let k = &c.keys[0];
    assert_eq!(k.limits.rpm_burst, Some(10));
    assert_eq!(k.limits.concurrent, Some(4));
    assert_eq!(k.budget.monthly_usd, Some(5.0));
    assert_eq!(c.limits.global.rpm, Some(100_000));
    assert_eq!(c.models["gpt-4o"].limits.concurrent, Some(50));
    // Prices: the table by public name wins over the upstream model's entry;
    // a model's own pricing wins over the table.
    let g = &c.models["gpt-4o"];
    assert_eq!(g.targets[0].pricing.unwrap().input_per_mtok, 2.5);
    assert_eq!(g.targets[1].pricing.unwrap().input_per_mtok, 2.5);
    assert_eq!(
        c.models["mini"].targets[0].pricing.unwrap().input_per_mtok,
        9.0
    );
    assert_eq!(c.store.as_ref().unwrap().url, "sqlite:///etc/tg/data/t.db");
    assert_eq!(
        c.admin.token_hash,
        Some(tollgate_auth::KeyHash::of("an-admin-token-of-some-length"))
    );
    assert_eq!(c.ledger.batch_size, 100);
    assert_eq!(c.ledger.queue_capacity, 65_536);
}

#[test]
fn policy_errors_have_paths() {
    let bad = POLICY
        .replace("rpm_burst: 10", "rpm_burst: 0")
        .replace("soft_pct: 75", "soft_pct: 175")
        .replace("models: [gpt-4o]", "models: [nope]")
        .replace("sqlite://data/t.db", "mysql://x")
        .replace("an-admin-token-of-some-length", "short");
    let errs = load(&bad).unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "keys[0].limits.rpm_burst",
        "teams.research.budget.soft_pct",
        "teams.research.models[0]",
        "store.url",
        "admin.token",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
}

#[test]
fn shipped_price_table_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf");
    let yaml = "prices_file: prices.yaml\n";
    let c = Config::from_yaml_with_env(yaml, Some(&dir), &env).unwrap();
    for m in [
        "gpt-4o",
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "gemini-2.5-flash",
    ] {
        let p = c.prices[m];
        assert!(
            p.input_per_mtok > 0.0 && p.output_per_mtok > p.input_per_mtok,
            "{m}"
        );
        assert!(p.cached_input_per_mtok < p.input_per_mtok, "{m}");
    }
}

#[test]
fn routing_sections_load() {
    let yaml = r#"
providers:
  a:
    kind: openai
    base_url: https://api.openai.com/v1
    api_keys: [k1, "${UNSET_KEY:-}", k3]
    timeouts: {read_ms: 9000, ttfb_ms: 2000}
models:
  m:
    strategy: consistent_hash
    hash_on: "header:X-Session-Id"
    failover: {on: [connect, "5xx"], max_attempts: 5, deadline_ms: 30000}
    timeouts: {total_ms: 20000}
    targets:
      - {provider: a, model: x, timeouts: {ttfb_ms: 500}}
routing: {eject_after: 5, cooldown_ms: 2000}
"#;
    let c = load(yaml).unwrap();
    let a = &c.providers["a"];
    assert_eq!(a.api_keys.len(), 2);
    assert_eq!(a.timeouts.ttfb, Duration::from_secs(2));
    assert_eq!(a.timeouts.gap, Duration::from_secs(9));
    let m = &c.models["m"];
    assert_eq!(m.strategy, Strategy::ConsistentHash);
    assert_eq!(m.hash_on, Some(HashOn::Header("x-session-id".into())));
    assert!(m.failover.on.connect && m.failover.on.server_error);
    assert!(!m.failover.on.rate_limited && !m.failover.on.timeout);
    assert_eq!(m.failover.max_attempts, 5);
    let t = m.targets[0].timeouts.over(&m.timeouts).apply(&a.timeouts);
    assert_eq!(t.ttfb, Duration::from_millis(500));
    assert_eq!(t.total, Duration::from_secs(20));
    assert_eq!(t.gap, Duration::from_secs(9));
    assert_eq!(c.health.eject_after, 5);

    let bad = yaml
        .replace("\"5xx\"", "\"4xx\"")
        .replace("header:X-Session-Id", "cookie");
    let errs = load(&bad).unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    for p in ["models.m.failover.on[1]", "models.m.hash_on"] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    // A pool whose keys are all unset is an empty key.
    let errs = load(&yaml.replace("k1, \"${UNSET_KEY:-}\", k3", "\"\"")).unwrap_err();
    assert_eq!(errs.0[0].path, "providers.a.api_key");
}

#[test]
fn tls_and_listener_errors_have_paths() {
    let yaml = GOOD.replace(
        "  admin_listen: \"127.0.0.1:9090\"",
        "  admin_listen: \"127.0.0.1:8080\"\n  tls: {listen: [], cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem}",
    );
    let p = paths(&yaml);
    for want in [
        "server",
        "server.tls.listen",
        "server.tls.cert_file",
        "server.tls.key_file",
    ] {
        assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}");
    }
}

#[test]
fn redis_backend_and_failure_policy() {
    let with = |backend: &str| {
        GOOD.replace(
            "keys:\n",
            &format!("limits:\n  backend: {backend}\nkeys:\n"),
        )
    };
    let c = load(&with(
        "{kind: redis, url: \"redis://127.0.0.1:6379\", on_failure: fail_closed, expected_nodes: 3}",
    ))
    .unwrap();
    let b = c.limits.backend.unwrap();
    assert_eq!(b.on_failure, OnFailure::FailClosed);
    assert_eq!(
        (b.expected_nodes, b.pool_size, b.key_prefix.as_str()),
        (3, 4, "tollgate")
    );
    assert_eq!(b.timeout, std::time::Duration::from_millis(50));
    assert_eq!(
        paths(&with("{kind: memcached, url: \"redis://x\"}")),
        vec!["limits.backend.kind"]
    );
    assert_eq!(paths(&with("{kind: redis}")), vec!["limits.backend.url"]);
    assert_eq!(
        paths(&with("{kind: redis, url: \"http://x\"}")),
        vec!["limits.backend.url"]
    );
    assert_eq!(
        paths(&with(
            "{kind: redis, url: \"redis://x\", on_failure: maybe}"
        )),
        vec!["limits.backend.on_failure"]
    );
    assert_eq!(
        paths(&with(
            "{kind: redis, url: \"redis://x\", expected_nodes: 0}"
        )),
        vec!["limits.backend.expected_nodes"]
    );
    let yaml = GOOD.replace(
        "limits: {rpm: 60, tpm: 1000}",
        "limits: {rpm: 60, on_failure: fail_closed}",
    );
    assert_eq!(
        load(&yaml).unwrap().keys[0].limits.on_failure,
        Some(OnFailure::FailClosed)
    );
    let yaml = GOOD.replace(
        "limits: {rpm: 60, tpm: 1000}",
        "limits: {rpm: 60, on_failure: sometimes}",
    );
    assert_eq!(paths(&yaml), vec!["keys[0].limits.on_failure"]);
}
