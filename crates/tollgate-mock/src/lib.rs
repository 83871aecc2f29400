//! `tollgate-mock`: a fast, scriptable mock LLM provider for Tollgate's tests
//! and benchmarks.
//!
//! This crate owns the mock upstream: an HTTP/1.1 (keep-alive) server on
//! tokio + hyper that speaks four wire formats byte for byte:
//!
//! - **OpenAI** — chat completions (plain and SSE-streamed), embeddings (float
//!   and base64) and the model list on `/v1/…`, and the same on the Azure
//!   OpenAI paths `/openai/deployments/{deployment}/…`;
//! - **Anthropic Messages** — `POST /v1/messages`, plain and streamed as typed
//!   events (`message_start` … `message_stop`), with Anthropic's error shape;
//! - **Gemini** — `POST /{v1beta|v1}/models/{model}:generateContent`,
//!   `:streamGenerateContent` (`?alt=sse`) and `:batchEmbedContents`, with
//!   Google's error shape.
//!
//! Replies are deterministic functions of the request, so tests can assert on
//! them. Requests are validated the way each real API validates them cheaply
//! (required fields, roles, unknown fields, auth headers), so a translation
//! bug in the gateway surfaces as the provider's own 400.
//!
//! Tests make it misbehave per request with directives (see [`script`]):
//! a `@key=value,…` suffix on the model (for Gemini, on the model path
//! segment, percent-encoded) or a `[[mock:key=value,…]]` marker in the last
//! (user) message — error statuses in each format's error shape,
//! `retry-after`, delays, time-to-first-token, gaps, byte-level fragmentation,
//! hangs, mid-body resets, tool calls and mid-stream errors.
//!
//! It records what arrived ([`MockServer::requests`], or
//! `GET`/`DELETE /__mock/requests` for non-Rust tests).
//!
//! Layout: `server` (accept loop, routing, recording), one module per wire
//! format (`openai`, `anthropic`, `gemini`), `common` (reply text, stream
//! pieces, embeddings, token counts shared by the formats), `script`
//! (directives), `body` (paced response bodies), `record` (recorded requests).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mock = tollgate_mock::MockServer::start(tollgate_mock::MockConfig::default()).await?;
//! let url = format!("{}/v1/chat/completions", mock.base_url());
//! # let _ = url;
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod anthropic;
mod body;
mod common;
mod gemini;
mod openai;
mod record;
pub mod script;
mod server;

pub use record::RecordedRequest;

use server::Shared;

/// How a mock server behaves.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// When set, requests must carry the key the way each API takes it:
    /// `Authorization: Bearer <key>` (OpenAI paths, else 401), `api-key: <key>`
    /// (Azure paths, else 401), `x-api-key: <key>` (Anthropic, else 401), or
    /// `x-goog-api-key: <key>` / `?key=<key>` (Gemini: 403 when missing, 400
    /// `API_KEY_INVALID` when wrong).
    pub api_key: Option<String>,
    /// How many recent requests to keep for inspection (0 keeps none).
    pub record_limit: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            api_key: None,
            record_limit: 32,
        }
    }
}

/// A running mock server on the current tokio runtime. Dropping it stops
/// accepting and closes its open connections.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl MockServer {
    /// Bind `127.0.0.1:0` and serve on the current tokio runtime.
    pub async fn start(config: MockConfig) -> std::io::Result<MockServer> {
        MockServer::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Bind `addr` and serve on the current tokio runtime.
    pub async fn start_on(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(config);
        let accept = tokio::spawn(server::accept_loop(listener, Arc::clone(&shared)));
        Ok(MockServer {
            addr,
            shared,
            accept,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, with loopback substituted for an unspecified host.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}")
    }

    /// The recorded requests, most recent last, at most `record_limit`.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.requests()
    }

    /// Total requests served (not capped by `record_limit`, not reset by
    /// [`clear`](Self::clear); `/__mock/…` requests are not counted).
    pub fn request_count(&self) -> u64 {
        self.shared.recorder.count()
    }

    /// Forget the recorded requests.
    pub fn clear(&self) {
        self.shared.recorder.clear();
    }

    /// Client connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.shut_down();
    }
}

/// Serve forever on an already-bound listener (used by the gateway binary and
/// the CLI). Spawns one task per connection on the current runtime.
pub async fn serve(listener: TcpListener, config: MockConfig) -> std::io::Result<()> {
    let shared = Shared::new(config);
    server::accept_loop(listener, shared).await;
    Ok(())
}
