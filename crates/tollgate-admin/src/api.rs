//! `/admin/v1/…`: teams, keys and usage.

use std::collections::HashSet;
use std::fmt::Write as _;

use http::Response;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Map, Value};
use tollgate_auth::KeyHash;
use tollgate_limits::{period_starts, BudgetStatus};
use tollgate_proxy::policy::{config_key_id, Source};
use tollgate_proxy::{App, ReloadError};
use tollgate_schema::{ApiError, ErrorType};
use tollgate_store::{
    BudgetSpec, GroupBy, KeyPatch, KeyRecord, LimitSpec, NewKey, NewTeam, StoreError, Team,
    TeamPatch, UsageQuery, UsageRecord,
};

use crate::body::{self, field, object, required, value};
use crate::{error, reply};

/// The OpenAPI 3.1 description of the admin API.
pub const OPENAPI: &str = include_str!("../../../docs/admin-api.openapi.json");

pub(crate) type Reply = Result<Response<Vec<u8>>, ApiError>;

pub(crate) fn ok(status: u16, v: &Value) -> Reply {
    Ok(reply(
        status,
        "application/json",
        serde_json::to_vec(v).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

/// `POST /admin/v1/reload`: the same as SIGHUP, but the caller sees the outcome.
async fn reload(app: &App) -> Reply {
    match app.reload().await {
        Ok(r) => ok(
            200,
            &json!({"status": "reloaded", "needs_upgrade": r.needs_upgrade}),
        ),
        Err(ReloadError::Invalid(errs)) => {
            let errors: Vec<Value> = errs
                .0
                .iter()
                .map(|e| json!({"path": e.path, "message": e.message}))
                .collect();
            ok(
                422,
                &json!({"error": {
                    "message": format!("The config file is invalid ({} error(s)); the running config stays in force.", errors.len()),
                    "type": "invalid_request_error",
                    "param": null,
                    "code": "invalid_config",
                    "errors": errors,
                }}),
            )
        }
        Err(e @ ReloadError::NoFile) => {
            Err(ApiError::new(409, ErrorType::InvalidRequest, e.to_string()).with_code("no_config_file"))
        }
        Err(e @ ReloadError::Apply(_)) => Err(ApiError::new(
            503,
            ErrorType::Api,
            format!("The config is valid but could not be applied; the running config stays in force: {e}"),
        )
        .with_code("reload_failed")),
    }
}

pub(crate) fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(404, ErrorType::InvalidRequest, format!("No {what} `{id}`."))
        .with_code("not_found")
}

pub(crate) fn read_only(what: &str, id: &str) -> ApiError {
    ApiError::new(
        409,
        ErrorType::InvalidRequest,
        format!("The {what} `{id}` is defined in the config file and is read-only here; change the file instead."),
    )
    .with_code("read_only")
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => {
            ApiError::new(404, ErrorType::InvalidRequest, m).with_code("not_found")
        }
        StoreError::Conflict(m) => {
            ApiError::new(409, ErrorType::InvalidRequest, m).with_code("conflict")
        }
        StoreError::Invalid(m) => ApiError::invalid_request(m),
        e => {
            log::error!("admin API: store failed: {e}");
            ApiError::new(503, ErrorType::Api, "The store is unavailable; try again.")
                .with_code("store_unavailable")
        }
    }
}

/// Route an admin API request.
pub async fn handle(app: &App, session: &mut ServerSession) -> Response<Vec<u8>> {
    match route(app, session).await {
        Ok(r) => r,
        Err(e) => error(&e),
    }
}

fn authorize(app: &App, session: &ServerSession) -> Result<(), ApiError> {
    let Some(expected) = app.config().admin.token_hash else {
        return Err(ApiError::new(
            403,
            ErrorType::Permission,
            "The admin API is disabled: set `admin.token` or `admin.token_hash` in the config.",
        )
        .with_code("admin_disabled"));
    };
    let h = &session.req_header().headers;
    let presented = tollgate_auth::presented_key(
        h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
        None,
    )
    .ok_or_else(|| {
        ApiError::unauthorized("Send the admin token as `Authorization: Bearer …`.")
            .with_code("missing_admin_token")
    })?;
    if !KeyHash::of(presented).ct_eq(&expected) {
        return Err(
            ApiError::unauthorized("Incorrect admin token.").with_code("invalid_admin_token")
        );
    }
    Ok(())
}

async fn route(app: &App, session: &mut ServerSession) -> Reply {
    let method = session.req_header().method.clone();
    let path = session.req_header().uri.path().to_string();
    let query = body::query(session.req_header().uri.query());
    if (method.as_str(), path.as_str()) == ("GET", "/admin/v1/openapi.json") {
        return Ok(reply(200, "application/json", OPENAPI.as_bytes().to_vec()));
    }
    authorize(app, session)?;
    let Some(rest) = path.strip_prefix("/admin/v1/") else {
        return Err(ApiError::unknown_path(method.as_str(), &path));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let m = method.as_str();
    let store = || {
        app.store.as_ref().ok_or_else(|| {
            ApiError::new(
                409,
                ErrorType::InvalidRequest,
                "No store is configured (`store.url`): keys and teams come from the config file only.",
            )
            .with_code("no_store")
        })
    };
    let allowed = |a: &str| ApiError::method_not_allowed(m, &path, a);
    match parts.as_slice() {
        ["reload"] => match m {
            "POST" => reload(app).await,
            _ => Err(allowed("POST")),
        },
        ["teams", id] if app.config().teams.contains_key(*id) && m != "GET" => {
            Err(read_only("team", id))
        }
        ["teams"] => match m {
            "GET" => list_teams(app).await,
            "POST" => {
                let b = body::read(session).await?;
                create_team(app, store()?, &b).await
            }
            _ => Err(allowed("GET, POST")),
        },
        ["teams", id] => match m {
            "GET" => get_team(app, id).await,
            "PATCH" => {
                let b = body::read(session).await?;
                update_team(app, store()?, id, &b).await
            }
            "DELETE" => delete_team(app, store()?, id).await,
            _ => Err(allowed("GET, PATCH, DELETE")),
        },
        ["keys"] => match m {
            "GET" => list_keys(app, &query).await,
            "POST" => {
                let b = body::read(session).await?;
                create_key(app, store()?, &b).await
            }
            _ => Err(allowed("GET, POST")),
        },
        ["keys", id] if id.starts_with("config:") && m != "GET" => Err(read_only("key", id)),
        ["keys", id, _] if id.starts_with("config:") => Err(read_only("key", id)),
        ["keys", id] => match m {
            "GET" => get_key(app, id).await,
            "PATCH" => {
                let b = body::read(session).await?;
                update_key(app, store()?, id, &b).await
            }
            "DELETE" => delete_key(app, store()?, id).await,
            _ => Err(allowed("GET, PATCH, DELETE")),
        },
        ["keys", id, action @ ("disable" | "enable" | "rotate")] => {
            if m != "POST" {
                return Err(allowed("POST"));
            }
            let store = store()?;
            if *action == "rotate" {
                rotate_key(app, store, id).await
            } else {
                let patch = KeyPatch {
                    disabled: Some(*action == "disable"),
                    ..KeyPatch::default()
                };
                let r = store
                    .update_key(id, &patch)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| not_found("key", id))?;
                app.apply_store_write().await;
                ok(200, &key_json(app, &r))
            }
        }
        ["targets"] if m == "GET" => targets(app),
        ["targets"] => Err(allowed("GET")),
        ["usage"] if m == "GET" => usage(store()?, &query, false).await,
        ["usage", "series"] if m == "GET" => usage(store()?, &query, true).await,
        ["usage", "export.csv"] if m == "GET" => export_csv(store()?, &query).await,
        ["usage"] | ["usage", "series" | "export.csv"] => Err(allowed("GET")),
        ["apis", ..] | ["subscriptions", ..] | ["audit"] | ["catalog"] => {
            crate::apis::route(app, session, &parts, &query).await
        }
        _ => Err(ApiError::unknown_path(m, &path)),
    }
}

// ---------------------------------------------------------------- validation

fn check_limits(l: &LimitSpec) -> Result<(), ApiError> {
    for (name, v) in [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("tpd", l.tpd),
        ("concurrent", l.concurrent),
        ("rpm_burst", l.rpm_burst),
        ("tpm_burst", l.tpm_burst),
    ] {
        if v == Some(0) {
            return Err(ApiError::invalid_request(format!(
                "`limits.{name}` must be at least 1 (omit it for no limit)"
            ))
            .with_param(format!("limits.{name}")));
        }
    }
    if let Some(v) = &l.on_failure {
        if tollgate_config::OnFailure::parse(v).is_none() {
            return Err(ApiError::invalid_request(format!(
                "`limits.on_failure` must be `fail_open` or `fail_closed`, not `{v}`"
            ))
            .with_param("limits.on_failure"));
        }
    }
    if l.rpm_burst.is_some() && l.rpm.is_none() || l.tpm_burst.is_some() && l.tpm.is_none() {
        return Err(ApiError::invalid_request(
            "a burst needs its limit: `rpm_burst` needs `rpm`, `tpm_burst` needs `tpm`",
        ));
    }
    Ok(())
}

fn check_budget(b: &BudgetSpec) -> Result<(), ApiError> {
    for (name, v) in [("daily_usd", b.daily_usd), ("monthly_usd", b.monthly_usd)] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(ApiError::invalid_request(format!(
                "`budget.{name}` must be a non-negative number"
            ))
            .with_param(format!("budget.{name}")));
        }
    }
    if b.soft_pct.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
        return Err(
            ApiError::invalid_request("`budget.soft_pct` must be between 0 and 100")
                .with_param("budget.soft_pct"),
        );
    }
    Ok(())
}

fn check_models(app: &App, models: &Option<Vec<String>>) -> Result<(), ApiError> {
    let snap = app.snapshot.load();
    for m in models.iter().flatten() {
        if m != "*" && !m.ends_with('*') && !snap.models.contains_key(m) {
            return Err(
                ApiError::invalid_request(format!("unknown model `{m}`")).with_param("models")
            );
        }
    }
    Ok(())
}

fn check_metadata(v: &Value) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(
            ApiError::invalid_request("`metadata` must be a JSON object").with_param("metadata"),
        );
    }
    Ok(())
}

/// The policy fields teams and keys share, parsed and checked, each `None`
/// when absent (`models: Some(None)` is an explicit `null`: every model).
struct PolicyFields {
    models: Option<Option<Vec<String>>>,
    limits: Option<LimitSpec>,
    budget: Option<BudgetSpec>,
    metadata: Option<Value>,
}

impl PolicyFields {
    fn parse(app: &App, map: &Map<String, Value>) -> Result<PolicyFields, ApiError> {
        let models = field::<Vec<String>>(map, "models")?;
        if let Some(m) = &models {
            check_models(app, m)?;
        }
        let limits = value::<LimitSpec>(map, "limits")?;
        if let Some(l) = &limits {
            check_limits(l)?;
        }
        let budget = value::<BudgetSpec>(map, "budget")?;
        if let Some(b) = &budget {
            check_budget(b)?;
        }
        let metadata = value::<Value>(map, "metadata")?;
        if let Some(m) = &metadata {
            check_metadata(m)?;
        }
        Ok(PolicyFields {
            models,
            limits,
            budget,
            metadata,
        })
    }
}

async fn check_team_exists(app: &App, id: &str) -> Result<(), ApiError> {
    if app.config().teams.contains_key(id) {
        return Ok(());
    }
    let store = app.store.as_ref().ok_or_else(|| not_found("team", id))?;
    match store.get_team(id).await.map_err(store_error)? {
        Some(_) => Ok(()),
        None => Err(not_found("team", id).with_param("team_id")),
    }
}

/// Unix seconds, from a number or an RFC 3339 string.
fn expiry(map: &Map<String, Value>) -> Result<Option<Option<i64>>, ApiError> {
    match map.get("expires_at") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => n.as_i64().map(|v| Some(Some(v))).ok_or_else(|| {
            ApiError::invalid_request("`expires_at` must be unix seconds").with_param("expires_at")
        }),
        Some(Value::String(s)) => body::time_ms("expires_at", s).map(|ms| Some(Some(ms / 1000))),
        Some(_) => Err(ApiError::invalid_request(
            "`expires_at` must be unix seconds or an RFC 3339 time",
        )
        .with_param("expires_at")),
    }
}

// ---------------------------------------------------------------- teams

const TEAM_FIELDS: &[&str] = &[
    "id",
    "description",
    "models",
    "limits",
    "budget",
    "metadata",
];

fn spend_json(s: Option<BudgetStatus>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "daily_usd": s.day_spent,
            "monthly_usd": s.month_spent,
            "in_flight_usd": s.reserved,
            "daily_remaining_usd": s.day_remaining(),
            "monthly_remaining_usd": s.month_remaining(),
            "soft_limit_reached": s.soft_reached(),
            "exhausted": s.exhausted(),
        }),
    }
}

fn spend_of(app: &App, scope: &str) -> Value {
    let now = tollgate_proxy::steps::unix_now();
    spend_json(app.registry.existing_budget(scope).map(|b| b.status(now)))
}

fn store_team_json(app: &App, t: &Team) -> Value {
    json!({
        "object": "team",
        "id": t.id,
        "source": Source::Store.as_str(),
        "description": t.description,
        "models": t.models,
        "limits": t.limits,
        "budget": t.budget,
        "metadata": t.metadata,
        "created_at": t.created_at / 1000,
        "updated_at": t.updated_at / 1000,
        "spend": spend_of(app, &format!("team:{}", t.id)),
    })
}

fn config_team_json(app: &App, t: &tollgate_config::Team) -> Value {
    let models = match &t.models {
        tollgate_config::ModelAccess::All => Value::Null,
        tollgate_config::ModelAccess::Only(l) => json!(l),
    };
    json!({
        "object": "team",
        "id": t.id,
        "source": Source::Config.as_str(),
        "description": t.description,
        "models": models,
        "limits": limit_spec(&t.limits),
        "budget": budget_spec(&t.budget),
        "metadata": {},
        "created_at": null,
        "updated_at": null,
        "spend": spend_of(app, &format!("team:{}", t.id)),
    })
}

fn limit_spec(l: &tollgate_config::Limits) -> LimitSpec {
    LimitSpec {
        rpm: l.rpm,
        tpm: l.tpm,
        tpd: l.tpd,
        concurrent: l.concurrent,
        rpm_burst: l.rpm_burst,
        tpm_burst: l.tpm_burst,
        on_failure: l.on_failure.map(|p| p.as_str().to_string()),
    }
}

fn budget_spec(b: &tollgate_config::Budget) -> BudgetSpec {
    BudgetSpec {
        daily_usd: b.daily_usd,
        monthly_usd: b.monthly_usd,
        soft_pct: b.soft_pct,
    }
}

async fn list_teams(app: &App) -> Reply {
    let mut data: Vec<Value> = app
        .config()
        .teams
        .values()
        .map(|t| config_team_json(app, t))
        .collect();
    if let Some(store) = &app.store {
        for t in store.list_teams().await.map_err(store_error)? {
            if !app.config().teams.contains_key(&t.id) {
                data.push(store_team_json(app, &t));
            }
        }
    }
    ok(200, &json!({"object": "list", "data": data}))
}

async fn get_team(app: &App, id: &str) -> Reply {
    if let Some(t) = app.config().teams.get(id) {
        return ok(200, &config_team_json(app, t));
    }
    let store = app.store.as_ref().ok_or_else(|| not_found("team", id))?;
    let t = store
        .get_team(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("team", id))?;
    ok(200, &store_team_json(app, &t))
}

async fn create_team(app: &App, store: &tollgate_store::Store, b: &[u8]) -> Reply {
    let map = object(b, TEAM_FIELDS)?;
    let id: String = required(&map, "id")?;
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
    {
        return Err(
            ApiError::invalid_request("`id` is 1 to 64 letters, digits, `-`, `_` and `.`")
                .with_param("id"),
        );
    }
    if app.config().teams.contains_key(&id) {
        return Err(read_only("team", &id));
    }
    let f = PolicyFields::parse(app, &map)?;
    let t = store
        .create_team(&NewTeam {
            id,
            description: field::<String>(&map, "description")?.flatten(),
            models: f.models.flatten(),
            limits: f.limits.unwrap_or_default(),
            budget: f.budget.unwrap_or_default(),
            metadata: f.metadata.unwrap_or_else(|| json!({})),
        })
        .await
        .map_err(store_error)?;
    app.apply_store_write().await;
    ok(201, &store_team_json(app, &t))
}

async fn update_team(app: &App, store: &tollgate_store::Store, id: &str, b: &[u8]) -> Reply {
    let map = object(b, &TEAM_FIELDS[1..])?;
    let f = PolicyFields::parse(app, &map)?;
    let t = store
        .update_team(
            id,
            &TeamPatch {
                description: field::<String>(&map, "description")?,
                models: f.models,
                limits: f.limits,
                budget: f.budget,
                metadata: f.metadata,
            },
        )
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("team", id))?;
    app.apply_store_write().await;
    ok(200, &store_team_json(app, &t))
}

async fn delete_team(app: &App, store: &tollgate_store::Store, id: &str) -> Reply {
    if !store.delete_team(id).await.map_err(store_error)? {
        return Err(not_found("team", id));
    }
    app.apply_store_write().await;
    ok(200, &json!({"object": "team", "id": id, "deleted": true}))
}

// ---------------------------------------------------------------- keys

const KEY_FIELDS: &[&str] = &[
    "name",
    "team_id",
    "models",
    "limits",
    "budget",
    "expires_at",
    "metadata",
    "disabled",
];

fn key_json(app: &App, k: &KeyRecord) -> Value {
    json!({
        "object": "api_key",
        "id": k.id,
        "source": Source::Store.as_str(),
        "name": k.name,
        "prefix": k.prefix,
        "team_id": k.team_id,
        "models": k.models,
        "limits": k.limits,
        "budget": k.budget,
        "disabled": k.disabled,
        "expires_at": k.expires_at,
        "metadata": k.metadata,
        "created_at": k.created_at / 1000,
        "updated_at": k.updated_at / 1000,
        "rotated_at": k.rotated_at.map(|t| t / 1000),
        "spend": spend_of(app, &format!("key:{}", k.id)),
    })
}

fn config_keys_json(app: &App, team: Option<&str>) -> Vec<Value> {
    app.config()
        .keys
        .iter()
        .filter(|k| team.is_none_or(|t| k.team.as_deref() == Some(t)))
        .map(|k| {
            let id = config_key_id(&k.name);
            let models = match &k.models {
                tollgate_config::ModelAccess::All => Value::Null,
                tollgate_config::ModelAccess::Only(l) => json!(l),
            };
            json!({
                "object": "api_key",
                "id": id,
                "source": Source::Config.as_str(),
                "name": k.name,
                "prefix": null,
                "team_id": k.team,
                "models": models,
                "limits": limit_spec(&k.limits),
                "budget": budget_spec(&k.budget),
                "disabled": k.disabled,
                "expires_at": k.expires_at,
                "metadata": {},
                "created_at": null,
                "updated_at": null,
                "rotated_at": null,
                "spend": spend_of(app, &format!("key:{id}")),
            })
        })
        .collect()
}

async fn list_keys(app: &App, query: &[(String, String)]) -> Reply {
    let mut team = None;
    for (k, v) in query {
        match k.as_str() {
            "team_id" if team.is_none() => team = Some(v.as_str()),
            "team_id" => {
                return Err(
                    ApiError::invalid_request("`team_id` is given twice").with_param("team_id")
                )
            }
            other => {
                return Err(
                    ApiError::invalid_request(format!("unknown query parameter `{other}`"))
                        .with_param(other.to_string()),
                )
            }
        }
    }
    let mut data = config_keys_json(app, team);
    if let Some(store) = &app.store {
        for k in store.list_keys(team).await.map_err(store_error)? {
            data.push(key_json(app, &k));
        }
    }
    ok(200, &json!({"object": "list", "data": data}))
}

async fn get_key(app: &App, id: &str) -> Reply {
    if id.starts_with("config:") {
        return config_keys_json(app, None)
            .into_iter()
            .find(|k| k["id"] == id)
            .map_or_else(|| Err(not_found("key", id)), |k| ok(200, &k));
    }
    let store = app.store.as_ref().ok_or_else(|| not_found("key", id))?;
    let k = store
        .get_key(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("key", id))?;
    ok(200, &key_json(app, &k))
}

fn new_secret() -> (String, String, String) {
    let secret = tollgate_auth::generate_key();
    let hash = KeyHash::of(&secret).to_hex();
    let prefix = tollgate_auth::display_prefix(&secret);
    (secret, hash, prefix)
}

async fn create_key(app: &App, store: &tollgate_store::Store, b: &[u8]) -> Reply {
    let map = object(b, KEY_FIELDS)?;
    let name: String = required(&map, "name")?;
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::invalid_request("`name` is 1 to 128 characters").with_param("name"));
    }
    let team_id = field::<String>(&map, "team_id")?.flatten();
    if let Some(t) = &team_id {
        check_team_exists(app, t).await?;
    }
    let f = PolicyFields::parse(app, &map)?;
    let (secret, hash, prefix) = new_secret();
    let id = format!("key_{}", hex::encode(rand::random::<[u8; 8]>()));
    let k = store
        .create_key(&NewKey {
            id,
            name,
            hash,
            prefix,
            team_id,
            models: f.models.flatten(),
            limits: f.limits.unwrap_or_default(),
            budget: f.budget.unwrap_or_default(),
            disabled: value::<bool>(&map, "disabled")?.unwrap_or(false),
            expires_at: expiry(&map)?.flatten(),
            metadata: f.metadata.unwrap_or_else(|| json!({})),
        })
        .await
        .map_err(store_error)?;
    app.apply_store_write().await;
    let mut v = key_json(app, &k);
    // The only time the secret is shown.
    v["key"] = Value::String(secret);
    ok(201, &v)
}

async fn update_key(app: &App, store: &tollgate_store::Store, id: &str, b: &[u8]) -> Reply {
    let map = object(b, KEY_FIELDS)?;
    let team_id = field::<String>(&map, "team_id")?;
    if let Some(Some(t)) = &team_id {
        check_team_exists(app, t).await?;
    }
    let f = PolicyFields::parse(app, &map)?;
    let name = value::<String>(&map, "name")?;
    if name.as_ref().is_some_and(|n| n.is_empty() || n.len() > 128) {
        return Err(ApiError::invalid_request("`name` is 1 to 128 characters").with_param("name"));
    }
    let patch = KeyPatch {
        name,
        team_id,
        models: f.models,
        limits: f.limits,
        budget: f.budget,
        disabled: value::<bool>(&map, "disabled")?,
        expires_at: expiry(&map)?,
        metadata: f.metadata,
    };
    let k = store
        .update_key(id, &patch)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("key", id))?;
    app.apply_store_write().await;
    ok(200, &key_json(app, &k))
}

async fn rotate_key(app: &App, store: &tollgate_store::Store, id: &str) -> Reply {
    let (secret, hash, prefix) = new_secret();
    let k = store
        .rotate_key(id, &hash, &prefix)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("key", id))?;
    app.apply_store_write().await;
    let mut v = key_json(app, &k);
    v["key"] = Value::String(secret);
    ok(200, &v)
}

async fn delete_key(app: &App, store: &tollgate_store::Store, id: &str) -> Reply {
    if !store.delete_key(id).await.map_err(store_error)? {
        return Err(not_found("key", id));
    }
    app.apply_store_write().await;
    ok(
        200,
        &json!({"object": "api_key", "id": id, "deleted": true}),
    )
}

// ---------------------------------------------------------------- targets

fn targets(app: &App) -> Reply {
    let snap = app.snapshot.load();
    let now = std::time::Instant::now();
    let mut data = Vec::new();
    let mut names: Vec<&String> = snap.models.keys().collect();
    names.sort();
    for name in names {
        let m = &snap.models[name];
        for t in m.route.targets() {
            let circuit = t.state.circuit(now);
            let retry_in = t.state.retry_in(now);
            let state = match circuit {
                tollgate_router::Circuit::Closed if !retry_in.is_zero() => "cooling_down",
                c => c.as_str(),
            };
            let keys: Vec<Value> = t
                .provider
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| json!({"index": i, "cooling_ms": k.cooldown.left(now).as_millis() as u64}))
                .collect();
            data.push(json!({
                "model": m.name,
                "provider": t.provider.name,
                "upstream_model": t.upstream_model,
                "priority": t.priority,
                "weight": t.weight,
                "strategy": m.route.strategy().as_str(),
                "state": state,
                "in_flight": t.state.in_flight(),
                "consecutive_failures": t.state.consecutive_failures(),
                "ejections": t.state.ejections(),
                "ttft_ewma_ms": t.state.latency().map(|d| d.as_secs_f64() * 1000.0),
                "retry_in_ms": retry_in.as_millis() as u64,
                "keys": keys,
            }));
        }
    }
    ok(200, &json!({"object": "list", "data": data}))
}

// ---------------------------------------------------------------- usage

struct UsageParams {
    q: UsageQuery,
    bucket_ms: i64,
}

fn usage_params(query: &[(String, String)], series: bool) -> Result<UsageParams, ApiError> {
    let now_ms = tollgate_proxy::steps::unix_now() * 1000;
    let (_, month_start) = period_starts(now_ms / 1000);
    let mut q = UsageQuery {
        from_ms: month_start * 1000,
        // Inclusive of everything up to now.
        to_ms: now_ms + 1000,
        ..UsageQuery::default()
    };
    let mut bucket_ms = 3_600_000;
    let mut seen = HashSet::new();
    for (k, v) in query {
        if !seen.insert(k.as_str()) {
            return Err(
                ApiError::invalid_request(format!("`{k}` is given twice")).with_param(k.clone())
            );
        }
        match k.as_str() {
            "from" => q.from_ms = body::time_ms("from", v)?,
            "to" => q.to_ms = body::time_ms("to", v)?,
            "key_id" => q.key_id = Some(v.clone()),
            "team_id" => q.team_id = Some(v.clone()),
            "model" => q.model = Some(v.clone()),
            "provider" => q.provider = Some(v.clone()),
            "api" => q.api = Some(v.clone()),
            "group_by" => {
                q.group_by = Some(v.parse::<GroupBy>().map_err(|_| {
                    ApiError::invalid_request(format!(
                        "`group_by` is one of key, team, model, provider, api; not `{v}`"
                    ))
                    .with_param("group_by")
                })?)
            }
            "bucket" if series => {
                bucket_ms = parse_bucket(v)?;
            }
            other => {
                return Err(
                    ApiError::invalid_request(format!("unknown query parameter `{other}`"))
                        .with_param(other.to_string()),
                )
            }
        }
    }
    if q.to_ms <= q.from_ms {
        return Err(ApiError::invalid_request("`to` must be after `from`").with_param("to"));
    }
    Ok(UsageParams { q, bucket_ms })
}

/// `60`, `60s`, `5m`, `1h`, `1d`.
fn parse_bucket(v: &str) -> Result<i64, ApiError> {
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match num.parse::<i64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(ApiError::invalid_request(format!(
            "`bucket` is a duration like 60s, 5m, 1h or 1d; not `{v}`"
        ))
        .with_param("bucket")),
    }
}

async fn usage(store: &tollgate_store::Store, query: &[(String, String)], series: bool) -> Reply {
    let p = usage_params(query, series)?;
    let rows = if series {
        store.usage_series(&p.q, p.bucket_ms).await
    } else {
        store.usage_totals(&p.q).await
    }
    .map_err(store_error)?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({
                "requests": r.requests,
                "errors": r.errors,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "cached_tokens": r.cached_tokens,
                "cost_usd": r.cost_usd,
            });
            if let Some(b) = r.bucket_ms {
                v["bucket_start"] = json!(b / 1000);
            }
            if p.q.group_by.is_some() {
                v["group"] = json!(r.group);
            }
            v
        })
        .collect();
    ok(
        200,
        &json!({
            "object": if series { "usage.series" } else { "usage" },
            "from": p.q.from_ms / 1000,
            "to": p.q.to_ms / 1000,
            "group_by": p.q.group_by.map(|g| g.as_str()),
            "bucket_seconds": if series { Some(p.bucket_ms / 1000) } else { None },
            "data": data,
        }),
    )
}

const CSV_HEADER: &str = "ts,request_id,key_id,key_name,team_id,model,provider,operation,status,stream,input_tokens,output_tokens,cached_tokens,cost_usd,latency_ms,ttft_ms,error,api\n";

fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn csv_row(out: &mut String, r: &UsageRecord) {
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.ts_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    out.push_str(&ts);
    for s in [&r.request_id, &r.key_id, &r.key_name] {
        out.push(',');
        csv_field(out, s);
    }
    out.push(',');
    csv_field(out, r.team_id.as_deref().unwrap_or(""));
    for s in [&r.model, &r.provider, &r.operation] {
        out.push(',');
        csv_field(out, s);
    }
    let _ = write!(
        out,
        ",{},{},{},{},{},{:.8},{:.3},",
        r.status,
        r.stream,
        r.input_tokens,
        r.output_tokens,
        r.cached_tokens,
        r.cost_usd,
        r.latency_ms
    );
    if let Some(t) = r.ttft_ms {
        let _ = write!(out, "{t:.3}");
    }
    out.push(',');
    csv_field(out, r.error.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.api.as_deref().unwrap_or(""));
    out.push('\n');
}

/// At most this many rows per export: ask for a narrower range beyond it.
const CSV_MAX_ROWS: usize = 1_000_000;

async fn export_csv(store: &tollgate_store::Store, query: &[(String, String)]) -> Reply {
    let p = usage_params(query, false)?;
    let mut out = String::from(CSV_HEADER);
    let mut after = None;
    let mut rows = 0usize;
    loop {
        let page = store
            .usage_records(&p.q, 5_000, after.clone())
            .await
            .map_err(store_error)?;
        for r in &page {
            csv_row(&mut out, r);
        }
        rows += page.len();
        if rows > CSV_MAX_ROWS {
            return Err(ApiError::invalid_request(format!(
                "more than {CSV_MAX_ROWS} records in range: narrow `from`/`to`"
            )));
        }
        match page.last() {
            Some(last) if page.len() == 5_000 => {
                after = Some((last.ts_ms, last.request_id.clone()))
            }
            _ => break,
        }
    }
    let mut r = reply(200, "text/csv; charset=utf-8", out.into_bytes());
    r.headers_mut().insert(
        http::header::CONTENT_DISPOSITION,
        http::HeaderValue::from_static("attachment; filename=\"tollgate-usage.csv\""),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(parse_bucket("60").unwrap(), 60_000);
        assert_eq!(parse_bucket("5m").unwrap(), 300_000);
        assert_eq!(parse_bucket("1d").unwrap(), 86_400_000);
        assert!(parse_bucket("0h").is_err());
        assert!(parse_bucket("1w").is_err());
        assert!(parse_bucket("99999999999999999d").is_err());
    }

    #[test]
    fn csv_quotes() {
        let mut s = String::new();
        csv_field(&mut s, "a,\"b\"");
        assert_eq!(s, "\"a,\"\"b\"\"\"");
    }

    #[test]
    fn openapi_is_json() {
        let v: Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
    }
}
