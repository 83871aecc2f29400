//! Round trips through the gateway's own provider translators: unified
//! (OpenAI) requests are translated by `tollgate-providers` exactly as the
//! gateway would, sent to the mock over HTTP, and the mock's Anthropic and
//! Gemini answers translated back. This keeps the mock's validation honest
//! (what the gateway legitimately sends must pass) and its wire format
//! parseable by the translators the end-to-end tests exercise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{send, Resp};
use http::Method;
use serde_json::{json, Value};
use tollgate_mock::{MockConfig, MockServer};
use tollgate_providers::{
    chat_request, chat_response, embeddings_request, embeddings_response, error_response,
    static_headers, ProviderKind, ResponseCtx, StreamTranslator, TargetCtx,
};
use tollgate_schema::{ChatRequest, EmbeddingsRequest};

const KEY: &str = "test-key";

fn target(kind: ProviderKind, model: &str) -> TargetCtx<'_> {
    TargetCtx {
        kind,
        base_path: "",
        upstream_model: model,
        api_version: None,
        default_max_tokens: 4096,
    }
}

fn ctx(model: &str, wants_usage: bool) -> ResponseCtx<'_> {
    ResponseCtx {
        client_wants_usage: wants_usage,
        public_model: "public",
        upstream_model: model,
        now_unix: 1_700_000_000,
        request_id: "req-test",
        embeddings_base64: false,
        estimated_prompt_tokens: 0,
    }
}

async fn keyed_mock() -> MockServer {
    MockServer::start(MockConfig {
        api_key: Some(KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// Send what the gateway sends upstream for this unified chat request.
async fn upstream(mock: &MockServer, kind: ProviderKind, model: &str, body: &[u8]) -> (Resp, bool) {
    let req = ChatRequest::parse(body).unwrap();
    let up = chat_request(&req, &target(kind, model)).unwrap();
    let headers = static_headers(kind, Some(KEY), None).unwrap();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    (
        send(mock, Method::POST, &up.path, &headers, &up.body).await,
        up.stream,
    )
}

/// What the client gets: the translated body, or the translated stream.
fn client_view(
    kind: ProviderKind,
    model: &str,
    r: &Resp,
    stream: bool,
    wants_usage: bool,
) -> String {
    let ctx = ctx(model, wants_usage);
    if r.status != 200 {
        let e = error_response(kind, r.status.as_u16(), r.body());
        return format!(
            "{} {}",
            e.status,
            String::from_utf8(e.body.to_vec()).unwrap()
        );
    }
    if !stream {
        let t = chat_response(kind, r.body(), &ctx).unwrap();
        return String::from_utf8(t.body.to_vec()).unwrap();
    }
    let mut tr = StreamTranslator::new(kind, &ctx).unwrap();
    let mut out = Vec::new();
    // Fed frame by frame, as the gateway receives them.
    for f in &r.frames {
        tr.feed(f, &mut out).unwrap();
    }
    tr.finish(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// The `data:` payloads of a client stream, `[DONE]` excluded (and required last).
fn chunks(stream: &str) -> Vec<Value> {
    let mut events: Vec<&str> = stream
        .split_terminator("\n\n")
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.pop(), Some("[DONE]"), "{stream}");
    events
        .into_iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn fixtures(sub: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tollgate-providers/tests/fixtures")
        .join(sub);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("request.json").exists() && !p.join("expect_error.json").exists())
        .collect();
    dirs.sort();
    dirs
}

/// Every fixture request the gateway translates must pass the mock's
/// validation, and the mock's answer must translate back cleanly.
#[tokio::test]
async fn fixture_requests_pass_validation_and_answers_translate() {
    let mock = keyed_mock().await;
    for (kind, sub) in [
        (ProviderKind::Anthropic, "anthropic"),
        (ProviderKind::Gemini, "gemini"),
    ] {
        let dirs = fixtures(sub);
        assert!(dirs.len() >= 5, "{sub}: fixtures not found");
        for dir in dirs {
            let body = std::fs::read(dir.join("request.json")).unwrap();
            let wants_usage = serde_json::from_slice::<Value>(&body).unwrap()["stream_options"]
                ["include_usage"]
                == true;
            let (r, stream) = upstream(&mock, kind, "test-model", &body).await;
            assert_eq!(r.status, 200, "{}: {}", dir.display(), r.text());
            let out = client_view(kind, "test-model", &r, stream, wants_usage);
            if stream {
                let c = chunks(&out);
                assert!(!out.contains("\"error\""), "{}: {out}", dir.display());
                assert!(c
                    .iter()
                    .any(|c| c["choices"][0]["finish_reason"].is_string()));
            } else {
                let v: Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["object"], "chat.completion", "{}", dir.display());
                assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);
            }
        }
    }
}

#[tokio::test]
async fn text_round_trip() {
    let mock = keyed_mock().await;
    for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
        let body = serde_json::to_vec(&json!({"model": "public", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Hi [[mock:reply=one two three]]"}]}))
        .unwrap();
        let (r, stream) = upstream(&mock, kind, "test-model", &body).await;
        let v: Value =
            serde_json::from_str(&client_view(kind, "test-model", &r, stream, false)).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"], "one two three",
            "{kind:?}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["completion_tokens"], 3);

        let body = serde_json::to_vec(&json!({"model": "public", "stream": true,
            "stream_options": {"include_usage": true}, "max_tokens": 2,
            "messages": [{"role": "user", "content": "[[mock:reply=one two three]]"}]}))
        .unwrap();
        let (r, stream) = upstream(&mock, kind, "test-model", &body).await;
        assert!(stream);
        let c = chunks(&client_view(kind, "test-model", &r, stream, true));
        assert_eq!(streamed_text(&c), "one two", "{kind:?}");
        assert!(c
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "length"));
        assert_eq!(c.last().unwrap()["usage"]["completion_tokens"], 2);
    }
}

#[tokio::test]
async fn tool_call_round_trip() {
    let mock = keyed_mock().await;
    for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
        for stream in [false, true] {
            let body = serde_json::to_vec(&json!({"model": "public", "stream": stream,
                "messages": [{"role": "user", "content": "weather?"}],
                "tools": [{"type": "function", "function": {"name": "get_weather",
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]}))
            .unwrap();
            let (r, s) = upstream(&mock, kind, "test-model@tool_call=1", &body).await;
            let out = client_view(kind, "test-model", &r, s, false);
            let (name, args, finish) = if stream {
                let c = chunks(&out);
                let calls: Vec<&Value> = c
                    .iter()
                    .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
                    .collect();
                let args: String = calls
                    .iter()
                    .filter_map(|t| t["function"]["arguments"].as_str())
                    .collect();
                let finish = c
                    .iter()
                    .find_map(|c| c["choices"][0]["finish_reason"].as_str())
                    .unwrap()
                    .to_owned();
                (calls[0]["function"]["name"].clone(), args, finish)
            } else {
                let v: Value = serde_json::from_str(&out).unwrap();
                let call = &v["choices"][0]["message"]["tool_calls"][0];
                (
                    call["function"]["name"].clone(),
                    call["function"]["arguments"].as_str().unwrap().to_owned(),
                    v["choices"][0]["finish_reason"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            };
            assert_eq!(name, "get_weather", "{kind:?} stream={stream}");
            assert_eq!(args, "{\"location\":\"Paris\"}", "{kind:?} stream={stream}");
            assert_eq!(finish, "tool_calls", "{kind:?} stream={stream}");
        }
    }
}

#[tokio::test]
async fn errors_map_to_the_client_shapes() {
    let mock = keyed_mock().await;
    let body = br#"{"model":"public","messages":[{"role":"user","content":"hi"}]}"#;
    let cases = [
        (
            ProviderKind::Anthropic,
            "m@status=529",
            "503",
            "overloaded_error",
        ),
        (
            ProviderKind::Anthropic,
            "m@status=429",
            "429",
            "rate_limit_error",
        ),
        (
            ProviderKind::Gemini,
            "m@status=429",
            "429",
            "rate_limit_error",
        ),
        (
            ProviderKind::Gemini,
            "m@status=503",
            "503",
            "overloaded_error",
        ),
    ];
    for (kind, model, status, kind_name) in cases {
        let (r, s) = upstream(&mock, kind, model, body).await;
        let out = client_view(kind, model, &r, s, false);
        assert!(out.starts_with(status), "{kind:?} {model}: {out}");
        assert!(out.contains(&format!("\"type\":\"{kind_name}\"")), "{out}");
        assert!(out.contains("mock error"), "{out}");
    }
    // Gemini's invalid-key 400 becomes a 401 for the client.
    let req = ChatRequest::parse(body).unwrap();
    let up = chat_request(&req, &target(ProviderKind::Gemini, "m")).unwrap();
    let r = send(
        &mock,
        Method::POST,
        &up.path,
        &[("x-goog-api-key", "wrong")],
        &up.body,
    )
    .await;
    let e = error_response(ProviderKind::Gemini, r.status.as_u16(), r.body());
    assert_eq!(e.status, 401);

    // Mid-stream errors end the client stream with an error event.
    for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
        let body = br#"{"model":"public","stream":true,"messages":[{"role":"user","content":"hi [[mock:error_mid_stream=1]]"}]}"#;
        let (r, s) = upstream(&mock, kind, "m", body).await;
        let out = client_view(kind, "m", &r, s, false);
        let c = chunks(&out);
        assert_eq!(
            c.last().unwrap()["error"]["type"],
            "overloaded_error",
            "{kind:?}: {out}"
        );
    }
}

#[tokio::test]
async fn gemini_embeddings_round_trip() {
    let mock = keyed_mock().await;
    let body = br#"{"model":"public","input":["hello","world"],"dimensions":4}"#;
    let req = EmbeddingsRequest::parse(body).unwrap();
    let up = embeddings_request(&req, &target(ProviderKind::Gemini, "text-embedding-004")).unwrap();
    let r = send(
        &mock,
        Method::POST,
        &up.path,
        &[("x-goog-api-key", KEY)],
        &up.body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = embeddings_response(
        ProviderKind::Gemini,
        Bytes::from(r.body().to_vec()),
        &ctx("text-embedding-004", false),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 4);
}
