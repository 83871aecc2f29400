//! OpenAI and OpenAI-compatible servers (vLLM, Ollama, Mistral, Groq, DeepSeek…).
//!
//! The unified schema *is* this wire format, so translation is a splice: the
//! client's fields are forwarded untouched, in order, except `model` (the
//! upstream name) and `stream_options` (usage is always requested so the
//! gateway can account for every stream; the extra usage chunk is dropped
//! again when the client did not ask for it).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tollgate_schema::error::write_json_str;
use tollgate_schema::sse::SseDecoder;
use tollgate_schema::{ApiError, ChatRequest, EmbeddingsRequest, ErrorType, Usage};

use crate::{
    write_sse_data, write_stream_error, ErrorOut, ResponseCtx, StreamError, TargetCtx, Translated,
    UpstreamRequest,
};

fn quoted(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 2);
    write_json_str(&mut v, s);
    v
}

/// `stream_options` with `include_usage: true`, keeping any other option the client set.
fn stream_options_with_usage(req: &ChatRequest<'_>) -> Vec<u8> {
    if let Some(raw) = req.raw.get("stream_options") {
        if let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(raw.get()) {
            m.insert("include_usage".into(), serde_json::Value::Bool(true));
            if let Ok(v) = serde_json::to_vec(&m) {
                return v;
            }
        }
    }
    br#"{"include_usage":true}"#.to_vec()
}

/// Chat request: the client's body with `model` (and `stream_options`) replaced.
pub fn chat_request(req: &ChatRequest<'_>, t: &TargetCtx<'_>) -> Result<UpstreamRequest, ApiError> {
    let model = quoted(t.upstream_model);
    let mut body = Vec::with_capacity(
        req.raw
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + 64,
    );
    if req.stream {
        let opts = stream_options_with_usage(req);
        req.raw.write_with(
            &mut body,
            &[("model", Some(&model)), ("stream_options", Some(&opts))],
        );
    } else {
        // stream_options is only valid with stream: true; drop it rather than fail upstream.
        req.raw.write_with(
            &mut body,
            &[("model", Some(&model)), ("stream_options", None)],
        );
    }
    Ok(UpstreamRequest {
        path: format!("{}/chat/completions", t.base_path),
        body,
        stream: req.stream,
    })
}

/// Embeddings request: the client's body with `model` replaced.
pub fn embeddings_request(
    req: &EmbeddingsRequest<'_>,
    t: &TargetCtx<'_>,
) -> Result<UpstreamRequest, ApiError> {
    let model = quoted(t.upstream_model);
    let mut body = Vec::new();
    req.raw.write_with(&mut body, &[("model", Some(&model))]);
    Ok(UpstreamRequest {
        path: format!("{}/embeddings", t.base_path),
        body,
        stream: false,
    })
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

fn bad_body(what: &str, e: serde_json::Error) -> ApiError {
    ApiError::bad_gateway(format!("The provider returned an invalid {what} body: {e}"))
}

/// A 2xx chat response: forwarded as is; usage read from it.
pub fn chat_response(body: Bytes, _ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    let u: UsageOnly = serde_json::from_slice(&body).map_err(|e| bad_body("chat completion", e))?;
    Ok(Translated {
        body,
        usage: u.usage,
    })
}

#[derive(Deserialize)]
struct EmbeddingUsage {
    #[serde(default)]
    prompt_tokens: u64,
}

#[derive(Deserialize)]
struct EmbeddingsUsageOnly {
    #[serde(default)]
    usage: Option<EmbeddingUsage>,
}

/// A 2xx embeddings response: forwarded as is; usage read from it.
pub fn embeddings_response(body: Bytes, _ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    let u: EmbeddingsUsageOnly =
        serde_json::from_slice(&body).map_err(|e| bad_body("embeddings", e))?;
    Ok(Translated {
        body,
        usage: u.usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            ..Usage::default()
        }),
    })
}

#[derive(Deserialize)]
struct ErrorEnvelope<'a> {
    #[serde(borrow)]
    error: ErrorObject<'a>,
}

#[derive(Deserialize)]
struct ErrorObject<'a> {
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

/// A non-2xx response: an OpenAI-shaped error body is forwarded with its status;
/// anything else is wrapped in one, keeping the start of what the provider said.
pub fn error_response(status: u16, body: Bytes) -> ErrorOut {
    if serde_json::from_slice::<ErrorEnvelope<'_>>(&body).is_ok_and(|e| !e.error.message.is_empty())
    {
        return ErrorOut { status, body };
    }
    ErrorOut {
        status,
        body: Bytes::from(wrap_foreign_error(status, &body).to_json()),
    }
}

/// An error body in no known shape, as an OpenAI error.
pub fn wrap_foreign_error(status: u16, body: &[u8]) -> ApiError {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let kind = match status {
        401 => ErrorType::Authentication,
        403 => ErrorType::Permission,
        429 => ErrorType::RateLimit,
        400..=499 => ErrorType::InvalidRequest,
        503 | 529 => ErrorType::Overloaded,
        _ => ErrorType::Api,
    };
    ApiError::new(
        status,
        kind,
        format!("The provider answered {status}: {}", text.trim()),
    )
    .with_code("upstream_error")
}

#[derive(Deserialize)]
struct ChunkPeek<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// The OpenAI stream passthrough: events re-framed one by one as they complete.
#[derive(Debug)]
pub struct OpenAiStream {
    dec: SseDecoder,
    wants_usage: bool,
    usage: Option<Usage>,
    first_token: bool,
    done: bool,
}

impl OpenAiStream {
    /// A translator for one response.
    pub fn new(ctx: &ResponseCtx<'_>) -> Self {
        OpenAiStream {
            dec: SseDecoder::default(),
            wants_usage: ctx.client_wants_usage,
            usage: None,
            first_token: false,
            done: false,
        }
    }

    /// Feed upstream bytes.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let OpenAiStream {
            dec,
            wants_usage,
            usage,
            first_token,
            done,
        } = self;
        if *done {
            return Ok(());
        }
        let res = dec.feed(input, |ev| {
            if *done {
                return;
            }
            if ev.data == b"[DONE]" {
                *done = true;
                write_sse_data(out, ev.data);
                return;
            }
            match serde_json::from_slice::<ChunkPeek<'_>>(ev.data) {
                Ok(peek) => {
                    let has_choices = peek.choices.as_ref().is_some_and(|c| !c.is_empty());
                    if let Some(u) = peek.usage {
                        *usage = Some(u);
                        if !has_choices && !*wants_usage {
                            return;
                        }
                    }
                    if has_choices {
                        *first_token = true;
                    }
                    if *wants_usage {
                        write_sse_data(out, ev.data);
                    } else {
                        write_without_null_usage(out, ev.data);
                    }
                }
                // Not a chunk (e.g. an error object): the client sees it as sent.
                Err(_) => write_sse_data(out, ev.data),
            }
        });
        res.map_err(|e| {
            let err = ApiError::bad_gateway(e.to_string());
            write_stream_error(out, &err);
            *done = true;
            StreamError::Malformed(e.to_string())
        })
    }

    /// The upstream body ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let err = ApiError::bad_gateway("The provider's stream ended before [DONE].");
        write_stream_error(out, &err);
        Err(StreamError::Malformed("stream ended before [DONE]".into()))
    }

    /// Usage, once seen.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether a chunk with choices has gone out.
    pub fn first_token_seen(&self) -> bool {
        self.first_token
    }
}

/// Append an event, removing the `"usage":null` members that only exist because
/// the gateway asked for usage the client did not want. Inside JSON strings a quote
/// is always escaped, so the unescaped pattern can only match a real member.
fn write_without_null_usage(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"data: ");
    let mut rest = data;
    while let Some(i) = memchr::memmem::find(rest, b"\"usage\":null") {
        let end = i + b"\"usage\":null".len();
        // Remove the member together with one adjacent comma.
        if i > 0 && rest[i - 1] == b',' {
            crate::write_data_lines(out, &rest[..i - 1]);
            rest = &rest[end..];
        } else if rest.get(end) == Some(&b',') {
            crate::write_data_lines(out, &rest[..i]);
            rest = &rest[end + 1..];
        } else {
            crate::write_data_lines(out, &rest[..end]);
            rest = &rest[end..];
        }
    }
    crate::write_data_lines(out, rest);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProviderKind;

    fn ctx(wants: bool) -> ResponseCtx<'static> {
        ResponseCtx {
            client_wants_usage: wants,
            public_model: "m",
            upstream_model: "up",
            now_unix: 1,
            request_id: "r",
            embeddings_base64: false,
            estimated_prompt_tokens: 0,
        }
    }

    const T: TargetCtx<'static> = TargetCtx {
        kind: ProviderKind::Openai,
        base_path: "/v1",
        upstream_model: "gpt-up",
        api_version: None,
        default_max_tokens: 4096,
    };

    #[test]
    fn request_splices_model_and_usage() {
        let body = br#"{"model":"pub","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false},"logit_bias":{"1":2}}"#;
        let req = ChatRequest::parse(body).unwrap();
        let up = chat_request(&req, &T).unwrap();
        assert_eq!(up.path, "/v1/chat/completions");
        assert_eq!(
            std::str::from_utf8(&up.body).unwrap(),
            r#"{"model":"gpt-up","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"logit_bias":{"1":2}}"#
        );
        let body = br#"{"model":"pub","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#;
        let up = chat_request(&ChatRequest::parse(body).unwrap(), &T).unwrap();
        assert_eq!(
            std::str::from_utf8(&up.body).unwrap(),
            r#"{"model":"gpt-up","messages":[{"role":"user","content":"hi"}]}"#
        );
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"usage\\\":null\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(wants: bool, split: usize) -> (String, Option<Usage>) {
        let mut s = OpenAiStream::new(&ctx(wants));
        let mut out = Vec::new();
        for c in STREAM.as_bytes().chunks(split) {
            s.feed(c, &mut out).unwrap();
        }
        s.finish(&mut out).unwrap();
        (String::from_utf8(out).unwrap(), s.usage())
    }

    #[test]
    fn stream_passthrough_with_usage() {
        let (out, usage) = run(true, STREAM.len());
        assert_eq!(out, STREAM);
        assert_eq!(usage.unwrap().total(), 5);
    }

    #[test]
    fn stream_drops_usage_client_did_not_ask_for() {
        let (out, usage) = run(false, 7);
        assert!(!out.contains("\"choices\":[]"));
        assert!(!out.contains(",\"usage\":null}"));
        // The string content that merely looks like the member is intact.
        assert!(out.contains(r#"say \"usage\":null"#));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(usage.unwrap().prompt_tokens, 3);
        for line in out.split("\n\n").filter(|l| l.starts_with("data: {")) {
            serde_json::from_str::<serde_json::Value>(&line[6..]).unwrap();
        }
    }

    #[test]
    fn every_split_is_identical() {
        for wants in [true, false] {
            let whole = run(wants, STREAM.len());
            for split in 1..STREAM.len() {
                assert_eq!(run(wants, split), whole, "split {split}");
            }
        }
    }

    #[test]
    fn multi_line_data_stays_one_event() {
        let mut s = OpenAiStream::new(&ctx(true));
        let mut out = Vec::new();
        s.feed(
            b"data: x\ndata:\ndata: data: [DONE]\n\ndata: [DONE]\n\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: x\ndata: \ndata: data: [DONE]\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn truncated_stream_ends_with_error() {
        let mut s = OpenAiStream::new(&ctx(true));
        let mut out = Vec::new();
        s.feed(&STREAM.as_bytes()[..100], &mut out).unwrap();
        assert!(s.finish(&mut out).is_err());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"error\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn errors_forwarded_or_wrapped() {
        let e = error_response(429, Bytes::from_static(br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#));
        assert_eq!(e.status, 429);
        assert!(std::str::from_utf8(&e.body).unwrap().contains("slow down"));
        let e = error_response(502, Bytes::from_static(b"<html>bad gateway</html>"));
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad gateway"));
        assert_eq!(v["error"]["type"], "api_error");
    }
}
