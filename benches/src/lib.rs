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

use tollgate_auth::{presented_key, KeyHash, KeyStore};
use tollgate_limits::{Admission, KeyLimiter, KeyLimits, Rejection};
use tollgate_metrics::{Metrics, TargetMetrics};
pub use tollgate_providers::ProviderKind;
use tollgate_providers::{ResponseCtx, StreamTranslator, TargetCtx};

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

/// What the gateway keeps per client key (the parts the hot path touches).
#[derive(Debug)]
pub struct Principal {
    /// Display name.
    pub name: String,
    /// Disabled keys are refused.
    pub disabled: bool,
    /// The key's token buckets.
    pub limiter: Arc<KeyLimiter>,
}

/// The `n`-th deterministic client key (`tg-` + 48 hex digits, like generated keys).
pub fn key_n(n: u64) -> String {
    let a = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = (n ^ 0x5555).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let c = (n ^ 0xAAAA).wrapping_mul(0x1656_67B1_9E37_79F9);
    format!("tg-{a:016x}{b:016x}{c:016x}")
}

/// A key store with `n` keys, each with its own rpm + tpm limiter (limits far above what a
/// bench can use up, so every request is admitted), and the headers that present them.
pub fn key_store(n: usize, limits: KeyLimits) -> (KeyStore<Principal>, Vec<String>) {
    let now = Instant::now();
    let mut store = KeyStore::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let key = key_n(i);
        let p = Principal {
            name: format!("key-{i}"),
            disabled: false,
            limiter: Arc::new(KeyLimiter::new(limits, now)),
        };
        assert!(
            store.insert(KeyHash::of(&key), Arc::new(p)),
            "duplicate key {i}"
        );
        headers.push(format!("Bearer {key}"));
    }
    (store, headers)
}

/// Limits high enough that a bench never exhausts them (rpm + tpm both enforced).
pub const BENCH_LIMITS: KeyLimits = KeyLimits {
    rpm: Some(1_000_000_000),
    tpm: Some(1_000_000_000_000),
};

/// Why [`auth_and_admit`] refused.
#[derive(Debug)]
pub enum Refused {
    /// No key, unknown key or disabled key.
    Unauthorized,
    /// A limit refused.
    Limited(Rejection),
}

/// The gateway's per-request auth + limit path: extract the key from the
/// `Authorization` header, look it up, check it, reserve the estimate.
pub fn auth_and_admit<'s>(
    store: &'s KeyStore<Principal>,
    authorization: &[u8],
    estimated_tokens: u64,
    now: Instant,
) -> Result<(&'s Arc<Principal>, Admission), Refused> {
    let presented = presented_key(Some(authorization), None).ok_or(Refused::Unauthorized)?;
    let key = store.authenticate(presented).ok_or(Refused::Unauthorized)?;
    if key.disabled {
        return Err(Refused::Unauthorized);
    }
    let adm = key
        .limiter
        .admit(estimated_tokens, now)
        .map_err(Refused::Limited)?;
    Ok((key, adm))
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
        let (store, headers) = key_store(1000, BENCH_LIMITS);
        let now = Instant::now();
        for h in &headers {
            let (key, adm) = auth_and_admit(&store, h.as_bytes(), 100, now).unwrap();
            key.limiter.settle(adm.reserved, 80, now);
        }
        assert!(matches!(
            auth_and_admit(&store, b"Bearer tg-nope", 1, now),
            Err(Refused::Unauthorized)
        ));
    }
}
