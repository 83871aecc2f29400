//! From a public model to the ordered plan of targets one request may try.
//!
//! A model's targets form priority tiers (lower first). Within a tier a
//! [`Strategy`] orders them: weighted round robin, least in flight, lowest
//! latency (EWMA of time to first token), or consistent hashing on a key (so a
//! prompt prefix keeps reaching the replica that has it cached). The plan lists
//! the usable targets of the first tier in that order, then the next tier's, so
//! a later tier serves only when the ones before it fail or are unavailable.
//!
//! Each target carries a [`TargetState`]: requests in flight, the latency
//! estimate, and passive health — ejected after N consecutive failures for a
//! cooldown, then half-open (one real request probes it; success closes the
//! circuit, failure ejects it again), and cooled down for a provider's
//! `Retry-After`. The crate knows nothing of providers or connections.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How targets within a tier are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted round robin.
    #[default]
    Weighted,
    /// Fewest requests in flight first (ties: weighted round robin).
    LeastInFlight,
    /// Lowest EWMA time to first token first; untried targets first.
    Latency,
    /// Rendezvous (highest random weight) hashing on a request key, weighted.
    ConsistentHash,
}

impl Strategy {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::LeastInFlight => "least_in_flight",
            Strategy::Latency => "latency",
            Strategy::ConsistentHash => "consistent_hash",
        }
    }
}

/// Passive health settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that eject a target.
    pub eject_after: u32,
    /// How long an ejected target rests before a probe.
    pub cooldown: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            eject_after: 3,
            cooldown: Duration::from_secs(10),
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

/// A "not before" time that only ever moves later: a provider's `Retry-After`
/// on a target, or a benched key of a pool. Lock-free, so every request can
/// check it.
#[derive(Debug, Default)]
pub struct Cooldown {
    /// Milliseconds since the process epoch.
    until: AtomicU64,
}

impl Cooldown {
    /// Stay out until at least `now + d`.
    pub fn extend(&self, now: Instant, d: Duration) {
        self.until
            .fetch_max(ms_since_epoch(now + d), Ordering::AcqRel);
    }

    /// Time left (zero when over).
    pub fn left(&self, now: Instant) -> Duration {
        Duration::from_millis(
            self.until
                .load(Ordering::Acquire)
                .saturating_sub(ms_since_epoch(now)),
        )
    }

    /// Still running.
    pub fn active(&self, now: Instant) -> bool {
        ms_since_epoch(now) < self.until.load(Ordering::Acquire)
    }
}

/// Circuit state, for metrics and the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    /// Serving.
    Closed,
    /// Ejected or cooling down until the given time.
    Open,
    /// Cooldown over: the next request probes it.
    HalfOpen,
}

impl Circuit {
    /// For labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "healthy",
            Circuit::Open => "ejected",
            Circuit::HalfOpen => "probing",
        }
    }
}

/// Runtime state of one target, shared by every request.
#[derive(Debug)]
pub struct TargetState {
    policy: HealthPolicy,
    in_flight: AtomicU64,
    /// EWMA of time to first token in microseconds, as f64 bits; 0 = no sample yet.
    ewma_us: AtomicU64,
    failures: AtomicU32,
    /// Milliseconds since the process epoch until which the target is ejected.
    down_until: AtomicU64,
    /// The provider asked us to stay away (`Retry-After`).
    cooldown: Cooldown,
    /// The circuit opened (ejection), as opposed to a plain cooldown.
    ejected: AtomicBool,
    /// A half-open probe is in flight.
    probing: AtomicBool,
    /// An active health check says the provider is down.
    check_down: AtomicBool,
    ejections: AtomicU64,
}

/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

impl TargetState {
    /// A healthy target with no history.
    pub fn new(policy: HealthPolicy) -> TargetState {
        TargetState {
            policy,
            in_flight: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            cooldown: Cooldown::default(),
            ejected: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            check_down: AtomicBool::new(false),
            ejections: AtomicU64::new(0),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate (EWMA of time to first token), if any sample exists.
    pub fn latency(&self) -> Option<Duration> {
        let v = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        (v > 0.0).then(|| Duration::from_micros(v as u64))
    }

    /// Times this target was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Record the verdict of an active health check.
    pub fn set_check_down(&self, down: bool) {
        self.check_down.store(down, Ordering::Release);
    }

    /// Whether an active health check says the target is down.
    pub fn check_down(&self) -> bool {
        self.check_down.load(Ordering::Acquire)
    }

    /// The circuit now.
    pub fn circuit(&self, now: Instant) -> Circuit {
        if self.check_down() {
            return Circuit::Open;
        }
        let until = self.down_until.load(Ordering::Acquire);
        if until == 0 {
            Circuit::Closed
        } else if ms_since_epoch(now) < until {
            Circuit::Open
        } else if self.ejected.load(Ordering::Acquire) {
            Circuit::HalfOpen
        } else {
            Circuit::Closed
        }
    }

    /// Time until the target may be tried again (zero when it may now).
    pub fn retry_in(&self, now: Instant) -> Duration {
        let ejected = Duration::from_millis(
            self.down_until
                .load(Ordering::Acquire)
                .saturating_sub(ms_since_epoch(now)),
        );
        ejected.max(self.cooldown.left(now))
    }

    /// Within a provider's `Retry-After`.
    pub fn cooling(&self, now: Instant) -> bool {
        self.cooldown.active(now)
    }

    fn usable(&self, now: Instant) -> bool {
        if self.cooling(now) {
            return false;
        }
        match self.circuit(now) {
            Circuit::Closed => true,
            Circuit::HalfOpen => !self.probing.load(Ordering::Acquire),
            Circuit::Open => false,
        }
    }

    /// Start a request on this target; `None` if it may not take one now (it is
    /// down, or half-open with its probe already in flight). The guard counts it
    /// in flight until dropped.
    pub fn begin(&self, now: Instant) -> Option<Attempt<'_>> {
        if self.cooling(now) {
            return None;
        }
        let probe = match self.circuit(now) {
            Circuit::Open => return None,
            Circuit::Closed => false,
            Circuit::HalfOpen => {
                if self
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return None;
                }
                true
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Attempt { state: self, probe })
    }

    /// Start a request on an ejected target because nothing else is left (see
    /// [`Route::plan`]); still refused within a `Retry-After`.
    pub fn begin_anyway(&self, now: Instant) -> Option<Attempt<'_>> {
        if self.cooling(now) {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Attempt {
            state: self,
            probe: false,
        })
    }

    /// A successful exchange, with its time to first byte/token.
    fn succeed(&self, ttft: Option<Duration>) {
        self.failures.store(0, Ordering::Relaxed);
        // A probe that worked closes the circuit; a Retry-After cooldown runs its course.
        if self.ejected.swap(false, Ordering::AcqRel) {
            self.down_until.store(0, Ordering::Release);
        }
        if let Some(t) = ttft {
            let sample = t.as_micros() as f64;
            let _ = self
                .ewma_us
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    let old = f64::from_bits(old);
                    let new = if old == 0.0 {
                        sample
                    } else {
                        old + EWMA_ALPHA * (sample - old)
                    };
                    Some(new.max(1.0).to_bits())
                });
        }
    }

    /// A failed exchange; returns true if it ejected the target.
    fn fail(&self, now: Instant, probe: bool) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if probe || n >= self.policy.eject_after {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected.store(true, Ordering::Release);
            self.push_down_until(ms_since_epoch(now + self.policy.cooldown));
            self.ejections.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Keep the target out until at least `now + d` (a provider's `Retry-After`).
    pub fn cool_down(&self, now: Instant, d: Duration) {
        self.cooldown.extend(now, d);
    }

    fn push_down_until(&self, until: u64) {
        self.down_until.fetch_max(until, Ordering::AcqRel);
    }
}

/// One request on a target; report how it went, or drop it to count it as neither.
#[derive(Debug)]
pub struct Attempt<'a> {
    state: &'a TargetState,
    probe: bool,
}

impl Attempt<'_> {
    /// The exchange worked (the provider answered, even with a client error).
    pub fn succeed(self, ttft: Option<Duration>) {
        self.state.succeed(ttft);
    }

    /// The exchange failed (connect, timeout, 5xx…); true if that ejected the target.
    pub fn fail(self, now: Instant) -> bool {
        self.state.fail(now, self.probe)
    }

    /// Whether this request is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            self.state.probing.store(false, Ordering::Release);
        }
    }
}

/// What a route needs of its targets.
pub trait Routable {
    /// The target's runtime state.
    fn state(&self) -> &TargetState;
    /// A stable identity, for consistent hashing.
    fn hash_id(&self) -> &str;
}

impl<T: Routable> Routable for std::sync::Arc<T> {
    fn state(&self) -> &TargetState {
        (**self).state()
    }
    fn hash_id(&self) -> &str {
        (**self).hash_id()
    }
}

/// A model's targets grouped into tiers, ready for planning.
#[derive(Debug)]
pub struct Route<T> {
    tiers: Vec<Tier<T>>,
    strategy: Strategy,
}

#[derive(Debug)]
struct Tier<T> {
    targets: Vec<T>,
    weights: Vec<u64>,
    /// Running sum of weights.
    cumulative: Vec<u64>,
    /// Weighted round-robin position.
    next: AtomicU64,
}

impl<T: Routable> Route<T> {
    /// Build from `(priority, weight, target)`; weights of 0 count as 1.
    pub fn new(mut targets: Vec<(u32, u32, T)>, strategy: Strategy) -> Route<T> {
        targets.sort_by_key(|(p, _, _)| *p);
        let mut tiers: Vec<(u32, Tier<T>)> = Vec::new();
        for (priority, weight, t) in targets {
            let w = u64::from(weight.max(1));
            match tiers.last_mut() {
                Some((p, tier)) if *p == priority => {
                    let last = tier.cumulative.last().copied().unwrap_or(0);
                    tier.cumulative.push(last + w);
                    tier.weights.push(w);
                    tier.targets.push(t);
                }
                _ => tiers.push((
                    priority,
                    Tier {
                        targets: vec![t],
                        weights: vec![w],
                        cumulative: vec![w],
                        next: AtomicU64::new(0),
                    },
                )),
            }
        }
        Route {
            tiers: tiers.into_iter().map(|(_, t)| t).collect(),
            strategy,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Every target, tier by tier.
    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.tiers.iter().flat_map(|t| t.targets.iter())
    }

    /// The targets to try, in order: each tier's usable targets ordered by the
    /// strategy, tier after tier. `hash_key` feeds [`Strategy::ConsistentHash`].
    ///
    /// When passive health has ejected every target, ejection protects nothing
    /// any more: the plan then holds the ejected targets (not those within a
    /// provider's `Retry-After`) and returns true — start those with
    /// [`TargetState::begin_anyway`]. (Envoy calls this panic routing.)
    pub fn plan<'a>(&'a self, hash_key: Option<&[u8]>, now: Instant, out: &mut Vec<&'a T>) -> bool {
        self.plan_usable(hash_key, now, out);
        if !out.is_empty() {
            return false;
        }
        out.extend(self.targets().filter(|t| !t.state().cooling(now)));
        !out.is_empty()
    }

    fn plan_usable<'a>(&'a self, hash_key: Option<&[u8]>, now: Instant, out: &mut Vec<&'a T>) {
        out.clear();
        for tier in &self.tiers {
            let start = out.len();
            let n = tier.targets.len();
            match self.strategy {
                Strategy::ConsistentHash if hash_key.is_some() => {
                    let key = hash_key.unwrap_or_default();
                    let mut scored: Vec<(f64, usize)> = (0..n)
                        .filter(|&i| tier.targets[i].state().usable(now))
                        .map(|i| {
                            (
                                hrw_score(key, tier.targets[i].hash_id(), tier.weights[i]),
                                i,
                            )
                        })
                        .collect();
                    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                    out.extend(scored.into_iter().map(|(_, i)| &tier.targets[i]));
                    continue;
                }
                _ => {}
            }
            // Weighted round robin order: the slot's target first, then the rest in turn.
            let total = tier.cumulative.last().copied().unwrap_or(1).max(1);
            let slot = tier.next.fetch_add(1, Ordering::Relaxed) % total;
            let first = tier.cumulative.partition_point(|&c| c <= slot);
            for k in 0..n {
                let t = &tier.targets[(first + k) % n];
                if t.state().usable(now) {
                    out.push(t);
                }
            }
            let tier_plan = &mut out[start..];
            match self.strategy {
                // Stable sorts keep the round-robin order among equals.
                Strategy::LeastInFlight => tier_plan.sort_by_key(|t| t.state().in_flight()),
                Strategy::Latency => tier_plan.sort_by_key(|t| t.state().latency()),
                Strategy::Weighted | Strategy::ConsistentHash => {}
            }
        }
    }

    /// When every target is out: how long until the first may be tried again.
    pub fn retry_in(&self, now: Instant) -> Duration {
        self.targets()
            .map(|t| t.state().retry_in(now))
            .min()
            .unwrap_or_default()
    }
}

/// Rendezvous score, weighted: `-w / ln(u)` with `u` uniform in (0, 1) from a hash.
fn hrw_score(key: &[u8], id: &str, weight: u64) -> f64 {
    // FNV-1a then a murmur finalizer: cheap, stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain([0xffu8].iter()).chain(id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight as f64) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T(&'static str, TargetState);
    impl Routable for T {
        fn state(&self) -> &TargetState {
            &self.1
        }
        fn hash_id(&self) -> &str {
            self.0
        }
    }
    fn t(name: &'static str) -> T {
        T(name, TargetState::new(HealthPolicy::default()))
    }

    fn first(r: &Route<T>, key: Option<&[u8]>) -> &'static str {
        let mut v = Vec::new();
        r.plan(key, Instant::now(), &mut v);
        v.first().map_or("-", |t| t.0)
    }

    #[test]
    fn weighted_round_robin_is_exact_and_tiers_follow() {
        let r = Route::new(
            vec![(1, 1, t("backup")), (0, 3, t("a")), (0, 1, t("b"))],
            Strategy::Weighted,
        );
        let mut counts = [0; 2];
        for _ in 0..4000 {
            match first(&r, None) {
                "a" => counts[0] += 1,
                "b" => counts[1] += 1,
                other => panic!("{other}"),
            }
        }
        assert_eq!(counts, [3000, 1000]);
        let mut v = Vec::new();
        r.plan(None, Instant::now(), &mut v);
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].0, "backup");
    }

    #[test]
    fn ejection_half_open_and_recovery() {
        let s = TargetState::new(HealthPolicy {
            eject_after: 2,
            cooldown: Duration::from_millis(50),
        });
        let now = Instant::now();
        assert!(!s.begin(now).unwrap().fail(now));
        assert!(s.begin(now).unwrap().fail(now));
        assert_eq!(s.circuit(now), Circuit::Open);
        assert!(s.begin(now).is_none());
        let later = now + Duration::from_millis(60);
        assert_eq!(s.circuit(later), Circuit::HalfOpen);
        let probe = s.begin(later).unwrap();
        assert!(probe.is_probe());
        // Only one probe at a time.
        assert!(s.begin(later).is_none());
        // A failed probe ejects again at once.
        assert!(probe.fail(later));
        assert_eq!(s.circuit(later), Circuit::Open);
        let later = later + Duration::from_millis(60);
        s.begin(later)
            .unwrap()
            .succeed(Some(Duration::from_millis(5)));
        assert_eq!(s.circuit(later), Circuit::Closed);
        assert_eq!(s.ejections(), 2);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn cooldown_and_plans_skip_the_unusable() {
        let r = Route::new(
            vec![(0, 1, t("a")), (0, 1, t("b")), (1, 1, t("c"))],
            Strategy::Weighted,
        );
        let now = Instant::now();
        r.tiers[0].targets[0]
            .1
            .cool_down(now, Duration::from_secs(2));
        for _ in 0..10 {
            let mut v = Vec::new();
            r.plan(None, now, &mut v);
            assert_eq!(v.iter().map(|t| t.0).collect::<Vec<_>>(), ["b", "c"]);
        }
        r.tiers[0].targets[1]
            .1
            .cool_down(now, Duration::from_secs(1));
        r.tiers[1].targets[0]
            .1
            .cool_down(now, Duration::from_secs(3));
        let mut v = Vec::new();
        r.plan(None, now, &mut v);
        assert!(v.is_empty());
        let d = r.retry_in(now);
        assert!(
            d <= Duration::from_secs(1) && d > Duration::from_millis(900),
            "{d:?}"
        );
        // A cooled-down target that has not failed is simply back afterwards.
        assert_eq!(
            r.tiers[0].targets[1]
                .1
                .circuit(now + Duration::from_secs(1)),
            Circuit::Closed
        );
    }

    #[test]
    fn all_ejected_means_panic_routing_but_retry_after_holds() {
        let r = Route::new(vec![(0, 1, t("a")), (1, 1, t("b"))], Strategy::Weighted);
        let now = Instant::now();
        for tier in &r.tiers {
            let s = &tier.targets[0].1;
            for _ in 0..3 {
                s.begin(now).unwrap().fail(now);
            }
            assert_eq!(s.circuit(now), Circuit::Open);
        }
        let mut v = Vec::new();
        assert!(r.plan(None, now, &mut v), "panic plan");
        assert_eq!(v.iter().map(|t| t.0).collect::<Vec<_>>(), ["a", "b"]);
        assert!(v[0].1.begin(now).is_none());
        assert!(v[0].1.begin_anyway(now).is_some());
        r.tiers[0].targets[0]
            .1
            .cool_down(now, Duration::from_secs(5));
        assert!(r.plan(None, now, &mut v));
        assert_eq!(v.iter().map(|t| t.0).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn least_in_flight_and_latency_prefer_the_idle_and_the_fast() {
        let r = Route::new(
            vec![(0, 1, t("a")), (0, 1, t("b"))],
            Strategy::LeastInFlight,
        );
        let now = Instant::now();
        let busy = r.tiers[0].targets[0].1.begin(now).unwrap();
        for _ in 0..10 {
            assert_eq!(first(&r, None), "b");
        }
        drop(busy);
        let r = Route::new(
            vec![(0, 1, t("slow")), (0, 1, t("fast"))],
            Strategy::Latency,
        );
        r.tiers[0].targets[0]
            .1
            .begin(now)
            .unwrap()
            .succeed(Some(Duration::from_millis(300)));
        // Untried targets go first, then the lowest estimate.
        assert_eq!(first(&r, None), "fast");
        r.tiers[0].targets[1]
            .1
            .begin(now)
            .unwrap()
            .succeed(Some(Duration::from_millis(20)));
        for _ in 0..10 {
            assert_eq!(first(&r, None), "fast");
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads() {
        let r = Route::new(
            vec![(0, 1, t("a")), (0, 1, t("b")), (0, 1, t("c"))],
            Strategy::ConsistentHash,
        );
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            let key = format!("session-{i}");
            let f = first(&r, Some(key.as_bytes()));
            assert_eq!(f, first(&r, Some(key.as_bytes())), "sticky");
            *counts.entry(f).or_insert(0) += 1;
        }
        for (k, n) in &counts {
            assert!((800..1200).contains(n), "{k}: {n}");
        }
        // Losing a target moves only its keys.
        let now = Instant::now();
        let before: Vec<&str> = (0..300)
            .map(|i| first(&r, Some(format!("s{i}").as_bytes())))
            .collect();
        r.tiers[0].targets[2]
            .1
            .cool_down(now, Duration::from_secs(5));
        for (i, b) in before.iter().enumerate() {
            let after = first(&r, Some(format!("s{i}").as_bytes()));
            if *b != "c" {
                assert_eq!(after, *b);
            } else {
                assert_ne!(after, "c");
            }
        }
    }
}
