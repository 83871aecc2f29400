//! The data plane: the one Pingora `ProxyHttp` implementation, a thin
//! dispatcher over the crates that own each concern.
//!
//! One request through the hooks (see `docs/architecture.md`):
//!
//! 1. `request_filter` runs the named steps in order — [`steps::route`]
//!    (endpoint), [`steps::authenticate`] (key → principal), read and parse the
//!    body once, [`steps::authorize`] (model access), [`steps::admit`] (token
//!    buckets, reserving estimated tokens), [`steps::choose_target`] (what
//!    `upstream_peer` decides in a plain proxy), [`steps::rewrite_request`]
//!    (provider translation) — then drives the upstream exchange itself
//!    ([`exchange`]), rewriting the response or stream chunk by chunk
//!    (the `response_body_filter` step) and answers the client. It returns
//!    `Ok(true)`: Pingora's own upstream phase is skipped, because Pingora can
//!    only forward a body it has consumed from a 64 KiB retry buffer
//!    (ADR 0001).
//! 2. `logging` is the accounting step: token reconciliation, metrics, access log.

pub mod ctx;
pub mod exchange;
pub mod gateway;
pub mod respond;
pub mod snapshot;
pub mod steps;

pub use ctx::RequestCtx;
pub use gateway::Gateway;
pub use snapshot::{LimiterRegistry, SharedSnapshot, Snapshot};
