//! The gateway core, end to end: real Pingora data plane, real mock provider.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_tests::*;

fn chat(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn chat_completion_round_trip() {
    let h = Harness::start().await;
    let r = h.post("/v1/chat/completions", &chat("hello there")).await;
    assert_eq!(r.status(), 200);
    let hd = r.headers().clone();
    assert_eq!(hd["content-type"], "application/json");
    assert!(hd["x-request-id"].to_str().unwrap().starts_with("req_"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains(&sha256_hex(b"hello there")), "{content}");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);

    // What reached the provider: upstream model name, the provider's key, never the client's.
    let rec = h.mock.requests().pop().unwrap();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.json().unwrap()["model"], "mock-mini");
    assert_eq!(
        rec.header("authorization"),
        Some(&*format!("Bearer {UPSTREAM_KEY}"))
    );
    for (k, v) in &rec.headers {
        assert!(!v.contains(CLIENT_KEY), "client key leaked upstream in {k}");
    }
    assert!(rec.header("accept-encoding").is_none());
}

#[tokio::test]
async fn unknown_fields_are_forwarded_untouched() {
    let h = Harness::start().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"42": -100}, "metadata": {"a": "b"}});
    assert_eq!(h.post("/v1/chat/completions", &body).await.status(), 200);
    let up = h.mock.requests().pop().unwrap().json().unwrap();
    assert_eq!(up["logit_bias"], json!({"42": -100}));
    assert_eq!(up["metadata"], json!({"a": "b"}));
}

async fn stream_text(h: &Harness, body: &Value) -> (reqwest::header::HeaderMap, String) {
    let r = h.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    let mut s = r.bytes_stream();
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    (headers, String::from_utf8(all).unwrap())
}

fn content_of(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn streaming_with_and_without_usage() {
    let h = Harness::start().await;
    let mut body = chat("stream please");
    body["stream"] = json!(true);
    let (hd, text) = stream_text(&h, &body).await;
    assert_eq!(hd["content-type"], "text/event-stream");
    assert!(hd.contains_key("x-request-id"));
    let ev = sse_data(&text);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    // The gateway asked upstream for usage, but the client did not: no usage chunk, no usage:null.
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(content_of(&ev).contains(&sha256_hex(b"stream please")));
    let up = h.mock.requests().pop().unwrap().json().unwrap();
    assert_eq!(up["stream_options"]["include_usage"], true);

    body["stream_options"] = json!({"include_usage": true});
    let (_, text) = stream_text(&h, &body).await;
    let ev = sse_data(&text);
    let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Tokens of both streams were counted.
    let m = h.metrics_text();
    let out = metric_value(&m, r#"tollgate_tokens_total{gen_ai_provider_name="mock",gen_ai_request_model="gpt-4o-mini",gen_ai_token_type="output"}"#).unwrap();
    assert!(out >= 2.0, "{m}");
    assert!(m.contains("gen_ai_server_time_to_first_token_seconds_count{gen_ai_provider_name=\"mock\",gen_ai_request_model=\"gpt-4o-mini\"} 2"));
}

#[tokio::test]
async fn one_byte_at_a_time_stream_arrives_intact() {
    let h = Harness::start().await;
    let mut body = chat("bytewise");
    body["stream"] = json!(true);
    let (_, normal) = stream_text(&h, &body).await;
    body["messages"][0]["content"] = json!("bytewise [[mock:chunk_bytes=1,chunks=40]]");
    let (_, split) = stream_text(&h, &body).await;
    let ev = sse_data(&split);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    for e in &ev[..ev.len() - 1] {
        serde_json::from_str::<Value>(e).unwrap();
    }
    assert!(ev.len() > 40);
    // Same reply text as the unsplit stream, apart from the marker changing the prompt hash.
    assert!(content_of(&ev).starts_with("Hello from mock."));
    assert!(content_of(&sse_data(&normal)).starts_with("Hello from mock."));
}

async fn big_prompt(stream: bool, size: usize) {
    let h = Harness::start().await;
    let prompt: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut body = chat(&prompt);
    body["stream"] = json!(stream);
    let r = h.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(&sha256_hex(prompt.as_bytes())),
        "prompt did not arrive intact"
    );
    let rec = h.mock.requests().pop().unwrap();
    let got = rec.json().unwrap();
    assert_eq!(got["messages"][0]["content"].as_str().unwrap().len(), size);
}

#[tokio::test]
async fn one_mib_prompt() {
    big_prompt(false, 1 << 20).await;
    big_prompt(true, 1 << 20).await;
}

#[tokio::test]
async fn twenty_mib_prompt() {
    big_prompt(false, 20 << 20).await;
    big_prompt(true, 20 << 20).await;
}

#[tokio::test]
async fn embeddings_and_models() {
    let h = Harness::start().await;
    let r = h
        .post(
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        h.mock.requests().pop().unwrap().json().unwrap()["model"],
        "mock-embed"
    );

    let r = client()
        .get(h.url("/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // Only the models this key may use.
    assert!(
        ids.contains(&"gpt-4o-mini") && !ids.contains(&"secret-model"),
        "{ids:?}"
    );
    let r = client()
        .get(h.url("/v1/models/gpt-4o-mini"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "gpt-4o-mini");
    let r = client()
        .get(h.url("/v1/models/secret-model"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    for f in ["message", "type", "param", "code"] {
        assert!(v["error"].get(f).is_some(), "missing error.{f} in {v}");
    }
    (s, v["error"].clone())
}

#[tokio::test]
async fn key_auth() {
    let h = Harness::start().await;
    let c = client();
    let r = c
        .post(h.url("/v1/chat/completions"))
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    let (s, e) = error_of(r).await;
    assert_eq!((s, e["code"].as_str()), (401, Some("missing_api_key")));
    let (s, e) = error_of(
        h.post_as("tg-nope-nope", "/v1/chat/completions", &chat("x"))
            .await,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (401, Some("invalid_api_key")));
    let (s, e) = error_of(
        h.post_as("tg-disabled-key", "/v1/chat/completions", &chat("x"))
            .await,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (401, Some("api_key_disabled")));
    let (s, e) = error_of(
        h.post_as("tg-expired-key-1", "/v1/chat/completions", &chat("x"))
            .await,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (401, Some("api_key_expired")));
    // Azure-style api-key header works too.
    let r = c
        .post(h.url("/v1/chat/completions"))
        .header("api-key", CLIENT_KEY)
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = chat("x");
    body["model"] = json!("secret-model");
    let (s, e) = error_of(h.post("/v1/chat/completions", &body).await).await;
    assert_eq!(
        (s, e["code"].as_str(), e["param"].as_str()),
        (403, Some("model_not_allowed"), Some("model"))
    );
    body["model"] = json!("gpt-9");
    let (s, e) = error_of(h.post("/v1/chat/completions", &body).await).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("model_not_found")));
    // Nothing above reached the provider except the one allowed call.
    assert_eq!(h.mock.request_count(), 1);
}

#[tokio::test]
async fn requests_per_minute() {
    let h = Harness::start().await;
    for i in 0..2 {
        let r = h
            .post_as("tg-limited-key-1", "/v1/chat/completions", &chat("x"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            &(1 - i).to_string()
        );
        assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
    }
    let r = h
        .post_as("tg-limited-key-1", "/v1/chat/completions", &chat("x"))
        .await;
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&ra), "retry-after {ra}");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let (_, e) = error_of(r).await;
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_eq!(h.mock.request_count(), 2);
    let m = h.metrics_text();
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_rate_limited_requests_total{layer="key",limit="requests"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_requests_total{gen_ai_operation_name="chat",gen_ai_provider_name="",gen_ai_request_model="gpt-4o-mini",http_response_status_code="429"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn tokens_reserved_then_reconciled() {
    let h = Harness::start().await;
    let mut body = chat("hi");
    body["max_tokens"] = json!(600);
    let r = h
        .post_as("tg-tokens-key-1", "/v1/chat/completions", &body)
        .await;
    assert_eq!(r.status(), 200);
    // During the request 600 + prompt estimate were reserved.
    let remaining: u64 = r.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 400, "{remaining}");
    let used = r.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    // After its accounting, only the real usage is spent.
    let after = h.tokens_back("tg-tokens-key-1", 1000 - used - 1).await;
    assert!(
        after >= 1000 - used - 1 && after <= 1000,
        "after {after}, used {used}"
    );
    // A request that alone exceeds the limit is refused outright.
    body["max_tokens"] = json!(5000);
    let r = h
        .post_as("tg-tokens-key-1", "/v1/chat/completions", &body)
        .await;
    assert_eq!(r.status(), 429);
    let (_, e) = error_of(r).await;
    assert_eq!(e["code"], "request_too_large");
}

async fn raw_exchange(addr: std::net::SocketAddr, requests: &[Vec<u8>]) -> Vec<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    for req in requests {
        s.write_all(req).await.unwrap();
        // Read one response: headers, then content-length bytes.
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&tmp[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    out.push(text);
                    break;
                }
            }
        }
    }
    out
}

fn raw_post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn bad_input_gets_openai_errors_and_the_connection_survives() {
    let h = Harness::start().await;
    let good = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}"#;
    let cases = [
        (raw_post("/v1/chat/completions", "{not json"), "400", None),
        (raw_post("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"x"}]}"#), "400", Some("model")),
        (raw_post("/v1/chat/completions", r#"{"model":"gpt-4o-mini","messages":"hi"}"#), "400", Some("messages")),
        (raw_post("/v1/chat/completions", r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#), "400", Some("temperature")),
        (raw_post("/v1/chat/completions", r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#), "400", Some("stream")),
        (raw_post("/v1/embeddings", r#"{"model":"text-embedding-3-small"}"#), "400", Some("input")),
        (raw_post("/v1/nope", "{}"), "404", None),
        (format!("GET /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n").into_bytes(), "405", None),
        (raw_post("/v1/chat/completions", good), "200", None),
    ];
    let reqs: Vec<Vec<u8>> = cases.iter().map(|c| c.0.clone()).collect();
    // All on one connection: every error leaves it usable.
    let responses = raw_exchange(h.addr, &reqs).await;
    for ((_, status, param), resp) in cases.iter().zip(&responses) {
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        if *status != "200" {
            let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
            let v: Value = serde_json::from_str(body).unwrap();
            assert!(v["error"]["message"].is_string(), "{body}");
            if let Some(p) = param {
                assert_eq!(v["error"]["param"], *p, "{body}");
            }
        }
    }
    assert!(responses[7].to_ascii_lowercase().contains("allow: post"));
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let h = Harness::with_config(
        &BASE_CONFIG.replace("max_body_bytes: 33554432", "max_body_bytes: 1000"),
    )
    .await;
    let r = h
        .post("/v1/chat/completions", &chat(&"x".repeat(2000)))
        .await;
    let (s, e) = error_of(r).await;
    assert_eq!((s, e["code"].as_str()), (413, Some("request_too_large")));
    // Chunked (no content-length) too.
    let body = serde_json::to_vec(&chat(&"y".repeat(5000))).unwrap();
    let stream = futures_util::stream::iter(
        body.chunks(100)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r = client()
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(h.mock.request_count(), 0);
}

#[tokio::test]
async fn upstream_failures() {
    let h = Harness::start().await;
    // Refused.
    let mut body = chat("x");
    body["model"] = json!("broken");
    let (s, e) = error_of(h.post("/v1/chat/completions", &body).await).await;
    assert_eq!((s, e["code"].as_str()), (502, Some("upstream_error")));
    // Hanging provider: read timeout 300 ms → 504.
    body["model"] = json!("sluggish");
    let t = std::time::Instant::now();
    let (s, e) = error_of(h.post("/v1/chat/completions", &body).await).await;
    assert_eq!((s, e["code"].as_str()), (504, Some("upstream_timeout")));
    assert!(t.elapsed() < Duration::from_secs(5));
    // The provider's own errors keep their status and body.
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    let (s, e) = error_of(
        h.post(
            "/v1/chat/completions",
            &chat("x [[mock:status=429,retry_after=3]]"),
        )
        .await,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (429, Some("rate_limit_exceeded")));
    // The 429's Retry-After cooled the model's only target down: no provider now.
    let r = h.post("/v1/chat/completions", &chat("x")).await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    let (_, e) = error_of(r).await;
    assert_eq!(e["code"], "no_upstream_available");
    let m = h.metrics_text();
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_upstream_errors_total{gen_ai_provider_name="dead",kind="connect"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_upstream_errors_total{gen_ai_provider_name="slow",kind="timeout"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_upstream_errors_total{gen_ai_provider_name="mock",kind="status_5xx"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn stream_reset_mid_way_ends_cleanly_with_an_error_event() {
    let h = Harness::start().await;
    let mut body = chat("x [[mock:reset_after=300]]");
    body["stream"] = json!(true);
    let (_, text) = stream_text(&h, &body).await;
    let ev = sse_data(&text);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert!(err["error"]["message"].is_string(), "{text}");
    // And the gateway still serves the next request.
    assert_eq!(
        h.post("/v1/chat/completions", &chat("x")).await.status(),
        200
    );
}

#[tokio::test]
async fn access_log_and_metrics_after_requests() {
    let h = Harness::start().await;
    for _ in 0..3 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("count me"))
                .await
                .status(),
            200
        );
    }
    let m = h.metrics_text();
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_requests_total{gen_ai_operation_name="chat",gen_ai_provider_name="mock",gen_ai_request_model="gpt-4o-mini",http_response_status_code="200"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"gen_ai_server_request_duration_seconds_count{gen_ai_operation_name="chat",gen_ai_provider_name="mock",gen_ai_request_model="gpt-4o-mini"}"#
        ),
        Some(3.0)
    );
    assert!(metric_value(&m, r#"tollgate_tokens_total{gen_ai_provider_name="mock",gen_ai_request_model="gpt-4o-mini",gen_ai_token_type="input"}"#).unwrap() >= 3.0);
    assert!(metric_value(&m, r#"tollgate_cost_usd_total{gen_ai_provider_name="mock",gen_ai_request_model="gpt-4o-mini"}"#).unwrap() > 0.0);
    assert_eq!(
        metric_value(&m, "tollgate_overhead_seconds_count"),
        Some(3.0)
    );
    assert_eq!(metric_value(&m, "tollgate_requests_in_flight"), Some(0.0));
}
