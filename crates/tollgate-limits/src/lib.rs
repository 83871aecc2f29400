//! Resource limits on the hot path: token buckets, concurrency caps and USD
//! budgets, layered per key, team, model and globally.
//!
//! `pingora-limits::Rate` estimates counts over fixed windows with a
//! count-min sketch: it over-counts on collisions and cannot say when capacity
//! returns, so it cannot produce an honest `Retry-After` or
//! `x-ratelimit-remaining-*`. A bucket per scope and limit, each behind its own
//! small lock (never a global one), gives exact answers for a few nanoseconds.
//!
//! Token limits are enforced on an estimate reserved up front and reconciled
//! with the real usage when the response ends ([`Layers::finish`]). Budgets
//! work the same way in dollars ([`BudgetTracker`]).
//!
//! This crate holds state for one process; sharing it between nodes is the
//! job of a backend over Redis (see `docs/cluster.md`).

mod bucket;
mod budget;
mod layers;

pub use bucket::{format_reset, Refusal, Status, TokenBucket};
pub use budget::{
    month_index, period_starts, Budget, BudgetRefusal, BudgetStatus, BudgetTracker, Period,
};
pub use layers::{
    Admission, History, Layer, Layers, LimitKind, LimitSet, Limits, OnFailure, Rejection,
};
