//! USD budgets per calendar day and month (UTC), with spend reserved on the
//! estimate at admission and settled on the real cost.

use parking_lot::Mutex;

/// A budget (`None` = no cap for that period).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budget {
    /// USD per UTC day.
    pub daily_usd: Option<f64>,
    /// USD per UTC calendar month.
    pub monthly_usd: Option<f64>,
    /// Percent of a budget at which the soft threshold is reached (default 80).
    pub soft_pct: Option<f64>,
}

impl Budget {
    /// No cap at all.
    pub fn is_unlimited(&self) -> bool {
        self.daily_usd.is_none() && self.monthly_usd.is_none()
    }
}

/// Which budget period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// The UTC day.
    Day,
    /// The UTC calendar month.
    Month,
}

impl Period {
    /// For messages and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Month => "monthly",
        }
    }
}

/// A budget that is spent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetRefusal {
    /// The period whose budget is spent.
    pub period: Period,
    /// The budget in USD.
    pub limit: f64,
    /// Spent so far this period (not counting requests in flight).
    pub spent: f64,
    /// Not spent yet, but the rest is reserved by requests in flight: it may
    /// come back when they finish.
    pub held_in_flight: bool,
}

/// Spend against a budget, for the admin API and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BudgetStatus {
    /// Spent today (UTC).
    pub day_spent: f64,
    /// Spent this month (UTC).
    pub month_spent: f64,
    /// Reserved by requests in flight.
    pub reserved: f64,
    /// The budget.
    pub budget: Budget,
}

impl BudgetStatus {
    /// What is left of the daily budget.
    pub fn day_remaining(&self) -> Option<f64> {
        self.budget.daily_usd.map(|b| (b - self.day_spent).max(0.0))
    }

    /// What is left of the monthly budget.
    pub fn month_remaining(&self) -> Option<f64> {
        self.budget
            .monthly_usd
            .map(|b| (b - self.month_spent).max(0.0))
    }

    /// Spent at least the soft threshold of either budget.
    pub fn soft_reached(&self) -> bool {
        let pct = self.budget.soft_pct.unwrap_or(80.0) / 100.0;
        self.budget
            .daily_usd
            .is_some_and(|b| self.day_spent >= b * pct)
            || self
                .budget
                .monthly_usd
                .is_some_and(|b| self.month_spent >= b * pct)
    }

    /// Either budget is spent.
    pub fn exhausted(&self) -> bool {
        self.budget.daily_usd.is_some_and(|b| self.day_spent >= b)
            || self
                .budget
                .monthly_usd
                .is_some_and(|b| self.month_spent >= b)
    }
}

#[derive(Debug)]
struct State {
    budget: Budget,
    day: i64,
    day_spent: f64,
    month: i64,
    month_spent: f64,
    reserved: f64,
}

impl State {
    fn roll(&mut self, now_unix: i64) {
        let day = now_unix.div_euclid(86_400);
        if day != self.day {
            self.day = day;
            self.day_spent = 0.0;
        }
        let month = month_index(now_unix);
        if month != self.month {
            self.month = month;
            self.month_spent = 0.0;
        }
    }
}

/// Spend of one key or team, in this process. Spend recorded before a restart
/// comes back from the usage ledger through [`BudgetTracker::new`].
#[derive(Debug)]
pub struct BudgetTracker {
    state: Mutex<State>,
}

impl BudgetTracker {
    /// A tracker that has already spent `day_spent` today and `month_spent` this month.
    pub fn new(budget: Budget, day_spent: f64, month_spent: f64, now_unix: i64) -> BudgetTracker {
        BudgetTracker {
            state: Mutex::new(State {
                budget,
                day: now_unix.div_euclid(86_400),
                day_spent,
                month: month_index(now_unix),
                month_spent,
                reserved: 0.0,
            }),
        }
    }

    /// The budget.
    pub fn budget(&self) -> Budget {
        self.state.lock().budget
    }

    /// Change the budget; what was spent stays spent.
    pub fn set_budget(&self, budget: Budget) {
        self.state.lock().budget = budget;
    }

    /// Admit a request estimated to cost `estimate`, reserving it; refused once
    /// what is spent plus what requests in flight reserved reaches a budget.
    /// So the overspend is bounded by one request's cost beyond its estimate.
    pub fn reserve(&self, estimate: f64, now_unix: i64) -> Result<(), BudgetRefusal> {
        let mut s = self.state.lock();
        s.roll(now_unix);
        for (period, limit, spent) in [
            (Period::Day, s.budget.daily_usd, s.day_spent),
            (Period::Month, s.budget.monthly_usd, s.month_spent),
        ] {
            if let Some(limit) = limit {
                if spent + s.reserved >= limit {
                    return Err(BudgetRefusal {
                        period,
                        limit,
                        spent,
                        held_in_flight: spent < limit,
                    });
                }
            }
        }
        s.reserved += estimate;
        Ok(())
    }

    /// Replace a reservation with the real cost.
    pub fn settle(&self, reserved: f64, actual: f64, now_unix: i64) {
        let mut s = self.state.lock();
        s.roll(now_unix);
        s.reserved = (s.reserved - reserved).max(0.0);
        s.day_spent += actual;
        s.month_spent += actual;
    }

    /// Record spend that was never reserved (a key without a budget still
    /// counts toward its team's, and spend learnt from elsewhere).
    pub fn charge(&self, cost: f64, now_unix: i64) {
        self.settle(0.0, cost, now_unix);
    }

    /// Take the spend of the current day and month as known elsewhere (the
    /// shared backend), for status and metrics; reservations are kept there.
    pub fn observe(&self, day_spent: f64, month_spent: f64, now_unix: i64) {
        let mut s = self.state.lock();
        s.roll(now_unix);
        s.day_spent = day_spent;
        s.month_spent = month_spent;
    }

    /// Spend now.
    pub fn status(&self, now_unix: i64) -> BudgetStatus {
        let mut s = self.state.lock();
        s.roll(now_unix);
        BudgetStatus {
            day_spent: s.day_spent,
            month_spent: s.month_spent,
            reserved: s.reserved,
            budget: s.budget,
        }
    }
}

/// Months since 1970-01 for a unix time (UTC): changes exactly at a calendar month.
pub fn month_index(unix: i64) -> i64 {
    // Howard Hinnant's civil-from-days.
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y - 1970) * 12 + (m - 1)
}

/// Unix seconds at the start of the UTC day and month containing `unix`.
pub fn period_starts(unix: i64) -> (i64, i64) {
    let day = unix.div_euclid(86_400) * 86_400;
    let m = month_index(unix);
    // Walk back from the day start to the first day of the month (at most 30 steps).
    let mut start = day;
    while month_index(start - 86_400) == m {
        start -= 86_400;
    }
    (day, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        assert_eq!(month_index(0), 0);
        // 2026-11-29T04:00:00Z and 2026-12-01T00:00:00Z
        assert_eq!(month_index(1_795_924_800), 56 * 12 + 10);
        assert_eq!(month_index(1_796_083_200), 56 * 12 + 11);
        assert_eq!(month_index(1_796_083_199), 56 * 12 + 10);
        // 2024-02-29 is in February.
        assert_eq!(month_index(1_709_164_800), 54 * 12 + 1);
        let (d, m) = period_starts(1_795_924_800);
        assert_eq!(d, 1_795_910_400);
        assert_eq!(m, 1_793_491_200); // 2026-11-01
    }

    #[test]
    fn budget_refuses_once_spent() {
        let now = 1_795_924_800;
        let b = BudgetTracker::new(
            Budget {
                daily_usd: Some(1.0),
                monthly_usd: Some(10.0),
                soft_pct: None,
            },
            0.5,
            9.0,
            now,
        );
        b.reserve(0.3, now).unwrap();
        // 0.5 spent + 0.3 in flight < 1.0: another may start.
        b.reserve(0.3, now).unwrap();
        let r = b.reserve(0.3, now).unwrap_err();
        assert_eq!(r.period, Period::Day);
        assert!(r.held_in_flight);
        b.settle(0.3, 0.1, now);
        b.settle(0.3, 0.1, now);
        let s = b.status(now);
        assert!((s.day_spent - 0.7).abs() < 1e-9);
        assert!(s.soft_reached() && !s.exhausted());
        // The next day the daily budget is fresh, the monthly one is not.
        let tomorrow = now + 86_400;
        b.reserve(0.3, tomorrow).unwrap();
        b.settle(0.3, 0.9, tomorrow);
        let r = b.reserve(0.1, tomorrow).unwrap_err();
        assert_eq!(r.period, Period::Month);
        assert!(!r.held_in_flight);
        assert!(b.status(tomorrow).exhausted());
    }
}
