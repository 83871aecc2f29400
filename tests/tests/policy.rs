//! Resource policy end to end, on SQLite and on PostgreSQL: teams and keys
//! managed through the admin API, layered limits, budgets, exact usage and
//! cost read back from the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tollgate_tests::*;

const CONFIG: &str = r#"
server:
  listen: ["127.0.0.1:1"]
  admin_listen: "127.0.0.1:2"
providers:
  mock:
    kind: openai_compatible
    base_url: "{mock}/v1"
    api_key: sk-upstream-secret
    timeouts: {connect_ms: 1000, read_ms: 5000}
models:
  gpt-4o-mini:
    targets: [{provider: mock, model: mock-mini}]
    pricing: {input_per_mtok: 1000, output_per_mtok: 2000, cached_input_per_mtok: 500}
  capped:
    targets: [{provider: mock, model: mock-capped}]
    limits: {rpm: 2}
  text-embedding-3-small:
    targets: [{provider: mock, model: mock-embed}]
    pricing: {input_per_mtok: 100, output_per_mtok: 0}
teams:
  ops:
    description: from the file
    limits: {rpm: 1000}
keys:
  - name: static-one
    key: tg-static-key-0001
    team: ops
"#;

on_both_stores!(
    usage_and_cost_are_exact,
    layered_limits_refuse_with_the_right_layer,
    concurrency_cap,
    budgets_refuse_once_spent,
    disable_rotate_expire_delete,
    admin_api_validates_and_protects,
    usage_series_and_csv_export,
    another_node_sees_changes_within_a_second,
);

async fn create_key(h: &Harness, body: Value) -> (String, String) {
    let (s, v) = h.admin("POST", "/admin/v1/keys", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

/// Wait (at most 5 s) until no budget of key `id` is held by a request in
/// flight: the accounting step settles it just after the client's last byte.
async fn settled(h: &Harness, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, k) = h.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
        if k["spend"]["in_flight_usd"] == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "never settled: {k}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// Poll the usage endpoint until it counts `n` requests (the ledger writes asynchronously).
async fn usage_when(h: &Harness, query: &str, n: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = h
            .admin("GET", &format!("/admin/v1/usage?{query}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        let total: i64 = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum();
        if total >= n {
            assert_eq!(total, n, "{v}");
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "ledger never reached {n} requests: {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn cost(p: (f64, f64, f64), input: u64, cached: u64, output: u64) -> f64 {
    ((input - cached) as f64 * p.0 + cached as f64 * p.2 + output as f64 * p.1) / 1e6
}

async fn usage_and_cost_are_exact(url: &str) {
    let h = Harness::with_store(CONFIG, url).await;
    let (s, team) = h
        .admin(
            "POST",
            "/admin/v1/teams",
            Some(json!({"id": "research", "description": "ML", "limits": {"rpm": 100}, "metadata": {"cost_center": "42"}})),
        )
        .await;
    assert_eq!(s, 201, "{team}");
    assert_eq!(team["source"], "store");
    let (id, key) = create_key(&h, json!({"name": "alice", "team_id": "research"})).await;
    assert!(key.starts_with("tg-"));

    // Non-streamed chat, streamed chat with usage, embeddings.
    let r = h
        .post_as(
            &key,
            "/v1/chat/completions",
            &chat("gpt-4o-mini", "one two three"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let u1 = r.json::<Value>().await.unwrap()["usage"].clone();
    let mut body = chat("gpt-4o-mini", "stream me [[mock:words=7]]");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = h.post_as(&key, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        text.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    let u2 = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|v| !v["usage"].is_null())
        .unwrap()["usage"]
        .clone();
    let r = h
        .post_as(
            &key,
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": ["a b c", "d e"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let u3 = r.json::<Value>().await.unwrap()["usage"].clone();

    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    let cached = |v: &Value| {
        v["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0)
    };
    let chat_price = (1000.0, 2000.0, 500.0);
    let expected_chat = cost(
        chat_price,
        n(&u1, "prompt_tokens"),
        cached(&u1),
        n(&u1, "completion_tokens"),
    ) + cost(
        chat_price,
        n(&u2, "prompt_tokens"),
        cached(&u2),
        n(&u2, "completion_tokens"),
    );
    let expected_embed = cost((100.0, 0.0, 100.0), n(&u3, "prompt_tokens"), 0, 0);

    let v = usage_when(&h, &format!("key_id={id}&group_by=model"), 3).await;
    let rows = v["data"].as_array().unwrap();
    let by = |m: &str| rows.iter().find(|r| r["group"] == m).unwrap().clone();
    let c = by("gpt-4o-mini");
    assert_eq!(c["requests"], 2);
    assert_eq!(c["errors"], 0);
    assert_eq!(
        c["input_tokens"].as_u64().unwrap(),
        n(&u1, "prompt_tokens") + n(&u2, "prompt_tokens")
    );
    assert_eq!(
        c["output_tokens"].as_u64().unwrap(),
        n(&u1, "completion_tokens") + n(&u2, "completion_tokens")
    );
    assert_eq!(n(&u2, "completion_tokens"), 7);
    assert!(
        (c["cost_usd"].as_f64().unwrap() - expected_chat).abs() < 1e-9,
        "{c} vs {expected_chat}"
    );
    let e = by("text-embedding-3-small");
    assert_eq!(e["input_tokens"].as_u64().unwrap(), n(&u3, "prompt_tokens"));
    assert!((e["cost_usd"].as_f64().unwrap() - expected_embed).abs() < 1e-9);

    // The same spend by team, and on the key's record.
    let v = usage_when(&h, "team_id=research", 3).await;
    let total = v["data"][0]["cost_usd"].as_f64().unwrap();
    assert!((total - expected_chat - expected_embed).abs() < 1e-9);
    let (_, k) = h.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert!(
        (k["spend"]["daily_usd"].as_f64().unwrap() - total).abs() < 1e-9,
        "{k}"
    );
    assert_eq!(k["prefix"].as_str().unwrap(), &key[..11]);
    assert!(k.get("key").is_none(), "the secret is shown only once");
    let (_, t) = h.admin("GET", "/admin/v1/teams/research", None).await;
    assert!(
        (t["spend"]["monthly_usd"].as_f64().unwrap() - total).abs() < 1e-9,
        "{t}"
    );
    assert_eq!(t["metadata"]["cost_center"], "42");
    // Team spend is in /metrics.
    let m = h.metrics_text();
    let g = metric_value(
        &m,
        r#"tollgate_budget_spend_usd{id="research",period="daily",scope="team"}"#,
    )
    .unwrap();
    assert!((g - total).abs() < 1e-9, "{m}");
}

async fn layered_limits_refuse_with_the_right_layer(url: &str) {
    let h = Harness::with_store(CONFIG, url).await;
    // Key rpm: 2 per minute.
    let (_, key) = create_key(&h, json!({"name": "rpm", "limits": {"rpm": 2}})).await;
    for i in 0..2 {
        let r = h
            .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (1 - i).to_string().as_str()
        );
        assert_eq!(r.headers()["x-ratelimit-scope-requests"], "key");
    }
    let r = h
        .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
        .await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("key `rpm`") && msg.contains("requests per minute"),
        "{msg}"
    );

    // Key tpm: the reservation is prompt + max_tokens.
    let (_, key) = create_key(&h, json!({"name": "tpm", "limits": {"tpm": 1000}})).await;
    let mut big = chat("gpt-4o-mini", "hello");
    big["max_tokens"] = json!(900);
    let r = h.post_as(&key, "/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "1000");
    assert_eq!(r.headers()["x-ratelimit-scope-tokens"], "key");
    r.bytes().await.unwrap();
    // The real usage (a few tokens) replaces the reservation in the accounting step …
    let left = h.tokens_back(&key, 900).await;
    assert!((900..1000).contains(&left), "{left}");
    // … so another fits …
    let r = h.post_as(&key, "/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // … but not one that alone asks more than the bucket holds.
    big["max_tokens"] = json!(5000);
    let r = h.post_as(&key, "/v1/chat/completions", &big).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");

    // Team rpm binds before a looser key limit; the team is shared by its keys.
    let (s, _) = h
        .admin(
            "POST",
            "/admin/v1/teams",
            Some(json!({"id": "small", "limits": {"rpm": 3}})),
        )
        .await;
    assert_eq!(s, 201);
    let (_, a) = create_key(
        &h,
        json!({"name": "a", "team_id": "small", "limits": {"rpm": 50}}),
    )
    .await;
    let (_, b) = create_key(&h, json!({"name": "b", "team_id": "small"})).await;
    for k in [&a, &b, &a] {
        let r = h
            .post_as(k, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-scope-requests"], "team");
    }
    let r = h
        .post_as(&b, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
        .await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team `small`"),
        "{v}"
    );
    // The refused request did not spend key a's own allowance.
    let r = h
        .post_as(&a, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
        .await;
    assert_eq!(r.status(), 429);

    // Model layer: `capped` takes 2 requests a minute across all keys.
    let (_, c) = create_key(&h, json!({"name": "c"})).await;
    let (_, d) = create_key(&h, json!({"name": "d"})).await;
    assert_eq!(
        h.post_as(&c, "/v1/chat/completions", &chat("capped", "x"))
            .await
            .status(),
        200
    );
    assert_eq!(
        h.post_as(&d, "/v1/chat/completions", &chat("capped", "x"))
            .await
            .status(),
        200
    );
    let r = h
        .post_as(&d, "/v1/chat/completions", &chat("capped", "x"))
        .await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model `capped`"),
        "{v}"
    );
    // Other models are unaffected.
    assert_eq!(
        h.post_as(&d, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
            .await
            .status(),
        200
    );

    let m = h.metrics_text();
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_rate_limited_requests_total{layer="team",limit="requests"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_rate_limited_requests_total{layer="model",limit="requests"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_rate_limited_requests_total{layer="key",limit="tokens"}"#
        ),
        Some(1.0)
    );
}

async fn concurrency_cap(url: &str) {
    let h = Harness::with_store(CONFIG, url).await;
    let (_, key) = create_key(
        &h,
        json!({"name": "one-at-a-time", "limits": {"concurrent": 1}}),
    )
    .await;
    let slow = {
        let url = h.url("/v1/chat/completions");
        let key = key.clone();
        tokio::spawn(async move {
            client()
                .post(url)
                .bearer_auth(key)
                .json(&chat("gpt-4o-mini", "slow [[mock:delay_ms=1500]]"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Wait until the slow one is in flight at the provider.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.mock.requests().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = h
        .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrent requests"),
        "{v}"
    );
    assert_eq!(slow.await.unwrap(), 200);
    // The slot is free again once the first finished.
    let r = h
        .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
        .await;
    assert_eq!(r.status(), 200);
}

async fn budgets_refuse_once_spent(url: &str) {
    let h = Harness::with_store(CONFIG, url).await;
    // At $1000/$2000 per 1M tokens one small request costs about a cent. Each
    // request is settled before the next is sent.
    let (id, key) = create_key(
        &h,
        json!({"name": "thrifty", "budget": {"daily_usd": 0.1, "soft_pct": 10}}),
    )
    .await;
    let mut spent = 0;
    let one_conn = client();
    let mut body = chat("gpt-4o-mini", "a few words here");
    body["max_tokens"] = json!(8);
    let refusal = loop {
        let r = one_conn
            .post(h.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            break r;
        }
        r.bytes().await.unwrap();
        settled(&h, &id).await;
        spent += 1;
        assert!(spent < 50, "the budget never ran out");
    };
    assert!(spent >= 1);
    assert_eq!(refusal.status(), 429);
    let v: Value = refusal.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily budget of key `thrifty`"),
        "{v}"
    );
    let (_, k) = h.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    let spend = k["spend"]["daily_usd"].as_f64().unwrap();
    assert!(spend >= 0.1, "{k}");
    // Overspend is bounded by one request's cost.
    let one = spend / f64::from(spent);
    assert!(spend < 0.1 + one * 1.01, "{k}");
    assert_eq!(k["spend"]["exhausted"], true);
    assert_eq!(k["spend"]["daily_remaining_usd"], 0.0);
    let m = h.metrics_text();
    assert_eq!(
        metric_value(
            &m,
            &format!(r#"tollgate_budget_soft_limit_reached{{id="{id}",scope="key"}}"#)
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tollgate_rate_limited_requests_total{layer="key",limit="budget"}"#
        ),
        Some(1.0)
    );
    // Raising the budget lets the key continue, with what it spent kept.
    let (s, k) = h
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"budget": {"daily_usd": 10}})),
        )
        .await;
    assert_eq!(s, 200, "{k}");
    assert!((k["spend"]["daily_usd"].as_f64().unwrap() - spend).abs() < 1e-12);
    let r = h
        .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "more"))
        .await;
    assert_eq!(r.status(), 200);

    // A team budget binds all its keys.
    let (s, _) = h
        .admin(
            "POST",
            "/admin/v1/teams",
            Some(json!({"id": "broke", "budget": {"monthly_usd": 0}})),
        )
        .await;
    assert_eq!(s, 201);
    let (_, key) = create_key(&h, json!({"name": "member", "team_id": "broke"})).await;
    let r = h
        .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
        .await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("monthly budget of team `broke`"),
        "{v}"
    );
}

async fn disable_rotate_expire_delete(url: &str) {
    let h = Harness::with_store(CONFIG, url).await;
    let (id, key) = create_key(&h, json!({"name": "life"})).await;
    let call = |k: String| {
        let h = &h;
        async move {
            let r = h
                .post_as(&k, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
                .await;
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (s, v["error"]["code"].as_str().unwrap_or("").to_string())
        }
    };
    assert_eq!(call(key.clone()).await.0, 200);
    let (s, _) = h
        .admin("POST", &format!("/admin/v1/keys/{id}/disable"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(call(key.clone()).await, (401, "api_key_disabled".into()));
    let (s, _) = h
        .admin("POST", &format!("/admin/v1/keys/{id}/enable"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(call(key.clone()).await.0, 200);

    let (s, v) = h
        .admin("POST", &format!("/admin/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(s, 200);
    let new = v["key"].as_str().unwrap().to_string();
    assert_ne!(new, key);
    assert_eq!(call(key.clone()).await, (401, "invalid_api_key".into()));
    assert_eq!(call(new.clone()).await.0, 200);

    let (s, _) = h
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(call(new.clone()).await, (401, "api_key_expired".into()));
    let (s, v) = h
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"expires_at": null, "models": ["text-*"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call(new.clone()).await, (403, "model_not_allowed".into()));
    let (s, _) = h
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"models": null})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(call(new.clone()).await.0, 200);

    let (s, _) = h
        .admin("DELETE", &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(call(new.clone()).await, (401, "invalid_api_key".into()));
    let (s, _) = h.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(s, 404);
}

async fn admin_api_validates_and_protects(url: &str) {
    let h = Harness::with_store(CONFIG, url).await;
    // The token is required and checked.
    let r = client()
        .get(h.admin_url("/admin/v1/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(h.admin_url("/admin/v1/keys"))
        .bearer_auth("tg-wrong-admin-token-000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_admin_token");
    // /metrics and /healthz stay open for scrapers.
    let r = client().get(h.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Static keys and teams are listed, read-only.
    let (_, v) = h.admin("GET", "/admin/v1/keys", None).await;
    let stat = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "static-one")
        .unwrap()
        .clone();
    assert_eq!(stat["source"], "config");
    assert_eq!(stat["id"], "config:static-one");
    assert_eq!(stat["team_id"], "ops");
    let (s, v) = h
        .admin(
            "PATCH",
            "/admin/v1/keys/config:static-one",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("read_only")));
    let (s, _) = h.admin("DELETE", "/admin/v1/teams/ops", None).await;
    assert_eq!(s, 409);
    let (s, v) = h.admin("GET", "/admin/v1/teams/ops", None).await;
    assert_eq!((s, v["limits"]["rpm"].as_u64()), (200, Some(1000)));

    // Bad input: OpenAI-shaped 400s naming the field.
    for (body, param) in [
        (json!({"name": "x", "limits": {"rpm": 0}}), "limits.rpm"),
        (
            json!({"name": "x", "limits": {"rpm": 5, "on_failure": "sometimes"}}),
            "limits.on_failure",
        ),
        (
            json!({"name": "x", "budget": {"daily_usd": -1}}),
            "budget.daily_usd",
        ),
        (json!({"name": "x", "models": ["no-such-model"]}), "models"),
        (json!({"name": "x", "colour": "red"}), "colour"),
        (json!({"name": "x", "limits": {"rpmm": 3}}), "limits"),
        (
            json!({"name": "x", "expires_at": "yesterday"}),
            "expires_at",
        ),
        (json!({"name": ""}), "name"),
        (json!({}), "name"),
    ] {
        let (s, v) = h.admin("POST", "/admin/v1/keys", Some(body.clone())).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], param, "{body} → {v}");
    }
    let (s, v) = h
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"name": "x", "team_id": "ghost"})),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    // A per-limit failure policy is stored and shown.
    let (s, v) = h
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"name": "strict", "limits": {"rpm": 5, "on_failure": "fail_closed"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["limits"]["on_failure"], "fail_closed", "{v}");
    let (s, _) = h
        .admin("POST", "/admin/v1/teams", Some(json!({"id": "bad id!"})))
        .await;
    assert_eq!(s, 400);
    let (s, _) = h
        .admin("POST", "/admin/v1/teams", Some(json!({"id": "t1"})))
        .await;
    assert_eq!(s, 201);
    let (s, v) = h
        .admin("POST", "/admin/v1/teams", Some(json!({"id": "t1"})))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    // A team with keys cannot be deleted; without, it can.
    let (kid, _) = create_key(&h, json!({"name": "in-t1", "team_id": "t1"})).await;
    let (s, _) = h.admin("DELETE", "/admin/v1/teams/t1", None).await;
    assert_eq!(s, 409);
    h.admin("DELETE", &format!("/admin/v1/keys/{kid}"), None)
        .await;
    let (s, _) = h.admin("DELETE", "/admin/v1/teams/t1", None).await;
    assert_eq!(s, 200);
    // Keys may join a team from the config file.
    let (s, v) = h
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"name": "opsy", "team_id": "ops"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = h.admin("GET", "/admin/v1/nothing", None).await;
    assert_eq!(s, 404);
    let (s, _) = h.admin("PUT", "/admin/v1/keys", None).await;
    assert_eq!(s, 405);
    let r = client()
        .get(h.admin_url("/admin/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spec: Value = r.json().await.unwrap();
    assert!(spec["paths"]["/admin/v1/keys"].is_object());
}

async fn usage_series_and_csv_export(url: &str) {
    let h = Harness::with_store(CONFIG, url).await;
    let (id, key) = create_key(&h, json!({"name": "csv, \"quoted\""})).await;
    for _ in 0..3 {
        let r = h
            .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
            .await;
        assert_eq!(r.status(), 200);
    }
    // A request refused by the provider is recorded as an error.
    let r = h
        .post_as(
            &key,
            "/v1/chat/completions",
            &chat("gpt-4o-mini", "[[mock:status=500]]"),
        )
        .await;
    assert_eq!(r.status(), 500);
    let v = usage_when(&h, &format!("key_id={id}"), 4).await;
    assert_eq!(v["data"][0]["errors"], 1);
    let (s, v) = h
        .admin(
            "GET",
            &format!("/admin/v1/usage/series?key_id={id}&bucket=1m&group_by=provider"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let rows = v["data"].as_array().unwrap();
    let total: i64 = rows.iter().map(|r| r["requests"].as_i64().unwrap()).sum();
    assert_eq!(total, 4);
    assert!(rows
        .iter()
        .all(|r| r["bucket_start"].as_i64().unwrap() % 60 == 0 && r["group"] == "mock"));
    assert_eq!(v["bucket_seconds"], 60);
    let (s, v) = h
        .admin("GET", "/admin/v1/usage?group_by=colour", None)
        .await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("group_by")));

    let r = client()
        .get(h.admin_url(&format!("/admin/v1/usage/export.csv?key_id={id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[0].starts_with("ts,request_id,key_id"));
    assert!(lines[1].contains("\"csv, \"\"quoted\"\"\""), "{csv}");
    assert!(
        lines.iter().filter(|l| l.contains(",500,")).count() == 1,
        "{csv}"
    );
}

async fn another_node_sees_changes_within_a_second(url: &str) {
    let a = Harness::with_store(CONFIG, url).await;
    let b = Harness::with_store(CONFIG, url).await;
    let (id, key) = create_key(&a, json!({"name": "roaming"})).await;
    // Node B learns of the new key by polling the store.
    let mut served = 0;
    let t0 = Instant::now();
    loop {
        let s = b
            .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
            .await
            .status();
        if s == 200 {
            served += 1;
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "node B still refuses after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, _) = a
        .admin("POST", &format!("/admin/v1/keys/{id}/disable"), None)
        .await;
    assert_eq!(s, 200);
    let t0 = Instant::now();
    loop {
        let s = b
            .post_as(&key, "/v1/chat/completions", &chat("gpt-4o-mini", "x"))
            .await
            .status();
        if s == 401 {
            break;
        }
        served += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "node B still accepts after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Node B's requests land in the one ledger, read through node A.
    usage_when(&a, &format!("key_id={id}"), served).await;
}
