//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`, and
//! the admin API under `/admin/v1/` — teams, keys, usage, targets — documented in
//! `docs/admin-api.md` and `docs/admin-api.openapi.json`.
//!
//! It runs as its own Pingora service on a separate address so operators can
//! keep it off the public interface. The admin API needs the admin token
//! (`Authorization: Bearer …`), stored only as a hash and compared in constant
//! time; `/metrics` and `/healthz` are open so scrapers and probes need no
//! secret. Every write goes to the store and then asks the policy sync to
//! apply it at once, so this node enforces it immediately and every other
//! node within a poll interval.

mod api;
mod apis;
mod body;

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use tollgate_proxy::App;
use tollgate_schema::ApiError;

pub use api::OPENAPI;

/// The admin HTTP app.
pub struct AdminApp {
    app: Arc<App>,
}

impl AdminApp {
    /// An admin app over the gateway's shared state.
    pub fn new(app: Arc<App>) -> AdminApp {
        AdminApp { app }
    }
}

/// A response with a body and its length.
pub(crate) fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

/// An OpenAI-shaped error response.
pub(crate) fn error(e: &ApiError) -> Response<Vec<u8>> {
    reply(e.status, "application/json", e.to_json())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                self.app.refresh_gauges();
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.app.metrics.encode(),
                )
            }
            ("GET", "/healthz") => reply(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            (_, "/metrics" | "/healthz") => {
                error(&ApiError::method_not_allowed(method.as_str(), &path, "GET"))
            }
            (_, p) if p.starts_with("/admin/") => api::handle(&self.app, session).await,
            _ => error(&ApiError::unknown_path(method.as_str(), &path)),
        }
    }
}
