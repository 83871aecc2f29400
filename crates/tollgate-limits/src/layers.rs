//! Limits of one scope ([`LimitSet`]) and the layers a request passes through
//! ([`Layers`]): key, team, model, global. The strictest layer wins.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bucket::{Refusal, Status, TokenBucket};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The limits of one scope (`None` = unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Tokens per day (a bucket refilled over 24 h, not a calendar day).
    pub tpd: Option<u64>,
    /// Requests in flight at once.
    pub concurrent: Option<u64>,
    /// Most requests at once out of the minute's allowance (default: all of it).
    pub rpm_burst: Option<u64>,
    /// Most tokens at once out of the minute's allowance (default: all of it).
    pub tpm_burst: Option<u64>,
    /// While the shared backend does not answer (`None`: the backend's default).
    pub on_failure: Option<OnFailure>,
}

/// What a request gets while the shared limits backend does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Decided on this process's share of the limits (limit ÷ expected nodes).
    FailOpen,
    /// Refused with 503.
    FailClosed,
}

impl OnFailure {
    /// As written in the config and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::FailOpen => "fail_open",
            OnFailure::FailClosed => "fail_closed",
        }
    }

    /// Parse `fail_open` / `fail_closed`.
    pub fn parse(s: &str) -> Option<OnFailure> {
        match s {
            "fail_open" => Some(OnFailure::FailOpen),
            "fail_closed" => Some(OnFailure::FailClosed),
            _ => None,
        }
    }
}

impl Limits {
    /// No limit set at all.
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.tpd.is_none() && self.concurrent.is_none()
    }
}

/// Which scope a limit belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The client key.
    Key,
    /// The key's team.
    Team,
    /// The public model, across all keys.
    Model,
    /// The whole gateway.
    Global,
}

impl Layer {
    /// For messages, headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Key => "key",
            Layer::Team => "team",
            Layer::Model => "model",
            Layer::Global => "global",
        }
    }
}

/// Which limit refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Tokens per day.
    TokensPerDay,
    /// Concurrent requests.
    Concurrency,
}

impl LimitKind {
    /// For metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::TokensPerDay => "tokens_per_day",
            LimitKind::Concurrency => "concurrency",
        }
    }

    /// For messages: "requests per minute".
    pub fn phrase(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests per minute",
            LimitKind::Tokens => "tokens per minute",
            LimitKind::TokensPerDay => "tokens per day",
            LimitKind::Concurrency => "concurrent requests",
        }
    }
}

/// A refusal with what the client needs to hear.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rejection {
    /// The scope that refused.
    pub layer: Layer,
    /// The limit that refused.
    pub kind: LimitKind,
    /// The refusal.
    pub refusal: Refusal,
    /// The limit's value.
    pub limit: u64,
    /// Tokens (or requests) asked for.
    pub requested: u64,
}

/// What one scope took recently, newest bin first, as read back from the usage
/// ledger when a process starts: so that a restart or an upgrade does not hand
/// every key a fresh minute and a fresh day.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Requests per bin over the last minute.
    pub minute_requests: Vec<f64>,
    /// Tokens per bin over the last minute.
    pub minute_tokens: Vec<f64>,
    /// Width of a minute bin.
    pub minute_bin: Duration,
    /// Tokens per bin over the last day.
    pub day_tokens: Vec<f64>,
    /// Width of a day bin.
    pub day_bin: Duration,
}

/// The buckets and counters of one scope.
#[derive(Debug)]
pub struct LimitSet {
    scope: String,
    limits: Limits,
    /// What this process enforces alone: `limits`, or its share of them.
    local: Limits,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    tpd: Option<TokenBucket>,
    in_flight: AtomicU64,
}

struct Fail(LimitKind, Refusal, u64, u64);

impl LimitSet {
    /// Fresh, full buckets for these limits.
    pub fn new(limits: Limits, now: Instant) -> LimitSet {
        LimitSet::shared(String::new(), limits, 1, now)
    }

    /// The local share of limits that `nodes` nodes enforce together: the
    /// buckets hold limit ÷ nodes (rounded up), for when the shared state is
    /// out of reach. [`Self::limits`] stays the whole.
    pub fn shared(scope: String, whole: Limits, nodes: u32, now: Instant) -> LimitSet {
        let n = u64::from(nodes.max(1));
        let part = |v: Option<u64>| v.map(|v| v.div_ceil(n).max(1));
        let limits = Limits {
            rpm: part(whole.rpm),
            tpm: part(whole.tpm),
            tpd: part(whole.tpd),
            concurrent: part(whole.concurrent),
            rpm_burst: part(whole.rpm_burst),
            tpm_burst: part(whole.tpm_burst),
            on_failure: whole.on_failure,
        };
        LimitSet {
            scope,
            limits: whole,
            local: limits,
            rpm: limits
                .rpm
                .map(|l| TokenBucket::with_burst(l, limits.rpm_burst.unwrap_or(l), MINUTE, now)),
            tpm: limits
                .tpm
                .map(|l| TokenBucket::with_burst(l, limits.tpm_burst.unwrap_or(l), MINUTE, now)),
            tpd: limits.tpd.map(|l| TokenBucket::new(l, DAY, now)),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Charge what an earlier process took in this scope (see [`History`]).
    pub fn charge_history(&self, h: &History, now: Instant) {
        if let Some(b) = &self.rpm {
            b.charge_history(&h.minute_requests, h.minute_bin, now);
        }
        if let Some(b) = &self.tpm {
            b.charge_history(&h.minute_tokens, h.minute_bin, now);
        }
        if let Some(b) = &self.tpd {
            b.charge_history(&h.day_tokens, h.day_bin, now);
        }
    }

    /// The limits of the scope (for the whole cluster, when shared).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The scope's name (`key:<id>`, `team:<id>`, `model:<name>`, `global`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Take one request and `tokens`; on refusal nothing stays taken.
    fn take(&self, tokens: u64, now: Instant) -> Result<(Option<Status>, Option<Status>), Fail> {
        let requests = match &self.rpm {
            Some(b) => Some(
                b.try_take(1.0, now)
                    .map_err(|r| Fail(LimitKind::Requests, r, b.limit(), 1))?,
            ),
            None => None,
        };
        let undo_request = || {
            if let Some(b) = &self.rpm {
                b.adjust(1.0, now);
            }
        };
        if let Some(max) = self.local.concurrent {
            let taken = self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                });
            if taken.is_err() {
                undo_request();
                // Nothing says when a slot frees up; a second is the polite guess.
                return Err(Fail(
                    LimitKind::Concurrency,
                    Refusal::Wait(Duration::from_secs(1)),
                    max,
                    1,
                ));
            }
        }
        let undo_slot = || {
            if self.local.concurrent.is_some() {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let mut token_status = None;
        if let Some(b) = &self.tpm {
            match b.try_take(tokens as f64, now) {
                Ok(s) => token_status = Some(s),
                Err(r) => {
                    undo_request();
                    undo_slot();
                    return Err(Fail(LimitKind::Tokens, r, b.limit(), tokens));
                }
            }
        }
        if let Some(b) = &self.tpd {
            match b.try_take(tokens as f64, now) {
                Ok(s) => token_status = Some(tighter(token_status, s)),
                Err(r) => {
                    undo_request();
                    undo_slot();
                    if let Some(t) = &self.tpm {
                        t.adjust(tokens as f64, now);
                    }
                    return Err(Fail(LimitKind::TokensPerDay, r, b.limit(), tokens));
                }
            }
        }
        Ok((requests, token_status))
    }

    /// Undo a successful [`Self::take`] completely (a later layer refused).
    fn give_back(&self, tokens: u64, now: Instant) {
        if let Some(b) = &self.rpm {
            b.adjust(1.0, now);
        }
        self.settle(tokens, 0, now);
        self.release();
    }

    fn settle(&self, reserved: u64, actual: u64, now: Instant) {
        if reserved == actual {
            return;
        }
        let delta = reserved as f64 - actual as f64;
        if let Some(b) = &self.tpm {
            b.adjust(delta, now);
        }
        if let Some(b) = &self.tpd {
            b.adjust(delta, now);
        }
    }

    fn release(&self) {
        if self.local.concurrent.is_some() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn status(&self, now: Instant) -> (Option<Status>, Option<Status>) {
        let req = self.rpm.as_ref().map(|b| b.status(now));
        let mut tok = self.tpm.as_ref().map(|b| b.status(now));
        if let Some(b) = &self.tpd {
            tok = Some(tighter(tok, b.status(now)));
        }
        (req, tok)
    }
}

/// The status with fewer remaining; the earlier (more specific) one on a tie.
fn tighter(a: Option<Status>, b: Status) -> Status {
    match a {
        Some(a) if a.remaining <= b.remaining => a,
        _ => b,
    }
}

fn tighter_layer(
    a: Option<(Layer, Status)>,
    layer: Layer,
    b: Option<Status>,
) -> Option<(Layer, Status)> {
    match (a, b) {
        (Some(a), Some(b)) if b.remaining < a.1.remaining => Some((layer, b)),
        (None, Some(b)) => Some((layer, b)),
        (a, _) => a,
    }
}

/// What was admitted and the header values that go with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The binding request limit after this request, and whose it is.
    pub requests: Option<(Layer, Status)>,
    /// The binding token limit after the reservation, and whose it is.
    pub tokens: Option<(Layer, Status)>,
    /// Tokens reserved in every layer with a token limit, to settle later.
    pub reserved: u64,
}

const MAX_LAYERS: usize = 4;

/// The limit sets one request passes through, most specific first. A fixed
/// array: building it allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    sets: [Option<(Layer, Arc<LimitSet>)>; MAX_LAYERS],
    len: usize,
}

impl Layers {
    /// Add a scope's limits (ignored when full: there are four scopes).
    pub fn push(&mut self, layer: Layer, set: &Arc<LimitSet>) {
        if self.len < MAX_LAYERS && !set.limits.is_unlimited() {
            self.sets[self.len] = Some((layer, set.clone()));
            self.len += 1;
        }
    }

    /// No layer limits anything.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn iter(&self) -> impl Iterator<Item = &(Layer, Arc<LimitSet>)> {
        self.sets[..self.len].iter().flatten()
    }

    /// The layers with their limit sets, most specific first.
    pub fn sets(&self) -> impl Iterator<Item = (Layer, &LimitSet)> {
        self.iter().map(|(l, s)| (*l, s.as_ref()))
    }

    /// Admit one request that may use up to `tokens` in every layer, or none.
    pub fn admit(&self, tokens: u64, now: Instant) -> Result<Admission, Rejection> {
        let mut adm = Admission {
            reserved: tokens,
            ..Admission::default()
        };
        for (i, (layer, set)) in self.iter().enumerate() {
            match set.take(tokens, now) {
                Ok((req, tok)) => {
                    adm.requests = tighter_layer(adm.requests, *layer, req);
                    adm.tokens = tighter_layer(adm.tokens, *layer, tok);
                }
                Err(Fail(kind, refusal, limit, requested)) => {
                    for (_, s) in self.iter().take(i) {
                        s.give_back(tokens, now);
                    }
                    return Err(Rejection {
                        layer: *layer,
                        kind,
                        refusal,
                        limit,
                        requested,
                    });
                }
            }
        }
        Ok(adm)
    }

    /// The request ended: replace the reservation with `actual` tokens (`None`
    /// keeps it, for a stream cut before its usage arrived) and free its slot.
    pub fn finish(&self, adm: &Admission, actual: Option<u64>, now: Instant) {
        for (_, set) in self.iter() {
            if let Some(actual) = actual {
                set.settle(adm.reserved, actual, now);
            }
            set.release();
        }
    }

    /// The failure policy of this request: fail closed if any layer says so,
    /// open if any says open, else `default`.
    pub fn on_failure(&self, default: OnFailure) -> OnFailure {
        let mut open = false;
        for (_, s) in self.iter() {
            match s.limits.on_failure {
                Some(OnFailure::FailClosed) => return OnFailure::FailClosed,
                Some(OnFailure::FailOpen) => open = true,
                None => {}
            }
        }
        if open {
            OnFailure::FailOpen
        } else {
            default
        }
    }

    /// Current binding limits, for responses that were not admitted.
    pub fn status(&self, now: Instant) -> Admission {
        let mut adm = Admission::default();
        for (layer, set) in self.iter() {
            let (req, tok) = set.status(now);
            adm.requests = tighter_layer(adm.requests, *layer, req);
            adm.tokens = tighter_layer(adm.tokens, *layer, tok);
        }
        adm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(l: Limits) -> Arc<LimitSet> {
        Arc::new(LimitSet::new(l, Instant::now()))
    }

    #[test]
    fn bucket_refills_and_bursts() {
        let t0 = Instant::now();
        let b = TokenBucket::new(60, MINUTE, t0);
        for _ in 0..60 {
            assert!(b.try_take(1.0, t0).is_ok());
        }
        match b.try_take(1.0, t0) {
            Err(Refusal::Wait(d)) => assert!((d.as_secs_f64() - 1.0).abs() < 1e-6),
            other => panic!("{other:?}"),
        }
        assert!(b.try_take(1.0, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(b.try_take(61.0, t0), Err(Refusal::TooLarge));
        // A burst of 5 out of 60/min: five at once, then one per second.
        let b = TokenBucket::with_burst(60, 5, MINUTE, t0);
        for _ in 0..5 {
            assert!(b.try_take(1.0, t0).is_ok());
        }
        assert!(b.try_take(1.0, t0).is_err());
        assert_eq!(b.status(t0).limit, 60);
        assert!(b.try_take(1.0, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn tokens_reserved_and_settled() {
        let t0 = Instant::now();
        let mut layers = Layers::default();
        layers.push(
            Layer::Key,
            &set(Limits {
                rpm: Some(10),
                tpm: Some(1000),
                ..Limits::default()
            }),
        );
        let a = layers.admit(600, t0).unwrap();
        assert_eq!(a.tokens.unwrap().1.remaining, 400);
        assert_eq!(a.requests.unwrap().1.remaining, 9);
        let r = layers.admit(600, t0).unwrap_err();
        assert_eq!((r.layer, r.kind), (Layer::Key, LimitKind::Tokens));
        // The refused request gave its request slot back.
        assert_eq!(layers.status(t0).requests.unwrap().1.remaining, 9);
        layers.finish(&a, Some(100), t0);
        assert_eq!(layers.status(t0).tokens.unwrap().1.remaining, 900);
        let b = layers.admit(600, t0).unwrap();
        // Under-estimates become debt.
        layers.finish(&b, Some(1600), t0);
        assert_eq!(layers.status(t0).tokens.unwrap().1.remaining, 0);
    }

    #[test]
    fn strictest_layer_binds_and_refusal_rolls_back() {
        let t0 = Instant::now();
        let key = set(Limits {
            rpm: Some(100),
            tpm: Some(10_000),
            ..Limits::default()
        });
        let team = set(Limits {
            rpm: Some(3),
            ..Limits::default()
        });
        let global = set(Limits {
            tpd: Some(1_000_000),
            ..Limits::default()
        });
        let mut layers = Layers::default();
        layers.push(Layer::Key, &key);
        layers.push(Layer::Team, &team);
        layers.push(Layer::Model, &set(Limits::default()));
        layers.push(Layer::Global, &global);
        assert_eq!(layers.len, 3, "unlimited layers are skipped");
        let a = layers.admit(100, t0).unwrap();
        assert_eq!(a.requests.unwrap().0, Layer::Team);
        assert_eq!(a.requests.unwrap().1.remaining, 2);
        assert_eq!(a.tokens.unwrap().0, Layer::Key);
        layers.admit(100, t0).unwrap();
        layers.admit(100, t0).unwrap();
        let r = layers.admit(100, t0).unwrap_err();
        assert_eq!(
            (r.layer, r.kind, r.limit),
            (Layer::Team, LimitKind::Requests, 3)
        );
        // The key layer's request and tokens were given back.
        assert_eq!(key.status(t0).0.unwrap().remaining, 97);
        assert_eq!(key.status(t0).1.unwrap().remaining, 9_700);
    }

    #[test]
    fn concurrency_is_capped_and_released() {
        let t0 = Instant::now();
        let s = set(Limits {
            concurrent: Some(2),
            ..Limits::default()
        });
        let mut layers = Layers::default();
        layers.push(Layer::Key, &s);
        let a = layers.admit(1, t0).unwrap();
        let b = layers.admit(1, t0).unwrap();
        let r = layers.admit(1, t0).unwrap_err();
        assert_eq!(r.kind, LimitKind::Concurrency);
        assert_eq!(s.in_flight(), 2);
        layers.finish(&a, None, t0);
        assert!(layers.admit(1, t0).is_ok());
        layers.finish(&b, Some(1), t0);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn tokens_per_day_refuses_after_minute_buckets() {
        let t0 = Instant::now();
        let mut layers = Layers::default();
        layers.push(
            Layer::Key,
            &set(Limits {
                tpm: Some(1000),
                tpd: Some(1500),
                ..Limits::default()
            }),
        );
        let a = layers.admit(1000, t0).unwrap();
        layers.finish(&a, Some(1000), t0);
        let later = t0 + MINUTE;
        let r = layers.admit(600, later).unwrap_err();
        assert_eq!(r.kind, LimitKind::TokensPerDay);
        // The tpm bucket got its 600 back.
        assert!(layers.admit(500, later).is_ok());
    }
}
