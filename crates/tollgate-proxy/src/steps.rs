//! The named steps of one request, in the order `request_filter` runs them.
//! Each is a plain function over the snapshot and the request, so the same
//! code serves every entry point.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::proxy::Session;
use tollgate_auth::presented_key;
use tollgate_limits::{Admission, Layer, Layers, Refusal, Rejection};
use tollgate_providers::{TargetCtx, UpstreamRequest};
use tollgate_schema::{ApiError, ErrorType};

use crate::ctx::Operation;
use crate::policy::{KeyEntry, Policy, TeamEntry};
use crate::snapshot::{ModelEntry, Snapshot, TargetEntry};

/// Why a request stops before (or instead of) reaching a provider.
#[derive(Debug)]
pub enum Stop {
    /// Answer the client with this error (and `Retry-After` seconds, for 429).
    Api(ApiError, Option<u64>),
    /// The client connection failed; nothing can be answered.
    Downstream(Box<pingora::Error>),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        Stop::Api(e, None)
    }
}

impl From<Box<pingora::Error>> for Stop {
    fn from(e: Box<pingora::Error>) -> Self {
        Stop::Downstream(e)
    }
}

/// The endpoint a request is for: method and path checked.
pub fn route(method: &Method, path: &str) -> Result<(Operation, Option<String>), ApiError> {
    let (op, allowed) = match path {
        "/v1/chat/completions" | "/chat/completions" => (Operation::Chat, Method::POST),
        "/v1/embeddings" | "/embeddings" => (Operation::Embeddings, Method::POST),
        "/v1/models" | "/models" => (Operation::Models, Method::GET),
        "/catalog" => (Operation::Catalog, Method::GET),
        "/openapi.json" => (Operation::OpenApi, Method::GET),
        p if p.starts_with("/apis/") || p.starts_with("/catalog/") => {
            return route_apis(method, p);
        }
        p => match p
            .strip_prefix("/v1/models/")
            .or_else(|| p.strip_prefix("/models/"))
        {
            Some(id) if !id.is_empty() => {
                if method != Method::GET {
                    return Err(ApiError::method_not_allowed(method.as_str(), path, "GET"));
                }
                return Ok((Operation::Models, Some(id.to_string())));
            }
            _ => return Err(ApiError::unknown_path(method.as_str(), path)),
        },
    };
    if method != allowed {
        return Err(ApiError::method_not_allowed(
            method.as_str(),
            path,
            allowed.as_str(),
        ));
    }
    Ok((op, None))
}

/// `/apis/…` and `/catalog/…`: the path after the prefix is the operation's argument.
fn route_apis(method: &Method, path: &str) -> Result<(Operation, Option<String>), ApiError> {
    if let Some(rest) = path.strip_prefix("/catalog/") {
        return match rest.strip_suffix("/subscription") {
            Some(name) if !name.is_empty() && !name.contains('/') => {
                if method == Method::GET || method == Method::POST {
                    Ok((Operation::Subscription, Some(name.to_string())))
                } else {
                    Err(ApiError::method_not_allowed(
                        method.as_str(),
                        path,
                        "GET, POST",
                    ))
                }
            }
            _ => Err(ApiError::unknown_path(method.as_str(), path)),
        };
    }
    let rest = path.strip_prefix("/apis/").unwrap_or_default();
    if let Some(api) = rest.strip_suffix("/openapi.json") {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str(), path, "GET"));
        }
        return Ok((Operation::OpenApi, Some(api.to_string())));
    }
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(method.as_str(), path, "POST"));
    }
    Ok((Operation::Api, Some(rest.to_string())))
}

/// Key auth: `Authorization: Bearer …` or `api-key: …`.
pub fn authenticate(policy: &Policy, session: &Session) -> Result<Arc<KeyEntry>, ApiError> {
    let h = session.req_header();
    authenticate_headers(
        policy,
        h.headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        h.headers.get("api-key").map(|v| v.as_bytes()),
        unix_now(),
    )
}

/// [`authenticate`] on the header values themselves.
pub fn authenticate_headers(
    policy: &Policy,
    authorization: Option<&[u8]>,
    api_key: Option<&[u8]>,
    now_unix: i64,
) -> Result<Arc<KeyEntry>, ApiError> {
    let presented = presented_key(authorization, api_key).ok_or_else(|| {
        ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.",
        )
        .with_code("missing_api_key")
    })?;
    let key = policy
        .keys
        .authenticate(presented)
        .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))?;
    if key.disabled {
        return Err(
            ApiError::unauthorized("This API key has been disabled.").with_code("api_key_disabled")
        );
    }
    if key.expires_at.is_some_and(|exp| now_unix >= exp) {
        return Err(
            ApiError::unauthorized("This API key has expired.").with_code("api_key_expired")
        );
    }
    Ok(key.clone())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Read the whole request body, refusing more than `max` bytes.
pub async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, Stop> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        // The unread body makes the connection unusable for another request.
        session.set_keepalive(None);
        return Err(ApiError::body_too_large(max).into());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024));
    while let Some(chunk) = session.read_request_body().await? {
        if buf.len() + chunk.len() > max {
            session.set_keepalive(None);
            return Err(ApiError::body_too_large(max).into());
        }
        if buf.is_empty() && declared.is_none() && chunk.len() >= buf.capacity() {
            // One chunk is the whole body more often than not: keep it without copying.
            buf.reserve(chunk.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The public model exists and the key (and its team) may use it.
pub fn authorize(
    snap: &Snapshot,
    key: &KeyEntry,
    team: Option<&TeamEntry>,
    model: &str,
) -> Result<Arc<ModelEntry>, ApiError> {
    let m = snap
        .models
        .get(model)
        .ok_or_else(|| ApiError::model_not_found(model))?;
    if !key.models.allows(model) || team.is_some_and(|t| !t.models.allows(model)) {
        return Err(ApiError::model_forbidden(model));
    }
    Ok(m.clone())
}

/// The limit layers of a request, most specific first.
pub fn layers(
    key: &KeyEntry,
    team: Option<&TeamEntry>,
    model: Option<&ModelEntry>,
    snap: &Snapshot,
) -> Layers {
    let mut l = Layers::default();
    l.push(Layer::Key, &key.limits);
    if let Some(t) = team {
        l.push(Layer::Team, &t.limits);
    }
    if let Some(m) = model {
        l.push(Layer::Model, &m.limits);
    }
    l.push(Layer::Global, &snap.global_limits);
    l
}

fn scope_name(layer: Layer, key: &KeyEntry, team: Option<&TeamEntry>, model: &str) -> String {
    match layer {
        Layer::Key => format!("key `{}`", key.name),
        Layer::Team => format!("team `{}`", team.map_or("", |t| t.id.as_str())),
        Layer::Model => format!("model `{model}`"),
        Layer::Global => "this gateway".to_string(),
    }
}

/// Token buckets and concurrency caps of every layer: one request, and the
/// estimated tokens reserved. The refusal names the layer that refused.
pub fn admit(
    layers: &Layers,
    key: &KeyEntry,
    team: Option<&TeamEntry>,
    model: &str,
    estimated_tokens: u64,
    now: Instant,
) -> Result<Admission, Box<(Stop, Rejection)>> {
    layers
        .admit(estimated_tokens, now)
        .map_err(|r| refused(r, key, team, model))
}

/// The answer to a request a limit refused (here or in the shared backend).
pub fn refused(
    r: Rejection,
    key: &KeyEntry,
    team: Option<&TeamEntry>,
    model: &str,
) -> Box<(Stop, Rejection)> {
    {
        let who = scope_name(r.layer, key, team, model);
        let what = r.kind.phrase();
        let stop = match r.refusal {
            Refusal::Wait(d) => {
                let secs = d.as_secs_f64().ceil().max(1.0) as u64;
                let message = if r.kind == tollgate_limits::LimitKind::Concurrency {
                    format!(
                        "Too many concurrent requests for {who}: limit {}. Please try again in {secs}s.",
                        r.limit
                    )
                } else {
                    format!(
                        "Rate limit reached for {who} on {what}: limit {}, requested {}. Please try again in {secs}s.",
                        r.limit, r.requested
                    )
                };
                Stop::Api(
                    ApiError::new(429, ErrorType::RateLimit, message)
                        .with_code("rate_limit_exceeded"),
                    Some(secs),
                )
            }
            Refusal::TooLarge => Stop::Api(
                ApiError::new(
                    429,
                    ErrorType::RateLimit,
                    format!(
                        "Request too large for {who} on {what}: limit {}, requested {}. Reduce the prompt or max_tokens.",
                        r.limit, r.requested
                    ),
                )
                .with_code("request_too_large"),
                None,
            ),
        };
        Box::new((stop, r))
    }
}

/// The answer to a request a spent budget refused (`who`: e.g. "key `x`").
pub fn budget_refused(who: String, r: tollgate_limits::BudgetRefusal) -> Stop {
    if r.held_in_flight {
        return Stop::Api(
                ApiError::new(
                    429,
                    ErrorType::RateLimit,
                    format!(
                        "The rest of the {} budget of {who} (${:.4} of ${:.2}) is held by requests in flight. Please try again when they finish.",
                        r.period.as_str(),
                        (r.limit - r.spent).max(0.0),
                        r.limit,
                    ),
                )
                .with_code("rate_limit_exceeded"),
                Some(1),
            );
    }
    Stop::Api(
            ApiError::new(
                429,
                ErrorType::InsufficientQuota,
                format!(
                    "The {} budget of {who} is spent: ${:.2} of ${:.2}. It renews at the start of the next {} (UTC).",
                    r.period.as_str(),
                    r.spent,
                    r.limit,
                    if r.period == tollgate_limits::Period::Day { "day" } else { "month" },
                ),
            )
            .with_code("insufficient_quota"),
            None,
        )
}

/// Budgets of the key and its team: reserve the estimated cost, or refuse
/// with `insufficient_quota` once either is spent.
pub fn reserve_budget(
    key: &KeyEntry,
    team: Option<&TeamEntry>,
    estimate: f64,
    now_unix: i64,
) -> Result<(), (Stop, &'static str)> {
    let refuse = budget_refused;
    key.budget
        .reserve(estimate, now_unix)
        .map_err(|r| (refuse(format!("key `{}`", key.name), r), "key"))?;
    if let Some(t) = team {
        if let Err(r) = t.budget.reserve(estimate, now_unix) {
            key.budget.settle(estimate, 0.0, now_unix);
            return Err((refuse(format!("team `{}`", t.id), r), "team"));
        }
    }
    Ok(())
}

/// The target's translation context.
pub fn target_ctx<'a>(t: &'a TargetEntry, default_max_tokens: u64) -> TargetCtx<'a> {
    TargetCtx {
        kind: t.provider.kind,
        base_path: &t.provider.base_path,
        upstream_model: &t.upstream_model,
        api_version: t.provider.api_version.as_deref(),
        default_max_tokens,
    }
}

/// The request body, parsed once.
pub enum Parsed<'a> {
    /// A chat completion request.
    Chat(tollgate_schema::ChatRequest<'a>),
    /// An embeddings request.
    Embeddings(tollgate_schema::EmbeddingsRequest<'a>),
}

impl<'a> Parsed<'a> {
    /// Parse the body for this endpoint.
    pub fn parse(op: Operation, body: &'a [u8]) -> Result<Parsed<'a>, ApiError> {
        match op {
            Operation::Chat => Ok(Parsed::Chat(tollgate_schema::ChatRequest::parse(body)?)),
            Operation::Embeddings => Ok(Parsed::Embeddings(
                tollgate_schema::EmbeddingsRequest::parse(body)?,
            )),
            _ => Err(ApiError::internal("this endpoint has no body")),
        }
    }

    /// The public model asked for.
    pub fn model(&self) -> &str {
        match self {
            Parsed::Chat(r) => &r.model,
            Parsed::Embeddings(r) => &r.model,
        }
    }

    /// Tokens to reserve: prompt estimate plus the completion allowance (times `n`).
    pub fn estimate_tokens(&self, default_completion: u64) -> u64 {
        match self {
            Parsed::Chat(r) => {
                let completion = r.max_tokens.unwrap_or(default_completion);
                r.estimate_prompt_tokens() + completion.saturating_mul(r.n.unwrap_or(1).max(1))
            }
            Parsed::Embeddings(r) => r.input.estimate_tokens(),
        }
    }

    /// Streamed response?
    pub fn stream(&self) -> bool {
        matches!(self, Parsed::Chat(r) if r.stream)
    }

    /// Embeddings asked as base64?
    pub fn embeddings_base64(&self) -> bool {
        matches!(self, Parsed::Embeddings(r) if r.encoding_format.as_deref() == Some("base64"))
    }

    /// The prompt alone, estimated.
    pub fn estimate_prompt_tokens(&self) -> u64 {
        match self {
            Parsed::Chat(r) => r.estimate_prompt_tokens(),
            Parsed::Embeddings(r) => r.input.estimate_tokens(),
        }
    }

    /// Did the client ask for the usage chunk?
    pub fn include_usage(&self) -> bool {
        matches!(self, Parsed::Chat(r) if r.include_usage)
    }
}

/// Translate the unified request into the provider's.
pub fn rewrite_request(
    parsed: &Parsed<'_>,
    target: &TargetEntry,
    default_max_tokens: u64,
) -> Result<UpstreamRequest, ApiError> {
    let t = target_ctx(target, default_max_tokens);
    match parsed {
        Parsed::Chat(req) => tollgate_providers::chat_request(req, &t),
        Parsed::Embeddings(req) => tollgate_providers::embeddings_request(req, &t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions").unwrap().0,
            Operation::Chat
        );
        assert_eq!(
            route(&Method::GET, "/v1/models/gpt-4o")
                .unwrap()
                .1
                .as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            route(&Method::GET, "/v1/chat/completions")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/models/x").unwrap_err().status,
            405
        );
        assert_eq!(
            route(&Method::POST, "/v2/whatever").unwrap_err().status,
            404
        );
    }
}
