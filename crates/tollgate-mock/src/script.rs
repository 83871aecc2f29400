//! Scripted misbehaviour: directives that tell the mock how to answer one
//! request, so tests can make it fail, stall or fragment its output without
//! restarting it.
//!
//! Directives come from two places and are merged, the message winning:
//!
//! 1. a suffix on the request's model after the last `@`, e.g.
//!    `gpt-4o-mini@status=500,retry_after=2` (Gemini takes the model from the
//!    path, so there it is percent-decoded first:
//!    `models/gemini-x%40status%3D500:generateContent`);
//! 2. markers anywhere in the last message's text: `[[mock:key=value,key=value]]`
//!    (for Anthropic and Gemini, the last user turn's text blocks or parts).
//!
//! Parsing never fails: unknown keys and values that do not parse are ignored.
//! A bare key (no `=`) means `key=1`.

use std::time::Duration;

/// Upper bound for `words` and `chunks`, so a typo cannot exhaust memory.
pub const MAX_WORDS: usize = 100_000;

/// The opening of an in-message directive marker.
pub const MARKER_OPEN: &str = "[[mock:";
/// The closing of an in-message directive marker.
pub const MARKER_CLOSE: &str = "]]";

/// The directives for one request. Every field is `None` unless set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `status=NNN`: answer with this HTTP status (≥ 300) and an error body.
    pub status: Option<u16>,
    /// `retry_after=S`: add a `retry-after: S` header.
    pub retry_after: Option<String>,
    /// `delay_ms=N`: wait before sending the response headers.
    pub delay_ms: Option<u64>,
    /// `ttft_ms=N`: after the headers, wait before the first body bytes.
    pub ttft_ms: Option<u64>,
    /// `gap_ms=N`: wait between SSE events.
    pub gap_ms: Option<u64>,
    /// `chunk_bytes=N`: write the body in frames of exactly N bytes.
    pub chunk_bytes: Option<usize>,
    /// `chunks=N`: split streamed content into N pieces.
    pub chunks: Option<usize>,
    /// `reply=TEXT`: the reply content.
    pub reply: Option<String>,
    /// `words=N`: reply with `word0 word1 …` (N words).
    pub words: Option<usize>,
    /// `hang=1`: never respond.
    pub hang: Option<bool>,
    /// `reset_after=N`: send N body bytes, then abort the connection.
    pub reset_after: Option<usize>,
    /// `tool_call=1`: answer with a tool call when the request allows one.
    pub tool_call: Option<bool>,
    /// `error_mid_stream=1`: after the first content chunk, send an error event.
    pub error_mid_stream: Option<bool>,
}

impl Directives {
    /// Directives from a model name's `@` suffix, with the bare model name.
    ///
    /// `"gpt-4o@status=500"` gives `("gpt-4o", {status: 500})`. A suffix with
    /// no `=` in it (`claude@20240620`) is part of the name, not directives.
    pub fn from_model(model: &str) -> (&str, Directives) {
        let mut d = Directives::default();
        match model.rsplit_once('@') {
            Some((base, suffix)) if suffix.contains('=') => {
                d.apply_pairs(suffix);
                (base, d)
            }
            _ => (model, d),
        }
    }

    /// Directives from every `[[mock:…]]` marker in `text`, later markers
    /// overriding earlier ones.
    pub fn from_text(text: &str) -> Directives {
        let mut d = Directives::default();
        d.apply_text(text);
        d
    }

    /// Apply every `[[mock:…]]` marker in `text` on top of `self`.
    pub fn apply_text(&mut self, text: &str) {
        let mut rest = text;
        while let Some(start) = rest.find(MARKER_OPEN) {
            let after = &rest[start + MARKER_OPEN.len()..];
            match after.find(MARKER_CLOSE) {
                Some(end) => {
                    self.apply_pairs(&after[..end]);
                    rest = &after[end + MARKER_CLOSE.len()..];
                }
                None => break,
            }
        }
    }

    /// Apply `key=value,key=value` pairs on top of `self`.
    pub fn apply_pairs(&mut self, pairs: &str) {
        for pair in pairs.split(',') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "1"));
            self.set(key.trim(), value.trim());
        }
    }

    /// Set one directive; unknown keys and unparsable values are ignored.
    pub fn set(&mut self, key: &str, value: &str) {
        match key {
            "status" => {
                if let Some(s) = num::<u16>(value).filter(|s| (100..=999).contains(s)) {
                    self.status = Some(s);
                }
            }
            "retry_after"
                if value
                    .parse::<f64>()
                    .is_ok_and(|v| v.is_finite() && v >= 0.0) =>
            {
                self.retry_after = Some(value.to_owned());
            }
            "delay_ms" => set_num(&mut self.delay_ms, value),
            "ttft_ms" => set_num(&mut self.ttft_ms, value),
            "gap_ms" => set_num(&mut self.gap_ms, value),
            "chunk_bytes" => {
                if let Some(n) = num::<usize>(value).filter(|n| *n > 0) {
                    self.chunk_bytes = Some(n);
                }
            }
            "chunks" => {
                if let Some(n) = num::<usize>(value).filter(|n| *n > 0) {
                    self.chunks = Some(n.min(MAX_WORDS));
                }
            }
            "reply" => self.reply = Some(value.to_owned()),
            "words" => {
                if let Some(n) = num::<usize>(value) {
                    self.words = Some(n.min(MAX_WORDS));
                }
            }
            "hang" => set_bool(&mut self.hang, value),
            "reset_after" => set_num(&mut self.reset_after, value),
            "tool_call" => set_bool(&mut self.tool_call, value),
            "error_mid_stream" => set_bool(&mut self.error_mid_stream, value),
            _ => {}
        }
    }

    /// Overlay `other` on `self`: every directive set in `other` wins.
    pub fn merge(&mut self, other: Directives) {
        fn take<T>(dst: &mut Option<T>, src: Option<T>) {
            if src.is_some() {
                *dst = src;
            }
        }
        take(&mut self.status, other.status);
        take(&mut self.retry_after, other.retry_after);
        take(&mut self.delay_ms, other.delay_ms);
        take(&mut self.ttft_ms, other.ttft_ms);
        take(&mut self.gap_ms, other.gap_ms);
        take(&mut self.chunk_bytes, other.chunk_bytes);
        take(&mut self.chunks, other.chunks);
        take(&mut self.reply, other.reply);
        take(&mut self.words, other.words);
        take(&mut self.hang, other.hang);
        take(&mut self.reset_after, other.reset_after);
        take(&mut self.tool_call, other.tool_call);
        take(&mut self.error_mid_stream, other.error_mid_stream);
    }

    /// The error status to answer with, if one was asked for (≥ 300).
    pub fn error_status(&self) -> Option<u16> {
        self.status.filter(|s| *s >= 300)
    }

    /// Whether `hang` is set.
    pub fn hangs(&self) -> bool {
        self.hang.unwrap_or(false)
    }

    /// Whether `tool_call` is set.
    pub fn wants_tool_call(&self) -> bool {
        self.tool_call.unwrap_or(false)
    }

    /// Whether `error_mid_stream` is set.
    pub fn wants_error_mid_stream(&self) -> bool {
        self.error_mid_stream.unwrap_or(false)
    }

    /// The delay before the response headers.
    pub fn delay(&self) -> Option<Duration> {
        self.delay_ms.filter(|n| *n > 0).map(Duration::from_millis)
    }

    /// How to pace the response body.
    pub fn pacing(&self) -> Pacing {
        Pacing {
            ttft: self.ttft_ms.filter(|n| *n > 0).map(Duration::from_millis),
            gap: self.gap_ms.filter(|n| *n > 0).map(Duration::from_millis),
            chunk_bytes: self.chunk_bytes,
            reset_after: self.reset_after,
        }
    }
}

/// How a response body goes out on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Wait after the headers, before the first body bytes.
    pub ttft: Option<Duration>,
    /// Wait between events (body frames as the handler produced them).
    pub gap: Option<Duration>,
    /// Re-split the body into frames of exactly this many bytes (the last may be shorter).
    pub chunk_bytes: Option<usize>,
    /// Abort the connection after this many body bytes.
    pub reset_after: Option<usize>,
}

impl Pacing {
    /// True when the body can be sent as produced, with no timing or splitting.
    pub fn is_plain(&self) -> bool {
        *self == Pacing::default()
    }
}

fn num<T: std::str::FromStr>(value: &str) -> Option<T> {
    value.parse().ok()
}

fn set_num<T: std::str::FromStr>(dst: &mut Option<T>, value: &str) {
    if let Some(n) = num(value) {
        *dst = Some(n);
    }
}

fn set_bool(dst: &mut Option<bool>, value: &str) {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => *dst = Some(true),
        "0" | "false" | "no" | "off" => *dst = Some(false),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_suffix() {
        let (base, d) = Directives::from_model("gpt-4o-mini@status=500,retry_after=2");
        assert_eq!(base, "gpt-4o-mini");
        assert_eq!(d.status, Some(500));
        assert_eq!(d.retry_after.as_deref(), Some("2"));
        assert_eq!(d.error_status(), Some(500));
    }

    #[test]
    fn model_without_suffix() {
        let (base, d) = Directives::from_model("gpt-4o-mini");
        assert_eq!(base, "gpt-4o-mini");
        assert_eq!(d, Directives::default());
    }

    #[test]
    fn last_at_wins_for_vertex_style_names() {
        let (base, d) = Directives::from_model("claude@20240620@hang=1");
        assert_eq!(base, "claude@20240620");
        assert!(d.hangs());
        let (base, d) = Directives::from_model("claude@20240620");
        assert_eq!(base, "claude@20240620");
        assert_eq!(d, Directives::default());
    }

    #[test]
    fn markers_in_text() {
        let d = Directives::from_text(
            "hi [[mock:reply=ok there,chunks=3]] and [[mock:chunks=5, tool_call=1]] bye",
        );
        assert_eq!(d.reply.as_deref(), Some("ok there"));
        assert_eq!(d.chunks, Some(5));
        assert!(d.wants_tool_call());
    }

    #[test]
    fn unterminated_marker_is_ignored() {
        let d = Directives::from_text("hi [[mock:status=500");
        assert_eq!(d, Directives::default());
    }

    #[test]
    fn message_wins_over_model() {
        let (_, mut d) = Directives::from_model("m@status=500,delay_ms=10,hang=1");
        d.merge(Directives::from_text("[[mock:status=429,hang=0]]"));
        assert_eq!(d.status, Some(429));
        assert_eq!(d.delay_ms, Some(10));
        assert!(!d.hangs());
    }

    #[test]
    fn bad_input_never_panics_and_is_ignored() {
        let inputs = [
            "",
            ",",
            "=",
            "==,=,,",
            "status=abc",
            "status=99999999999999999999",
            "status=42",
            "delay_ms=-1",
            "chunk_bytes=0",
            "chunks=0",
            "retry_after=NaN",
            "retry_after=-1",
            "hang=maybe",
            "unknown=1",
            "ünïcødé=✓",
            "[[mock:",
            "]]",
        ];
        for input in inputs {
            let mut d = Directives::default();
            d.apply_pairs(input);
            d.apply_text(input);
            let (_, m) = Directives::from_model(input);
            assert_eq!(d, Directives::default(), "{input}");
            assert_eq!(m, Directives::default(), "{input}");
        }
    }

    #[test]
    fn bare_key_means_one() {
        let mut d = Directives::default();
        d.apply_pairs("hang, error_mid_stream");
        assert!(d.hangs());
        assert!(d.wants_error_mid_stream());
    }

    #[test]
    fn numbers_and_caps() {
        let mut d = Directives::default();
        d.apply_pairs(
            "words=999999999,chunks=7,chunk_bytes=1,reset_after=0,ttft_ms=5,gap_ms=0,retry_after=1.5",
        );
        assert_eq!(d.words, Some(MAX_WORDS));
        assert_eq!(d.chunks, Some(7));
        assert_eq!(d.chunk_bytes, Some(1));
        assert_eq!(d.reset_after, Some(0));
        assert_eq!(d.retry_after.as_deref(), Some("1.5"));
        let p = d.pacing();
        assert_eq!(p.ttft, Some(Duration::from_millis(5)));
        assert_eq!(p.gap, None);
        assert!(!p.is_plain());
        assert!(Directives::default().pacing().is_plain());
    }

    #[test]
    fn success_status_is_not_an_error() {
        let mut d = Directives::default();
        d.apply_pairs("status=200");
        assert_eq!(d.status, Some(200));
        assert_eq!(d.error_status(), None);
    }
}
