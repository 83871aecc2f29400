//! Failover end to end: mocks failing in each way, the next target chosen, the
//! client succeeding where it can and getting a clean OpenAI error where it
//! cannot, within the deadline; balancing shares and preferences.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate_tests::*;

/// `{targets}` is replaced per test.
const BASE: &str = r#"
server:
  listen: ["127.0.0.1:1"]
  admin_listen: "127.0.0.1:1"
providers:
  mock:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    timeouts: {connect_ms: 500, read_ms: 3000, ttfb_ms: 400}
  claude:
    kind: anthropic
    base_url: "{mock}"
    api_key: sk-upstream-secret
  dead:
    kind: openai_compatible
    base_url: "http://127.0.0.1:9/v1"
    timeouts: {connect_ms: 300}
routing: {eject_after: 3, cooldown_ms: 60000}
keys:
  - {name: test, key: tg-test-client-key}
models:
  m:
    failover: {max_attempts: 3, deadline_ms: 5000}
{extra}    targets:
{targets}
"#;

async fn harness(targets: &str, extra: &str) -> Harness {
    Harness::with_config(&BASE.replace("{targets}", targets).replace("{extra}", extra)).await
}

fn chat(content: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": content}]})
}

/// Upstream models the mock saw, in order.
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

fn metric(h: &Harness, prefix: &str) -> f64 {
    metric_value(&h.metrics_text(), prefix).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_moves_to_the_next_target() {
    for (first, reason) in [
        ("{provider: dead, model: refused}", "connect"),
        ("{provider: mock, model: \"hang@hang=1\"}", "timeout"),
        ("{provider: mock, model: \"boom@status=500\"}", "status_5xx"),
        (
            "{provider: mock, model: \"busy@status=429\"}",
            "rate_limited",
        ),
        ("{provider: mock, model: \"slow@delay_ms=1500\"}", "timeout"),
    ] {
        let targets =
            format!("      - {first}\n      - {{provider: mock, model: good, priority: 1}}\n");
        let h = harness(&targets, "").await;
        let t = Instant::now();
        let r = h.post("/v1/chat/completions", &chat("hi")).await;
        assert_eq!(r.status(), 200, "{first}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{first}: {:?}",
            t.elapsed()
        );
        assert_eq!(upstream_models(&h).last().unwrap(), "good", "{first}");
        assert_eq!(
            metric(
                &h,
                &format!(
                    r#"tollgate_failovers_total{{gen_ai_request_model="m",reason="{reason}"}}"#
                )
            ),
            1.0,
            "{first}: {}",
            h.metrics_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_token_fails_over_but_a_started_stream_never_does() {
    // The stream's header comes at once, its first chunk after 1.5 s > ttfb 400 ms.
    let targets = "      - {provider: mock, model: \"lazy@ttft_ms=1500\"}\n      - {provider: mock, model: good, priority: 1}\n";
    let h = harness(targets, "").await;
    let mut body = chat("hi");
    body["stream"] = json!(true);
    let r = h.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\""),
        "{text}"
    );
    assert_eq!(upstream_models(&h), ["lazy@ttft_ms=1500", "good"]);

    // Reset after the stream started: the client gets an error event, nobody else is asked.
    let targets = "      - {provider: mock, model: \"cut@reset_after=300\"}\n      - {provider: mock, model: good, priority: 1}\n";
    let h = harness(targets, "").await;
    let r = h.post("/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let mut text = String::new();
    while let Some(c) = s.next().await {
        text.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(err["error"]["message"].is_string(), "{text}");
    assert_eq!(upstream_models(&h), ["cut@reset_after=300"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_translates_for_the_next_provider() {
    let targets = "      - {provider: mock, model: \"down@status=503\"}\n      - {provider: claude, model: claude-sonnet-4-5, priority: 1}\n";
    let h = harness(targets, "").await;
    let r = h.post("/v1/chat/completions", &chat("hello claude")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"].is_string());
    let reqs = h.mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[1].path, "/v1/messages");
    let anthropic = reqs[1].json().unwrap();
    assert_eq!(anthropic["model"], "claude-sonnet-4-5");
    assert!(anthropic["max_tokens"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_everything_fails_the_last_error_comes_back_within_the_deadline() {
    // Three hanging targets, 400 ms each, a 1 s deadline: the third never starts.
    let targets = "      - {provider: mock, model: \"h1@hang=1\"}\n      - {provider: mock, model: \"h2@hang=1\"}\n      - {provider: mock, model: \"h3@hang=1\"}\n";
    let cfg = BASE
        .replace("deadline_ms: 5000", "deadline_ms: 1000")
        .replace("{targets}", targets)
        .replace("{extra}", "");
    let h = Harness::with_config(&cfg).await;
    let t = Instant::now();
    let r = h.post("/v1/chat/completions", &chat("hi")).await;
    let took = t.elapsed();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "timeout_error");
    assert!(took < Duration::from_millis(1400), "{took:?}");
    assert!(upstream_models(&h).len() <= 3);

    // A provider's own error that is not worth a retry (400) comes back as is, at once.
    let targets = "      - {provider: mock, model: \"bad@status=400\"}\n      - {provider: mock, model: good}\n";
    let h = harness(targets, "").await;
    let r = h.post("/v1/chat/completions", &chat("hi")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(upstream_models(&h).len(), 1);

    // Every target refuses: 502 after max_attempts, OpenAI-shaped.
    let targets = "      - {provider: dead, model: a}\n      - {provider: dead, model: b}\n      - {provider: dead, model: c}\n      - {provider: dead, model: d}\n";
    let h = harness(targets, "").await;
    let r = h.post("/v1/chat/completions", &chat("hi")).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(
        metric(
            &h,
            r#"tollgate_upstream_attempts_total{gen_ai_provider_name="dead",gen_ai_request_model="m",outcome="connect"}"#
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_cools_a_target_down_and_ejection_is_visible() {
    let targets = "      - {provider: mock, model: \"limited@status=429,retry_after=30\"}\n      - {provider: mock, model: good}\n";
    let h = harness(targets, "    strategy: weighted\n").await;
    for _ in 0..10 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("hi")).await.status(),
            200
        );
    }
    // The 429 target was asked once; its 30 s cooldown kept it out afterwards.
    let models = upstream_models(&h);
    assert_eq!(
        models.iter().filter(|m| m.starts_with("limited")).count(),
        1,
        "{models:?}"
    );
    assert_eq!(
        metric(
            &h,
            r#"tollgate_target_healthy{gen_ai_provider_name="mock",gen_ai_request_model="m",upstream_model="limited@status=429,retry_after=30"}"#
        ),
        0.0
    );

    // Three consecutive 500s eject a target; the rest of the traffic avoids it.
    let targets = "      - {provider: mock, model: \"flaky@status=500\"}\n      - {provider: mock, model: good}\n";
    let h = harness(targets, "").await;
    for _ in 0..20 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("hi")).await.status(),
            200
        );
    }
    let models = upstream_models(&h);
    assert_eq!(
        models.iter().filter(|m| m.starts_with("flaky")).count(),
        3,
        "{models:?}"
    );
    assert_eq!(
        metric(
            &h,
            r#"tollgate_target_ejections_total{gen_ai_provider_name="mock",gen_ai_request_model="m",upstream_model="flaky@status=500"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pool_rotates_on_401_and_429() {
    let cfg = BASE
        .replace(
            "    api_key: sk-upstream-secret\n    timeouts: {connect_ms: 500",
            "    api_keys: [sk-revoked, sk-upstream-secret]\n    timeouts: {connect_ms: 500",
        )
        .replace("{targets}", "      - {provider: mock, model: good}\n")
        .replace("{extra}", "");
    let h = Harness::with_config(&cfg).await;
    for _ in 0..6 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("hi")).await.status(),
            200
        );
    }
    // The revoked key was tried at most once, then benched.
    let auths: Vec<String> = h
        .mock
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_string())
        .collect();
    assert!(
        auths.iter().filter(|a| a.contains("sk-revoked")).count() <= 1,
        "{auths:?}"
    );
    assert_eq!(
        auths
            .iter()
            .filter(|a| a.contains("sk-upstream-secret"))
            .count(),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_three_to_one_over_two_thousand_requests() {
    let targets = "      - {provider: mock, model: a, weight: 3}\n      - {provider: mock, model: b, weight: 1}\n";
    let h = harness(targets, "").await;
    let url = h.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..500 {
                let r = c
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
    let models = upstream_models(&h);
    assert_eq!(models.len(), 2000);
    let a = models.iter().filter(|m| *m == "a").count() as f64 / 2000.0;
    assert!((0.70..=0.80).contains(&a), "share of a: {a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_least_in_flight_prefer_the_faster_target() {
    let targets = "      - {provider: mock, model: \"slow@delay_ms=120\"}\n      - {provider: mock, model: fast}\n";
    let h = harness(targets, "    strategy: latency\n").await;
    for _ in 0..40 {
        assert_eq!(
            h.post("/v1/chat/completions", &chat("l")).await.status(),
            200
        );
    }
    let models = upstream_models(&h);
    let fast = models[4..].iter().filter(|m| *m == "fast").count();
    assert!(fast as f64 >= 0.8 * (models.len() - 4) as f64, "{models:?}");

    let h = harness(targets, "    strategy: least_in_flight\n").await;
    let url = h.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let until = Instant::now() + Duration::from_secs(2);
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
    let models = upstream_models(&h);
    let fast = models.iter().filter(|m| *m == "fast").count();
    let slow = models.len() - fast;
    assert!(fast > 2 * slow, "fast {fast}, slow {slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_sticks_to_a_target_per_header() {
    let targets = "      - {provider: mock, model: r1}\n      - {provider: mock, model: r2}\n      - {provider: mock, model: r3}\n";
    let h = harness(
        targets,
        "    strategy: consistent_hash\n    hash_on: \"header:x-session-id\"\n",
    )
    .await;
    let c = client();
    let mut seen = std::collections::HashSet::new();
    for s in 0..30 {
        let mut first = None;
        for _ in 0..3 {
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
            assert_eq!(*first.get_or_insert(m.clone()), m, "session-{s} moved");
            seen.insert(m);
        }
    }
    assert_eq!(seen.len(), 3, "sessions spread over every replica");
}
