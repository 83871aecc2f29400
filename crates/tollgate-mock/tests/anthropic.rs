//! The Anthropic Messages wire format over real HTTP/1.1 on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{mock, post_with, send, sha, Resp};
use http::Method;
use serde_json::{json, Value};
use tollgate_mock::{MockConfig, MockServer};

const PATH: &str = "/v1/messages";
const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

async fn messages(mock: &MockServer, body: &Value) -> Resp {
    post_with(mock, PATH, &[VERSION], body).await
}

fn request(model: &str, content: &str) -> Value {
    json!({"model": model, "max_tokens": 1024, "system": "be brief",
        "messages": [{"role": "user", "content": content}]})
}

fn streaming(model: &str, content: &str) -> Value {
    let mut r = request(model, content);
    r["stream"] = json!(true);
    r
}

/// `(event name, data)` of every event; checks the framing and that each
/// event's name is its data's `type`.
fn events(r: &Resp) -> Vec<(String, Value)> {
    let text = r.text();
    assert!(text.ends_with("\n\n"), "{text}");
    assert!(!text.contains('\r'));
    text.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn error_body(kind: &str, message: &str, r: &Resp) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message},
        "request_id": r.header("request-id").unwrap()})
}

#[tokio::test]
async fn non_streaming_shape() {
    let mock = mock().await;
    let r = messages(&mock, &request("claude-sonnet-4-5", "Hi there")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("content-length").is_some());
    let request_id = r.header("request-id").unwrap();
    assert!(request_id.starts_with("req_mock_"));
    assert_eq!(r.header("x-request-id"), Some(request_id));
    let text = format!(
        "Hello from mock. prompt_sha256={} prompt_bytes=8",
        sha("Hi there")
    );
    let id = request_id.replace("req_", "msg_");
    assert_eq!(
        r.json(),
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 4, // ceil((8 + 8) / 4)
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 5,
                "service_tier": "standard"
            }
        })
    );
    // Anthropic's field order.
    assert!(
        r.text()
            .starts_with(&format!("{{\"id\":\"{id}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[{{\"type\":\"text\",\"text\":")),
        "{}",
        r.text()
    );
    assert!(r.text().contains(
        "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":4,"
    ));
}

#[tokio::test]
async fn stream_event_sequence() {
    let mock = mock().await;
    let r = messages(&mock, &streaming("claude-sonnet-4-5", "Hello")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.error.is_none());
    let evs = events(&r);
    assert_eq!(
        names(&evs),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let id = evs[0].1["message"]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msg_mock_"));
    assert_eq!(
        evs[0].1["message"],
        json!({"id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 1, "service_tier": "standard"}})
    );
    let text: String = evs[3..8]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        text,
        format!(
            "Hello from mock. prompt_sha256={} prompt_bytes=5",
            sha("Hello")
        )
    );
    assert_eq!(
        evs[9].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 5}})
    );
    // Exact bytes, as Anthropic frames them (ping keeps its spaces).
    let body = r.text();
    assert!(body.starts_with(&format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"{id}\",\"type\":\"message\","
    )));
    assert!(body.contains(
        "\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n"
    ));
    assert!(body.ends_with(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    ));
}

#[tokio::test]
async fn directives_from_model_and_last_user_message() {
    let mock = mock().await;
    // Model suffix; content blocks; only the last user message's text counts.
    let body = json!({"model": "claude@20240620@reply=from model", "max_tokens": 50,
        "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": "[[mock:status=500]] old turn"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [
                {"type": "text", "text": "abc "},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                {"type": "text", "text": "[[mock:chunks=3]]"}]}]});
    let r = messages(&mock, &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["model"], "claude@20240620@reply=from model");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "from model from"}])
    );
    // sys 3 + old turn 28 + ok 2 + 4 + 17 = 54 bytes.
    assert_eq!(v["usage"]["input_tokens"], 14);
    assert_eq!(v["usage"]["output_tokens"], 3);

    let mut s = body.clone();
    s["stream"] = json!(true);
    let evs = events(&messages(&mock, &s).await);
    let deltas: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ["from", " model", " from"]);
}

#[tokio::test]
async fn max_tokens_and_stop_sequences() {
    let mock = mock().await;
    let mut body = request("m", "x [[mock:words=10]]");
    body["max_tokens"] = json!(3);
    let v = messages(&mock, &body).await.json();
    assert_eq!(v["content"][0]["text"], "word0 word1 word2");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 3);

    body["max_tokens"] = json!(100);
    body["stop_sequences"] = json!(["word4", "word2"]);
    let v = messages(&mock, &body).await.json();
    assert_eq!(v["content"][0]["text"], "word0 word1 ");
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "word2");

    body["stream"] = json!(true);
    let evs = events(&messages(&mock, &body).await);
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": "word2"})
    );
    assert_eq!(delta["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn scripted_errors_use_anthropic_types() {
    let mock = mock().await;
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ] {
        let r = messages(&mock, &request(&format!("m@status={status}"), "hi")).await;
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(
            r.json(),
            error_body(kind, &format!("mock error {status}"), &r)
        );
    }
    // Marker wins; streams get a JSON error; retry-after.
    let r = messages(
        &mock,
        &streaming("m@status=500", "[[mock:status=429,retry_after=7]]"),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn error_mid_stream_sends_an_error_event() {
    let mock = mock().await;
    let r = messages(&mock, &streaming("m", "x [[mock:error_mid_stream=1]]")).await;
    assert_eq!(r.status, 200);
    assert!(r.error.is_none());
    let evs = events(&r);
    assert_eq!(
        names(&evs),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert!(r.text().ends_with("event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"));
}

#[tokio::test]
async fn tool_use() {
    let mock = mock().await;
    let tools = json!([
        {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
    ]);
    let mut body = request("m@tool_call=1", "weather?");
    body["tools"] = tools;
    let r = messages(&mock, &body).await;
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "toolu_mock_0", "name": "get_weather", "input": {"location": "Paris"}}])
    );
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert!(r
        .text()
        .contains("{\"type\":\"tool_use\",\"id\":\"toolu_mock_0\",\"name\":\"get_weather\",\"input\":{\"location\":\"Paris\"}}"));

    // A named tool_choice picks the tool; "none" and no tools give text.
    let mut named = body.clone();
    named["tool_choice"] = json!({"type": "tool", "name": "get_time"});
    assert_eq!(
        messages(&mock, &named).await.json()["content"][0]["name"],
        "get_time"
    );
    let mut none = body.clone();
    none["tool_choice"] = json!({"type": "none"});
    assert_eq!(
        messages(&mock, &none).await.json()["stop_reason"],
        "end_turn"
    );
    let plain = messages(&mock, &request("m@tool_call=1", "weather?")).await;
    assert_eq!(plain.json()["stop_reason"], "end_turn");

    // After the tool result: text, so tool loops end.
    let mut answered = body.clone();
    answered["messages"] = json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_mock_0", "name": "get_weather", "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock_0", "content": "sunny"}]}
    ]);
    let r = messages(&mock, &answered).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stop_reason"], "end_turn");

    // Streamed: a tool_use block whose input arrives as JSON pieces.
    body["stream"] = json!(true);
    let r = messages(&mock, &body).await;
    let evs = events(&r);
    assert_eq!(
        names(&evs),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        evs[1].1,
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_mock_0", "name": "get_weather", "input": {}}})
    );
    let input: String = evs[3..9]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(input, "{\"location\":\"Paris\"}");
    assert_eq!(evs[3].1["delta"]["partial_json"], "");
    assert_eq!(evs[10].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(evs[10].1["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn auth_and_version_headers() {
    let mock = MockServer::start(MockConfig {
        api_key: Some("sk-ant-test".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let body = request("m", "hi");
    let r = messages(&mock, &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        error_body("authentication_error", "x-api-key header is required", &r)
    );
    let r = post_with(
        &mock,
        PATH,
        &[VERSION, ("x-api-key", "sk-ant-wrong")],
        &body,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        error_body("authentication_error", "invalid x-api-key", &r)
    );
    // OpenAI's Bearer is not Anthropic's header.
    let r = post_with(
        &mock,
        PATH,
        &[VERSION, ("authorization", "Bearer sk-ant-test")],
        &body,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = post_with(&mock, PATH, &[VERSION, ("x-api-key", "sk-ant-test")], &body).await;
    assert_eq!(r.status, 200);
    // anthropic-version is required.
    let r = post_with(&mock, PATH, &[("x-api-key", "sk-ant-test")], &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        error_body(
            "invalid_request_error",
            "anthropic-version: header is required",
            &r
        )
    );
}

#[tokio::test]
async fn validation_errors() {
    let mock = mock().await;
    let check = |body: Value, message: &'static str| {
        let mock = &mock;
        async move {
            let r = messages(mock, &body).await;
            assert_eq!(r.status, 400, "{body}");
            assert_eq!(
                r.json(),
                error_body("invalid_request_error", message, &r),
                "{body}"
            );
        }
    };
    check(
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        "max_tokens: Field required",
    )
    .await;
    check(
        json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        "model: Field required",
    )
    .await;
    check(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
        "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"user\" roles in a row",
    )
    .await;
    check(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "a"}]}),
        "messages.0.role: Input should be 'user' or 'assistant'",
    )
    .await;
    check(
        json!({"model": "m", "max_tokens": 5, "frequency_penalty": 0.5, "messages": [{"role": "user", "content": "a"}]}),
        "frequency_penalty: Extra inputs are not permitted",
    )
    .await;
    check(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}),
        "messages: text content blocks must be non-empty",
    )
    .await;
    check(
        json!({"model": "m", "max_tokens": 5, "messages": []}),
        "messages: at least one message is required",
    )
    .await;
    let r = send(&mock, Method::POST, PATH, &[VERSION], b"{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = send(&mock, Method::GET, PATH, &[VERSION], &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.json()["type"], "error");
}

#[tokio::test]
async fn pacing_applies() {
    let mock = mock().await;
    // chunk_bytes: one byte per frame, still a valid event stream.
    let r = messages(&mock, &streaming("m@chunk_bytes=1", "hi")).await;
    assert!(r.error.is_none());
    assert_eq!(r.frames.len(), r.body().len());
    assert_eq!(events(&r).last().unwrap().0, "message_stop");
    // reset_after: the body is cut and the connection aborted.
    let r = messages(&mock, &streaming("m@reset_after=200", "hi")).await;
    assert!(r.error.is_some());
    assert_eq!(r.body().len(), 200);
    // delay_ms and ttft_ms.
    let r = messages(&mock, &streaming("m", "[[mock:delay_ms=120,ttft_ms=150]]")).await;
    assert!(r.head_at >= Duration::from_millis(120));
    assert!(r.first_frame_at.unwrap() >= r.head_at + Duration::from_millis(100));
    // gap_ms between events: 6 events for an empty reply → 5 gaps.
    let start = std::time::Instant::now();
    let r = messages(&mock, &streaming("m", "[[mock:gap_ms=30,reply=]]")).await;
    assert_eq!(events(&r).len(), 6);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn recorded_like_any_request() {
    let mock = mock().await;
    messages(&mock, &request("m", "recorded")).await;
    let rec = mock.requests().pop().unwrap();
    assert_eq!(rec.path, PATH);
    assert_eq!(rec.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(rec.json().unwrap()["messages"][0]["content"], "recorded");
}
