//! `POST /v1/chat/completions` request: parsed once, borrowing from the body.
//!
//! The request keeps every top-level field as raw JSON in its original order,
//! so an OpenAI-wire upstream receives exactly what the client sent except for
//! the fields the gateway deliberately rewrites (`model`, `stream_options`).
//! The fields the gateway itself needs are parsed into types up front, which is
//! also where wrong types are rejected with the offending parameter named.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{write_json_str, ApiError};

/// One top-level JSON field: its key and raw value.
pub type RawField<'a> = (Cow<'a, str>, &'a RawValue);

/// The top-level object of a JSON request, fields in order.
#[derive(Debug, Default)]
pub struct RawObject<'a> {
    /// Fields in the order the client sent them.
    pub fields: Vec<RawField<'a>>,
}

impl<'a> RawObject<'a> {
    /// Parse a JSON object, rejecting anything else and duplicate keys.
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_request(
                "The request body is empty; expected a JSON object.",
            ));
        }
        let obj: RawObject<'a> = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_request(format!(
                "We could not parse the JSON body of your request: {e}"
            ))
        })?;
        for (i, (k, _)) in obj.fields.iter().enumerate() {
            if obj.fields[..i].iter().any(|(p, _)| p == k) {
                return Err(ApiError::invalid_request(format!(
                    "Duplicate field `{k}` in the JSON body."
                ))
                .with_param(k.to_string()));
            }
        }
        Ok(obj)
    }

    /// The raw value of a field.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Parse a field into `T`; `null` counts as absent. Errors name the parameter and path.
    pub fn typed<T: Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => parse_raw(raw, key).map(Some),
        }
    }

    /// Write the object back, replacing (`Some`) or dropping (`None`) the fields named in
    /// `overrides`, and appending overrides for fields the client did not send.
    pub fn write_with(&self, out: &mut Vec<u8>, overrides: &[(&str, Option<&[u8]>)]) {
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        for (k, v) in &self.fields {
            let value = match overrides.iter().find(|(name, _)| *name == k.as_ref()) {
                Some((_, Some(replacement))) => *replacement,
                Some((_, None)) => continue,
                None => v.get().as_bytes(),
            };
            sep(out);
            write_json_str(out, k);
            out.push(b':');
            out.extend_from_slice(value);
        }
        for (name, value) in overrides {
            if let Some(value) = value {
                if self.get(name).is_none() {
                    sep(out);
                    write_json_str(out, name);
                    out.push(b':');
                    out.extend_from_slice(value);
                }
            }
        }
        out.push(b'}');
    }
}

/// Parse a raw value into `T`, naming `param` and the inner path on error.
pub fn parse_raw<'a, T: Deserialize<'a>>(raw: &'a RawValue, param: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            param.to_string()
        } else if inner.starts_with('[') {
            format!("{param}{inner}")
        } else {
            format!("{param}.{inner}")
        };
        ApiError::invalid_request(format!("Invalid value for `{path}`: {}", e.inner()))
            .with_param(path)
    })
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(k) = map.next_key::<BorrowedStr<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    fields.push((k.0, v));
                }
                Ok(RawObject { fields })
            }
        }
        d.deserialize_map(V)
    }
}

/// A string that borrows from the input unless it contains escapes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct BorrowedStr<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System instructions.
    System,
    /// Developer instructions (newer name for system on reasoning models).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
    /// Legacy function result.
    Function,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }
}

/// A message's `content`: a string, an array of parts, or absent/null.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Content<'a> {
    /// Absent or `null` (assistant messages with tool calls).
    #[default]
    None,
    /// A plain string.
    Text(Cow<'a, str>),
    /// An array of typed parts.
    Parts(Vec<ContentPart<'a>>),
}

impl<'a> Content<'a> {
    /// Total bytes of text, used for token estimates.
    pub fn text_len(&self) -> usize {
        match self {
            Content::None => 0,
            Content::Text(t) => t.len(),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => text.len(),
                    ContentPart::Refusal { refusal } => refusal.len(),
                    _ => 0,
                })
                .sum(),
        }
    }

    /// All text parts joined (no separator), borrowing when there is one.
    pub fn joined_text(&self) -> Cow<'_, str> {
        match self {
            Content::None => Cow::Borrowed(""),
            Content::Text(t) => Cow::Borrowed(t.as_ref()),
            Content::Parts(parts) => {
                let mut texts = parts.iter().filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_ref()),
                    _ => None,
                });
                match (texts.next(), texts.next()) {
                    (None, _) => Cow::Borrowed(""),
                    (Some(one), None) => Cow::Borrowed(one),
                    (Some(a), Some(b)) => {
                        let mut s = String::with_capacity(a.len() + b.len());
                        s.push_str(a);
                        s.push_str(b);
                        for t in texts {
                            s.push_str(t);
                        }
                        Cow::Owned(s)
                    }
                }
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
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
                Ok(Content::None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(p) = seq.next_element::<ContentPart<'a>>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One element of an array `content`.
#[derive(Clone, Debug, PartialEq)]
pub enum ContentPart<'a> {
    /// `{"type":"text","text":...}`
    Text {
        /// The text.
        text: Cow<'a, str>,
    },
    /// `{"type":"image_url","image_url":{"url":...,"detail":...}}`
    ImageUrl {
        /// An http(s) URL or a `data:` URL.
        url: Cow<'a, str>,
        /// `auto`, `low` or `high`.
        detail: Option<Cow<'a, str>>,
    },
    /// `{"type":"input_audio","input_audio":{"data":...,"format":...}}`
    InputAudio {
        /// Base64 audio.
        data: Cow<'a, str>,
        /// `wav` or `mp3`.
        format: Cow<'a, str>,
    },
    /// `{"type":"refusal","refusal":...}` (assistant messages).
    Refusal {
        /// The refusal text.
        refusal: Cow<'a, str>,
    },
    /// Any other part type (e.g. `file`), carried by its type name only.
    Other {
        /// The `type` value.
        kind: Cow<'a, str>,
    },
}

#[derive(Deserialize)]
struct RawPart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<RawImageUrl<'a>>,
    #[serde(borrow, default)]
    input_audio: Option<RawAudio<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawImageUrl<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(borrow, default)]
    detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawAudio<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    format: Cow<'a, str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ContentPart<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: RawPart<'a> = RawPart::deserialize(d)?;
        let missing = |f: &'static str| de::Error::custom(format!("missing field `{f}`"));
        Ok(match raw.kind.as_ref() {
            "text" => ContentPart::Text {
                text: raw.text.ok_or_else(|| missing("text"))?,
            },
            "image_url" => {
                let img = raw.image_url.ok_or_else(|| missing("image_url"))?;
                ContentPart::ImageUrl {
                    url: img.url,
                    detail: img.detail,
                }
            }
            "input_audio" => {
                let a = raw.input_audio.ok_or_else(|| missing("input_audio"))?;
                ContentPart::InputAudio {
                    data: a.data,
                    format: a.format,
                }
            }
            "refusal" => ContentPart::Refusal {
                refusal: raw.refusal.ok_or_else(|| missing("refusal"))?,
            },
            _ => ContentPart::Other { kind: raw.kind },
        })
    }
}

/// A tool call made by the assistant.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ToolCall<'a> {
    /// The call id, echoed by the tool result.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Always `function` today.
    #[serde(rename = "type", borrow, default = "function_type")]
    pub kind: Cow<'a, str>,
    /// The function and its JSON-encoded arguments.
    #[serde(borrow)]
    pub function: FunctionCall<'a>,
}

fn function_type<'a>() -> Cow<'a, str> {
    Cow::Borrowed("function")
}

/// Function name and arguments (a JSON string).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FunctionCall<'a> {
    /// Function name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Arguments as a JSON-encoded string.
    #[serde(borrow, default)]
    pub arguments: Cow<'a, str>,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Message<'a> {
    /// Author role.
    pub role: Role,
    /// Content; `None` when absent or null.
    #[serde(borrow, default)]
    pub content: Content<'a>,
    /// Optional participant name.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// Assistant tool calls.
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    /// For `tool` messages: the call this answers.
    #[serde(borrow, default)]
    pub tool_call_id: Option<Cow<'a, str>>,
}

/// A parsed chat completion request.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    /// The public model name the client asked for.
    pub model: Cow<'a, str>,
    /// The conversation.
    pub messages: Vec<Message<'a>>,
    /// `stream: true`.
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `n`, if given.
    pub n: Option<u64>,
    /// Every top-level field, raw and in order.
    pub raw: RawObject<'a>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl<'a> ChatRequest<'a> {
    /// Parse and validate a request body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        let raw = RawObject::parse(body)?;
        let model: BorrowedStr<'a> = raw.typed("model")?.ok_or_else(|| {
            ApiError::invalid_request("You must provide a model parameter.").with_param("model")
        })?;
        if model.0.is_empty() {
            return Err(ApiError::invalid_request("`model` must not be empty.").with_param("model"));
        }
        let messages: Vec<Message<'a>> = raw.typed("messages")?.ok_or_else(|| {
            ApiError::invalid_request("Missing required parameter: 'messages'.")
                .with_param("messages")
        })?;
        if messages.is_empty() {
            return Err(ApiError::invalid_request(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            )
            .with_param("messages"));
        }
        let stream = raw.typed::<bool>("stream")?.unwrap_or(false);
        let include_usage = raw
            .typed::<StreamOptions>("stream_options")?
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let max_tokens = match raw.typed::<u64>("max_completion_tokens")? {
            Some(v) => Some(v),
            None => raw.typed::<u64>("max_tokens")?,
        };
        let n = raw.typed::<u64>("n")?;
        // Type-check the common scalar parameters here so every provider sees the same 400.
        raw.typed::<f64>("temperature")?;
        raw.typed::<f64>("top_p")?;
        raw.typed::<f64>("presence_penalty")?;
        raw.typed::<f64>("frequency_penalty")?;
        raw.typed::<i64>("seed")?;
        raw.typed::<BorrowedStr<'a>>("user")?;
        raw.typed::<Stop<'a>>("stop")?;
        raw.typed::<Vec<&'a RawValue>>("tools")?;
        Ok(ChatRequest {
            model: model.0,
            messages,
            stream,
            include_usage,
            max_tokens,
            n,
            raw,
        })
    }

    /// A cheap prompt-token estimate (about four bytes a token, plus per-message overhead),
    /// used to reserve tokens before the real count is known.
    pub fn estimate_prompt_tokens(&self) -> u64 {
        let bytes: usize = self
            .messages
            .iter()
            .map(|m| {
                m.content.text_len()
                    + m.tool_calls.as_ref().map_or(0, |calls| {
                        calls
                            .iter()
                            .map(|c| c.function.name.len() + c.function.arguments.len())
                            .sum()
                    })
            })
            .sum();
        (bytes as u64).div_ceil(4) + 4 * self.messages.len() as u64
    }
}

/// `stop`: a string or an array of strings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Stop<'a> {
    /// One stop sequence.
    One(#[serde(borrow)] Cow<'a, str>),
    /// Several.
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

impl<'a> Stop<'a> {
    /// As a list.
    pub fn to_vec(&self) -> Vec<&str> {
        match self {
            Stop::One(s) => vec![s.as_ref()],
            Stop::Many(v) => v.iter().map(|s| s.as_ref()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_borrows() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAA"}}]}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":7,"logprobs":true}"#;
        let r = ChatRequest::parse(body).unwrap();
        assert_eq!(r.model, "gpt-4o");
        assert!(matches!(r.model, Cow::Borrowed(_)));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.messages.len(), 2);
        assert!(matches!(&r.messages[1].content, Content::Parts(p) if p.len() == 2));
        assert_eq!(r.raw.get("logprobs").unwrap().get(), "true");
    }

    #[test]
    fn errors_name_the_param() {
        let e = ChatRequest::parse(br#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = ChatRequest::parse(br#"{"model":5,"messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = ChatRequest::parse(br#"{"model":"m","messages":"hi"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e =
            ChatRequest::parse(br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
                .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = ChatRequest::parse(br#"{"model":"m","model":"n","messages":[]}"#).unwrap_err();
        assert_eq!(e.status, 400);
        let e = ChatRequest::parse(b"{not json").unwrap_err();
        assert_eq!(e.status, 400);
        let e = ChatRequest::parse(b"[1,2]").unwrap_err();
        assert_eq!(e.status, 400);
        let e = ChatRequest::parse(b"").unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn write_with_replaces_and_appends() {
        let body = br#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true}"#;
        let r = ChatRequest::parse(body).unwrap();
        let mut out = Vec::new();
        r.raw.write_with(
            &mut out,
            &[
                ("model", Some(br#""up""#)),
                ("stream_options", Some(br#"{"include_usage":true}"#)),
            ],
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"up","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn estimate_counts_text() {
        let body = br#"{"model":"a","messages":[{"role":"user","content":"12345678"}]}"#;
        assert_eq!(
            ChatRequest::parse(body).unwrap().estimate_prompt_tokens(),
            2 + 4
        );
    }
}

/// A tool the model may call (`tools[]`).
#[derive(Clone, Debug, Deserialize)]
pub struct Tool<'a> {
    /// Always `function`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The function.
    #[serde(borrow)]
    pub function: FunctionDef<'a>,
}

/// A function definition.
#[derive(Clone, Debug, Deserialize)]
pub struct FunctionDef<'a> {
    /// Name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Description.
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    /// JSON Schema of the arguments, raw.
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
    /// OpenAI structured-outputs strictness.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    /// `"none"`.
    None,
    /// `"auto"`.
    Auto,
    /// `"required"`.
    Required,
    /// `{"type":"function","function":{"name":…}}`.
    Function(Cow<'a, str>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawToolChoice<'a> {
    Mode(#[serde(borrow)] Cow<'a, str>),
    Named {
        #[serde(borrow)]
        function: NamedFunction<'a>,
    },
}

#[derive(Deserialize)]
struct NamedFunction<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawToolChoice::deserialize(d)? {
            RawToolChoice::Mode(m) => match m.as_ref() {
                "none" => Ok(ToolChoice::None),
                "auto" => Ok(ToolChoice::Auto),
                "required" => Ok(ToolChoice::Required),
                other => Err(de::Error::custom(format!(
                    "unknown tool_choice `{other}`; expected none, auto, required or a named function"
                ))),
            },
            RawToolChoice::Named { function } => Ok(ToolChoice::Function(function.name)),
        }
    }
}

/// `response_format`.
#[derive(Clone, Debug)]
pub enum ResponseFormat<'a> {
    /// `{"type":"text"}`.
    Text,
    /// `{"type":"json_object"}`.
    JsonObject,
    /// `{"type":"json_schema","json_schema":{...}}`.
    JsonSchema(JsonSchemaSpec<'a>),
}

/// The `json_schema` member of `response_format`.
#[derive(Clone, Debug, Deserialize)]
pub struct JsonSchemaSpec<'a> {
    /// Schema name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Description.
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    /// The JSON Schema, raw.
    #[serde(borrow, default)]
    pub schema: Option<&'a RawValue>,
    /// Strict mode.
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Deserialize)]
struct RawResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    json_schema: Option<JsonSchemaSpec<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ResponseFormat<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawResponseFormat::deserialize(d)?;
        match raw.kind.as_ref() {
            "text" => Ok(ResponseFormat::Text),
            "json_object" => Ok(ResponseFormat::JsonObject),
            "json_schema" => raw
                .json_schema
                .map(ResponseFormat::JsonSchema)
                .ok_or_else(|| de::Error::custom("missing field `json_schema`")),
            other => Err(de::Error::custom(format!(
                "unknown response_format type `{other}`"
            ))),
        }
    }
}

/// Typed access to the optional parameters translations need.
impl<'a> ChatRequest<'a> {
    /// `tools`.
    pub fn tools(&self) -> Result<Option<Vec<Tool<'a>>>, ApiError> {
        self.raw.typed("tools")
    }
    /// `tool_choice`.
    pub fn tool_choice(&self) -> Result<Option<ToolChoice<'a>>, ApiError> {
        self.raw.typed("tool_choice")
    }
    /// `parallel_tool_calls`.
    pub fn parallel_tool_calls(&self) -> Result<Option<bool>, ApiError> {
        self.raw.typed("parallel_tool_calls")
    }
    /// `response_format`.
    pub fn response_format(&self) -> Result<Option<ResponseFormat<'a>>, ApiError> {
        self.raw.typed("response_format")
    }
    /// `stop`.
    pub fn stop(&self) -> Result<Option<Stop<'a>>, ApiError> {
        self.raw.typed("stop")
    }
    /// `temperature`.
    pub fn temperature(&self) -> Result<Option<f64>, ApiError> {
        self.raw.typed("temperature")
    }
    /// `top_p`.
    pub fn top_p(&self) -> Result<Option<f64>, ApiError> {
        self.raw.typed("top_p")
    }
    /// `seed`.
    pub fn seed(&self) -> Result<Option<i64>, ApiError> {
        self.raw.typed("seed")
    }
    /// `user`.
    pub fn user(&self) -> Result<Option<Cow<'a, str>>, ApiError> {
        Ok(self.raw.typed::<BorrowedStr<'a>>("user")?.map(|s| s.0))
    }
}

#[cfg(test)]
mod typed_tests {
    use super::*;

    #[test]
    fn tools_and_formats() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"get_weather"}},
            "response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object"}}}}"#;
        let r = ChatRequest::parse(body).unwrap();
        let tools = r.tools().unwrap().unwrap();
        assert_eq!(tools[0].function.name, "get_weather");
        assert_eq!(
            tools[0].function.parameters.unwrap().get(),
            r#"{"type":"object"}"#
        );
        assert_eq!(
            r.tool_choice().unwrap(),
            Some(ToolChoice::Function("get_weather".into()))
        );
        assert!(
            matches!(r.response_format().unwrap(), Some(ResponseFormat::JsonSchema(s)) if s.name == "s")
        );
        let r = ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}"#).unwrap();
        assert_eq!(
            r.tool_choice().unwrap_err().param.as_deref(),
            Some("tool_choice")
        );
    }
}
