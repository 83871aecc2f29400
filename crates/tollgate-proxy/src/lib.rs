//! The data plane: the one Pingora `ProxyHttp` implementation, a thin
//! dispatcher over the crates that own each concern.
//!
//! One request through the hooks (see `docs/architecture.md`):
//!
//! 1. `request_filter` runs the named steps in order — [`steps::route`]
//!    (endpoint), [`steps::authenticate`] (key → principal), read and parse the
//!    body once, [`steps::authorize`] (model access), [`steps::admit`] (token
//!    buckets and concurrency caps of the key, team, model and global layers,
//!    reserving estimated tokens), [`steps::reserve_budget`] (USD budgets of
//!    key and team), [`steps::choose_target`] (what
//!    `upstream_peer` decides in a plain proxy), [`steps::rewrite_request`]
//!    (provider translation) — then drives the upstream exchange itself
//!    ([`exchange`]), rewriting the response or stream chunk by chunk
//!    (the `response_body_filter` step) and answers the client. It returns
//!    `Ok(true)`: Pingora's own upstream phase is skipped, because Pingora can
//!    only forward a body it has consumed from a 64 KiB retry buffer
//!    (ADR 0001).
//! 2. `logging` is the accounting step: token and budget reconciliation,
//!    metrics, access log, and one usage record queued for the [`ledger`].
//!
//! Keys and teams come from the [`policy`], which a background task keeps in
//! step with the store; the hot path never waits on the database.

pub mod access_log;
pub mod apis;
pub mod app;
pub mod ctx;
pub mod exchange;
pub mod gateway;
pub mod health;
pub mod ledger;
pub mod policy;
pub mod respond;
pub mod shared;
pub mod snapshot;
pub mod steps;

pub use app::{App, AppError, ReloadError, Reloaded};
pub use ctx::RequestCtx;
pub use gateway::Gateway;
pub use policy::{Policy, Registry, SharedPolicy};
pub use snapshot::{SharedSnapshot, Snapshot};
