//! Prompt APIs on the data plane: the [`Catalog`] built from the config file
//! and the store, and the bodies of `GET /catalog`, `GET /openapi.json`,
//! `GET /apis/{name}/{version}/openapi.json` and `/catalog/{name}/subscription`.
//!
//! A call (`POST /apis/…`) is rendered by `tollgate-apis` into a chat request
//! and then runs the chat path itself (see `Gateway`), so an API is under the
//! same limits, budgets, routing, translation and ledger as
//! `/v1/chat/completions`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::{json, Value};
use tollgate_apis::{
    openapi, Access, Api, ApiSpec, Catalog, Source, State, Status, SubStatus, SubscriptionView,
};
use tollgate_config::Config;
use tollgate_schema::{ApiError, ErrorType};
use tollgate_store::{ApiRecord, Store, StoreError, Subscription};

use crate::policy::{KeyEntry, TeamEntry};
use crate::snapshot::Snapshot;

/// The catalog in force, swapped whole when the store or the file changes.
pub type SharedCatalog = Arc<ArcSwap<Catalog>>;

/// The state of a stored API version.
pub fn api_of_record(r: &ApiRecord) -> Result<Api, String> {
    let mut spec: ApiSpec =
        serde_json::from_value(r.spec.clone()).map_err(|e| format!("stored definition: {e}"))?;
    // The columns are the truth for what identifies and owns a version.
    spec.name.clone_from(&r.name);
    spec.version.clone_from(&r.version);
    spec.team.clone_from(&r.team_id);
    spec.description.clone_from(&r.description);
    let status: Status = r.status.parse()?;
    Api::new(
        spec,
        State {
            status,
            deprecated_at: r.deprecated_at.map(|ms| ms / 1000),
            sunset_at: r.sunset_at.map(|ms| ms / 1000),
            auto_approve: r.auto_approve,
            source: Source::Store,
        },
    )
    .map_err(|e| e.to_string())
}

/// The state of an API of the config file.
pub fn api_of_config(spec: &ApiSpec) -> Result<Api, String> {
    Api::new(
        spec.clone(),
        State {
            status: spec.status.unwrap_or_default(),
            deprecated_at: None,
            sunset_at: None,
            auto_approve: spec.auto_approve.unwrap_or(false),
            source: Source::Config,
        },
    )
    .map_err(|e| e.to_string())
}

/// Every API and subscription of the file and the store. The file's win
/// where both define the same version (the admin API refuses to create one).
pub async fn build_catalog(config: &Config, store: Option<&Store>) -> Result<Catalog, StoreError> {
    let mut apis = Vec::new();
    let mut subs = Vec::new();
    if let Some(store) = store {
        for r in store.list_apis().await? {
            match api_of_record(&r) {
                Ok(a) => apis.push(a),
                Err(e) => log::error!("API {}/{} is not served: {e}", r.name, r.version),
            }
        }
        for s in store.list_subscriptions(None, None, None).await? {
            if let Some(status) = SubStatus::parse(&s.status) {
                subs.push(SubscriptionView {
                    id: s.id,
                    api: s.api,
                    team: s.team_id,
                    status,
                });
            }
        }
    }
    for spec in &config.apis {
        match api_of_config(spec) {
            Ok(a) => apis.push(a),
            Err(e) => log::error!("API {}/{} is not served: {e}", spec.name, spec.version),
        }
        for team in &spec.subscribers {
            subs.push(SubscriptionView {
                id: "config".into(),
                api: spec.name.clone(),
                team: team.clone(),
                status: SubStatus::Approved,
            });
        }
    }
    Ok(Catalog::new(apis, subs))
}

/// `{name}` or `{name}/{version}` of a `/apis/…` path.
pub fn split_path(rest: &str) -> Result<(&str, Option<&str>), ApiError> {
    let mut parts = rest.split('/');
    let name = parts.next().unwrap_or_default();
    let version = parts.next();
    if name.is_empty() || parts.next().is_some() || version == Some("") {
        return Err(ApiError::unknown_path("POST", &format!("/apis/{rest}")));
    }
    Ok((name, version))
}

/// Whether the query string asks for a stream (`stream=true` or `stream=1`).
pub fn wants_stream(query: Option<&str>) -> Result<bool, ApiError> {
    let Some(q) = query else { return Ok(false) };
    let mut stream = false;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "stream" {
            stream = match v {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(ApiError::invalid_request(format!(
                        "`stream` must be true or false, not {other:?}."
                    ))
                    .with_param("stream"))
                }
            };
        }
    }
    Ok(stream)
}

fn api_json(a: &Api, access: Option<Access>, catalog: &Catalog, team: Option<&str>) -> Value {
    let mut v = json!({
        "name": a.spec.name,
        "version": a.spec.version,
        "id": a.id,
        "path": a.path,
        "description": a.spec.description,
        "team": a.spec.team,
        "status": a.state.status.as_str(),
        "model": a.spec.model,
        "output": a.spec.output.mode,
        "variables": a.spec.variables,
        "openapi": format!("{}/openapi.json", a.path),
        "source": a.state.source.as_str(),
        "auto_approve": a.state.auto_approve,
    });
    if let Some(access) = access {
        v["access"] = json!(access);
    }
    if a.state.status == Status::Deprecated {
        v["deprecated_at"] = json!(a.state.deprecated_at);
        v["sunset_at"] = json!(a.state.sunset_at);
    }
    if let Some(s) = team.and_then(|t| catalog.subscription(&a.spec.name, t)) {
        v["subscription"] = json!({"id": s.id, "status": s.status.as_str()});
    }
    v
}

/// An API version for the admin API: definition, state, and the document.
pub fn admin_api_json(a: &Api, catalog: &Catalog) -> Value {
    let mut v = api_json(a, None, catalog, None);
    v["definition"] = serde_json::to_value(&a.spec).unwrap_or(Value::Null);
    v
}

/// `GET /catalog`: what a key sees — listed APIs and its team's drafts, with
/// how it may use each, and the models it may call directly.
pub fn catalog_body(
    catalog: &Catalog,
    snap: &Snapshot,
    config: &Config,
    key: &KeyEntry,
    team: Option<&TeamEntry>,
) -> Result<Bytes, ApiError> {
    let team_id = team.map(|t| t.id.as_str());
    let apis: Vec<Value> = catalog
        .visible_to(team_id)
        .map(|(a, access)| api_json(a, Some(access), catalog, team_id))
        .collect();
    let allows = |m: &str| key.models.allows(m) && team.is_none_or(|t| t.models.allows(m));
    let models: Vec<Value> = snap
        .model_names
        .iter()
        .filter(|m| allows(m))
        .map(|m| {
            json!({
                "id": m,
                "description": config.models.get(m.as_str()).and_then(|e| e.description.clone()),
            })
        })
        .collect();
    to_bytes(&json!({"object": "catalog", "team": team_id, "apis": apis, "models": models}))
}

/// `GET /openapi.json`: one document for every API the key sees.
pub fn catalog_openapi(catalog: &Catalog, team: Option<&str>) -> Result<Bytes, ApiError> {
    let apis: Vec<&Api> = catalog.visible_to(team).map(|(a, _)| a.as_ref()).collect();
    to_bytes(&openapi::document("Tollgate prompt APIs", &apis, true))
}

/// `GET /apis/{name}/{version}/openapi.json`: one version's document. Drafts
/// are documented to their owners only, like they are called.
pub fn api_openapi(catalog: &Catalog, rest: &str, team: Option<&str>) -> Result<Bytes, ApiError> {
    let (name, version) = split_path(rest)?;
    let api = catalog.resolve(name, version)?;
    if api.state.status == Status::Draft && catalog.access(api, team) != Access::Owner {
        return Err(ApiError::new(
            404,
            ErrorType::InvalidRequest,
            format!("There is no published API `{}`.", api.id),
        )
        .with_code("api_not_found"));
    }
    to_bytes(&openapi::document(
        &format!("{} {}", api.spec.name, api.spec.version),
        &[api.as_ref()],
        false,
    ))
}

/// `POST /catalog/{name}/subscription`: the caller's team asks for access.
pub async fn request_subscription(
    store: Option<&Store>,
    catalog: &Catalog,
    name: &str,
    key: &KeyEntry,
    team: Option<&str>,
) -> Result<(u16, Bytes), ApiError> {
    let Some(api) = catalog
        .versions(name)
        .filter(|a| a.state.status.listed())
        .last()
    else {
        return Err(ApiError::new(
            404,
            ErrorType::InvalidRequest,
            format!("There is no published API `{name}` to subscribe to."),
        )
        .with_code("api_not_found"));
    };
    let Some(team) = team else {
        return Err(ApiError::new(
            403,
            ErrorType::Permission,
            "Subscriptions belong to teams, and this key has none.",
        )
        .with_code("no_team"));
    };
    let store = store.ok_or_else(no_store)?;
    let (created, sub) = subscribe(
        store,
        catalog,
        &api.spec.name,
        team,
        &format!("key:{}", key.name),
        |e| ApiError::internal(format!("store: {e}")),
    )
    .await?;
    Ok((
        if created { 201 } else { 200 },
        to_bytes(&serde_json::to_value(&sub).unwrap_or(Value::Null))?,
    ))
}

/// `team` asks for a subscription to API `name`, by itself or through an
/// administrator (`actor`): owners need none (409 `owner`), and a listed
/// version with `auto_approve` approves it at once. Returns whether the
/// subscription was created, or renewed after a rejection or revocation.
pub async fn subscribe(
    store: &Store,
    catalog: &Catalog,
    name: &str,
    team: &str,
    actor: &str,
    store_error: fn(StoreError) -> ApiError,
) -> Result<(bool, Subscription), ApiError> {
    if catalog.versions(name).any(|a| a.spec.team == team) {
        return Err(ApiError::new(
            409,
            ErrorType::InvalidRequest,
            format!("Team `{team}` owns API `{name}`: it needs no subscription."),
        )
        .with_code("owner"));
    }
    let auto = catalog
        .versions(name)
        .any(|a| a.state.status.listed() && a.state.auto_approve);
    let before = catalog.subscription(name, team).map(|s| s.status);
    let sub = store
        .request_subscription(name, team, actor, auto)
        .await
        .map_err(store_error)?;
    let created = before.is_none_or(|s| !matches!(s, SubStatus::Pending | SubStatus::Approved));
    Ok((created, sub))
}

/// `GET /catalog/{name}/subscription`: the caller's team's subscription.
pub fn subscription_body(
    catalog: &Catalog,
    name: &str,
    team: Option<&str>,
) -> Result<Bytes, ApiError> {
    let sub = team.and_then(|t| catalog.subscription(name, t));
    match sub {
        Some(s) => to_bytes(
            &json!({"id": s.id, "api": s.api, "team_id": s.team, "status": s.status.as_str()}),
        ),
        None => Err(ApiError::new(
            404,
            ErrorType::InvalidRequest,
            format!("Your team has no subscription to API `{name}`."),
        )
        .with_code("subscription_not_found")),
    }
}

fn no_store() -> ApiError {
    ApiError::new(
        503,
        ErrorType::Overloaded,
        "Subscriptions need a store (`store.url`); this gateway has none.",
    )
    .with_code("no_store")
}

fn to_bytes(v: &Value) -> Result<Bytes, ApiError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_stream_flags() {
        assert_eq!(split_path("s").unwrap(), ("s", None));
        assert_eq!(split_path("s/v2").unwrap(), ("s", Some("v2")));
        for bad in ["", "s/", "s/v1/x", "/v1"] {
            assert_eq!(split_path(bad).unwrap_err().status, 404, "{bad}");
        }
        assert!(!wants_stream(None).unwrap());
        assert!(wants_stream(Some("stream=true")).unwrap());
        assert!(wants_stream(Some("a=b&stream=1")).unwrap());
        assert!(!wants_stream(Some("stream=false")).unwrap());
        assert_eq!(
            wants_stream(Some("stream=yes"))
                .unwrap_err()
                .param
                .as_deref(),
            Some("stream")
        );
    }
}
