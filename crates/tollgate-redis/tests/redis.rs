//! The scripts against a real Redis (127.0.0.1:6379 unless `TOLLGATE_TEST_REDIS`
//! names another; `make test` starts one). Every test has its own key prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use tollgate_limits::{Layer, LimitKind, Limits, Refusal};
use tollgate_redis::{LayerRef, RedisLimits, RedisSettings};

async fn limits(lease_ms: u64) -> RedisLimits {
    let url = std::env::var("TOLLGATE_TEST_REDIS").unwrap_or("redis://127.0.0.1:6379".into());
    let prefix = format!(
        "tg-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    RedisLimits::connect(RedisSettings {
        url,
        pool_size: 2,
        key_prefix: prefix,
        timeout: Duration::from_secs(2),
        lease: Duration::from_millis(lease_ms),
    })
    .await
    .expect("a Redis at 127.0.0.1:6379 (make services)")
}

fn key(scope: &str, limits: Limits) -> LayerRef<'_> {
    LayerRef {
        layer: Layer::Key,
        scope,
        limits,
    }
}

#[tokio::test]
async fn requests_per_minute_exactly_then_refused_with_the_wait() {
    let r = limits(60_000).await;
    let l = [key(
        "key:a",
        Limits {
            rpm: Some(5),
            ..Limits::default()
        },
    )];
    for i in 0..5 {
        let adm = r.admit(&l, 0, &format!("r{i}")).await.unwrap().unwrap();
        let (layer, s) = adm.requests.unwrap();
        assert_eq!((layer, s.limit, s.remaining), (Layer::Key, 5, 4 - i));
    }
    let rej = r.admit(&l, 0, "r5").await.unwrap().unwrap_err();
    assert_eq!(
        (rej.layer, rej.kind, rej.limit),
        (Layer::Key, LimitKind::Requests, 5)
    );
    match rej.refusal {
        // One request refills in 12 s.
        Refusal::Wait(d) => assert!(
            d > Duration::from_secs(11) && d <= Duration::from_secs(12),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refusing_layer_takes_nothing_from_the_others() {
    let r = limits(60_000).await;
    let k = Limits {
        rpm: Some(10),
        ..Limits::default()
    };
    let t = Limits {
        rpm: Some(2),
        ..Limits::default()
    };
    let both = [
        key("key:a", k),
        LayerRef {
            layer: Layer::Team,
            scope: "team:t",
            limits: t,
        },
    ];
    for i in 0..2 {
        assert!(r.admit(&both, 0, &format!("r{i}")).await.unwrap().is_ok());
    }
    for i in 2..5 {
        let rej = r
            .admit(&both, 0, &format!("r{i}"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!((rej.layer, rej.kind), (Layer::Team, LimitKind::Requests));
    }
    // The key lost only the two admitted requests: 8 left.
    let adm = r
        .admit(&[key("key:a", k)], 0, "alone")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(adm.requests.unwrap().1.remaining, 7);
}

#[tokio::test]
async fn tokens_reserved_then_settled_with_real_usage() {
    let r = limits(60_000).await;
    let l = [key(
        "key:a",
        Limits {
            tpm: Some(1000),
            tpd: Some(5000),
            ..Limits::default()
        },
    )];
    let adm = r.admit(&l, 600, "a").await.unwrap().unwrap();
    assert_eq!(adm.reserved, 600);
    assert_eq!(adm.tokens.unwrap().1.remaining, 400);
    let rej = r.admit(&l, 600, "b").await.unwrap().unwrap_err();
    assert_eq!(rej.kind, LimitKind::Tokens);
    // It used 100: 500 come back.
    r.finish(&l, 600, Some(100), "a").await.unwrap();
    assert!(r.admit(&l, 600, "c").await.unwrap().is_ok());
    // More than the bucket holds can never pass.
    let rej = r.admit(&l, 1001, "d").await.unwrap().unwrap_err();
    assert_eq!(rej.refusal, Refusal::TooLarge);
    // `None` (a cut stream) keeps the reservation.
    r.finish(&l, 600, None, "c").await.unwrap();
    assert!(r.admit(&l, 600, "e").await.unwrap().is_err());
}

#[tokio::test]
async fn concurrency_slots_free_on_finish_or_when_their_lease_ends() {
    let r = limits(300).await;
    let l = [key(
        "key:a",
        Limits {
            concurrent: Some(2),
            ..Limits::default()
        },
    )];
    assert!(r.admit(&l, 0, "a").await.unwrap().is_ok());
    assert!(r.admit(&l, 0, "b").await.unwrap().is_ok());
    let rej = r.admit(&l, 0, "c").await.unwrap().unwrap_err();
    assert_eq!(rej.kind, LimitKind::Concurrency);
    r.finish(&l, 0, Some(0), "a").await.unwrap();
    assert!(r.admit(&l, 0, "c").await.unwrap().is_ok());
    assert!(r.admit(&l, 0, "d").await.unwrap().is_err());
    // A node that died never finishes: its slots go when the lease does.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(r.admit(&l, 0, "e").await.unwrap().is_ok());
    assert!(r.admit(&l, 0, "f").await.unwrap().is_ok());
}

#[tokio::test]
async fn nodes_share_one_limit() {
    let a = limits(60_000).await;
    // A second node: same Redis, same prefix.
    let url = std::env::var("TOLLGATE_TEST_REDIS").unwrap_or("redis://127.0.0.1:6379".into());
    let prefix = format!("tg-test-shared-{}", std::process::id());
    let mk = || {
        RedisLimits::connect(RedisSettings {
            url: url.clone(),
            pool_size: 1,
            key_prefix: prefix.clone(),
            timeout: Duration::from_secs(2),
            lease: Duration::from_secs(60),
        })
    };
    drop(a);
    let (a, b, c) = (
        mk().await.unwrap(),
        mk().await.unwrap(),
        mk().await.unwrap(),
    );
    let l = [key(
        "key:shared",
        Limits {
            rpm: Some(30),
            ..Limits::default()
        },
    )];
    let mut ok = 0;
    for i in 0..60 {
        let node = [&a, &b, &c][i % 3];
        if node.admit(&l, 0, &format!("r{i}")).await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 30, "30 per minute across three nodes, not 30 each");
}

fn budget(scope: &str, daily: f64, seed: f64) -> tollgate_redis::BudgetRef<'_> {
    tollgate_redis::BudgetRef {
        scope,
        daily_usd: Some(daily),
        monthly_usd: None,
        day_seed: seed,
        month_seed: seed,
    }
}

#[tokio::test]
async fn budgets_reserve_settle_and_refuse_across_nodes() {
    let a = limits(60_000).await;
    let p = (20_000, 650);
    // The ledger knew $0.50 spent today; the budget is $1.
    let b = [budget("key:a", 1.0, 0.5)];
    let spent = a.reserve_budget(&b, 0.3, "r1", p).await.unwrap().unwrap();
    assert_eq!(spent, vec![[0.5, 0.5]]);
    // 0.5 spent + 0.3 held < 1: still admitted (the estimate of this one is
    // not counted, so the overspend is at most one request).
    assert!(a.reserve_budget(&b, 0.3, "r2", p).await.unwrap().is_ok());
    // 0.5 + 0.6 held ≥ 1: refused while they are in flight.
    let r = a
        .reserve_budget(&b, 0.3, "r3", p)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((r.index, r.monthly), (0, false));
    // They cost 0.1 each: 0.7 spent, room again.
    let after = a.settle_budget(&b, 0.1, "r1", p).await.unwrap();
    assert!((after[0][0] - 0.6).abs() < 1e-9, "{after:?}");
    a.settle_budget(&b, 0.1, "r2", p).await.unwrap();
    assert!(a.reserve_budget(&b, 0.3, "r4", p).await.unwrap().is_ok());
    a.settle_budget(&b, 0.35, "r4", p).await.unwrap();
    // 1.05 spent: refused, and not because of requests in flight.
    let r = a
        .reserve_budget(&b, 0.01, "r5", p)
        .await
        .unwrap()
        .unwrap_err();
    assert!((r.spent - 1.05).abs() < 1e-9, "{r:?}");
    // A new day starts from its own seed.
    assert!(a
        .reserve_budget(&b, 0.3, "r6", (20_001, 650))
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn budget_reservations_of_a_dead_node_lapse() {
    let a = limits(300).await;
    let p = (20_000, 650);
    let b = [budget("team:t", 1.0, 0.0)];
    assert!(a.reserve_budget(&b, 0.6, "lost1", p).await.unwrap().is_ok());
    assert!(a.reserve_budget(&b, 0.6, "lost2", p).await.unwrap().is_ok());
    assert!(a.reserve_budget(&b, 0.1, "x", p).await.unwrap().is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(a.reserve_budget(&b, 0.1, "y", p).await.unwrap().is_ok());
}
