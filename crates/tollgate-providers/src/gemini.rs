//! Google Gemini API (`generativelanguage.googleapis.com`, `v1beta`).
//!
//! Chat goes to `models/{model}:generateContent` (streaming:
//! `:streamGenerateContent?alt=sse`), embeddings to `models/{model}:batchEmbedContents`.
//! The credential header (`x-goog-api-key`) is added by the crate root.
//!
//! Requests are rebuilt, not spliced: system and developer messages become
//! `systemInstruction`, the conversation becomes `contents` with roles `user` and
//! `model` (consecutive turns of one role merged, tool results sent as
//! `functionResponse` parts in a `user` turn), tools become `functionDeclarations`
//! with their JSON Schema reduced to the OpenAPI subset Gemini accepts, and the
//! sampling parameters go to `generationConfig`. Every parameter the translation
//! cannot honour is refused with a 400 that names it.
//!
//! Responses are rebuilt as `chat.completion` / `chat.completion.chunk`. Gemini gives
//! function calls no id, so they get `call_<n>`, numbered in order within one response.
//! Its stream has no terminal event: the stream is complete when every candidate
//! has reported a `finishReason` and the upstream body ends.
//!
//! `docs/providers/gemini.md` has the full mapping table and the known limits.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tollgate_schema::chat::BorrowedStr;
use tollgate_schema::embeddings::EmbeddingInput;
use tollgate_schema::error::write_json_str;
use tollgate_schema::response::{
    Choice, ChunkChoice, Delta, FunctionCallOut, ResponseMessage, ToolCallOut,
};
use tollgate_schema::sse::SseDecoder;
use tollgate_schema::{
    ApiError, ChatCompletion, ChatRequest, Content, ContentPart, EmbeddingsRequest, ErrorType,
    ResponseFormat, Role, ToolChoice, Usage,
};

use crate::{
    write_stream_error, ErrorOut, ResponseCtx, StreamError, TargetCtx, Translated, UpstreamRequest,
};

/// Google's documented placeholder for a `thoughtSignature` the client could not keep.
///
/// Gemini 3 models reject a replayed `functionCall` part without a signature, and
/// OpenAI clients have nowhere to keep one, so every replayed model turn with
/// function calls carries this value on its first call (see `docs/providers/gemini.md`).
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Deepest JSON Schema nesting (counting `$ref` hops) the conversion follows.
const MAX_SCHEMA_DEPTH: usize = 64;

// ---------------------------------------------------------------------------
// An order-preserving JSON value.
// ---------------------------------------------------------------------------

/// A JSON value that keeps object members in the order they were written.
///
/// `serde_json::Value` sorts members (the workspace does not enable
/// `preserve_order`); tool schemas, call arguments and tool results should reach
/// the model in the order the client wrote them.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    fn obj<const N: usize>(members: [(&str, Json); N]) -> Json {
        Json::Obj(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => member(m, key),
            _ => None,
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        // Serializing this type into memory cannot fail: keys are strings, numbers finite.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn member<'j>(members: &'j [(String, Json)], key: &str) -> Option<&'j Json> {
    members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Insert or replace a member, keeping the position of a replaced one.
fn set_member(members: &mut Vec<(String, Json)>, key: &str, value: Json) {
    match members.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => members.push((key.to_owned(), value)),
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Num(n) => n.serialize(s),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Obj(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Num(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Num(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Num))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
                Ok(Json::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(k) = map.next_key::<String>()? {
                    let v: Json = map.next_value()?;
                    members.push((k, v));
                }
                Ok(Json::Obj(members))
            }
        }
        d.deserialize_any(V)
    }
}

/// Remove the insignificant whitespace from a JSON text (Google pretty-prints its bodies).
fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_str, mut escaped) = (false, false);
    for ch in raw.chars() {
        if in_str {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_str = false;
            }
        } else if ch == '"' {
            in_str = true;
            out.push(ch);
        } else if !matches!(ch, ' ' | '\n' | '\r' | '\t') {
            out.push(ch);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Paths.
// ---------------------------------------------------------------------------

/// The model's resource name: `models/{model}`, or the configured name as is when it
/// already names a collection (`models/…`, `tunedModels/…`).
fn model_resource(model: &str) -> Cow<'_, str> {
    let model = model.trim_start_matches('/');
    if model.contains('/') {
        Cow::Borrowed(model)
    } else {
        Cow::Owned(format!("models/{model}"))
    }
}

/// `{base_path}/v1beta/{resource}:{method}`, the resource percent-encoded. A base URL
/// that already ends in `/v1beta` is not given a second one.
fn method_path(base_path: &str, model: &str, method: &str) -> String {
    let resource = model_resource(model);
    let mut path = String::with_capacity(base_path.len() + resource.len() + method.len() + 10);
    path.push_str(base_path);
    if !base_path.ends_with("/v1beta") {
        path.push_str("/v1beta");
    }
    path.push('/');
    for b in resource.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path.push(':');
    path.push_str(method);
    path
}

// ---------------------------------------------------------------------------
// Chat request.
// ---------------------------------------------------------------------------

fn invalid(message: impl Into<Cow<'static, str>>, param: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::invalid_request(message).with_param(param)
}

fn unsupported_param(param: &str, why: &str) -> ApiError {
    ApiError::invalid_request(format!(
        "`{param}` is not supported for Gemini models{why}."
    ))
    .with_param(param.to_owned())
    .with_code("unsupported_parameter")
}

/// Parameters with no Gemini effect that are accepted and dropped.
const IGNORED_PARAMS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
];

/// Parameters the translation reads (and refuses values of, where it must).
const TRANSLATED_PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "modalities",
];

/// Refuse every parameter the translation would otherwise silently drop.
fn check_params(req: &ChatRequest<'_>) -> Result<(), ApiError> {
    for (k, v) in &req.raw.fields {
        let k = k.as_ref();
        if v.get() == "null" || IGNORED_PARAMS.contains(&k) || TRANSLATED_PARAMS.contains(&k) {
            continue;
        }
        return Err(unsupported_param(k, " by this gateway"));
    }
    req.parallel_tool_calls()?;
    if req.raw.typed::<bool>("logprobs")? == Some(true) {
        return Err(unsupported_param(
            "logprobs",
            ": log probabilities are not translated",
        ));
    }
    if req.raw.typed::<u64>("top_logprobs")?.is_some_and(|n| n > 0) {
        return Err(unsupported_param(
            "top_logprobs",
            ": log probabilities are not translated",
        ));
    }
    if req
        .raw
        .typed::<serde_json::Map<String, serde_json::Value>>("logit_bias")?
        .is_some_and(|m| !m.is_empty())
    {
        return Err(unsupported_param("logit_bias", ""));
    }
    if let Some(m) = req.raw.typed::<Vec<BorrowedStr<'_>>>("modalities")? {
        if m.iter().any(|s| s.0 != "text") {
            return Err(unsupported_param(
                "modalities",
                ": only text output is translated",
            ));
        }
    }
    Ok(())
}

/// Build the upstream `generateContent` (or `streamGenerateContent`) request.
pub fn chat_request(req: &ChatRequest<'_>, t: &TargetCtx<'_>) -> Result<UpstreamRequest, ApiError> {
    check_params(req)?;
    let (contents, system) = convert_messages(req, signature_sentinel_wanted(t.upstream_model))?;
    let mut body: Vec<(String, Json)> = vec![("contents".into(), contents)];
    if !system.is_empty() {
        body.push((
            "systemInstruction".into(),
            Json::obj([("parts", Json::Arr(system))]),
        ));
    }
    let (tools, names) = convert_tools(req)?;
    if let Some(tools) = tools {
        body.push(("tools".into(), tools));
    }
    if let Some(cfg) = convert_tool_choice(req, &names)? {
        body.push(("toolConfig".into(), cfg));
    }
    let config = generation_config(req)?;
    if !config.is_empty() {
        body.push(("generationConfig".into(), Json::Obj(config)));
    }
    let path = if req.stream {
        method_path(
            t.base_path,
            t.upstream_model,
            "streamGenerateContent?alt=sse",
        )
    } else {
        method_path(t.base_path, t.upstream_model, "generateContent")
    };
    Ok(UpstreamRequest {
        path,
        body: Json::Obj(body).to_vec(),
        stream: req.stream,
    })
}

/// Whether replayed function calls need the signature placeholder: every model except
/// the Gemini 1.x and 2.x families, which do not validate signatures.
fn signature_sentinel_wanted(model: &str) -> bool {
    let id = model.rsplit('/').next().unwrap_or(model);
    !(id.starts_with("gemini-1") || id.starts_with("gemini-2"))
}

fn text_part(text: &str) -> Json {
    Json::obj([("text", Json::str(text))])
}

/// The non-empty text pieces of a message whose role allows only text.
fn text_only<'c>(content: &'c Content<'_>, i: usize, role: Role) -> Result<Vec<&'c str>, ApiError> {
    match content {
        Content::None => Ok(Vec::new()),
        Content::Text(t) => Ok(if t.is_empty() {
            Vec::new()
        } else {
            vec![t.as_ref()]
        }),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p {
                    ContentPart::Text { text } if !text.is_empty() => out.push(text.as_ref()),
                    ContentPart::Refusal { refusal }
                        if role == Role::Assistant && !refusal.is_empty() =>
                    {
                        out.push(refusal.as_ref())
                    }
                    ContentPart::Text { .. } | ContentPart::Refusal { .. } => {}
                    _ => {
                        return Err(invalid(
                            format!("Gemini accepts only text in `{}` messages.", role.as_str()),
                            format!("messages[{i}].content[{j}]"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The parts of a user message.
fn user_parts(content: &Content<'_>, i: usize) -> Result<Vec<Json>, ApiError> {
    match content {
        Content::None => Ok(Vec::new()),
        Content::Text(t) => Ok(if t.is_empty() {
            Vec::new()
        } else {
            vec![text_part(t)]
        }),
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p {
                    ContentPart::Text { text } => {
                        if !text.is_empty() {
                            out.push(text_part(text));
                        }
                    }
                    ContentPart::ImageUrl { url, .. } => out.push(image_part(
                        url,
                        &format!("messages[{i}].content[{j}].image_url"),
                    )?),
                    ContentPart::InputAudio { data, format } => out.push(Json::obj([(
                        "inlineData",
                        Json::obj([
                            ("mimeType", Json::str(format!("audio/{format}"))),
                            ("data", Json::str(data.as_ref())),
                        ]),
                    )])),
                    ContentPart::Refusal { .. } => {
                        return Err(invalid(
                            "A `refusal` part is only valid in assistant messages.",
                            format!("messages[{i}].content[{j}]"),
                        ))
                    }
                    ContentPart::Other { kind } => {
                        return Err(invalid(
                            format!(
                            "Content parts of type `{kind}` are not supported for Gemini models."
                        ),
                            format!("messages[{i}].content[{j}].type"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

/// `data:` URLs become `inlineData`; http(s) URLs become `fileData`, which Gemini fetches.
fn image_part(url: &str, param: &str) -> Result<Json, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let bad = || {
            invalid(
                "An image `data:` URL must look like `data:<mime type>;base64,<data>`.",
                param.to_owned(),
            )
        };
        let (meta, data) = rest.split_once(',').ok_or_else(bad)?;
        let meta = meta.strip_suffix(";base64").ok_or_else(bad)?;
        let mime = meta.split(';').next().unwrap_or_default();
        if mime.is_empty() || data.is_empty() {
            return Err(bad());
        }
        return Ok(Json::obj([(
            "inlineData",
            Json::obj([("mimeType", Json::str(mime)), ("data", Json::str(data))]),
        )]));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(invalid(
            "An image URL must be an http(s) URL or a base64 `data:` URL.",
            param.to_owned(),
        ));
    }
    let mut file = Vec::with_capacity(2);
    if let Some(mime) = mime_from_url(url) {
        file.push(("mimeType".to_owned(), Json::str(mime)));
    }
    file.push(("fileUri".to_owned(), Json::str(url)));
    Ok(Json::obj([("fileData", Json::Obj(file))]))
}

/// The MIME type implied by a URL's file extension, for the types Gemini reads as images.
fn mime_from_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = name.rsplit_once('.')?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// A tool call's `arguments` string as a JSON object.
fn call_arguments(args: &str, param: String) -> Result<Json, ApiError> {
    if args.trim().is_empty() {
        return Ok(Json::Obj(Vec::new()));
    }
    match serde_json::from_str::<Json>(args) {
        Ok(obj @ Json::Obj(_)) => Ok(obj),
        Ok(_) => Err(invalid("Tool call arguments must be a JSON object.", param)),
        Err(e) => Err(invalid(
            format!("Tool call arguments are not valid JSON: {e}"),
            param,
        )),
    }
}

/// Consecutive turns of one role, merged.
#[derive(Default)]
struct Turns {
    contents: Vec<(&'static str, Vec<Json>)>,
}

impl Turns {
    fn push(&mut self, role: &'static str, parts: Vec<Json>) {
        if parts.is_empty() {
            return;
        }
        match self.contents.last_mut() {
            Some((r, p)) if *r == role => p.extend(parts),
            _ => self.contents.push((role, parts)),
        }
    }
}

/// `contents` and the `systemInstruction` parts.
fn convert_messages(req: &ChatRequest<'_>, sentinel: bool) -> Result<(Json, Vec<Json>), ApiError> {
    let mut turns = Turns::default();
    let mut system = Vec::new();
    // (id, name) of every tool call so far, to name the function a tool result answers.
    let mut calls: Vec<(&str, &str)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                system.extend(text_only(&m.content, i, m.role)?.into_iter().map(text_part));
            }
            Role::User => turns.push("user", user_parts(&m.content, i)?),
            Role::Assistant => {
                let mut parts: Vec<Json> = text_only(&m.content, i, m.role)?.into_iter().map(text_part).collect();
                for (j, tc) in m.tool_calls.iter().flatten().enumerate() {
                    let args = call_arguments(&tc.function.arguments, format!("messages[{i}].tool_calls[{j}].function.arguments"))?;
                    parts.push(Json::obj([(
                        "functionCall",
                        Json::obj([("name", Json::str(tc.function.name.as_ref())), ("args", args)]),
                    )]));
                    calls.push((tc.id.as_ref(), tc.function.name.as_ref()));
                }
                turns.push("model", parts);
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    invalid("A `tool` message needs a `tool_call_id`.", format!("messages[{i}].tool_call_id"))
                })?;
                let name = calls.iter().rev().find(|(c, _)| *c == id).map(|(_, n)| *n).ok_or_else(|| {
                    invalid(
                        format!("`tool_call_id` `{id}` does not match a tool call of an earlier assistant message."),
                        format!("messages[{i}].tool_call_id"),
                    )
                })?;
                let text = text_only(&m.content, i, m.role)?.concat();
                let response = match serde_json::from_str::<Json>(&text) {
                    Ok(obj @ Json::Obj(_)) => obj,
                    _ => Json::obj([("content", Json::Str(text))]),
                };
                turns.push(
                    "user",
                    vec![Json::obj([("functionResponse", Json::obj([("name", Json::str(name)), ("response", response)]))])],
                );
            }
            Role::Function => {
                return Err(invalid(
                    "Legacy `function` messages are not supported for Gemini models; use `tool` messages.",
                    format!("messages[{i}].role"),
                ))
            }
        }
    }
    if turns.contents.is_empty() {
        return Err(invalid(
            "Gemini needs at least one user or assistant message with content.",
            "messages",
        ));
    }
    let contents = turns
        .contents
        .into_iter()
        .map(|(role, mut parts)| {
            if sentinel && role == "model" {
                if let Some(Json::Obj(first_call)) =
                    parts.iter_mut().find(|p| p.get("functionCall").is_some())
                {
                    first_call.push(("thoughtSignature".into(), Json::str(SKIP_SIGNATURE)));
                }
            }
            Json::obj([("role", Json::str(role)), ("parts", Json::Arr(parts))])
        })
        .collect();
    Ok((Json::Arr(contents), system))
}

/// `tools[]` as one `functionDeclarations` tool, and the declared names.
fn convert_tools(req: &ChatRequest<'_>) -> Result<(Option<Json>, Vec<String>), ApiError> {
    let Some(tools) = req.tools()? else {
        return Ok((None, Vec::new()));
    };
    let mut decls = Vec::with_capacity(tools.len());
    let mut names = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(invalid(
                format!(
                    "Tools of type `{}` are not supported for Gemini models.",
                    tool.kind
                ),
                format!("tools[{i}].type"),
            ));
        }
        let f = &tool.function;
        let mut decl = vec![("name".to_owned(), Json::str(f.name.as_ref()))];
        if let Some(d) = &f.description {
            decl.push(("description".into(), Json::str(d.as_ref())));
        }
        if let Some(raw) = f.parameters {
            let param = format!("tools[{i}].function.parameters");
            let schema = gemini_schema(raw, &param, false)?;
            let has_properties =
                matches!(schema.get("properties"), Some(Json::Obj(p)) if !p.is_empty());
            // Gemini rejects an OBJECT without properties; a function without arguments declares none.
            if has_properties || !is_object_type(&schema) {
                decl.push(("parameters".into(), schema));
            }
        }
        names.push(f.name.to_string());
        decls.push(Json::Obj(decl));
    }
    if decls.is_empty() {
        return Ok((None, names));
    }
    Ok((
        Some(Json::Arr(vec![Json::obj([(
            "functionDeclarations",
            Json::Arr(decls),
        )])])),
        names,
    ))
}

fn is_object_type(schema: &Json) -> bool {
    match schema.get("type") {
        None => {
            schema.get("anyOf").is_none()
                && schema.get("enum").is_none()
                && schema.get("items").is_none()
        }
        Some(Json::Str(t)) => t.eq_ignore_ascii_case("object"),
        Some(_) => false,
    }
}

/// `tool_choice` → `toolConfig.functionCallingConfig`.
fn convert_tool_choice(req: &ChatRequest<'_>, names: &[String]) -> Result<Option<Json>, ApiError> {
    let Some(choice) = req.tool_choice()? else {
        return Ok(None);
    };
    if names.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(invalid("`tool_choice` requires `tools`.", "tool_choice")),
        };
    }
    let config = match choice {
        ToolChoice::Auto => Json::obj([("mode", Json::str("AUTO"))]),
        ToolChoice::None => Json::obj([("mode", Json::str("NONE"))]),
        ToolChoice::Required => Json::obj([("mode", Json::str("ANY"))]),
        ToolChoice::Function(name) => {
            if !names.iter().any(|n| *n == name) {
                return Err(invalid(
                    format!("`tool_choice` names `{name}`, which is not in `tools`."),
                    "tool_choice",
                ));
            }
            Json::obj([
                ("mode", Json::str("ANY")),
                ("allowedFunctionNames", Json::Arr(vec![Json::str(name)])),
            ])
        }
    };
    Ok(Some(Json::obj([("functionCallingConfig", config)])))
}

/// A numeric parameter, as the client wrote it (so `1` stays an integer).
fn raw_number(req: &ChatRequest<'_>, key: &str) -> Result<Option<Json>, ApiError> {
    if req.raw.typed::<f64>(key)?.is_none() {
        return Ok(None);
    }
    let raw = req.raw.get(key).map(RawValue::get).unwrap_or_default();
    serde_json::from_str::<serde_json::Number>(raw)
        .map(|n| Some(Json::Num(n)))
        .map_err(|e| invalid(format!("Invalid value for `{key}`: {e}"), key.to_owned()))
}

/// `generationConfig` members.
fn generation_config(req: &ChatRequest<'_>) -> Result<Vec<(String, Json)>, ApiError> {
    let mut cfg: Vec<(String, Json)> = Vec::new();
    if let Some(stop) = req.stop()? {
        let stops: Vec<Json> = stop.to_vec().into_iter().map(Json::str).collect();
        if !stops.is_empty() {
            cfg.push(("stopSequences".into(), Json::Arr(stops)));
        }
    }
    match req.response_format()? {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            cfg.push(("responseMimeType".into(), Json::str("application/json")))
        }
        Some(ResponseFormat::JsonSchema(spec)) => {
            cfg.push(("responseMimeType".into(), Json::str("application/json")));
            if let Some(raw) = spec.schema {
                cfg.push((
                    "responseSchema".into(),
                    gemini_schema(raw, "response_format.json_schema.schema", true)?,
                ));
            }
        }
    }
    match req.n {
        Some(0) => return Err(invalid("`n` must be at least 1.", "n")),
        Some(n) if n > 1 => cfg.push(("candidateCount".into(), Json::Num(n.into()))),
        _ => {}
    }
    if let Some(max) = req.max_tokens {
        cfg.push(("maxOutputTokens".into(), Json::Num(max.into())));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = raw_number(req, from)? {
            cfg.push((to.into(), v));
        }
    }
    if let Some(seed) = req.seed()? {
        let seed = i32::try_from(seed).map_err(|_| {
            invalid(
                "Gemini takes a 32-bit `seed` (between -2147483648 and 2147483647).",
                "seed",
            )
        })?;
        cfg.push(("seed".into(), Json::Num(seed.into())));
    }
    for (from, to) in [
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = raw_number(req, from)? {
            cfg.push((to.into(), v));
        }
    }
    Ok(cfg)
}

// ---------------------------------------------------------------------------
// JSON Schema → Gemini's OpenAPI 3.0 schema subset.
// ---------------------------------------------------------------------------

/// Keywords copied unchanged.
const KEPT_KEYWORDS: &[&str] = &[
    "title",
    "description",
    "nullable",
    "required",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "pattern",
    "minimum",
    "maximum",
    "default",
    "example",
    "propertyOrdering",
];

fn schema_error(param: &str, what: String) -> ApiError {
    invalid(format!("The schema in `{param}` {what}"), param.to_owned())
}

/// Parse a client JSON Schema and reduce it to what Gemini's `Schema` accepts;
/// `ordered` adds `propertyOrdering` so structured output keeps the client's key order.
fn gemini_schema(raw: &RawValue, param: &str, ordered: bool) -> Result<Json, ApiError> {
    let root: Json = serde_json::from_str(raw.get())
        .map_err(|e| schema_error(param, format!("is not valid JSON: {e}")))?;
    if !matches!(root, Json::Obj(_)) {
        return Err(schema_error(param, "must be a JSON object.".into()));
    }
    let mut out = convert_schema(&root, &root, param, 0)?;
    if ordered {
        add_property_ordering(&mut out);
    }
    Ok(out)
}

fn convert_schema(node: &Json, root: &Json, param: &str, depth: usize) -> Result<Json, ApiError> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(schema_error(
            param,
            "is nested too deeply or refers to itself through `$ref`; Gemini needs a finite schema.".into(),
        ));
    }
    // `true` / `{}` accept anything: Gemini has no way to say so beyond an empty schema.
    let Json::Obj(members) = node else {
        return Ok(Json::Obj(Vec::new()));
    };
    let mut out: Vec<(String, Json)> = Vec::new();
    if let Some(Json::Str(r)) = member(members, "$ref") {
        let target = resolve_ref(root, r).ok_or_else(|| {
            schema_error(
                param,
                format!("has a `$ref` (`{r}`) that does not point into the schema."),
            )
        })?;
        if let Json::Obj(resolved) = convert_schema(target, root, param, depth + 1)? {
            out = resolved;
        }
    }
    let mut any_of: Option<Vec<Json>> = None;
    let mut format: Option<&str> = None;
    for (k, v) in members {
        match k.as_str() {
            "type" => match v {
                Json::Str(_) => set_member(&mut out, "type", v.clone()),
                Json::Arr(types) => {
                    let mut named: Vec<Json> = types
                        .iter()
                        .filter(|t| !matches!(t, Json::Str(s) if s == "null"))
                        .cloned()
                        .collect();
                    if named.len() < types.len() {
                        set_member(&mut out, "nullable", Json::Bool(true));
                    }
                    if named.len() == 1 {
                        set_member(&mut out, "type", named.remove(0));
                    } else if named.len() > 1 {
                        any_of = Some(
                            named
                                .into_iter()
                                .map(|t| Json::obj([("type", t)]))
                                .collect(),
                        );
                    }
                }
                _ => {}
            },
            "format" => {
                format = if let Json::Str(f) = v {
                    Some(f.as_str())
                } else {
                    None
                }
            }
            "enum" => {
                // Gemini enumerates strings only; other enums are dropped.
                if matches!(v, Json::Arr(items) if items.iter().all(|i| matches!(i, Json::Str(_))))
                {
                    set_member(&mut out, "enum", v.clone());
                }
            }
            "const" => {
                if let Json::Str(_) = v {
                    set_member(&mut out, "enum", Json::Arr(vec![v.clone()]));
                }
            }
            "items" => {
                if let Json::Obj(_) = v {
                    set_member(
                        &mut out,
                        "items",
                        convert_schema(v, root, param, depth + 1)?,
                    );
                }
            }
            "properties" => {
                if let Json::Obj(props) = v {
                    let mut converted = Vec::with_capacity(props.len());
                    for (name, schema) in props {
                        converted.push((
                            name.clone(),
                            convert_schema(schema, root, param, depth + 1)?,
                        ));
                    }
                    set_member(&mut out, "properties", Json::Obj(converted));
                }
            }
            "anyOf" | "oneOf" => {
                if let Json::Arr(options) = v {
                    let mut converted = Vec::with_capacity(options.len());
                    for o in options {
                        converted.push(convert_schema(o, root, param, depth + 1)?);
                    }
                    any_of = Some(converted);
                }
            }
            "allOf" => {
                if let Json::Arr(parts) = v {
                    for p in parts {
                        if let Json::Obj(m) = convert_schema(p, root, param, depth + 1)? {
                            merge_schema(&mut out, m);
                        }
                    }
                }
            }
            key if KEPT_KEYWORDS.contains(&key) => set_member(&mut out, key, v.clone()),
            // $schema, $defs, additionalProperties, examples, multipleOf, not, if/then/else, …
            _ => {}
        }
    }
    if let Some(mut options) = any_of {
        let before = options.len();
        options.retain(|o| !matches!(o.get("type"), Some(Json::Str(t)) if t == "null"));
        if options.len() < before {
            set_member(&mut out, "nullable", Json::Bool(true));
        }
        if options.len() == 1 {
            if let Some(Json::Obj(only)) = options.pop() {
                merge_schema(&mut out, only);
            }
        } else if !options.is_empty() {
            set_member(&mut out, "anyOf", Json::Arr(options));
        }
    }
    if let (Some(f), Some(Json::Str(t))) = (format, member(&out, "type")) {
        let supported = match t.to_ascii_lowercase().as_str() {
            "string" => matches!(f, "enum" | "date-time"),
            "integer" => matches!(f, "int32" | "int64"),
            "number" => matches!(f, "float" | "double"),
            _ => false,
        };
        if supported {
            set_member(&mut out, "format", Json::str(f));
        }
    }
    Ok(Json::Obj(out))
}

/// Add the members of `from` that `into` lacks; `properties` and `required` are united.
fn merge_schema(into: &mut Vec<(String, Json)>, from: Vec<(String, Json)>) {
    for (k, v) in from {
        match (k.as_str(), into.iter_mut().find(|(e, _)| *e == k)) {
            ("properties", Some((_, Json::Obj(have)))) => {
                if let Json::Obj(add) = v {
                    for (name, schema) in add {
                        if member(have, &name).is_none() {
                            have.push((name, schema));
                        }
                    }
                }
            }
            ("required", Some((_, Json::Arr(have)))) => {
                if let Json::Arr(add) = v {
                    for name in add {
                        if !have.contains(&name) {
                            have.push(name);
                        }
                    }
                }
            }
            (_, Some(_)) => {}
            (_, None) => into.push((k, v)),
        }
    }
}

/// Follow a local JSON pointer (`#/$defs/Name`, `#/definitions/Name`, …).
fn resolve_ref<'j>(root: &'j Json, reference: &str) -> Option<&'j Json> {
    let pointer = reference.strip_prefix('#')?;
    let mut node = root;
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        node = match node {
            Json::Obj(m) => member(m, &token)?,
            Json::Arr(items) => items.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Give every object with several properties a `propertyOrdering` in the client's order.
fn add_property_ordering(schema: &mut Json) {
    let Json::Obj(members) = schema else {
        return;
    };
    let mut order = None;
    for (k, v) in members.iter_mut() {
        match (k.as_str(), v) {
            ("properties", Json::Obj(props)) => {
                if props.len() > 1 {
                    order = Some(Json::Arr(
                        props
                            .iter()
                            .map(|(name, _)| Json::str(name.as_str()))
                            .collect(),
                    ));
                }
                for (_, p) in props.iter_mut() {
                    add_property_ordering(p);
                }
            }
            ("items", item) => add_property_ordering(item),
            ("anyOf", Json::Arr(options)) => options.iter_mut().for_each(add_property_ordering),
            _ => {}
        }
    }
    if let Some(order) = order {
        if member(members, "propertyOrdering").is_none() {
            members.push(("propertyOrdering".into(), order));
        }
    }
}

// ---------------------------------------------------------------------------
// Responses.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default)]
    model_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response_id: Option<Cow<'a, str>>,
    /// An error object in a stream event.
    #[serde(borrow, default)]
    error: Option<GoogleError<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u32>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    /// A thought summary, not part of the answer.
    #[serde(default)]
    thought: bool,
    #[serde(borrow, default)]
    function_call: Option<FunctionCallPart<'a>>,
}

#[derive(Deserialize)]
struct FunctionCallPart<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    /// Thinking tokens are billed as output, tool-use prompt tokens as input, so the
    /// OpenAI total matches Gemini's `totalTokenCount`.
    fn to_usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_token_count + self.tool_use_prompt_token_count,
            completion_tokens: self.candidates_token_count + self.thoughts_token_count,
            cached_tokens: self.cached_content_token_count,
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

fn bad_body(what: &str, e: serde_json::Error) -> ApiError {
    ApiError::bad_gateway(format!("The provider returned an invalid {what} body: {e}"))
}

/// Gemini `finishReason` → OpenAI `finish_reason`.
fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => "content_filter",
        _ if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// A Gemini function call as an OpenAI tool call; `next` numbers the calls Gemini gave no id.
fn tool_call_out(fc: &FunctionCallPart<'_>, next: &mut u32, index: Option<u32>) -> ToolCallOut {
    let n = *next;
    *next += 1;
    ToolCallOut {
        index,
        id: Some(match &fc.id {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("call_{n}"),
        }),
        kind: Some("function".into()),
        function: FunctionCallOut {
            name: Some(fc.name.to_string()),
            arguments: Some(
                fc.args
                    .map_or_else(|| "{}".to_owned(), |a| compact_json(a.get())),
            ),
        },
    }
}

/// A 2xx `generateContent` body as a `chat.completion`.
pub fn chat_response(body: Bytes, ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    let r: GenerateResponse<'_> =
        serde_json::from_slice(&body).map_err(|e| bad_body("generateContent", e))?;
    if let Some(e) = &r.error {
        return Err(e.to_api_error(502));
    }
    let mut next_call = 0;
    let mut choices = Vec::with_capacity(r.candidates.len().max(1));
    for (pos, c) in r.candidates.iter().enumerate() {
        let mut text = String::new();
        let mut has_text = false;
        let mut calls = Vec::new();
        for p in c
            .content
            .iter()
            .flat_map(|c| &c.parts)
            .filter(|p| !p.thought)
        {
            if let Some(t) = &p.text {
                has_text = true;
                text.push_str(t);
            }
            if let Some(fc) = &p.function_call {
                calls.push(tool_call_out(fc, &mut next_call, None));
            }
        }
        let reason = finish_reason(c.finish_reason.as_deref(), !calls.is_empty());
        let content = if has_text || (calls.is_empty() && reason != "content_filter") {
            Some(text)
        } else {
            None
        };
        choices.push(Choice {
            index: c.index.unwrap_or(u32::try_from(pos).unwrap_or(u32::MAX)),
            message: ResponseMessage {
                role: "assistant".into(),
                content,
                refusal: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
            },
            logprobs: None,
            finish_reason: Some(reason.into()),
        });
    }
    if choices.is_empty() {
        if r.prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_ref())
            .is_none()
        {
            return Err(ApiError::bad_gateway(
                "The provider returned no candidates.",
            ));
        }
        // The prompt itself was blocked: an empty, filtered answer rather than an error.
        choices.push(Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: None,
                refusal: None,
                tool_calls: None,
            },
            logprobs: None,
            finish_reason: Some("content_filter".into()),
        });
    }
    choices.sort_by_key(|c| c.index);
    let usage = r.usage_metadata.map(UsageMetadata::to_usage);
    let completion = ChatCompletion {
        id: r
            .response_id
            .as_deref()
            .map_or_else(|| format!("chatcmpl-{}", ctx.request_id), str::to_owned),
        object: "chat.completion".into(),
        created: ctx.now_unix,
        model: r
            .model_version
            .as_deref()
            .unwrap_or(ctx.upstream_model)
            .to_owned(),
        choices,
        usage,
        system_fingerprint: None,
    };
    let body = serde_json::to_vec(&completion).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Translated {
        body: Bytes::from(body),
        usage,
    })
}

// ---------------------------------------------------------------------------
// Streaming.
// ---------------------------------------------------------------------------

/// A `chat.completion.chunk` borrowing its strings (same JSON as `ChatCompletionChunk`).
#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Debug)]
struct ChoiceState {
    index: u32,
    finished: bool,
    tool_calls: u32,
}

/// Everything but the decoder, so the decoder's callback can borrow it.
#[derive(Debug)]
struct StreamState {
    wants_usage: bool,
    created: u64,
    /// Fixed by the first event: Gemini's `responseId` / `modelVersion`, or the fallbacks.
    id: String,
    model: String,
    started: bool,
    choices: Vec<ChoiceState>,
    next_call: u32,
    usage: Option<Usage>,
    first_token: bool,
    done: bool,
}

/// Translates `streamGenerateContent?alt=sse` into `chat.completion.chunk` events.
///
/// Memory is bounded by the largest single event plus a few bytes per candidate.
#[derive(Debug)]
pub struct GeminiStream {
    dec: SseDecoder,
    st: StreamState,
}

impl GeminiStream {
    /// A translator for one response.
    pub fn new(ctx: &ResponseCtx<'_>) -> Self {
        GeminiStream {
            dec: SseDecoder::default(),
            st: StreamState {
                wants_usage: ctx.client_wants_usage,
                created: ctx.now_unix,
                id: format!("chatcmpl-{}", ctx.request_id),
                model: ctx.upstream_model.to_owned(),
                started: false,
                choices: Vec::with_capacity(1),
                next_call: 0,
                usage: None,
                first_token: false,
                done: false,
            },
        }
    }

    /// Feed upstream bytes; client events are appended to `out`. After an error the
    /// client stream has been closed with an error event and `[DONE]`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let GeminiStream { dec, st } = self;
        if st.done {
            return Ok(());
        }
        let mut failure = None;
        let res = dec.feed(input, |ev| {
            if failure.is_none() {
                failure = st.on_event(ev.data, out);
            }
        });
        if let Err(e) = res {
            if !st.done {
                st.done = true;
                write_stream_error(
                    out,
                    &ApiError::bad_gateway(format!("The provider's stream broke: {e}")),
                );
            }
            return Err(StreamError::Malformed(e.to_string()));
        }
        failure.map_or(Ok(()), Err)
    }

    /// The upstream body ended (Gemini sends no terminal event): close the client stream
    /// with the usage chunk (when asked for) and `[DONE]`, or with an error when some
    /// candidate never reported a finish reason.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let st = &mut self.st;
        if st.done {
            return Ok(());
        }
        st.done = true;
        if st.choices.is_empty() || st.choices.iter().any(|c| !c.finished) {
            write_stream_error(
                out,
                &ApiError::bad_gateway("The provider's stream ended before a finish reason."),
            );
            return Err(StreamError::Malformed(
                "stream ended before a finish reason".into(),
            ));
        }
        if st.wants_usage {
            if let Some(u) = st.usage {
                st.write(out, &[], Some(u));
            }
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        Ok(())
    }

    /// Usage from the latest `usageMetadata` seen.
    pub fn usage(&self) -> Option<Usage> {
        self.st.usage
    }

    /// Whether a content or tool-call delta has gone out.
    pub fn first_token_seen(&self) -> bool {
        self.st.first_token
    }
}

impl StreamState {
    fn write(&self, out: &mut Vec<u8>, choices: &[ChunkChoice], usage: Option<Usage>) {
        let chunk = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        out.extend_from_slice(b"data: ");
        // Serializing into memory cannot fail for these types.
        let _ = serde_json::to_writer(&mut *out, &chunk);
        out.extend_from_slice(b"\n\n");
    }

    fn write_delta(&self, out: &mut Vec<u8>, index: u32, delta: Delta, finish: Option<&str>) {
        let choice = ChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason: finish.map(str::to_owned),
        };
        self.write(out, std::slice::from_ref(&choice), None);
    }

    /// One decoded event; returns the error that ended the stream, if it was malformed.
    fn on_event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Option<StreamError> {
        if self.done || data == b"[DONE]" {
            return None;
        }
        let ev: GenerateResponse<'_> = match serde_json::from_slice(data) {
            Ok(ev) => ev,
            Err(e) => {
                self.done = true;
                let detail = format!("invalid event: {e}");
                write_stream_error(out, &bad_body("stream event", e));
                return Some(StreamError::Malformed(detail));
            }
        };
        if let Some(err) = &ev.error {
            // The provider ended the stream with an error: pass it on, close cleanly.
            self.done = true;
            write_stream_error(out, &err.to_api_error(500));
            return None;
        }
        if !self.started {
            self.started = true;
            if let Some(id) = ev.response_id.as_deref().filter(|s| !s.is_empty()) {
                self.id = id.to_owned();
            }
            if let Some(model) = ev.model_version.as_deref().filter(|s| !s.is_empty()) {
                self.model = model.to_owned();
            }
        }
        for (pos, c) in ev.candidates.iter().enumerate() {
            self.candidate(c, u32::try_from(pos).unwrap_or(u32::MAX), out);
        }
        if ev.candidates.is_empty()
            && ev
                .prompt_feedback
                .as_ref()
                .and_then(|f| f.block_reason.as_ref())
                .is_some()
        {
            let slot = self.slot(0, out);
            if !self.choices[slot].finished {
                self.choices[slot].finished = true;
                self.write_delta(out, 0, Delta::default(), Some("content_filter"));
            }
        }
        if let Some(u) = ev.usage_metadata {
            self.usage = Some(u.to_usage());
        }
        None
    }

    /// The state of candidate `index`, announcing the assistant role the first time.
    fn slot(&mut self, index: u32, out: &mut Vec<u8>) -> usize {
        if let Some(i) = self.choices.iter().position(|c| c.index == index) {
            return i;
        }
        self.choices.push(ChoiceState {
            index,
            finished: false,
            tool_calls: 0,
        });
        let delta = Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            ..Delta::default()
        };
        self.write_delta(out, index, delta, None);
        self.choices.len() - 1
    }

    fn flush_text(&mut self, index: u32, text: &mut String, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        let delta = Delta {
            content: Some(std::mem::take(text)),
            ..Delta::default()
        };
        self.write_delta(out, index, delta, None);
        self.first_token = true;
    }

    fn candidate(&mut self, c: &Candidate<'_>, pos: u32, out: &mut Vec<u8>) {
        let index = c.index.unwrap_or(pos);
        let slot = self.slot(index, out);
        if self.choices[slot].finished {
            return;
        }
        // Text parts in a row go out as one delta; a function call closes the run.
        let mut text = String::new();
        for p in c
            .content
            .iter()
            .flat_map(|c| &c.parts)
            .filter(|p| !p.thought)
        {
            if let Some(t) = &p.text {
                text.push_str(t);
            }
            if let Some(fc) = &p.function_call {
                self.flush_text(index, &mut text, out);
                let k = self.choices[slot].tool_calls;
                self.choices[slot].tool_calls += 1;
                let call = tool_call_out(fc, &mut self.next_call, Some(k));
                let delta = Delta {
                    tool_calls: Some(vec![call]),
                    ..Delta::default()
                };
                self.write_delta(out, index, delta, None);
                self.first_token = true;
            }
        }
        self.flush_text(index, &mut text, out);
        if let Some(reason) = c.finish_reason.as_deref() {
            let state = &mut self.choices[slot];
            state.finished = true;
            let reason = finish_reason(Some(reason), state.tool_calls > 0);
            self.write_delta(out, index, Delta::default(), Some(reason));
        }
    }
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct GoogleErrorEnvelope<'a> {
    #[serde(borrow)]
    error: GoogleError<'a>,
}

/// `google.rpc.Status` as Google's JSON APIs send it.
#[derive(Deserialize)]
struct GoogleError<'a> {
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    details: Vec<ErrorDetail<'a>>,
}

#[derive(Deserialize)]
struct ErrorDetail<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

impl GoogleError<'_> {
    fn is_google(&self) -> bool {
        self.status.is_some() || self.code.is_some()
    }

    /// The OpenAI-shaped error, its status chosen from Google's canonical code.
    fn to_api_error(&self, http_status: u16) -> ApiError {
        let status = self.status.as_deref().unwrap_or_default();
        let key_invalid = self
            .details
            .iter()
            .any(|d| d.reason.as_deref() == Some("API_KEY_INVALID"));
        let fallback = self
            .code
            .filter(|c| (400..=599).contains(c))
            .unwrap_or(http_status);
        let (code, kind) = if key_invalid {
            (401, ErrorType::Authentication)
        } else {
            match status {
                "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
                    (400, ErrorType::InvalidRequest)
                }
                "UNAUTHENTICATED" => (401, ErrorType::Authentication),
                "PERMISSION_DENIED" => (403, ErrorType::Permission),
                "NOT_FOUND" => (404, ErrorType::InvalidRequest),
                "ABORTED" | "ALREADY_EXISTS" => (409, ErrorType::InvalidRequest),
                "RESOURCE_EXHAUSTED" => (429, ErrorType::RateLimit),
                "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => (500, ErrorType::Api),
                "UNIMPLEMENTED" => (501, ErrorType::Api),
                "UNAVAILABLE" => (503, ErrorType::Overloaded),
                "DEADLINE_EXCEEDED" => (504, ErrorType::Timeout),
                _ => (fallback, kind_for_status(fallback)),
            }
        };
        let message = if self.message.is_empty() {
            format!(
                "The provider answered {code}{}.",
                if status.is_empty() {
                    String::new()
                } else {
                    format!(" {status}")
                }
            )
        } else {
            self.message.to_string()
        };
        let machine = if key_invalid {
            "invalid_api_key".to_owned()
        } else if status.is_empty() {
            "upstream_error".to_owned()
        } else {
            status.to_ascii_lowercase()
        };
        ApiError::new(code, kind, message).with_code(machine)
    }
}

fn kind_for_status(status: u16) -> ErrorType {
    match status {
        401 => ErrorType::Authentication,
        403 => ErrorType::Permission,
        429 => ErrorType::RateLimit,
        400..=499 => ErrorType::InvalidRequest,
        503 => ErrorType::Overloaded,
        504 => ErrorType::Timeout,
        _ => ErrorType::Api,
    }
}

fn parse_google_error(body: &[u8]) -> Option<GoogleError<'_>> {
    // Plain JSON APIs send an object; the non-SSE stream sends it inside an array.
    let e = match serde_json::from_slice::<GoogleErrorEnvelope<'_>>(body) {
        Ok(env) => env.error,
        Err(_) => {
            serde_json::from_slice::<Vec<GoogleErrorEnvelope<'_>>>(body)
                .ok()?
                .into_iter()
                .next()?
                .error
        }
    };
    e.is_google().then_some(e)
}

/// A non-2xx response: Google's `{"error":{"code","message","status"}}` mapped to
/// OpenAI's shape and status, keeping Google's message; anything else wrapped.
pub fn error_response(status: u16, body: Bytes) -> ErrorOut {
    match parse_google_error(&body) {
        Some(e) => {
            let err = e.to_api_error(status);
            ErrorOut {
                status: err.status,
                body: Bytes::from(err.to_json()),
            }
        }
        None => crate::openai::error_response(status, body),
    }
}

// ---------------------------------------------------------------------------
// Embeddings.
// ---------------------------------------------------------------------------

const EMBEDDING_PARAMS: &[&str] = &["model", "input", "dimensions", "encoding_format", "user"];

/// Build the upstream `batchEmbedContents` request: one request per input string.
pub fn embeddings_request(
    req: &EmbeddingsRequest<'_>,
    t: &TargetCtx<'_>,
) -> Result<UpstreamRequest, ApiError> {
    for (k, v) in &req.raw.fields {
        if v.get() != "null" && !EMBEDDING_PARAMS.contains(&k.as_ref()) {
            return Err(unsupported_param(k, " by this gateway"));
        }
    }
    let texts: Vec<&str> = match &req.input {
        EmbeddingInput::One(s) => vec![s.as_ref()],
        EmbeddingInput::Many(v) => v.iter().map(AsRef::as_ref).collect(),
        EmbeddingInput::Tokens(_) | EmbeddingInput::ManyTokens(_) => {
            return Err(invalid(
                "Gemini embeds text only; token arrays are not supported.",
                "input",
            ))
        }
    };
    let model = model_resource(t.upstream_model);
    let requests = texts
        .into_iter()
        .map(|text| {
            let mut r = vec![
                ("model".to_owned(), Json::str(model.as_ref())),
                (
                    "content".to_owned(),
                    Json::obj([("parts", Json::Arr(vec![text_part(text)]))]),
                ),
            ];
            if let Some(d) = req.dimensions {
                r.push(("outputDimensionality".into(), Json::Num(d.into())));
            }
            Json::Obj(r)
        })
        .collect();
    Ok(UpstreamRequest {
        path: method_path(t.base_path, t.upstream_model, "batchEmbedContents"),
        body: Json::obj([("requests", Json::Arr(requests))]).to_vec(),
        stream: false,
    })
}

/// What the embeddings response translation needs to know about the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbeddingsOptions {
    /// The client asked for `encoding_format: "base64"` (little-endian `f32`s).
    pub base64: bool,
    /// The prompt-token estimate to report when Gemini reports no usage.
    pub estimated_prompt_tokens: Option<u64>,
}

impl EmbeddingsOptions {
    /// The options a request implies.
    pub fn for_request(req: &EmbeddingsRequest<'_>) -> Self {
        EmbeddingsOptions {
            base64: req.encoding_format.as_deref() == Some("base64"),
            estimated_prompt_tokens: Some(req.input.estimate_tokens()),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchEmbedResponse<'a> {
    #[serde(borrow, default)]
    embeddings: Vec<EmbeddingValues<'a>>,
    #[serde(default)]
    usage_metadata: Option<EmbedUsage>,
}

#[derive(Deserialize)]
struct EmbeddingValues<'a> {
    #[serde(borrow)]
    values: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmbedUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
}

/// A 2xx `batchEmbedContents` body as an OpenAI embeddings list, floats as JSON numbers.
///
/// `ResponseCtx` carries neither the requested encoding nor the input, so this
/// always answers with floats, and with Gemini's `usageMetadata` when present
/// (else zeros); [`embeddings_response_with`] does both properly.
pub fn embeddings_response(body: Bytes, ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    let opts = EmbeddingsOptions {
        base64: ctx.embeddings_base64,
        estimated_prompt_tokens: Some(ctx.estimated_prompt_tokens).filter(|n| *n > 0),
    };
    embeddings_response_with(body, ctx, opts)
}

/// A 2xx `batchEmbedContents` body as an OpenAI embeddings list, encoded as the
/// client asked; usage is Gemini's `usageMetadata.promptTokenCount`, else the estimate.
pub fn embeddings_response_with(
    body: Bytes,
    ctx: &ResponseCtx<'_>,
    opts: EmbeddingsOptions,
) -> Result<Translated, ApiError> {
    let r: BatchEmbedResponse<'_> =
        serde_json::from_slice(&body).map_err(|e| bad_body("batchEmbedContents", e))?;
    let prompt_tokens = r
        .usage_metadata
        .and_then(|u| u.prompt_token_count)
        .or(opts.estimated_prompt_tokens);
    let mut out = Vec::with_capacity(body.len() + 64 * r.embeddings.len() + 128);
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (i, e) in r.embeddings.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"object":"embedding","index":"#);
        out.extend_from_slice(i.to_string().as_bytes());
        out.extend_from_slice(br#","embedding":"#);
        if opts.base64 {
            let values: Vec<f32> = serde_json::from_str(e.values.get())
                .map_err(|err| bad_body("batchEmbedContents", err))?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            write_json_str(
                &mut out,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        } else {
            let compact = compact_json(e.values.get());
            if !compact.starts_with('[') {
                return Err(ApiError::bad_gateway(
                    "The provider returned embedding values that are not an array.",
                ));
            }
            out.extend_from_slice(compact.as_bytes());
        }
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"model":"#);
    write_json_str(&mut out, ctx.upstream_model);
    let n = prompt_tokens.unwrap_or(0).to_string();
    out.extend_from_slice(br#","usage":{"prompt_tokens":"#);
    out.extend_from_slice(n.as_bytes());
    out.extend_from_slice(br#","total_tokens":"#);
    out.extend_from_slice(n.as_bytes());
    out.extend_from_slice(b"}}");
    Ok(Translated {
        body: Bytes::from(out),
        usage: prompt_tokens.map(|p| Usage {
            prompt_tokens: p,
            ..Usage::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::ProviderKind;
    use serde_json::{json, Value};

    const T: TargetCtx<'static> = TargetCtx {
        kind: ProviderKind::Gemini,
        base_path: "",
        upstream_model: "gemini-2.5-flash",
        api_version: None,
        default_max_tokens: 4096,
    };

    fn ctx(wants: bool) -> ResponseCtx<'static> {
        ResponseCtx {
            client_wants_usage: wants,
            public_model: "pub",
            upstream_model: "gemini-2.5-flash",
            now_unix: 7,
            request_id: "r1",
            embeddings_base64: false,
            estimated_prompt_tokens: 0,
        }
    }

    fn upstream(body: &str, t: &TargetCtx<'_>) -> Result<Value, ApiError> {
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        chat_request(&req, t).map(|up| serde_json::from_slice(&up.body).unwrap())
    }

    fn schema(v: Value) -> Value {
        let raw = RawValue::from_string(v.to_string()).unwrap();
        serde_json::from_slice(&gemini_schema(&raw, "p", false).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn paths() {
        assert_eq!(
            method_path("", "gemini-2.0-flash", "generateContent"),
            "/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(
            method_path("/v1beta", "models/x", "batchEmbedContents"),
            "/v1beta/models/x:batchEmbedContents"
        );
        assert_eq!(
            method_path("/p", "tunedModels/a b", "generateContent"),
            "/p/v1beta/tunedModels/a%20b:generateContent"
        );
        assert_eq!(method_path("", "a:b", "m"), "/v1beta/models/a%3Ab:m");
    }

    #[test]
    fn object_order_is_kept() {
        let v: Json = serde_json::from_str(r#"{"b":1,"a":{"z":2.5,"y":[true,null]}}"#).unwrap();
        assert_eq!(
            String::from_utf8(v.to_vec()).unwrap(),
            r#"{"b":1,"a":{"z":2.5,"y":[true,null]}}"#
        );
        assert_eq!(
            compact_json("{\n  \"a\": \"x y\\\" z\",\n  \"b\": [1, 2]\n}"),
            r#"{"a":"x y\" z","b":[1,2]}"#
        );
    }

    #[test]
    fn schema_is_reduced_to_gemini_subset() {
        let got = schema(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "when": {"type": "string", "format": "date-time"},
                "url": {"type": "string", "format": "uri"},
                "n": {"type": ["integer", "null"], "format": "int32"},
                "kind": {"const": "a"},
                "pet": {"$ref": "#/$defs/Pet", "description": "the pet"},
                "either": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                "many": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "level": {"type": "integer", "enum": [1, 2]}
            },
            "required": ["when"],
            "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": false}}
        }));
        assert_eq!(
            got,
            json!({
                "type": "object",
                "properties": {
                    "when": {"type": "string", "format": "date-time"},
                    "url": {"type": "string"},
                    "n": {"nullable": true, "type": "integer", "format": "int32"},
                    "kind": {"enum": ["a"]},
                    "pet": {"type": "object", "properties": {"name": {"type": "string"}}, "description": "the pet"},
                    "either": {"nullable": true, "type": "string"},
                    "many": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    "level": {"type": "integer"}
                },
                "required": ["when"]
            })
        );
    }

    #[test]
    fn recursive_schema_is_refused() {
        let raw = RawValue::from_string(
            json!({"type":"object","properties":{"child":{"$ref":"#"}}}).to_string(),
        )
        .unwrap();
        let e = gemini_schema(&raw, "tools[0].function.parameters", false).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].function.parameters"));
        let raw = RawValue::from_string(json!({"$ref":"#/$defs/missing"}).to_string()).unwrap();
        assert!(gemini_schema(&raw, "p", false).is_err());
    }

    #[test]
    fn ordering_added_for_structured_output() {
        let raw = RawValue::from_string(r#"{"type":"object","properties":{"b":{"type":"string"},"a":{"type":"object","properties":{"y":{"type":"number"},"x":{"type":"number"}}}}}"#.into()).unwrap();
        let got: Value =
            serde_json::from_slice(&gemini_schema(&raw, "p", true).unwrap().to_vec()).unwrap();
        assert_eq!(got["propertyOrdering"], json!(["b", "a"]));
        assert_eq!(
            got["properties"]["a"]["propertyOrdering"],
            json!(["y", "x"])
        );
    }

    #[test]
    fn refusals_name_the_param() {
        let cases = [
            (r#""logprobs":true"#, "logprobs"),
            (r#""logit_bias":{"1":2}"#, "logit_bias"),
            (r#""reasoning_effort":"low""#, "reasoning_effort"),
            (r#""functions":[{"name":"f"}]"#, "functions"),
            (r#""seed":4294967296"#, "seed"),
            (r#""n":0"#, "n"),
            (r#""modalities":["text","audio"]"#, "modalities"),
            (r#""tool_choice":"required""#, "tool_choice"),
        ];
        for (extra, param) in cases {
            let body =
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{extra}}}"#);
            let e = upstream(&body, &T).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some(param)),
                "{extra}"
            );
        }
        let bad = [
            (
                r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]"#,
                "messages[0].content[0].image_url",
            ),
            (
                r#"[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,abc"}}]}]"#,
                "messages[0].content[0].image_url",
            ),
            (
                r#"[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]"#,
                "messages[0].content[0].type",
            ),
            (
                r#"[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"nope","content":"1"}]"#,
                "messages[1].tool_call_id",
            ),
            (
                r#"[{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{oops"}}]}]"#,
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                r#"[{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"[1]"}}]}]"#,
                "messages[0].tool_calls[0].function.arguments",
            ),
            (r#"[{"role":"system","content":"only system"}]"#, "messages"),
            (
                r#"[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]},{"role":"user","content":"x"}]"#,
                "messages[0].content[0]",
            ),
            (
                r#"[{"role":"function","name":"f","content":"x"}]"#,
                "messages[0].role",
            ),
        ];
        for (messages, param) in bad {
            let e = upstream(&format!(r#"{{"model":"m","messages":{messages}}}"#), &T).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some(param)),
                "{messages}"
            );
        }
    }

    #[test]
    fn images_and_audio() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"HTTPS://example.com/a/cat.JPG?x=1"}},
            {"type":"image_url","image_url":{"url":"https://example.com/photo"}},
            {"type":"input_audio","input_audio":{"data":"AAA=","format":"wav"}}]}]}"#;
        let up = upstream(body, &T).unwrap();
        assert_eq!(
            up["contents"][0]["parts"],
            json!([
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "HTTPS://example.com/a/cat.JPG?x=1"}},
                {"fileData": {"fileUri": "https://example.com/photo"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "AAA="}}
            ])
        );
    }

    #[test]
    fn signature_placeholder_only_where_needed() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","tool_calls":[
            {"id":"a","type":"function","function":{"name":"f","arguments":""}},
            {"id":"b","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"a","content":"{\"ok\":true}"},{"role":"tool","tool_call_id":"b","content":"[1]"}]}"#;
        let old = upstream(body, &T).unwrap();
        assert!(old["contents"][1]["parts"][0]
            .get("thoughtSignature")
            .is_none());
        assert_eq!(
            old["contents"][2]["parts"][0]["functionResponse"]["response"],
            json!({"ok": true})
        );
        assert_eq!(
            old["contents"][2]["parts"][1]["functionResponse"]["response"],
            json!({"content": "[1]"})
        );
        let t3 = TargetCtx {
            upstream_model: "gemini-3-pro-preview",
            ..T
        };
        let new = upstream(body, &t3).unwrap();
        assert_eq!(
            new["contents"][1]["parts"][0]["thoughtSignature"],
            SKIP_SIGNATURE
        );
        assert!(new["contents"][1]["parts"][1]
            .get("thoughtSignature")
            .is_none());
    }

    #[test]
    fn argumentless_tool_has_no_parameters() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[
            {"type":"function","function":{"name":"now","parameters":{"type":"object","properties":{}}}},
            {"type":"function","function":{"name":"ping"}}]}"#;
        let up = upstream(body, &T).unwrap();
        assert_eq!(
            up["tools"],
            json!([{"functionDeclarations": [{"name": "now"}, {"name": "ping"}]}])
        );
    }

    #[test]
    fn errors_map_status_and_keep_message() {
        let e = error_response(
            400,
            Bytes::from_static(br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#),
        );
        assert_eq!(e.status, 401);
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let e = error_response(503, Bytes::from_static(br#"[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]"#));
        assert_eq!(e.status, 503);
        let e = error_response(
            504,
            Bytes::from_static(
                br#"{"error":{"code":504,"message":"Deadline","status":"DEADLINE_EXCEEDED"}}"#,
            ),
        );
        assert_eq!(e.status, 504);
        let e = error_response(
            403,
            Bytes::from_static(
                br#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#,
            ),
        );
        assert_eq!(e.status, 403);
        let e = error_response(502, Bytes::from_static(b"<html>bad gateway</html>"));
        assert_eq!(e.status, 502);
        assert!(std::str::from_utf8(&e.body)
            .unwrap()
            .contains("bad gateway"));
    }

    #[test]
    fn blocked_prompt_is_a_filtered_choice() {
        let body = br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5},"modelVersion":"gemini-2.5-flash"}"#;
        let out = chat_response(Bytes::from_static(body), &ctx(false)).unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert!(v["choices"][0]["message"]["content"].is_null());
        assert_eq!(v["id"], "chatcmpl-r1");
        assert_eq!(out.usage.unwrap().prompt_tokens, 5);
        let mut s = GeminiStream::new(&ctx(false));
        let mut o = Vec::new();
        s.feed(
            b"data: {\"promptFeedback\":{\"blockReason\":\"OTHER\"}}\r\n\r\n",
            &mut o,
        )
        .unwrap();
        s.finish(&mut o).unwrap();
        let text = String::from_utf8(o).unwrap();
        assert!(text.contains("\"finish_reason\":\"content_filter\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(!s.first_token_seen());
    }

    #[test]
    fn chunks_have_the_unified_shape() {
        let mut s = GeminiStream::new(&ctx(true));
        let mut o = Vec::new();
        s.feed(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"},{\"text\":\"b\",\"thought\":true}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":1,\"candidatesTokenCount\":1,\"thoughtsTokenCount\":2}}\n\n", &mut o).unwrap();
        s.finish(&mut o).unwrap();
        let text = String::from_utf8(o).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 5);
        for ev in &events[..4] {
            serde_json::from_str::<tollgate_schema::ChatCompletionChunk>(&ev[6..]).unwrap();
        }
        assert!(!text.contains("\"b\""));
        let u = s.usage().unwrap();
        assert_eq!((u.completion_tokens, u.reasoning_tokens), (3, 2));
    }

    #[test]
    fn malformed_event_ends_stream() {
        let mut s = GeminiStream::new(&ctx(false));
        let mut o = Vec::new();
        assert!(s.feed(b"data: {not json\n\n", &mut o).is_err());
        assert!(s.finish(&mut o).is_ok());
        let text = String::from_utf8(o).unwrap();
        assert!(text.contains("\"code\":\"upstream_error\""));
        assert_eq!(text.matches("[DONE]").count(), 1);
    }

    #[test]
    fn embeddings_base64_and_usage() {
        let req = EmbeddingsRequest::parse(
            br#"{"model":"e","input":["abcd","efghi"],"encoding_format":"base64"}"#,
        )
        .unwrap();
        let opts = EmbeddingsOptions::for_request(&req);
        assert_eq!(
            opts,
            EmbeddingsOptions {
                base64: true,
                estimated_prompt_tokens: Some(3)
            }
        );
        let body =
            Bytes::from_static(b"{\"embeddings\":[{\"values\":[1.0, -2.5]},{\"values\":[0.0]}]}");
        let out = embeddings_response_with(body, &ctx(false), opts).unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
        assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
        assert_eq!(out.usage.unwrap().prompt_tokens, 3);
        let e = embeddings_request(
            &EmbeddingsRequest::parse(br#"{"model":"e","input":[[1,2]]}"#).unwrap(),
            &T,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
    }
}
