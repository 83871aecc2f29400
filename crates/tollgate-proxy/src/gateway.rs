//! The `ProxyHttp` implementation: hooks dispatching to [`crate::steps`],
//! [`crate::exchange`] and the accounting in `logging`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType as PErr, Result};
use tollgate_metrics::Metrics;
use tollgate_schema::ApiError;
use tollgate_store::UsageRecord;

use crate::app::App;
use crate::ctx::{Operation, RequestCtx};
use crate::policy::{KeyEntry, TeamEntry};
use crate::shared::{BudgetDecision, Decision, HeldBudgets};
use crate::snapshot::{ModelEntry, Snapshot, TargetEntry};
use crate::steps::{self, Parsed, Stop};
use crate::{apis, exchange, respond};
use tollgate_config::HashOn;
use tollgate_limits::Admission;

/// The gateway's data plane.
pub struct Gateway {
    app: Arc<App>,
    connector: Connector,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// The data plane of an app.
    pub fn new(app: Arc<App>) -> Gateway {
        Gateway {
            metrics: app.metrics.clone(),
            app,
            connector: Connector::new(None),
        }
    }

    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
    ) -> Result<(), Stop> {
        let (op, model_id) = steps::route(
            &session.req_header().method,
            session.req_header().uri.path(),
        )?;
        ctx.op = op;
        let policy = self.app.policy.load();
        let key = steps::authenticate(&policy, session)?;
        let team = policy.team_of(&key).cloned();
        drop(policy);
        ctx.layers = steps::layers(&key, team.as_deref(), None, snap);
        ctx.key = Some(key.clone());
        ctx.team = team.clone();

        if op == Operation::Models {
            let body = models_body(snap, &key, team.as_deref(), model_id.as_deref())?;
            respond::json(session, ctx, 200, body).await?;
            return Ok(());
        }

        match op {
            Operation::Api | Operation::Catalog | Operation::Subscription | Operation::OpenApi => {
                return self
                    .api_management(session, ctx, snap, &key, team.as_deref(), model_id)
                    .await;
            }
            _ => {}
        }

        let body = steps::read_body(session, snap.max_body_bytes).await?;
        let parsed = Parsed::parse(op, &body)?;
        let model = steps::authorize(snap, &key, team.as_deref(), parsed.model())?;
        self.run(session, ctx, snap, &key, team.as_deref(), &parsed, model)
            .await
    }

    /// The policy and upstream half shared by `/v1/chat/completions`,
    /// `/v1/embeddings` and prompt API calls: limits, budgets, routing.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        key: &Arc<KeyEntry>,
        team: Option<&TeamEntry>,
        parsed: &Parsed<'_>,
        model: Arc<ModelEntry>,
    ) -> Result<(), Stop> {
        ctx.model = Some(model.clone());
        ctx.layers = steps::layers(key, team, Some(&model), snap);
        let estimate = parsed.estimate_tokens(snap.default_completion_tokens);
        let admission = self.admit(ctx, key, team, &model.name, estimate).await?;
        ctx.admission = Some(admission);
        let cost_estimate = model.pricing.map_or(0.0, |p| {
            let prompt = parsed.estimate_prompt_tokens();
            p.cost(prompt, 0, estimate.saturating_sub(prompt))
        });
        self.reserve_budget(ctx, key, team, cost_estimate).await?;
        ctx.budget_reserved = Some(cost_estimate);
        let hash_key: Option<Vec<u8>> = match &model.hash_on {
            None => None,
            Some(HashOn::Key) => Some(key.id.as_bytes().to_vec()),
            Some(HashOn::Header(h)) => session
                .req_header()
                .headers
                .get(h.as_str())
                .map(|v| v.as_bytes().to_vec()),
        };
        self.failover_loop(session, ctx, snap, &model, parsed, hash_key.as_deref())
            .await
    }

    /// `/apis/…`, `/catalog…` and `/openapi.json` (see [`crate::apis`]).
    async fn api_management(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        key: &Arc<KeyEntry>,
        team: Option<&TeamEntry>,
        arg: Option<String>,
    ) -> Result<(), Stop> {
        let catalog = self.app.catalog.load_full();
        let team_id = team.map(|t| t.id.as_str());
        let arg = arg.unwrap_or_default();
        let body = match ctx.op {
            Operation::Catalog => {
                apis::catalog_body(&catalog, snap, &self.app.config(), key, team)?
            }
            Operation::OpenApi if arg.is_empty() => apis::catalog_openapi(&catalog, team_id)?,
            Operation::OpenApi => apis::api_openapi(&catalog, &arg, team_id)?,
            Operation::Subscription if session.req_header().method == http::Method::POST => {
                let (status, body) = apis::request_subscription(
                    self.app.store.as_ref(),
                    &catalog,
                    &arg,
                    key,
                    team_id,
                )
                .await?;
                self.app.apply_store_write().await;
                respond::json(session, ctx, status, body).await?;
                return Ok(());
            }
            Operation::Subscription => apis::subscription_body(&catalog, &arg, team_id)?,
            _ => {
                return self
                    .call_api(session, ctx, snap, key, team, &catalog, &arg)
                    .await
            }
        };
        respond::json(session, ctx, 200, body).await?;
        Ok(())
    }

    /// `POST /apis/{name}[/{version}]`: lifecycle and subscription checked,
    /// the variables rendered into a chat request, then the chat path.
    #[allow(clippy::too_many_arguments)]
    async fn call_api(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        key: &Arc<KeyEntry>,
        team: Option<&TeamEntry>,
        catalog: &tollgate_apis::Catalog,
        path: &str,
    ) -> Result<(), Stop> {
        let (name, version) = apis::split_path(path)?;
        let api = catalog.resolve(name, version)?.clone();
        ctx.api = Some(api.clone());
        catalog.authorize(&api, team.map(|t| t.id.as_str()))?;
        let stream = apis::wants_stream(session.req_header().uri.query())?;
        let body = steps::read_body(session, snap.max_body_bytes).await?;
        let rendered = api.render(&body, stream)?;
        let parsed = Parsed::parse(Operation::Chat, &rendered.body)?;
        let model = snap.models.get(&api.spec.model).cloned().ok_or_else(|| {
            ApiError::new(
                503,
                tollgate_schema::ErrorType::Overloaded,
                format!(
                    "API `{}` calls model `{}`, which this gateway does not serve now.",
                    api.id, api.spec.model
                ),
            )
            .with_code("api_model_unavailable")
        })?;
        // The API is the owning team's product: its model access is what
        // counts, not the caller's (who may use the API without the model).
        let owner = self.app.policy.load().teams.get(&api.spec.team).cloned();
        if owner.is_some_and(|t| !t.models.allows(&model.name)) {
            return Err(ApiError::new(
                403,
                tollgate_schema::ErrorType::Permission,
                format!(
                    "API `{}` calls model `{}`, which its team `{}` may not use.",
                    api.id, model.name, api.spec.team
                ),
            )
            .with_code("model_not_allowed")
            .into());
        }
        self.run(session, ctx, snap, key, team, &parsed, model)
            .await
    }

    /// The targets of the plan in turn (what `upstream_peer` and Pingora's
    /// retries decide in a plain proxy): each attempt gets the body translated
    /// for its own provider; a failure before any byte reached the client moves
    /// on, within the model's attempts and deadline.
    async fn failover_loop(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
        model: &ModelEntry,
        parsed: &Parsed<'_>,
        hash_key: Option<&[u8]>,
    ) -> Result<(), Stop> {
        let mut plan: Vec<&Arc<TargetEntry>> = Vec::with_capacity(4);
        let panic = model.route.plan(hash_key, Instant::now(), &mut plan);
        let fo = model.failover;
        let deadline = ctx.start + fo.deadline;
        let asked = exchange::ClientAsked {
            public_model: &model.name,
            include_usage: parsed.include_usage(),
            embeddings_base64: parsed.embeddings_base64(),
            estimated_prompt_tokens: parsed.estimate_prompt_tokens(),
        };
        let mut attempts = 0u32;
        let mut last: Option<(Arc<TargetEntry>, exchange::Failure)> = None;
        let mut untranslatable: Option<ApiError> = None;
        'targets: for &target in &plan {
            // A target may take several attempts: one per key of its pool.
            loop {
                if attempts >= fo.max_attempts || Instant::now() >= deadline {
                    break 'targets;
                }
                let up = match steps::rewrite_request(
                    parsed,
                    target,
                    snap.default_completion_tokens.max(1),
                ) {
                    Ok(up) => up,
                    // This provider cannot express the request (say, n > 1 for
                    // Anthropic): skip it; if nothing else can, that is the answer.
                    Err(e) => {
                        untranslatable.get_or_insert(e);
                        continue 'targets;
                    }
                };
                let now = Instant::now();
                let guard = if panic {
                    target.state.begin_anyway(now)
                } else {
                    target.state.begin(now)
                };
                let Some(guard) = guard else {
                    continue 'targets;
                };
                let Some((_, slot)) = target.provider.pick_key(now) else {
                    // Every key is cooling down: the target is out for as long.
                    target
                        .state
                        .cool_down(now, target.provider.keys_back_in(now));
                    continue 'targets;
                };
                if let Some((_, f)) = &last {
                    self.metrics.failover(&model.name, f.outcome);
                }
                attempts += 1;
                ctx.target = Some(target.clone());
                let outcome = exchange::attempt(
                    session,
                    ctx,
                    &self.connector,
                    target,
                    slot,
                    up,
                    asked,
                    deadline,
                )
                .await?;
                let f = match outcome {
                    exchange::Attempted::Answered { ttft, clean } => {
                        let provider = target.provider.name.as_str();
                        if clean {
                            self.metrics.attempt(&model.name, provider, "success");
                            guard.succeed(ttft);
                        } else {
                            self.metrics.attempt(
                                &model.name,
                                provider,
                                ctx.error_kind.unwrap_or("protocol"),
                            );
                            if guard.fail(Instant::now()) {
                                self.metrics.ejection(
                                    &model.name,
                                    provider,
                                    &target.upstream_model,
                                );
                            }
                        }
                        return Ok(());
                    }
                    exchange::Attempted::Failed(f) => f,
                };
                let now = Instant::now();
                self.metrics
                    .attempt(&model.name, &target.provider.name, f.outcome);
                if f.counts_against_target() {
                    if guard.fail(now) {
                        self.metrics.ejection(
                            &model.name,
                            &target.provider.name,
                            &target.upstream_model,
                        );
                        log::warn!(
                            "target {} of model {} ejected after consecutive failures (last: {})",
                            target.id,
                            model.name,
                            f.outcome
                        );
                    }
                } else {
                    // The provider answered: alive, whatever it said.
                    guard.succeed(None);
                }
                let retryable = match f.outcome {
                    "connect" | "unresolved" => fo.on.connect,
                    "timeout" => fo.on.timeout,
                    "rate_limited" => fo.on.rate_limited,
                    "status_5xx" => fo.on.server_error,
                    "unauthorized" => true,
                    _ => false,
                };
                let same_target_again = match f.outcome {
                    // A key-specific refusal: cool that key; another key may work.
                    "rate_limited" | "unauthorized" => {
                        let pool = target.provider.keys.len() > 1;
                        // Only a pool benches a key: a lone key is the provider's
                        // only way in, for every model on it, while a 429 is
                        // usually about one model; the target rests instead.
                        let d = match (f.outcome, f.retry_after) {
                            _ if !pool => None,
                            ("unauthorized", _) => Some(Duration::from_secs(300)),
                            (_, Some(d)) => Some(d),
                            (_, None) => Some(Duration::from_secs(1)),
                        };
                        if let Some(d) = d {
                            slot.cooldown.extend(now, d);
                        }
                        let another_key = pool && target.provider.pick_key(now).is_some();
                        if let (Some(d), false) = (f.retry_after, another_key) {
                            if f.outcome == "rate_limited" {
                                // No key left to rotate to: the target rests as asked.
                                target.state.cool_down(now, d);
                            }
                        }
                        another_key
                    }
                    _ => false,
                };
                last = Some((target.clone(), f));
                if !retryable {
                    break 'targets;
                }
                if !same_target_again {
                    continue 'targets;
                }
            }
        }
        if let (None, Some(e)) = (&last, untranslatable) {
            return Err(e.into());
        }
        match last {
            Some((target, f)) => {
                ctx.target = Some(target.clone());
                exchange::answer_failure(session, ctx, &target, f).await
            }
            None => {
                let wait = model.route.retry_in(Instant::now());
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                Err(Stop::Api(
                    ApiError::new(
                        503,
                        tollgate_schema::ErrorType::Overloaded,
                        format!(
                            "No provider for model `{}` is available right now. Please try again in {secs}s.",
                            model.name
                        ),
                    )
                    .with_code("no_upstream_available"),
                    Some(secs),
                ))
            }
        }
    }
}

fn models_body(
    snap: &Snapshot,
    key: &KeyEntry,
    team: Option<&crate::policy::TeamEntry>,
    id: Option<&str>,
) -> Result<Bytes, ApiError> {
    let allows = |m: &str| key.models.allows(m) && team.is_none_or(|t| t.models.allows(m));
    let entry = |name: &str| serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"});
    let v = match id {
        Some(id) => {
            if !snap.models.contains_key(id) || !allows(id) {
                return Err(ApiError::model_not_found(id));
            }
            entry(id)
        }
        None => serde_json::json!({
            "object": "list",
            "data": snap.model_names.iter().filter(|m| allows(m)).map(|m| entry(m)).collect::<Vec<_>>(),
        }),
    };
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Every route is answered here (see the crate docs and ADR 0001): the
    /// body must be read whole before the target can be known.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.metrics.in_flight().inc();
        let snap = self.app.snapshot.load_full();
        session.set_read_timeout(Some(snap.client_read_timeout));
        session.set_write_timeout(Some(snap.client_write_timeout));
        ctx.snapshot = Some(snap.clone());
        match self.handle(session, ctx, &snap).await {
            Ok(()) => Ok(true),
            Err(Stop::Api(e, retry_after)) => {
                if session.response_written().is_some() {
                    // Headers already went out: the connection cannot carry a clean error.
                    return Err(Error::explain(PErr::InternalError, e.to_string()));
                }
                if e.status != 413 && !session.is_body_done() {
                    // Answered before the body was read: drain it so the connection stays
                    // usable, unless it is larger than anything this gateway would accept.
                    let declared = session
                        .req_header()
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<usize>().ok());
                    if declared.is_some_and(|n| n <= snap.max_body_bytes) {
                        session.drain_request_body().await?;
                    } else {
                        session.set_keepalive(None);
                    }
                }
                respond::error(session, ctx, &e, retry_after).await?;
                Ok(true)
            }
            Err(Stop::Downstream(e)) => Err(e),
        }
    }

    /// Never reached: `request_filter` answers every request. A plain proxy picks its
    /// peer here; Tollgate's equivalent is [`steps::choose_target`].
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            PErr::InternalError,
            "every route is answered in request_filter",
        ))
    }

    /// Failures outside the steps (client read errors, timeouts) still get OpenAI's shape.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            PErr::HTTPStatus(c) => *c,
            PErr::ReadTimedout => 408,
            PErr::ReadError | PErr::WriteError | PErr::ConnectionClosed => 0,
            PErr::InvalidHTTPHeader | PErr::H1Error | PErr::H2Error => 400,
            _ => 500,
        };
        if code > 0 && session.response_written().is_none() {
            let err = if code == 408 {
                ApiError::new(
                    408,
                    tollgate_schema::ErrorType::Timeout,
                    "Timed out reading the request.",
                )
            } else if code == 400 {
                ApiError::invalid_request(format!("Malformed request: {e}"))
            } else {
                ApiError::internal("The gateway failed to handle the request.")
            };
            let _ = respond::error(session, ctx, &err, None).await;
        }
        ctx.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// The accounting step: reconcile tokens, record metrics, write the access log.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.metrics.in_flight().dec();
        let now = Instant::now();
        let elapsed = now.duration_since(ctx.start);
        if let Some(adm) = &ctx.admission {
            let actual = match &ctx.usage {
                Some(u) => Some(u.total()),
                // A response that failed before any token was generated costs nothing.
                None if ctx.status != 200 => Some(0),
                // A stream cut before its usage arrived keeps its reservation.
                None => None,
            };
            match (&self.app.shared, ctx.shared_layers.take()) {
                (Some(shared), Some(held)) => {
                    shared
                        .finish(&held, adm.reserved, actual, &ctx.request_id, &self.metrics)
                        .await
                }
                _ => ctx.layers.finish(adm, actual, now),
            }
        }
        let model = ctx.model.as_ref().map_or("", |m| m.name.as_str());
        let provider = ctx.target.as_ref().map_or("", |t| t.provider.name.as_str());
        let mut cost = 0.0;
        if let Some(t) = &ctx.target {
            let tm = &t.metrics;
            match ctx.op {
                Operation::Embeddings => tm.embeddings_duration.observe(elapsed.as_secs_f64()),
                _ => tm.chat_duration.observe(elapsed.as_secs_f64()),
            }
            if let Some(ttft) = ctx.ttft {
                tm.ttft.observe(ttft.as_secs_f64());
                // Semantic conventions: decode time after the first token, per later token.
                if let Some(u) = ctx.usage.as_ref().filter(|u| u.completion_tokens > 1) {
                    let decode = elapsed.saturating_sub(ttft).as_secs_f64();
                    tm.tpot.observe(decode / (u.completion_tokens - 1) as f64);
                }
            }
            if let Some(u) = &ctx.usage {
                tm.usage_input.observe(u.prompt_tokens as f64);
                tm.usage_output.observe(u.completion_tokens as f64);
                tm.tokens_input.inc_by(u.prompt_tokens);
                tm.tokens_output.inc_by(u.completion_tokens);
                tm.tokens_cached.inc_by(u.cached_tokens);
                if let Some(p) = t.pricing {
                    cost = p.cost(u.prompt_tokens, u.cached_tokens, u.completion_tokens);
                    tm.cost.inc_by(cost);
                }
            }
            if let Some(kind) = ctx.error_kind {
                self.metrics.upstream_error(provider, kind);
            }
        }
        if let Some(sent) = ctx.upstream_sent {
            self.metrics
                .overhead(sent.duration_since(ctx.start).as_secs_f64());
        }
        let status = if ctx.status == 0 {
            session.response_written().map_or(0, |h| h.status.as_u16())
        } else {
            ctx.status
        };
        self.metrics
            .request(ctx.op.as_str(), model, provider, status);
        if let Some(api) = &ctx.api {
            let deprecated = api.state.status == tollgate_apis::Status::Deprecated;
            self.metrics
                .api_call(&api.id, status, deprecated, charged(ctx, cost));
        }
        if let (Some(shared), Some(held)) = (&self.app.shared, ctx.shared_budgets.as_ref()) {
            shared
                .settle_budget(held, charged(ctx, cost), &ctx.request_id, &self.metrics)
                .await;
        }
        self.account(ctx, model, provider, status, cost, elapsed);
        if ctx.snapshot.as_ref().is_some_and(|s| s.access_log) {
            let line = crate::access_log::Line {
                request_id: &ctx.request_id,
                op: ctx.op.as_str(),
                api: ctx.api.as_ref().map(|a| a.id.as_str()),
                key: ctx.key.as_ref().map(|k| k.name.as_str()),
                team: ctx.key.as_ref().and_then(|k| k.team.as_deref()),
                model,
                provider,
                status,
                stream: ctx.stream,
                prompt_tokens: ctx.usage.map(|u| u.prompt_tokens),
                completion_tokens: ctx.usage.map(|u| u.completion_tokens),
                cached_tokens: ctx.usage.map(|u| u.cached_tokens),
                cost_usd: cost,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                ttft_ms: ctx.ttft.map(|d| d.as_secs_f64() * 1000.0),
                error: ctx.error_kind,
            };
            match self.app.access_log.get() {
                Some(log) => log.record(&line),
                None => {
                    if let Ok(text) = serde_json::to_string(&line) {
                        log::info!(target: "tollgate::access", "{text}");
                    }
                }
            }
        }
    }
}

impl Gateway {
    /// The limits step: in the shared backend if there is one (falling back
    /// under the request's failure policy), else in this process.
    async fn admit(
        &self,
        ctx: &mut RequestCtx,
        key: &KeyEntry,
        team: Option<&TeamEntry>,
        model: &str,
        estimate: u64,
    ) -> Result<Admission, Stop> {
        let decision = match &self.app.shared {
            Some(shared) => match shared
                .admit(&ctx.layers, estimate, &ctx.request_id, &self.metrics)
                .await
            {
                Decision::Admitted(a, held) => {
                    ctx.shared_layers = Some(held);
                    Ok(a)
                }
                Decision::Refused(r) => Err(steps::refused(r, key, team, model)),
                Decision::Unavailable => {
                    shared.fallback(&ctx.layers, &self.metrics)?;
                    steps::admit(&ctx.layers, key, team, model, estimate, Instant::now())
                }
            },
            None => steps::admit(&ctx.layers, key, team, model, estimate, Instant::now()),
        };
        decision.map_err(|refused| {
            let (stop, r) = *refused;
            self.metrics.rate_limited(r.layer.as_str(), r.kind.as_str());
            stop
        })
    }

    /// The budget step: the key's and team's budgets reserve `estimate`, in
    /// the shared backend if there is one and either has a budget.
    async fn reserve_budget(
        &self,
        ctx: &mut RequestCtx,
        key: &KeyEntry,
        team: Option<&TeamEntry>,
        estimate: f64,
    ) -> Result<(), Stop> {
        let local = || steps::reserve_budget(key, team, estimate, steps::unix_now());
        let shared = self
            .app
            .shared
            .as_ref()
            .map(|s| (s, HeldBudgets::of(key, team)))
            .filter(|(_, held)| !held.is_empty());
        let reserved = match shared {
            Some((shared, held)) => match shared
                .reserve_budget(&held, estimate, &ctx.request_id, &self.metrics)
                .await
            {
                BudgetDecision::Reserved => {
                    ctx.shared_budgets = Some(held);
                    Ok(())
                }
                BudgetDecision::Refused(who, r) => {
                    let name = match team {
                        Some(t) if who == "team" => format!("team `{}`", t.id),
                        _ => format!("key `{}`", key.name),
                    };
                    Err((steps::budget_refused(name, r), who))
                }
                BudgetDecision::Unavailable => {
                    shared.fallback(&ctx.layers, &self.metrics)?;
                    local()
                }
            },
            None => local(),
        };
        reserved.map_err(|(stop, scope)| {
            self.metrics.rate_limited(scope, "budget");
            stop
        })
    }

    /// Budgets and the usage ledger: every request that reached the model step
    /// leaves one record, whatever its outcome.
    fn account(
        &self,
        ctx: &RequestCtx,
        model: &str,
        provider: &str,
        status: u16,
        cost: f64,
        elapsed: std::time::Duration,
    ) {
        let (Some(key), Some(_)) = (&ctx.key, &ctx.model) else {
            return;
        };
        let unix = steps::unix_now();
        let cost = charged(ctx, cost);
        if let Some(reserved) = ctx.budget_reserved {
            // Budgets reserved in the shared backend settle there (in
            // `logging`); scopes without a budget still count locally.
            let shared = ctx.shared_budgets.is_some();
            if !shared || key.budget.budget().is_unlimited() {
                key.budget.settle(reserved, cost, unix);
            }
            if let Some(t) = &ctx.team {
                if !shared || t.budget.budget().is_unlimited() {
                    t.budget.settle(reserved, cost, unix);
                }
            }
        }
        if let Some(ledger) = &self.app.ledger {
            let u = ctx.usage.unwrap_or_default();
            ledger.record(UsageRecord {
                ts_ms: steps::unix_ms(),
                request_id: ctx.request_id.clone(),
                key_id: key.id.clone(),
                key_name: key.name.clone(),
                team_id: key.team.clone(),
                model: model.to_string(),
                provider: provider.to_string(),
                operation: ctx.op.as_str().to_string(),
                status,
                stream: ctx.stream,
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                cached_tokens: u.cached_tokens,
                cost_usd: cost,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                ttft_ms: ctx.ttft.map(|d| d.as_secs_f64() * 1000.0),
                error: ctx.error_kind.map(str::to_string),
                api: ctx.api.as_ref().map(|a| a.id.clone()),
            });
        }
    }
}

/// What a request is charged: its cost, or, for a stream cut before its usage
/// arrived, its estimate (in the budgets and the ledger alike), as its tokens
/// keep their reservation: it did cost something, and the provider will bill it.
fn charged(ctx: &RequestCtx, cost: f64) -> f64 {
    match ctx.budget_reserved {
        Some(reserved) if ctx.stream && ctx.usage.is_none() => reserved,
        _ => cost,
    }
}
