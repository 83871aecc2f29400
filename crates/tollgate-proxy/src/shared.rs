//! Limits shared by every node through Redis (`limits.backend: redis`), and
//! what a request gets while Redis does not answer (`on_failure`).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tollgate_config::{OnFailure, RedisBackend};
use tollgate_limits::{
    month_index, Admission, BudgetRefusal, BudgetTracker, Layer, Layers, Limits, Period, Rejection,
};
use tollgate_metrics::Metrics;
use tollgate_redis::{BackendError, BudgetRef, LayerRef, RedisLimits, RedisSettings};

use tollgate_schema::{ApiError, ErrorType};

use crate::policy::{KeyEntry, TeamEntry};
use crate::steps::Stop;

/// After a failure, decisions skip Redis for this long before trying again,
/// so an outage costs each request nothing rather than a timeout.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The shared backend and its health.
pub struct SharedLimits {
    redis: RedisLimits,
    /// What a request gets while Redis does not answer.
    pub on_failure: OnFailure,
    up: AtomicBool,
    /// Unix ms before which a decision does not try Redis.
    retry_at: AtomicI64,
}

/// One decision.
pub enum Decision {
    /// Redis admitted the request (finish it there, with these layers).
    Admitted(Admission, HeldLayers),
    /// Redis refused it.
    Refused(Rejection),
    /// Redis did not answer: apply `on_failure`.
    Unavailable,
}

/// A request's layers, owned, to settle after the request ended.
#[derive(Clone, Debug, Default)]
pub struct HeldLayers(Vec<(Layer, String, Limits)>);

impl HeldLayers {
    /// Copy what the shared backend needs of `layers`.
    pub fn of(layers: &Layers) -> HeldLayers {
        HeldLayers(
            layers
                .sets()
                .map(|(l, s)| (l, s.scope().to_string(), s.limits()))
                .collect(),
        )
    }

    fn refs(&self) -> Vec<LayerRef<'_>> {
        self.0
            .iter()
            .map(|(layer, scope, limits)| LayerRef {
                layer: *layer,
                scope,
                limits: *limits,
            })
            .collect()
    }
}

/// One budget decision.
pub enum BudgetDecision {
    /// Reserved in Redis (settle there).
    Reserved,
    /// Refused by the key's (`"key"`) or the team's (`"team"`) budget.
    Refused(&'static str, BudgetRefusal),
    /// Redis did not answer: apply `on_failure`.
    Unavailable,
}

/// The budgets of a request's key and team, owned, with their trackers.
#[derive(Clone, Debug, Default)]
pub struct HeldBudgets(
    Vec<(
        String,
        tollgate_limits::Budget,
        std::sync::Arc<BudgetTracker>,
    )>,
);

impl HeldBudgets {
    /// The key's and the team's budgets, where they have one.
    pub fn of(key: &KeyEntry, team: Option<&TeamEntry>) -> HeldBudgets {
        let mut v = Vec::with_capacity(2);
        for (scope, tracker) in [
            Some((format!("key:{}", key.id), &key.budget)),
            team.map(|t| (format!("team:{}", t.id), &t.budget)),
        ]
        .into_iter()
        .flatten()
        {
            let b = tracker.budget();
            if !b.is_unlimited() {
                v.push((scope, b, tracker.clone()));
            }
        }
        HeldBudgets(v)
    }

    /// Nothing to decide.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn refs(&self, now_unix: i64) -> Vec<BudgetRef<'_>> {
        self.0
            .iter()
            .map(|(scope, b, t)| {
                // The local tracker holds what the ledger knew at start: the
                // seed of a period no node has written yet.
                let s = t.status(now_unix);
                BudgetRef {
                    scope,
                    daily_usd: b.daily_usd,
                    monthly_usd: b.monthly_usd,
                    day_seed: s.day_spent,
                    month_seed: s.month_spent,
                }
            })
            .collect()
    }

    fn observe(&self, spends: &[[f64; 2]], now_unix: i64) {
        for ((_, _, t), [day, month]) in self.0.iter().zip(spends) {
            t.observe(*day, *month, now_unix);
        }
    }
}

fn periods(now_unix: i64) -> (i64, i64) {
    (now_unix.div_euclid(86_400), month_index(now_unix))
}

impl SharedLimits {
    /// Connect. After that, a Redis that goes away costs no restart: the
    /// connections come back by themselves when it does.
    pub async fn connect(b: &RedisBackend) -> Result<SharedLimits, BackendError> {
        let redis = RedisLimits::connect(RedisSettings {
            url: b.url.clone(),
            pool_size: b.pool_size,
            key_prefix: b.key_prefix.clone(),
            timeout: b.timeout,
            lease: b.lease,
        })
        .await?;
        Ok(SharedLimits {
            redis,
            on_failure: b.on_failure,
            up: AtomicBool::new(true),
            retry_at: AtomicI64::new(0),
        })
    }

    /// Whether the last decision reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Redis failed less than [`RETRY_AFTER`] ago: do not try it yet.
    fn resting(&self) -> bool {
        !self.is_up() && crate::steps::unix_ms() < self.retry_at.load(Ordering::Relaxed)
    }

    /// Redis did not answer: under this request's failure policy (its
    /// layers', else the backend's), go on with local state (`Ok`), counted,
    /// or refuse with 503 `limits_unavailable`.
    pub fn fallback(&self, layers: &Layers, metrics: &Metrics) -> Result<(), Stop> {
        match layers.on_failure(self.on_failure) {
            OnFailure::FailOpen => {
                metrics.limits_fallback(true);
                Ok(())
            }
            OnFailure::FailClosed => {
                metrics.limits_fallback(false);
                Err(Stop::Api(
                    ApiError::new(
                        503,
                        ErrorType::Api,
                        "The shared rate limiter is unavailable and this gateway is configured to fail closed; please try again shortly.",
                    )
                    .with_code("limits_unavailable"),
                    Some(1),
                ))
            }
        }
    }

    fn failed(&self, e: &BackendError, metrics: &Metrics) {
        metrics.limits_backend_error();
        self.retry_at.store(
            crate::steps::unix_ms() + RETRY_AFTER.as_millis() as i64,
            Ordering::Relaxed,
        );
        if self.up.swap(false, Ordering::Relaxed) {
            metrics.limits_backend_up(false);
            let policy = match self.on_failure {
                OnFailure::FailOpen => "deciding on local buckets (limit ÷ expected nodes)",
                OnFailure::FailClosed => "refusing requests with 503",
            };
            log::error!("limits: Redis does not answer ({e}); {policy} until it does");
        }
    }

    fn answered(&self, metrics: &Metrics) {
        if !self.up.swap(true, Ordering::Relaxed) {
            metrics.limits_backend_up(true);
            log::info!("limits: Redis answers again; limits are shared again");
        }
    }

    /// Admit one request with `tokens` reserved in every layer, or refuse it.
    pub async fn admit(
        &self,
        layers: &Layers,
        tokens: u64,
        request_id: &str,
        metrics: &Metrics,
    ) -> Decision {
        if self.resting() {
            return Decision::Unavailable;
        }
        let held = HeldLayers::of(layers);
        match self.redis.admit(&held.refs(), tokens, request_id).await {
            Ok(r) => {
                self.answered(metrics);
                match r {
                    Ok(a) => Decision::Admitted(a, held),
                    Err(r) => Decision::Refused(r),
                }
            }
            Err(e) => {
                self.failed(&e, metrics);
                Decision::Unavailable
            }
        }
    }

    /// Reserve `estimate` USD in the key's and the team's budgets.
    pub async fn reserve_budget(
        &self,
        held: &HeldBudgets,
        estimate: f64,
        request_id: &str,
        metrics: &Metrics,
    ) -> BudgetDecision {
        if self.resting() {
            return BudgetDecision::Unavailable;
        }
        let now = crate::steps::unix_now();
        let refs = held.refs(now);
        match self
            .redis
            .reserve_budget(&refs, estimate, request_id, periods(now))
            .await
        {
            Ok(Ok(spends)) => {
                self.answered(metrics);
                held.observe(&spends, now);
                BudgetDecision::Reserved
            }
            Ok(Err(r)) => {
                self.answered(metrics);
                let (scope, budget, _) = &held.0[r.index.min(held.0.len() - 1)];
                let (period, limit) = if r.monthly {
                    (Period::Month, budget.monthly_usd)
                } else {
                    (Period::Day, budget.daily_usd)
                };
                let limit = limit.unwrap_or(0.0);
                let who = if scope.starts_with("team:") {
                    "team"
                } else {
                    "key"
                };
                BudgetDecision::Refused(
                    who,
                    BudgetRefusal {
                        period,
                        limit,
                        spent: r.spent,
                        held_in_flight: r.spent < limit,
                    },
                )
            }
            Err(e) => {
                self.failed(&e, metrics);
                BudgetDecision::Unavailable
            }
        }
    }

    /// Replace a reservation made in Redis with the real cost. A failure is
    /// logged: the reservation lapses with its lease, the cost is lost to the
    /// shared budget (the ledger still has it).
    pub async fn settle_budget(
        &self,
        held: &HeldBudgets,
        actual: f64,
        request_id: &str,
        metrics: &Metrics,
    ) {
        let now = crate::steps::unix_now();
        let refs = held.refs(now);
        match self
            .redis
            .settle_budget(&refs, actual, request_id, periods(now))
            .await
        {
            Ok(spends) => {
                self.answered(metrics);
                held.observe(&spends, now);
            }
            Err(e) => {
                log::warn!("budgets: cannot settle request {request_id} in Redis: {e}");
                self.failed(&e, metrics);
            }
        }
    }

    /// Settle a request Redis admitted. A failure here is logged and left:
    /// the concurrency slot goes with its lease, the reservation stays spent.
    pub async fn finish(
        &self,
        layers: &HeldLayers,
        reserved: u64,
        actual: Option<u64>,
        request_id: &str,
        metrics: &Metrics,
    ) {
        match self
            .redis
            .finish(&layers.refs(), reserved, actual, request_id)
            .await
        {
            Ok(()) => self.answered(metrics),
            Err(e) => {
                log::warn!("limits: cannot settle request {request_id} in Redis: {e}");
                self.failed(&e, metrics);
            }
        }
    }
}
