//! End-to-end tests: real HTTP/1.1 over loopback against a running mock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{connect, mock, post, send, send_on, sha};
use http::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_mock::{MockConfig, MockServer};

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": content}
    ]})
}

#[tokio::test]
async fn chat_non_streaming_shape() {
    let mock = mock().await;
    let r = post(
        &mock,
        "/v1/chat/completions",
        chat("gpt-4o-mini", "Hi there"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("content-length").is_some());
    assert!(r.header("x-request-id").unwrap().starts_with("req_mock_"));
    let v = r.json();
    let content = format!(
        "Hello from mock. prompt_sha256={} prompt_bytes=8",
        sha("Hi there")
    );
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-mock-"), "{id}");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(
        v,
        json!({
            "id": id,
            "object": "chat.completion",
            "created": v["created"],
            "model": "gpt-4o-mini",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 4, // ceil((8 + 8) / 4)
                "completion_tokens": 5,
                "total_tokens": 9,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
                }
            },
            "service_tier": "default",
            "system_fingerprint": "fp_mock"
        })
    );
    // Field order is OpenAI's.
    let text = String::from_utf8(r.body().to_vec()).unwrap();
    assert!(text.starts_with("{\"id\":\"chatcmpl-mock-"), "{text}");
}

#[tokio::test]
async fn chat_content_parts_and_reply_directives() {
    let mock = mock().await;
    let body = json!({"model": "m@reply=from model", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "abc "},
        {"type": "image_url", "image_url": {"url": "data:x"}},
        {"type": "text", "text": "[[mock:words=3]]"}
    ]}]});
    let r = post(&mock, "/v1/chat/completions", body).await;
    let v = r.json();
    assert_eq!(v["model"], "m@reply=from model");
    // reply (model) and words (message) both set: reply wins.
    assert_eq!(v["choices"][0]["message"]["content"], "from model");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["usage"]["prompt_tokens"], 5); // ceil(20 / 4)

    let r = post(
        &mock,
        "/v1/chat/completions",
        chat("m", "x [[mock:words=4]]"),
    )
    .await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "word0 word1 word2 word3"
    );
}

#[tokio::test]
async fn chat_streaming_shape_with_usage() {
    let mock = mock().await;
    let mut body = chat("gpt-4o-mini", "Hello");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&mock, "/v1/chat/completions", body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.error.is_none());
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert_eq!(c["system_fingerprint"], "fp_mock");
        assert!(c["created"].is_u64());
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}])
    );
    assert!(chunks[0]["usage"].is_null());
    let n = chunks.len();
    let mut text = String::new();
    for c in &chunks[1..n - 2] {
        assert!(c["choices"][0]["finish_reason"].is_null());
        assert!(c["choices"][0]["logprobs"].is_null());
        let delta = c["choices"][0]["delta"].as_object().unwrap();
        assert_eq!(delta.len(), 1);
        text.push_str(delta["content"].as_str().unwrap());
    }
    let expected = format!(
        "Hello from mock. prompt_sha256={} prompt_bytes=5",
        sha("Hello")
    );
    assert_eq!(text, expected);
    assert_eq!(n - 3, 5, "one chunk per word");
    assert_eq!(
        chunks[n - 2]["choices"],
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(chunks[n - 1]["usage"]["prompt_tokens"], 4); // ceil(13 / 4)
    assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 5);
    assert_eq!(chunks[n - 1]["usage"]["total_tokens"], 9);

    // Exact bytes of the first event (field order).
    let first = &events[0];
    assert!(first.starts_with(&format!(
        "{{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":"
    )));
    assert!(first.ends_with(",\"model\":\"gpt-4o-mini\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}"), "{first}");
}

#[tokio::test]
async fn chat_streaming_without_usage_and_chunks() {
    let mock = mock().await;
    let mut body = chat("m", "q [[mock:reply=a b c,chunks=7]]");
    body["stream"] = json!(true);
    let r = post(&mock, "/v1/chat/completions", body).await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert!(!c.as_object().unwrap().contains_key("usage"));
    }
    // role + 7 pieces + finish
    assert_eq!(chunks.len(), 9);
    let text: String = chunks[1..8]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "a b c a b c a");
}

#[tokio::test]
async fn chunk_bytes_one_gives_many_frames() {
    let mock = mock().await;
    let mut body = chat("m@chunk_bytes=1", "Hello");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&mock, "/v1/chat/completions", body).await;
    assert!(r.error.is_none());
    let total = r.body().len();
    assert!(total > 500);
    assert_eq!(r.frames.len(), total, "one frame per byte");
    assert!(r.frames.iter().all(|f| f.len() == 1));
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let _: Value = serde_json::from_str(e).unwrap();
    }

    // Non-streaming bodies are split too, and still parse.
    let r = post(
        &mock,
        "/v1/chat/completions",
        chat("m", "x [[mock:chunk_bytes=7]]"),
    )
    .await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let total = r.body().len();
    assert_eq!(r.frames.len(), total.div_ceil(7));
    assert!(r.frames[..r.frames.len() - 1].iter().all(|f| f.len() == 7));
    assert_eq!(r.json()["object"], "chat.completion");
}

#[tokio::test]
async fn chunk_bytes_one_over_raw_tcp_reassembles() {
    let mock = mock().await;
    let body = serde_json::to_vec(&json!({"model": "m@chunk_bytes=1", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let mut s = TcpStream::connect(mock.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, chunked) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"));
    assert!(head.contains("transfer-encoding: chunked"));
    // Decode the chunked encoding by hand: every chunk is one byte.
    let mut rest = chunked;
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            assert_eq!(after, "\r\n");
            break;
        }
        assert_eq!(size, 1);
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap();
    }
    assert!(out.starts_with("data: {"));
    assert!(out.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn status_and_retry_after() {
    let mock = mock().await;
    let r = post(
        &mock,
        "/v1/chat/completions",
        chat("gpt-4o-mini@status=429,retry_after=2", "hi"),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(
        r.json(),
        json!({"error": {"message": "mock error 429", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );

    // Message marker wins over the model suffix; streams get a JSON error too.
    let mut body = chat("m@status=429", "[[mock:status=503]]");
    body["stream"] = json!(true);
    let r = post(&mock, "/v1/chat/completions", body).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert_eq!(r.header("retry-after"), None);

    let r = post(&mock, "/v1/chat/completions", chat("m@status=500", "x")).await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "mock error 500", "type": "server_error", "param": null, "code": null}})
    );
}

#[tokio::test]
async fn auth_rejection_and_acceptance() {
    let mock = MockServer::start(MockConfig {
        api_key: Some("sk-test".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let body = serde_json::to_vec(&chat("m", "hi")).unwrap();
    let unauthorized = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});

    let r = send(&mock, Method::POST, "/v1/chat/completions", &[], &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), unauthorized);
    let r = send(
        &mock,
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-wrong")],
        &body,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(
        &mock,
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-test")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);

    // Azure: api-key header, not Bearer.
    let azure = "/openai/deployments/dep-1/chat/completions?api-version=2024-10-21";
    let r = send(
        &mock,
        Method::POST,
        azure,
        &[("authorization", "Bearer sk-test")],
        &body,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(&mock, Method::POST, azure, &[("api-key", "sk-test")], &body).await;
    assert_eq!(r.status, 200);
    let r = send(
        &mock,
        Method::GET,
        "/v1/models",
        &[("authorization", "Bearer sk-test")],
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn azure_model_defaults_to_deployment() {
    let mock = mock().await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let r = post(
        &mock,
        "/openai/deployments/my-dep/chat/completions?api-version=2024-10-21",
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "my-dep");
    let r = post(&mock, "/v1/chat/completions", body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = post(
        &mock,
        "/openai/deployments/emb/embeddings?api-version=2024-10-21",
        json!({"input": "x"}),
    )
    .await;
    assert_eq!(r.json()["model"], "emb");
}

#[tokio::test]
async fn bad_requests_and_routing() {
    let mock = mock().await;
    let r = send(
        &mock,
        Method::POST,
        "/v1/chat/completions",
        &[],
        b"{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = post(&mock, "/v1/chat/completions", json!({"model": "m"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "messages");
    let r = post(
        &mock,
        "/v1/chat/completions",
        json!({"model": "m", "messages": "nope"}),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = post(&mock, "/v1/nope", json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["message"], "Invalid URL (POST /v1/nope)");
    let r = send(&mock, Method::GET, "/v1/chat/completions", &[], &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(r.json()["error"]["message"].is_string());
}

#[tokio::test]
async fn tool_calls() {
    let mock = mock().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let mut body = chat("m@tool_call=1", "weather?");
    body["tools"] = tools.clone();
    let r = post(&mock, "/v1/chat/completions", body.clone()).await;
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_mock_0", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}],
            "refusal": null, "annotations": []})
    );

    // tool_choice "none" → plain text.
    let mut none = body.clone();
    none["tool_choice"] = json!("none");
    let r = post(&mock, "/v1/chat/completions", none).await;
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    // No tools → plain text.
    let r = post(
        &mock,
        "/v1/chat/completions",
        chat("m@tool_call=1", "weather?"),
    )
    .await;
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");

    // Streaming.
    body["stream"] = json!(true);
    let r = post(&mock, "/v1/chat/completions", body).await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock_0", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}], "refusal": null})
    );
    let n = chunks.len();
    let args: String = chunks[1..n - 1]
        .iter()
        .map(|c| {
            let tc = &c["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(tc["index"], 0);
            tc["function"]["arguments"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(args, "{\"location\":\"Paris\"}");
    assert_eq!(chunks[n - 1]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[n - 1]["choices"][0]["delta"], json!({}));
}

#[tokio::test]
async fn error_mid_stream() {
    let mock = mock().await;
    let mut body = chat("m", "x [[mock:error_mid_stream=1]]");
    body["stream"] = json!(true);
    let r = post(&mock, "/v1/chat/completions", body).await;
    assert!(r.error.is_none());
    let events = r.events();
    assert_eq!(events.len(), 3);
    let v: Value = serde_json::from_str(&events[1]).unwrap();
    assert!(v["choices"][0]["delta"]["content"].is_string());
    assert_eq!(
        events[2],
        r#"{"error":{"message":"mock mid-stream error","type":"server_error","param":null,"code":null}}"#
    );
}

#[tokio::test]
async fn reset_after_aborts_mid_body() {
    let mock = mock().await;
    let mut body = chat("m@reset_after=100", "hi");
    body["stream"] = json!(true);
    let r = post(&mock, "/v1/chat/completions", body).await;
    assert_eq!(r.status, 200);
    assert!(r.error.is_some(), "client must see an incomplete body");
    assert_eq!(r.body().len(), 100);
}

#[tokio::test]
async fn delay_ttft_and_gap() {
    let mock = mock().await;
    let r = post(&mock, "/v1/chat/completions", chat("m@delay_ms=150", "x")).await;
    assert!(r.head_at >= Duration::from_millis(150));

    let mut body = chat("m", "x [[mock:ttft_ms=300,reply=a b]]");
    body["stream"] = json!(true);
    let r = post(&mock, "/v1/chat/completions", body).await;
    let first = r.first_frame_at.unwrap();
    assert!(
        first >= r.head_at + Duration::from_millis(250),
        "head {:?} first {:?}",
        r.head_at,
        first
    );

    let mut body = chat("m", "x [[mock:gap_ms=40,reply=a b]]");
    body["stream"] = json!(true);
    let start = Instant::now();
    let r = post(&mock, "/v1/chat/completions", body).await;
    // role, a, b, finish, [DONE]: four gaps.
    assert_eq!(r.events().len(), 5);
    assert!(start.elapsed() >= Duration::from_millis(160));
}

#[tokio::test]
async fn hang_holds_until_client_leaves() {
    let mock = mock().await;
    let addr = mock.addr();
    let req = tokio::spawn(async move {
        let mut sender = connect(addr).await;
        let body = serde_json::to_vec(&chat("m@hang=1", "x")).unwrap();
        send_on(
            &mut sender,
            Method::POST,
            "/v1/chat/completions",
            &[],
            &body,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!req.is_finished());
    assert_eq!(mock.open_connections(), 1);
    req.abort();
    let _ = req.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.open_connections() != 0 {
        assert!(Instant::now() < deadline, "server kept the connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn embeddings_float_and_base64_agree() {
    let mock = mock().await;
    let input = json!(["hello", "world"]);
    let r = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": input, "dimensions": 16}),
    )
    .await;
    assert_eq!(r.status, 200);
    let f = r.json();
    assert_eq!(f["object"], "list");
    assert_eq!(f["model"], "text-embedding-3-small");
    assert_eq!(f["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    assert_eq!(f["data"].as_array().unwrap().len(), 2);
    let r = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": input, "dimensions": 16, "encoding_format": "base64"}),
    )
    .await;
    let b = r.json();
    for i in 0..2 {
        assert_eq!(f["data"][i]["object"], "embedding");
        assert_eq!(f["data"][i]["index"], i);
        let floats: Vec<f32> = f["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(floats.len(), 16);
        let norm: f32 = floats.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(decoded, floats);
    }
    assert_ne!(f["data"][0]["embedding"], f["data"][1]["embedding"]);

    // Default width 8; deterministic; token inputs.
    let one = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "e", "input": "hello"}),
    )
    .await;
    let one = one.json();
    assert_eq!(one["data"][0]["embedding"].as_array().unwrap().len(), 8);
    let again = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "e", "input": "hello"}),
    )
    .await;
    assert_eq!(one["data"], again.json()["data"]);
    let toks = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "e", "input": [[1, 2, 3], [4]]}),
    )
    .await;
    let toks = toks.json();
    assert_eq!(toks["data"].as_array().unwrap().len(), 2);
    assert_eq!(toks["usage"]["prompt_tokens"], 4);
    let toks = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "e", "input": [1, 2, 3]}),
    )
    .await;
    assert_eq!(toks.json()["data"].as_array().unwrap().len(), 1);

    let bad = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "e", "input": [true]}),
    )
    .await;
    assert_eq!(bad.status, 400);
    let scripted = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "e@status=500", "input": "x"}),
    )
    .await;
    assert_eq!(scripted.status, 500);
}

#[tokio::test]
async fn models_list() {
    let mock = mock().await;
    let r = send(&mock, Method::GET, "/v1/models", &[], &[]).await;
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(
        v["data"][0],
        json!({"id": "mock-1", "object": "model", "created": 1_700_000_000, "owned_by": "tollgate-mock"})
    );
    let r = send(&mock, Method::GET, "/v1/models/gpt-x", &[], &[]).await;
    assert_eq!(r.json()["id"], "gpt-x");
}

#[tokio::test]
async fn recorded_requests() {
    let mock = MockServer::start(MockConfig {
        record_limit: 2,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    for i in 0..3 {
        let path = format!("/openai/deployments/d/chat/completions?api-version=v{i}");
        let body = serde_json::to_vec(&chat("m", &format!("n{i}"))).unwrap();
        send(&mock, Method::POST, &path, &[("x-trace", "t")], &body).await;
    }
    assert_eq!(mock.request_count(), 3);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    let last = &reqs[1];
    assert_eq!(last.method, "POST");
    assert_eq!(
        last.path,
        "/openai/deployments/d/chat/completions?api-version=v2"
    );
    assert_eq!(last.header("X-Trace"), Some("t"));
    assert_eq!(last.json().unwrap()["messages"][1]["content"], "n2");

    // The HTTP view.
    let r = send(&mock, Method::GET, "/__mock/requests", &[], &[]).await;
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["method"], "POST");
    assert_eq!(v[1]["headers"]["x-trace"], "t");
    assert_eq!(v[1]["body_len"], last.body.len());
    assert_eq!(v[1]["body_sha256"], hex::encode(Sha256::digest(&last.body)));
    assert_eq!(
        v[1]["body"].as_str().unwrap().as_bytes(),
        last.body.as_ref()
    );
    let r = send(&mock, Method::DELETE, "/__mock/requests", &[], &[]).await;
    assert_eq!(r.status, 204);
    assert!(mock.requests().is_empty());
    assert_eq!(mock.request_count(), 3, "inspection is not counted");

    post(&mock, "/v1/chat/completions", chat("m", "again")).await;
    assert_eq!(mock.requests().len(), 1);
    mock.clear();
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn keep_alive_two_requests_one_connection() {
    let mock = mock().await;
    let mut sender = connect(mock.addr()).await;
    let body = serde_json::to_vec(&chat("m", "one")).unwrap();
    let a = send_on(
        &mut sender,
        Method::POST,
        "/v1/chat/completions",
        &[],
        &body,
    )
    .await;
    let mut stream_body = chat("m", "two");
    stream_body["stream"] = json!(true);
    let b = send_on(
        &mut sender,
        Method::POST,
        "/v1/chat/completions",
        &[],
        &serde_json::to_vec(&stream_body).unwrap(),
    )
    .await;
    let c = send_on(&mut sender, Method::GET, "/v1/models", &[], &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 200);
    assert_eq!(c.status, 200);
    assert_eq!(b.events().last().unwrap(), "[DONE]");
    assert_eq!(mock.open_connections(), 1);
    assert_eq!(mock.request_count(), 3);
}

#[tokio::test]
async fn drop_stops_accepting() {
    let mock = mock().await;
    let addr = mock.addr();
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    drop(mock);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn serve_on_bound_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(tollgate_mock::serve(listener, MockConfig::default()));
    let mut sender = connect(addr).await;
    let r = send_on(&mut sender, Method::GET, "/v1/models", &[], &[]).await;
    assert_eq!(r.status, 200);
    task.abort();
}
