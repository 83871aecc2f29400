//! Azure OpenAI: OpenAI's wire format behind deployment-scoped URLs.
//!
//! Requests and non-streaming responses are the OpenAI passthrough of [`crate::openai`]; only
//! the path differs (`/openai/deployments/{deployment}/…?api-version=…`). The stream and the
//! errors need real work, because Azure adds to the wire format in ways OpenAI clients do not
//! expect:
//!
//! - Streams open with a *prompt annotation* event: `choices: []`, no usage, and
//!   `prompt_filter_results`. A client written against OpenAI never sees empty `choices` unless
//!   it asked for usage, and code that reads `choices[0]` breaks on it. The event is not
//!   forwarded; its `prompt_filter_results` are moved onto the next chunk that has choices.
//! - Streams carry *annotation* chunks whose choices have no `delta` (after the last content
//!   chunk, and throughout with the asynchronous content filter). Those that only annotate text
//!   already sent are dropped; those that carry a `finish_reason` (the asynchronous filter's
//!   `content_filter` verdict) are forwarded with `delta: {}` and the stream's id, object,
//!   created and model filled in.
//! - Errors come as `{"error":{"code","message","innererror"}}` with a string `code` and no
//!   `type`; they are rewritten to OpenAI's `{"error":{"message","type","param","code"}}`.
//!
//! `prompt_filter_results` and per-choice `content_filter_results` are otherwise forwarded
//! untouched: OpenAI clients ignore members they do not know, and Azure-aware clients read them.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tollgate_schema::chat::RawObject;
use tollgate_schema::error::write_json_str;
use tollgate_schema::sse::SseDecoder;
use tollgate_schema::{ApiError, ChatRequest, EmbeddingsRequest, ErrorType, Usage};

use crate::openai::{self, OpenAiStream};
use crate::{
    write_stream_error, ErrorOut, ResponseCtx, StreamError, TargetCtx, Translated, UpstreamRequest,
};

/// The `api-version` used when the provider configures none: the inference API's GA release.
const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The first dated `api-version` that accepts `stream_options` (2024-09-01-preview; GA 2024-10-21).
const STREAM_OPTIONS_SINCE: &str = "2024-09-01";

// ---------------------------------------------------------------------------
// Paths.
// ---------------------------------------------------------------------------

/// A configuration problem the gateway cannot send upstream: the client is not at fault.
fn config_error(message: String) -> ApiError {
    ApiError::new(500, ErrorType::Api, message).with_code("invalid_provider_config")
}

/// The configured `api-version`, or the default; only characters that need no escaping in a query.
fn api_version<'a>(t: &TargetCtx<'a>) -> Result<&'a str, ApiError> {
    let v = t
        .api_version
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_API_VERSION);
    if v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        Ok(v)
    } else {
        Err(config_error(format!(
            "The Azure api-version {v:?} configured for this provider is not valid; use a version such as {DEFAULT_API_VERSION}."
        )))
    }
}

/// Whether a dated `api-version` is recent enough for `stream_options`. Versions that are not
/// dated (`preview`, `latest`, …) name the current API, which has it.
fn supports_stream_options(version: &str) -> bool {
    let dated = version.len() >= 10
        && version.bytes().take(10).enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    !dated || &version[..10] >= STREAM_OPTIONS_SINCE
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Append the deployment as one percent-encoded path segment. Characters that would change the
/// path's meaning (`/`, `\`, `?`, `#`, `%`, control characters) and the dot segments are refused
/// rather than escaped: no Azure deployment is named that way, so it is a configuration mistake.
fn push_deployment(path: &mut String, deployment: &str) -> Result<(), ApiError> {
    let refused = deployment.is_empty()
        || deployment == "."
        || deployment == ".."
        || deployment
            .bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b'/' | b'\\' | b'?' | b'#' | b'%'));
    if refused {
        return Err(config_error(format!(
            "The Azure deployment name {deployment:?} configured for this model cannot be used in a URL path."
        )));
    }
    for b in deployment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            path.push('%');
            path.push(char::from(HEX[usize::from(b >> 4)]));
            path.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Ok(())
}

/// `{base_path}/openai/deployments/{deployment}/{operation}?api-version={v}`. A base URL that
/// already ends in `/openai` is not given a second one.
fn deployment_path(t: &TargetCtx<'_>, operation: &str) -> Result<String, ApiError> {
    let version = api_version(t)?;
    let base = t.base_path.strip_suffix("/openai").unwrap_or(t.base_path);
    let mut path = String::with_capacity(
        base.len() + 3 * t.upstream_model.len() + operation.len() + version.len() + 40,
    );
    path.push_str(base);
    path.push_str("/openai/deployments/");
    push_deployment(&mut path, t.upstream_model)?;
    path.push('/');
    path.push_str(operation);
    path.push_str("?api-version=");
    path.push_str(version);
    Ok(path)
}

// ---------------------------------------------------------------------------
// Requests and responses.
// ---------------------------------------------------------------------------

/// Chat request: OpenAI's splice (the client's fields in order, `model` set to the deployment,
/// `stream_options.include_usage` forced on for streams) sent to the deployment's URL.
///
/// Azure routes by the deployment in the path and ignores `model` in the body; it is set to the
/// deployment anyway, which is also what Azure's newer `/openai/v1` API expects there. With a
/// dated `api-version` older than 2024-09-01, which rejects `stream_options`, the member is
/// dropped instead and streams report no usage.
pub fn chat_request(req: &ChatRequest<'_>, t: &TargetCtx<'_>) -> Result<UpstreamRequest, ApiError> {
    let path = deployment_path(t, "chat/completions")?;
    if req.stream && !supports_stream_options(api_version(t)?) {
        let mut model = Vec::with_capacity(t.upstream_model.len() + 2);
        write_json_str(&mut model, t.upstream_model);
        let mut body = Vec::with_capacity(
            req.raw
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + 64,
        );
        req.raw.write_with(
            &mut body,
            &[("model", Some(&model)), ("stream_options", None)],
        );
        return Ok(UpstreamRequest {
            path,
            body,
            stream: true,
        });
    }
    let mut up = openai::chat_request(req, t)?;
    up.path = path;
    Ok(up)
}

/// Embeddings request: the client's body with `model` set to the deployment, sent to the
/// deployment's `embeddings` URL.
pub fn embeddings_request(
    req: &EmbeddingsRequest<'_>,
    t: &TargetCtx<'_>,
) -> Result<UpstreamRequest, ApiError> {
    let path = deployment_path(t, "embeddings")?;
    let mut up = openai::embeddings_request(req, t)?;
    up.path = path;
    Ok(up)
}

/// A 2xx chat response: forwarded as is, `prompt_filter_results` and per-choice
/// `content_filter_results` included; usage read from it.
pub fn chat_response(body: Bytes, ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    openai::chat_response(body, ctx)
}

/// A 2xx embeddings response: forwarded as is; usage read from it.
pub fn embeddings_response(body: Bytes, ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    openai::embeddings_response(body, ctx)
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(borrow)]
    error: ErrorBody<'a>,
}

/// Azure's error object, or OpenAI's: every member optional, `code` a string or a number.
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    param: Option<&'a RawValue>,
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
}

/// The shape API Management answers with when it rejects a call before it reaches Azure OpenAI.
#[derive(Deserialize)]
struct GatewayError<'a> {
    #[serde(rename = "statusCode")]
    _status_code: u16,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

/// A JSON string as text, a number as its digits; anything else is no value.
fn scalar_text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let raw = raw?;
    match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<'_, str>>(raw.get()).ok(),
        Some(b'-' | b'0'..=b'9') => Some(Cow::Borrowed(raw.get())),
        _ => None,
    }
}

fn kind_for_status(status: u16) -> ErrorType {
    match status {
        401 => ErrorType::Authentication,
        403 => ErrorType::Permission,
        408 | 504 => ErrorType::Timeout,
        429 => ErrorType::RateLimit,
        400..=499 => ErrorType::InvalidRequest,
        503 => ErrorType::Overloaded,
        _ => ErrorType::Api,
    }
}

/// OpenAI's `type` for an Azure error without one: from the HTTP status, or inside a stream
/// (no status) from a numeric `code` such as `"429"`.
fn error_kind(status: Option<u16>, code: Option<&str>) -> ErrorType {
    if code == Some("content_filter") {
        return ErrorType::InvalidRequest;
    }
    let status = status.or_else(|| {
        code.and_then(|c| c.parse::<u16>().ok())
            .filter(|s| (400..=599).contains(s))
    });
    status.map_or(ErrorType::Api, kind_for_status)
}

/// Write `{"error":{"message","type","param","code"}}` for an Azure or OpenAI error object,
/// or `None` when it has no message to keep.
fn write_openai_error(out: &mut Vec<u8>, status: Option<u16>, e: &ErrorBody<'_>) -> Option<()> {
    let message = e.message.as_deref().filter(|m| !m.is_empty())?;
    let code = scalar_text(e.code);
    out.extend_from_slice(b"{\"error\":{\"message\":");
    write_json_str(out, message);
    out.extend_from_slice(b",\"type\":");
    match e.kind.as_deref().filter(|k| !k.is_empty()) {
        Some(kind) => write_json_str(out, kind),
        None => write_json_str(out, error_kind(status, code.as_deref()).as_str()),
    }
    out.extend_from_slice(b",\"param\":");
    match e
        .param
        .filter(|p| p.get().starts_with('"'))
        .and_then(|p| serde_json::from_str::<Cow<'_, str>>(p.get()).ok())
    {
        Some(p) => write_json_str(out, &p),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"code\":");
    match &code {
        Some(c) => write_json_str(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
    Some(())
}

/// A non-2xx response as OpenAI's error shape, status kept.
///
/// Azure's `{"error":{"code":"DeploymentNotFound","message":…}}` keeps its message and code and
/// gets a `type` from the status (`content_filter` is always `invalid_request_error`);
/// `innererror` (the content filter's verdicts) and Azure's `status` member are not forwarded.
/// An error already in OpenAI's shape keeps its `type` and `param`. API Management's
/// `{"statusCode","message"}` keeps its message. Anything else is wrapped, keeping the start of
/// the body.
pub fn error_response(status: u16, body: Bytes) -> ErrorOut {
    let mut out = Vec::with_capacity(body.len().min(1024) + 64);
    if let Ok(env) = serde_json::from_slice::<ErrorEnvelope<'_>>(&body) {
        if write_openai_error(&mut out, Some(status), &env.error).is_some() {
            return ErrorOut {
                status,
                body: Bytes::from(out),
            };
        }
    } else if let Ok(g) = serde_json::from_slice::<GatewayError<'_>>(&body) {
        if !g.message.is_empty() {
            let err = ApiError::new(status, kind_for_status(status), g.message.into_owned());
            return ErrorOut {
                status,
                body: Bytes::from(err.to_json()),
            };
        }
    }
    ErrorOut {
        status,
        body: Bytes::from(openai::wrap_foreign_error(status, &body).to_json()),
    }
}

// ---------------------------------------------------------------------------
// Stream.
// ---------------------------------------------------------------------------

/// The members of a stream event that decide what happens to it.
#[derive(Deserialize)]
struct EventPeek<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoicePeek<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
    #[serde(borrow, default)]
    prompt_filter_results: Option<Vec<&'a RawValue>>,
    /// The older name of `prompt_filter_results`.
    #[serde(borrow, default)]
    prompt_annotations: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    object: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChoicePeek<'a> {
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
}

/// Everything but the decoder, so events can be handled while the decoder is borrowed.
#[derive(Debug)]
struct Shaper {
    /// OpenAI's passthrough, fed one re-framed event at a time: usage accounting, the usage
    /// chunk the client did not ask for, `"usage":null` members, `[DONE]` and truncation.
    inner: OpenAiStream,
    /// Reused buffer for one re-framed event.
    frame: Vec<u8>,
    /// Reused buffer for one rewritten event.
    rewrite: Vec<u8>,
    /// Prompt filter results waiting for the next chunk with choices (raw array elements).
    pending_prompt: Vec<String>,
    /// The member they came in: `prompt_filter_results`, or `prompt_annotations` on old versions.
    pending_key: &'static str,
    /// The stream's id, `created` and model, for annotation chunks Azure sends with them empty:
    /// the last regular chunk's, else the gateway's request id, clock and upstream model.
    id: String,
    created: u64,
    model: String,
    /// A chunk with a delta has gone out.
    first_token: bool,
    /// `[DONE]` or an error has gone out; nothing more is read.
    done: bool,
}

/// The Azure OpenAI stream: OpenAI's passthrough with Azure's annotation events reshaped so that
/// an OpenAI client sees only `chat.completion.chunk`s it could have had from OpenAI.
#[derive(Debug)]
pub struct AzureStream {
    dec: SseDecoder,
    shaper: Shaper,
}

impl AzureStream {
    /// A translator for one response.
    pub fn new(ctx: &ResponseCtx<'_>) -> Self {
        AzureStream {
            dec: SseDecoder::default(),
            shaper: Shaper {
                inner: OpenAiStream::new(ctx),
                frame: Vec::with_capacity(1024),
                rewrite: Vec::new(),
                pending_prompt: Vec::new(),
                pending_key: "prompt_filter_results",
                id: format!("chatcmpl-{}", ctx.request_id),
                created: ctx.now_unix,
                model: ctx.upstream_model.to_owned(),
                first_token: false,
                done: false,
            },
        }
    }

    /// Feed upstream bytes; client bytes are appended to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let AzureStream { dec, shaper } = self;
        if shaper.done {
            return Ok(());
        }
        let mut failed = None;
        let res = dec.feed(input, |ev| {
            if shaper.done || failed.is_some() {
                return;
            }
            if let Err(e) = shaper.on_event(ev.data, out) {
                shaper.done = true;
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        match res {
            // Bytes after [DONE] that do not frame are of no consequence.
            Err(_) if shaper.done => Ok(()),
            Err(e) => {
                shaper.done = true;
                write_stream_error(out, &ApiError::bad_gateway(e.to_string()));
                Err(StreamError::Malformed(e.to_string()))
            }
            Ok(()) => Ok(()),
        }
    }

    /// The upstream body ended: nothing to add after `[DONE]`, else an error event and `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.shaper.done {
            return Ok(());
        }
        self.shaper.done = true;
        self.shaper.inner.finish(out)
    }

    /// Usage, once Azure reported it.
    pub fn usage(&self) -> Option<Usage> {
        self.shaper.inner.usage()
    }

    /// Whether a chunk with a content, tool-call or role delta has gone out.
    pub fn first_token_seen(&self) -> bool {
        self.shaper.first_token
    }
}

fn non_empty(s: &Option<Cow<'_, str>>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

impl Shaper {
    fn on_event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if data == b"[DONE]" {
            self.done = true;
            return self.forward(data, out);
        }
        // Not something this module understands: OpenAI's passthrough decides.
        let Ok(peek) = serde_json::from_slice::<EventPeek<'_>>(data) else {
            return self.forward(data, out);
        };
        let Some(choices) = &peek.choices else {
            if let Some(e) = &peek.error {
                let mut buf = std::mem::take(&mut self.rewrite);
                buf.clear();
                let res = match write_openai_error(&mut buf, None, e) {
                    Some(()) => self.forward(&buf, out),
                    None => self.forward(data, out),
                };
                self.rewrite = buf;
                return res;
            }
            return self.forward(data, out);
        };
        if choices.is_empty() {
            if peek.usage.is_some() {
                // The usage chunk.
                return self.forward(data, out);
            }
            // The prompt annotation: held for the next chunk with choices.
            let (key, results) = match (&peek.prompt_filter_results, &peek.prompt_annotations) {
                (Some(r), _) => ("prompt_filter_results", r),
                (None, Some(r)) => ("prompt_annotations", r),
                (None, None) => return Ok(()),
            };
            self.pending_key = key;
            self.pending_prompt
                .extend(results.iter().map(|r| r.get().to_owned()));
            return Ok(());
        }
        let with_delta = choices.iter().filter(|c| c.delta.is_some()).count();
        if with_delta == 0 && choices.iter().all(|c| c.finish_reason.is_none()) {
            // An annotation of text already sent: nothing for an OpenAI client.
            return Ok(());
        }
        if with_delta > 0 {
            self.first_token = true;
        }
        let annotation = with_delta < choices.len();
        if !annotation {
            self.remember(&peek);
        }
        let merge_prompt = !self.pending_prompt.is_empty()
            && peek.prompt_filter_results.is_none()
            && peek.prompt_annotations.is_none();
        if !annotation && !merge_prompt {
            return self.forward(data, out);
        }
        let mut buf = std::mem::take(&mut self.rewrite);
        buf.clear();
        let res = if self.reshape(data, &peek, annotation, merge_prompt, &mut buf) {
            self.forward(&buf, out)
        } else {
            self.forward(data, out)
        };
        self.rewrite = buf;
        res
    }

    /// Keep the id, created and model of a regular chunk for annotation chunks that lack them.
    fn remember(&mut self, peek: &EventPeek<'_>) {
        if let Some(id) = peek.id.as_deref().filter(|s| !s.is_empty()) {
            if id != self.id {
                id.clone_into(&mut self.id);
            }
        }
        if let Some(created) = peek.created.filter(|c| *c != 0) {
            self.created = created;
        }
        if let Some(model) = peek.model.as_deref().filter(|s| !s.is_empty()) {
            if model != self.model {
                model.clone_into(&mut self.model);
            }
        }
    }

    /// Rewrite a chunk into `buf`: for an annotation chunk, `delta: {}` on choices without one and
    /// the stream's id, object, created and model where Azure left them empty; held prompt filter
    /// results added when `merge_prompt`. `false` when the chunk does not parse as an object.
    fn reshape(
        &mut self,
        data: &[u8],
        peek: &EventPeek<'_>,
        annotation: bool,
        merge_prompt: bool,
        buf: &mut Vec<u8>,
    ) -> bool {
        let Ok(top) = RawObject::parse(data) else {
            return false;
        };
        let mut choices = Vec::new();
        let mut id = Vec::new();
        let mut created = Vec::new();
        let mut model = Vec::new();
        let mut prompt = Vec::new();
        let mut overrides: Vec<(&str, Option<&[u8]>)> = Vec::with_capacity(6);
        if annotation {
            let Some(Ok(list)) = top
                .get("choices")
                .map(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()))
            else {
                return false;
            };
            choices.push(b'[');
            for (i, choice) in list.iter().enumerate() {
                if i > 0 {
                    choices.push(b',');
                }
                match RawObject::parse(choice.get().as_bytes()) {
                    Ok(c) if c.get("delta").is_none_or(|d| d.get() == "null") => {
                        c.write_with(&mut choices, &[("delta", Some(b"{}".as_slice()))]);
                    }
                    _ => choices.extend_from_slice(choice.get().as_bytes()),
                }
            }
            choices.push(b']');
            overrides.push(("choices", Some(choices.as_slice())));
            if !non_empty(&peek.id) {
                write_json_str(&mut id, &self.id);
                overrides.push(("id", Some(id.as_slice())));
            }
            if !non_empty(&peek.object) {
                overrides.push(("object", Some(b"\"chat.completion.chunk\"".as_slice())));
            }
            if peek.created.is_none_or(|c| c == 0) {
                created.extend_from_slice(self.created.to_string().as_bytes());
                overrides.push(("created", Some(created.as_slice())));
            }
            if !non_empty(&peek.model) {
                write_json_str(&mut model, &self.model);
                overrides.push(("model", Some(model.as_slice())));
            }
        }
        if merge_prompt {
            prompt.push(b'[');
            for (i, r) in self.pending_prompt.iter().enumerate() {
                if i > 0 {
                    prompt.push(b',');
                }
                prompt.extend_from_slice(r.as_bytes());
            }
            prompt.push(b']');
            overrides.push((self.pending_key, Some(prompt.as_slice())));
        }
        top.write_with(buf, &overrides);
        if merge_prompt {
            self.pending_prompt.clear();
        }
        true
    }

    /// Hand one event to OpenAI's passthrough, framed as a single SSE event.
    fn forward(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.frame.clear();
        self.frame.extend_from_slice(b"data: ");
        for (i, line) in data.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.frame.extend_from_slice(b"\ndata: ");
            }
            self.frame.extend_from_slice(line);
        }
        self.frame.extend_from_slice(b"\n\n");
        self.inner.feed(&self.frame, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProviderKind;
    use serde_json::Value;

    fn ctx(wants: bool) -> ResponseCtx<'static> {
        ResponseCtx {
            client_wants_usage: wants,
            public_model: "pub",
            upstream_model: "my-deployment",
            now_unix: 1_700_000_000,
            request_id: "req-1",
            embeddings_base64: false,
            estimated_prompt_tokens: 0,
        }
    }

    fn target(
        base_path: &'static str,
        deployment: &'static str,
        version: Option<&'static str>,
    ) -> TargetCtx<'static> {
        TargetCtx {
            kind: ProviderKind::Azure,
            base_path,
            upstream_model: deployment,
            api_version: version,
            default_max_tokens: 4096,
        }
    }

    const CHAT: &[u8] = br#"{"model":"pub","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false},"temperature":0.1}"#;

    #[test]
    fn paths_and_versions() {
        let req = ChatRequest::parse(CHAT).unwrap();
        let up = chat_request(&req, &target("", "gpt-4o", None)).unwrap();
        assert_eq!(
            up.path,
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
        );
        assert!(up.stream);
        assert_eq!(
            std::str::from_utf8(&up.body).unwrap(),
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.1}"#
        );
        // A base URL that already names /openai, and a preview version.
        let up = chat_request(
            &req,
            &target("/openai", "gpt-4o", Some("2025-01-01-preview")),
        )
        .unwrap();
        assert_eq!(
            up.path,
            "/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01-preview"
        );
        let up = chat_request(&req, &target("/proxy", "a b~é", Some(""))).unwrap();
        assert_eq!(
            up.path,
            "/proxy/openai/deployments/a%20b~%C3%A9/chat/completions?api-version=2024-10-21"
        );
        let emb = EmbeddingsRequest::parse(br#"{"model":"e","input":"x"}"#).unwrap();
        let up = embeddings_request(&emb, &target("", "emb.3-small_1", None)).unwrap();
        assert_eq!(
            up.path,
            "/openai/deployments/emb.3-small_1/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            std::str::from_utf8(&up.body).unwrap(),
            r#"{"model":"emb.3-small_1","input":"x"}"#
        );
    }

    #[test]
    fn bad_deployment_or_version_is_a_config_error() {
        let req = ChatRequest::parse(CHAT).unwrap();
        for d in ["", ".", "..", "a/b", "a\\b", "a?b", "a#b", "a%2Fb", "a\nb"] {
            let e = chat_request(&req, &target("", d, None)).unwrap_err();
            assert_eq!(e.status, 500, "{d:?}");
            assert_eq!(e.code.as_deref(), Some("invalid_provider_config"));
        }
        let e = chat_request(&req, &target("", "ok", Some("2024-10-21&x=1"))).unwrap_err();
        assert_eq!(e.status, 500);
    }

    #[test]
    fn old_versions_get_no_stream_options() {
        assert!(supports_stream_options("2024-10-21"));
        assert!(supports_stream_options("2024-09-01-preview"));
        assert!(supports_stream_options("preview"));
        assert!(!supports_stream_options("2024-08-01-preview"));
        assert!(!supports_stream_options("2024-06-01"));
        let req = ChatRequest::parse(CHAT).unwrap();
        let up = chat_request(&req, &target("", "d", Some("2024-06-01"))).unwrap();
        assert_eq!(
            std::str::from_utf8(&up.body).unwrap(),
            r#"{"model":"d","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.1}"#
        );
        // Non-streaming requests never carry stream_options, whatever the version.
        let req = ChatRequest::parse(br#"{"model":"p","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#).unwrap();
        let up = chat_request(&req, &target("", "d", None)).unwrap();
        assert_eq!(
            std::str::from_utf8(&up.body).unwrap(),
            r#"{"model":"d","messages":[{"role":"user","content":"hi"}]}"#
        );
        assert!(!up.stream);
    }

    const PROMPT: &str = r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#;
    const ROLE: &str = r#"{"choices":[{"content_filter_results":{},"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1730000000,"id":"chatcmpl-A","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_1","usage":null}"#;
    const TEXT: &str = r#"{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"delta":{"content":"Hi"},"finish_reason":null,"index":0,"logprobs":null}],"created":1730000000,"id":"chatcmpl-A","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_1","usage":null}"#;
    const STOP: &str = r#"{"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":1730000000,"id":"chatcmpl-A","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_1","usage":null}"#;
    const TRAILER: &str = r#"{"choices":[{"content_filter_offsets":{"check_offset":10,"start_offset":10,"end_offset":12},"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"finish_reason":null,"index":0}],"created":0,"id":"","model":"","object":"","usage":null}"#;
    const BLOCKED: &str = r#"{"choices":[{"content_filter_offsets":{"check_offset":10,"start_offset":10,"end_offset":12},"content_filter_results":{"violence":{"filtered":true,"severity":"high"}},"finish_reason":"content_filter","index":0}],"created":0,"id":"","model":"","object":"","usage":null}"#;
    const USAGE: &str = r#"{"choices":[],"created":1730000000,"id":"chatcmpl-A","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_1","usage":{"completion_tokens":2,"prompt_tokens":9,"total_tokens":11}}"#;

    fn sse(events: &[&str]) -> String {
        events.iter().map(|e| format!("data: {e}\n\n")).collect()
    }

    fn run(wants: bool, stream: &str, split: usize) -> (String, Option<Usage>, bool) {
        let mut s = AzureStream::new(&ctx(wants));
        let mut out = Vec::new();
        for c in stream.as_bytes().chunks(split) {
            s.feed(c, &mut out).unwrap();
        }
        s.finish(&mut out).unwrap();
        (
            String::from_utf8(out).unwrap(),
            s.usage(),
            s.first_token_seen(),
        )
    }

    fn events(out: &str) -> Vec<Value> {
        out.split("\n\n")
            .filter(|e| !e.is_empty() && *e != "data: [DONE]")
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn prompt_annotation_moves_onto_the_first_chunk() {
        let stream = sse(&[PROMPT, ROLE, TEXT, STOP, TRAILER, USAGE, "[DONE]"]);
        let (out, usage, first) = run(true, &stream, stream.len());
        let ev = events(&out);
        assert_eq!(ev.len(), 4, "{out}");
        assert!(ev
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk" && e["id"] == "chatcmpl-A"));
        assert_eq!(ev[0]["prompt_filter_results"][0]["prompt_index"], 0);
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(ev[1].get("prompt_filter_results").is_none());
        assert_eq!(
            ev[1]["choices"][0]["content_filter_results"]["hate"]["severity"],
            "safe"
        );
        assert_eq!(ev[3]["choices"], Value::Array(vec![]));
        assert_eq!(ev[3]["usage"]["total_tokens"], 11);
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(usage.unwrap().prompt_tokens, 9);
        assert!(first);
    }

    #[test]
    fn without_usage_no_empty_choices_reach_the_client() {
        let stream = sse(&[PROMPT, ROLE, TEXT, STOP, TRAILER, USAGE, "[DONE]"]);
        let (out, usage, _) = run(false, &stream, 5);
        let ev = events(&out);
        assert_eq!(ev.len(), 3, "{out}");
        assert!(ev
            .iter()
            .all(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty())));
        assert!(!out.contains("\"usage\""));
        assert_eq!(usage.unwrap().completion_tokens, 2);
    }

    #[test]
    fn only_annotations_is_no_first_token() {
        let stream = sse(&[PROMPT, TRAILER]);
        let mut s = AzureStream::new(&ctx(false));
        let mut out = Vec::new();
        s.feed(stream.as_bytes(), &mut out).unwrap();
        assert!(out.is_empty());
        assert!(!s.first_token_seen());
    }

    #[test]
    fn async_filter_verdict_is_forwarded_as_a_chunk() {
        let stream = sse(&[PROMPT, ROLE, TEXT, TRAILER, BLOCKED, USAGE, "[DONE]"]);
        let (out, _, _) = run(false, &stream, 3);
        let ev = events(&out);
        assert_eq!(ev.len(), 3, "{out}");
        let last = &ev[2];
        assert_eq!(last["id"], "chatcmpl-A");
        assert_eq!(last["object"], "chat.completion.chunk");
        assert_eq!(last["created"], 1_730_000_000);
        assert_eq!(last["model"], "gpt-4o-2024-08-06");
        assert_eq!(last["choices"][0]["delta"], serde_json::json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(
            last["choices"][0]["content_filter_results"]["violence"]["filtered"],
            true
        );
        // Before any regular chunk the gateway's own id, clock and upstream model stand in.
        let (out, _, first) = run(false, &sse(&[PROMPT, BLOCKED, "[DONE]"]), 7);
        let ev = events(&out);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["id"], "chatcmpl-req-1");
        assert_eq!(ev[0]["created"], 1_700_000_000);
        assert_eq!(ev[0]["model"], "my-deployment");
        assert_eq!(ev[0]["prompt_filter_results"][0]["prompt_index"], 0);
        assert!(!first);
    }

    #[test]
    fn every_split_is_identical() {
        let stream = sse(&[PROMPT, ROLE, TEXT, STOP, TRAILER, BLOCKED, USAGE, "[DONE]"]);
        for wants in [true, false] {
            let whole = run(wants, &stream, stream.len());
            for split in 1..64 {
                assert_eq!(run(wants, &stream, split), whole, "split {split}");
            }
        }
    }

    #[test]
    fn stream_error_event_is_reshaped() {
        let stream = sse(&[
            PROMPT,
            r#"{"error":{"code":"429","message":"Rate limit is exceeded."}}"#,
            "[DONE]",
        ]);
        let (out, usage, _) = run(false, &stream, 4);
        let ev = events(&out);
        assert_eq!(
            ev,
            vec![
                serde_json::json!({"error":{"message":"Rate limit is exceeded.","type":"rate_limit_error","param":null,"code":"429"}})
            ]
        );
        assert!(usage.is_none());
    }

    #[test]
    fn truncated_stream_ends_with_error() {
        let stream = sse(&[PROMPT, ROLE, TEXT]);
        let mut s = AzureStream::new(&ctx(true));
        let mut out = Vec::new();
        s.feed(stream.as_bytes(), &mut out).unwrap();
        assert!(s.finish(&mut out).is_err());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"upstream_error\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
        // Nothing after [DONE] is read.
        let mut s = AzureStream::new(&ctx(true));
        let mut out = Vec::new();
        s.feed(sse(&["[DONE]", TEXT]).as_bytes(), &mut out).unwrap();
        s.finish(&mut out).unwrap();
        assert_eq!(out, b"data: [DONE]\n\n");
    }

    #[test]
    fn oversized_event_ends_the_stream() {
        let mut s = AzureStream {
            dec: SseDecoder::new(16),
            ..AzureStream::new(&ctx(false))
        };
        let mut out = Vec::new();
        assert!(s.feed(b"data: 0123456789abcdefghij", &mut out).is_err());
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("data: [DONE]\n\n"));
        let mut more = Vec::new();
        s.feed(b"\n\n", &mut more).unwrap();
        s.finish(&mut more).unwrap();
        assert!(more.is_empty());
    }

    fn error_json(status: u16, body: &'static str) -> (u16, Value) {
        let e = error_response(status, Bytes::from_static(body.as_bytes()));
        (e.status, serde_json::from_slice(&e.body).unwrap())
    }

    #[test]
    fn errors() {
        let (s, v) = error_json(
            401,
            r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#,
        );
        assert_eq!(s, 401);
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "401");
        // OpenAI's shape passes with its own type and param.
        let (s, v) = error_json(
            400,
            r#"{"error":{"message":"Unrecognized request argument supplied: foo","type":"invalid_request_error","param":"foo","code":null}}"#,
        );
        assert_eq!(s, 400);
        assert_eq!(v["error"]["param"], "foo");
        assert!(v["error"]["code"].is_null());
        // Numeric code.
        let (_, v) = error_json(500, r#"{"error":{"code":500,"message":"Internal error"}}"#);
        assert_eq!(v["error"]["code"], "500");
        assert_eq!(v["error"]["type"], "api_error");
        // API Management.
        let (s, v) = error_json(
            401,
            r#"{ "statusCode": 401, "message": "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired." }"#,
        );
        assert_eq!(s, 401);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unauthorized."));
        assert_eq!(v["error"]["type"], "authentication_error");
        // No message, or not JSON at all.
        let (s, v) = error_json(503, r#"{"error":{"code":"ServiceUnavailable"}}"#);
        assert_eq!(s, 503);
        assert_eq!(v["error"]["code"], "upstream_error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        let (s, v) = error_json(502, "<html>Bad Gateway</html>");
        assert_eq!(s, 502);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bad Gateway"));
    }
}
