//! One token bucket, and the reset format of OpenAI's headers.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token bucket: `limit` tokens per `period`, refilled continuously, holding at
/// most `capacity` (the burst; by default the whole period's worth).
#[derive(Debug)]
pub struct TokenBucket {
    limit: u64,
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
        TokenBucket::with_burst(capacity, capacity, period, now)
    }

    /// `limit` per `period`, but never more than `burst` at once.
    pub fn with_burst(limit: u64, burst: u64, period: Duration, now: Instant) -> Self {
        let capacity = burst.max(1) as f64;
        TokenBucket {
            limit,
            capacity,
            per_sec: limit.max(1) as f64 / period.as_secs_f64().max(1e-9),
            state: Mutex::new(BucketState {
                tokens: capacity,
                last: now,
            }),
        }
    }

    /// The most it holds at once.
    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// The nominal limit per period.
    pub fn limit(&self) -> u64 {
        self.limit
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

    /// Charge what was taken before this bucket existed (by an earlier process,
    /// from the usage ledger): `bins[i]` tokens taken `i` to `i + 1` bins of
    /// `bin` ago. The debt left now is the largest, over every recent window,
    /// of what was taken in it less what refilled since; each bin counts as
    /// charged at its newest edge, so the result errs on the stricter side.
    pub fn charge_history(&self, bins: &[f64], bin: Duration, now: Instant) {
        let mut taken = 0.0_f64;
        let mut debt = 0.0_f64;
        for (i, b) in bins.iter().enumerate() {
            taken += b;
            // Over the newest i + 1 bins, only the part after the oldest charge refills.
            debt = debt.max(taken - self.per_sec * bin.as_secs_f64() * i as f64);
        }
        if debt > 0.0 {
            self.adjust(-debt, now);
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
            limit: self.limit,
            remaining: s.tokens.max(0.0).floor() as u64,
            reset: Duration::from_secs_f64(missing / self.per_sec),
        }
    }
}

/// A bucket's state as the `x-ratelimit-*` headers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Status {
    /// Capacity.
    pub limit: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
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
mod history_tests {
    use super::*;

    #[test]
    fn history_charges_what_has_not_refilled_yet() {
        let now = Instant::now();
        // 60 per minute = 1 per second; 30 taken in the last second: 30 short
        // (less at most one second of refill, which this errs against).
        let b = TokenBucket::new(60, Duration::from_secs(60), now);
        b.charge_history(&[30.0], Duration::from_secs(1), now);
        assert!((b.status(now).remaining as f64 - 30.0).abs() <= 1.0);
        // 30 taken 50-51 s ago have refilled but for at most one second's worth.
        let b = TokenBucket::new(60, Duration::from_secs(60), now);
        let mut bins = vec![0.0; 60];
        bins[50] = 30.0;
        b.charge_history(&bins, Duration::from_secs(1), now);
        assert_eq!(b.status(now).remaining, 60, "refilled long ago");
        // Steady at the limit: refill kept up, the burst is (nearly) whole.
        let b = TokenBucket::new(60, Duration::from_secs(60), now);
        b.charge_history(&[1.0; 60], Duration::from_secs(1), now);
        assert!(b.status(now).remaining >= 59);
        // Twice the limit for a minute: empty now.
        let b = TokenBucket::new(60, Duration::from_secs(60), now);
        b.charge_history(&[2.0; 60], Duration::from_secs(1), now);
        assert_eq!(b.status(now).remaining, 0);
        // Nothing taken: full.
        let b = TokenBucket::new(60, Duration::from_secs(60), now);
        b.charge_history(&[], Duration::from_secs(1), now);
        assert_eq!(b.status(now).remaining, 60);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
