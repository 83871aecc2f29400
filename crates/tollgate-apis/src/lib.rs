//! Prompt APIs: a model plus a prompt template published by a team as a REST
//! API of its own (`POST /apis/{name}/{version}`).
//!
//! This crate owns, free of Pingora so it is tested on values and bytes:
//! - the definition ([`ApiSpec`]: typed variables, templates, parameters, output
//!   mode and JSON Schema) and its checks, every error with its field path;
//! - templates ([`template`]): parsed once, rendered by copying values in as
//!   data, never re-parsed (no template injection);
//! - a call ([`Api::render`] → an OpenAI chat request; [`Api::respond`] and
//!   [`ApiStream`] → `{"result", "usage"}` or API events), JSON output validated
//!   against the schema;
//! - the lifecycle ([`Status`]: draft → published → deprecated → retired) and
//!   subscriptions ([`SubStatus`]), and who may call what ([`Catalog`]);
//! - OpenAPI 3.1 documents per API and per catalog ([`openapi`]).
//!
//! Storage (the store crate), the admin endpoints and the data-plane wiring
//! (the proxy crate) live elsewhere.

mod api;
mod catalog;
pub mod openapi;
mod spec;
mod stream;
pub mod template;

pub use api::{http_date, Api, Rendered, Source, State};
pub use catalog::{Access, Catalog, SubStatus, SubscriptionView};
pub use spec::{
    is_api_name, parse_date, version_number, ApiSpec, Compiled, Output, OutputMode, SpecError,
    SpecErrors, Status, VarType, Variable, ALLOWED_PARAMETERS,
};
pub use stream::ApiStream;
