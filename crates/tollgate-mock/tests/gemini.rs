//! The Gemini API wire format over real HTTP/1.1 on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{mock, post, post_with, send, sha, Resp};
use http::Method;
use serde_json::{json, Value};
use tollgate_mock::{MockConfig, MockServer};

fn generate_path(model: &str) -> String {
    format!("/v1beta/models/{model}:generateContent")
}

fn stream_path(model: &str) -> String {
    format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
}

fn request(text: &str) -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [{"role": "user", "parts": [{"text": text}]}]
    })
}

/// The JSON of every `data:` event; checks Gemini's `\r\n\r\n` framing and
/// its `": "` member spacing.
fn events(r: &Resp) -> Vec<Value> {
    let text = r.text();
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    text.split_terminator("\r\n\r\n")
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap();
            assert!(!data.contains('\n'));
            assert!(data.starts_with("{\"candidates\": [") || data.starts_with("{\"error\": {"));
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

fn google_error(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

#[tokio::test]
async fn generate_content_shape() {
    let mock = mock().await;
    let r = post(
        &mock,
        &generate_path("gemini-2.5-flash"),
        request("Hi there"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert!(r.header("content-length").is_some());
    let text = format!(
        "Hello from mock. prompt_sha256={} prompt_bytes=8",
        sha("Hi there")
    );
    let v = r.json();
    let id = v["responseId"].as_str().unwrap();
    assert!(id.starts_with("mock-resp-"));
    assert_eq!(
        v,
        json!({
            "candidates": [{
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {
                "promptTokenCount": 4, // ceil((8 + 8) / 4)
                "candidatesTokenCount": 5,
                "totalTokenCount": 9,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}]
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": id
        })
    );
    // Google's pretty printing, field order included.
    let body = r.text();
    assert!(
        body.starts_with("{\n  \"candidates\": [\n    {\n      \"content\": {\n        \"parts\": [\n          {\n            \"text\": \"Hello from mock."),
        "{body}"
    );
    assert!(body.contains("\n        \"role\": \"model\"\n      },\n      \"finishReason\": \"STOP\",\n      \"index\": 0\n    }\n  ],\n  \"usageMetadata\": {\n    \"promptTokenCount\": 4,"));
    assert!(body.ends_with(&format!(
        "  \"modelVersion\": \"gemini-2.5-flash\",\n  \"responseId\": \"{id}\"\n}}\n"
    )));
}

#[tokio::test]
async fn stream_events() {
    let mock = mock().await;
    let r = post(&mock, &stream_path("gemini-2.0-flash"), request("Hello")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.error.is_none());
    assert!(!r.text().contains("[DONE]"));
    let evs = events(&r);
    assert_eq!(evs.len(), 5, "one event per word");
    let id = evs[0]["responseId"].as_str().unwrap();
    let mut text = String::new();
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["responseId"], id);
        assert_eq!(e["modelVersion"], "gemini-2.0-flash");
        let c = &e["candidates"][0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["content"]["role"], "model");
        text.push_str(c["content"]["parts"][0]["text"].as_str().unwrap());
        if i < 4 {
            assert!(c.get("finishReason").is_none());
            assert_eq!(
                e["usageMetadata"],
                json!({"promptTokenCount": 4, "totalTokenCount": 4,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}]})
            );
        }
    }
    assert_eq!(
        text,
        format!(
            "Hello from mock. prompt_sha256={} prompt_bytes=5",
            sha("Hello")
        )
    );
    assert_eq!(evs[4]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        evs[4]["usageMetadata"],
        json!({"promptTokenCount": 4, "candidatesTokenCount": 5, "totalTokenCount": 9,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4}]})
    );
    // Exact bytes of the first event.
    assert!(r.text().starts_with(&format!(
        "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"Hello\"}}],\"role\": \"model\"}},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 4,\"totalTokenCount\": 4,\"promptTokensDetails\": [{{\"modality\": \"TEXT\",\"tokenCount\": 4}}]}},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"{id}\"}}\r\n\r\n"
    )));
}

#[tokio::test]
async fn stream_without_alt_is_a_json_array() {
    let mock = mock().await;
    let r = post(
        &mock,
        "/v1beta/models/g:streamGenerateContent",
        request("x [[mock:reply=a b c]]"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let v = r.json();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        items[1]["candidates"][0]["content"]["parts"][0]["text"],
        " b"
    );
}

#[tokio::test]
async fn directives_from_the_path_and_last_user_turn() {
    let mock = mock().await;
    // The gateway percent-encodes the model segment.
    let r = post(
        &mock,
        &stream_path("gemini%40reply%3Dhi%20there%2Cchunks%3D4"),
        request("q"),
    )
    .await;
    let evs = events(&r);
    let pieces: Vec<&str> = evs
        .iter()
        .map(|e| {
            e["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(pieces, ["hi", " there", " hi", " there"]);
    assert_eq!(evs[0]["modelVersion"], "gemini@reply=hi there,chunks=4");

    // Only the last user turn's text carries markers; parts are joined.
    let body = json!({"contents": [
        {"role": "user", "parts": [{"text": "[[mock:status=500]]"}]},
        {"role": "model", "parts": [{"text": "ok"}]},
        {"parts": [{"text": "a "}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}, {"text": "[[mock:words=2]]"}]}
    ]});
    let r = post(&mock, &generate_path("g"), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "word0 word1"
    );
    // 19 + 2 + 2 + 16 = 39 bytes.
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 10);
}

#[tokio::test]
async fn generation_config_limits_and_candidates() {
    let mock = mock().await;
    let mut body = request("x [[mock:words=10]]");
    body["generationConfig"] = json!({"maxOutputTokens": 3, "temperature": 0.2});
    let v = post(&mock, &generate_path("g"), body.clone()).await.json();
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "word0 word1 word2"
    );
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 3);

    // snake_case names are accepted too; stop sequences cut the text.
    body["generationConfig"] = json!({"stop_sequences": ["word3"], "candidate_count": 2});
    let v = post(&mock, &generate_path("g"), body.clone()).await.json();
    let cands = v["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 2);
    for (i, c) in cands.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finishReason"], "STOP");
        assert_eq!(c["content"]["parts"][0]["text"], "word0 word1 word2 ");
    }
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 6);

    let r = post(&mock, &stream_path("g"), body).await;
    let evs = events(&r);
    assert!(evs
        .iter()
        .all(|e| e["candidates"].as_array().unwrap().len() == 2));
}

#[tokio::test]
async fn scripted_errors_use_google_statuses() {
    let mock = mock().await;
    for (code, status) in [
        (400, "INVALID_ARGUMENT"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
    ] {
        let r = post(
            &mock,
            &generate_path(&format!("g%40status%3D{code}")),
            request("hi"),
        )
        .await;
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        assert_eq!(
            r.json(),
            google_error(code, status, &format!("mock error {code}"))
        );
        assert!(r.text().starts_with("{\n  \"error\": {\n    \"code\": "));
    }
    // A 429 with retry_after carries RetryInfo; streams answer with a JSON error.
    let r = post(
        &mock,
        &stream_path("g"),
        request("[[mock:status=429,retry_after=3]]"),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(
        r.json()["error"]["details"],
        json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}])
    );
}

#[tokio::test]
async fn error_mid_stream_sends_an_error_event() {
    let mock = mock().await;
    let r = post(
        &mock,
        &stream_path("g"),
        request("x [[mock:error_mid_stream=1]]"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.error.is_none());
    let evs = events(&r);
    assert_eq!(evs.len(), 2);
    assert!(evs[0]["candidates"][0].get("finishReason").is_none());
    assert!(r.text().ends_with("data: {\"error\": {\"code\": 503,\"message\": \"The model is overloaded. Please try again later.\",\"status\": \"UNAVAILABLE\"}}\r\n\r\n"));
}

#[tokio::test]
async fn function_calls() {
    let mock = mock().await;
    let mut body = request("weather? [[mock:tool_call=1]]");
    body["tools"] = json!([{"functionDeclarations": [
        {"name": "get_weather", "parameters": {"type": "object"}},
        {"name": "get_time"}
    ]}]);
    let v = post(&mock, &generate_path("g"), body.clone()).await.json();
    assert_eq!(
        v["candidates"][0],
        json!({"content": {"parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}], "role": "model"},
            "finishReason": "STOP", "index": 0})
    );
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 5);

    let mut allowed = body.clone();
    allowed["toolConfig"] =
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}});
    let v = post(&mock, &generate_path("g"), allowed).await.json();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_time"
    );
    let mut none = body.clone();
    none["toolConfig"] = json!({"function_calling_config": {"mode": "NONE"}});
    let v = post(&mock, &generate_path("g"), none).await.json();
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());

    // After the function response: text, so tool loops end.
    let mut answered = body.clone();
    answered["contents"] = json!([
        {"role": "user", "parts": [{"text": "weather? [[mock:tool_call=1]]"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}]}
    ]);
    let r = post(&mock, &generate_path("g"), answered).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["candidates"][0]["content"]["parts"][0]["text"].is_string());

    // Streamed: one event with the whole call.
    let r = post(&mock, &stream_path("g"), body).await;
    let evs = events(&r);
    assert_eq!(evs.len(), 1);
    assert_eq!(
        evs[0]["candidates"][0]["content"]["parts"][0]["functionCall"],
        json!({"name": "get_weather", "args": {"location": "Paris"}})
    );
    assert_eq!(evs[0]["candidates"][0]["finishReason"], "STOP");
    assert!(r.text().contains(
        "[{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"location\": \"Paris\"}}}]"
    ));
}

#[tokio::test]
async fn api_key_header_or_query() {
    let mock = MockServer::start(MockConfig {
        api_key: Some("AIza-test".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let path = generate_path("g");
    let body = request("hi");
    let r = post(&mock, &path, body.clone()).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.")
    );
    let r = post_with(&mock, &path, &[("x-goog-api-key", "AIza-wrong")], &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]}})
    );
    let r = post_with(
        &mock,
        &path,
        &[("authorization", "Bearer AIza-test")],
        &body,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = post_with(&mock, &path, &[("x-goog-api-key", "AIza-test")], &body).await;
    assert_eq!(r.status, 200);
    let r = post(&mock, &format!("{path}?key=AIza-test"), body.clone()).await;
    assert_eq!(r.status, 200);
    let r = post(
        &mock,
        "/v1beta/models/g:streamGenerateContent?alt=sse&key=AIza-test",
        body,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn validation_errors() {
    let mock = mock().await;
    let check = |body: Value, message: &'static str| {
        let mock = &mock;
        async move {
            let r = post(mock, &generate_path("g"), body.clone()).await;
            assert_eq!(r.status, 400, "{body}");
            assert_eq!(
                r.json(),
                google_error(400, "INVALID_ARGUMENT", message),
                "{body}"
            );
        }
    };
    check(
        json!({"contents": []}),
        "* GenerateContentRequest.contents: contents is not specified\n",
    )
    .await;
    check(
        json!({"contents": [{"role": "assistant", "parts": [{"text": "a"}]}]}),
        "Please use a valid role: user, model.",
    )
    .await;
    check(
        json!({"contents": [{"role": "user", "parts": []}]}),
        "* GenerateContentRequest.contents[0].parts: contents.parts must not be empty.\n",
    )
    .await;
    check(
        json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}], "max_tokens": 5}),
        "Invalid JSON payload received. Unknown name \"max_tokens\": Cannot find field.",
    )
    .await;
    check(
        json!({"contents": [{"role": "user", "parts": [{"text": "a"}]}], "generationConfig": {"max_tokens": 5}}),
        "Invalid JSON payload received. Unknown name \"max_tokens\" at 'generation_config': Cannot find field.",
    )
    .await;
    check(
        json!({"contents": [{"role": "user", "parts": [{"image_url": "x"}]}]}),
        "Invalid JSON payload received. Unknown name \"image_url\" at 'contents[0].parts[0]': Cannot find field.",
    )
    .await;
    check(
        json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "data:image/png;base64,AAAA"}}]}]}),
        "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), Base64 decoding failed for \"data:image/png;base64,AAAA\"",
    )
    .await;
    check(
        json!({"contents": [{"role": "user", "parts": [{"thought": true}]}]}),
        "* GenerateContentRequest.contents[0].parts[0].data: required oneof field 'data' must have one initialized field\n",
    )
    .await;
    check(
        json!({"contents": [
            {"role": "user", "parts": [{"text": "a"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
        "Please ensure that function response turn comes immediately after a function call turn.",
    )
    .await;
    check(
        json!({"contents": [
            {"role": "user", "parts": [{"text": "a"}]},
            {"role": "model", "parts": [{"text": "b"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}]}),
        "Please ensure that function call turn comes immediately after a user turn or after a function response turn.",
    )
    .await;
    let r = send(&mock, Method::POST, &generate_path("g"), &[], b"{nope").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
    // Unknown methods and verbs.
    let r = post(&mock, "/v1beta/models/g:countTokens", request("a")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
    let r = send(&mock, Method::GET, &generate_path("g"), &[], &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
}

#[tokio::test]
async fn batch_embed_contents() {
    let mock = mock().await;
    let path = "/v1beta/models/text-embedding-004:batchEmbedContents";
    let body = json!({"requests": [
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3},
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "world"}]}, "taskType": "RETRIEVAL_QUERY"}
    ]});
    let r = post(&mock, path, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert!(r
        .text()
        .starts_with("{\n  \"embeddings\": [\n    {\n      \"values\": [\n        "));
    let v = r.json();
    let embeddings = v["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    assert_eq!(embeddings[0]["values"].as_array().unwrap().len(), 3);
    assert_eq!(embeddings[1]["values"].as_array().unwrap().len(), 8);
    // Deterministic, and the same vector the OpenAI endpoint gives the same text.
    assert_eq!(post(&mock, path, body).await.json(), v);
    let openai = post(
        &mock,
        "/v1/embeddings",
        json!({"model": "e", "input": "hello", "dimensions": 3}),
    )
    .await
    .json();
    assert_eq!(openai["data"][0]["embedding"], embeddings[0]["values"]);

    // The model of each request must be the one in the URL.
    let r = post(
        &mock,
        path,
        json!({"requests": [{"model": "models/other", "content": {"parts": [{"text": "x"}]}}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
    // Directives from the encoded model.
    let r = post(
        &mock,
        "/v1beta/models/e%40status%3D503:batchEmbedContents",
        json!({"requests": [{"model": "models/e@status=503", "content": {"parts": [{"text": "x"}]}}]}),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["status"], "UNAVAILABLE");
}

#[tokio::test]
async fn pacing_applies() {
    let mock = mock().await;
    let r = post(&mock, &stream_path("g%40chunk_bytes%3D1"), request("hi")).await;
    assert!(r.error.is_none());
    assert_eq!(r.frames.len(), r.body().len());
    assert_eq!(events(&r).len(), 5);
    let r = post(&mock, &stream_path("g%40reset_after%3D50"), request("hi")).await;
    assert!(r.error.is_some());
    assert_eq!(r.body().len(), 50);
    let r = post(&mock, &generate_path("g"), request("[[mock:delay_ms=120]]")).await;
    assert!(r.head_at >= std::time::Duration::from_millis(120));
}
