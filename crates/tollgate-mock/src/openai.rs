//! The OpenAI wire format: chat completions (plain and streamed), embeddings
//! and the model list, on both the OpenAI (`/v1/…`) and Azure OpenAI
//! (`/openai/deployments/{deployment}/…`) paths.
//!
//! Responses are shaped exactly as OpenAI sends them, field order included.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::body::Reply;
use crate::common::{
    apply_transport as script, content_pieces, embedding_vector, push_json_str, reply_content,
    to_json, unix_now, Str, DEFAULT_DIMENSIONS, MAX_DIMENSIONS, TOOL_ARGUMENTS,
    TOOL_ARGUMENT_PIECES,
};
use crate::script::Directives;

/// `system_fingerprint` on every completion.
const FINGERPRINT: &str = "fp_mock";
/// The id of the (single) tool call the mock makes.
const TOOL_CALL_ID: &str = "call_mock_0";
/// The models `GET /v1/models` lists.
const MODELS: [&str; 4] = ["mock-1", "gpt-4o-mini", "gpt-4o", "text-embedding-3-small"];
/// `created` of the listed models.
const MODELS_CREATED: u64 = 1_700_000_000;

/// An OpenAI endpoint, with the Azure deployment when the path names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint<'a> {
    Chat { deployment: Option<&'a str> },
    Embeddings { deployment: Option<&'a str> },
    Models,
    Model(&'a str),
}

impl Endpoint<'_> {
    fn method(&self) -> Method {
        match self {
            Endpoint::Chat { .. } | Endpoint::Embeddings { .. } => Method::POST,
            Endpoint::Models | Endpoint::Model(_) => Method::GET,
        }
    }

    fn is_azure(&self) -> bool {
        matches!(
            self,
            Endpoint::Chat {
                deployment: Some(_)
            } | Endpoint::Embeddings {
                deployment: Some(_)
            }
        )
    }
}

/// Which OpenAI endpoint `path` (no query) names, if any.
pub(crate) fn route(path: &str) -> Option<Endpoint<'_>> {
    match path {
        "/v1/chat/completions" => return Some(Endpoint::Chat { deployment: None }),
        "/v1/embeddings" => return Some(Endpoint::Embeddings { deployment: None }),
        "/v1/models" => return Some(Endpoint::Models),
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/v1/models/") {
        if !id.is_empty() {
            return Some(Endpoint::Model(id));
        }
    }
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, op) = rest.split_once('/')?;
    if deployment.is_empty() {
        return None;
    }
    match op {
        "chat/completions" => Some(Endpoint::Chat {
            deployment: Some(deployment),
        }),
        "embeddings" => Some(Endpoint::Embeddings {
            deployment: Some(deployment),
        }),
        _ => None,
    }
}

/// Answer one request to an OpenAI endpoint. `seq` numbers the response ids.
pub(crate) fn handle(
    endpoint: Endpoint<'_>,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    api_key: Option<&str>,
    seq: u64,
    path: &str,
) -> Reply {
    if *method != endpoint.method() {
        let mut reply = error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method not allowed ({method} {path})"),
            "invalid_request_error",
            None,
            None,
        );
        reply.allow = Some(if endpoint.method() == Method::POST {
            "POST"
        } else {
            "GET"
        });
        return reply;
    }
    if let Some(key) = api_key {
        if !authorized(headers, key, endpoint.is_azure()) {
            return error_reply(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            );
        }
    }
    match endpoint {
        Endpoint::Chat { deployment } => chat(body, deployment, seq),
        Endpoint::Embeddings { deployment } => embeddings(body, deployment),
        Endpoint::Models => Reply::json(StatusCode::OK, models()),
        Endpoint::Model(id) => Reply::json(StatusCode::OK, to_json(&ModelObject::new(id))),
    }
}

/// The 404 for a path no wire format knows.
pub(crate) fn not_found(method: &Method, path: &str) -> Reply {
    error_reply(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {path})"),
        "invalid_request_error",
        None,
        None,
    )
}

/// The 413 for a body over the size limit.
pub(crate) fn too_large() -> Reply {
    error_reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large",
        "invalid_request_error",
        None,
        None,
    )
}

fn authorized(headers: &HeaderMap, key: &str, azure: bool) -> bool {
    if azure {
        headers
            .get("api-key")
            .is_some_and(|v| v.as_bytes() == key.as_bytes())
    } else {
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|token| token == key.as_bytes())
    }
}

// ---------------------------------------------------------------------------
// Errors

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error_body(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Vec<u8> {
    to_json(&ErrorEnvelope {
        error: ErrorObject {
            message,
            kind,
            param,
            code,
        },
    })
}

fn error_reply(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Reply {
    Reply::json(status, error_body(message, kind, param, code))
}

/// The error a `status=NNN` directive produces: OpenAI's type and code for
/// that status, message `mock error NNN`.
fn scripted_error(status: u16) -> Reply {
    let (kind, code) = match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_reply(
        status,
        &format!("mock error {}", status.as_u16()),
        kind,
        None,
        code,
    )
}

fn bad_json(err: &serde_json::Error) -> Reply {
    let message = if err.is_data() {
        Cow::Owned(format!("Invalid request body: {err}"))
    } else {
        Cow::Borrowed(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON. If you have trouble figuring out how to fix \
             this, please contact us through our help center at help.openai.com.)",
        )
    };
    error_reply(
        StatusCode::BAD_REQUEST,
        &message,
        "invalid_request_error",
        None,
        None,
    )
}

// ---------------------------------------------------------------------------
// Request parsing

/// A message's content: a string, or an array of parts of which only the
/// text parts count.
#[derive(Debug, Default)]
enum Content<'a> {
    #[default]
    Empty,
    Text(Cow<'a, str>),
    Parts(Vec<Cow<'a, str>>),
}

impl Content<'_> {
    fn byte_len(&self) -> usize {
        match self {
            Content::Empty => 0,
            Content::Text(t) => t.len(),
            Content::Parts(p) => p.iter().map(|t| t.len()).sum(),
        }
    }

    fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Empty => Cow::Borrowed(""),
            Content::Text(t) => Cow::Borrowed(t),
            Content::Parts(p) if p.len() == 1 => Cow::Borrowed(&p[0]),
            Content::Parts(p) => Cow::Owned(p.concat()),
        }
    }
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an array of content parts, or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Empty)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::Empty)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<Part<'de>>()? {
                    if let Some(Str(text)) = part.text {
                        parts.push(text);
                    }
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(default, borrow)]
    role: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Content<'a>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ToolDef<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionDef<'a>>,
}

#[derive(Deserialize)]
struct FunctionDef<'a> {
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default, borrow)]
    messages: Option<Vec<ChatMessage<'a>>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default, borrow)]
    tools: Option<Vec<ToolDef<'a>>>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------
// Chat completions

#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

impl Usage {
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails::default(),
            completion_tokens_details: CompletionTokensDetails::default(),
        }
    }
}

#[derive(Serialize, Clone, Copy, Default)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy, Default)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCall<'a>; 1]>,
    refusal: Option<()>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: ToolCallFunction<'a>,
}

#[derive(Serialize)]
struct ToolCallFunction<'a> {
    name: &'a str,
    arguments: &'static str,
}

fn chat(body: &[u8], deployment: Option<&str>, seq: u64) -> Reply {
    let req: ChatRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_json(&e),
    };
    let model: &str = match (&req.model, deployment) {
        (Some(Str(m)), _) => m,
        (None, Some(d)) => d,
        (None, None) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter",
                "invalid_request_error",
                None,
                None,
            )
        }
    };
    let Some(messages) = &req.messages else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            Some("messages"),
            Some("missing_required_parameter"),
        );
    };
    let Some(last) = messages.last() else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "[] is too short - 'messages'",
            "invalid_request_error",
            Some("messages"),
            None,
        );
    };
    let prompt_bytes_total: usize = messages.iter().map(|m| m.content.byte_len()).sum();
    let prompt = last.content.text();

    let (_, mut d) = Directives::from_model(model);
    d.apply_text(&prompt);
    if let Some(status) = d.error_status() {
        return script(scripted_error(status), &d);
    }

    let prompt_tokens = (prompt_bytes_total as u64).div_ceil(4).max(1);
    let tool_name = tool_call_name(&req, last, &d);
    let id = format!("chatcmpl-mock-{seq}");
    let created = unix_now();
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);

    let reply = match tool_name {
        Some(name) => {
            let usage = Usage::new(prompt_tokens, (TOOL_ARGUMENTS.len() as u64).div_ceil(4));
            if stream {
                let w = ChunkWriter::new(&id, created, model, include_usage);
                Reply::event_stream(w.tool_call_events(name, &usage, &d))
            } else {
                completion_reply(&ChatCompletion {
                    id: &id,
                    object: "chat.completion",
                    created,
                    model,
                    choices: [Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: None,
                            tool_calls: Some([ToolCall {
                                id: TOOL_CALL_ID,
                                kind: "function",
                                function: ToolCallFunction {
                                    name,
                                    arguments: TOOL_ARGUMENTS,
                                },
                            }]),
                            refusal: None,
                            annotations: [],
                        },
                        logprobs: None,
                        finish_reason: "tool_calls",
                    }],
                    usage,
                    service_tier: "default",
                    system_fingerprint: FINGERPRINT,
                })
            }
        }
        None => {
            let content = reply_content(&d, &prompt);
            let usage = Usage::new(prompt_tokens, content.split_whitespace().count() as u64);
            if stream {
                let w = ChunkWriter::new(&id, created, model, include_usage);
                Reply::event_stream(w.text_events(&content, &usage, &d))
            } else {
                completion_reply(&ChatCompletion {
                    id: &id,
                    object: "chat.completion",
                    created,
                    model,
                    choices: [Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: Some(&content),
                            tool_calls: None,
                            refusal: None,
                            annotations: [],
                        },
                        logprobs: None,
                        finish_reason: "stop",
                    }],
                    usage,
                    service_tier: "default",
                    system_fingerprint: FINGERPRINT,
                })
            }
        }
    };
    script(reply, &d)
}

fn completion_reply(c: &ChatCompletion<'_>) -> Reply {
    Reply::json(StatusCode::OK, to_json(c))
}

/// The function to call, when the request offers tools, allows calling one,
/// the last message is the user's and `tool_call` is set.
fn tool_call_name<'r>(
    req: &'r ChatRequest<'_>,
    last: &ChatMessage<'_>,
    d: &Directives,
) -> Option<&'r str> {
    if !d.wants_tool_call() {
        return None;
    }
    if last.role.as_ref().map(|r| r.0.as_ref()) != Some("user") {
        return None;
    }
    if let Some(choice) = &req.tool_choice {
        if choice.as_str() == Some("none") {
            return None;
        }
        if let Some(name) = choice
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(|n| n.as_str())
        {
            return Some(name);
        }
    }
    req.tools
        .as_ref()?
        .first()?
        .function
        .as_ref()?
        .name
        .as_ref()
        .map(|n| n.0.as_ref())
}

/// Writes `chat.completion.chunk` SSE events sharing one id/created/model.
struct ChunkWriter {
    /// `{"id":…,…,"choices":[` — common to every chunk.
    prefix: Vec<u8>,
    include_usage: bool,
}

impl ChunkWriter {
    fn new(id: &str, created: u64, model: &str, include_usage: bool) -> ChunkWriter {
        let mut prefix = Vec::with_capacity(160 + model.len());
        prefix.extend_from_slice(b"{\"id\":");
        push_json_str(&mut prefix, id);
        prefix.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        prefix.extend_from_slice(created.to_string().as_bytes());
        prefix.extend_from_slice(b",\"model\":");
        push_json_str(&mut prefix, model);
        prefix.extend_from_slice(b",\"service_tier\":\"default\",\"system_fingerprint\":");
        push_json_str(&mut prefix, FINGERPRINT);
        prefix.extend_from_slice(b",\"choices\":[");
        ChunkWriter {
            prefix,
            include_usage,
        }
    }

    /// One event with one choice whose delta `write_delta` writes.
    fn choice(&self, write_delta: impl FnOnce(&mut Vec<u8>), finish: Option<&str>) -> Bytes {
        let mut buf = Vec::with_capacity(self.prefix.len() + 128);
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(&self.prefix);
        buf.extend_from_slice(b"{\"index\":0,\"delta\":");
        write_delta(&mut buf);
        buf.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => push_json_str(&mut buf, f),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b"}]");
        if self.include_usage {
            buf.extend_from_slice(b",\"usage\":null");
        }
        buf.extend_from_slice(b"}\n\n");
        Bytes::from(buf)
    }

    /// The trailing usage event (`choices: []`).
    fn usage(&self, usage: &Usage) -> Bytes {
        let mut buf = Vec::with_capacity(self.prefix.len() + 256);
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(&self.prefix);
        buf.extend_from_slice(b"],\"usage\":");
        let _ = serde_json::to_writer(&mut buf, usage);
        buf.extend_from_slice(b"}\n\n");
        Bytes::from(buf)
    }

    /// Finish, usage (if asked for) and `[DONE]`.
    fn finish(&self, events: &mut VecDeque<Bytes>, reason: &str, usage: &Usage) {
        events.push_back(self.choice(|b| b.extend_from_slice(b"{}"), Some(reason)));
        if self.include_usage {
            events.push_back(self.usage(usage));
        }
        events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    }

    fn text_events(&self, content: &str, usage: &Usage, d: &Directives) -> VecDeque<Bytes> {
        let pieces = content_pieces(content, d.chunks);
        let mut events = VecDeque::with_capacity(pieces.len() + 4);
        events.push_back(self.choice(
            |b| b.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}"),
            None,
        ));
        if d.wants_error_mid_stream() && pieces.is_empty() {
            events.push_back(mid_stream_error());
            return events;
        }
        for piece in pieces {
            events.push_back(self.choice(
                |b| {
                    b.extend_from_slice(b"{\"content\":");
                    push_json_str(b, piece);
                    b.push(b'}');
                },
                None,
            ));
            if d.wants_error_mid_stream() {
                events.push_back(mid_stream_error());
                return events;
            }
        }
        self.finish(&mut events, "stop", usage);
        events
    }

    fn tool_call_events(&self, name: &str, usage: &Usage, d: &Directives) -> VecDeque<Bytes> {
        let mut events = VecDeque::with_capacity(TOOL_ARGUMENT_PIECES.len() + 4);
        events.push_back(self.choice(
            |b| {
                b.extend_from_slice(
                    b"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":",
                );
                push_json_str(b, TOOL_CALL_ID);
                b.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                push_json_str(b, name);
                b.extend_from_slice(b",\"arguments\":\"\"}}],\"refusal\":null}");
            },
            None,
        ));
        for piece in TOOL_ARGUMENT_PIECES {
            events.push_back(self.choice(
                |b| {
                    b.extend_from_slice(
                        b"{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":",
                    );
                    push_json_str(b, piece);
                    b.extend_from_slice(b"}}]}");
                },
                None,
            ));
            if d.wants_error_mid_stream() {
                events.push_back(mid_stream_error());
                return events;
            }
        }
        self.finish(&mut events, "tool_calls", usage);
        events
    }
}

fn mid_stream_error() -> Bytes {
    Bytes::from_static(
        b"data: {\"error\":{\"message\":\"mock mid-stream error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
    )
}

// ---------------------------------------------------------------------------
// Embeddings

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(default, borrow)]
    model: Option<Str<'a>>,
    #[serde(default)]
    input: Option<serde_json::Value>,
    #[serde(default, borrow)]
    encoding_format: Option<Str<'a>>,
    #[serde(default)]
    dimensions: Option<serde_json::Value>,
}

/// One embedding input: text, or token ids.
enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(Vec<i64>),
}

impl EmbeddingInput<'_> {
    fn tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(t) => (t.len() as u64).div_ceil(4).max(1),
            EmbeddingInput::Tokens(t) => t.len() as u64,
        }
    }

    fn seed(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match self {
            EmbeddingInput::Text(t) => h.update(t.as_bytes()),
            EmbeddingInput::Tokens(ts) => {
                for t in ts {
                    h.update(t.to_le_bytes());
                }
            }
        }
        h.finalize().into()
    }
}

fn token_array(v: &[serde_json::Value]) -> Option<Vec<i64>> {
    if v.is_empty() {
        return None;
    }
    v.iter().map(serde_json::Value::as_i64).collect()
}

fn embedding_inputs(input: &serde_json::Value) -> Option<Vec<EmbeddingInput<'_>>> {
    use serde_json::Value;
    match input {
        Value::String(s) if !s.is_empty() => Some(vec![EmbeddingInput::Text(s)]),
        Value::Array(items) if !items.is_empty() => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) if !s.is_empty() => Some(EmbeddingInput::Text(s)),
                    _ => None,
                })
                .collect(),
            Value::Number(_) => Some(vec![EmbeddingInput::Tokens(token_array(items)?)]),
            Value::Array(_) => items
                .iter()
                .map(|i| Some(EmbeddingInput::Tokens(token_array(i.as_array()?)?)))
                .collect(),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct EmbeddingsResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: &'a str,
    usage: EmbeddingUsage,
}

fn embeddings(body: &[u8], deployment: Option<&str>) -> Reply {
    let req: EmbeddingsRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_json(&e),
    };
    let model: &str = match (&req.model, deployment) {
        (Some(Str(m)), _) => m,
        (None, Some(d)) => d,
        (None, None) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter",
                "invalid_request_error",
                None,
                None,
            )
        }
    };
    let Some(input) = &req.input else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'input'.",
            "invalid_request_error",
            Some("input"),
            Some("missing_required_parameter"),
        );
    };
    let Some(inputs) = embedding_inputs(input) else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            "invalid_request_error",
            None,
            None,
        );
    };
    let dims = match &req.dimensions {
        None | Some(serde_json::Value::Null) => DEFAULT_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n as usize <= MAX_DIMENSIONS => n as usize,
            _ => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    "Invalid value for 'dimensions'.",
                    "invalid_request_error",
                    Some("dimensions"),
                    None,
                )
            }
        },
    };
    let base64 = match req.encoding_format.as_ref().map(|f| f.0.as_ref()) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "Invalid value for 'encoding_format': must be 'float' or 'base64'.",
                "invalid_request_error",
                Some("encoding_format"),
                None,
            )
        }
    };

    let (_, mut d) = Directives::from_model(model);
    if let Some(EmbeddingInput::Text(last)) = inputs.last() {
        d.apply_text(last);
    }
    if let Some(status) = d.error_status() {
        return script(scripted_error(status), &d);
    }

    let mut prompt_tokens = 0;
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += input.tokens();
            let v = embedding_vector(&input.seed(), dims);
            let embedding = if base64 {
                let mut raw = Vec::with_capacity(v.len() * 4);
                for x in &v {
                    raw.extend_from_slice(&x.to_le_bytes());
                }
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                EmbeddingValue::Float(v)
            };
            EmbeddingObject {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let resp = EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    script(Reply::json(StatusCode::OK, to_json(&resp)), &d)
}

// ---------------------------------------------------------------------------
// Models

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl ModelObject<'_> {
    fn new(id: &str) -> ModelObject<'_> {
        ModelObject {
            id,
            object: "model",
            created: MODELS_CREATED,
            owned_by: "tollgate-mock",
        }
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

fn models() -> Vec<u8> {
    to_json(&ModelList {
        object: "list",
        data: MODELS.iter().map(|m| ModelObject::new(m)).collect(),
    })
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/v1/chat/completions"),
            Some(Endpoint::Chat { deployment: None })
        );
        assert_eq!(
            route("/openai/deployments/dep-1/chat/completions"),
            Some(Endpoint::Chat {
                deployment: Some("dep-1")
            })
        );
        assert_eq!(
            route("/openai/deployments/dep-1/embeddings"),
            Some(Endpoint::Embeddings {
                deployment: Some("dep-1")
            })
        );
        assert_eq!(route("/v1/models/x"), Some(Endpoint::Model("x")));
        assert_eq!(route("/openai/deployments//embeddings"), None);
        assert_eq!(route("/v1/nope"), None);
    }

    #[test]
    fn content_parts_parse() {
        let m: ChatMessage<'_> = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"ab"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"c\"d"}]}"#,
        )
        .unwrap();
        assert_eq!(m.content.text(), "abc\"d");
        assert_eq!(m.content.byte_len(), 5);
        let m: ChatMessage<'_> =
            serde_json::from_str(r#"{"role":"assistant","content":null}"#).unwrap();
        assert_eq!(m.content.text(), "");
    }
}
