//! `/admin/v1/apis…`, `/admin/v1/subscriptions…`, `/admin/v1/audit` and
//! `/admin/v1/catalog`: prompt APIs, their lifecycle, subscriptions and the
//! record of every change.
//!
//! Who made a change is the `x-tollgate-actor` header (free text, e.g. an
//! e-mail address; the admin token is shared, so the caller says who it is),
//! or `admin` without one.

use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use tollgate_apis::{openapi, Api, ApiSpec, Status, SubStatus};
use tollgate_proxy::apis::{admin_api_json, api_of_record};
use tollgate_proxy::App;
use tollgate_schema::{ApiError, ErrorType};
use tollgate_store::{ApiPatch, NewApi, StatusChange, Store};

use crate::api::{not_found, ok, read_only, store_error, Reply};
use crate::body::{self, object, required, value};

/// A deprecation without a sunset date gets this much notice.
const DEFAULT_NOTICE_SECS: i64 = 90 * 86_400;

fn actor(session: &ServerSession) -> Result<String, ApiError> {
    match session.req_header().headers.get("x-tollgate-actor") {
        None => Ok("admin".to_string()),
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                ApiError::invalid_request("`x-tollgate-actor` must be printable ASCII")
            })?;
            let s = s.trim();
            if s.is_empty() || s.len() > 128 {
                return Err(ApiError::invalid_request(
                    "`x-tollgate-actor` is 1 to 128 characters",
                ));
            }
            Ok(s.to_string())
        }
    }
}

fn no_store() -> ApiError {
    ApiError::new(
        409,
        ErrorType::InvalidRequest,
        "No store is configured (`store.url`): APIs come from the config file only, and subscriptions need a store.",
    )
    .with_code("no_store")
}

fn spec_errors(e: tollgate_apis::SpecErrors) -> ApiError {
    let first = e.0.first().map(|x| x.path.clone());
    let mut err = ApiError::new(
        422,
        ErrorType::InvalidRequest,
        format!("The API definition is invalid: {e}"),
    )
    .with_code("invalid_api");
    if let Some(p) = first {
        err = err.with_param(p);
    }
    err
}

/// Route `/admin/v1/{apis,subscriptions,audit,catalog}…`.
pub async fn route(
    app: &App,
    session: &mut ServerSession,
    parts: &[&str],
    query: &[(String, String)],
) -> Reply {
    let m = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    let allowed = |a: &str| ApiError::method_not_allowed(&m, &path, a);
    let store = || app.store.as_ref().ok_or_else(no_store);
    match (parts, m.as_str()) {
        (["catalog"], "GET") => catalog(app),
        (["catalog"], _) => Err(allowed("GET")),
        (["audit"], "GET") => audit(store()?, query, None).await,
        (["audit"], _) => Err(allowed("GET")),
        (["apis"], "GET") => list(app, None),
        (["apis"], "POST") => {
            let who = actor(session)?;
            let b = body::read(session).await?;
            create(app, store()?, &b, &who).await
        }
        (["apis"], _) => Err(allowed("GET, POST")),
        (["apis", name], "GET") => list(app, Some(name)),
        (["apis", _], _) => Err(allowed("GET")),
        (["apis", name, "events"], "GET") => audit(store()?, query, Some(name)).await,
        (["apis", _, "events"], _) => Err(allowed("GET")),
        (["apis", name, version], "GET") => get(app, name, version),
        (["apis", name, version], "PATCH") => {
            let who = actor(session)?;
            let b = body::read(session).await?;
            update(app, store()?, name, version, &b, &who).await
        }
        (["apis", _, _], _) => Err(allowed("GET, PATCH")),
        (["apis", name, version, "openapi.json"], "GET") => document(app, name, version),
        (["apis", _, _, "openapi.json"], _) => Err(allowed("GET")),
        (["apis", name, version, "status"], "POST") => {
            let who = actor(session)?;
            let b = body::read(session).await?;
            set_status(app, store()?, name, version, &b, &who).await
        }
        (["apis", _, _, "status"], _) => Err(allowed("POST")),
        (["subscriptions"], "GET") => list_subscriptions(store()?, query).await,
        (["subscriptions"], "POST") => {
            let who = actor(session)?;
            let b = body::read(session).await?;
            subscribe(app, store()?, &b, &who).await
        }
        (["subscriptions"], _) => Err(allowed("GET, POST")),
        (["subscriptions", id], "GET") => match store()?.get_subscription(id).await {
            Ok(Some(s)) => ok(200, &json!(s)),
            Ok(None) => Err(not_found("subscription", id)),
            Err(e) => Err(store_error(e)),
        },
        (["subscriptions", _], _) => Err(allowed("GET")),
        (["subscriptions", id, action @ ("approve" | "reject" | "revoke")], "POST") => {
            let who = actor(session)?;
            let b = body::read(session).await?;
            decide(app, store()?, id, action, &b, &who).await
        }
        (["subscriptions", _, "approve" | "reject" | "revoke"], _) => Err(allowed("POST")),
        _ => Err(ApiError::unknown_path(&m, &path)),
    }
}

fn find(app: &App, name: &str, version: &str) -> Result<std::sync::Arc<Api>, ApiError> {
    let catalog = app.catalog.load();
    catalog
        .get(name, version)
        .cloned()
        .ok_or_else(|| not_found("API", &format!("{name}/{version}")))
}

fn catalog(app: &App) -> Reply {
    let catalog = app.catalog.load();
    let config = app.config();
    let apis: Vec<Value> = catalog.all().map(|a| admin_api_json(a, &catalog)).collect();
    let models: Vec<Value> = config
        .models
        .iter()
        .map(|(name, m)| json!({"id": name, "description": m.description}))
        .collect();
    ok(
        200,
        &json!({"object": "catalog", "apis": apis, "models": models}),
    )
}

fn list(app: &App, name: Option<&str>) -> Reply {
    let catalog = app.catalog.load();
    let data: Vec<Value> = match name {
        Some(n) => catalog
            .versions(n)
            .map(|a| admin_api_json(a, &catalog))
            .collect(),
        None => catalog.all().map(|a| admin_api_json(a, &catalog)).collect(),
    };
    if let (Some(n), true) = (name, data.is_empty()) {
        return Err(not_found("API", n));
    }
    ok(200, &json!({"object": "list", "data": data}))
}

fn get(app: &App, name: &str, version: &str) -> Reply {
    let api = find(app, name, version)?;
    ok(200, &admin_api_json(&api, &app.catalog.load()))
}

fn document(app: &App, name: &str, version: &str) -> Reply {
    let api = find(app, name, version)?;
    ok(
        200,
        &openapi::document(
            &format!("{} {}", api.spec.name, api.spec.version),
            &[&api],
            false,
        ),
    )
}

/// `POST /admin/v1/apis`: a new version, stored with its initial status.
async fn create(app: &App, store: &Store, b: &[u8], who: &str) -> Reply {
    let spec: ApiSpec = serde_json::from_slice(b).map_err(|e| {
        ApiError::invalid_request(format!("The API definition does not parse: {e}"))
            .with_code("invalid_api")
    })?;
    if !spec.subscribers.is_empty() {
        return Err(ApiError::invalid_request(
            "`subscribers` is for the config file; here, use POST /admin/v1/subscriptions",
        )
        .with_param("subscribers"));
    }
    if spec.deprecated_at.is_some() {
        return Err(ApiError::invalid_request(
            "`deprecated_at` is recorded when the status changes to deprecated",
        )
        .with_param("deprecated_at"));
    }
    let compiled = spec.compile().map_err(spec_errors)?;
    check_refs(app, &spec)?;
    // Subscriptions and the owner's rights are per API, so all its versions
    // belong to one team.
    if let Some(other) = app
        .catalog
        .load()
        .versions(&spec.name)
        .find(|a| a.spec.team != spec.team)
    {
        return Err(ApiError::new(
            409,
            ErrorType::InvalidRequest,
            format!(
                "API `{}` belongs to team `{}`: its versions cannot belong to team `{}`.",
                spec.name, other.spec.team, spec.team
            ),
        )
        .with_param("team")
        .with_code("owner_mismatch"));
    }
    if app
        .config()
        .apis
        .iter()
        .any(|a| a.name == spec.name && a.version == spec.version)
    {
        return Err(read_only("API", &format!("{}/{}", spec.name, spec.version)));
    }
    let status = spec.status.unwrap_or_default();
    let now_ms = tollgate_proxy::steps::unix_ms();
    let (deprecated_at, sunset_at) = if status == Status::Deprecated {
        (
            Some(now_ms),
            Some(
                compiled
                    .sunset
                    .map_or(now_ms + DEFAULT_NOTICE_SECS * 1000, |s| s * 1000),
            ),
        )
    } else {
        (None, compiled.sunset.map(|s| s * 1000))
    };
    let contract = spec.contract();
    let rec = store
        .create_api(
            &NewApi {
                name: spec.name.clone(),
                version: spec.version.clone(),
                team_id: spec.team.clone(),
                status: status.as_str().to_string(),
                spec: serde_json::to_value(&contract)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
                description: spec.description.clone(),
                auto_approve: spec.auto_approve.unwrap_or(false),
                deprecated_at,
                sunset_at,
            },
            who,
        )
        .await
        .map_err(store_error)?;
    app.apply_store_write().await;
    let api = api_of_record(&rec).map_err(ApiError::internal)?;
    ok(201, &admin_api_json(&api, &app.catalog.load()))
}

/// The model exists and the owning team exists and may use it.
fn check_refs(app: &App, spec: &ApiSpec) -> Result<(), ApiError> {
    if !app.config().models.contains_key(&spec.model) {
        return Err(ApiError::new(
            422,
            ErrorType::InvalidRequest,
            format!("Unknown model `{}`.", spec.model),
        )
        .with_param("model")
        .with_code("invalid_api"));
    }
    let policy = app.policy.load();
    let Some(team) = policy.teams.get(&spec.team) else {
        return Err(ApiError::new(
            422,
            ErrorType::InvalidRequest,
            format!("Unknown team `{}`.", spec.team),
        )
        .with_param("team")
        .with_code("invalid_api"));
    };
    if !team.models.allows(&spec.model) {
        return Err(ApiError::new(
            422,
            ErrorType::InvalidRequest,
            format!("Team `{}` may not use model `{}`.", spec.team, spec.model),
        )
        .with_param("model")
        .with_code("invalid_api"));
    }
    Ok(())
}

const PATCH_FIELDS: &[&str] = &["description", "auto_approve", "definition"];

/// `PATCH /admin/v1/apis/{name}/{version}`: description and auto-approval at
/// any time; the definition only while a draft (a published version is a
/// contract: change it in a new version).
async fn update(app: &App, store: &Store, name: &str, version: &str, b: &[u8], who: &str) -> Reply {
    let current = find(app, name, version)?;
    if current.state.source == tollgate_apis::Source::Config {
        return Err(read_only("API", &current.id));
    }
    let map = object(b, PATCH_FIELDS)?;
    let mut patch = ApiPatch {
        spec: None,
        description: body::field(&map, "description")?,
        auto_approve: value(&map, "auto_approve")?,
    };
    if let Some(def) = map.get("definition") {
        if current.state.status != Status::Draft {
            return Err(ApiError::new(
                409,
                ErrorType::InvalidRequest,
                format!(
                    "API `{}` is {}: its definition is a published contract. Create a new version instead.",
                    current.id, current.state.status
                ),
            )
            .with_param("definition")
            .with_code("immutable"));
        }
        let spec: ApiSpec = serde_json::from_value(def.clone()).map_err(|e| {
            ApiError::invalid_request(format!("`definition` does not parse: {e}"))
                .with_param("definition")
        })?;
        if spec.name != name || spec.version != version || spec.team != current.spec.team {
            return Err(ApiError::invalid_request(
                "`definition` keeps the API's name, version and team",
            )
            .with_param("definition"));
        }
        if spec.status.is_some() || !spec.subscribers.is_empty() || spec.deprecated_at.is_some() {
            return Err(ApiError::invalid_request(
                "`definition` holds the contract only: change status with POST …/status",
            )
            .with_param("definition"));
        }
        spec.compile().map_err(spec_errors)?;
        check_refs(app, &spec)?;
        if patch.description.is_none() {
            patch.description = Some(spec.description.clone());
        }
        if patch.auto_approve.is_none() {
            patch.auto_approve = spec.auto_approve;
        }
        patch.spec = Some(
            serde_json::to_value(spec.contract()).map_err(|e| ApiError::internal(e.to_string()))?,
        );
    }
    let rec = store
        .update_api(name, version, &patch, who)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("API", &format!("{name}/{version}")))?;
    app.apply_store_write().await;
    let api = api_of_record(&rec).map_err(ApiError::internal)?;
    ok(200, &admin_api_json(&api, &app.catalog.load()))
}

/// `POST /admin/v1/apis/{name}/{version}/status`: `{"status", "sunset"?}`.
async fn set_status(
    app: &App,
    store: &Store,
    name: &str,
    version: &str,
    b: &[u8],
    who: &str,
) -> Reply {
    let current = find(app, name, version)?;
    if current.state.source == tollgate_apis::Source::Config {
        return Err(read_only("API", &current.id));
    }
    let map = object(b, &["status", "sunset"])?;
    let to: String = required(&map, "status")?;
    let to: Status = to
        .parse()
        .map_err(|e: String| ApiError::invalid_request(e).with_param("status"))?;
    let sunset: Option<String> = value(&map, "sunset")?;
    if sunset.is_some() && to != Status::Deprecated {
        return Err(
            ApiError::invalid_request("`sunset` applies when deprecating").with_param("sunset"),
        );
    }
    let now_ms = tollgate_proxy::steps::unix_ms();
    let (deprecated_at, sunset_at) = if to == Status::Deprecated {
        let sunset_ms = match sunset {
            Some(s) => {
                let t = tollgate_apis::parse_date(&s)
                    .map_err(|e| ApiError::invalid_request(e).with_param("sunset"))?;
                t * 1000
            }
            None => now_ms + DEFAULT_NOTICE_SECS * 1000,
        };
        if sunset_ms <= now_ms {
            return Err(
                ApiError::invalid_request("`sunset` must be in the future").with_param("sunset")
            );
        }
        (Some(now_ms), Some(sunset_ms))
    } else {
        (None, None)
    };
    let allowed_from = Status::allowed_from(to)
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let rec = store
        .set_api_status(
            name,
            version,
            &StatusChange {
                to: to.as_str().to_string(),
                allowed_from,
                deprecated_at,
                sunset_at,
            },
            who,
        )
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("API", &format!("{name}/{version}")))?;
    app.apply_store_write().await;
    let api = api_of_record(&rec).map_err(ApiError::internal)?;
    ok(200, &admin_api_json(&api, &app.catalog.load()))
}

async fn audit(store: &Store, query: &[(String, String)], api: Option<&str>) -> Reply {
    let mut limit = 100i64;
    let mut filter = api.map(str::to_string);
    for (k, v) in query {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_request("`limit` is 1 to 10000").with_param("limit")
                    })?
            }
            "api" if api.is_none() => filter = Some(v.clone()),
            other => {
                return Err(
                    ApiError::invalid_request(format!("unknown query parameter `{other}`"))
                        .with_param(other.to_string()),
                )
            }
        }
    }
    let events = store
        .list_api_events(filter, limit)
        .await
        .map_err(store_error)?;
    ok(200, &json!({"object": "list", "data": events}))
}

async fn list_subscriptions(store: &Store, query: &[(String, String)]) -> Reply {
    let (mut api, mut team, mut status) = (None, None, None);
    for (k, v) in query {
        match k.as_str() {
            "api" => api = Some(v.clone()),
            "team_id" => team = Some(v.clone()),
            "status" => {
                if SubStatus::parse(v).is_none() {
                    return Err(ApiError::invalid_request(
                        "`status` is pending, approved, rejected or revoked",
                    )
                    .with_param("status"));
                }
                status = Some(v.clone())
            }
            other => {
                return Err(
                    ApiError::invalid_request(format!("unknown query parameter `{other}`"))
                        .with_param(other.to_string()),
                )
            }
        }
    }
    let subs = store
        .list_subscriptions(api, team, status)
        .await
        .map_err(store_error)?;
    ok(200, &json!({"object": "list", "data": subs}))
}

/// `POST /admin/v1/subscriptions`: `{"api", "team_id"}`, on a team's behalf.
/// Auto-approval applies as it does for a team's own request.
async fn subscribe(app: &App, store: &Store, b: &[u8], who: &str) -> Reply {
    let map = object(b, &["api", "team_id"])?;
    let api: String = required(&map, "api")?;
    let team: String = required(&map, "team_id")?;
    let catalog = app.catalog.load_full();
    if catalog.versions(&api).next().is_none() {
        return Err(not_found("API", &api).with_param("api"));
    }
    if !app.policy.load().teams.contains_key(&team) {
        return Err(not_found("team", &team).with_param("team_id"));
    }
    let (created, sub) =
        tollgate_proxy::apis::subscribe(store, &catalog, &api, &team, who, store_error).await?;
    app.apply_store_write().await;
    ok(if created { 201 } else { 200 }, &json!(sub))
}

/// `POST /admin/v1/subscriptions/{id}/{approve,reject,revoke}`: `{"reason"?}`.
async fn decide(app: &App, store: &Store, id: &str, action: &str, b: &[u8], who: &str) -> Reply {
    let map = object(b, &["reason"])?;
    let reason: Option<String> = value(&map, "reason")?;
    let to = match action {
        "approve" => SubStatus::Approved,
        "reject" => SubStatus::Rejected,
        _ => SubStatus::Revoked,
    };
    let from: Vec<&str> = SubStatus::allowed_from(to)
        .iter()
        .map(|s| s.as_str())
        .collect();
    let sub = store
        .decide_subscription(id, to.as_str(), &from, who, reason)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("subscription", id))?;
    app.apply_store_write().await;
    ok(200, &json!(sub))
}
