//! Prompt-API persistence tests; every `store_test!` runs on SQLite and on PostgreSQL.

use serde_json::json;
use tollgate_store::{
    store_test, ApiEvent, ApiPatch, NewApi, StatusChange, Store, StoreError, Subscription,
};

fn new_api(name: &str, version: &str) -> NewApi {
    NewApi {
        name: name.to_string(),
        version: version.to_string(),
        team_id: "research".to_string(),
        status: "draft".to_string(),
        spec: json!({"model": "gpt-4o", "prompt": format!("{name} {version}")}),
        description: Some(format!("{name} {version}")),
        auto_approve: false,
        deprecated_at: None,
        sunset_at: None,
    }
}

fn change(to: &str, from: &[&str]) -> StatusChange {
    StatusChange {
        to: to.to_string(),
        allowed_from: from.iter().map(|s| s.to_string()).collect(),
        deprecated_at: None,
        sunset_at: None,
    }
}

/// The events of `api` (all of them), as (actor, action, version, detail).
async fn events(
    store: &Store,
    api: &str,
) -> Vec<(String, String, Option<String>, serde_json::Value)> {
    let log = match store.list_api_events(Some(api.to_string()), 1000).await {
        Ok(log) => log,
        Err(e) => panic!("list_api_events: {e}"),
    };
    log.into_iter()
        .map(|e| (e.actor, e.action, e.api_version, e.detail))
        .collect()
}

fn ev(
    actor: &str,
    action: &str,
    version: Option<&str>,
    detail: serde_json::Value,
) -> (String, String, Option<String>, serde_json::Value) {
    (
        actor.to_string(),
        action.to_string(),
        version.map(str::to_string),
        detail,
    )
}

// ------------------------------------------------------------------ APIs

store_test!(api_create_get_list, |store| async move {
    assert!(store.list_apis().await.unwrap().is_empty());
    assert_eq!(store.get_api("sentiment", "v1").await.unwrap(), None);

    let v0 = store.version().await.unwrap();
    let created = store
        .create_api(&new_api("sentiment", "v2"), "alice")
        .await
        .unwrap();
    assert_eq!(created.name, "sentiment");
    assert_eq!(created.version, "v2");
    assert_eq!(created.team_id, "research");
    assert_eq!(created.status, "draft");
    assert_eq!(
        created.spec,
        json!({"model": "gpt-4o", "prompt": "sentiment v2"})
    );
    assert_eq!(created.description.as_deref(), Some("sentiment v2"));
    assert!(!created.auto_approve);
    assert_eq!(created.deprecated_at, None);
    assert_eq!(created.sunset_at, None);
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(created.row_version, v0 + 1);
    assert_eq!(store.version().await.unwrap(), v0 + 1);
    assert_eq!(
        store.get_api("sentiment", "v2").await.unwrap().as_ref(),
        Some(&created)
    );

    // Duplicate (name, version): Conflict, nothing bumped or logged.
    let before = store.version().await.unwrap();
    assert!(matches!(
        store.create_api(&new_api("sentiment", "v2"), "bob").await,
        Err(StoreError::Conflict(m)) if m.contains("sentiment/v2")
    ));
    assert_eq!(store.version().await.unwrap(), before);
    assert_eq!(events(&store, "sentiment").await.len(), 1);

    // Invalid input.
    for bad in [
        new_api("", "v1"),
        new_api("x", ""),
        NewApi {
            status: "live".into(),
            ..new_api("x", "v1")
        },
    ] {
        assert!(matches!(
            store.create_api(&bad, "alice").await,
            Err(StoreError::Invalid(_))
        ));
    }

    for (name, version) in [
        ("sentiment", "v10"),
        ("sentiment", "v1"),
        ("summarize", "v3"),
        ("Zeta", "v1"),
        ("sentiment", "beta"),
    ] {
        store
            .create_api(&new_api(name, version), "alice")
            .await
            .unwrap();
    }
    let order: Vec<(String, String)> = store
        .list_apis()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.version))
        .collect();
    let want: Vec<(String, String)> = [
        ("Zeta", "v1"),
        ("sentiment", "v1"),
        ("sentiment", "v2"),
        ("sentiment", "v10"),
        ("sentiment", "beta"),
        ("summarize", "v3"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(order, want, "by name, then numeric version");

    // Every write was logged, oldest first.
    let log = events(&store, "sentiment").await;
    assert_eq!(
        log,
        [
            ev("alice", "created", Some("v2"), json!({"status": "draft"})),
            ev("alice", "created", Some("v10"), json!({"status": "draft"})),
            ev("alice", "created", Some("v1"), json!({"status": "draft"})),
            ev("alice", "created", Some("beta"), json!({"status": "draft"})),
        ]
    );
});

store_test!(api_update, |store| async move {
    let a = store
        .create_api(&new_api("sentiment", "v1"), "alice")
        .await
        .unwrap();
    let v = store.version().await.unwrap();
    let u = store
        .update_api(
            "sentiment",
            "v1",
            &ApiPatch {
                spec: Some(json!({"prompt": "new"})),
                auto_approve: Some(true),
                ..Default::default()
            },
            "bob",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.spec, json!({"prompt": "new"}));
    assert!(u.auto_approve);
    assert_eq!(u.description, a.description, "untouched fields stay");
    assert_eq!(u.created_at, a.created_at);
    assert_eq!(u.row_version, v + 1);
    assert_eq!(store.version().await.unwrap(), v + 1);
    assert_eq!(store.get_api("sentiment", "v1").await.unwrap(), Some(u));

    let cleared = store
        .update_api(
            "sentiment",
            "v1",
            &ApiPatch {
                description: Some(None),
                ..Default::default()
            },
            "carol",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.description, None);
    assert_eq!(cleared.spec, json!({"prompt": "new"}));

    // Missing: None, nothing logged.
    let v = store.version().await.unwrap();
    assert_eq!(
        store
            .update_api("sentiment", "v9", &ApiPatch::default(), "bob")
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.version().await.unwrap(), v);

    assert_eq!(
        events(&store, "sentiment").await,
        [
            ev("alice", "created", Some("v1"), json!({"status": "draft"})),
            ev(
                "bob",
                "updated",
                Some("v1"),
                json!({"fields": ["spec", "auto_approve"]})
            ),
            ev(
                "carol",
                "updated",
                Some("v1"),
                json!({"fields": ["description"]})
            ),
        ]
    );

    // The patch's serde form: a missing field is None, null is Some(None).
    let p: ApiPatch = serde_json::from_value(json!({"description": null})).unwrap();
    assert_eq!(p.description, Some(None));
    assert_eq!(p.spec, None);
    let p: ApiPatch = serde_json::from_value(json!({})).unwrap();
    assert_eq!(p, ApiPatch::default());
});

store_test!(api_status_transitions, |store| async move {
    store
        .create_api(&new_api("sentiment", "v1"), "alice")
        .await
        .unwrap();
    let v = store.version().await.unwrap();
    let p = store
        .set_api_status("sentiment", "v1", &change("published", &["draft"]), "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.status, "published");
    assert_eq!(p.row_version, v + 1);
    assert_eq!((p.deprecated_at, p.sunset_at), (None, None));

    // Refused: not in allowed_from. Nothing changes, nothing bumped or logged.
    let v = store.version().await.unwrap();
    let err = store
        .set_api_status("sentiment", "v1", &change("published", &["draft"]), "bob")
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict(m) => assert_eq!(
            m,
            "API sentiment/v1 is published; it cannot become published"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.version().await.unwrap(), v);
    assert_eq!(store.get_api("sentiment", "v1").await.unwrap().unwrap(), p);

    // Deprecate with times.
    let d = store
        .set_api_status(
            "sentiment",
            "v1",
            &StatusChange {
                deprecated_at: Some(1_000),
                sunset_at: Some(2_000),
                ..change("deprecated", &["published"])
            },
            "bob",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, "deprecated");
    assert_eq!((d.deprecated_at, d.sunset_at), (Some(1_000), Some(2_000)));
    // Times not given are left as they are.
    let r = store
        .set_api_status(
            "sentiment",
            "v1",
            &change("retired", &["published", "deprecated"]),
            "carol",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, "retired");
    assert_eq!((r.deprecated_at, r.sunset_at), (Some(1_000), Some(2_000)));
    assert_eq!(store.get_api("sentiment", "v1").await.unwrap(), Some(r));

    // Missing API: None.
    assert_eq!(
        store
            .set_api_status("sentiment", "v2", &change("published", &["draft"]), "bob")
            .await
            .unwrap(),
        None
    );
    // Unknown statuses are invalid.
    assert!(matches!(
        store
            .set_api_status("sentiment", "v1", &change("live", &["retired"]), "bob")
            .await,
        Err(StoreError::Invalid(_))
    ));

    assert_eq!(
        events(&store, "sentiment").await,
        [
            ev("alice", "created", Some("v1"), json!({"status": "draft"})),
            ev(
                "alice",
                "status",
                Some("v1"),
                json!({"from": "draft", "to": "published", "sunset_at": null})
            ),
            ev(
                "bob",
                "status",
                Some("v1"),
                json!({"from": "published", "to": "deprecated", "sunset_at": 2000})
            ),
            ev(
                "carol",
                "status",
                Some("v1"),
                json!({"from": "deprecated", "to": "retired", "sunset_at": 2000})
            ),
        ]
    );
});

// ------------------------------------------------------------------ subscriptions

fn is_sub_id(id: &str) -> bool {
    id.len() == 28
        && id.starts_with("sub_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

store_test!(subscription_lifecycle, |store| async move {
    // Request: pending.
    let v = store.version().await.unwrap();
    let s = store
        .request_subscription("sentiment", "growth", "dana", false)
        .await
        .unwrap();
    assert!(is_sub_id(&s.id), "{}", s.id);
    assert_eq!(s.api, "sentiment");
    assert_eq!(s.team_id, "growth");
    assert_eq!(s.status, "pending");
    assert_eq!(s.requested_by, "dana");
    assert_eq!((s.decided_by.as_deref(), s.reason.as_deref()), (None, None));
    assert_eq!(s.row_version, v + 1);
    assert_eq!(
        store.get_subscription(&s.id).await.unwrap(),
        Some(s.clone())
    );

    // Re-request: the same row, unchanged, no bump, no event.
    let v = store.version().await.unwrap();
    let again = store
        .request_subscription("sentiment", "growth", "erin", true)
        .await
        .unwrap();
    assert_eq!(again, s);
    assert_eq!(store.version().await.unwrap(), v);

    // Approve.
    let a = store
        .decide_subscription(&s.id, "approved", &["pending"], "alice", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, "approved");
    assert_eq!(a.decided_by.as_deref(), Some("alice"));
    assert_eq!(a.row_version, v + 1);
    assert_eq!(a.created_at, s.created_at);
    // Approved: re-request is a no-op too.
    assert_eq!(
        store
            .request_subscription("sentiment", "growth", "dana", false)
            .await
            .unwrap(),
        a
    );
    // Refused transition.
    let v = store.version().await.unwrap();
    match store
        .decide_subscription(&s.id, "rejected", &["pending"], "alice", None)
        .await
    {
        Err(StoreError::Conflict(m)) => assert_eq!(
            m,
            format!(
                "subscription {} is approved; it cannot become rejected",
                s.id
            )
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.version().await.unwrap(), v);

    // Revoke, then request again: pending again, reason cleared.
    let r = store
        .decide_subscription(
            &s.id,
            "revoked",
            &["approved"],
            "alice",
            Some("abuse".into()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, "revoked");
    assert_eq!(r.reason.as_deref(), Some("abuse"));
    let back = store
        .request_subscription("sentiment", "growth", "dana", false)
        .await
        .unwrap();
    assert_eq!(back.id, s.id);
    assert_eq!(back.status, "pending");
    assert_eq!((back.decided_by, back.reason), (None, None));
    assert!(back.row_version > r.row_version);

    // Reject.
    let rej = store
        .decide_subscription(
            &s.id,
            "rejected",
            &["pending"],
            "bob",
            Some("not yet".into()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rej.status, "rejected");
    assert_eq!(rej.decided_by.as_deref(), Some("bob"));

    // Missing subscription: None; bad decisions: Invalid.
    assert_eq!(
        store
            .decide_subscription(
                "sub_000000000000000000000000",
                "approved",
                &["pending"],
                "x",
                None
            )
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        store
            .decide_subscription(&s.id, "pending", &["rejected"], "x", None)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.request_subscription("", "growth", "x", false).await,
        Err(StoreError::Invalid(_))
    ));

    let sub = |id: &str| json!(id);
    assert_eq!(
        events(&store, "sentiment").await,
        [
            ev(
                "dana",
                "subscription_requested",
                None,
                json!({"subscription": sub(&s.id), "team": "growth"})
            ),
            ev(
                "alice",
                "subscription_approved",
                None,
                json!({"subscription": sub(&s.id), "team": "growth", "reason": null})
            ),
            ev(
                "alice",
                "subscription_revoked",
                None,
                json!({"subscription": sub(&s.id), "team": "growth", "reason": "abuse"})
            ),
            ev(
                "dana",
                "subscription_requested",
                None,
                json!({"subscription": sub(&s.id), "team": "growth"})
            ),
            ev(
                "bob",
                "subscription_rejected",
                None,
                json!({"subscription": sub(&s.id), "team": "growth", "reason": "not yet"})
            ),
        ]
    );
});

store_test!(subscription_auto_approve, |store| async move {
    let s = store
        .request_subscription("sentiment", "growth", "dana", true)
        .await
        .unwrap();
    assert_eq!(s.status, "approved");
    assert_eq!(s.decided_by.as_deref(), Some("auto-approval"));
    assert_eq!(s.requested_by, "dana");
    // Revoked, then requested again with auto-approval: approved again.
    store
        .decide_subscription(&s.id, "revoked", &["approved"], "alice", Some("x".into()))
        .await
        .unwrap()
        .unwrap();
    let back = store
        .request_subscription("sentiment", "growth", "dana", true)
        .await
        .unwrap();
    assert_eq!(back.status, "approved");
    assert_eq!(back.decided_by.as_deref(), Some("auto-approval"));
    assert_eq!(back.reason, None);
    let actions: Vec<String> = events(&store, "sentiment")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        actions,
        [
            "subscription_requested",
            "subscription_approved",
            "subscription_revoked",
            "subscription_requested",
            "subscription_approved",
        ]
    );
    let first_approval = &events(&store, "sentiment").await[1];
    assert_eq!(first_approval.0, "dana");
    assert_eq!(first_approval.3["subscription"], json!(s.id));
    assert_eq!(first_approval.3["team"], json!("growth"));
});

store_test!(subscription_lists, |store| async move {
    let mut made: Vec<Subscription> = Vec::new();
    for (api, team) in [
        ("sentiment", "growth"),
        ("sentiment", "research"),
        ("summarize", "growth"),
        ("summarize", "ops"),
    ] {
        made.push(
            store
                .request_subscription(api, team, "dana", false)
                .await
                .unwrap(),
        );
    }
    let approved = store
        .decide_subscription(&made[1].id, "approved", &["pending"], "alice", None)
        .await
        .unwrap()
        .unwrap();
    made[1] = approved;

    let ids = |subs: Vec<Subscription>| -> Vec<String> { subs.into_iter().map(|s| s.id).collect() };
    let all = store.list_subscriptions(None, None, None).await.unwrap();
    let mut want = made.clone();
    want.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    assert_eq!(all, want, "ordered by created_at, id");
    assert_eq!(
        ids(store
            .list_subscriptions(Some("sentiment".into()), None, None)
            .await
            .unwrap()),
        ids(want
            .iter()
            .filter(|s| s.api == "sentiment")
            .cloned()
            .collect())
    );
    assert_eq!(
        ids(store
            .list_subscriptions(None, Some("growth".into()), None)
            .await
            .unwrap()),
        ids(want
            .iter()
            .filter(|s| s.team_id == "growth")
            .cloned()
            .collect())
    );
    assert_eq!(
        store
            .list_subscriptions(None, None, Some("approved".into()))
            .await
            .unwrap(),
        vec![made[1].clone()]
    );
    assert_eq!(
        store
            .list_subscriptions(
                Some("summarize".into()),
                Some("ops".into()),
                Some("pending".into())
            )
            .await
            .unwrap(),
        vec![made[3].clone()]
    );
    assert!(store
        .list_subscriptions(Some("summarize".into()), Some("research".into()), None)
        .await
        .unwrap()
        .is_empty());
});

// ------------------------------------------------------------------ audit log

store_test!(api_events_limit_and_filter, |store| async move {
    for i in 1..=5 {
        store
            .create_api(&new_api("sentiment", &format!("v{i}")), "alice")
            .await
            .unwrap();
    }
    store
        .create_api(&new_api("summarize", "v1"), "bob")
        .await
        .unwrap();
    let all: Vec<ApiEvent> = store.list_api_events(None, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    assert!(all.iter().all(|e| e.at_ms > 0));
    assert_eq!(all[5].api, "summarize");
    assert_eq!(all[5].actor, "bob");

    // The newest `limit`, oldest first.
    let last3 = store.list_api_events(None, 3).await.unwrap();
    assert_eq!(last3, all[3..].to_vec());
    let versions: Vec<Option<String>> = store
        .list_api_events(Some("sentiment".into()), 2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.api_version)
        .collect();
    assert_eq!(versions, [Some("v4".to_string()), Some("v5".to_string())]);
    assert!(store.list_api_events(None, 0).await.unwrap().is_empty());
    assert!(matches!(
        store.list_api_events(None, -1).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store
        .list_api_events(Some("nope".into()), 10)
        .await
        .unwrap()
        .is_empty());
});

store_test!(api_data_survives_reopen, |store, url| async move {
    let a = store
        .create_api(&new_api("sentiment", "v1"), "alice")
        .await
        .unwrap();
    let s = store
        .request_subscription("sentiment", "growth", "dana", false)
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let again = Store::open(&url, 2).await.unwrap();
    assert_eq!(again.get_api("sentiment", "v1").await.unwrap(), Some(a));
    assert_eq!(again.get_subscription(&s.id).await.unwrap(), Some(s));
    assert_eq!(again.list_api_events(None, 10).await.unwrap().len(), 2);
});

store_test!(api_created_deprecated_keeps_its_dates, |store| async move {
    let v0 = store.version().await.unwrap();
    let created = store
        .create_api(
            &NewApi {
                status: "deprecated".into(),
                deprecated_at: Some(1_800_000_000_000),
                sunset_at: Some(1_900_000_000_000),
                ..new_api("old", "v1")
            },
            "alice",
        )
        .await
        .unwrap();
    assert_eq!(created.deprecated_at, Some(1_800_000_000_000));
    assert_eq!(created.sunset_at, Some(1_900_000_000_000));
    assert_eq!(
        store.get_api("old", "v1").await.unwrap().as_ref(),
        Some(&created)
    );
    // One write, one event.
    assert_eq!(store.version().await.unwrap(), v0 + 1);
    assert_eq!(
        events(&store, "old").await,
        vec![ev(
            "alice",
            "created",
            Some("v1"),
            json!({"status": "deprecated"})
        )]
    );
});
