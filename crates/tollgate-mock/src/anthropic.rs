//! The Anthropic Messages API wire format: `POST /v1/messages`, plain and
//! streamed (typed server-sent events), with Anthropic's error shape.
//!
//! Requests are checked the way the real API checks them cheaply, with its
//! error messages, so a gateway translation bug shows up as a 400: the
//! `x-api-key` and `anthropic-version` headers, unknown top-level fields
//! ("Extra inputs are not permitted"), `model` and `max_tokens` present,
//! roles `user`/`assistant` alternating from `user`, non-empty content,
//! `tool_result` blocks answering the `tool_use` blocks of the message before,
//! custom tools with an `input_schema`, `tool_choice` types, and the sampling
//! ranges (`temperature` and `top_p` in [0, 1]).
//!
//! Replies follow the shared directives (see [`crate::script`]): text or a
//! `tool_use` block, `max_tokens` and `stop_sequences` honoured, scripted
//! statuses with Anthropic's error types, and a mid-stream `event: error`.

use std::borrow::Cow;
use std::collections::VecDeque;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::body::Reply;
use crate::common::{
    apply_transport, completion_tokens, content_pieces, parse_raw, prompt_tokens, push_json_str,
    reply_content, to_json, tool_call_tokens, truncate, RawObject, Str, ToolArguments, Truncation,
    TOOL_ARGUMENT_PIECES, TOOL_INPUT,
};
use crate::script::Directives;

/// The one path this format serves.
const MESSAGES_PATH: &str = "/v1/messages";
/// The id of the (single) `tool_use` block the mock makes.
const TOOL_USE_ID: &str = "toolu_mock_0";

/// Top-level request fields the Messages API accepts; any other is refused.
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
];

/// The event Anthropic sends when it is overloaded mid-stream (as its docs show it).
const OVERLOADED_EVENT: &[u8] = b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
/// The keep-alive event, spaced as Anthropic sends it.
const PING_EVENT: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// Whether `path` (no query) is the Messages endpoint.
pub(crate) fn is_route(path: &str) -> bool {
    path == MESSAGES_PATH
}

/// Answer one request to `POST /v1/messages`. `seq` numbers the message and request ids.
pub(crate) fn handle(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    api_key: Option<&str>,
    seq: u64,
) -> Reply {
    let mut reply = answer(method, headers, body, api_key, seq);
    reply.extra_headers.push(("request-id", request_id(seq)));
    reply
}

fn answer(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    api_key: Option<&str>,
    seq: u64,
) -> Reply {
    if *method != Method::POST {
        let mut reply = error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            &format!("Method Not Allowed ({method} {MESSAGES_PATH})"),
            seq,
        );
        reply.allow = Some("POST");
        return reply;
    }
    if let Some(key) = api_key {
        match headers.get("x-api-key") {
            None => {
                return error_reply(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "x-api-key header is required",
                    seq,
                )
            }
            Some(v) if v.as_bytes() != key.as_bytes() => {
                return error_reply(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "invalid x-api-key",
                    seq,
                )
            }
            Some(_) => {}
        }
    }
    if headers.get("anthropic-version").is_none() {
        return invalid("anthropic-version: header is required", seq);
    }
    match parse_request(body) {
        Ok(req) => messages(&req, seq),
        Err(message) => invalid(&message, seq),
    }
}

/// The 413 for a body over the size limit.
pub(crate) fn too_large(seq: u64) -> Reply {
    let mut reply = error_reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        "Request exceeds the maximum allowed number of bytes.",
        seq,
    );
    reply.extra_headers.push(("request-id", request_id(seq)));
    reply
}

fn request_id(seq: u64) -> String {
    format!("req_mock_{seq}")
}

// ---------------------------------------------------------------------------
// Errors

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorObject<'a>,
    request_id: &'a str,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// An Anthropic error: `{"type":"error","error":{"type","message"},"request_id"}`.
fn error_reply(status: StatusCode, kind: &str, message: &str, seq: u64) -> Reply {
    let request_id = request_id(seq);
    Reply::json(
        status,
        to_json(&ErrorEnvelope {
            kind: "error",
            error: ErrorObject { kind, message },
            request_id: &request_id,
        }),
    )
}

/// A 400 `invalid_request_error`.
fn invalid(message: &str, seq: u64) -> Reply {
    error_reply(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        seq,
    )
}

/// Anthropic's error type for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The error a `status=NNN` directive produces: Anthropic's type for that
/// status, message `mock error NNN`.
fn scripted_error(status: u16, seq: u64) -> Reply {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_reply(
        code,
        error_type(code.as_u16()),
        &format!("mock error {}", code.as_u16()),
        seq,
    )
}

// ---------------------------------------------------------------------------
// Request parsing and validation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message, reduced to what the mock needs.
#[derive(Debug)]
struct Msg<'a> {
    role: Role,
    /// The text blocks (or the string content).
    texts: Vec<Cow<'a, str>>,
    /// Prompt bytes outside `texts` (tool results, tool inputs).
    other_bytes: usize,
    /// Ids of the `tool_use` blocks.
    tool_uses: Vec<Cow<'a, str>>,
    /// (block index, `tool_use_id`) of the `tool_result` blocks.
    tool_results: Vec<(usize, Cow<'a, str>)>,
    /// Whether the content is empty (`""` or `[]`).
    empty: bool,
}

impl Msg<'_> {
    fn text(&self) -> Cow<'_, str> {
        match self.texts.as_slice() {
            [] => Cow::Borrowed(""),
            [one] => Cow::Borrowed(one),
            many => Cow::Owned(many.concat()),
        }
    }

    fn prompt_bytes(&self) -> usize {
        self.texts.iter().map(|t| t.len()).sum::<usize>() + self.other_bytes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChoiceKind<'a> {
    Auto,
    Any,
    Tool(Cow<'a, str>),
    None,
}

#[derive(Debug)]
struct Request<'a> {
    model: Cow<'a, str>,
    max_tokens: u64,
    messages: Vec<Msg<'a>>,
    system_bytes: usize,
    stop_sequences: Vec<Cow<'a, str>>,
    stream: bool,
    /// Names of the custom (client) tools, in order.
    tools: Vec<Cow<'a, str>>,
    tool_choice: Option<ChoiceKind<'a>>,
}

/// A field of the request in the `a.0.b: …` form of Anthropic's messages.
fn field_error(path: &str, what: &str) -> String {
    format!("{path}: {what}")
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, String> {
    let top: RawObject<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            format!("The request body is not a JSON object: {e}")
        } else {
            format!("The request body is not valid JSON: {e}")
        }
    })?;
    if let Some(key) = top.unknown_key(REQUEST_FIELDS) {
        return Err(field_error(key, "Extra inputs are not permitted"));
    }
    let model = top
        .parse::<Str<'_>>("model")
        .map_err(|_| field_error("model", "Input should be a valid string"))?
        .ok_or_else(|| field_error("model", "Field required"))?
        .0;
    let max_tokens = top
        .parse::<i64>("max_tokens")
        .map_err(|_| field_error("max_tokens", "Input should be a valid integer"))?
        .ok_or_else(|| field_error("max_tokens", "Field required"))?;
    let max_tokens = u64::try_from(max_tokens)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| field_error("max_tokens", "Input should be greater than or equal to 1"))?;
    let raw_messages = top
        .parse::<Vec<RawObject<'_>>>("messages")
        .map_err(|_| field_error("messages", "Input should be a valid list"))?
        .ok_or_else(|| field_error("messages", "Field required"))?;
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.iter().enumerate() {
        messages.push(parse_message(m, i)?);
    }
    check_conversation(&messages)?;
    let system_bytes = match top.get("system") {
        None => 0,
        Some(raw) => system_bytes(raw)?,
    };
    let stop_sequences = top
        .parse::<Vec<Str<'_>>>("stop_sequences")
        .map_err(|_| field_error("stop_sequences", "Input should be a valid list of strings"))?
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.0)
        .collect();
    let stream = top
        .parse::<bool>("stream")
        .map_err(|_| field_error("stream", "Input should be a valid boolean"))?
        .unwrap_or(false);
    for key in ["temperature", "top_p"] {
        if let Some(v) = top
            .parse::<f64>(key)
            .map_err(|_| field_error(key, "Input should be a valid number"))?
        {
            if v < 0.0 {
                return Err(field_error(
                    key,
                    "Input should be greater than or equal to 0",
                ));
            }
            if v > 1.0 {
                return Err(field_error(key, "Input should be less than or equal to 1"));
            }
        }
    }
    if let Some(k) = top
        .parse::<i64>("top_k")
        .map_err(|_| field_error("top_k", "Input should be a valid integer"))?
    {
        if k < 0 {
            return Err(field_error(
                "top_k",
                "Input should be greater than or equal to 0",
            ));
        }
    }
    let tools = match top.get("tools") {
        None => Vec::new(),
        Some(raw) => parse_tools(raw)?,
    };
    let tool_choice = match top.get("tool_choice") {
        None => None,
        Some(raw) => Some(parse_tool_choice(raw)?),
    };
    Ok(Request {
        model,
        max_tokens,
        messages,
        system_bytes,
        stop_sequences,
        stream,
        tools,
        tool_choice,
    })
}

fn parse_message<'a>(m: &RawObject<'a>, i: usize) -> Result<Msg<'a>, String> {
    let at = format!("messages.{i}");
    if let Some(key) = m.unknown_key(&["role", "content"]) {
        return Err(field_error(
            &format!("{at}.{key}"),
            "Extra inputs are not permitted",
        ));
    }
    let role = match m.parse::<Str<'_>>("role").map_err(|_| {
        field_error(
            &format!("{at}.role"),
            "Input should be 'user' or 'assistant'",
        )
    })? {
        None => return Err(field_error(&format!("{at}.role"), "Field required")),
        Some(r) => match r.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => {
                return Err(field_error(
                    &format!("{at}.role"),
                    "Input should be 'user' or 'assistant'",
                ))
            }
        },
    };
    let mut msg = Msg {
        role,
        texts: Vec::new(),
        other_bytes: 0,
        tool_uses: Vec::new(),
        tool_results: Vec::new(),
        empty: false,
    };
    let Some(content) = m.get("content") else {
        return Err(field_error(&format!("{at}.content"), "Field required"));
    };
    if let Ok(Str(text)) = parse_raw::<Str<'_>>(content) {
        msg.empty = text.is_empty();
        msg.texts.push(text);
        return Ok(msg);
    }
    let blocks: Vec<RawObject<'_>> = parse_raw(content).map_err(|_| {
        field_error(
            &format!("{at}.content"),
            "Input should be a valid string or a valid list",
        )
    })?;
    msg.empty = blocks.is_empty();
    for (j, block) in blocks.iter().enumerate() {
        let bat = format!("{at}.content.{j}");
        let kind = block
            .parse::<Str<'_>>("type")
            .map_err(|_| field_error(&format!("{bat}.type"), "Input should be a valid string"))?
            .ok_or_else(|| field_error(&format!("{bat}.type"), "Field required"))?;
        match kind.as_str() {
            "text" => {
                let text = block
                    .parse::<Str<'_>>("text")
                    .map_err(|_| {
                        field_error(
                            &format!("{bat}.text.text"),
                            "Input should be a valid string",
                        )
                    })?
                    .ok_or_else(|| field_error(&format!("{bat}.text.text"), "Field required"))?
                    .0;
                if text.is_empty() {
                    return Err("messages: text content blocks must be non-empty".to_owned());
                }
                msg.texts.push(text);
            }
            "tool_use" => {
                let id =
                    block.parse::<Str<'_>>("id").ok().flatten().ok_or_else(|| {
                        field_error(&format!("{bat}.tool_use.id"), "Field required")
                    })?;
                if block.get("name").is_none() {
                    return Err(field_error(
                        &format!("{bat}.tool_use.name"),
                        "Field required",
                    ));
                }
                match block.get("input") {
                    Some(input) if input.get().starts_with('{') => {
                        msg.other_bytes += input.get().len();
                    }
                    Some(_) => {
                        return Err(field_error(
                            &format!("{bat}.tool_use.input"),
                            "Input should be a valid dictionary",
                        ))
                    }
                    None => {
                        return Err(field_error(
                            &format!("{bat}.tool_use.input"),
                            "Field required",
                        ))
                    }
                }
                msg.tool_uses.push(id.0);
            }
            "tool_result" => {
                let id = block
                    .parse::<Str<'_>>("tool_use_id")
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        field_error(&format!("{bat}.tool_result.tool_use_id"), "Field required")
                    })?;
                msg.other_bytes += block.get("content").map_or(0, tool_result_bytes);
                msg.tool_results.push((j, id.0));
            }
            // image, document, thinking, redacted_thinking, search_result, server tools…
            _ => {}
        }
    }
    Ok(msg)
}

/// The text bytes of a `tool_result` block's content (a string or text blocks).
fn tool_result_bytes(raw: &RawValue) -> usize {
    if let Ok(Str(s)) = parse_raw::<Str<'_>>(raw) {
        return s.len();
    }
    parse_raw::<Vec<RawObject<'_>>>(raw).map_or(0, |blocks| {
        blocks
            .iter()
            .filter_map(|b| b.parse::<Str<'_>>("text").ok().flatten())
            .map(|t| t.0.len())
            .sum()
    })
}

/// `system`: a string or a list of text blocks.
fn system_bytes(raw: &RawValue) -> Result<usize, String> {
    if let Ok(Str(s)) = parse_raw::<Str<'_>>(raw) {
        return Ok(s.len());
    }
    let blocks: Vec<RawObject<'_>> = parse_raw(raw)
        .map_err(|_| field_error("system", "Input should be a valid string or a valid list"))?;
    let mut bytes = 0;
    for (j, b) in blocks.iter().enumerate() {
        match b.parse::<Str<'_>>("type").ok().flatten() {
            Some(t) if t.as_str() == "text" => {}
            _ => {
                return Err(field_error(
                    &format!("system.{j}.type"),
                    "Input should be 'text'",
                ))
            }
        }
        let text = b
            .parse::<Str<'_>>("text")
            .ok()
            .flatten()
            .ok_or_else(|| field_error(&format!("system.{j}.text"), "Field required"))?;
        if text.0.is_empty() {
            return Err("system: text content blocks must be non-empty".to_owned());
        }
        bytes += text.0.len();
    }
    Ok(bytes)
}

/// Roles alternate from `user`; content is non-empty (but for a final
/// assistant prefill); every `tool_use` is answered by a `tool_result` in the
/// next message and every `tool_result` answers a `tool_use` of the one before.
fn check_conversation(messages: &[Msg<'_>]) -> Result<(), String> {
    let Some(first) = messages.first() else {
        return Err("messages: at least one message is required".to_owned());
    };
    if first.role != Role::User {
        return Err("messages: first message must use the \"user\" role".to_owned());
    }
    let last = messages.len() - 1;
    for (i, m) in messages.iter().enumerate() {
        if i > 0 && messages[i - 1].role == m.role {
            return Err(format!(
                "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"{}\" roles in a row",
                m.role.as_str()
            ));
        }
        if m.empty && !(i == last && m.role == Role::Assistant) {
            return Err(format!(
                "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            ));
        }
        let previous_uses: &[Cow<'_, str>] = match i.checked_sub(1) {
            Some(p) if messages[p].role == Role::Assistant => &messages[p].tool_uses,
            _ => &[],
        };
        for (j, id) in &m.tool_results {
            if !previous_uses.contains(id) {
                return Err(format!(
                    "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                ));
            }
        }
        if m.role == Role::Assistant && i < last {
            let answered = &messages[i + 1].tool_results;
            let missing: Vec<&str> = m
                .tool_uses
                .iter()
                .filter(|id| !answered.iter().any(|(_, a)| a == *id))
                .map(|id| id.as_ref())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    i + 1,
                    missing.join(", ")
                ));
            }
        }
    }
    let final_msg = &messages[last];
    if final_msg.role == Role::Assistant
        && final_msg
            .texts
            .last()
            .is_some_and(|t| t.ends_with(char::is_whitespace))
    {
        return Err(
            "messages: final assistant content cannot end with trailing whitespace".to_owned(),
        );
    }
    Ok(())
}

/// `tools`: custom tools need a `name` and an `input_schema`; server tools
/// (with a `type` other than `custom`) are accepted as they are.
fn parse_tools(raw: &RawValue) -> Result<Vec<Cow<'_, str>>, String> {
    let tools: Vec<RawObject<'_>> =
        parse_raw(raw).map_err(|_| field_error("tools", "Input should be a valid list"))?;
    let mut names = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let custom = match t.parse::<Str<'_>>("type").ok().flatten() {
            None => true,
            Some(kind) => kind.as_str() == "custom",
        };
        if !custom {
            continue;
        }
        let name = t
            .parse::<Str<'_>>("name")
            .ok()
            .flatten()
            .ok_or_else(|| field_error(&format!("tools.{i}.custom.name"), "Field required"))?;
        match t.get("input_schema") {
            Some(s) if s.get().starts_with('{') => {}
            Some(_) => {
                return Err(field_error(
                    &format!("tools.{i}.custom.input_schema"),
                    "Input should be a valid dictionary",
                ))
            }
            None => {
                return Err(field_error(
                    &format!("tools.{i}.custom.input_schema"),
                    "Field required",
                ))
            }
        }
        names.push(name.0);
    }
    Ok(names)
}

fn parse_tool_choice(raw: &RawValue) -> Result<ChoiceKind<'_>, String> {
    let choice: RawObject<'_> = parse_raw(raw)
        .map_err(|_| field_error("tool_choice", "Input should be a valid dictionary"))?;
    let kind = choice
        .parse::<Str<'_>>("type")
        .ok()
        .flatten()
        .ok_or_else(|| {
            field_error(
                "tool_choice",
                "Unable to extract tag using discriminator 'type'",
            )
        })?;
    match kind.as_str() {
        "auto" => Ok(ChoiceKind::Auto),
        "any" => Ok(ChoiceKind::Any),
        "none" => Ok(ChoiceKind::None),
        "tool" => choice
            .parse::<Str<'_>>("name")
            .ok()
            .flatten()
            .map(|n| ChoiceKind::Tool(n.0))
            .ok_or_else(|| field_error("tool_choice.tool.name", "Field required")),
        other => Err(format!(
            "tool_choice: Input tag '{other}' found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
        )),
    }
}

// ---------------------------------------------------------------------------
// Responses

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: Option<&'a str>,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'static str,
        name: &'a str,
        input: ToolArguments,
    },
}

#[derive(Serialize, Clone, Copy)]
struct UsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation: CacheCreation,
    output_tokens: u64,
    service_tier: &'static str,
}

#[derive(Serialize, Clone, Copy, Default)]
struct CacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

impl UsageOut {
    fn new(input_tokens: u64, output_tokens: u64) -> UsageOut {
        UsageOut {
            input_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            cache_creation: CacheCreation::default(),
            output_tokens,
            service_tier: "standard",
        }
    }
}

/// The custom tool to call, when the request offers one, allows calling it,
/// the last message is a user turn that is not itself returning tool results,
/// and `tool_call` is set.
fn tool_call_name<'r>(req: &'r Request<'_>, d: &Directives) -> Option<&'r str> {
    if !d.wants_tool_call() {
        return None;
    }
    let last = req.messages.last()?;
    if last.role != Role::User || !last.tool_results.is_empty() {
        return None;
    }
    match &req.tool_choice {
        Some(ChoiceKind::None) => None,
        Some(ChoiceKind::Tool(name)) => Some(name),
        Some(ChoiceKind::Auto | ChoiceKind::Any) | None => req.tools.first().map(|n| n.as_ref()),
    }
}

fn messages(req: &Request<'_>, seq: u64) -> Reply {
    let model: &str = &req.model;
    let prompt = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(Msg::text)
        .unwrap_or_default();
    let (_, mut d) = Directives::from_model(model);
    d.apply_text(&prompt);
    if let Some(status) = d.error_status() {
        return apply_transport(scripted_error(status, seq), &d);
    }
    let prompt_bytes = req.system_bytes + req.messages.iter().map(Msg::prompt_bytes).sum::<usize>();
    let input_tokens = prompt_tokens(prompt_bytes);
    let id = format!("msg_mock_{seq}");

    let reply = match tool_call_name(req, &d) {
        Some(name) => {
            let usage = UsageOut::new(input_tokens, tool_call_tokens());
            if req.stream {
                Reply::event_stream(tool_use_events(&id, model, name, usage, &d))
            } else {
                message_reply(&MessageOut {
                    id: &id,
                    kind: "message",
                    role: "assistant",
                    model,
                    content: vec![BlockOut::ToolUse {
                        id: TOOL_USE_ID,
                        name,
                        input: TOOL_INPUT,
                    }],
                    stop_reason: Some("tool_use"),
                    stop_sequence: None,
                    usage,
                })
            }
        }
        None => {
            let mut content = reply_content(&d, &prompt);
            let (stop_reason, stop_sequence) =
                match truncate(&mut content, &req.stop_sequences, Some(req.max_tokens)) {
                    None => ("end_turn", None),
                    Some(Truncation::MaxTokens) => ("max_tokens", None),
                    Some(Truncation::StopSequence(s)) => ("stop_sequence", Some(s)),
                };
            let usage = UsageOut::new(input_tokens, completion_tokens(&content));
            if req.stream {
                let end = End {
                    stop_reason,
                    stop_sequence: stop_sequence.as_deref(),
                    output_tokens: usage.output_tokens,
                };
                Reply::event_stream(text_events(&id, model, &content, usage, &end, &d))
            } else {
                message_reply(&MessageOut {
                    id: &id,
                    kind: "message",
                    role: "assistant",
                    model,
                    content: vec![BlockOut::Text { text: &content }],
                    stop_reason: Some(stop_reason),
                    stop_sequence: stop_sequence.as_deref(),
                    usage,
                })
            }
        }
    };
    apply_transport(reply, &d)
}

fn message_reply(m: &MessageOut<'_>) -> Reply {
    Reply::json(StatusCode::OK, to_json(m))
}

// ---------------------------------------------------------------------------
// Streams

/// One `event: <name>\ndata: <json>\n\n` event whose JSON `data` writes.
fn event(name: &str, data: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(64 + name.len());
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    data(&mut buf);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// `message_start`: the message with empty content and the input usage.
fn message_start(id: &str, model: &str, input_tokens: u64) -> Bytes {
    event("message_start", |b| {
        b.extend_from_slice(b"{\"type\":\"message_start\",\"message\":");
        let _ = serde_json::to_writer(
            &mut *b,
            &MessageOut {
                id,
                kind: "message",
                role: "assistant",
                model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: UsageOut::new(input_tokens, 1),
            },
        );
        b.push(b'}');
    })
}

fn block_start(index: usize, block: &BlockOut<'_>) -> Bytes {
    event("content_block_start", |b| {
        b.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
        b.extend_from_slice(index.to_string().as_bytes());
        b.extend_from_slice(b",\"content_block\":");
        let _ = serde_json::to_writer(&mut *b, block);
        b.push(b'}');
    })
}

/// `content_block_delta` with a `text_delta` or an `input_json_delta`.
fn block_delta(index: usize, kind: &str, field: &str, piece: &str) -> Bytes {
    event("content_block_delta", |b| {
        b.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
        b.extend_from_slice(index.to_string().as_bytes());
        b.extend_from_slice(b",\"delta\":{\"type\":");
        push_json_str(b, kind);
        b.push(b',');
        push_json_str(b, field);
        b.push(b':');
        push_json_str(b, piece);
        b.extend_from_slice(b"}}");
    })
}

fn block_stop(index: usize) -> Bytes {
    event("content_block_stop", |b| {
        b.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
        b.extend_from_slice(index.to_string().as_bytes());
        b.push(b'}');
    })
}

/// How the message ends: `message_delta` then `message_stop`.
struct End<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
    output_tokens: u64,
}

fn finish(events: &mut VecDeque<Bytes>, end: &End<'_>) {
    events.push_back(event("message_delta", |b| {
        b.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
        push_json_str(b, end.stop_reason);
        b.extend_from_slice(b",\"stop_sequence\":");
        match end.stop_sequence {
            Some(s) => push_json_str(b, s),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b"},\"usage\":{\"output_tokens\":");
        b.extend_from_slice(end.output_tokens.to_string().as_bytes());
        b.extend_from_slice(b"}}");
    }));
    events.push_back(event("message_stop", |b| {
        b.extend_from_slice(b"{\"type\":\"message_stop\"}");
    }));
}

fn text_events(
    id: &str,
    model: &str,
    content: &str,
    usage: UsageOut,
    end: &End<'_>,
    d: &Directives,
) -> VecDeque<Bytes> {
    let pieces = content_pieces(content, d.chunks);
    let mut events = VecDeque::with_capacity(pieces.len() + 6);
    events.push_back(message_start(id, model, usage.input_tokens));
    events.push_back(block_start(0, &BlockOut::Text { text: "" }));
    events.push_back(Bytes::from_static(PING_EVENT));
    if d.wants_error_mid_stream() && pieces.is_empty() {
        events.push_back(Bytes::from_static(OVERLOADED_EVENT));
        return events;
    }
    for piece in pieces {
        events.push_back(block_delta(0, "text_delta", "text", piece));
        if d.wants_error_mid_stream() {
            events.push_back(Bytes::from_static(OVERLOADED_EVENT));
            return events;
        }
    }
    events.push_back(block_stop(0));
    finish(&mut events, end);
    events
}

fn tool_use_events(
    id: &str,
    model: &str,
    name: &str,
    usage: UsageOut,
    d: &Directives,
) -> VecDeque<Bytes> {
    let mut events = VecDeque::with_capacity(TOOL_ARGUMENT_PIECES.len() + 8);
    events.push_back(message_start(id, model, usage.input_tokens));
    // The block starts with an empty input; the input follows as JSON pieces.
    events.push_back(event("content_block_start", |b| {
        b.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":");
        push_json_str(b, TOOL_USE_ID);
        b.extend_from_slice(b",\"name\":");
        push_json_str(b, name);
        b.extend_from_slice(b",\"input\":{}}}");
    }));
    events.push_back(Bytes::from_static(PING_EVENT));
    events.push_back(block_delta(0, "input_json_delta", "partial_json", ""));
    for piece in TOOL_ARGUMENT_PIECES {
        events.push_back(block_delta(0, "input_json_delta", "partial_json", piece));
        if d.wants_error_mid_stream() {
            events.push_back(Bytes::from_static(OVERLOADED_EVENT));
            return events;
        }
    }
    events.push_back(block_stop(0));
    finish(
        &mut events,
        &End {
            stop_reason: "tool_use",
            stop_sequence: None,
            output_tokens: usage.output_tokens,
        },
    );
    events
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(body: &str) -> Result<(), String> {
        parse_request(body.as_bytes()).map(|_| ())
    }

    #[test]
    fn validation_messages() {
        let ok = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(parse(ok), Ok(()));
        let cases = [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                "max_tokens: Field required",
            ),
            (
                r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}"#,
                "max_tokens: Input should be greater than or equal to 1",
            ),
            (
                r#"{"model":"m","max_tokens":5,"n":2,"messages":[{"role":"user","content":"hi"}]}"#,
                "n: Extra inputs are not permitted",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"hi"}]}"#,
                "messages.0.role: Input should be 'user' or 'assistant'",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":"hi"}]}"#,
                "messages: first message must use the \"user\" role",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#,
                "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"user\" roles in a row",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":""}]}"#,
                "messages.0: all messages must have non-empty content except for the optional final assistant message",
            ),
            (
                r#"{"model":"m","max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"a"}]}"#,
                "temperature: Input should be less than or equal to 1",
            ),
            (
                r#"{"model":"m","max_tokens":5,"tools":[{"name":"f"}],"messages":[{"role":"user","content":"a"}]}"#,
                "tools.0.custom.input_schema: Field required",
            ),
            (
                r#"{"model":"m","max_tokens":5,"tool_choice":{"type":"required"},"messages":[{"role":"user","content":"a"}]}"#,
                "tool_choice: Input tag 'required' found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b "}]}"#,
                "messages: final assistant content cannot end with trailing whitespace",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body), Err(want.to_owned()), "{body}");
        }
        // Empty final assistant message (prefill) is fine.
        assert_eq!(
            parse(
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a"},{"role":"assistant","content":[]}]}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn tool_pairing() {
        let history = |answer: &str| {
            format!(
                r#"{{"model":"m","max_tokens":5,"messages":[
                {{"role":"user","content":"weather?"}},
                {{"role":"assistant","content":[{{"type":"text","text":"ok"}},{{"type":"tool_use","id":"toolu_1","name":"f","input":{{}}}}]}},
                {{"role":"user","content":[{answer}]}}]}}"#
            )
        };
        assert_eq!(
            parse(&history(
                r#"{"type":"tool_result","tool_use_id":"toolu_1","content":"sunny"}"#
            )),
            Ok(())
        );
        let err = parse(&history(r#"{"type":"text","text":"hm"}"#)).unwrap_err();
        assert!(err.starts_with("messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1."), "{err}");
        let err = parse(&history(
            r#"{"type":"tool_result","tool_use_id":"toolu_1"},{"type":"tool_result","tool_use_id":"toolu_9"}"#,
        ))
        .unwrap_err();
        assert!(err.starts_with("messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9."), "{err}");
    }

    #[test]
    fn error_types() {
        assert_eq!(error_type(529), "overloaded_error");
        assert_eq!(error_type(503), "api_error");
        assert_eq!(error_type(418), "invalid_request_error");
    }
}
