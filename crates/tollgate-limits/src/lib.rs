//! Rate limits: token buckets with exact per-key state.
//!
//! `pingora-limits::Rate` estimates counts over fixed windows with a
//! count-min sketch: it over-counts on collisions and cannot say when capacity
//! returns, so it cannot produce an honest `Retry-After` or
//! `x-ratelimit-remaining-*`. A bucket per key and limit, each behind its own
//! small lock (never a global one), gives exact answers for a few nanoseconds.
//!
//! Token limits are enforced on an estimate reserved up front and reconciled
//! with the real usage when the response ends ([`KeyLimiter::settle`]).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token bucket: `capacity` tokens, refilled continuously at `capacity / period`.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

/// Why a bucket refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refusal {
    /// Not enough tokens now; this long until there are.
    Wait(Duration),
    /// The request alone needs more than the bucket can ever hold.
    TooLarge,
}

impl TokenBucket {
    /// A full bucket of `capacity` that refills completely over `period`.
    pub fn new(capacity: u64, period: Duration, now: Instant) -> Self {
        let capacity = capacity as f64;
        TokenBucket {
            capacity,
            per_sec: capacity / period.as_secs_f64().max(1e-9),
            state: Mutex::new(BucketState {
                tokens: capacity,
                last: now,
            }),
        }
    }

    /// The configured capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    fn refill(&self, s: &mut BucketState, now: Instant) {
        let dt = now.saturating_duration_since(s.last).as_secs_f64();
        if dt > 0.0 {
            s.tokens = (s.tokens + dt * self.per_sec).min(self.capacity);
            s.last = now;
        }
    }

    /// Take `n` tokens, or say how long until they are there.
    pub fn try_take(&self, n: f64, now: Instant) -> Result<Status, Refusal> {
        if n > self.capacity {
            return Err(Refusal::TooLarge);
        }
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        if s.tokens >= n {
            s.tokens -= n;
            Ok(self.status_of(&s))
        } else {
            let missing = n - s.tokens;
            Err(Refusal::Wait(Duration::from_secs_f64(
                missing / self.per_sec,
            )))
        }
    }

    /// Give back (`delta > 0`) or charge (`delta < 0`) tokens after the fact.
    /// A charge may drive the bucket negative: the debt is repaid by refill time.
    pub fn adjust(&self, delta: f64, now: Instant) {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        s.tokens = (s.tokens + delta).min(self.capacity);
    }

    /// Remaining tokens and time until full.
    pub fn status(&self, now: Instant) -> Status {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        self.status_of(&s)
    }

    fn status_of(&self, s: &BucketState) -> Status {
        let missing = (self.capacity - s.tokens).max(0.0);
        Status {
            limit: self.capacity as u64,
            remaining: s.tokens.max(0.0).floor() as u64,
            reset: Duration::from_secs_f64(missing / self.per_sec),
        }
    }
}

/// A bucket's state as the `x-ratelimit-*` headers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Capacity.
    pub limit: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// Which limit of a key refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl LimitKind {
    /// For messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// A refusal with what the client needs to hear.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rejection {
    /// The limit that refused.
    pub kind: LimitKind,
    /// The refusal.
    pub refusal: Refusal,
    /// The limit's value.
    pub limit: u64,
    /// Tokens (or requests) asked for.
    pub requested: u64,
}

/// The limits of one key.
#[derive(Debug)]
pub struct KeyLimiter {
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
}

/// What was admitted and the header values that go with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// Request bucket after this request.
    pub requests: Option<Status>,
    /// Token bucket after the reservation.
    pub tokens: Option<Status>,
    /// Tokens reserved, to settle later.
    pub reserved: u64,
}

/// Limits for one key (per minute; `None` = unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl KeyLimiter {
    /// Fresh buckets for these limits.
    pub fn new(limits: KeyLimits, now: Instant) -> Self {
        KeyLimiter {
            rpm: limits.rpm.map(|c| TokenBucket::new(c, MINUTE, now)),
            tpm: limits.tpm.map(|c| TokenBucket::new(c, MINUTE, now)),
        }
    }

    /// The limits these buckets enforce.
    pub fn limits(&self) -> KeyLimits {
        KeyLimits {
            rpm: self.rpm.as_ref().map(TokenBucket::capacity),
            tpm: self.tpm.as_ref().map(TokenBucket::capacity),
        }
    }

    /// Admit one request that may use up to `estimated_tokens`.
    pub fn admit(&self, estimated_tokens: u64, now: Instant) -> Result<Admission, Rejection> {
        let requests = match &self.rpm {
            Some(b) => Some(b.try_take(1.0, now).map_err(|refusal| Rejection {
                kind: LimitKind::Requests,
                refusal,
                limit: b.capacity(),
                requested: 1,
            })?),
            None => None,
        };
        let tokens = match &self.tpm {
            Some(b) => match b.try_take(estimated_tokens as f64, now) {
                Ok(s) => Some(s),
                Err(refusal) => {
                    // The request was not admitted: it must not cost a request slot either.
                    if let Some(r) = &self.rpm {
                        r.adjust(1.0, now);
                    }
                    return Err(Rejection {
                        kind: LimitKind::Tokens,
                        refusal,
                        limit: b.capacity(),
                        requested: estimated_tokens,
                    });
                }
            },
            None => None,
        };
        Ok(Admission {
            requests,
            tokens,
            reserved: if self.tpm.is_some() {
                estimated_tokens
            } else {
                0
            },
        })
    }

    /// Replace a reservation with the real token count.
    pub fn settle(&self, reserved: u64, actual: u64, now: Instant) {
        if let Some(b) = &self.tpm {
            if reserved != actual {
                b.adjust(reserved as f64 - actual as f64, now);
            }
        }
    }

    /// Current state, for headers on responses that were not admitted through [`Self::admit`].
    pub fn status(&self, now: Instant) -> Admission {
        Admission {
            requests: self.rpm.as_ref().map(|b| b.status(now)),
            tokens: self.tpm.as_ref().map(|b| b.status(now)),
            reserved: 0,
        }
    }
}

/// Format a duration the way OpenAI's `x-ratelimit-reset-*` headers do: `6m0s`, `1s`, `20ms`.
pub fn format_reset(d: Duration, out: &mut String) {
    use std::fmt::Write;
    let ms = d.as_millis();
    if ms < 1000 {
        let _ = write!(out, "{ms}ms");
        return;
    }
    let total_s = d.as_secs_f64();
    let h = (total_s / 3600.0).floor() as u64;
    let m = ((total_s - h as f64 * 3600.0) / 60.0).floor() as u64;
    let s = total_s - h as f64 * 3600.0 - m as f64 * 60.0;
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s.fract() < 0.001 {
        let _ = write!(out, "{}s", s as u64);
    } else {
        let _ = write!(out, "{:.3}s", s);
        // Trim trailing zeros of the fraction: "1.500s" → "1.5s".
        while out.ends_with("0s") {
            out.truncate(out.len() - 2);
            out.push('s');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
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
        let s = b.status(t0 + Duration::from_secs(1));
        assert_eq!(s.remaining, 0);
        assert_eq!(s.reset, MINUTE);
    }

    #[test]
    fn tokens_reserved_and_settled() {
        let t0 = Instant::now();
        let l = KeyLimiter::new(
            KeyLimits {
                rpm: Some(10),
                tpm: Some(1000),
            },
            t0,
        );
        let a = l.admit(600, t0).unwrap();
        assert_eq!(a.tokens.unwrap().remaining, 400);
        assert_eq!(a.requests.unwrap().remaining, 9);
        let r = l.admit(600, t0).unwrap_err();
        assert_eq!(r.kind, LimitKind::Tokens);
        // The refused request gave its request slot back.
        assert_eq!(l.status(t0).requests.unwrap().remaining, 9);
        l.settle(600, 100, t0);
        assert_eq!(l.status(t0).tokens.unwrap().remaining, 900);
        assert!(l.admit(600, t0).is_ok());
        // Under-estimates become debt.
        l.settle(600, 1600, t0);
        assert_eq!(l.status(t0).tokens.unwrap().remaining, 0);
    }

    #[test]
    fn reset_format() {
        let f = |ms| {
            let mut s = String::new();
            format_reset(Duration::from_millis(ms), &mut s);
            s
        };
        assert_eq!(f(20), "20ms");
        assert_eq!(f(1000), "1s");
        assert_eq!(f(1500), "1.5s");
        assert_eq!(f(360_000), "6m0s");
        assert_eq!(f(3_723_000), "1h2m3s");
    }
}
