//! Per-request state carried through the hooks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_limits::{Admission, Layers};
use tollgate_schema::Usage;

use crate::policy::{KeyEntry, TeamEntry};
use crate::snapshot::{ModelEntry, Snapshot, TargetEntry};

/// Which API a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Operation {
    /// Not routed (yet).
    #[default]
    None,
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`, `GET /v1/models/{id}`.
    Models,
    /// `POST /apis/{name}[/{version}]`: a prompt API call.
    Api,
    /// `GET /catalog`.
    Catalog,
    /// `GET|POST /catalog/{name}/subscription`.
    Subscription,
    /// `GET /openapi.json`, `GET /apis/{name}/{version}/openapi.json`.
    OpenApi,
}

impl Operation {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::None => "none",
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
            Operation::Models => "models",
            Operation::Api => "api",
            Operation::Catalog => "catalog",
            Operation::Subscription => "subscription",
            Operation::OpenApi => "openapi",
        }
    }
}

/// What the hooks learn about one request.
pub struct RequestCtx {
    /// When the request header was received.
    pub start: Instant,
    /// Gateway request id, echoed as `x-request-id`.
    pub request_id: String,
    /// The snapshot this request runs on, loaded once.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The endpoint.
    pub op: Operation,
    /// The authenticated key.
    pub key: Option<Arc<KeyEntry>>,
    /// The key's team, if it names one that exists.
    pub team: Option<Arc<TeamEntry>>,
    /// The limit layers this request passed (or is reported against).
    pub layers: Layers,
    /// Set when the shared backend (Redis) admitted the request: settle there.
    pub shared_layers: Option<crate::shared::HeldLayers>,
    /// Dollars reserved against the key's and team's budgets.
    pub budget_reserved: Option<f64>,
    /// Set when the budgets were reserved in the shared backend: settle there.
    pub shared_budgets: Option<crate::shared::HeldBudgets>,
    /// The prompt API called, if any.
    pub api: Option<Arc<tollgate_apis::Api>>,
    /// The public model.
    pub model: Option<Arc<ModelEntry>>,
    /// The chosen target.
    pub target: Option<Arc<TargetEntry>>,
    /// Whether the response is a stream.
    pub stream: bool,
    /// What the limits admitted.
    pub admission: Option<Admission>,
    /// Usage, once known.
    pub usage: Option<Usage>,
    /// Time to first token (streams).
    pub ttft: Option<Duration>,
    /// When the upstream request was sent (gateway overhead ends here).
    pub upstream_sent: Option<Instant>,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Short machine-readable cause when something failed.
    pub error_kind: Option<&'static str>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            start: Instant::now(),
            request_id: new_request_id(),
            snapshot: None,
            op: Operation::None,
            key: None,
            team: None,
            layers: Layers::default(),
            shared_layers: None,
            budget_reserved: None,
            shared_budgets: None,
            api: None,
            model: None,
            target: None,
            stream: false,
            admission: None,
            usage: None,
            ttft: None,
            upstream_sent: None,
            status: 0,
            error_kind: None,
        }
    }
}

/// `req_` + 12 hex digits of Unix milliseconds + 12 random hex digits. The
/// time prefix makes ids ascend, so the ledger's primary-key index takes
/// appends: a batch dirties a few pages instead of one page per row, which
/// with random ids was most of the SQLite writer's I/O under load.
fn new_request_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let r: u64 = rand::random();
    format!(
        "req_{:012x}{:012x}",
        ms & 0xffff_ffff_ffff,
        r & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_ascend_and_differ() {
        let a = super::new_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_request_id();
        assert_eq!(a.len(), 28);
        assert!(a.starts_with("req_") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a < b, "{a} < {b}");
        let same_ms: std::collections::HashSet<String> =
            (0..1000).map(|_| super::new_request_id()).collect();
        assert_eq!(same_ms.len(), 1000);
    }
}
