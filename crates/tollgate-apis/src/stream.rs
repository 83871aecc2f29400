//! A prompt API's stream: the unified chat stream (OpenAI chunks) in, API
//! events out.
//!
//! ```text
//! data: {"delta":"Posi"}
//! data: {"delta":"tive"}
//! data: {"result":"Positive","finish_reason":"stop","usage":{…}}
//! data: [DONE]
//! ```
//!
//! In JSON mode the deltas are the raw text as it arrives and the closing event
//! carries the parsed, validated `result` — or an `error` event
//! (`invalid_model_output`) when the text does not satisfy the schema.
//! Error events of the chat stream pass through unchanged.

use std::sync::Arc;

use serde_json::{json, Value};
use tollgate_schema::sse::SseDecoder;

use crate::api::Api;

/// Converts one stream; feed it the chat stream's bytes as they come.
pub struct ApiStream {
    api: Arc<Api>,
    decoder: SseDecoder,
    text: String,
    finish_reason: Value,
    usage: Value,
    model: Value,
    ended: bool,
    invalid: bool,
}

impl ApiStream {
    /// A converter for a call of `api`.
    pub fn new(api: Arc<Api>) -> ApiStream {
        ApiStream {
            api,
            decoder: SseDecoder::new(1 << 20),
            text: String::new(),
            finish_reason: Value::Null,
            usage: Value::Null,
            model: Value::Null,
            ended: false,
            invalid: false,
        }
    }

    /// Converts `chat` (any split of the chat stream) into API events in `out`.
    pub fn feed(&mut self, chat: &[u8], out: &mut Vec<u8>) {
        let mut events: Vec<Vec<u8>> = Vec::new();
        let fed = self.decoder.feed(chat, |e| events.push(e.data.to_vec()));
        for data in events {
            self.event(&data, out);
        }
        if fed.is_err() && !self.ended {
            self.ended = true;
            write_event(
                out,
                &json!({"error": {"message": "The model's stream sent an event too large to relay.",
                    "type": "api_error", "param": null, "code": "bad_response"}}),
            );
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if data == b"[DONE]" {
            self.close(out);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if v.get("error").is_some() {
            // The chat stream failed: its error event is the API's too.
            write_event(out, &v);
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.ended = true;
            return;
        }
        if self.model.is_null() {
            if let Some(m) = v.get("model") {
                self.model = m.clone();
            }
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = u.clone();
        }
        let choice = &v["choices"][0];
        if let Some(f) = choice.get("finish_reason").filter(|f| !f.is_null()) {
            self.finish_reason = f.clone();
        }
        if let Some(delta) = choice["delta"]["content"].as_str() {
            if !delta.is_empty() {
                self.text.push_str(delta);
                write_event(out, &json!({ "delta": delta }));
            }
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        self.ended = true;
        match self.api.result(&self.text) {
            Ok(result) => write_event(
                out,
                &json!({
                    "api": self.api.spec.name,
                    "version": self.api.spec.version,
                    "model": self.model,
                    "result": result,
                    "finish_reason": self.finish_reason,
                    "usage": self.usage,
                }),
            ),
            Err(errors) => {
                self.invalid = true;
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&self.api.invalid_output(&self.text, &errors, &self.usage));
                out.extend_from_slice(b"\n\n");
            }
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    /// Whether the closing event (result or error) has been written.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether the closing event was `invalid_model_output`.
    pub fn output_invalid(&self) -> bool {
        self.invalid
    }
}

fn write_event(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Source, State};
    use crate::spec::{ApiSpec, Status};

    fn api(output: Value) -> Arc<Api> {
        let spec: ApiSpec = serde_json::from_value(json!({
            "name": "s", "team": "t", "model": "m", "prompt": "{{x}}",
            "variables": [{"name": "x"}], "output": output,
        }))
        .unwrap();
        Arc::new(
            Api::new(
                spec,
                State {
                    status: Status::Published,
                    deprecated_at: None,
                    sunset_at: None,
                    auto_approve: false,
                    source: Source::Config,
                },
            )
            .unwrap(),
        )
    }

    fn chat_stream(parts: &[&str]) -> Vec<u8> {
        let mut s = Vec::new();
        for p in parts {
            s.extend_from_slice(
                format!(
                    "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m-1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
                    serde_json::to_string(p).unwrap()
                )
                .as_bytes(),
            );
        }
        s.extend_from_slice(b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        s.extend_from_slice(b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n");
        s.extend_from_slice(b"data: [DONE]\n\n");
        s
    }

    fn events(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.trim_start_matches("data: ").to_string())
            .collect()
    }

    #[test]
    fn text_stream_in_any_split() {
        let input = chat_stream(&["Posi", "tive"]);
        for step in [1, 7, input.len()] {
            let mut s = ApiStream::new(api(json!({})));
            let mut out = Vec::new();
            for c in input.chunks(step) {
                s.feed(c, &mut out);
            }
            let ev = events(&out);
            assert_eq!(ev.len(), 4, "{ev:?}");
            assert_eq!(ev[0], r#"{"delta":"Posi"}"#);
            let last: Value = serde_json::from_str(&ev[2]).unwrap();
            assert_eq!(last["result"], "Positive");
            assert_eq!(last["usage"]["total_tokens"], 6);
            assert_eq!(last["finish_reason"], "stop");
            assert_eq!(last["model"], "m-1");
            assert_eq!(ev[3], "[DONE]");
        }
    }

    #[test]
    fn json_stream_valid_and_invalid() {
        let schema = json!({"mode": "json", "schema": {"type": "object", "required": ["ok"]}});
        let mut s = ApiStream::new(api(schema.clone()));
        let mut out = Vec::new();
        s.feed(&chat_stream(&["{\"ok\":", "true}"]), &mut out);
        let ev = events(&out);
        let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(last["result"], json!({"ok": true}));
        assert!(!s.output_invalid());

        let mut s = ApiStream::new(api(schema));
        let mut out = Vec::new();
        s.feed(&chat_stream(&["{\"no\":", "1}"]), &mut out);
        let ev = events(&out);
        let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(last["error"]["code"], "invalid_model_output");
        assert_eq!(last["error"]["usage"]["total_tokens"], 6);
        assert!(s.output_invalid());
    }

    #[test]
    fn errors_pass_through_once() {
        let mut s = ApiStream::new(api(json!({})));
        let mut out = Vec::new();
        s.feed(
            b"data: {\"error\":{\"message\":\"cut\",\"type\":\"api_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n",
            &mut out,
        );
        let ev = events(&out);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(ev[0].contains("\"cut\""));
        assert!(s.ended());
    }
}
