//! Prometheus metrics and the JSON access log.
//!
//! Names follow OpenTelemetry's GenAI semantic conventions where they exist
//! (`gen_ai_*`, attributes `gen_ai_request_model`, `gen_ai_provider_name`,
//! `gen_ai_token_type`); the gateway's own are `tollgate_*`. Every label takes
//! values from the config (model and provider names) or a small fixed set
//! (status codes, limit kinds), never raw client input, so cardinality stays
//! bounded. Per-(model, provider) handles are resolved once and cached by the
//! caller ([`TargetMetrics`]) so the hot path does no label hashing for them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

const MODEL: &str = "gen_ai_request_model";
const PROVIDER: &str = "gen_ai_provider_name";
const TOKEN_TYPE: &str = "gen_ai_token_type";
const STATUS: &str = "http_response_status_code";
const OPERATION: &str = "gen_ai_operation_name";

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    api_deprecated: IntCounterVec,
    api_cost: prometheus::CounterVec,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    token_usage: HistogramVec,
    tokens: IntCounterVec,
    cost: prometheus::CounterVec,
    rate_limited: IntCounterVec,
    upstream_errors: IntCounterVec,
    overhead: Histogram,
    in_flight: IntGauge,
    budget_spend: prometheus::GaugeVec,
    budget_remaining: prometheus::GaugeVec,
    budget_soft: prometheus::IntGaugeVec,
    ledger_queued: IntGauge,
    ledger_written: prometheus::IntCounter,
    ledger_dropped: prometheus::IntCounter,
    access_log_dropped: prometheus::IntCounter,
    ledger_failures: prometheus::IntCounter,
    policy_keys: IntGauge,
    policy_sync_errors: prometheus::IntCounter,
    attempts: IntCounterVec,
    failovers: IntCounterVec,
    ejections: IntCounterVec,
    target_healthy: prometheus::IntGaugeVec,
    target_in_flight: prometheus::IntGaugeVec,
    target_ttft: prometheus::GaugeVec,
    provider_check: prometheus::IntGaugeVec,
    reloads: IntCounterVec,
    last_reload: prometheus::Gauge,
    limits_up: IntGauge,
    limits_errors: prometheus::IntCounter,
    limits_fallback: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are static and unique, so registration cannot fail.
    let _ = r.register(Box::new(m.clone()));
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    #[allow(clippy::expect_used)] // metric definitions are static: failure is a programming error at startup
    pub fn new() -> Metrics {
        let r = Registry::new();
        let requests = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_requests_total",
                    "Requests answered, by model, provider and HTTP status.",
                ),
                &[OPERATION, MODEL, PROVIDER, STATUS],
            )
            .expect("metric"),
        );
        let duration = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "gen_ai_server_request_duration_seconds",
                    "Time from request received to last response byte.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0,
                ]),
                &[OPERATION, MODEL, PROVIDER],
            )
            .expect("metric"),
        );
        let ttft = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "gen_ai_server_time_to_first_token_seconds",
                    "Time from request received to the first streamed token.",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &[MODEL, PROVIDER],
            )
            .expect("metric"),
        );
        let tpot = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "gen_ai_server_time_per_output_token_seconds",
                    "Time per output token after the first, for streamed responses.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
                    0.15, 0.2, 0.3, 0.5, 1.0,
                ]),
                &[MODEL, PROVIDER],
            )
            .expect("metric"),
        );
        let token_usage = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "gen_ai_client_token_usage",
                    "Tokens per request, by token type.",
                )
                .buckets(vec![
                    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                    1048576.0,
                ]),
                &[MODEL, PROVIDER, TOKEN_TYPE],
            )
            .expect("metric"),
        );
        let tokens = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_tokens_total",
                    "Tokens used, by token type (input, output, cached_input).",
                ),
                &[MODEL, PROVIDER, TOKEN_TYPE],
            )
            .expect("metric"),
        );
        let cost = reg(
            &r,
            prometheus::CounterVec::new(
                Opts::new(
                    "tollgate_cost_usd_total",
                    "Spend in USD computed from usage and the price table.",
                ),
                &[MODEL, PROVIDER],
            )
            .expect("metric"),
        );
        let rate_limited = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_rate_limited_requests_total",
                    "Requests refused by a limit, by layer and limit.",
                ),
                &["layer", "limit"],
            )
            .expect("metric"),
        );
        let upstream_errors = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_upstream_errors_total",
                    "Failed upstream exchanges, by provider and kind.",
                ),
                &[PROVIDER, "kind"],
            )
            .expect("metric"),
        );
        let overhead = reg(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_overhead_seconds",
                    "Time spent in the gateway itself before the upstream request is sent.",
                )
                .buckets(vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                    0.01, 0.05,
                ]),
            )
            .expect("metric"),
        );
        let in_flight = reg(
            &r,
            IntGauge::new("tollgate_requests_in_flight", "Requests being processed.")
                .expect("metric"),
        );
        let budget_spend = reg(
            &r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "tollgate_budget_spend_usd",
                    "Spend in the current budget period, for teams and for keys with a budget.",
                ),
                &["scope", "id", "period"],
            )
            .expect("metric"),
        );
        let budget_remaining = reg(
            &r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "tollgate_budget_remaining_usd",
                    "What is left of a budget in the current period.",
                ),
                &["scope", "id", "period"],
            )
            .expect("metric"),
        );
        let budget_soft = reg(
            &r,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_budget_soft_limit_reached",
                    "1 once spend passed the budget's soft threshold (soft_pct) in either period.",
                ),
                &["scope", "id"],
            )
            .expect("metric"),
        );
        let ledger_queued = reg(
            &r,
            IntGauge::new(
                "tollgate_ledger_queued_records",
                "Usage records waiting to be written to the store.",
            )
            .expect("metric"),
        );
        let ledger_written = reg(
            &r,
            prometheus::IntCounter::new(
                "tollgate_ledger_written_records_total",
                "Usage records committed to the store.",
            )
            .expect("metric"),
        );
        let ledger_dropped = reg(
            &r,
            prometheus::IntCounter::new(
                "tollgate_ledger_dropped_records_total",
                "Usage records dropped because the ledger queue was full (each is also logged).",
            )
            .expect("metric"),
        );
        let access_log_dropped = reg(
            &r,
            prometheus::IntCounter::new(
                "tollgate_access_log_dropped_lines_total",
                "Access log lines dropped because the writer fell behind.",
            )
            .expect("metric"),
        );
        let ledger_failures = reg(
            &r,
            prometheus::IntCounter::new(
                "tollgate_ledger_write_failures_total",
                "Failed ledger batch writes (each batch is retried).",
            )
            .expect("metric"),
        );
        let policy_keys = reg(
            &r,
            IntGauge::new(
                "tollgate_keys",
                "Client keys loaded (config file and store).",
            )
            .expect("metric"),
        );
        let policy_sync_errors = reg(
            &r,
            prometheus::IntCounter::new(
                "tollgate_policy_sync_errors_total",
                "Failed polls of the store for key and team changes.",
            )
            .expect("metric"),
        );
        let attempts = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_upstream_attempts_total",
                    "Upstream attempts, by model, provider and outcome (success, connect, timeout, rate_limited, unauthorized, status_5xx, status_4xx, protocol, bad_response, unresolved).",
                ),
                &[MODEL, PROVIDER, "outcome"],
            )
            .expect("metric"),
        );
        let failovers = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_failovers_total",
                    "Requests moved to another target (or key), by model and the failed attempt's outcome.",
                ),
                &[MODEL, "reason"],
            )
            .expect("metric"),
        );
        let target_labels = [MODEL, PROVIDER, "upstream_model"];
        let ejections = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_target_ejections_total",
                    "Targets taken out of rotation after consecutive failures.",
                ),
                &target_labels,
            )
            .expect("metric"),
        );
        let target_healthy = reg(
            &r,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_target_healthy",
                    "1 while a target takes traffic; 0 while it is ejected, probing or cooling down after a 429.",
                ),
                &target_labels,
            )
            .expect("metric"),
        );
        let target_in_flight = reg(
            &r,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_target_in_flight",
                    "Requests in flight per target.",
                ),
                &target_labels,
            )
            .expect("metric"),
        );
        let target_ttft = reg(
            &r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "tollgate_target_ttft_ewma_seconds",
                    "Moving average of a target's time to first token (the latency strategy's estimate).",
                ),
                &target_labels,
            )
            .expect("metric"),
        );
        let provider_check = reg(
            &r,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "tollgate_provider_health_check_up",
                    "1 if the provider's last active health check passed, 0 if it failed.",
                ),
                &[PROVIDER],
            )
            .expect("metric"),
        );
        let api_requests = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_api_requests_total",
                    "Prompt API calls, by API version (`name/version`) and HTTP status.",
                ),
                &["api", "status"],
            )
            .expect("metric"),
        );
        let api_deprecated = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_api_deprecated_requests_total",
                    "Calls of deprecated prompt API versions (answered with Deprecation and Sunset headers).",
                ),
                &["api"],
            )
            .expect("metric"),
        );
        let api_cost = reg(
            &r,
            prometheus::CounterVec::new(
                Opts::new(
                    "tollgate_api_cost_usd_total",
                    "Dollars spent through each prompt API version.",
                ),
                &["api"],
            )
            .expect("metric"),
        );
        let reloads = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_config_reloads_total",
                    "Config reloads (SIGHUP or admin API), by result: ok or failed.",
                ),
                &["result"],
            )
            .expect("metric"),
        );
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        let last_reload = reg(
            &r,
            prometheus::Gauge::new(
                "tollgate_config_last_reload_success_timestamp_seconds",
                "When the config in force was loaded (start or last successful reload), Unix seconds.",
            )
            .expect("metric"),
        );
        last_reload.set(unix_now());
        let limits_up = reg(
            &r,
            IntGauge::new(
                "tollgate_limits_backend_up",
                "1 while the shared limits backend (Redis) answers; always 1 without one.",
            )
            .expect("metric"),
        );
        limits_up.set(1);
        let limits_errors = reg(
            &r,
            prometheus::IntCounter::new(
                "tollgate_limits_backend_errors_total",
                "Decisions or settlements the shared limits backend did not answer in time.",
            )
            .expect("metric"),
        );
        let limits_fallback = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "tollgate_limits_fallback_total",
                    "Requests decided without the shared backend, by policy: fail_open (local share) or fail_closed (503).",
                ),
                &["policy"],
            )
            .expect("metric"),
        );
        // CPU, memory, file descriptors and threads of this process (Linux).
        #[cfg(target_os = "linux")]
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let build = reg(&r, IntGaugeVecHelper::build_info());
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            api_requests,
            api_deprecated,
            api_cost,
            registry: r,
            requests,
            duration,
            ttft,
            tpot,
            token_usage,
            tokens,
            cost,
            rate_limited,
            upstream_errors,
            overhead,
            in_flight,
            budget_spend,
            budget_remaining,
            budget_soft,
            ledger_queued,
            ledger_written,
            ledger_dropped,
            access_log_dropped,
            ledger_failures,
            policy_keys,
            policy_sync_errors,
            attempts,
            failovers,
            ejections,
            target_healthy,
            target_in_flight,
            target_ttft,
            provider_check,
            reloads,
            last_reload,
            limits_up,
            limits_errors,
            limits_fallback,
        }
    }

    /// Whether the shared limits backend answers.
    pub fn limits_backend_up(&self, up: bool) {
        self.limits_up.set(i64::from(up));
    }

    /// Count a shared-backend failure.
    pub fn limits_backend_error(&self) {
        self.limits_errors.inc();
    }

    /// Count a decision taken without the shared backend.
    pub fn limits_fallback(&self, fail_open: bool) {
        self.limits_fallback
            .with_label_values(&[if fail_open {
                "fail_open"
            } else {
                "fail_closed"
            }])
            .inc();
    }

    /// Count a prompt API call (once per request, in the accounting step).
    pub fn api_call(&self, api: &str, status: u16, deprecated: bool, cost: f64) {
        let status = status.to_string();
        self.api_requests
            .with_label_values(&[api, status.as_str()])
            .inc();
        if deprecated {
            self.api_deprecated.with_label_values(&[api]).inc();
        }
        if cost > 0.0 {
            self.api_cost.with_label_values(&[api]).inc_by(cost);
        }
    }

    /// Count a config reload.
    pub fn config_reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        if ok {
            self.last_reload.set(unix_now());
        }
    }

    /// The registry, for the admin endpoint.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Handles for one (model, provider), resolved once.
    pub fn target(&self, model: &str, provider: &str) -> TargetMetrics {
        TargetMetrics {
            chat_duration: self.duration.with_label_values(&["chat", model, provider]),
            embeddings_duration: self
                .duration
                .with_label_values(&["embeddings", model, provider]),
            ttft: self.ttft.with_label_values(&[model, provider]),
            tpot: self.tpot.with_label_values(&[model, provider]),
            usage_input: self
                .token_usage
                .with_label_values(&[model, provider, "input"]),
            usage_output: self
                .token_usage
                .with_label_values(&[model, provider, "output"]),
            tokens_input: self.tokens.with_label_values(&[model, provider, "input"]),
            tokens_output: self.tokens.with_label_values(&[model, provider, "output"]),
            tokens_cached: self
                .tokens
                .with_label_values(&[model, provider, "cached_input"]),
            cost: self.cost.with_label_values(&[model, provider]),
        }
    }

    /// Count an answered request.
    pub fn request(&self, operation: &str, model: &str, provider: &str, status: u16) {
        let mut buf = [0u8; 3];
        self.requests
            .with_label_values(&[operation, model, provider, status_str(status, &mut buf)])
            .inc();
    }

    /// Count a refusal by a limit.
    pub fn rate_limited(&self, layer: &str, limit: &str) {
        self.rate_limited.with_label_values(&[layer, limit]).inc();
    }

    /// Count a failed upstream exchange.
    pub fn upstream_error(&self, provider: &str, kind: &str) {
        self.upstream_errors
            .with_label_values(&[provider, kind])
            .inc();
    }

    /// Record gateway overhead.
    pub fn overhead(&self, seconds: f64) {
        self.overhead.observe(seconds);
    }

    /// The in-flight gauge.
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// Publish a budget's state (`scope` is `key` or `team`; `None` = no cap for that period).
    #[allow(clippy::too_many_arguments)]
    pub fn budget(
        &self,
        scope: &str,
        id: &str,
        day: (f64, Option<f64>),
        month: (f64, Option<f64>),
        soft_reached: bool,
    ) {
        for (period, (spent, remaining)) in [("daily", day), ("monthly", month)] {
            self.budget_spend
                .with_label_values(&[scope, id, period])
                .set(spent);
            if let Some(r) = remaining {
                self.budget_remaining
                    .with_label_values(&[scope, id, period])
                    .set(r);
            }
        }
        self.budget_soft
            .with_label_values(&[scope, id])
            .set(i64::from(soft_reached));
    }

    /// Records waiting for the ledger writer.
    pub fn ledger_queued(&self) -> &IntGauge {
        &self.ledger_queued
    }

    /// Records written by the ledger.
    pub fn ledger_written(&self) -> &prometheus::IntCounter {
        &self.ledger_written
    }

    /// Access log lines dropped because the writer fell behind.
    pub fn access_log_dropped(&self) -> &prometheus::IntCounter {
        &self.access_log_dropped
    }

    /// Records the ledger had to drop.
    pub fn ledger_dropped(&self) -> &prometheus::IntCounter {
        &self.ledger_dropped
    }

    /// Failed ledger writes.
    pub fn ledger_failures(&self) -> &prometheus::IntCounter {
        &self.ledger_failures
    }

    /// Count an upstream attempt.
    pub fn attempt(&self, model: &str, provider: &str, outcome: &str) {
        self.attempts
            .with_label_values(&[model, provider, outcome])
            .inc();
    }

    /// Count a failover.
    pub fn failover(&self, model: &str, reason: &str) {
        self.failovers.with_label_values(&[model, reason]).inc();
    }

    /// Count an ejection.
    pub fn ejection(&self, model: &str, provider: &str, upstream_model: &str) {
        self.ejections
            .with_label_values(&[model, provider, upstream_model])
            .inc();
    }

    /// Publish a target's state (refreshed before each scrape).
    pub fn target_state(
        &self,
        labels: [&str; 3],
        healthy: bool,
        in_flight: u64,
        ttft: Option<f64>,
    ) {
        self.target_healthy
            .with_label_values(&labels)
            .set(i64::from(healthy));
        self.target_in_flight
            .with_label_values(&labels)
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        if let Some(t) = ttft {
            self.target_ttft.with_label_values(&labels).set(t);
        }
    }

    /// Publish an active health check's verdict.
    pub fn provider_check(&self, provider: &str, up: bool) {
        self.provider_check
            .with_label_values(&[provider])
            .set(i64::from(up));
    }

    /// Keys loaded.
    pub fn policy_keys(&self) -> &IntGauge {
        &self.policy_keys
    }

    /// Failed store polls.
    pub fn policy_sync_errors(&self) -> &prometheus::IntCounter {
        &self.policy_sync_errors
    }
}

struct IntGaugeVecHelper;

impl IntGaugeVecHelper {
    #[allow(clippy::expect_used)]
    fn build_info() -> prometheus::IntGaugeVec {
        prometheus::IntGaugeVec::new(
            Opts::new("tollgate_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("metric")
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn status_str(status: u16, buf: &mut [u8; 3]) -> &str {
    if !(100..=999).contains(&status) {
        return "000";
    }
    buf[0] = b'0' + (status / 100) as u8;
    buf[1] = b'0' + (status / 10 % 10) as u8;
    buf[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

/// Metric handles for one (model, provider).
#[derive(Clone)]
pub struct TargetMetrics {
    /// Chat request duration.
    pub chat_duration: Histogram,
    /// Embeddings request duration.
    pub embeddings_duration: Histogram,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time per output token after the first.
    pub tpot: Histogram,
    /// Input tokens per request.
    pub usage_input: Histogram,
    /// Output tokens per request.
    pub usage_output: Histogram,
    /// Input tokens, total.
    pub tokens_input: IntCounter,
    /// Output tokens, total.
    pub tokens_output: IntCounter,
    /// Cached input tokens, total.
    pub tokens_cached: IntCounter,
    /// Spend.
    pub cost: prometheus::Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_what_was_recorded() {
        let m = Metrics::new();
        m.request("chat", "gpt-4o", "openai", 200);
        m.request("chat", "gpt-4o", "openai", 429);
        let t = m.target("gpt-4o", "openai");
        t.tokens_input.inc_by(12);
        t.ttft.observe(0.2);
        m.rate_limited("key", "requests");
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(r#"tollgate_requests_total{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o",http_response_status_code="429"} 1"#), "{text}");
        assert!(text.contains(r#"tollgate_tokens_total{gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o",gen_ai_token_type="input"} 12"#));
        assert!(text.contains("gen_ai_server_time_to_first_token_seconds_count"));
        assert!(text
            .contains(r#"tollgate_rate_limited_requests_total{layer="key",limit="requests"} 1"#));
        assert!(text.contains("tollgate_build_info"));
    }
}
