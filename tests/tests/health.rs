//! Active health checks (Pingora's `HttpHealthCheck`) take a provider's targets
//! out of every plan while its checks fail, and put them back when they pass.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_tests::*;

const CONFIG: &str = r#"
server:
  listen: ["127.0.0.1:1"]
  admin_listen: "127.0.0.1:2"
providers:
  checked:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    health_check: {path: "/__mock/requests", interval_ms: 100, timeout_ms: 500}
  down:
    kind: openai_compatible
    base_url: "http://127.0.0.1:9/v1"
    health_check: {path: "/v1/models", interval_ms: 100, timeout_ms: 300}
  backup:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
models:
  m:
    targets:
      - {provider: down, model: primary}
      - {provider: backup, model: secondary, priority: 1}
  ok:
    targets: [{provider: checked, model: fine}]
keys:
  - {name: test, key: tg-test-client-key}
"#;

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_take_a_provider_out_before_any_request_fails() {
    let h = Harness::with_config(CONFIG).await;
    wait_until("the checks to run", || {
        let m = h.metrics_text();
        metric_value(
            &m,
            r#"tollgate_provider_health_check_up{gen_ai_provider_name="down"}"#,
        ) == Some(0.0)
            && metric_value(
                &m,
                r#"tollgate_provider_health_check_up{gen_ai_provider_name="checked"}"#,
            ) == Some(1.0)
    })
    .await;
    // The checked-down primary is skipped: no attempt, no failover, straight to the backup.
    for _ in 0..5 {
        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let m = h.metrics_text();
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_upstream_attempts_total{gen_ai_provider_name="down""#
        ),
        None,
        "{m}"
    );
    assert_eq!(metric_value(&m, "tollgate_failovers_total{"), None, "{m}");
    let ups: Vec<String> = h
        .mock
        .requests()
        .iter()
        .filter_map(|r| {
            r.json()
                .map(|v| v["model"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(ups, vec!["secondary"; 5]);
    // A provider whose check passes serves normally.
    let r = h
        .post(
            "/v1/chat/completions",
            &json!({"model": "ok", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
}
