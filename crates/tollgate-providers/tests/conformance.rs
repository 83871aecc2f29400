#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The shared conformance suite, run against every provider kind.
//!
//! Two halves:
//! - **fixtures**: for each directory `tests/fixtures/<kind>/<case>/`, the files
//!   present decide what is checked (see `FIXTURES.md` there). Streams are
//!   additionally fed split at every byte boundary and one byte at a time, and
//!   must give byte-identical output.
//! - **capabilities**: standard unified requests run through each kind's request
//!   translation; the capability matrix says which must succeed and which must be
//!   refused with a 400 naming the parameter.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::Value;
use tollgate_providers::{
    chat_request, chat_response, embeddings_request, embeddings_response, error_response,
    ProviderKind, ResponseCtx, StreamTranslator, TargetCtx,
};
use tollgate_schema::{ChatRequest, EmbeddingsRequest};

const UPSTREAM_MODEL: &str = "test-model";
const NOW: u64 = 1_700_000_000;
const REQUEST_ID: &str = "req-test";

fn target(kind: ProviderKind) -> TargetCtx<'static> {
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

fn read(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok()
}

fn json(dir: &Path, name: &str) -> Option<Value> {
    read(dir, name).map(|b| {
        serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
    })
}

/// Run every fixture of one provider kind.
fn run_fixtures(kind: ProviderKind, sub: &str) -> usize {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no fixtures for {sub}");
    for dir in &cases {
        run_case(kind, dir);
    }
    cases.len()
}

fn run_case(kind: ProviderKind, dir: &Path) {
    let name = dir.display().to_string();
    let t = target(kind);
    let request = read(dir, "request.json");
    let embeddings = read(dir, "embeddings_request.json");
    let (public_model, wants_usage) = match request.as_deref().or(embeddings.as_deref()) {
        Some(b) => {
            let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
            (
                v["model"].as_str().unwrap_or("public-model").to_string(),
                v["stream_options"]["include_usage"]
                    .as_bool()
                    .unwrap_or(false),
            )
        }
        None => ("public-model".to_string(), false),
    };
    let ctx = ResponseCtx {
        client_wants_usage: wants_usage,
        public_model: &public_model,
        upstream_model: UPSTREAM_MODEL,
        now_unix: NOW,
        request_id: REQUEST_ID,
        embeddings_base64: false,
        estimated_prompt_tokens: 0,
    };

    // Request translation.
    if let Some(body) = &request {
        let req = ChatRequest::parse(body).unwrap_or_else(|e| panic!("{name}: request.json: {e}"));
        let out = chat_request(&req, &t);
        if let Some(want) = json(dir, "expect_error.json") {
            let e = out.expect_err(&format!("{name}: expected a refusal"));
            assert_eq!(Value::from(e.status), want["status"], "{name}: status");
            if let Some(p) = want.get("param") {
                assert_eq!(
                    e.param.as_deref().map(Value::from).unwrap_or(Value::Null),
                    *p,
                    "{name}: param"
                );
            }
        } else if let Some(want) = json(dir, "upstream.json") {
            let up = out.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                Value::from(up.path.clone()),
                want["path"],
                "{name}: upstream path"
            );
            let got: Value = serde_json::from_slice(&up.body).unwrap();
            assert_eq!(got, want["body"], "{name}: upstream body");
            assert_eq!(up.stream, req.stream, "{name}: stream flag");
        }
    }
    if let Some(body) = &embeddings {
        let req = EmbeddingsRequest::parse(body).unwrap();
        let out = embeddings_request(&req, &t);
        if let Some(want) = json(dir, "expect_error.json") {
            let e = out.expect_err(&format!("{name}: expected a refusal"));
            assert_eq!(Value::from(e.status), want["status"], "{name}: status");
        } else if let Some(want) = json(dir, "upstream.json") {
            let up = out.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                Value::from(up.path.clone()),
                want["path"],
                "{name}: upstream path"
            );
            let got: Value = serde_json::from_slice(&up.body).unwrap();
            assert_eq!(got, want["body"], "{name}: upstream body");
        }
    }

    // Non-streaming response translation.
    if let (Some(resp), Some(want)) = (read(dir, "response.json"), json(dir, "expected.json")) {
        let out = if embeddings.is_some() {
            embeddings_response(kind, Bytes::from(resp), &ctx)
        } else {
            chat_response(kind, Bytes::from(resp), &ctx)
        }
        .unwrap_or_else(|e| panic!("{name}: response: {e}"));
        let got: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(got, want, "{name}: translated response");
        if let Some(u) = json(dir, "expected_usage.json") {
            let usage = out.usage.expect("usage");
            check_usage(&name, usage, &u);
        }
    }

    // Stream translation, whole and at every split.
    if let Some(stream) = read(dir, "stream.sse") {
        let whole = feed(kind, &ctx, &[&stream]);
        if let Some(want) = read(dir, "expected.sse") {
            assert_eq!(
                String::from_utf8_lossy(&whole.0),
                String::from_utf8_lossy(&want),
                "{name}: translated stream"
            );
        }
        if let Some(u) = json(dir, "expected_usage.json") {
            check_usage(&name, whole.1.expect("stream usage"), &u);
        }
        for i in 1..stream.len() {
            let split = feed(kind, &ctx, &[&stream[..i], &stream[i..]]);
            assert_eq!(split, whole, "{name}: split at byte {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            feed(kind, &ctx, &bytes),
            whole,
            "{name}: one byte at a time"
        );
        // Every event the client gets is valid JSON or [DONE].
        for ev in String::from_utf8(whole.0)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
        {
            let data = ev
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("{name}: bad event {ev:?}"));
            if data != "[DONE]" {
                serde_json::from_str::<Value>(data)
                    .unwrap_or_else(|e| panic!("{name}: {e}: {data}"));
            }
        }
    }

    // Error mapping.
    if let (Some(body), Some(want)) = (read(dir, "error.json"), json(dir, "expected_error.json")) {
        let status: u16 =
            String::from_utf8(read(dir, "error_status.txt").expect("error_status.txt"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        let out = error_response(kind, status, Bytes::from(body));
        assert_eq!(
            Value::from(out.status),
            want["status"],
            "{name}: error status"
        );
        let got: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(got, want["body"], "{name}: error body");
    }
}

fn check_usage(name: &str, u: tollgate_schema::Usage, want: &Value) {
    assert_eq!(
        Value::from(u.prompt_tokens),
        want["prompt_tokens"],
        "{name}: prompt_tokens"
    );
    assert_eq!(
        Value::from(u.completion_tokens),
        want["completion_tokens"],
        "{name}: completion_tokens"
    );
    if let Some(c) = want.get("cached_tokens") {
        assert_eq!(Value::from(u.cached_tokens), *c, "{name}: cached_tokens");
    }
    if let Some(r) = want.get("reasoning_tokens") {
        assert_eq!(
            Value::from(u.reasoning_tokens),
            *r,
            "{name}: reasoning_tokens"
        );
    }
}

/// Output bytes, usage, and first-token flag for a stream fed in these pieces.
fn feed(
    kind: ProviderKind,
    ctx: &ResponseCtx<'_>,
    pieces: &[&[u8]],
) -> (Vec<u8>, Option<tollgate_schema::Usage>, bool) {
    let mut s = StreamTranslator::new(kind, ctx).unwrap();
    let mut out = Vec::new();
    for p in pieces {
        let _ = s.feed(p, &mut out);
    }
    let _ = s.finish(&mut out);
    (out, s.usage(), s.first_token_seen())
}

/// What a provider kind can do; the suite checks both directions.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// `n > 1`.
    pub n_many: bool,
    /// `image_url` with an http(s) URL.
    pub image_http: bool,
    /// `response_format: json_schema`.
    pub json_schema: bool,
    /// `response_format: json_object`.
    pub json_object: bool,
    /// `/v1/embeddings`.
    pub embeddings: bool,
    /// `seed`.
    pub seed: bool,
}

const USER: &str = r#"{"role":"user","content":"What is the weather in Paris?"}"#;

fn chat(extra: &str, messages: &str) -> Vec<u8> {
    format!(r#"{{"model":"public-model","messages":[{messages}]{extra}}}"#).into_bytes()
}

/// Standard requests every provider must translate (or refuse as its capabilities say).
fn run_capabilities(kind: ProviderKind, caps: Caps) {
    let t = target(kind);
    let ok = |body: Vec<u8>, what: &str| {
        let req = ChatRequest::parse(&body).unwrap();
        let up = chat_request(&req, &t).unwrap_or_else(|e| panic!("{kind:?} {what}: {e}"));
        serde_json::from_slice::<Value>(&up.body)
            .unwrap_or_else(|e| panic!("{kind:?} {what}: {e}"));
        up
    };
    let refused = |body: Vec<u8>, what: &str, param: &str| {
        let req = ChatRequest::parse(&body).unwrap();
        let e = chat_request(&req, &t).expect_err(&format!("{kind:?} must refuse {what}"));
        assert_eq!(e.status, 400, "{kind:?} {what}");
        assert_eq!(e.param.as_deref(), Some(param), "{kind:?} {what}: param");
    };
    let must = |cap: bool, body: Vec<u8>, what: &str, param: &str| {
        if cap {
            ok(body, what);
        } else {
            refused(body, what, param);
        }
    };

    ok(chat("", USER), "plain text");
    let up = ok(chat(r#","stream":true"#, USER), "stream");
    assert!(up.stream);
    ok(
        chat(
            "",
            &format!(
                r#"{{"role":"system","content":"Be brief."}},{{"role":"developer","content":"Use metric."}},{USER}"#
            ),
        ),
        "system + developer",
    );
    ok(
        chat(
            "",
            &format!(
                r#"{USER},{{"role":"assistant","content":"Let me check."}},{{"role":"user","content":"Thanks"}},{{"role":"user","content":"Also Rome?"}}"#
            ),
        ),
        "multi-turn with consecutive users",
    );
    let tools = r#","tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
    for choice in [
        r#""auto""#,
        r#""none""#,
        r#""required""#,
        r#"{"type":"function","function":{"name":"get_weather"}}"#,
    ] {
        ok(
            chat(&format!(r#"{tools},"tool_choice":{choice}"#), USER),
            "tools",
        );
    }
    ok(
        chat(
            tools,
            &format!(
                r#"{USER},{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}},{{"id":"call_2","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Rome\"}}"}}}}]}},{{"role":"tool","tool_call_id":"call_1","content":"18C"}},{{"role":"tool","tool_call_id":"call_2","content":"22C"}}"#
            ),
        ),
        "parallel tool calls and results",
    );
    let image = |url: &str| {
        chat(
            "",
            &format!(
                r#"{{"role":"user","content":[{{"type":"text","text":"What is this?"}},{{"type":"image_url","image_url":{{"url":"{url}"}}}}]}}"#
            ),
        )
    };
    ok(image("data:image/png;base64,iVBORw0KGgo="), "data: image");
    must(
        caps.image_http,
        image("https://example.com/cat.png"),
        "http image",
        "messages[0].content[1].image_url",
    );
    ok(
        chat(
            r#","temperature":0.2,"top_p":0.9,"max_tokens":100,"stop":["END"],"user":"u-1""#,
            USER,
        ),
        "sampling parameters",
    );
    ok(
        chat(r#","max_completion_tokens":50"#, USER),
        "max_completion_tokens",
    );
    must(caps.n_many, chat(r#","n":2"#, USER), "n=2", "n");
    ok(chat(r#","n":1"#, USER), "n=1");
    must(caps.seed, chat(r#","seed":7"#, USER), "seed", "seed");
    must(
        caps.json_object,
        chat(r#","response_format":{"type":"json_object"}"#, USER),
        "json_object",
        "response_format",
    );
    must(
        caps.json_schema,
        chat(
            r#","response_format":{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"object","properties":{"t":{"type":"number"}}}}}"#,
            USER,
        ),
        "json_schema",
        "response_format",
    );
    let emb = EmbeddingsRequest::parse(br#"{"model":"e","input":["a","b"]}"#).unwrap();
    match embeddings_request(&emb, &t) {
        Ok(_) => assert!(caps.embeddings, "{kind:?} embeddings should be refused"),
        Err(e) => {
            assert!(!caps.embeddings, "{kind:?} embeddings: {e}");
            assert_eq!(e.status, 400);
        }
    }
}

macro_rules! provider_suite {
    ($name:ident, $kind:expr, $dir:literal, $caps:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn fixtures() {
                let n = run_fixtures($kind, $dir);
                assert!(n >= 1);
            }

            #[test]
            fn capabilities() {
                run_capabilities($kind, $caps);
            }
        }
    };
}

provider_suite!(
    openai,
    ProviderKind::Openai,
    "openai",
    Caps {
        n_many: true,
        image_http: true,
        json_schema: true,
        json_object: true,
        embeddings: true,
        seed: true
    }
);

provider_suite!(
    gemini,
    ProviderKind::Gemini,
    "gemini",
    Caps {
        n_many: true,
        image_http: true,
        json_schema: true,
        json_object: true,
        embeddings: true,
        seed: true
    }
);

provider_suite!(
    anthropic,
    ProviderKind::Anthropic,
    "anthropic",
    Caps {
        n_many: false,
        image_http: true,
        json_schema: true,
        json_object: false,
        embeddings: false,
        seed: false
    }
);

provider_suite!(
    azure,
    ProviderKind::Azure,
    "azure",
    Caps {
        n_many: true,
        image_http: true,
        json_schema: true,
        json_object: true,
        embeddings: true,
        seed: true
    }
);
