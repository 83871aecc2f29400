//! Anthropic Messages API (`POST {base}/v1/messages`).
//!
//! Clients speak OpenAI's chat completions; this module translates each way:
//!
//! - **Request**: `system`/`developer` messages become the top-level `system`
//!   (joined in order with a blank line); the rest of the history becomes
//!   strictly alternating `user`/`assistant` messages (consecutive messages of
//!   one role are merged, `tool` results become `tool_result` blocks of a `user`
//!   message, assistant `tool_calls` become `tool_use` blocks). Sampling
//!   parameters, tools, `tool_choice`, `stop`, `user` and `response_format:
//!   json_schema` (as `output_config.format`) are mapped. Whatever Anthropic
//!   cannot honour (`n > 1`, `seed`, `logprobs`, penalties, `json_object`, …) is
//!   refused with a 400 that names the parameter, never dropped silently.
//! - **Response**: text blocks are concatenated into `content`, `tool_use`
//!   blocks become `tool_calls`, `stop_reason` maps to `finish_reason`, usage
//!   counts cache reads and writes as prompt tokens. `thinking` blocks are not
//!   forwarded (chat completions has no place for them).
//! - **Stream**: Anthropic's typed events are translated one at a time into
//!   `chat.completion.chunk` events, holding only the current unfinished event,
//!   the message id and model, and one small entry per tool call.
//! - **Errors**: Anthropic's `{"type":"error","error":{type,message}}` becomes
//!   OpenAI's error shape with the message kept; 529 `overloaded_error` becomes 503.
//!
//! The full mapping is in `docs/providers/anthropic.md`.

use std::borrow::Cow;

use bytes::Bytes;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use tollgate_schema::response::{Choice, FunctionCallOut, ResponseMessage, ToolCallOut};
use tollgate_schema::sse::SseDecoder;
use tollgate_schema::{
    ApiError, ChatCompletion, ChatRequest, Content, ContentPart, EmbeddingsRequest, ErrorType,
    Message, ResponseFormat, Role, Stop, ToolChoice, Usage,
};

use crate::{
    write_stream_error, ErrorOut, ResponseCtx, StreamError, TargetCtx, Translated, UpstreamRequest,
};

// ---------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------

/// A 400 for a parameter Anthropic has no equivalent for.
fn unsupported_param(param: impl Into<Cow<'static, str>>, why: &str) -> ApiError {
    let param = param.into();
    ApiError::invalid_request(format!("Anthropic does not support `{param}`: {why}"))
        .with_param(param)
        .with_code("unsupported_parameter")
}

/// A 400 for a value of a parameter Anthropic cannot honour.
fn unsupported_value(param: impl Into<Cow<'static, str>>, why: &str) -> ApiError {
    let param = param.into();
    ApiError::invalid_request(format!(
        "Unsupported value for `{param}` with Anthropic: {why}"
    ))
    .with_param(param)
    .with_code("unsupported_value")
}

/// An Anthropic content block, as sent in `messages[].content` (and inside `tool_result`).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: ImageSource<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Box<RawValue>,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Blocks::is_empty")]
        content: Blocks<'a>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

/// Content blocks; a lone text block is sent as a plain string.
#[derive(Default)]
struct Blocks<'a>(Vec<Block<'a>>);

impl Blocks<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Blocks<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let [Block::Text { text }] = self.0.as_slice() {
            return s.serialize_str(text);
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for b in &self.0 {
            seq.serialize_element(b)?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Blocks<'a>,
}

#[derive(Serialize)]
struct OutTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutToolChoice<'a> {
    Auto {
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct OutputConfig<'a> {
    format: OutputFormat<'a>,
}

#[derive(Serialize)]
struct OutputFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a RawValue,
}

/// The Messages API request body.
#[derive(Serialize)]
struct MessagesBody<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_tier: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

/// A raw field, `null` counting as absent.
fn raw_field<'a>(req: &ChatRequest<'a>, key: &str) -> Option<&'a RawValue> {
    req.raw.get(key).filter(|v| v.get() != "null")
}

/// Refuse top-level parameters Anthropic cannot honour, and unknown ones.
fn check_top_level(req: &ChatRequest<'_>) -> Result<(), ApiError> {
    for (key, value) in &req.raw.fields {
        if value.get() == "null" {
            continue;
        }
        match key.as_ref() {
            // Mapped below, or validated below.
            "model" | "messages" | "stream" | "stream_options" | "max_tokens" | "max_completion_tokens"
            | "temperature" | "top_p" | "top_k" | "stop" | "user" | "safety_identifier" | "tools"
            | "tool_choice" | "parallel_tool_calls" | "response_format" | "n" | "seed" | "logprobs"
            | "top_logprobs" | "presence_penalty" | "frequency_penalty" | "logit_bias" | "store"
            | "service_tier" | "modalities" => {}
            // OpenAI-side bookkeeping with no effect on the completion.
            "metadata" | "prompt_cache_key" => {}
            "reasoning_effort" | "verbosity" => {
                return Err(unsupported_param(
                    key.to_string(),
                    "this translation does not map it; Anthropic's extended thinking is not exposed through chat completions.",
                ))
            }
            "functions" | "function_call" => {
                return Err(unsupported_param(key.to_string(), "use `tools` and `tool_choice` instead."))
            }
            "audio" | "prediction" | "web_search_options" => {
                return Err(unsupported_param(key.to_string(), "there is no equivalent in the Messages API."))
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "Unrecognized request argument supplied: {other}"
                ))
                .with_param(other.to_string())
                .with_code("unknown_parameter"))
            }
        }
    }
    if let Some(n) = req.n {
        if n != 1 {
            return Err(unsupported_value(
                "n",
                "Anthropic returns exactly one choice; `n` must be 1.",
            ));
        }
    }
    if req.seed()?.is_some() {
        return Err(unsupported_param(
            "seed",
            "Anthropic has no seeded sampling.",
        ));
    }
    if req.raw.typed::<bool>("logprobs")? == Some(true) {
        return Err(unsupported_param(
            "logprobs",
            "Anthropic does not return log probabilities.",
        ));
    }
    if req.raw.typed::<u64>("top_logprobs")?.is_some_and(|v| v > 0) {
        return Err(unsupported_param(
            "top_logprobs",
            "Anthropic does not return log probabilities.",
        ));
    }
    for p in ["presence_penalty", "frequency_penalty"] {
        if req.raw.typed::<f64>(p)?.is_some_and(|v| v != 0.0) {
            return Err(unsupported_param(
                p,
                "Anthropic has no repetition penalties.",
            ));
        }
    }
    if req
        .raw
        .typed::<serde_json::Map<String, serde_json::Value>>("logit_bias")?
        .is_some_and(|m| !m.is_empty())
    {
        return Err(unsupported_param(
            "logit_bias",
            "Anthropic has no token biasing.",
        ));
    }
    if req.raw.typed::<bool>("store")? == Some(true) {
        return Err(unsupported_value(
            "store",
            "Anthropic does not store completions.",
        ));
    }
    if let Some(m) = req.raw.typed::<Vec<Cow<'_, str>>>("modalities")? {
        if m.iter().any(|m| m != "text") {
            return Err(unsupported_value(
                "modalities",
                "Anthropic generates text only.",
            ));
        }
    }
    if let Some(t) = req.temperature()? {
        if !(0.0..=1.0).contains(&t) {
            return Err(unsupported_value(
                "temperature",
                "Anthropic accepts a temperature between 0 and 1.",
            ));
        }
    }
    req.raw.typed::<u64>("top_k")?;
    Ok(())
}

/// `service_tier`: OpenAI `auto` is Anthropic's default; `default` is `standard_only`.
fn service_tier(req: &ChatRequest<'_>) -> Result<Option<&'static str>, ApiError> {
    match req.raw.typed::<Cow<'_, str>>("service_tier")?.as_deref() {
        None | Some("auto") => Ok(None),
        Some("default") => Ok(Some("standard_only")),
        Some(_) => Err(unsupported_value(
            "service_tier",
            "Anthropic offers `auto` and `default` (standard capacity only).",
        )),
    }
}

/// A `data:` URL or http(s) URL as an Anthropic image source.
fn image_source<'a>(url: &'a str, param: impl Fn() -> String) -> Result<ImageSource<'a>, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let bad = |why: &str| {
            let p = param();
            ApiError::invalid_request(format!("Invalid image data URL in `{p}`: {why}"))
                .with_param(p)
        };
        let (meta, data) = rest.split_once(',').ok_or_else(|| bad("missing `,`."))?;
        let (media_type, encoding) = meta.split_once(';').unwrap_or((meta, ""));
        if !encoding.split(';').any(|e| e == "base64") {
            return Err(bad(
                "Anthropic needs base64-encoded image data (`data:image/png;base64,...`).",
            ));
        }
        if !media_type.starts_with("image/") {
            return Err(bad("the media type must be an image type (image/jpeg, image/png, image/gif or image/webp)."));
        }
        return Ok(ImageSource::Base64 { media_type, data });
    }
    let lower = url
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(ImageSource::Url { url });
    }
    let p = param();
    Err(ApiError::invalid_request(format!(
        "Invalid image URL in `{p}`: expected an http(s) URL or a base64 `data:` URL."
    ))
    .with_param(p))
}

/// Content of a user (`images`) or assistant/tool message as blocks; empty text is dropped
/// (Anthropic rejects empty text blocks).
fn content_blocks<'a>(
    content: &'a Content<'a>,
    i: usize,
    images: bool,
    out: &mut Vec<Block<'a>>,
) -> Result<(), ApiError> {
    match content {
        Content::None => {}
        Content::Text(t) => {
            if !t.is_empty() {
                out.push(Block::Text {
                    text: Cow::Borrowed(t),
                });
            }
        }
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                        if !text.is_empty() {
                            out.push(Block::Text {
                                text: Cow::Borrowed(text),
                            });
                        }
                    }
                    ContentPart::ImageUrl { url, .. } if images => {
                        let source =
                            image_source(url, || format!("messages[{i}].content[{j}].image_url"))?;
                        out.push(Block::Image { source });
                    }
                    ContentPart::ImageUrl { .. } => {
                        return Err(unsupported_value(
                            format!("messages[{i}].content[{j}]"),
                            "Anthropic accepts images only in user and tool messages.",
                        ))
                    }
                    ContentPart::InputAudio { .. } => {
                        return Err(unsupported_value(
                            format!("messages[{i}].content[{j}]"),
                            "Anthropic does not accept audio input.",
                        ))
                    }
                    ContentPart::Other { kind } => {
                        return Err(unsupported_value(
                            format!("messages[{i}].content[{j}].type"),
                            &format!("content parts of type `{kind}` cannot be sent to Anthropic."),
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// A tool call's JSON-string arguments as the `input` object of a `tool_use` block.
fn tool_input(args: &str, param: impl Fn() -> String) -> Result<Box<RawValue>, ApiError> {
    let trimmed = args.trim();
    if trimmed.is_empty() {
        return RawValue::from_string("{}".to_owned())
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let bad = |why: String| {
        let p = param();
        ApiError::invalid_request(format!("Invalid value for `{p}`: {why}")).with_param(p)
    };
    let raw: Box<RawValue> = serde_json::from_str(trimmed)
        .map_err(|e| bad(format!("the arguments are not valid JSON ({e}).")))?;
    if !raw.get().starts_with('{') {
        return Err(bad(
            "Anthropic needs the arguments to be a JSON object.".into()
        ));
    }
    Ok(raw)
}

/// Append blocks to the last message when it has the same role, else start a new one.
fn push_message<'a>(out: &mut Vec<OutMessage<'a>>, role: &'static str, blocks: Vec<Block<'a>>) {
    if blocks.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.role == role => last.content.0.extend(blocks),
        _ => out.push(OutMessage {
            role,
            content: Blocks(blocks),
        }),
    }
}

/// Split the conversation into the `system` string and alternating messages.
fn translate_messages<'a>(
    messages: &'a [Message<'a>],
) -> Result<(Option<String>, Vec<OutMessage<'a>>), ApiError> {
    let mut system: Option<String> = None;
    let mut out: Vec<OutMessage<'a>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                let mut blocks = Vec::new();
                content_blocks(&m.content, i, false, &mut blocks)?;
                for b in blocks {
                    if let Block::Text { text } = b {
                        let s = system.get_or_insert_with(String::new);
                        if !s.is_empty() {
                            s.push_str("\n\n");
                        }
                        s.push_str(&text);
                    }
                }
            }
            Role::User => {
                let mut blocks = Vec::new();
                content_blocks(&m.content, i, true, &mut blocks)?;
                push_message(&mut out, "user", blocks);
            }
            Role::Assistant => {
                let mut blocks = Vec::new();
                content_blocks(&m.content, i, false, &mut blocks)?;
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    if call.kind != "function" {
                        return Err(unsupported_value(
                            format!("messages[{i}].tool_calls[{j}].type"),
                            "only `function` tool calls can be sent to Anthropic.",
                        ));
                    }
                    let input = tool_input(&call.function.arguments, || {
                        format!("messages[{i}].tool_calls[{j}].function.arguments")
                    })?;
                    blocks.push(Block::ToolUse {
                        id: Cow::Borrowed(&call.id),
                        name: Cow::Borrowed(&call.function.name),
                        input,
                    });
                }
                push_message(&mut out, "assistant", blocks);
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "Missing parameter `messages[{i}].tool_call_id`: a tool message must name the call it answers."
                    ))
                    .with_param(format!("messages[{i}].tool_call_id"))
                })?;
                let mut inner = Vec::new();
                content_blocks(&m.content, i, true, &mut inner)?;
                push_message(
                    &mut out,
                    "user",
                    vec![Block::ToolResult {
                        tool_use_id: Cow::Borrowed(id),
                        content: Blocks(inner),
                    }],
                );
            }
            Role::Function => {
                return Err(unsupported_value(
                    format!("messages[{i}].role"),
                    "legacy `function` messages cannot be mapped; use `tool` messages with `tool_call_id`.",
                ))
            }
        }
    }
    // Anthropic wants tool results first in a user turn; moving them there keeps their order.
    for m in out.iter_mut().filter(|m| m.role == "user") {
        m.content
            .0
            .sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
    }
    if out.is_empty() {
        return Err(ApiError::invalid_request(
            "Anthropic needs at least one non-empty user or assistant message besides system instructions.",
        )
        .with_param("messages"));
    }
    Ok((system, out))
}

/// `tools`, `tool_choice` and `parallel_tool_calls`.
fn translate_tools<'a>(
    req: &ChatRequest<'a>,
    tools: &'a [tollgate_schema::Tool<'a>],
    choice: Option<&'a ToolChoice<'a>>,
) -> Result<(Vec<OutTool<'a>>, Option<OutToolChoice<'a>>), ApiError> {
    static EMPTY_SCHEMA: &str = r#"{"type":"object","properties":{}}"#;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(unsupported_value(
                format!("tools[{i}].type"),
                "only `function` tools can be sent to Anthropic.",
            ));
        }
        let f = &tool.function;
        let input_schema = match f.parameters {
            Some(p) if p.get() != "null" => p,
            _ => serde_json::from_str::<&RawValue>(EMPTY_SCHEMA)
                .map_err(|e| ApiError::internal(e.to_string()))?,
        };
        out.push(OutTool {
            name: &f.name,
            description: f.description.as_deref(),
            input_schema,
            strict: f.strict.filter(|s| *s),
        });
    }
    let disable_parallel = match req.parallel_tool_calls()? {
        Some(false) => Some(true),
        _ => None,
    };
    if out.is_empty() {
        return match choice {
            None | Some(ToolChoice::None | ToolChoice::Auto) => Ok((out, None)),
            Some(_) => Err(ApiError::invalid_request(
                "Invalid value for `tool_choice`: a tool must be required only when `tools` are given.",
            )
            .with_param("tool_choice")),
        };
    }
    let explicit = choice.is_some();
    let choice = match choice {
        None | Some(ToolChoice::Auto) => OutToolChoice::Auto {
            disable_parallel_tool_use: disable_parallel,
        },
        Some(ToolChoice::None) => OutToolChoice::None,
        Some(ToolChoice::Required) => OutToolChoice::Any {
            disable_parallel_tool_use: disable_parallel,
        },
        Some(ToolChoice::Function(name)) => {
            if !out.iter().any(|t| t.name == name.as_ref()) {
                return Err(ApiError::invalid_request(format!(
                    "Invalid value for `tool_choice`: no tool named `{name}` is defined in `tools`."
                ))
                .with_param("tool_choice"));
            }
            OutToolChoice::Tool {
                name: name.as_ref(),
                disable_parallel_tool_use: disable_parallel,
            }
        }
    };
    // `auto` is Anthropic's default: sent only when the client chose it or it carries the parallel flag.
    let choice = match choice {
        OutToolChoice::Auto {
            disable_parallel_tool_use: None,
        } if !explicit => None,
        c => Some(c),
    };
    Ok((out, choice))
}

/// Chat request: the unified request as an Anthropic Messages request.
pub fn chat_request(req: &ChatRequest<'_>, t: &TargetCtx<'_>) -> Result<UpstreamRequest, ApiError> {
    check_top_level(req)?;
    let (system, messages) = translate_messages(&req.messages)?;
    let tools = req.tools()?.unwrap_or_default();
    let choice = req.tool_choice()?;
    let (tools, tool_choice) = translate_tools(req, &tools, choice.as_ref())?;
    let format = req.response_format()?;
    let output_config =
        match &format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => return Err(unsupported_value(
                "response_format",
                "Anthropic has no free-form JSON mode; use `json_schema` with a schema instead.",
            )),
            Some(ResponseFormat::JsonSchema(spec)) => {
                let schema = spec.schema.filter(|s| s.get() != "null").ok_or_else(|| {
                    ApiError::invalid_request(
                        "Missing `response_format.json_schema.schema`: Anthropic needs a schema.",
                    )
                    .with_param("response_format.json_schema.schema")
                })?;
                Some(OutputConfig {
                    format: OutputFormat {
                        kind: "json_schema",
                        schema,
                    },
                })
            }
        };
    let stop = req.stop()?;
    let stop_sequences = match &stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.as_ref()],
        Some(Stop::Many(v)) => v.iter().map(|s| s.as_ref()).collect(),
    };
    let user = match req.user()? {
        Some(u) => Some(u),
        None => req
            .raw
            .typed::<tollgate_schema::chat::BorrowedStr<'_>>("safety_identifier")?
            .map(|s| s.0),
    };
    let body = MessagesBody {
        model: t.upstream_model,
        max_tokens: req.max_tokens.unwrap_or(t.default_max_tokens),
        system,
        messages,
        temperature: raw_field(req, "temperature"),
        top_p: raw_field(req, "top_p"),
        top_k: raw_field(req, "top_k"),
        stop_sequences,
        metadata: user.as_deref().map(|user_id| Metadata { user_id }),
        tools,
        tool_choice,
        output_config,
        service_tier: service_tier(req)?,
        stream: req.stream,
    };
    let body = serde_json::to_vec(&body)
        .map_err(|e| ApiError::internal(format!("serializing the Anthropic request: {e}")))?;
    Ok(UpstreamRequest {
        path: format!("{}/v1/messages", t.base_path),
        body,
        stream: req.stream,
    })
}

/// Anthropic has no embeddings endpoint: always a 400 naming `model`.
pub fn embeddings_request(
    _req: &EmbeddingsRequest<'_>,
    _t: &TargetCtx<'_>,
) -> Result<UpstreamRequest, ApiError> {
    Err(no_embeddings())
}

/// Anthropic has no embeddings endpoint: never called, refuses like [`embeddings_request`].
pub fn embeddings_response(_body: Bytes, _ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    Err(no_embeddings())
}

fn no_embeddings() -> ApiError {
    ApiError::invalid_request(
        "Anthropic has no embeddings API; route this model to a provider that serves embeddings.",
    )
    .with_param("model")
    .with_code("unsupported_model")
}

// ---------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------

/// Anthropic's `usage`; every field may be absent or null.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct AUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AUsage {
    /// Overwrite the fields present in `other`.
    fn update(&mut self, other: &AUsage) {
        self.input_tokens = other.input_tokens.or(self.input_tokens);
        self.output_tokens = other.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = other
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = other
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// OpenAI usage: cache reads and writes are part of the prompt.
    fn to_usage(self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0)
                + cached
                + self.cache_creation_input_tokens.unwrap_or(0),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: cached,
            reasoning_tokens: 0,
        }
    }
}

/// `stop_reason` → `finish_reason`.
fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and anything newer.
        _ => "stop",
    }
}

#[derive(Deserialize)]
struct MessageResponse<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Vec<ResponseBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<AUsage>,
}

#[derive(Deserialize)]
struct ResponseBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// JSON text without the whitespace outside strings (key order kept).
fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

/// A 2xx Messages response as a `chat.completion`.
pub fn chat_response(body: Bytes, ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    let msg: MessageResponse<'_> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_gateway(format!(
            "The provider returned an invalid message body: {e}"
        ))
    })?;
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for block in &msg.content {
        match block.kind.as_ref() {
            "text" => text
                .get_or_insert_with(String::new)
                .push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => calls.push(ToolCallOut {
                index: None,
                id: block.id.as_deref().map(str::to_owned),
                kind: Some("function".to_owned()),
                function: FunctionCallOut {
                    name: block.name.as_deref().map(str::to_owned),
                    arguments: Some(
                        block
                            .input
                            .map_or_else(|| "{}".to_owned(), |i| compact_json(i.get())),
                    ),
                },
            }),
            // thinking, redacted_thinking, server tool blocks: no place in chat completions.
            _ => {}
        }
    }
    let usage = msg.usage.map(AUsage::to_usage);
    let content = match text {
        Some(t) => Some(t),
        None if calls.is_empty() => Some(String::new()),
        None => None,
    };
    let out = ChatCompletion {
        id: msg.id.into_owned(),
        object: "chat.completion".to_owned(),
        created: ctx.now_unix,
        model: msg.model.into_owned(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content,
                refusal: None,
                tool_calls: if calls.is_empty() { None } else { Some(calls) },
            },
            logprobs: None,
            finish_reason: Some(finish_reason(msg.stop_reason.as_deref()).to_owned()),
        }],
        usage,
        system_fingerprint: None,
    };
    let body = serde_json::to_vec(&out)
        .map_err(|e| ApiError::internal(format!("serializing the response: {e}")))?;
    Ok(Translated {
        body: Bytes::from(body),
        usage,
    })
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(borrow)]
    error: ErrorBody<'a>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// Anthropic status → client status: 529 (overloaded) is not an HTTP status clients know.
fn client_status(status: u16) -> u16 {
    if status == 529 {
        503
    } else {
        status
    }
}

/// An Anthropic error type and message as an OpenAI error; `status` is the HTTP status, if any.
fn anthropic_error(kind: Option<&str>, message: &str, status: Option<u16>) -> ApiError {
    let (default_status, openai) = match kind {
        Some("invalid_request_error") => (400, ErrorType::InvalidRequest),
        Some("authentication_error") => (401, ErrorType::Authentication),
        Some("billing_error") => (402, ErrorType::InsufficientQuota),
        Some("permission_error") => (403, ErrorType::Permission),
        Some("not_found_error") => (404, ErrorType::InvalidRequest),
        Some("request_too_large") => (413, ErrorType::InvalidRequest),
        Some("rate_limit_error") => (429, ErrorType::RateLimit),
        Some("api_error") => (500, ErrorType::Api),
        Some("timeout_error") => (504, ErrorType::Timeout),
        Some("overloaded_error") => (503, ErrorType::Overloaded),
        _ => match status.unwrap_or(502) {
            401 => (401, ErrorType::Authentication),
            403 => (403, ErrorType::Permission),
            429 => (429, ErrorType::RateLimit),
            s @ 400..=499 => (s, ErrorType::InvalidRequest),
            s @ (503 | 529) => (s, ErrorType::Overloaded),
            504 => (504, ErrorType::Timeout),
            s => (s, ErrorType::Api),
        },
    };
    let status = client_status(status.unwrap_or(default_status));
    let mut err = ApiError::new(status, openai, message.to_owned());
    // Keep Anthropic's type where OpenAI's differs, so nothing is lost.
    if let Some(k) = kind.filter(|k| *k != openai.as_str()) {
        err = err.with_code(k.to_owned());
    }
    err
}

/// A non-2xx response: Anthropic's error in OpenAI's shape, message kept; anything
/// else wrapped with the start of what the provider said.
pub fn error_response(status: u16, body: Bytes) -> ErrorOut {
    let err = match serde_json::from_slice::<ErrorEnvelope<'_>>(&body) {
        Ok(ErrorEnvelope {
            error:
                ErrorBody {
                    kind,
                    message: Some(message),
                },
        }) if !message.is_empty() => anthropic_error(kind.as_deref(), &message, Some(status)),
        _ => {
            let mut e = crate::openai::wrap_foreign_error(status, &body);
            e.status = client_status(status);
            e
        }
    };
    ErrorOut {
        status: err.status,
        body: Bytes::from(err.to_json()),
    }
}

// ---------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------

/// One Anthropic stream event; only the fields the translation needs.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<EventMessage<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    content_block: Option<ResponseBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<AUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct EventMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<AUsage>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChoiceOut<'a>],
    /// Absent, `null` (client asked for usage; not the usage chunk), or the usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolDeltaOut<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolDeltaOut<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDeltaOut<'a>,
}

#[derive(Serialize)]
struct FunctionDeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// Everything the stream translation keeps besides the SSE decoder.
#[derive(Debug)]
struct StreamState {
    wants_usage: bool,
    created: u64,
    id: String,
    model: String,
    usage: AUsage,
    usage_seen: bool,
    /// (Anthropic content block index, OpenAI tool-call index) for each tool_use block.
    tool_blocks: Vec<(u64, u32)>,
    first_token: bool,
    done: bool,
}

impl StreamState {
    fn write_chunk(
        &self,
        out: &mut Vec<u8>,
        delta: DeltaOut<'_>,
        finish_reason: Option<&'static str>,
    ) {
        let choices = [ChoiceOut {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        self.write(
            out,
            &choices,
            if self.wants_usage { Some(None) } else { None },
        );
    }

    fn write(&self, out: &mut Vec<u8>, choices: &[ChoiceOut<'_>], usage: Option<Option<&Usage>>) {
        let chunk = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        out.extend_from_slice(b"data: ");
        // Plain structs of strings and numbers into a Vec: serialization cannot fail.
        let _ = serde_json::to_writer(&mut *out, &chunk);
        out.extend_from_slice(b"\n\n");
    }

    fn tool_index(&self, block: Option<u64>) -> Option<u32> {
        let block = block?;
        self.tool_blocks
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }

    /// Translate one event. `Err` means the provider's stream is malformed.
    fn on_event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let ev: Event<'_> =
            serde_json::from_slice(data).map_err(|e| format!("invalid event: {e}"))?;
        match ev.kind.as_ref() {
            "message_start" => {
                if let Some(m) = ev.message {
                    if let Some(id) = m.id {
                        self.id = id.into_owned();
                    }
                    if let Some(model) = m.model {
                        self.model = model.into_owned();
                    }
                    if let Some(u) = m.usage {
                        self.usage.update(&u);
                        self.usage_seen = true;
                    }
                }
                let delta = DeltaOut {
                    role: Some("assistant"),
                    content: Some(""),
                    ..DeltaOut::default()
                };
                self.write_chunk(out, delta, None);
            }
            "content_block_start" => {
                let Some(block) = ev.content_block else {
                    return Err("content_block_start without content_block".into());
                };
                match block.kind.as_ref() {
                    "text" => {
                        if let Some(t) = block.text.as_deref().filter(|t| !t.is_empty()) {
                            self.first_token = true;
                            let delta = DeltaOut {
                                content: Some(t),
                                ..DeltaOut::default()
                            };
                            self.write_chunk(out, delta, None);
                        }
                    }
                    "tool_use" => {
                        let block_index = ev.index.ok_or("content_block_start without index")?;
                        let index = u32::try_from(self.tool_blocks.len())
                            .map_err(|_| "too many tool calls")?;
                        self.tool_blocks.push((block_index, index));
                        self.first_token = true;
                        let delta = DeltaOut {
                            tool_calls: Some([ToolDeltaOut {
                                index,
                                id: block.id.as_deref(),
                                kind: Some("function"),
                                function: FunctionDeltaOut {
                                    name: block.name.as_deref(),
                                    arguments: "",
                                },
                            }]),
                            ..DeltaOut::default()
                        };
                        self.write_chunk(out, delta, None);
                    }
                    // thinking, redacted_thinking, server tools: not forwarded.
                    _ => {}
                }
            }
            "content_block_delta" => {
                let Some(delta) = ev.delta else {
                    return Err("content_block_delta without delta".into());
                };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(t) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                            self.first_token = true;
                            let d = DeltaOut {
                                content: Some(t),
                                ..DeltaOut::default()
                            };
                            self.write_chunk(out, d, None);
                        }
                    }
                    Some("input_json_delta") => {
                        let Some(piece) = delta.partial_json.as_deref().filter(|p| !p.is_empty())
                        else {
                            return Ok(());
                        };
                        let index = self
                            .tool_index(ev.index)
                            .ok_or("input_json_delta for a block that is not a started tool_use")?;
                        let d = DeltaOut {
                            tool_calls: Some([ToolDeltaOut {
                                index,
                                id: None,
                                kind: None,
                                function: FunctionDeltaOut {
                                    name: None,
                                    arguments: piece,
                                },
                            }]),
                            ..DeltaOut::default()
                        };
                        self.write_chunk(out, d, None);
                    }
                    // thinking_delta, signature_delta, citations_delta, …: not forwarded.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    self.usage.update(u);
                    self.usage_seen = true;
                }
                if let Some(stop) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.write_chunk(out, DeltaOut::default(), Some(finish_reason(Some(stop))));
                }
            }
            "message_stop" => {
                if self.wants_usage {
                    let usage = self.usage.to_usage();
                    self.write(out, &[], Some(Some(&usage)));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            "error" => {
                let (kind, message) = match &ev.error {
                    Some(e) => (e.kind.as_deref(), e.message.as_deref().unwrap_or("")),
                    None => (None, ""),
                };
                let message = if message.is_empty() {
                    "The provider reported an error in the stream."
                } else {
                    message
                };
                write_stream_error(out, &anthropic_error(kind, message, None));
                self.done = true;
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }
}

/// The Anthropic stream translator: Messages events in, `chat.completion.chunk` events out.
#[derive(Debug)]
pub struct AnthropicStream {
    dec: SseDecoder,
    st: StreamState,
}

impl AnthropicStream {
    /// A translator for one response.
    pub fn new(ctx: &ResponseCtx<'_>) -> Self {
        AnthropicStream {
            dec: SseDecoder::default(),
            st: StreamState {
                wants_usage: ctx.client_wants_usage,
                created: ctx.now_unix,
                // Replaced by message_start; used only if the provider skips it.
                id: ctx.request_id.to_owned(),
                model: ctx.upstream_model.to_owned(),
                usage: AUsage::default(),
                usage_seen: false,
                tool_blocks: Vec::new(),
                first_token: false,
                done: false,
            },
        }
    }

    /// Feed upstream bytes; client bytes are appended to `out`. An Anthropic `error`
    /// event ends the client stream with an error event and `[DONE]` (and `Ok`);
    /// bytes that do not parse end it the same way and return `Err`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let AnthropicStream { dec, st } = self;
        if st.done {
            return Ok(());
        }
        let mut failure: Option<String> = None;
        let res = dec.feed(input, |ev| {
            if st.done || failure.is_some() {
                return;
            }
            if let Err(e) = st.on_event(ev.data, out) {
                failure = Some(e);
            }
        });
        let failure = match (res, failure) {
            (_, Some(f)) => f,
            (Err(e), None) => e.to_string(),
            (Ok(()), None) => return Ok(()),
        };
        st.done = true;
        write_stream_error(
            out,
            &ApiError::bad_gateway(format!("The provider's stream is malformed: {failure}")),
        );
        Err(StreamError::Malformed(failure))
    }

    /// The upstream body ended: fine after `message_stop` (or an error event);
    /// otherwise the client gets an error event and `[DONE]`, and this returns `Err`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.st.done {
            return Ok(());
        }
        self.st.done = true;
        write_stream_error(
            out,
            &ApiError::bad_gateway("The provider's stream ended before message_stop."),
        );
        Err(StreamError::Malformed(
            "stream ended before message_stop".into(),
        ))
    }

    /// Usage, once `message_start` (input) or `message_delta` (output) reported it.
    pub fn usage(&self) -> Option<Usage> {
        self.st.usage_seen.then(|| self.st.usage.to_usage())
    }

    /// Whether any text or tool-call delta has gone out.
    pub fn first_token_seen(&self) -> bool {
        self.st.first_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProviderKind;

    const T: TargetCtx<'static> = TargetCtx {
        kind: ProviderKind::Anthropic,
        base_path: "",
        upstream_model: "claude-up",
        api_version: None,
        default_max_tokens: 1000,
    };

    fn ctx(wants: bool) -> ResponseCtx<'static> {
        ResponseCtx {
            client_wants_usage: wants,
            public_model: "m",
            upstream_model: "claude-up",
            now_unix: 7,
            request_id: "req-1",
            embeddings_base64: false,
            estimated_prompt_tokens: 0,
        }
    }

    fn body(json: &str) -> serde_json::Value {
        let req = ChatRequest::parse(json.as_bytes()).unwrap();
        let up = chat_request(&req, &T).unwrap();
        assert_eq!(up.path, "/v1/messages");
        serde_json::from_slice(&up.body).unwrap()
    }

    fn refused(json: &str) -> ApiError {
        let req = ChatRequest::parse(json.as_bytes()).unwrap();
        chat_request(&req, &T).unwrap_err()
    }

    #[test]
    fn tool_results_go_first_and_turns_alternate() {
        let v = body(
            r#"{"model":"m","messages":[
                {"role":"user","content":"a"},
                {"role":"assistant","content":"","tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":""}}]},
                {"role":"user","content":"note"},
                {"role":"tool","tool_call_id":"t1","content":[{"type":"text","text":"r"}]}]}"#,
        );
        assert_eq!(v["max_tokens"], 1000);
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["content"][0]["input"], serde_json::json!({}));
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(msgs[2]["content"][0]["content"], "r");
        assert_eq!(msgs[2]["content"][1]["text"], "note");
    }

    #[test]
    fn refusals_name_the_parameter() {
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        for (extra, param) in [
            (r#""n":3"#, "n"),
            (r#""seed":1"#, "seed"),
            (r#""logprobs":true"#, "logprobs"),
            (r#""top_logprobs":2"#, "top_logprobs"),
            (r#""presence_penalty":0.5"#, "presence_penalty"),
            (r#""logit_bias":{"1":5}"#, "logit_bias"),
            (r#""temperature":1.5"#, "temperature"),
            (
                r#""response_format":{"type":"json_object"}"#,
                "response_format",
            ),
            (r#""functions":[]"#, "functions"),
            (r#""frobnicate":1"#, "frobnicate"),
            (r#""modalities":["text","audio"]"#, "modalities"),
            (r#""service_tier":"flex""#, "service_tier"),
            (r#""tool_choice":"required""#, "tool_choice"),
        ] {
            let e = refused(&format!(r#"{{"model":"m",{m},{extra}}}"#));
            assert_eq!(e.status, 400, "{extra}");
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
        let e = refused(
            r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#,
        );
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );
        let e = refused(r#"{"model":"m","messages":[{"role":"system","content":"only"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = refused(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#,
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].image_url"));
    }

    #[test]
    fn harmless_values_pass() {
        let v = body(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":1,"logprobs":false,"presence_penalty":0,
            "logit_bias":{},"store":false,"metadata":{"a":"b"},"service_tier":"default","top_k":5,"safety_identifier":"h1",
            "parallel_tool_calls":false,"seed":null}"#,
        );
        assert_eq!(v["service_tier"], "standard_only");
        assert_eq!(v["top_k"], 5);
        assert_eq!(v["metadata"]["user_id"], "h1");
        assert!(v.get("tool_choice").is_none());
    }

    #[test]
    fn json_schema_maps_to_output_config() {
        let v = body(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"object"}}}}"#,
        );
        assert_eq!(
            v["output_config"],
            serde_json::json!({"format":{"type":"json_schema","schema":{"type":"object"}}})
        );
    }

    #[test]
    fn compacts_tool_input() {
        assert_eq!(
            compact_json("{ \"a\" : [1, 2],\n \"b\": \"x y\\\" z\" }"),
            r#"{"a":[1,2],"b":"x y\" z"}"#
        );
    }

    #[test]
    fn error_mapping() {
        let e = error_response(
            529,
            Bytes::from_static(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#),
        );
        assert_eq!(e.status, 503);
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["error"]["message"], "Overloaded");
        assert_eq!(v["error"]["type"], "overloaded_error");
        let e = error_response(
            404,
            Bytes::from_static(
                br#"{"type":"error","error":{"type":"not_found_error","message":"model: x"}}"#,
            ),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(
            (
                e.status,
                v["error"]["type"].as_str(),
                v["error"]["code"].as_str()
            ),
            (404, Some("invalid_request_error"), Some("not_found_error"))
        );
        let e = error_response(529, Bytes::from_static(b"<html>busy</html>"));
        assert_eq!(e.status, 503);
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("busy"));
    }

    #[test]
    fn malformed_event_ends_the_stream() {
        let mut s = AnthropicStream::new(&ctx(false));
        let mut out = Vec::new();
        assert!(s
            .feed(b"event: message_start\ndata: {not json}\n\n", &mut out)
            .is_err());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("data: {\"error\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
        let mut more = Vec::new();
        assert!(s.feed(b"data: {\"type\":\"ping\"}\n\n", &mut more).is_ok());
        assert!(s.finish(&mut more).is_ok());
        assert!(more.is_empty());
    }

    #[test]
    fn stream_without_message_start_uses_fallback_id() {
        let mut s = AnthropicStream::new(&ctx(false));
        let mut out = Vec::new();
        s.feed(
            b"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"id\":\"req-1\""));
        assert!(text.contains("\"model\":\"claude-up\""));
        assert!(s.first_token_seen());
        assert!(s.usage().is_none());
    }
}
