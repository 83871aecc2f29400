//! The admin listener: `GET /metrics` (Prometheus text) and `GET /healthz`.
//!
//! It runs as its own Pingora service on a separate address so operators can
//! keep it off the public interface.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use tollgate_metrics::Metrics;
use tollgate_schema::ApiError;

/// The admin HTTP app.
pub struct AdminApp {
    metrics: Arc<Metrics>,
}

impl AdminApp {
    /// An admin app exporting these metrics.
    pub fn new(metrics: Arc<Metrics>) -> AdminApp {
        AdminApp { metrics }
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.encode(),
            ),
            ("GET", "/healthz") => reply(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            (_, "/metrics" | "/healthz") => reply(
                405,
                "application/json",
                ApiError::method_not_allowed(method.as_str(), &path, "GET").to_json(),
            ),
            _ => reply(
                404,
                "application/json",
                ApiError::unknown_path(method.as_str(), &path).to_json(),
            ),
        }
    }
}
