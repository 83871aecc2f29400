//! Routing and resilience, end to end, against the spec in `docs/routing.md`:
//! plans of targets in priority tiers, the four balancing strategies, failover
//! (which failures, translation per provider, never after the first byte,
//! attempts and deadline), `Retry-After` cooldowns, key pools, passive health
//! (ejection, half-open probe), timeouts and their inheritance, the metrics
//! and `GET /admin/v1/targets`.
//!
//! Every test starts its own gateway and mock. Upstream models carry the mock's
//! directives (`name@status=500`, see `tollgate-mock`'s `script.rs`); a
//! `[[mock:…]]` marker in a message applies to whichever target gets it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate_tests::*;

/// Providers shared by every test; `{routing}` and `{models}` are filled per test.
/// `pa` and `pb` are the mock under two names, so metrics can tell targets apart.
const TEMPLATE: &str = r#"
server:
  listen: ["127.0.0.1:1"]
  admin_listen: "127.0.0.1:2"
providers:
  mock:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    timeouts: {connect_ms: 500, read_ms: 3000, ttfb_ms: 400}
  pa:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    timeouts: {connect_ms: 500, read_ms: 3000, ttfb_ms: 400}
  pb:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    timeouts: {connect_ms: 500, read_ms: 3000, ttfb_ms: 400}
  claude:
    kind: anthropic
    base_url: "{mock}"
    api_key: sk-upstream-secret
    timeouts: {connect_ms: 500, read_ms: 3000, ttfb_ms: 400}
  dead:
    kind: openai_compatible
    base_url: "http://127.0.0.1:9/v1"
    timeouts: {connect_ms: 300}
  pool:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_keys: [sk-revoked-key, sk-upstream-secret]
    timeouts: {connect_ms: 500, read_ms: 3000, ttfb_ms: 400}
  twin:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_keys: [sk-upstream-secret, sk-upstream-secret]
    timeouts: {connect_ms: 500, read_ms: 3000, ttfb_ms: 400}
keys:
  - {name: test, key: tg-test-client-key}
  - {name: h1, key: tg-hash-client-key-1}
  - {name: h2, key: tg-hash-client-key-2}
  - {name: h3, key: tg-hash-client-key-3}
  - {name: h4, key: tg-hash-client-key-4}
  - {name: h5, key: tg-hash-client-key-5}
  - {name: h6, key: tg-hash-client-key-6}
  - {name: h7, key: tg-hash-client-key-7}
  - {name: h8, key: tg-hash-client-key-8}
routing: {routing}
models:
{models}
"#;

const HASH_KEYS: [&str; 8] = [
    "tg-hash-client-key-1",
    "tg-hash-client-key-2",
    "tg-hash-client-key-3",
    "tg-hash-client-key-4",
    "tg-hash-client-key-5",
    "tg-hash-client-key-6",
    "tg-hash-client-key-7",
    "tg-hash-client-key-8",
];

fn config(routing: &str, models: &str) -> String {
    TEMPLATE
        .replace("{routing}", routing)
        .replace("{models}", models)
}

/// A gateway with the default passive-health settings (`eject_after: 3`, 60 s cooldown).
async fn harness(models: &str) -> Harness {
    Harness::with_config(&config("{eject_after: 3, cooldown_ms: 60000}", models)).await
}

fn chat(content: &str) -> Value {
    chat_for("m", content)
}

fn chat_for(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

/// Upstream model names the mock received, oldest first.
fn upstream_models(h: &Harness) -> Vec<String> {
    h.mock
        .requests()
        .iter()
        .filter_map(|r| {
            r.json()
                .map(|v| v["model"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Status and the `error` object of an error response.
async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert!(
        v["error"]["message"].is_string(),
        "not an OpenAI error: {text}"
    );
    assert!(
        v["error"]["type"].is_string(),
        "not an OpenAI error: {text}"
    );
    (status, v["error"].clone())
}

/// The whole body of a streamed response, read chunk by chunk.
async fn stream_body(r: reqwest::Response) -> String {
    let mut s = r.bytes_stream();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    String::from_utf8(out).unwrap()
}

/// `/metrics` as a scraper sees it, from the admin listener (which refreshes
/// the per-target gauges before encoding).
async fn scrape(h: &Harness) -> String {
    let r = client().get(h.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// `/metrics` once no target has a request in flight. The gateway records an
/// attempt's outcome (metrics, health, latency) just after the client got its
/// answer, and releases the target's in-flight slot last: once every
/// `tollgate_target_in_flight` is 0, everything about past requests is recorded.
async fn settle(h: &Harness) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(h).await;
        let busy = m
            .lines()
            .filter(|l| l.starts_with("tollgate_target_in_flight{"))
            .any(|l| !l.ends_with(" 0"));
        if !busy {
            return m;
        }
        assert!(Instant::now() < until, "requests still in flight:\n{m}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A sample's value, 0 when absent (counters appear on first increment).
fn metric(text: &str, sample: &str) -> f64 {
    metric_value(text, sample).unwrap_or(0.0)
}

fn attempts(provider: &str, model: &str, outcome: &str) -> String {
    format!(
        r#"tollgate_upstream_attempts_total{{gen_ai_provider_name="{provider}",gen_ai_request_model="{model}",outcome="{outcome}"}}"#
    )
}

fn failovers(model: &str, reason: &str) -> String {
    format!(r#"tollgate_failovers_total{{gen_ai_request_model="{model}",reason="{reason}"}}"#)
}

/// `name{provider, model, upstream_model}` for the per-target series.
fn per_target(name: &str, provider: &str, model: &str, upstream: &str) -> String {
    format!(
        r#"{name}{{gen_ai_provider_name="{provider}",gen_ai_request_model="{model}",upstream_model="{upstream}"}}"#
    )
}

/// Poll `/metrics` until `sample` has `value` (at most 5 s).
async fn wait_for_metric(h: &Harness, sample: &str, value: f64) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(h).await;
        if metric_value(&m, sample) == Some(value) {
            return m;
        }
        assert!(
            Instant::now() < until,
            "{sample} never reached {value}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------ the plan

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_priority_tier_takes_all_traffic_while_it_is_healthy() {
    // The backup is listed first: priorities, not order in the file, make the tiers.
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: backup, priority: 5}
      - {provider: mock, model: a}
      - {provider: mock, model: b, priority: 0}
"#,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("t")).await.status(),
            200
        );
    }
    let models = upstream_models(&h);
    assert_eq!(models.len(), 20);
    assert!(!models.iter().any(|m| m == "backup"), "{models:?}");
    // Equal weights in the tier: round robin.
    assert_eq!(
        models.iter().filter(|m| *m == "a").count(),
        10,
        "{models:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_tier_serves_when_the_first_fails_or_is_unavailable() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: "x@status=429,retry_after=30", priority: 0}
      - {provider: mock, model: "y@status=429,retry_after=30", priority: 0}
      - {provider: mock, model: backup, priority: 1}
"#,
    )
    .await;
    // Fails: both first-tier targets are tried, then the backup answers.
    let r = h.post("/v1/chat/completions", &chat("t")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let models = upstream_models(&h);
    assert_eq!(models.len(), 3, "{models:?}");
    let first_tier: HashSet<&str> = models[..2].iter().map(String::as_str).collect();
    assert_eq!(
        first_tier,
        HashSet::from(["x@status=429,retry_after=30", "y@status=429,retry_after=30"])
    );
    assert_eq!(models[2], "backup");
    // Unavailable (both cooling down for 30 s): straight to the backup.
    h.mock.clear();
    for _ in 0..5 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("t")).await.status(),
            200
        );
    }
    assert_eq!(upstream_models(&h), vec!["backup"; 5]);
}

// ------------------------------------------------------------------ failover

/// The first target fails with `first`; the second (next tier) answers. Checks
/// the client's answer, what the mock saw, and the attempt/failover metrics.
async fn fails_over(first: &str, provider: &str, outcome: &str, first_reaches_mock: bool) {
    let h = harness(&format!(
        r#"
  m:
    targets:
      - {{provider: {provider}, model: "{first}"}}
      - {{provider: pb, model: good, priority: 1}}
"#
    ))
    .await;
    let r = h.post("/v1/chat/completions", &chat("hi")).await;
    assert_eq!(r.status(), 200, "{first}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion", "{first}");
    let models = upstream_models(&h);
    let expected: Vec<&str> = if first_reaches_mock {
        vec![first, "good"]
    } else {
        vec!["good"]
    };
    assert_eq!(models, expected, "{first}");
    let m = settle(&h).await;
    assert_eq!(
        metric(&m, &attempts(provider, "m", outcome)),
        1.0,
        "{first}:\n{m}"
    );
    assert_eq!(
        metric(&m, &attempts("pb", "m", "success")),
        1.0,
        "{first}:\n{m}"
    );
    assert_eq!(metric(&m, &failovers("m", outcome)), 1.0, "{first}:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails_over() {
    fails_over("refused", "dead", "connect", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_header_within_ttfb_fails_over() {
    fails_over("hang@hang=1", "pa", "timeout", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_header_fails_over() {
    // The header would come after 1.5 s; the ttfb budget is 400 ms.
    fails_over("late@delay_ms=1500", "pa", "timeout", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_fails_over() {
    fails_over("busy@status=429", "pa", "rate_limited", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_fails_over() {
    fails_over("boom@status=500", "pa", "status_5xx", true).await;
    fails_over("down@status=503", "pa", "status_5xx", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_first_chunk_is_late_fails_over_cleanly() {
    // Header at once, first chunk after 1.5 s > ttfb 400 ms: nothing was sent yet.
    let h = harness(
        r#"
  m:
    targets:
      - {provider: pa, model: "lazy@ttft_ms=1500"}
      - {provider: pb, model: good, priority: 1}
"#,
    )
    .await;
    let r = h.post("/v1/chat/completions", &streamed(chat("hi"))).await;
    assert_eq!(r.status(), 200);
    let text = stream_body(r).await;
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{e}");
    }
    assert_eq!(upstream_models(&h), ["lazy@ttft_ms=1500", "good"]);
    let m = settle(&h).await;
    assert_eq!(metric(&m, &failovers("m", "timeout")), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_translates_the_request_for_the_fallback_provider() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: "down@status=503"}
      - {provider: claude, model: claude-sonnet-4-5, priority: 1}
"#,
    )
    .await;
    let r = h.post("/v1/chat/completions", &chat("hello claude")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0, "{v}");

    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].json().unwrap()["model"], "down@status=503");
    assert_eq!(reqs[1].path, "/v1/messages");
    let anthropic = reqs[1].json().unwrap();
    assert_eq!(anthropic["model"], "claude-sonnet-4-5");
    assert!(anthropic["max_tokens"].is_u64(), "{anthropic}");
    assert_eq!(anthropic["messages"][0]["role"], "user");
    // Each provider's own credential header.
    assert_eq!(reqs[1].header("x-api-key"), Some(UPSTREAM_KEY));
    assert_eq!(
        reqs[0].header("authorization"),
        Some(&*format!("Bearer {UPSTREAM_KEY}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fails_over_to_another_provider_kind() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: "down@status=500"}
      - {provider: claude, model: claude-sonnet-4-5, priority: 1}
"#,
    )
    .await;
    let r = h
        .post("/v1/chat/completions", &streamed(chat("stream please")))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = stream_body(r).await;
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(!chunks.is_empty());
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
    }
    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].path, "/v1/messages");
    assert_eq!(reqs[1].json().unwrap()["stream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_outside_the_on_set_is_the_answer() {
    let h = harness(
        r#"
  on_connect_only:
    failover: {on: [connect]}
    targets:
      - {provider: mock, model: "boom@status=500"}
      - {provider: mock, model: never, priority: 1}
  on_5xx_only:
    failover: {on: ["5xx"]}
    targets:
      - {provider: mock, model: "hang@hang=1"}
      - {provider: mock, model: never, priority: 1}
  on_timeout_only:
    failover: {on: [timeout]}
    targets:
      - {provider: dead, model: refused}
      - {provider: mock, model: never, priority: 1}
  defaults:
    targets:
      - {provider: mock, model: "bad@status=400"}
      - {provider: mock, model: never, priority: 1}
"#,
    )
    .await;
    // A provider's 5xx keeps its status.
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat_for("on_connect_only", "x"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    // A timeout: 504, timeout_error.
    let (s, e) = error_of(
        h.post("/v1/chat/completions", &chat_for("on_5xx_only", "x"))
            .await,
    )
    .await;
    assert_eq!((s, e["type"].as_str()), (504, Some("timeout_error")), "{e}");
    // A refused connection: 502, api_error.
    let (s, e) = error_of(
        h.post("/v1/chat/completions", &chat_for("on_timeout_only", "x"))
            .await,
    )
    .await;
    assert_eq!((s, e["type"].as_str()), (502, Some("api_error")), "{e}");
    // A 4xx other than 429 is never worth another target.
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat_for("defaults", "x"))
            .await,
    )
    .await;
    assert_eq!(s, 400);
    let models = upstream_models(&h);
    assert!(!models.iter().any(|m| m == "never"), "{models:?}");
    let m = settle(&h).await;
    assert_eq!(
        metric(&m, &attempts("mock", "defaults", "status_4xx")),
        1.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, "tollgate_failovers_total{"), None, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_fails_the_last_error_is_the_answer() {
    let h = harness(
        r#"
  statuses:
    targets:
      - {provider: mock, model: "a@status=500"}
      - {provider: mock, model: "b@status=503", priority: 1}
  refused_then_timeout:
    targets:
      - {provider: dead, model: refused}
      - {provider: mock, model: "hang@hang=1", priority: 1}
  timeout_then_refused:
    targets:
      - {provider: mock, model: "hang@hang=1"}
      - {provider: dead, model: refused, priority: 1}
"#,
    )
    .await;
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat_for("statuses", "x"))
            .await,
    )
    .await;
    assert_eq!(s, 503);
    let (s, e) = error_of(
        h.post(
            "/v1/chat/completions",
            &chat_for("refused_then_timeout", "x"),
        )
        .await,
    )
    .await;
    assert_eq!((s, e["type"].as_str()), (504, Some("timeout_error")), "{e}");
    let (s, e) = error_of(
        h.post(
            "/v1/chat/completions",
            &chat_for("timeout_then_refused", "x"),
        )
        .await,
    )
    .await;
    assert_eq!((s, e["type"].as_str()), (502, Some("api_error")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_bounds_the_plan() {
    let h = harness(
        r#"
  m:
    failover: {max_attempts: 2}
    targets:
      - {provider: mock, model: "t0@status=500"}
      - {provider: mock, model: "t1@status=502", priority: 1}
      - {provider: mock, model: t2, priority: 2}
"#,
    )
    .await;
    let (s, _) = error_of(h.post("/v1/chat/completions", &chat("x")).await).await;
    assert_eq!(s, 502, "the second (last) attempt's error");
    assert_eq!(upstream_models(&h), ["t0@status=500", "t1@status=502"]);

    // The default is 3 attempts.
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: "t0@status=500"}
      - {provider: mock, model: "t1@status=500", priority: 1}
      - {provider: mock, model: "t2@status=503", priority: 2}
      - {provider: mock, model: t3, priority: 3}
"#,
    )
    .await;
    let (s, _) = error_of(h.post("/v1/chat/completions", &chat("x")).await).await;
    assert_eq!(s, 503);
    assert_eq!(upstream_models(&h).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_waits_longer_than_its_deadline() {
    // Three hanging targets, 400 ms of ttfb each, a 1 s deadline.
    let h = harness(
        r#"
  m:
    failover: {max_attempts: 3, deadline_ms: 1000}
    targets:
      - {provider: mock, model: "h1@hang=1"}
      - {provider: mock, model: "h2@hang=1", priority: 1}
      - {provider: mock, model: "h3@hang=1", priority: 2}
"#,
    )
    .await;
    let t = Instant::now();
    let r = h.post("/v1/chat/completions", &chat("x")).await;
    let took = t.elapsed();
    let (s, e) = error_of(r).await;
    assert_eq!((s, e["type"].as_str()), (504, Some("timeout_error")), "{e}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let n = upstream_models(&h).len();
    assert!((2..=3).contains(&n), "{n} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_cut_at_the_deadline_with_an_error_event() {
    // A stream that would take ~10 s (50 events 200 ms apart), a 1 s deadline.
    let h = harness(
        r#"
  m:
    failover: {deadline_ms: 1000}
    targets:
      - {provider: mock, model: "long@gap_ms=200,chunks=50"}
"#,
    )
    .await;
    let t = Instant::now();
    let r = h.post("/v1/chat/completions", &streamed(chat("x"))).await;
    assert_eq!(r.status(), 200);
    let text = stream_body(r).await;
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(err["error"]["message"].is_string(), "{text}");
}

// ------------------------------------------------- never after the first byte

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_after_it_started_is_never_retried() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: pa, model: "cut@reset_after=900,words=80"}
      - {provider: pb, model: second, priority: 1}
"#,
    )
    .await;
    let r = h.post("/v1/chat/completions", &streamed(chat("x"))).await;
    assert_eq!(r.status(), 200);
    let text = stream_body(r).await;
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(err["error"]["message"].is_string(), "{text}");
    // Content reached the client before the error.
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk", "{text}");
    assert_eq!(
        upstream_models(&h),
        ["cut@reset_after=900,words=80"],
        "the second target got a request"
    );
    let m = settle(&h).await;
    assert_eq!(metric_value(&m, "tollgate_failovers_total{"), None, "{m}");
    assert_eq!(metric(&m, &attempts("pb", "m", "success")), 0.0, "{m}");
    assert_eq!(metric(&m, &attempts("pa", "m", "success")), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gap_timeout_after_it_started_is_never_retried() {
    // First event at once, then 800 ms gaps; this target allows 300 ms.
    let h = harness(
        r#"
  m:
    targets:
      - {provider: pa, model: "gappy@gap_ms=800,chunks=4", timeouts: {gap_ms: 300}}
      - {provider: pb, model: second, priority: 1}
"#,
    )
    .await;
    let r = h.post("/v1/chat/completions", &streamed(chat("x"))).await;
    assert_eq!(r.status(), 200);
    let text = stream_body(r).await;
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(err["error"]["message"].is_string(), "{text}");
    assert_eq!(upstream_models(&h), ["gappy@gap_ms=800,chunks=4"]);
    let m = settle(&h).await;
    assert_eq!(metric(&m, &attempts("pa", "m", "timeout")), 1.0, "{m}");
    assert_eq!(metric_value(&m, "tollgate_failovers_total{"), None, "{m}");
}

// ------------------------------------------------------------------ timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_inherit_target_over_model_over_provider() {
    // The slow target answers after 700 ms. The provider allows 400 ms of ttfb.
    let h = harness(
        r#"
  provider_only:
    targets:
      - {provider: pa, model: "slow@delay_ms=700"}
      - {provider: pb, model: fallback, priority: 1}
  model_longer:
    timeouts: {ttfb_ms: 3000}
    targets:
      - {provider: pa, model: "slow@delay_ms=700"}
      - {provider: pb, model: fallback, priority: 1}
  target_shorter:
    timeouts: {ttfb_ms: 3000}
    targets:
      - {provider: pa, model: "slow@delay_ms=700", timeouts: {ttfb_ms: 300}}
      - {provider: pb, model: fallback, priority: 1}
  target_longer:
    timeouts: {ttfb_ms: 300}
    targets:
      - {provider: pa, model: "slow@delay_ms=700", timeouts: {ttfb_ms: 3000}}
      - {provider: pb, model: fallback, priority: 1}
"#,
    )
    .await;
    for (model, served_by) in [
        ("provider_only", "fallback"),
        ("model_longer", "slow@delay_ms=700"),
        ("target_shorter", "fallback"),
        ("target_longer", "slow@delay_ms=700"),
    ] {
        let r = h.post("/v1/chat/completions", &chat_for(model, "x")).await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(upstream_models(&h).last().unwrap(), served_by, "{model}");
    }
}

// ------------------------------------------------ Retry-After and key pools

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_keeps_a_target_out_for_that_long() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: pa, model: "limited@status=429,retry_after=2"}
      - {provider: pb, model: good}
"#,
    )
    .await;
    for _ in 0..8 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("x")).await.status(),
            200
        );
    }
    let models = upstream_models(&h);
    assert_eq!(
        models.iter().filter(|m| m.starts_with("limited")).count(),
        1,
        "asked during its cooldown: {models:?}"
    );
    // After the cooldown it is asked again.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    h.mock.clear();
    for _ in 0..4 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("x")).await.status(),
            200
        );
    }
    let models = upstream_models(&h);
    assert!(
        models.iter().any(|m| m.starts_with("limited")),
        "never asked again: {models:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_target_is_cooling_down_the_answer_is_503_with_retry_after() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: "limited@status=429,retry_after=5"}
"#,
    )
    .await;
    let (s, _) = error_of(h.post("/v1/chat/completions", &chat("x")).await).await;
    assert_eq!(s, 429);
    let r = h.post("/v1/chat/completions", &chat("x")).await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "Retry-After: {retry}");
    let (_, e) = error_of(r).await;
    assert_eq!(e["code"], "no_upstream_available", "{e}");
    assert_eq!(upstream_models(&h).len(), 1, "the cooled target was asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_target_is_ejected_they_are_tried_anyway() {
    // ADR 0003: ejection protects nothing once every target is ejected, so the
    // plan falls back to the ejected targets ("panic routing") rather than
    // turning the model off; the client gets the provider's own answer.
    let h = Harness::with_config(&config(
        "{eject_after: 2, cooldown_ms: 30000}",
        r#"
  m:
    targets:
      - {provider: mock, model: "flaky@status=500"}
"#,
    ))
    .await;
    for _ in 0..2 {
        let (s, _) = error_of(h.post("/v1/chat/completions", &chat("x")).await).await;
        assert_eq!(s, 500);
    }
    let m = settle(&h).await;
    assert_eq!(
        metric(
            &m,
            &per_target(
                "tollgate_target_ejections_total",
                "mock",
                "m",
                "flaky@status=500"
            )
        ),
        1.0,
        "{m}"
    );
    let (s, e) = error_of(h.post("/v1/chat/completions", &chat("x")).await).await;
    assert_eq!(s, 500, "{e}");
    assert_eq!(upstream_models(&h).len(), 3, "the ejected target was tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pool_moves_to_the_next_key_on_401_and_benches_the_bad_one() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: pool, model: good}
"#,
    )
    .await;
    for _ in 0..6 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("x")).await.status(),
            200
        );
    }
    let reqs = h.mock.requests();
    let auths: Vec<&str> = reqs
        .iter()
        .map(|r| r.header("authorization").unwrap_or(""))
        .collect();
    // The pool starts with the revoked key: tried once, then benched.
    assert_eq!(auths[0], "Bearer sk-revoked-key", "{auths:?}");
    assert_eq!(
        auths
            .iter()
            .filter(|a| a.contains("sk-revoked-key"))
            .count(),
        1,
        "{auths:?}"
    );
    assert_eq!(
        auths
            .iter()
            .filter(|a| **a == format!("Bearer {UPSTREAM_KEY}"))
            .count(),
        6,
        "{auths:?}"
    );
    // Same target both times.
    assert!(upstream_models(&h).iter().all(|m| m == "good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pool_moves_to_the_next_key_on_429_before_the_next_target() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: twin, model: "busy@status=429,retry_after=30"}
      - {provider: pb, model: good, priority: 1}
"#,
    )
    .await;
    assert_eq!(
        h.post("/v1/chat/completions", &chat("x")).await.status(),
        200
    );
    // Key 1, then key 2 on the same target, then the next target.
    assert_eq!(
        upstream_models(&h),
        [
            "busy@status=429,retry_after=30",
            "busy@status=429,retry_after=30",
            "good"
        ]
    );
    let m = settle(&h).await;
    assert_eq!(
        metric(&m, &attempts("twin", "m", "rate_limited")),
        2.0,
        "{m}"
    );
    // Both keys (and so the target) are cooling: the next request skips it.
    h.mock.clear();
    assert_eq!(
        h.post("/v1/chat/completions", &chat("x")).await.status(),
        200
    );
    assert_eq!(upstream_models(&h), ["good"]);

    // With a single key, the same failure goes to the next target at once.
    let h = harness(
        r#"
  m:
    targets:
      - {provider: pa, model: "busy@status=429,retry_after=30"}
      - {provider: pb, model: good, priority: 1}
"#,
    )
    .await;
    assert_eq!(
        h.post("/v1/chat/completions", &chat("x")).await.status(),
        200
    );
    assert_eq!(
        upstream_models(&h),
        ["busy@status=429,retry_after=30", "good"]
    );
}

// ------------------------------------------------------------ passive health

/// A model whose primary fails on demand (`[[mock:status=500]]` in the message,
/// one attempt so the failure is the answer) and a backup in the next tier.
const HEALTH_MODELS: &str = r#"
  m:
    failover: {max_attempts: 1}
    targets:
      - {provider: pa, model: primary, timeouts: {ttfb_ms: 3000}}
      - {provider: pb, model: backup, priority: 1}
"#;

async fn eject_primary(h: &Harness) {
    for _ in 0..2 {
        let (s, _) = error_of(
            h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
                .await,
        )
        .await;
        assert_eq!(s, 500);
    }
    assert_eq!(upstream_models(h), ["primary", "primary"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_then_one_probe_closes_the_circuit() {
    let h = Harness::with_config(&config(
        "{eject_after: 2, cooldown_ms: 1000}",
        HEALTH_MODELS,
    ))
    .await;
    let healthy = per_target("tollgate_target_healthy", "pa", "m", "primary");
    let in_flight = per_target("tollgate_target_in_flight", "pa", "m", "primary");
    let m = settle(&h).await;
    assert_eq!(metric_value(&m, &healthy), Some(1.0), "{m}");

    // A success in between resets the count: fail, succeed, fail is no ejection.
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(
        h.post("/v1/chat/completions", &chat("x")).await.status(),
        200
    );
    settle(&h).await;
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(upstream_models(&h), ["primary", "primary", "primary"]);
    let m = settle(&h).await;
    assert_eq!(metric_value(&m, &healthy), Some(1.0), "{m}");
    h.mock.clear();

    // One more failure makes two in a row: ejected.
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    let m = settle(&h).await;
    assert_eq!(
        metric(
            &m,
            &per_target("tollgate_target_ejections_total", "pa", "m", "primary")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, &healthy), Some(0.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            &per_target("tollgate_target_healthy", "pb", "m", "backup")
        ),
        Some(1.0),
        "{m}"
    );
    // While ejected: no traffic.
    h.mock.clear();
    for _ in 0..5 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("x")).await.status(),
            200
        );
    }
    assert_eq!(upstream_models(&h), vec!["backup"; 5]);

    // After the cooldown: half-open, still not healthy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = settle(&h).await;
    assert_eq!(metric_value(&m, &healthy), Some(0.0), "{m}");
    h.mock.clear();
    // One real request probes it (slowly); meanwhile other requests go elsewhere.
    let url = h.url("/v1/chat/completions");
    let probe = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(CLIENT_KEY)
            .json(&chat("probe [[mock:delay_ms=500]]"))
            .send()
            .await
            .unwrap()
            .status()
    });
    wait_for_metric(&h, &in_flight, 1.0).await;
    assert_eq!(
        h.post("/v1/chat/completions", &chat("during"))
            .await
            .status(),
        200
    );
    assert_eq!(probe.await.unwrap(), 200);
    let reqs = h.mock.requests();
    let by_content: HashMap<String, String> = reqs
        .iter()
        .map(|r| {
            let v = r.json().unwrap();
            (
                v["messages"][0]["content"].as_str().unwrap().to_string(),
                v["model"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_content["probe [[mock:delay_ms=500]]"], "primary",
        "{by_content:?}"
    );
    assert_eq!(by_content["during"], "backup", "{by_content:?}");
    assert_eq!(reqs.len(), 2, "{by_content:?}");

    // The probe worked: closed, healthy, serving again.
    let m = wait_for_metric(&h, &in_flight, 0.0).await;
    assert_eq!(metric_value(&m, &healthy), Some(1.0), "{m}");
    h.mock.clear();
    for _ in 0..3 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("x")).await.status(),
            200
        );
    }
    assert_eq!(upstream_models(&h), vec!["primary"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_ejects_the_target_again() {
    let h = Harness::with_config(&config(
        "{eject_after: 2, cooldown_ms: 1000}",
        HEALTH_MODELS,
    ))
    .await;
    eject_primary(&h).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.mock.clear();
    // The probe fails: one failure is enough to eject it again.
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    assert_eq!(upstream_models(&h), ["primary"]);
    let m = settle(&h).await;
    assert_eq!(
        metric(
            &m,
            &per_target("tollgate_target_ejections_total", "pa", "m", "primary")
        ),
        2.0,
        "{m}"
    );
    h.mock.clear();
    for _ in 0..3 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("x")).await.status(),
            200
        );
    }
    assert_eq!(upstream_models(&h), vec!["backup"; 3]);
}

// ------------------------------------------------------------------- metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_count_every_outcome() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: ok}
  bad:
    targets:
      - {provider: mock, model: "bad@status=404"}
  cut:
    targets:
      - {provider: mock, model: "cut@reset_after=0"}
"#,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("x")).await.status(),
            200
        );
    }
    let (s, _) = error_of(h.post("/v1/chat/completions", &chat_for("bad", "x")).await).await;
    assert_eq!(s, 404);
    // Headers, then the connection reset before any body byte.
    let (s, _) = error_of(h.post("/v1/chat/completions", &chat_for("cut", "x")).await).await;
    assert!(s >= 500, "{s}");
    let m = settle(&h).await;
    assert_eq!(metric(&m, &attempts("mock", "m", "success")), 3.0, "{m}");
    assert_eq!(
        metric(&m, &attempts("mock", "bad", "status_4xx")),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, &attempts("mock", "cut", "protocol")), 1.0, "{m}");
    let gauge = per_target("tollgate_target_in_flight", "mock", "m", "ok");
    assert_eq!(metric_value(&m, &gauge), Some(0.0), "{m}");
}

// --------------------------------------------------------------- admin API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_targets_shows_every_target_and_its_state() {
    let (store, guard) = tollgate_store::testing::fresh_sqlite().await;
    drop(store);
    let h = Harness::with_store(
        &config(
            "{eject_after: 2, cooldown_ms: 3000}",
            r#"
  m:
    failover: {max_attempts: 1}
    targets:
      - {provider: pa, model: primary, weight: 2}
      - {provider: pb, model: backup, priority: 1}
  other:
    strategy: latency
    targets:
      - {provider: mock, model: o1}
"#,
        ),
        guard.url(),
    )
    .await;
    let url = h.admin_url("/admin/v1/targets");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "the admin token is required");

    // Read after `settle`, so the outcome of the last request is recorded.
    let targets = || async {
        settle(&h).await;
        let r = client()
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "list", "{v}");
        v["data"].as_array().unwrap().clone()
    };
    let find = |data: &[Value], up: &str| -> Value {
        data.iter()
            .find(|t| t["upstream_model"] == up)
            .unwrap_or_else(|| panic!("no target {up}: {data:?}"))
            .clone()
    };

    let data = targets().await;
    assert_eq!(data.len(), 3, "{data:?}");
    let p = find(&data, "primary");
    for field in [
        "model",
        "provider",
        "upstream_model",
        "priority",
        "weight",
        "state",
        "in_flight",
        "consecutive_failures",
        "ejections",
        "ttft_ewma_ms",
        "retry_in_ms",
    ] {
        assert!(p.get(field).is_some(), "missing {field}: {p}");
    }
    assert_eq!(p["model"], "m");
    assert_eq!(p["provider"], "pa");
    assert_eq!(p["priority"], 0);
    assert_eq!(p["weight"], 2);
    assert_eq!(p["state"], "healthy");
    assert_eq!(p["in_flight"], 0);
    assert_eq!(p["consecutive_failures"], 0);
    assert_eq!(p["ejections"], 0);
    assert!(p["ttft_ewma_ms"].is_null(), "{p}");
    assert_eq!(p["retry_in_ms"], 0);
    let b = find(&data, "backup");
    assert_eq!(
        (
            b["provider"].as_str(),
            b["priority"].as_u64(),
            b["weight"].as_u64()
        ),
        (Some("pb"), Some(1), Some(1))
    );
    assert_eq!(find(&data, "o1")["model"], "other");

    // A success gives a latency estimate.
    assert_eq!(
        h.post("/v1/chat/completions", &chat("x")).await.status(),
        200
    );
    let p = find(&targets().await, "primary");
    assert!(p["ttft_ewma_ms"].as_f64().unwrap() > 0.0, "{p}");

    // One failure, then a second: ejected, with time left before a probe.
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    let p = find(&targets().await, "primary");
    assert_eq!(
        (p["state"].as_str(), p["consecutive_failures"].as_u64()),
        (Some("healthy"), Some(1)),
        "{p}"
    );
    let (s, _) = error_of(
        h.post("/v1/chat/completions", &chat("x [[mock:status=500]]"))
            .await,
    )
    .await;
    assert_eq!(s, 500);
    let p = find(&targets().await, "primary");
    assert_eq!(p["state"], "ejected", "{p}");
    assert_eq!(p["ejections"], 1, "{p}");
    let retry = p["retry_in_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 3000, "{p}");

    // Cooldown over: probing; a request probes it and closes the circuit.
    tokio::time::sleep(Duration::from_millis(retry + 100)).await;
    assert_eq!(find(&targets().await, "primary")["state"], "probing");
    assert_eq!(
        h.post("/v1/chat/completions", &chat("x")).await.status(),
        200
    );
    assert_eq!(upstream_models(&h).last().unwrap(), "primary");
    let p = find(&targets().await, "primary");
    assert_eq!(p["state"], "healthy", "{p}");
    assert_eq!(p["retry_in_ms"], 0, "{p}");
    assert_eq!(p["ejections"], 1, "{p}");
}

// --------------------------------------------------------------- balancing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_three_to_one_give_a_75_percent_share() {
    let h = harness(
        r#"
  m:
    targets:
      - {provider: mock, model: a, weight: 3}
      - {provider: mock, model: b, weight: 1}
"#,
    )
    .await;
    let url = h.url("/v1/chat/completions");
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Rounds of 4 concurrent clients × 5 requests, each round's requests counted
    // from the mock's log (which keeps the last few dozen) before the next.
    for _ in 0..100 {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    // A connection per request: tiny requests on a kept-alive
                    // connection to the harness's listener wait on delayed ACKs.
                    let r = client()
                        .post(&url)
                        .bearer_auth(CLIENT_KEY)
                        .json(&chat("w"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for m in upstream_models(&h) {
            *counts.entry(m).or_default() += 1;
        }
        h.mock.clear();
    }
    assert_eq!(counts.values().sum::<usize>(), 2000, "{counts:?}");
    assert_eq!(h.mock.request_count(), 2000);
    let a = counts.get("a").copied().unwrap_or(0) as f64 / 2000.0;
    assert!((0.70..=0.80).contains(&a), "share of a: {a} ({counts:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_prefers_the_faster_target() {
    let h = harness(
        r#"
  m:
    strategy: latency
    targets:
      - {provider: pa, model: "slow@delay_ms=150"}
      - {provider: pb, model: fast}
"#,
    )
    .await;
    // Warm-up: untried targets go first, so both get a sample.
    for _ in 0..4 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("l")).await.status(),
            200
        );
    }
    let warm = upstream_models(&h);
    assert!(
        warm.iter().any(|m| m.starts_with("slow")) && warm.contains(&"fast".to_string()),
        "{warm:?}"
    );
    h.mock.clear();
    for _ in 0..30 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("l")).await.status(),
            200
        );
    }
    let models = upstream_models(&h);
    assert_eq!(models.len(), 30);
    let fast = models.iter().filter(|m| *m == "fast").count();
    assert!(fast >= 24, "fast served {fast} of 30: {models:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_prefers_the_faster_target() {
    let h = harness(
        r#"
  m:
    strategy: least_in_flight
    targets:
      - {provider: pa, model: "slow@delay_ms=150"}
      - {provider: pb, model: fast}
"#,
    )
    .await;
    let url = h.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                let r = c
                    .post(&url)
                    .bearer_auth(CLIENT_KEY)
                    .json(&chat("q"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Counted per provider (the mock's log is too short for a run this long).
    let m = settle(&h).await;
    let slow = metric(&m, &attempts("pa", "m", "success"));
    let fast = metric(&m, &attempts("pb", "m", "success"));
    assert_eq!((slow + fast) as u64, h.mock.request_count(), "{m}");
    assert!(fast > 2.0 * slow, "fast {fast}, slow {slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_on_a_header_is_sticky_and_spreads() {
    let h = harness(
        r#"
  m:
    strategy: consistent_hash
    hash_on: "header:x-session-id"
    targets:
      - {provider: mock, model: r1}
      - {provider: mock, model: r2}
      - {provider: mock, model: r3}
"#,
    )
    .await;
    let c = client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for s in 0..30 {
        let mut first: Option<String> = None;
        for _ in 0..4 {
            let r = c
                .post(h.url("/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .header("x-session-id", format!("session-{s}"))
                .json(&chat("c"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let m = upstream_models(&h).pop().unwrap();
            assert_eq!(
                first.get_or_insert_with(|| m.clone()),
                &m,
                "session-{s} moved"
            );
        }
        *seen.entry(first.unwrap()).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        3,
        "sessions should spread over every replica: {seen:?}"
    );
    // Without the header the request is still served.
    assert_eq!(
        h.post("/v1/chat/completions", &chat("c")).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_on_the_client_key_is_sticky() {
    let h = harness(
        r#"
  m:
    strategy: consistent_hash
    hash_on: key
    targets:
      - {provider: mock, model: r1}
      - {provider: mock, model: r2}
      - {provider: mock, model: r3}
"#,
    )
    .await;
    let mut seen = HashSet::new();
    for key in HASH_KEYS {
        let mut first: Option<String> = None;
        for _ in 0..3 {
            assert_eq!(
                h.post_as(key, "/v1/chat/completions", &chat("k"))
                    .await
                    .status(),
                200
            );
            let m = upstream_models(&h).pop().unwrap();
            assert_eq!(first.get_or_insert_with(|| m.clone()), &m, "{key} moved");
        }
        seen.insert(first.unwrap());
    }
    assert!(seen.len() >= 2, "8 keys all on one replica: {seen:?}");
}
