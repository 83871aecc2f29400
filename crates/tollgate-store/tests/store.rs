//! Store tests; every `store_test!` runs on SQLite and on PostgreSQL.

use serde_json::json;
use tollgate_store::testing::{empty_postgres, fresh_sqlite};
use tollgate_store::{
    store_test, Backend, BudgetSpec, GroupBy, KeyPatch, LimitSpec, NewKey, NewTeam, Store,
    StoreError, TeamPatch, UsageQuery, UsageRecord, UsageRow,
};

fn team(id: &str) -> NewTeam {
    NewTeam {
        id: id.to_string(),
        description: Some(format!("team {id}")),
        models: Some(vec!["gpt-4o".into(), "claude".into()]),
        limits: LimitSpec {
            rpm: Some(60),
            tpm: Some(10_000),
            ..Default::default()
        },
        budget: BudgetSpec {
            daily_usd: Some(5.0),
            monthly_usd: Some(100.0),
            soft_pct: Some(80.0),
        },
        metadata: json!({"owner": id}),
    }
}

fn hash(n: u64) -> String {
    format!("{n:064x}")
}

fn key(id: &str, n: u64, team_id: Option<&str>) -> NewKey {
    NewKey {
        id: id.to_string(),
        name: format!("key {id}"),
        hash: hash(n),
        prefix: format!("tg-{n:04}"),
        team_id: team_id.map(str::to_string),
        models: None,
        limits: LimitSpec::default(),
        budget: BudgetSpec::default(),
        disabled: false,
        expires_at: None,
        metadata: json!({}),
    }
}

fn rec(i: u64, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        ts_ms,
        request_id: format!("req-{i:06}"),
        key_id: format!("k{}", i % 3),
        key_name: format!("key {}", i % 3),
        team_id: if i % 3 == 2 {
            None
        } else {
            Some(format!("t{}", i % 3))
        },
        model: if i.is_multiple_of(2) {
            "gpt-4o"
        } else {
            "claude"
        }
        .into(),
        provider: if i.is_multiple_of(2) {
            "openai"
        } else {
            "anthropic"
        }
        .into(),
        operation: "chat".into(),
        status: match i % 5 {
            0 => 500,
            1 => 0,
            _ => 200,
        },
        stream: i % 2 == 1,
        input_tokens: i,
        output_tokens: 2 * i,
        cached_tokens: i % 4,
        // Exact binary fractions, so sums compare exactly.
        cost_usd: (i % 8) as f64 * 0.125,
        latency_ms: 10.5,
        ttft_ms: if i % 2 == 1 { Some(3.25) } else { None },
        error: if i.is_multiple_of(5) {
            Some("upstream 500".into())
        } else {
            None
        },
        api: match i % 7 {
            0 | 3 => Some("sentiment/v1".into()),
            5 => Some("sentiment/v10".into()),
            _ => None,
        },
    }
}

/// The expected aggregate of `recs`, computed in Rust.
fn expect(recs: &[&UsageRecord], bucket_ms: Option<i64>, group: Option<String>) -> UsageRow {
    UsageRow {
        bucket_ms,
        group,
        requests: recs.len() as i64,
        errors: recs
            .iter()
            .filter(|r| r.status >= 400 || r.status == 0)
            .count() as i64,
        input_tokens: recs.iter().map(|r| r.input_tokens as i64).sum(),
        output_tokens: recs.iter().map(|r| r.output_tokens as i64).sum(),
        cached_tokens: recs.iter().map(|r| r.cached_tokens as i64).sum(),
        cost_usd: recs.iter().map(|r| r.cost_usd).sum(),
    }
}

fn group_of(r: &UsageRecord, g: GroupBy) -> Option<String> {
    match g {
        GroupBy::Key => Some(r.key_id.clone()),
        GroupBy::Team => r.team_id.clone(),
        GroupBy::Model => Some(r.model.clone()),
        GroupBy::Provider => Some(r.provider.clone()),
        GroupBy::Api => r.api.clone(),
    }
}

fn matches(r: &UsageRecord, q: &UsageQuery) -> bool {
    r.ts_ms >= q.from_ms
        && r.ts_ms < q.to_ms
        && q.key_id.as_ref().is_none_or(|k| &r.key_id == k)
        && q.team_id
            .as_ref()
            .is_none_or(|t| r.team_id.as_ref() == Some(t))
        && q.model.as_ref().is_none_or(|m| &r.model == m)
        && q.provider.as_ref().is_none_or(|p| &r.provider == p)
        && q.api.as_ref().is_none_or(|a| r.api.as_ref() == Some(a))
}

/// Expected `usage_totals(q)` computed in Rust.
fn expected_totals(recs: &[UsageRecord], q: &UsageQuery) -> Vec<UsageRow> {
    let sel: Vec<&UsageRecord> = recs.iter().filter(|r| matches(r, q)).collect();
    match q.group_by {
        None => vec![expect(&sel, None, None)],
        Some(g) => {
            let mut groups: Vec<Option<String>> = sel.iter().map(|r| group_of(r, g)).collect();
            groups.sort();
            groups.dedup();
            groups
                .into_iter()
                .map(|grp| {
                    let of: Vec<&UsageRecord> = sel
                        .iter()
                        .copied()
                        .filter(|r| group_of(r, g) == grp)
                        .collect();
                    expect(&of, None, grp)
                })
                .collect()
        }
    }
}

const T0: i64 = 1_700_000_000_000;

// ------------------------------------------------------------------ teams

store_test!(team_crud, |store| async move {
    assert!(store.list_teams().await.unwrap().is_empty());
    assert_eq!(store.get_team("research").await.unwrap(), None);

    let created = store.create_team(&team("research")).await.unwrap();
    assert_eq!(created.id, "research");
    assert_eq!(created.description.as_deref(), Some("team research"));
    assert_eq!(created.limits.rpm, Some(60));
    assert_eq!(created.budget.soft_pct, Some(80.0));
    assert_eq!(created.metadata, json!({"owner": "research"}));
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(created.version, store.version().await.unwrap());
    assert_eq!(
        store.get_team("research").await.unwrap().as_ref(),
        Some(&created)
    );

    // Duplicate id.
    let before = store.version().await.unwrap();
    assert!(matches!(
        store.create_team(&team("research")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.version().await.unwrap(),
        before,
        "failed write bumped"
    );

    store.create_team(&team("alpha")).await.unwrap();
    store.create_team(&team("Zeta")).await.unwrap();
    let ids: Vec<String> = store
        .list_teams()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["Zeta", "alpha", "research"], "bytewise order by id");

    // Update: each field, clearing Options with Some(None).
    let updated = store
        .update_team(
            "research",
            &TeamPatch {
                description: Some(None),
                models: Some(None),
                limits: Some(LimitSpec {
                    tpd: Some(1),
                    ..Default::default()
                }),
                budget: Some(BudgetSpec::default()),
                metadata: Some(json!({"a": [1, 2]})),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.description, None);
    assert_eq!(updated.models, None);
    assert_eq!(updated.limits.tpd, Some(1));
    assert_eq!(updated.limits.rpm, None);
    assert_eq!(updated.budget, BudgetSpec::default());
    assert_eq!(updated.metadata, json!({"a": [1, 2]}));
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.version > created.version);
    assert_eq!(
        store.get_team("research").await.unwrap(),
        Some(updated.clone())
    );

    let set = store
        .update_team(
            "research",
            &TeamPatch {
                description: Some(Some("again".into())),
                models: Some(Some(vec!["m".into()])),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.description.as_deref(), Some("again"));
    assert_eq!(set.models, Some(vec!["m".to_string()]));
    assert_eq!(set.limits, updated.limits, "untouched fields stay");

    assert_eq!(
        store
            .update_team("nope", &TeamPatch::default())
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        store
            .update_team(
                "research",
                &TeamPatch {
                    metadata: Some(json!(3)),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::Invalid(_))
    ));

    assert!(store.delete_team("alpha").await.unwrap());
    assert!(!store.delete_team("alpha").await.unwrap());
    assert_eq!(store.get_team("alpha").await.unwrap(), None);
    assert_eq!(store.list_teams().await.unwrap().len(), 2);
});

store_test!(team_delete_with_keys_conflicts, |store| async move {
    store.create_team(&team("ops")).await.unwrap();
    store.create_key(&key("k1", 1, Some("ops"))).await.unwrap();
    let v = store.version().await.unwrap();
    assert!(matches!(
        store.delete_team("ops").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.version().await.unwrap(), v);
    assert!(store.get_team("ops").await.unwrap().is_some());

    // Once its only key is deleted (a tombstone remains), the team can go.
    assert!(store.delete_key("k1").await.unwrap());
    assert!(store.delete_team("ops").await.unwrap());
    let tomb = store.changed_keys(0).await.unwrap();
    assert_eq!(tomb.len(), 1);
    assert!(tomb[0].deleted);
    assert_eq!(
        tomb[0].team_id.as_deref(),
        Some("ops"),
        "a tombstone keeps the team it had, as history"
    );
});

// ------------------------------------------------------------------ keys

store_test!(key_crud, |store| async move {
    store.create_team(&team("t1")).await.unwrap();
    store.create_team(&team("t2")).await.unwrap();

    let k1 = store.create_key(&key("k1", 1, Some("t1"))).await.unwrap();
    assert_eq!(k1.hash, hash(1));
    assert_eq!(k1.team_id.as_deref(), Some("t1"));
    assert!(!k1.deleted && !k1.disabled);
    assert_eq!(k1.rotated_at, None);
    assert_eq!(store.get_key("k1").await.unwrap(), Some(k1.clone()));

    let mut full = key("k2", 2, Some("t2"));
    full.models = Some(vec!["gpt-4o".into()]);
    full.limits.concurrent = Some(4);
    full.budget.daily_usd = Some(1.5);
    full.disabled = true;
    full.expires_at = Some(1_900_000_000);
    full.metadata = json!({"env": "prod"});
    let k2 = store.create_key(&full).await.unwrap();
    assert_eq!(k2.models, full.models);
    assert_eq!(k2.limits.concurrent, Some(4));
    assert_eq!(k2.budget.daily_usd, Some(1.5));
    assert!(k2.disabled);
    assert_eq!(k2.expires_at, Some(1_900_000_000));
    assert_eq!(k2.metadata, json!({"env": "prod"}));
    assert_eq!(store.get_key("k2").await.unwrap(), Some(k2.clone()));

    let k3 = store.create_key(&key("k3", 3, None)).await.unwrap();

    // Errors.
    assert!(matches!(
        store.create_key(&key("k1", 99, None)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_key(&key("k9", 1, None)).await,
        Err(StoreError::Conflict(_))
    ));
    // A team the store does not know (the config file's, say) is the caller's to check.
    let outside = store
        .create_key(&key("k8", 8, Some("from-config")))
        .await
        .unwrap();
    assert_eq!(outside.team_id.as_deref(), Some("from-config"));
    assert!(store.delete_key("k8").await.unwrap());
    let mut bad = key("k9", 9, None);
    bad.hash = "tg-plaintext-secret".into();
    assert!(matches!(
        store.create_key(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.get_key("k9").await.unwrap(), None);

    // Lists: ordered by created_at, id; filtered by team.
    let all: Vec<String> = store
        .list_keys(None)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(all, ["k1", "k2", "k3"]);
    assert_eq!(store.list_keys(Some("t2")).await.unwrap(), vec![k2.clone()]);
    assert!(store.list_keys(Some("ghost")).await.unwrap().is_empty());

    // Update each field.
    let u = store
        .update_key(
            "k2",
            &KeyPatch {
                name: Some("renamed".into()),
                team_id: Some(Some("t1".into())),
                models: Some(Some(vec!["a".into(), "b".into()])),
                limits: Some(LimitSpec {
                    rpm_burst: Some(7),
                    ..Default::default()
                }),
                budget: Some(BudgetSpec {
                    monthly_usd: Some(9.0),
                    ..Default::default()
                }),
                disabled: Some(false),
                expires_at: Some(Some(2_000_000_000)),
                metadata: Some(json!({"x": true})),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.name, "renamed");
    assert_eq!(u.team_id.as_deref(), Some("t1"));
    assert_eq!(u.models, Some(vec!["a".to_string(), "b".to_string()]));
    assert_eq!(u.limits.rpm_burst, Some(7));
    assert_eq!(u.limits.concurrent, None);
    assert_eq!(u.budget.monthly_usd, Some(9.0));
    assert!(!u.disabled);
    assert_eq!(u.expires_at, Some(2_000_000_000));
    assert_eq!(u.metadata, json!({"x": true}));
    assert_eq!(u.hash, k2.hash);
    assert_eq!(u.created_at, k2.created_at);
    assert!(u.version > k2.version);
    assert_eq!(store.get_key("k2").await.unwrap(), Some(u.clone()));

    // Clearing Options with Some(None).
    let c = store
        .update_key(
            "k2",
            &KeyPatch {
                team_id: Some(None),
                models: Some(None),
                expires_at: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.team_id, None);
    assert_eq!(c.models, None);
    assert_eq!(c.expires_at, None);
    assert_eq!(c.name, "renamed", "untouched fields stay");
    assert_eq!(store.get_key("k2").await.unwrap().as_ref(), Some(&c));

    let moved = store
        .update_key(
            "k2",
            &KeyPatch {
                team_id: Some(Some("from-config".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.team_id.as_deref(), Some("from-config"));
    store
        .update_key(
            "k2",
            &KeyPatch {
                team_id: Some(c.team_id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .update_key("nope", &KeyPatch::default())
            .await
            .unwrap(),
        None
    );

    // Rotate.
    let r = store
        .rotate_key("k3", &hash(33), "tg-0033")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.hash, hash(33));
    assert_eq!(r.prefix, "tg-0033");
    assert!(r.rotated_at.is_some());
    assert!(r.version > k3.version);
    assert_eq!(store.get_key("k3").await.unwrap(), Some(r.clone()));
    assert!(matches!(
        store.rotate_key("k3", &hash(1), "x").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.rotate_key("k3", "short", "x").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.rotate_key("nope", &hash(44), "x").await.unwrap(),
        None
    );
    // The old hash is free again.
    store.create_key(&key("k4", 3, None)).await.unwrap();

    // Delete: a tombstone, hidden from get/list, seen by changed_keys.
    let v = store.version().await.unwrap();
    assert!(store.delete_key("k1").await.unwrap());
    assert!(!store.delete_key("k1").await.unwrap());
    assert!(!store.delete_key("nope").await.unwrap());
    assert_eq!(store.get_key("k1").await.unwrap(), None);
    assert!(store
        .list_keys(None)
        .await
        .unwrap()
        .iter()
        .all(|k| k.id != "k1"));
    assert!(store.list_keys(Some("t1")).await.unwrap().is_empty());
    let changed = store.changed_keys(v).await.unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].id, "k1");
    assert!(changed[0].deleted);
    assert_eq!(changed[0].version, v + 1);
    assert_eq!(
        store.update_key("k1", &KeyPatch::default()).await.unwrap(),
        None
    );
    assert_eq!(store.rotate_key("k1", &hash(55), "x").await.unwrap(), None);
    // Deleted ids and hashes stay taken.
    assert!(matches!(
        store.create_key(&key("k1", 77, None)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_key(&key("k8", 1, None)).await,
        Err(StoreError::Conflict(_))
    ));
});

store_test!(versions_and_changed_keys, |store| async move {
    assert_eq!(store.version().await.unwrap(), 0);
    assert!(store.changed_keys(0).await.unwrap().is_empty());

    let mut seen = vec![0];
    let mut step = |v: i64| {
        assert!(v > *seen.last().unwrap(), "version did not increase");
        seen.push(v);
    };

    let t = store.create_team(&team("t")).await.unwrap();
    step(t.version);
    let a = store.create_key(&key("a", 1, Some("t"))).await.unwrap();
    step(a.version);
    let b = store.create_key(&key("b", 2, None)).await.unwrap();
    step(b.version);
    let c = store.create_key(&key("c", 3, None)).await.unwrap();
    step(c.version);
    assert_eq!(store.version().await.unwrap(), c.version);

    let all = store.changed_keys(0).await.unwrap();
    assert_eq!(
        all.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(
        store
            .changed_keys(a.version)
            .await
            .unwrap()
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert!(store.changed_keys(c.version).await.unwrap().is_empty());

    let mark = store.version().await.unwrap();
    let a2 = store
        .update_key(
            "a",
            &KeyPatch {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    step(a2.version);
    let t2 = store
        .update_team("t", &TeamPatch::default())
        .await
        .unwrap()
        .unwrap();
    step(t2.version);
    let b2 = store
        .rotate_key("b", &hash(22), "p")
        .await
        .unwrap()
        .unwrap();
    step(b2.version);
    assert!(store.delete_key("c").await.unwrap());
    let v = store.version().await.unwrap();
    step(v);
    store.create_team(&team("u")).await.unwrap();
    assert!(store.delete_team("u").await.unwrap());
    assert_eq!(store.version().await.unwrap(), v + 2);

    // Exactly the keys changed since `mark`, ordered by version, latest state.
    let changed = store.changed_keys(mark).await.unwrap();
    assert_eq!(
        changed
            .iter()
            .map(|k| (k.id.as_str(), k.version, k.deleted))
            .collect::<Vec<_>>(),
        [
            ("a", a2.version, false),
            ("b", b2.version, false),
            ("c", v, true)
        ]
    );
    assert!(changed[0].disabled);

    // Failed writes do not bump.
    let before = store.version().await.unwrap();
    let _ = store.create_key(&key("a", 9, None)).await.unwrap_err();
    let _ = store.create_team(&team("t")).await.unwrap_err();
    assert_eq!(
        store.update_key("zz", &KeyPatch::default()).await.unwrap(),
        None
    );
    assert!(!store.delete_key("zz").await.unwrap());
    assert_eq!(store.version().await.unwrap(), before);
});

// ------------------------------------------------------------------ usage ledger

store_test!(insert_usage_idempotent, |store| async move {
    assert_eq!(store.insert_usage(&[]).await.unwrap(), 0);
    let batch: Vec<UsageRecord> = (0..50).map(|i| rec(i, T0 + i as i64)).collect();
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 50);
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 0);
    assert_eq!(store.usage_count().await.unwrap(), 50);

    // Overlapping batch: only the new ones; duplicates inside a batch count once.
    let mut more: Vec<UsageRecord> = (40..60).map(|i| rec(i, T0 + i as i64)).collect();
    more.push(rec(59, T0 + 59));
    assert_eq!(store.insert_usage(&more).await.unwrap(), 10);
    assert_eq!(store.usage_count().await.unwrap(), 60);

    // Round trip of every field.
    let q = UsageQuery {
        from_ms: T0,
        to_ms: T0 + 1000,
        ..Default::default()
    };
    let back = store.usage_records(&q, 1000, None).await.unwrap();
    let mut want: Vec<UsageRecord> = (0..60).map(|i| rec(i, T0 + i as i64)).collect();
    want.sort_by(|a, b| (a.ts_ms, &a.request_id).cmp(&(b.ts_ms, &b.request_id)));
    assert_eq!(back, want);
});

store_test!(insert_usage_large_batch, |store| async move {
    let batch: Vec<UsageRecord> = (0..10_000).map(|i| rec(i, T0 + i as i64)).collect();
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 10_000);
    assert_eq!(store.usage_count().await.unwrap(), 10_000);
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 0);
    let mut bigger: Vec<UsageRecord> = (5_000..12_345).map(|i| rec(i, T0 + i as i64)).collect();
    bigger.reverse();
    assert_eq!(store.insert_usage(&bigger).await.unwrap(), 2_345);
    assert_eq!(store.usage_count().await.unwrap(), 12_345);
    let q = UsageQuery {
        from_ms: 0,
        to_ms: i64::MAX,
        ..Default::default()
    };
    let all: Vec<UsageRecord> = (0..12_345).map(|i| rec(i, T0 + i as i64)).collect();
    assert_eq!(
        store.usage_totals(&q).await.unwrap(),
        expected_totals(&all, &q)
    );
});

fn ledger() -> Vec<UsageRecord> {
    // 120 records spread over 2 hours, with a few outside [T0, T0 + 1h).
    (0..120)
        .map(|i| rec(i, T0 - 5 * 60_000 + (i as i64) * 61_000))
        .collect()
}

store_test!(usage_totals_groups_and_filters, |store| async move {
    let recs = ledger();
    store.insert_usage(&recs).await.unwrap();
    let base = UsageQuery {
        from_ms: T0,
        to_ms: T0 + 3_600_000,
        ..Default::default()
    };
    let mut queries = vec![base.clone()];
    for g in [
        GroupBy::Key,
        GroupBy::Team,
        GroupBy::Model,
        GroupBy::Provider,
        GroupBy::Api,
    ] {
        queries.push(UsageQuery {
            group_by: Some(g),
            ..base.clone()
        });
    }
    let filters = [
        UsageQuery {
            key_id: Some("k1".into()),
            ..base.clone()
        },
        UsageQuery {
            team_id: Some("t0".into()),
            ..base.clone()
        },
        UsageQuery {
            model: Some("claude".into()),
            ..base.clone()
        },
        UsageQuery {
            provider: Some("openai".into()),
            ..base.clone()
        },
        UsageQuery {
            key_id: Some("k0".into()),
            model: Some("gpt-4o".into()),
            provider: Some("openai".into()),
            team_id: Some("t0".into()),
            ..base.clone()
        },
        UsageQuery {
            key_id: Some("nobody".into()),
            ..base.clone()
        },
        UsageQuery {
            api: Some("sentiment/v1".into()),
            ..base.clone()
        },
        UsageQuery {
            api: Some("sentiment".into()),
            ..base.clone()
        },
    ];
    for f in filters {
        queries.push(f.clone());
        queries.push(UsageQuery {
            group_by: Some(GroupBy::Team),
            ..f.clone()
        });
        queries.push(UsageQuery {
            group_by: Some(GroupBy::Api),
            ..f.clone()
        });
        queries.push(UsageQuery {
            group_by: Some(GroupBy::Model),
            ..f
        });
    }
    for q in &queries {
        let got = store.usage_totals(q).await.unwrap();
        assert_eq!(got, expected_totals(&recs, q), "query {q:?}");
    }

    // Spot checks of the shapes.
    let by_team = store
        .usage_totals(&UsageQuery {
            group_by: Some(GroupBy::Team),
            ..base.clone()
        })
        .await
        .unwrap();
    let groups: Vec<Option<&str>> = by_team.iter().map(|r| r.group.as_deref()).collect();
    assert_eq!(groups, [None, Some("t0"), Some("t1")]);
    let by_api = store
        .usage_totals(&UsageQuery {
            group_by: Some(GroupBy::Api),
            ..base.clone()
        })
        .await
        .unwrap();
    let groups: Vec<Option<&str>> = by_api.iter().map(|r| r.group.as_deref()).collect();
    assert_eq!(groups, [None, Some("sentiment/v1"), Some("sentiment/v10")]);
    let only_v1 = store
        .usage_totals(&UsageQuery {
            api: Some("sentiment/v1".into()),
            ..base.clone()
        })
        .await
        .unwrap();
    assert_eq!(only_v1[0].requests, by_api[1].requests);
    assert!(only_v1[0].requests > 0);
    let total = store.usage_totals(&base).await.unwrap();
    assert_eq!(total.len(), 1);
    assert_eq!(total[0].group, None);
    assert_eq!(total[0].bucket_ms, None);
    assert!(total[0].requests > 0 && total[0].errors > 0 && total[0].cost_usd > 0.0);
    assert_eq!(
        by_team.iter().map(|r| r.requests).sum::<i64>(),
        total[0].requests
    );

    // Empty range: one row of zeros without group_by, no rows with one.
    let empty = UsageQuery {
        from_ms: 1,
        to_ms: 2,
        ..Default::default()
    };
    assert_eq!(
        store.usage_totals(&empty).await.unwrap(),
        vec![UsageRow {
            bucket_ms: None,
            group: None,
            requests: 0,
            errors: 0,
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cost_usd: 0.0,
        }]
    );
    assert!(store
        .usage_totals(&UsageQuery {
            group_by: Some(GroupBy::Key),
            ..empty
        })
        .await
        .unwrap()
        .is_empty());
});

store_test!(usage_series_buckets, |store| async move {
    let recs = ledger();
    store.insert_usage(&recs).await.unwrap();
    let bucket = 15 * 60_000;
    for group_by in [None, Some(GroupBy::Key), Some(GroupBy::Team)] {
        let q = UsageQuery {
            from_ms: T0 - 10 * 60_000,
            to_ms: T0 + 7_200_000,
            model: if group_by == Some(GroupBy::Key) {
                Some("gpt-4o".into())
            } else {
                None
            },
            group_by,
            ..Default::default()
        };
        let got = store.usage_series(&q, bucket).await.unwrap();
        // Expected, in Rust.
        let sel: Vec<&UsageRecord> = recs.iter().filter(|r| matches(r, &q)).collect();
        let mut keys: Vec<(i64, Option<String>)> = sel
            .iter()
            .map(|r| {
                (
                    r.ts_ms.div_euclid(bucket) * bucket,
                    group_by.and_then(|g| group_of(r, g)),
                )
            })
            .collect();
        keys.sort();
        keys.dedup();
        let want: Vec<UsageRow> = keys
            .into_iter()
            .map(|(b, g)| {
                let of: Vec<&UsageRecord> = sel
                    .iter()
                    .copied()
                    .filter(|r| {
                        r.ts_ms.div_euclid(bucket) * bucket == b
                            && group_by.and_then(|gb| group_of(r, gb)) == g
                    })
                    .collect();
                expect(&of, Some(b), g)
            })
            .collect();
        assert!(want.len() > 8, "the test should span several buckets");
        assert_eq!(got, want, "group_by {group_by:?}");
        assert!(got.iter().all(|r| r.bucket_ms.unwrap() % bucket == 0));
    }

    // Bucket boundaries are exact: ts on a boundary starts a bucket.
    let edge = vec![
        UsageRecord {
            request_id: "edge-a".into(),
            ..rec(1, 3_000_000)
        },
        UsageRecord {
            request_id: "edge-b".into(),
            ..rec(1, 3_599_999)
        },
        UsageRecord {
            request_id: "edge-c".into(),
            ..rec(1, 3_600_000)
        },
    ];
    store.insert_usage(&edge).await.unwrap();
    let q = UsageQuery {
        from_ms: 0,
        to_ms: 10_000_000,
        ..Default::default()
    };
    let got = store.usage_series(&q, 3_600_000).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|r| (r.bucket_ms.unwrap(), r.requests))
            .collect::<Vec<_>>(),
        [(0, 2), (3_600_000, 1)]
    );
    assert!(matches!(
        store.usage_series(&q, 0).await,
        Err(StoreError::Invalid(_))
    ));
});

store_test!(usage_records_paging, |store| async move {
    // Many records share a timestamp, so the request_id tiebreak matters.
    let recs: Vec<UsageRecord> = (0..1_037).map(|i| rec(i, T0 + (i as i64 % 50))).collect();
    store.insert_usage(&recs).await.unwrap();
    for (filter, api, page) in [
        (None, None, 100),
        (Some("k2"), None, 7),
        (None, None, 1_037),
        (None, None, 5_000),
        (None, Some("sentiment/v1"), 50),
    ] {
        let q = UsageQuery {
            from_ms: T0,
            to_ms: T0 + 50,
            key_id: filter.map(str::to_string),
            api: api.map(str::to_string),
            ..Default::default()
        };
        let mut got: Vec<UsageRecord> = Vec::new();
        let mut after = None;
        loop {
            let chunk = store.usage_records(&q, page, after.clone()).await.unwrap();
            assert!(chunk.len() as i64 <= page);
            let Some(last) = chunk.last() else { break };
            after = Some((last.ts_ms, last.request_id.clone()));
            got.extend(chunk);
        }
        let mut want: Vec<UsageRecord> = recs.iter().filter(|r| matches(r, &q)).cloned().collect();
        want.sort_by(|a, b| (a.ts_ms, &a.request_id).cmp(&(b.ts_ms, &b.request_id)));
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want, "every record exactly once, in order");
    }
    let q = UsageQuery {
        from_ms: T0,
        to_ms: T0 + 1,
        ..Default::default()
    };
    assert!(store.usage_records(&q, 0, None).await.unwrap().is_empty());
    assert!(matches!(
        store.usage_records(&q, -1, None).await,
        Err(StoreError::Invalid(_))
    ));
});

store_test!(spend_since_sums, |store| async move {
    let recs = ledger();
    store.insert_usage(&recs).await.unwrap();
    for since in [0, T0, T0 + 1_800_000, T0 + 100_000_000] {
        let spend = store.spend_since(since).await.unwrap();
        let mut by_key = std::collections::HashMap::new();
        let mut by_team = std::collections::HashMap::new();
        for r in recs.iter().filter(|r| r.ts_ms >= since) {
            *by_key.entry(r.key_id.clone()).or_insert(0.0) += r.cost_usd;
            if let Some(t) = &r.team_id {
                *by_team.entry(t.clone()).or_insert(0.0) += r.cost_usd;
            }
        }
        assert_eq!(spend.by_key, by_key, "since {since}");
        assert_eq!(spend.by_team, by_team, "since {since}");
    }
    // Inclusive bound.
    let at = recs[10].ts_ms;
    let spend = store.spend_since(at).await.unwrap();
    let want: f64 = recs
        .iter()
        .filter(|r| r.ts_ms >= at)
        .map(|r| r.cost_usd)
        .sum();
    assert_eq!(spend.by_key.values().sum::<f64>(), want);
});

store_test!(limit_usage_bins_by_key_team_model, |store| async move {
    let mut recs = ledger();
    // A gateway-side refusal (429 before any provider) took nothing.
    let mut refused = rec(1000, T0 + 30 * 61_000);
    refused.status = 429;
    refused.provider = String::new();
    recs.push(refused);
    store.insert_usage(&recs).await.unwrap();
    let now = T0 + 40 * 61_000;
    for (window, bin) in [(600_000, 60_000), (3_600_000, 900_000), (60_000, 1_000)] {
        let got = store.limit_usage(now, window, bin).await.unwrap();
        let mut want: std::collections::HashMap<_, (u64, u64)> = Default::default();
        for r in recs.iter().filter(|r| {
            r.ts_ms > now - window && r.ts_ms <= now && !(r.status == 429 && r.provider.is_empty())
        }) {
            let b = ((now - r.ts_ms) / bin) as usize;
            let e = want
                .entry((r.key_id.clone(), r.team_id.clone(), r.model.clone(), b))
                .or_default();
            e.0 += 1;
            e.1 += r.input_tokens + r.output_tokens;
        }
        let got: std::collections::HashMap<_, (u64, u64)> = got
            .into_iter()
            .map(|u| {
                (
                    (u.key_id, u.team_id, u.model, u.bin),
                    (u.requests, u.tokens),
                )
            })
            .collect();
        assert_eq!(got, want, "window {window} bin {bin}");
    }
});

// ------------------------------------------------------------------ lifecycle

store_test!(reopen_keeps_data, |store, url| async move {
    store.create_team(&team("t")).await.unwrap();
    store.create_key(&key("k", 1, Some("t"))).await.unwrap();
    store.insert_usage(&[rec(1, T0)]).await.unwrap();
    let v = store.version().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    // Re-running the migrations is a no-op; the data is still there.
    let again = Store::open(&url, 2).await.unwrap();
    assert_eq!(again.version().await.unwrap(), v);
    assert_eq!(again.list_teams().await.unwrap().len(), 1);
    assert_eq!(
        again
            .get_key("k")
            .await
            .unwrap()
            .unwrap()
            .team_id
            .as_deref(),
        Some("t")
    );
    assert_eq!(again.usage_count().await.unwrap(), 1);
    // And a third time, while the second is still open.
    let third = Store::open(&url, 2).await.unwrap();
    third.create_team(&team("u")).await.unwrap();
    assert_eq!(again.list_teams().await.unwrap().len(), 2);
});

store_test!(drop_inside_async_context, |store| async move {
    let clone = store.clone();
    store.ping().await.unwrap();
    drop(store);
    clone.ping().await.unwrap();
    // A call in flight when the last handle goes.
    let pending = {
        let c = clone.clone();
        tokio::spawn(async move { c.usage_count().await })
    };
    drop(clone);
    let _ = pending.await.unwrap();
});

store_test!(backend_is_reported, |store| async move {
    let b = store.backend();
    assert!(matches!(b, Backend::Sqlite | Backend::Postgres));
    store.ping().await.unwrap();
});

#[tokio::test]
async fn sqlite_file_is_wal() {
    let (store, guard) = fresh_sqlite().await;
    assert_eq!(store.backend(), Backend::Sqlite);
    store.insert_usage(&[rec(1, T0)]).await.unwrap();
    assert!(guard.path().join("tollgate.db").exists());
    assert!(guard.path().join("tollgate.db-wal").exists(), "WAL journal");
}

#[tokio::test]
async fn sqlite_creates_missing_directory() {
    let (_, guard) = fresh_sqlite().await;
    let url = format!("sqlite://{}", guard.path().join("a/b/c.db").display());
    let store = Store::open(&url, 1).await.unwrap();
    store.create_team(&team("t")).await.unwrap();
    assert!(guard.path().join("a/b/c.db").exists());
}

#[tokio::test]
async fn sqlite_in_memory_keeps_data_across_connections() {
    let store = Store::open("sqlite::memory:", 4).await.unwrap();
    store.create_team(&team("t")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(
            async move { s.list_teams().await.unwrap().len() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_open_races_migrations() {
    let guard = empty_postgres().await;
    let url = guard.url().to_string();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url, 2).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("every concurrent open succeeds"));
    }
    for s in &stores {
        assert_eq!(s.backend(), Backend::Postgres);
        assert_eq!(s.version().await.unwrap(), 0);
    }
    stores[0].create_team(&team("t")).await.unwrap();
    assert_eq!(stores[3].list_teams().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_distinct_versions() {
    for (store, _g1, _g2) in [
        {
            let (s, g) = fresh_sqlite().await;
            (s, Some(g), None)
        },
        {
            let (s, g) = tollgate_store::testing::fresh_postgres().await;
            (s, None, Some(g))
        },
    ] {
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.create_key(&key(&format!("k{i:02}"), i, None))
                    .await
                    .unwrap()
                    .version
            }));
        }
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap());
        }
        versions.sort();
        assert_eq!(
            versions,
            (1..=20).collect::<Vec<i64>>(),
            "{:?}",
            store.backend()
        );
        assert_eq!(store.changed_keys(0).await.unwrap().len(), 20);
    }
}
