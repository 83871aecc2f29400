//! Shared inputs for Tollgate's micro-benchmarks.
//!
//! The benches (`benches/*.rs`) measure the gateway's per-request hot path
//! without Pingora: key lookup and rate limits, request and response
//! translation, stream translation, and metrics. Their inputs come from the
//! provider conformance fixtures (`crates/tollgate-providers/tests/fixtures`),
//! so what is measured is what the conformance suite checks.
//!
//! Everything here panics on a broken fixture: a bench with a wrong input must
//! stop, not measure an error path.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tollgate_config::Config;
use tollgate_limits::Admission;
use tollgate_metrics::{Metrics, TargetMetrics};
pub use tollgate_providers::ProviderKind;
use tollgate_providers::{ResponseCtx, StreamTranslator, TargetCtx};
use tollgate_proxy::policy::{KeyEntry, Policy, Registry, TeamEntry};
use tollgate_proxy::{steps, Snapshot};
use tollgate_schema::ApiError;
use tollgate_store::{KeyRecord, LimitSpec, Team};

/// The provider kinds benchmarked, with their fixture directory names.
pub const KINDS: [(ProviderKind, &str); 4] = [
    (ProviderKind::Openai, "openai"),
    (ProviderKind::Azure, "azure"),
    (ProviderKind::Anthropic, "anthropic"),
    (ProviderKind::Gemini, "gemini"),
];

/// Upstream model name, as in the conformance harness.
pub const UPSTREAM_MODEL: &str = "test-model";
/// Public model name.
pub const PUBLIC_MODEL: &str = "public-model";

fn fixtures_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/tollgate-providers/tests/fixtures")
}

/// One fixture file's bytes: `fixtures/<kind>/<case>/<file>`.
pub fn fixture(kind: &str, case: &str, file: &str) -> Vec<u8> {
    let p = fixtures_root().join(kind).join(case).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A small chat request: system + user message, one sampling parameter.
/// The same body for every kind, so the numbers compare.
pub fn small_request() -> Vec<u8> {
    fixture("anthropic", "text", "request.json")
}

/// A tools request: two function tools with JSON-schema parameters and a forced `tool_choice`.
pub fn tools_request() -> Vec<u8> {
    fixture("anthropic", "tools_request", "request.json")
}

/// The target context the conformance harness uses for this kind.
pub fn target(kind: ProviderKind) -> TargetCtx<'static> {
    TargetCtx {
        kind,
        base_path: if kind == ProviderKind::Openai {
            "/v1"
        } else {
            ""
        },
        upstream_model: UPSTREAM_MODEL,
        api_version: None,
        default_max_tokens: 4096,
    }
}

/// The response context for a client that asked for usage in streams.
pub fn response_ctx() -> ResponseCtx<'static> {
    ResponseCtx {
        client_wants_usage: true,
        public_model: PUBLIC_MODEL,
        upstream_model: UPSTREAM_MODEL,
        now_unix: 1_700_000_000,
        request_id: "req-bench",
        embeddings_base64: false,
        estimated_prompt_tokens: 8,
    }
}

/// The 2xx non-streaming response body of the kind's `text` fixture.
pub fn text_response(kind_dir: &str) -> Vec<u8> {
    fixture(kind_dir, "text", "response.json")
}

/// Split a raw SSE stream into its events, each with its terminating blank line,
/// the way a provider typically writes one event per network read.
pub fn split_events(stream: &[u8]) -> Vec<Vec<u8>> {
    // An event ends with an empty line: `\n\n` or `\r\n\r\n` (Gemini's framing).
    let mut out = Vec::new();
    let mut start = 0;
    let mut line_start = 0;
    for (i, &b) in stream.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &stream[line_start..i];
        if (line.is_empty() || line == b"\r") && i + 1 > start {
            out.push(stream[start..=i].to_vec());
            start = i + 1;
        }
        line_start = i + 1;
    }
    if start < stream.len() {
        out.push(stream[start..].to_vec());
    }
    out
}

/// Which fixture stream each kind uses, and how to stretch it: events before the
/// first text delta (`head`), the text-delta event to repeat, and where the tail starts.
struct StreamShape {
    case: &'static str,
    head: usize,
    delta: usize,
    tail: usize,
}

fn shape(kind: ProviderKind) -> StreamShape {
    match kind {
        // role chunk | "Hel" | "lo!" | finish | usage | [DONE]
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => StreamShape {
            case: "stream_usage",
            head: 1,
            delta: 1,
            tail: 3,
        },
        // prompt filter | role | "Hello" | " there!" | finish | filter offsets | usage | [DONE]
        ProviderKind::Azure => StreamShape {
            case: "stream_prompt_filter_usage",
            head: 2,
            delta: 2,
            tail: 4,
        },
        // message_start | block_start | ping | delta | delta | block_stop | message_delta | message_stop
        ProviderKind::Anthropic => StreamShape {
            case: "stream_text_usage",
            head: 2,
            delta: 3,
            tail: 5,
        },
        // text + usage | text | finish + usage
        ProviderKind::Gemini => StreamShape {
            case: "stream_text_usage",
            head: 1,
            delta: 1,
            tail: 2,
        },
    }
}

fn kind_dir(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => "openai",
        ProviderKind::Azure => "azure",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gemini",
    }
}

/// The kind's fixture stream, one event per element.
pub fn fixture_stream(kind: ProviderKind) -> Vec<Vec<u8>> {
    split_events(&fixture(kind_dir(kind), shape(kind).case, "stream.sse"))
}

/// The fixture stream stretched to `deltas` text-delta events (plus its head and tail).
pub fn long_stream(kind: ProviderKind, deltas: usize) -> Vec<Vec<u8>> {
    let s = shape(kind);
    let events = fixture_stream(kind);
    let mut out: Vec<Vec<u8>> = events[..s.head].to_vec();
    out.extend(std::iter::repeat_n(events[s.delta].clone(), deltas));
    out.extend_from_slice(&events[s.tail..]);
    out
}

/// Index of the first text-delta event in [`long_stream`]'s output.
pub fn long_stream_head(kind: ProviderKind) -> usize {
    shape(kind).head
}

/// Translate a whole stream, one event per `feed`; returns the client bytes written.
pub fn translate_stream(kind: ProviderKind, events: &[Vec<u8>], out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut t = StreamTranslator::new(kind, &response_ctx()).expect("translator");
    for e in events {
        t.feed(e, out).expect("stream feed");
    }
    t.finish(out).expect("stream finish");
    out.len()
}

/// The `n`-th deterministic client key (`tg-` + 48 hex digits, like generated keys).
pub fn key_n(n: u64) -> String {
    let a = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = (n ^ 0x5555).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let c = (n ^ 0xAAAA).wrapping_mul(0x1656_67B1_9E37_79F9);
    format!("tg-{a:016x}{b:016x}{c:016x}")
}

/// Limits high enough that a bench never exhausts them: rpm, tpm, tpd and a
/// concurrency cap, all enforced.
pub fn bench_limits() -> LimitSpec {
    LimitSpec {
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
        tpd: Some(1_000_000_000_000_000),
        concurrent: Some(1_000_000),
        ..LimitSpec::default()
    }
}

const POLICY_CONFIG: &str = r#"
providers:
  local: {kind: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  gpt-4o-mini:
    targets: [{provider: local, model: gpt-4o-mini}]
    pricing: {input_per_mtok: 0.15, output_per_mtok: 0.6}
    limits: {rpm: 1000000000, tpm: 1000000000000}
limits:
  global: {concurrent: 1000000}
"#;

/// The policy of a gateway with `n` store keys in 10 teams, every key and team
/// with limits and a budget: every layer of the hot path is exercised.
pub struct PolicyBench {
    /// Keys and teams, built as the policy sync builds them.
    pub policy: Policy,
    /// Models and global limits.
    pub snapshot: Snapshot,
    /// `Bearer …` header values, one per key.
    pub headers: Vec<String>,
    /// Limit and budget state.
    pub registry: Registry,
}

/// Build a [`PolicyBench`] with `n` keys.
pub fn policy_bench(n: usize) -> PolicyBench {
    let config = Config::from_yaml_with_env(POLICY_CONFIG, None, &|_| None).unwrap();
    let registry = Registry::default();
    let snapshot = Snapshot::build(&config, &registry, &Metrics::new(), None).unwrap();
    let budget = tollgate_store::BudgetSpec {
        daily_usd: Some(1e12),
        monthly_usd: Some(1e12),
        soft_pct: None,
    };
    let teams: Vec<Team> = (0..10)
        .map(|i| Team {
            id: format!("team-{i}"),
            description: None,
            models: None,
            limits: bench_limits(),
            budget: budget.clone(),
            metadata: serde_json::json!({}),
            created_at: 0,
            updated_at: 0,
            version: 1,
        })
        .collect();
    let mut headers = Vec::with_capacity(n);
    let records: Vec<KeyRecord> = (0..n as u64)
        .map(|i| {
            let key = key_n(i);
            headers.push(format!("Bearer {key}"));
            KeyRecord {
                id: format!("key_{i:016x}"),
                name: format!("key-{i}"),
                hash: tollgate_auth::KeyHash::of(&key).to_hex(),
                prefix: key[..11].to_string(),
                team_id: Some(format!("team-{}", i % 10)),
                models: None,
                limits: bench_limits(),
                budget: budget.clone(),
                disabled: false,
                expires_at: None,
                metadata: serde_json::json!({}),
                created_at: 0,
                updated_at: 0,
                rotated_at: None,
                version: i as i64 + 1,
                deleted: false,
            }
        })
        .collect();
    let policy = Policy::from_config(&config, &registry)
        .with_changes(&config, &registry, &teams, &records, n as i64);
    assert_eq!(policy.keys.len(), n);
    PolicyBench {
        policy,
        snapshot,
        headers,
        registry,
    }
}

/// What one admitted request holds until its accounting.
pub struct Admitted {
    /// The key.
    pub key: Arc<KeyEntry>,
    /// Its team.
    pub team: Option<Arc<TeamEntry>>,
    /// The layers it passed.
    pub layers: tollgate_limits::Layers,
    /// What they admitted.
    pub admission: Admission,
    /// Dollars reserved.
    pub reserved_usd: f64,
}

/// The gateway's per-request policy path, with the same step functions
/// `request_filter` calls: key from the header, lookup, checks, team, model
/// access, four limit layers, key and team budgets.
pub fn auth_and_admit(
    pb: &PolicyBench,
    authorization: &[u8],
    estimated_tokens: u64,
    now: Instant,
    now_unix: i64,
) -> Result<Admitted, ApiError> {
    let key = steps::authenticate_headers(&pb.policy, Some(authorization), None, now_unix)?;
    let team = pb.policy.team_of(&key).cloned();
    let model = steps::authorize(&pb.snapshot, &key, team.as_deref(), "gpt-4o-mini")?;
    let layers = steps::layers(&key, team.as_deref(), Some(&model), &pb.snapshot);
    let admission = layers
        .admit(estimated_tokens, now)
        .map_err(|r| ApiError::internal(format!("{r:?}")))?;
    let reserved_usd = 0.0002;
    steps::reserve_budget(&key, team.as_deref(), reserved_usd, now_unix)
        .map_err(|_| ApiError::internal("budget"))?;
    Ok(Admitted {
        key,
        team,
        layers,
        admission,
        reserved_usd,
    })
}

/// The accounting half: settle tokens, free the concurrency slots, settle the budgets.
pub fn settle(a: Admitted, actual_tokens: u64, cost: f64, now: Instant, now_unix: i64) {
    a.layers.finish(&a.admission, Some(actual_tokens), now);
    a.key.budget.settle(a.reserved_usd, cost, now_unix);
    if let Some(t) = &a.team {
        t.budget.settle(a.reserved_usd, cost, now_unix);
    }
}

/// What the gateway's logging step records for one answered chat request with usage:
/// cached per-target handles, then `Metrics::request`.
pub fn record_request(m: &Metrics, t: &TargetMetrics, model: &str, provider: &str) {
    m.in_flight().inc();
    t.chat_duration.observe(0.412);
    t.ttft.observe(0.153);
    t.usage_input.observe(812.0);
    t.usage_output.observe(256.0);
    t.tokens_input.inc_by(812);
    t.tokens_output.inc_by(256);
    t.tokens_cached.inc_by(128);
    t.cost.inc_by(0.00431);
    m.overhead(0.000_045);
    m.request("chat", model, provider, 200);
    m.in_flight().dec();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_providers::{chat_request, chat_response};
    use tollgate_schema::ChatRequest;

    #[test]
    fn inputs_translate_for_every_kind() {
        for (kind, dir) in KINDS {
            for body in [small_request(), tools_request()] {
                let req = ChatRequest::parse(&body).unwrap();
                chat_request(&req, &target(kind)).unwrap_or_else(|e| panic!("{dir}: {e}"));
            }
            chat_response(kind, text_response(dir).into(), &response_ctx())
                .unwrap_or_else(|e| panic!("{dir}: {e}"));
            let mut out = Vec::new();
            let whole = fixture_stream(kind).concat();
            assert_eq!(
                split_events(&whole).concat(),
                whole,
                "{dir}: split_events loses bytes"
            );
            assert!(translate_stream(kind, &fixture_stream(kind), &mut out) > 0);
            let long = long_stream(kind, 50);
            assert_eq!(
                long.len(),
                fixture_stream(kind).len() + 50 - (shape(kind).tail - shape(kind).head)
            );
            translate_stream(kind, &long, &mut out);
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(text.ends_with("data: [DONE]\n\n"), "{dir}: {text}");
            // 50 deltas → at least 50 client chunks.
            assert!(text.matches("data: ").count() >= 50, "{dir}: {text}");
        }
    }

    #[test]
    fn auth_and_limits() {
        let pb = policy_bench(1000);
        let now = Instant::now();
        for h in &pb.headers {
            let a = auth_and_admit(&pb, h.as_bytes(), 100, now, 1_800_000_000).unwrap();
            assert!(a.admission.requests.is_some() && a.admission.tokens.is_some());
            settle(a, 80, 0.0001, now, 1_800_000_000);
        }
        let k = pb.policy.keys.authenticate(&key_n(3)).unwrap();
        assert_eq!(k.limits.in_flight(), 0);
        assert!((k.budget.status(1_800_000_000).day_spent - 0.0001).abs() < 1e-12);
        assert!(auth_and_admit(&pb, b"Bearer tg-nope", 1, now, 0).is_err());
    }
}
