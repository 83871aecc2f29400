//! The Google Gemini API wire format (`generativelanguage.googleapis.com`):
//! `POST /{v1beta|v1}/models/{model}:generateContent`,
//! `:streamGenerateContent` (SSE with `?alt=sse`, else a JSON array) and
//! `:batchEmbedContents`, with Google's `{"error":{code,message,status}}` errors.
//!
//! The model comes from the path (percent-decoded), so directives ride on it as
//! `models/gemini-x%40status%3D503:generateContent`, or in a `[[mock:…]]`
//! marker in the last user turn.
//!
//! Bodies are written as Google writes them: plain JSON responses
//! pretty-printed with two-space indents and a trailing newline; stream events
//! as `data: <json>\r\n\r\n` with `": "` after each member name and no other
//! spaces, no `[DONE]`, the last event carrying `finishReason` and the full
//! `usageMetadata`.
//!
//! Requests are checked the way the real API checks them cheaply, with its
//! messages: the API key (`x-goog-api-key` or `?key=`), unknown member names
//! (top level, contents, parts, `generationConfig`), `contents` non-empty,
//! roles `user`/`model`, parts non-empty with exactly one data field,
//! `inlineData.data` valid base64, and function call/response turn order.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::body::Reply;
use crate::common::{
    apply_transport, completion_tokens, content_pieces, embedding_vector, parse_raw, prompt_tokens,
    reply_content, text_seed, tool_call_tokens, truncate, RawObject, Str, ToolArguments,
    Truncation, DEFAULT_DIMENSIONS, MAX_DIMENSIONS, TOOL_INPUT,
};
use crate::script::Directives;

/// `content-type` of Google's JSON responses.
const JSON_UTF8: &str = "application/json; charset=UTF-8";
/// Most candidates one request may ask for.
const MAX_CANDIDATES: usize = 8;
/// The event Gemini sends when the model is overloaded mid-stream.
const OVERLOADED_EVENT: &[u8] = b"data: {\"error\": {\"code\": 503,\"message\": \"The model is overloaded. Please try again later.\",\"status\": \"UNAVAILABLE\"}}\r\n\r\n";

/// `GenerateContentRequest` members (camelCase; snake_case twins are accepted too).
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
];

/// `GenerationConfig` members.
const GENERATION_FIELDS: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "_responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
];

/// `Part` members; the first seven are the `data` oneof.
const PART_FIELDS: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
    "partMetadata",
    "mediaResolution",
];
/// How many of [`PART_FIELDS`] form the `data` oneof.
const PART_DATA_FIELDS: usize = 7;

/// `EmbedContentRequest` members.
const EMBED_FIELDS: &[&str] = &[
    "model",
    "content",
    "taskType",
    "title",
    "outputDimensionality",
];

// ---------------------------------------------------------------------------
// Routing

/// A Gemini method on a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    Generate,
    Stream,
    BatchEmbed,
    Other(&'a str),
}

/// A Gemini endpoint: `/{version}/{collection}/{model}:{op}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoint<'a> {
    version: &'a str,
    /// `models` or `tunedModels`.
    collection: &'a str,
    /// The model id as it appears in the path (percent-encoded).
    model: &'a str,
    op: Op<'a>,
}

/// Which Gemini endpoint `path` (no query) names, if any. Under `/v1/` only the
/// known methods are claimed, so OpenAI's `/v1/models/{id}` keeps its ids with colons.
pub(crate) fn route(path: &str) -> Option<Endpoint<'_>> {
    let (version, rest) = if let Some(rest) = path.strip_prefix("/v1beta/") {
        ("v1beta", rest)
    } else {
        ("v1", path.strip_prefix("/v1/")?)
    };
    let (collection, rest) = rest.split_once('/')?;
    if collection != "models" && collection != "tunedModels" {
        return None;
    }
    let (model, op) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    let op = match op {
        "generateContent" => Op::Generate,
        "streamGenerateContent" => Op::Stream,
        "batchEmbedContents" => Op::BatchEmbed,
        _ if version == "v1" => return None,
        other => Op::Other(other),
    };
    Some(Endpoint {
        version,
        collection,
        model,
        op,
    })
}

/// Answer one request to a Gemini endpoint. `seq` numbers the response ids.
pub(crate) fn handle(
    endpoint: Endpoint<'_>,
    method: &Method,
    headers: &HeaderMap,
    query: &str,
    body: &[u8],
    api_key: Option<&str>,
    seq: u64,
) -> Reply {
    let model = percent_decode(endpoint.model, false);
    if *method != Method::POST {
        let mut reply = error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNIMPLEMENTED",
            &format!("Method {method} is not allowed here; use POST."),
        );
        reply.allow = Some("POST");
        return reply;
    }
    if let Op::Other(op) = endpoint.op {
        return error_reply(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "{}/{model} is not found for API version {}, or is not supported for {op}. Call ListModels to see the list of available models and their supported methods.",
                endpoint.collection, endpoint.version
            ),
        );
    }
    if let Some(key) = api_key {
        let given = headers
            .get("x-goog-api-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .or_else(|| query_param(query, "key").map(Cow::into_owned));
        match given {
            None => {
                return error_reply(
                    StatusCode::FORBIDDEN,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                )
            }
            Some(given) if given != key => return api_key_invalid(),
            Some(_) => {}
        }
    }
    let resource = format!("{}/{model}", endpoint.collection);
    match endpoint.op {
        Op::Generate => generate(body, &model, Mode::Plain, seq),
        Op::Stream => {
            let sse = query_param(query, "alt").is_some_and(|a| a == "sse");
            generate(
                body,
                &model,
                if sse { Mode::Sse } else { Mode::JsonArray },
                seq,
            )
        }
        Op::BatchEmbed => batch_embed(body, &model, &resource),
        Op::Other(_) => not_found_model(&resource),
    }
}

/// The answer to a body over the size limit (Google answers 400, not 413).
pub(crate) fn too_large(limit: usize) -> Reply {
    invalid(&format!(
        "Request payload size exceeds the limit: {limit} bytes."
    ))
}

fn not_found_model(resource: &str) -> Reply {
    error_reply(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("{resource} is not found."),
    )
}

/// The value of query parameter `name`, percent-decoded.
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| percent_decode(k, true) == name)
        .map(|(_, v)| percent_decode(v, true))
}

/// Decode `%XX` escapes (and `+` as a space in query strings); bad escapes stay as they are.
fn percent_decode(s: &str, plus_as_space: bool) -> Cow<'_, str> {
    if !(s.contains('%') || plus_as_space && s.contains('+')) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

// ---------------------------------------------------------------------------
// JSON as Google writes it

/// Compact JSON with `": "` after member names, as in Gemini's stream events.
struct SseFormatter;

impl serde_json::ser::Formatter for SseFormatter {
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

fn sse_json<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    let mut ser = serde_json::Serializer::with_formatter(out, SseFormatter);
    // Our response types always serialize.
    let _ = v.serialize(&mut ser);
}

/// Pretty JSON with two-space indents and a trailing newline, as Google's JSON responses.
fn pretty_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let _ = serde_json::to_writer_pretty(&mut out, v);
    out.push(b'\n');
    out
}

fn json_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut reply = Reply::json(status, body);
    reply.content_type = JSON_UTF8;
    reply
}

// ---------------------------------------------------------------------------
// Errors

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: u16,
    message: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<Detail<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    ErrorInfo {
        #[serde(rename = "@type")]
        kind: &'static str,
        reason: &'static str,
        domain: &'static str,
        metadata: ErrorMetadata,
    },
    RetryInfo {
        #[serde(rename = "@type")]
        kind: &'static str,
        #[serde(rename = "retryDelay")]
        retry_delay: &'a str,
    },
}

#[derive(Serialize)]
struct ErrorMetadata {
    service: &'static str,
}

fn error_with(
    status: StatusCode,
    rpc_status: &str,
    message: &str,
    details: Vec<Detail<'_>>,
) -> Reply {
    json_reply(
        status,
        pretty_json(&ErrorEnvelope {
            error: ErrorObject {
                code: status.as_u16(),
                message,
                status: rpc_status,
                details,
            },
        }),
    )
}

/// A Google error: `{"error":{"code","message","status"}}`.
fn error_reply(status: StatusCode, rpc_status: &str, message: &str) -> Reply {
    error_with(status, rpc_status, message, Vec::new())
}

/// A 400 `INVALID_ARGUMENT`.
fn invalid(message: &str) -> Reply {
    error_reply(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

/// The answer to a wrong API key: a 400, told apart by its `API_KEY_INVALID` reason.
fn api_key_invalid() -> Reply {
    error_with(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        vec![Detail::ErrorInfo {
            kind: "type.googleapis.com/google.rpc.ErrorInfo",
            reason: "API_KEY_INVALID",
            domain: "googleapis.com",
            metadata: ErrorMetadata {
                service: "generativelanguage.googleapis.com",
            },
        }],
    )
}

/// Google's canonical status for an HTTP status.
fn rpc_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        405..=499 => "FAILED_PRECONDITION",
        _ => "UNKNOWN",
    }
}

/// The error a `status=NNN` directive produces: Google's status for it,
/// message `mock error NNN`, and a `RetryInfo` detail on a 429 with `retry_after`.
fn scripted_error(status: u16, d: &Directives) -> Reply {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let delay = d.retry_after.as_ref().map(|s| format!("{s}s"));
    let details = match (&delay, code.as_u16()) {
        (Some(delay), 429) => vec![Detail::RetryInfo {
            kind: "type.googleapis.com/google.rpc.RetryInfo",
            retry_delay: delay,
        }],
        _ => Vec::new(),
    };
    let reply = error_with(
        code,
        rpc_status(code.as_u16()),
        &format!("mock error {}", code.as_u16()),
        details,
    );
    apply_transport(reply, d)
}

fn bad_json_message(e: &serde_json::Error) -> String {
    format!("Invalid JSON payload received. {e}")
}

// ---------------------------------------------------------------------------
// Request parsing and validation

/// `maxOutputTokens` → `maxOutputTokens`, `max_output_tokens` → `maxOutputTokens`.
fn camel(key: &str) -> Cow<'_, str> {
    if !key.contains('_') || key.starts_with('_') {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `maxOutputTokens` → `max_output_tokens`, as Google names fields in error paths.
fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The first member of `o` whose name (in either case style) is not in `allowed`.
fn unknown_member<'o>(o: &'o RawObject<'_>, allowed: &[&str]) -> Option<&'o str> {
    o.0.iter()
        .map(|(k, _)| k.as_str())
        .find(|k| !allowed.contains(&camel(k).as_ref()))
}

/// The value of member `camel_name` or its snake_case twin.
fn member<'a>(o: &RawObject<'a>, camel_name: &str) -> Option<&'a RawValue> {
    o.get(camel_name).or_else(|| o.get(&snake(camel_name)))
}

fn unknown_name(name: &str, at: Option<&str>) -> String {
    match at {
        None => {
            format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")
        }
        Some(at) => format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        ),
    }
}

fn bad_value(at: &str, raw: &RawValue) -> String {
    let mut shown: String = raw.get().chars().take(64).collect();
    if shown.len() < raw.get().len() {
        shown.push('…');
    }
    format!("Invalid value at '{at}', {shown}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Model,
}

/// One turn of `contents`, reduced to what the mock needs.
#[derive(Debug)]
struct Turn<'a> {
    role: Role,
    texts: Vec<Cow<'a, str>>,
    other_bytes: usize,
    calls: usize,
    responses: usize,
}

impl Turn<'_> {
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

#[derive(Debug)]
struct Request<'a> {
    contents: Vec<Turn<'a>>,
    system_bytes: usize,
    stop_sequences: Vec<Cow<'a, str>>,
    max_output_tokens: Option<u64>,
    candidates: usize,
    functions: Vec<Cow<'a, str>>,
    calling_mode: Option<Cow<'a, str>>,
    allowed_functions: Vec<Cow<'a, str>>,
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, String> {
    let top: RawObject<'_> = serde_json::from_slice(body).map_err(|e| bad_json_message(&e))?;
    if let Some(name) = unknown_member(&top, REQUEST_FIELDS) {
        return Err(unknown_name(name, None));
    }
    let raw_contents = match member(&top, "contents") {
        None => Vec::new(),
        Some(raw) => {
            parse_raw::<Vec<RawObject<'_>>>(raw).map_err(|_| bad_value("contents", raw))?
        }
    };
    if raw_contents.is_empty() {
        return Err(("* GenerateContentRequest.contents: contents is not specified\n").to_owned());
    }
    let mut contents = Vec::with_capacity(raw_contents.len());
    for (i, c) in raw_contents.iter().enumerate() {
        contents.push(parse_turn(c, &format!("contents[{i}]"), true)?);
    }
    check_function_turns(&contents)?;
    let system_bytes = match member(&top, "systemInstruction") {
        None => 0,
        Some(raw) => {
            let o: RawObject<'_> =
                parse_raw(raw).map_err(|_| bad_value("system_instruction", raw))?;
            parse_turn(&o, "system_instruction", false)?.prompt_bytes()
        }
    };
    let mut req = Request {
        contents,
        system_bytes,
        stop_sequences: Vec::new(),
        max_output_tokens: None,
        candidates: 1,
        functions: Vec::new(),
        calling_mode: None,
        allowed_functions: Vec::new(),
    };
    if let Some(raw) = member(&top, "generationConfig") {
        parse_generation_config(raw, &mut req)?;
    }
    if let Some(raw) = member(&top, "tools") {
        let tools: Vec<RawObject<'_>> = parse_raw(raw).map_err(|_| bad_value("tools", raw))?;
        for tool in &tools {
            let Some(decls) = member(tool, "functionDeclarations") else {
                continue;
            };
            let decls: Vec<RawObject<'_>> =
                parse_raw(decls).map_err(|_| bad_value("tools.function_declarations", decls))?;
            req.functions.extend(
                decls
                    .iter()
                    .filter_map(|d| d.parse::<Str<'_>>("name").ok().flatten())
                    .map(|n| n.0),
            );
        }
    }
    if let Some(raw) = member(&top, "toolConfig") {
        let cfg: RawObject<'_> = parse_raw(raw).map_err(|_| bad_value("tool_config", raw))?;
        if let Some(raw) = member(&cfg, "functionCallingConfig") {
            let fc: RawObject<'_> = parse_raw(raw)
                .map_err(|_| bad_value("tool_config.function_calling_config", raw))?;
            req.calling_mode = member(&fc, "mode")
                .and_then(|m| parse_raw::<Str<'_>>(m).ok())
                .map(|m| m.0);
            req.allowed_functions = member(&fc, "allowedFunctionNames")
                .and_then(|a| parse_raw::<Vec<Str<'_>>>(a).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.0)
                .collect();
        }
    }
    Ok(req)
}

/// One `Content`: `role` (for `contents`) and non-empty `parts`.
fn parse_turn<'a>(c: &RawObject<'a>, at: &str, in_contents: bool) -> Result<Turn<'a>, String> {
    if let Some(name) = unknown_member(c, &["role", "parts"]) {
        return Err(unknown_name(name, Some(at)));
    }
    let role = match c.parse::<Str<'_>>("role") {
        Err(_) => return Err(("Please use a valid role: user, model.").to_owned()),
        Ok(None) => Role::User,
        Ok(Some(r)) => match r.as_str() {
            "" | "user" => Role::User,
            "model" => Role::Model,
            _ if !in_contents => Role::User,
            _ => return Err(("Please use a valid role: user, model.").to_owned()),
        },
    };
    let parts: Vec<RawObject<'_>> = match c.get("parts") {
        None => Vec::new(),
        Some(raw) => parse_raw(raw).map_err(|_| bad_value(&format!("{at}.parts"), raw))?,
    };
    if parts.is_empty() && in_contents {
        return Err(format!(
            "* GenerateContentRequest.{at}.parts: contents.parts must not be empty.\n"
        ));
    }
    let mut turn = Turn {
        role,
        texts: Vec::new(),
        other_bytes: 0,
        calls: 0,
        responses: 0,
    };
    for (j, p) in parts.iter().enumerate() {
        let pat = format!("{at}.parts[{j}]");
        if let Some(name) = unknown_member(p, PART_FIELDS) {
            return Err(unknown_name(name, Some(&pat)));
        }
        let mut data: Option<(&'static str, &RawValue)> = None;
        for (k, v) in p.0.iter().filter(|(_, v)| v.get() != "null") {
            let k = camel(k.as_str());
            let Some(field) = PART_FIELDS[..PART_DATA_FIELDS]
                .iter()
                .find(|f| **f == k.as_ref())
            else {
                continue;
            };
            if let Some((first, _)) = data {
                return Err(format!(
                    "Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '{}' at '{pat}' (already set: '{}').",
                    snake(field),
                    snake(first)
                ));
            }
            data = Some((field, v));
        }
        let Some((field, raw)) = data else {
            return Err(format!(
                "* GenerateContentRequest.{pat}.data: required oneof field 'data' must have one initialized field\n"
            ));
        };
        match field {
            "text" => {
                let text = parse_raw::<Str<'_>>(raw)
                    .map_err(|_| bad_value(&format!("{pat}.text"), raw))?;
                turn.texts.push(text.0);
            }
            "inlineData" => {
                let blob: RawObject<'_> =
                    parse_raw(raw).map_err(|_| bad_value(&format!("{pat}.inline_data"), raw))?;
                let data = member(&blob, "data")
                    .and_then(|d| parse_raw::<Str<'_>>(d).ok())
                    .map(|d| d.0)
                    .unwrap_or_default();
                if !is_base64(&data) {
                    let mut shown: String = data.chars().take(64).collect();
                    if shown.len() < data.len() {
                        shown.push('…');
                    }
                    return Err(format!(
                        "Invalid value at '{pat}.inline_data.data' (TYPE_BYTES), Base64 decoding failed for \"{shown}\""
                    ));
                }
            }
            "functionCall" => {
                turn.calls += 1;
                turn.other_bytes += raw.get().len();
                check_function_name(raw, &format!("{pat}.function_call"))?;
            }
            "functionResponse" => {
                turn.responses += 1;
                turn.other_bytes += raw.get().len();
                check_function_name(raw, &format!("{pat}.function_response"))?;
            }
            _ => {}
        }
    }
    Ok(turn)
}

/// A `functionCall` / `functionResponse` needs a `name`.
fn check_function_name(raw: &RawValue, at: &str) -> Result<(), String> {
    let o: RawObject<'_> = parse_raw(raw).map_err(|_| bad_value(at, raw))?;
    match o.parse::<Str<'_>>("name") {
        Ok(Some(n)) if !n.0.is_empty() => Ok(()),
        _ => Err(format!(
            "* GenerateContentRequest.{at}.name: Name cannot be empty.\n"
        )),
    }
}

fn is_base64(data: &str) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let data = data.trim_end();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .any(|e| e.decode(data.as_bytes()).is_ok())
}

/// Function calls follow a user turn (or a function response); function
/// responses follow a function call turn, one response per call.
fn check_function_turns(contents: &[Turn<'_>]) -> Result<(), String> {
    for (i, turn) in contents.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| &contents[p]);
        if turn.calls > 0 && !previous.is_some_and(|p| p.role == Role::User) {
            return Err(("Please ensure that function call turn comes immediately after a user turn or after a function response turn.").to_owned());
        }
        if turn.responses > 0 {
            match previous {
                Some(p) if p.calls > 0 => {
                    if p.calls != turn.responses {
                        return Err(("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.").to_owned());
                    }
                }
                _ => {
                    return Err(("Please ensure that function response turn comes immediately after a function call turn.").to_owned())
                }
            }
        }
    }
    Ok(())
}

fn parse_generation_config<'a>(raw: &'a RawValue, req: &mut Request<'a>) -> Result<(), String> {
    let cfg: RawObject<'_> = parse_raw(raw).map_err(|_| bad_value("generation_config", raw))?;
    if let Some(name) = unknown_member(&cfg, GENERATION_FIELDS) {
        return Err(unknown_name(name, Some("generation_config")));
    }
    if let Some(raw) = member(&cfg, "stopSequences") {
        req.stop_sequences = parse_raw::<Vec<Str<'_>>>(raw)
            .map_err(|_| bad_value("generation_config.stop_sequences", raw))?
            .into_iter()
            .map(|s| s.0)
            .collect();
    }
    if let Some(raw) = member(&cfg, "maxOutputTokens") {
        let n = parse_raw::<i64>(raw)
            .map_err(|_| bad_value("generation_config.max_output_tokens", raw))?;
        // Zero or less means the model's default.
        req.max_output_tokens = u64::try_from(n).ok().filter(|n| *n > 0);
    }
    if let Some(raw) = member(&cfg, "candidateCount") {
        let n = parse_raw::<i64>(raw)
            .map_err(|_| bad_value("generation_config.candidate_count", raw))?;
        if n > MAX_CANDIDATES as i64 {
            return Err(format!(
                "* GenerateContentRequest.generation_config.candidate_count: must be at most {MAX_CANDIDATES}\n"
            ));
        }
        req.candidates = usize::try_from(n).unwrap_or(1).max(1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// generateContent / streamGenerateContent

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `generateContent`: one JSON response.
    Plain,
    /// `streamGenerateContent?alt=sse`: `data:` events.
    Sse,
    /// `streamGenerateContent` without `alt=sse`: a JSON array of responses.
    JsonArray,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    candidates: Vec<CandidateOut<'a>>,
    usage_metadata: UsageOut,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CandidateOut<'a> {
    content: ContentOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: usize,
}

#[derive(Serialize)]
struct ContentOut<'a> {
    parts: [PartOut<'a>; 1],
    role: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PartOut<'a> {
    Text {
        text: &'a str,
    },
    Call {
        #[serde(rename = "functionCall")]
        function_call: CallOut<'a>,
    },
}

#[derive(Serialize)]
struct CallOut<'a> {
    name: &'a str,
    args: ToolArguments,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageOut {
    prompt_token_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates_token_count: Option<u64>,
    total_token_count: u64,
    prompt_tokens_details: [ModalityCount; 1],
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    modality: &'static str,
    token_count: u64,
}

impl UsageOut {
    /// Usage so far: the prompt only (intermediate stream events).
    fn prompt_only(prompt: u64) -> UsageOut {
        UsageOut {
            prompt_token_count: prompt,
            candidates_token_count: None,
            total_token_count: prompt,
            prompt_tokens_details: [ModalityCount {
                modality: "TEXT",
                token_count: prompt,
            }],
        }
    }

    fn complete(prompt: u64, candidates: u64) -> UsageOut {
        UsageOut {
            candidates_token_count: Some(candidates),
            total_token_count: prompt + candidates,
            ..UsageOut::prompt_only(prompt)
        }
    }
}

/// The function to call, when the request declares one, allows calling it,
/// the last turn is the user's and not itself returning function results, and
/// `tool_call` is set.
fn function_to_call<'r>(req: &'r Request<'_>, d: &Directives) -> Option<&'r str> {
    if !d.wants_tool_call() {
        return None;
    }
    let last = req.contents.last()?;
    if last.role != Role::User || last.responses > 0 {
        return None;
    }
    if req
        .calling_mode
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("NONE"))
    {
        return None;
    }
    req.allowed_functions
        .first()
        .or_else(|| req.functions.first())
        .map(|n| n.as_ref())
}

/// Builds the responses of one request, sharing model, id and candidate count.
struct Writer<'a> {
    model: &'a str,
    response_id: String,
    candidates: usize,
    mode: Mode,
}

impl Writer<'_> {
    fn response<'s>(
        &'s self,
        part: &PartOut<'s>,
        finish: Option<&'static str>,
        usage: UsageOut,
    ) -> ResponseOut<'s> {
        ResponseOut {
            candidates: (0..self.candidates)
                .map(|index| CandidateOut {
                    content: ContentOut {
                        parts: [match part {
                            PartOut::Text { text } => PartOut::Text { text },
                            PartOut::Call { function_call } => PartOut::Call {
                                function_call: CallOut {
                                    name: function_call.name,
                                    args: function_call.args,
                                },
                            },
                        }],
                        role: "model",
                    },
                    finish_reason: finish,
                    index,
                })
                .collect(),
            usage_metadata: usage,
            model_version: self.model,
            response_id: &self.response_id,
        }
    }

    /// One stream event (SSE) or array element (JSON array; `first` opens the array).
    fn event(&self, r: &ResponseOut<'_>, first: bool) -> Bytes {
        let mut buf = Vec::with_capacity(256);
        match self.mode {
            Mode::Sse => {
                buf.extend_from_slice(b"data: ");
                sse_json(r, &mut buf);
                buf.extend_from_slice(b"\r\n\r\n");
            }
            Mode::JsonArray | Mode::Plain => {
                buf.extend_from_slice(if first { b"[" } else { b",\r\n" });
                let _ = serde_json::to_writer_pretty(&mut buf, r);
            }
        }
        Bytes::from(buf)
    }

    /// The mid-stream error event.
    fn overloaded(&self, first: bool) -> Bytes {
        match self.mode {
            Mode::Sse => Bytes::from_static(OVERLOADED_EVENT),
            Mode::JsonArray | Mode::Plain => {
                let mut buf = Vec::with_capacity(160);
                buf.extend_from_slice(if first { b"[" } else { b",\r\n" });
                let _ = serde_json::to_writer_pretty(
                    &mut buf,
                    &ErrorEnvelope {
                        error: ErrorObject {
                            code: 503,
                            message: "The model is overloaded. Please try again later.",
                            status: "UNAVAILABLE",
                            details: Vec::new(),
                        },
                    },
                );
                buf.extend_from_slice(b"]");
                Bytes::from(buf)
            }
        }
    }

    fn stream_reply(&self, mut events: VecDeque<Bytes>) -> Reply {
        match self.mode {
            Mode::Sse => Reply::event_stream(events),
            Mode::JsonArray | Mode::Plain => {
                if !events.back().is_some_and(|e| e.ends_with(b"]")) {
                    events.push_back(Bytes::from_static(b"]"));
                }
                let mut reply = Reply::event_stream(events);
                reply.content_type = JSON_UTF8;
                reply
            }
        }
    }
}

fn generate(body: &[u8], model: &str, mode: Mode, seq: u64) -> Reply {
    let req = match parse_request(body) {
        Ok(r) => r,
        Err(message) => return invalid(&message),
    };
    let prompt = req
        .contents
        .iter()
        .rev()
        .find(|t| t.role == Role::User)
        .map(Turn::text)
        .unwrap_or_default();
    let (_, mut d) = Directives::from_model(model);
    d.apply_text(&prompt);
    if let Some(status) = d.error_status() {
        return scripted_error(status, &d);
    }
    let prompt_bytes =
        req.system_bytes + req.contents.iter().map(Turn::prompt_bytes).sum::<usize>();
    let prompt_tokens = prompt_tokens(prompt_bytes);
    let n = req.candidates as u64;
    let w = Writer {
        model,
        response_id: format!("mock-resp-{seq}"),
        candidates: req.candidates,
        mode,
    };

    let reply = if let Some(name) = function_to_call(&req, &d) {
        let part = PartOut::Call {
            function_call: CallOut {
                name,
                args: TOOL_INPUT,
            },
        };
        let usage = UsageOut::complete(prompt_tokens, tool_call_tokens() * n);
        if mode == Mode::Plain {
            json_reply(
                StatusCode::OK,
                pretty_json(&w.response(&part, Some("STOP"), usage)),
            )
        } else {
            let mut events = VecDeque::with_capacity(2);
            if d.wants_error_mid_stream() {
                events.push_back(w.event(&w.response(&part, None, usage), true));
                events.push_back(w.overloaded(false));
            } else {
                events.push_back(w.event(&w.response(&part, Some("STOP"), usage), true));
            }
            w.stream_reply(events)
        }
    } else {
        let mut content = reply_content(&d, &prompt);
        let finish = match truncate(&mut content, &req.stop_sequences, req.max_output_tokens) {
            Some(Truncation::MaxTokens) => "MAX_TOKENS",
            Some(Truncation::StopSequence(_)) | None => "STOP",
        };
        let usage = UsageOut::complete(prompt_tokens, completion_tokens(&content) * n);
        if mode == Mode::Plain {
            let part = PartOut::Text { text: &content };
            json_reply(
                StatusCode::OK,
                pretty_json(&w.response(&part, Some(finish), usage)),
            )
        } else {
            w.stream_reply(text_events(&w, &content, finish, prompt_tokens, usage, &d))
        }
    };
    apply_transport(reply, &d)
}

fn text_events(
    w: &Writer<'_>,
    content: &str,
    finish: &'static str,
    prompt_tokens: u64,
    usage: UsageOut,
    d: &Directives,
) -> VecDeque<Bytes> {
    let mut pieces = content_pieces(content, d.chunks);
    if pieces.is_empty() {
        pieces.push("");
    }
    let last = pieces.len() - 1;
    let mut events = VecDeque::with_capacity(pieces.len() + 1);
    for (i, piece) in pieces.into_iter().enumerate() {
        let part = PartOut::Text { text: piece };
        let r = if i == last && !d.wants_error_mid_stream() {
            w.response(&part, Some(finish), usage)
        } else {
            w.response(&part, None, UsageOut::prompt_only(prompt_tokens))
        };
        events.push_back(w.event(&r, i == 0));
        if d.wants_error_mid_stream() {
            events.push_back(w.overloaded(false));
            break;
        }
    }
    events
}

// ---------------------------------------------------------------------------
// batchEmbedContents

#[derive(Serialize)]
struct EmbeddingsOut {
    embeddings: Vec<ValuesOut>,
}

#[derive(Serialize)]
struct ValuesOut {
    values: Vec<f32>,
}

fn batch_embed(body: &[u8], model: &str, resource: &str) -> Reply {
    let top: RawObject<'_> = match serde_json::from_slice(body) {
        Ok(o) => o,
        Err(e) => return invalid(&bad_json_message(&e)),
    };
    if let Some(name) = unknown_member(&top, &["requests"]) {
        return invalid(&unknown_name(name, None));
    }
    let requests: Vec<RawObject<'_>> = match member(&top, "requests") {
        None => Vec::new(),
        Some(raw) => match parse_raw(raw) {
            Ok(r) => r,
            Err(_) => return invalid(&bad_value("requests", raw)),
        },
    };
    if requests.is_empty() {
        return invalid("* BatchEmbedContentsRequest.requests: at least one request is required\n");
    }
    let mut inputs: Vec<(String, usize)> = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        match embed_input(r, i, resource) {
            Ok(input) => inputs.push(input),
            Err(message) => return invalid(&message),
        }
    }
    let (_, mut d) = Directives::from_model(model);
    if let Some((last, _)) = inputs.last() {
        d.apply_text(last);
    }
    if let Some(status) = d.error_status() {
        return scripted_error(status, &d);
    }
    let out = EmbeddingsOut {
        embeddings: inputs
            .iter()
            .map(|(text, dims)| ValuesOut {
                values: embedding_vector(&text_seed(text), *dims),
            })
            .collect(),
    };
    apply_transport(json_reply(StatusCode::OK, pretty_json(&out)), &d)
}

/// One `EmbedContentRequest`: its text (parts joined) and width.
fn embed_input(r: &RawObject<'_>, i: usize, resource: &str) -> Result<(String, usize), String> {
    let at = format!("requests[{i}]");
    if let Some(name) = unknown_member(r, EMBED_FIELDS) {
        return Err(unknown_name(name, Some(&at)));
    }
    let named = r.parse::<Str<'_>>("model").ok().flatten();
    if named.as_ref().map(Str::as_str) != Some(resource) {
        return Err(format!(
            "* BatchEmbedContentsRequest.{at}.model: the model of each request must be the model in the URL ({resource}), got \"{}\"\n",
            named.as_ref().map_or("", Str::as_str)
        ));
    }
    let Some(raw) = member(r, "content") else {
        return Err(format!(
            "* BatchEmbedContentsRequest.{at}.content: content is not specified\n"
        ));
    };
    let content: RawObject<'_> =
        parse_raw(raw).map_err(|_| bad_value(&format!("{at}.content"), raw))?;
    let turn = parse_turn(&content, &format!("{at}.content"), false)?;
    if turn.texts.is_empty() {
        return Err(format!(
            "* BatchEmbedContentsRequest.{at}.content.parts: contents.parts must not be empty.\n"
        ));
    }
    let dims = match member(r, "outputDimensionality") {
        None => DEFAULT_DIMENSIONS,
        Some(raw) => match parse_raw::<i64>(raw) {
            Ok(n) if n >= 1 && n as u64 <= MAX_DIMENSIONS as u64 => n as usize,
            _ => {
                return Err(format!(
                    "* BatchEmbedContentsRequest.{at}.output_dimensionality: must be between 1 and {MAX_DIMENSIONS}\n"
                ))
            }
        },
    };
    Ok((turn.text().into_owned(), dims))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn routes() {
        let e = route("/v1beta/models/gemini-2.5-flash:generateContent").unwrap();
        assert_eq!(e.model, "gemini-2.5-flash");
        assert_eq!(e.op, Op::Generate);
        let e = route("/v1beta/models/m%40hang%3D1:streamGenerateContent").unwrap();
        assert_eq!(percent_decode(e.model, false), "m@hang=1");
        assert_eq!(e.op, Op::Stream);
        assert_eq!(
            route("/v1/models/m:batchEmbedContents").unwrap().op,
            Op::BatchEmbed
        );
        assert_eq!(
            route("/v1beta/tunedModels/t:countTokens").unwrap().op,
            Op::Other("countTokens")
        );
        // OpenAI paths are left alone.
        assert_eq!(route("/v1/models/ft:gpt-4o:org::abc"), None);
        assert_eq!(route("/v1/models/gpt-4o"), None);
        assert_eq!(route("/v1/chat/completions"), None);
        assert_eq!(route("/v1beta/models/:generateContent"), None);
        assert_eq!(route("/v1beta/files/x:generateContent"), None);
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b%2Cc%3d", false), "a b,c=");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("a+b%", true), "a b%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(
            query_param("alt=sse&key=k%2B1", "key").as_deref(),
            Some("k+1")
        );
        assert_eq!(query_param("alt", "alt").as_deref(), Some(""));
        assert_eq!(query_param("", "key"), None);
    }

    #[test]
    fn names() {
        assert_eq!(camel("max_output_tokens"), "maxOutputTokens");
        assert_eq!(camel("maxOutputTokens"), "maxOutputTokens");
        assert_eq!(camel("_responseJsonSchema"), "_responseJsonSchema");
        assert_eq!(snake("maxOutputTokens"), "max_output_tokens");
    }

    #[test]
    fn sse_json_spacing() {
        let mut out = Vec::new();
        sse_json(
            &serde_json::json!({"a": [1, {"b": "x"}], "c": null}),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a": [1,{"b": "x"}],"c": null}"#
        );
    }

    #[test]
    fn function_turn_order() {
        let turn = |role, calls, responses| Turn {
            role,
            texts: Vec::new(),
            other_bytes: 0,
            calls,
            responses,
        };
        assert!(check_function_turns(&[
            turn(Role::User, 0, 0),
            turn(Role::Model, 2, 0),
            turn(Role::User, 0, 2)
        ])
        .is_ok());
        assert!(check_function_turns(&[turn(Role::Model, 1, 0)]).is_err());
        assert!(check_function_turns(&[
            turn(Role::User, 0, 0),
            turn(Role::Model, 2, 0),
            turn(Role::User, 0, 1)
        ])
        .is_err());
        assert!(check_function_turns(&[turn(Role::User, 0, 1)]).is_err());
    }

    #[test]
    fn base64_check() {
        assert!(is_base64("aGVsbG8="));
        assert!(is_base64("aGVsbG8"));
        assert!(is_base64("_-8="));
        assert!(!is_base64("data:image/png;base64,aGVsbG8="));
    }
}
