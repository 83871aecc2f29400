//! Provider translation, free of Pingora so it can be tested on bytes.
//!
//! For each provider kind this crate owns: the upstream path and credential
//! headers, the request body translated from the unified (OpenAI) schema, the
//! response body translated back, an incremental stream translator that turns
//! the provider's stream into OpenAI `chat.completion.chunk` events, and the
//! mapping of the provider's errors to OpenAI's error shape.
//!
//! Dispatch is by [`ProviderKind`] through `match`, not trait objects: the
//! set of kinds is closed and the per-request path stays free of boxing.

pub mod anthropic;
pub mod azure;
pub mod gemini;
pub mod openai;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
pub use tollgate_config::ProviderKind;
use tollgate_schema::{ApiError, ChatRequest, EmbeddingsRequest, Usage};

/// What the gateway needs about the chosen target to build the upstream request.
#[derive(Clone, Copy, Debug)]
pub struct TargetCtx<'a> {
    /// Wire format.
    pub kind: ProviderKind,
    /// Path prefix of the provider's base URL (e.g. `/v1`), no trailing slash.
    pub base_path: &'a str,
    /// The model's name at the provider (Azure: the deployment).
    pub upstream_model: &'a str,
    /// Azure `api-version` / Anthropic `anthropic-version`.
    pub api_version: Option<&'a str>,
    /// `max_tokens` to send when the client set none and the provider requires one (Anthropic).
    pub default_max_tokens: u64,
}

/// An upstream request, ready to send.
#[derive(Debug, Default)]
pub struct UpstreamRequest {
    /// Path and query.
    pub path: String,
    /// JSON body.
    pub body: Vec<u8>,
    /// Whether the upstream will answer with a stream.
    pub stream: bool,
}

/// Context for translating a response back.
#[derive(Clone, Copy, Debug)]
pub struct ResponseCtx<'a> {
    /// The client asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// The model name the client used.
    pub public_model: &'a str,
    /// The model's name at the provider.
    pub upstream_model: &'a str,
    /// Unix seconds, for `created` where the provider gives none.
    pub now_unix: u64,
    /// A gateway request id, for response ids where the provider gives none.
    pub request_id: &'a str,
    /// Embeddings: the client asked for `encoding_format: "base64"`.
    pub embeddings_base64: bool,
    /// The gateway's prompt-token estimate, for providers that report no usage.
    pub estimated_prompt_tokens: u64,
}

/// A translated (or passed-through) non-streaming response body.
#[derive(Debug)]
pub struct Translated {
    /// The body for the client.
    pub body: Bytes,
    /// Usage, when the provider reported it.
    pub usage: Option<Usage>,
}

/// Credential and protocol headers for every request to a provider, built once at config load.
pub fn static_headers(
    kind: ProviderKind,
    api_key: Option<&str>,
    api_version: Option<&str>,
) -> Result<Vec<(HeaderName, HeaderValue)>, http::header::InvalidHeaderValue> {
    let mut out = Vec::with_capacity(2);
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            if let Some(k) = api_key {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}"))?;
                v.set_sensitive(true);
                out.push((http::header::AUTHORIZATION, v));
            }
        }
        ProviderKind::Azure => {
            if let Some(k) = api_key {
                let mut v = HeaderValue::from_str(k)?;
                v.set_sensitive(true);
                out.push((HeaderName::from_static("api-key"), v));
            }
        }
        ProviderKind::Anthropic => {
            if let Some(k) = api_key {
                let mut v = HeaderValue::from_str(k)?;
                v.set_sensitive(true);
                out.push((HeaderName::from_static("x-api-key"), v));
            }
            out.push((
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_str(api_version.unwrap_or("2023-06-01"))?,
            ));
        }
        ProviderKind::Gemini => {
            if let Some(k) = api_key {
                let mut v = HeaderValue::from_str(k)?;
                v.set_sensitive(true);
                out.push((HeaderName::from_static("x-goog-api-key"), v));
            }
        }
    }
    Ok(out)
}

/// Build the upstream chat request.
pub fn chat_request(req: &ChatRequest<'_>, t: &TargetCtx<'_>) -> Result<UpstreamRequest, ApiError> {
    match t.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => openai::chat_request(req, t),
        ProviderKind::Azure => azure::chat_request(req, t),
        ProviderKind::Anthropic => anthropic::chat_request(req, t),
        ProviderKind::Gemini => gemini::chat_request(req, t),
    }
}

/// Build the upstream embeddings request.
pub fn embeddings_request(
    req: &EmbeddingsRequest<'_>,
    t: &TargetCtx<'_>,
) -> Result<UpstreamRequest, ApiError> {
    match t.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => openai::embeddings_request(req, t),
        ProviderKind::Azure => azure::embeddings_request(req, t),
        ProviderKind::Gemini => gemini::embeddings_request(req, t),
        ProviderKind::Anthropic => anthropic::embeddings_request(req, t),
    }
}

/// Translate a successful (2xx) non-streaming chat response.
pub fn chat_response(
    kind: ProviderKind,
    body: Bytes,
    ctx: &ResponseCtx<'_>,
) -> Result<Translated, ApiError> {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => openai::chat_response(body, ctx),
        ProviderKind::Azure => azure::chat_response(body, ctx),
        ProviderKind::Anthropic => anthropic::chat_response(body, ctx),
        ProviderKind::Gemini => gemini::chat_response(body, ctx),
    }
}

/// Translate a successful (2xx) embeddings response.
pub fn embeddings_response(
    kind: ProviderKind,
    body: Bytes,
    ctx: &ResponseCtx<'_>,
) -> Result<Translated, ApiError> {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            openai::embeddings_response(body, ctx)
        }
        ProviderKind::Azure => azure::embeddings_response(body, ctx),
        ProviderKind::Gemini => gemini::embeddings_response(body, ctx),
        ProviderKind::Anthropic => anthropic::embeddings_response(body, ctx),
    }
}

/// An upstream error (non-2xx), as the client will see it.
#[derive(Debug)]
pub struct ErrorOut {
    /// HTTP status for the client.
    pub status: u16,
    /// OpenAI-shaped JSON body.
    pub body: Bytes,
}

/// Map a provider's error response to OpenAI's shape, keeping its message.
pub fn error_response(kind: ProviderKind, status: u16, body: Bytes) -> ErrorOut {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            openai::error_response(status, body)
        }
        ProviderKind::Azure => azure::error_response(status, body),
        ProviderKind::Anthropic => anthropic::error_response(status, body),
        ProviderKind::Gemini => gemini::error_response(status, body),
    }
}

/// Something went wrong inside a stream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The provider's bytes did not frame or parse.
    #[error("malformed stream from provider: {0}")]
    Malformed(String),
}

/// An incremental stream translator, one per streaming response.
#[derive(Debug)]
pub enum StreamTranslator {
    /// OpenAI wire: re-framed events, usage chunk handled.
    OpenAi(openai::OpenAiStream),
    /// Azure OpenAI.
    Azure(azure::AzureStream),
    /// Anthropic Messages events.
    Anthropic(anthropic::AnthropicStream),
    /// Gemini `streamGenerateContent?alt=sse`.
    Gemini(gemini::GeminiStream),
}

macro_rules! each_stream {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            StreamTranslator::OpenAi($s) => $e,
            StreamTranslator::Azure($s) => $e,
            StreamTranslator::Anthropic($s) => $e,
            StreamTranslator::Gemini($s) => $e,
        }
    };
}

impl StreamTranslator {
    /// A translator for this provider kind.
    pub fn new(kind: ProviderKind, ctx: &ResponseCtx<'_>) -> Result<StreamTranslator, ApiError> {
        match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                Ok(StreamTranslator::OpenAi(openai::OpenAiStream::new(ctx)))
            }
            ProviderKind::Azure => Ok(StreamTranslator::Azure(azure::AzureStream::new(ctx))),
            ProviderKind::Anthropic => Ok(StreamTranslator::Anthropic(
                anthropic::AnthropicStream::new(ctx),
            )),
            ProviderKind::Gemini => Ok(StreamTranslator::Gemini(gemini::GeminiStream::new(ctx))),
        }
    }

    /// Feed upstream bytes; client bytes are appended to `out`.
    /// After an error the translator has written a final error event and `[DONE]`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        each_stream!(self, s => s.feed(input, out))
    }

    /// The upstream body ended; append whatever must close the client stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        each_stream!(self, s => s.finish(out))
    }

    /// Usage, once the provider reported it.
    pub fn usage(&self) -> Option<Usage> {
        each_stream!(self, s => s.usage())
    }

    /// Whether any content or tool-call delta has been emitted yet.
    pub fn first_token_seen(&self) -> bool {
        each_stream!(self, s => s.first_token_seen())
    }
}

/// Append one SSE `data:` event.
pub fn write_sse_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"data: ");
    write_data_lines(out, data);
    out.extend_from_slice(b"\n\n");
}

/// Append event data, continuing every embedded line break as a new `data:`
/// line: an upstream event with several `data:` lines must reach the client as
/// the same event, not as a stray line (or a forged `[DONE]`).
pub(crate) fn write_data_lines(out: &mut Vec<u8>, data: &[u8]) {
    let mut rest = data;
    while let Some(i) = memchr::memchr(b'\n', rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\ndata: ");
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// Append the OpenAI-shaped error event that ends a broken stream, then `[DONE]`.
pub fn write_stream_error(out: &mut Vec<u8>, err: &ApiError) {
    out.extend_from_slice(b"data: ");
    err.write_json(out);
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
}
