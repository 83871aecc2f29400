//! What every wire format shares: the deterministic reply text and how it is
//! split into stream pieces, the tool call the mock makes, deterministic
//! embedding vectors, token estimates, applying the transport directives to a
//! [`Reply`], and small JSON helpers.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::body::Reply;
use crate::script::Directives;

/// The arguments of the (single) tool call the mock makes, as JSON text.
pub(crate) const TOOL_ARGUMENTS: &str = "{\"location\":\"Paris\"}";
/// How the tool-call arguments are streamed, in pieces that concatenate to [`TOOL_ARGUMENTS`].
pub(crate) const TOOL_ARGUMENT_PIECES: [&str; 5] = ["{\"", "location", "\":\"", "Paris", "\"}"];
/// Default embedding width.
pub(crate) const DEFAULT_DIMENSIONS: usize = 8;
/// Largest accepted embedding width.
pub(crate) const MAX_DIMENSIONS: usize = 65_536;

/// The tool-call arguments as a serializable object (`{"location":"Paris"}`).
#[derive(Serialize, Clone, Copy)]
pub(crate) struct ToolArguments {
    pub location: &'static str,
}

/// The arguments of the mock's tool call.
pub(crate) const TOOL_INPUT: ToolArguments = ToolArguments { location: "Paris" };

/// Apply the transport directives (timing, pacing, hang, retry-after) to a reply.
pub(crate) fn apply_transport(mut reply: Reply, d: &Directives) -> Reply {
    reply.retry_after = d.retry_after.clone();
    reply.delay = d.delay();
    reply.hang = d.hangs();
    reply.pacing = d.pacing();
    reply
}

/// Prompt tokens for `bytes` bytes of prompt text: a quarter, at least one.
pub(crate) fn prompt_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

/// Completion tokens for a reply: one per word.
pub(crate) fn completion_tokens(content: &str) -> u64 {
    content.split_whitespace().count() as u64
}

/// Completion tokens of the tool call.
pub(crate) fn tool_call_tokens() -> u64 {
    (TOOL_ARGUMENTS.len() as u64).div_ceil(4)
}

/// The deterministic reply text, padded to `chunks` words when asked.
///
/// `reply=` wins over `words=`; otherwise it is
/// `Hello from mock. prompt_sha256=<hex> prompt_bytes=<n>` for `prompt`.
pub(crate) fn reply_content(d: &Directives, prompt: &str) -> String {
    let mut content = if let Some(reply) = &d.reply {
        reply.clone()
    } else if let Some(words) = d.words {
        let mut s = String::with_capacity(words * 7);
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "word{i}");
        }
        s
    } else {
        format!(
            "Hello from mock. prompt_sha256={} prompt_bytes={}",
            hex::encode(Sha256::digest(prompt.as_bytes())),
            prompt.len()
        )
    };
    if let Some(n) = d.chunks {
        let have = content.split_whitespace().count();
        if have < n {
            let base: Vec<String> = content.split_whitespace().map(str::to_owned).collect();
            for i in have..n {
                if !content.is_empty() {
                    content.push(' ');
                }
                match base.get((i - have) % base.len().max(1)) {
                    Some(w) => content.push_str(w),
                    None => {
                        let _ = write!(content, "word{i}");
                    }
                }
            }
        }
    }
    content
}

/// Why a reply was cut short, if it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Truncation {
    /// Cut at the first occurrence of this stop sequence.
    StopSequence(String),
    /// Cut after the output-token limit (one token per word).
    MaxTokens,
}

/// Cut `content` as a model would: at the first stop sequence, or after
/// `max_tokens` words, whichever comes first.
pub(crate) fn truncate(
    content: &mut String,
    stop_sequences: &[Cow<'_, str>],
    max_tokens: Option<u64>,
) -> Option<Truncation> {
    let limit_at = max_tokens.and_then(|max| {
        let segs = word_segments(content);
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        (segs.len() > max).then(|| segs[..max].iter().map(|s| s.len()).sum::<usize>())
    });
    let window = limit_at.unwrap_or(content.len());
    let stop = stop_sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| content[..window].find(s.as_ref()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at);
    if let Some((at, seq)) = stop {
        let seq = seq.to_string();
        content.truncate(at);
        return Some(Truncation::StopSequence(seq));
    }
    let at = limit_at?;
    content.truncate(at);
    Some(Truncation::MaxTokens)
}

/// Split `s` into word segments, each with the whitespace before it
/// (trailing whitespace stays on the last one), so they concatenate to `s`.
pub(crate) fn word_segments(s: &str) -> Vec<&str> {
    let mut segs = Vec::new();
    let mut seg_start = 0;
    let mut prev_end: Option<usize> = None;
    let mut in_word = false;
    for (i, ch) in s.char_indices() {
        if ch.is_whitespace() {
            if in_word {
                prev_end = Some(i);
                in_word = false;
            }
        } else if !in_word {
            if let Some(end) = prev_end {
                segs.push(&s[seg_start..end]);
                seg_start = end;
            }
            in_word = true;
        }
    }
    if seg_start < s.len() {
        segs.push(&s[seg_start..]);
    }
    segs
}

/// Split `s` into stream pieces: one per word, or `n` roughly equal groups of words.
pub(crate) fn content_pieces(s: &str, n: Option<usize>) -> Vec<&str> {
    let segs = word_segments(s);
    let Some(n) = n else { return segs };
    let w = segs.len();
    let n = n.min(w);
    if n == 0 || n == w {
        return segs;
    }
    let mut pieces = Vec::with_capacity(n);
    let mut offset = 0;
    let mut offsets = Vec::with_capacity(w + 1);
    for seg in &segs {
        offsets.push(offset);
        offset += seg.len();
    }
    offsets.push(offset);
    for i in 0..n {
        let from = offsets[i * w / n];
        let to = offsets[(i + 1) * w / n];
        pieces.push(&s[from..to]);
    }
    pieces
}

/// The seed of the embedding of `text`.
pub(crate) fn text_seed(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A deterministic unit vector of `dims` values in [-1, 1] derived from `seed`.
pub(crate) fn embedding_vector(seed: &[u8; 32], dims: usize) -> Vec<f32> {
    let mut raw = Vec::with_capacity(dims);
    let mut block: u32 = 0;
    while raw.len() < dims {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(block.to_le_bytes());
        let digest = h.finalize();
        for word in digest.chunks_exact(4) {
            if raw.len() == dims {
                break;
            }
            let u = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            raw.push(f64::from(u) / f64::from(u32::MAX) * 2.0 - 1.0);
        }
        block += 1;
    }
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    raw.iter()
        .map(|v| {
            if norm > 0.0 {
                (v / norm) as f32
            } else {
                *v as f32
            }
        })
        .collect()
}

/// Append `s` as a JSON string.
pub(crate) fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(buf, s);
}

/// `v` as compact JSON.
pub(crate) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our response types always serialize.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// Borrowed request parsing

/// A string that borrows from the body when it has no escapes.
#[derive(Debug, Clone)]
pub(crate) struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object's members in order, values left as raw JSON text, so a
/// handler can check the member names and parse only what it needs.
#[derive(Debug, Default)]
pub(crate) struct RawObject<'a>(pub Vec<(Str<'a>, &'a RawValue)>);

impl<'a> RawObject<'a> {
    /// The raw value of member `key`, unless absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| *v)
            .filter(|v| v.get() != "null")
    }

    /// The first member name not in `allowed`.
    pub fn unknown_key(&self, allowed: &[&str]) -> Option<&str> {
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !allowed.contains(k))
    }

    /// Parse member `key` as `T`; `Ok(None)` when absent or `null`.
    pub fn parse<T: Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, serde_json::Error> {
        self.get(key).map(parse_raw).transpose()
    }
}

/// Parse raw JSON text borrowed from the request body.
pub(crate) fn parse_raw<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, serde_json::Error> {
    serde_json::from_str(raw.get())
}

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<Str<'de>, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(RawObject(members))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn segments_concatenate() {
        for s in ["Hello from mock.", "  a b  ", "", "   ", "one", "a\n\nb\tc"] {
            assert_eq!(word_segments(s).concat(), s);
            for n in 1..5 {
                assert_eq!(content_pieces(s, Some(n)).concat(), s);
            }
        }
        assert_eq!(
            word_segments("Hello from mock."),
            vec!["Hello", " from", " mock."]
        );
        assert_eq!(content_pieces("a b c d", Some(2)), vec!["a b", " c d"]);
    }

    #[test]
    fn padding_reaches_chunk_count() {
        let mut d = Directives::default();
        d.apply_pairs("reply=hi there,chunks=5");
        let c = reply_content(&d, "");
        assert_eq!(c, "hi there hi there hi");
        assert_eq!(content_pieces(&c, d.chunks).len(), 5);
        let mut d = Directives::default();
        d.apply_pairs("reply=,chunks=3");
        assert_eq!(reply_content(&d, ""), "word0 word1 word2");
        let mut d = Directives::default();
        d.apply_pairs("words=3");
        assert_eq!(reply_content(&d, ""), "word0 word1 word2");
    }

    #[test]
    fn vectors_are_unit_and_deterministic() {
        let seed = [7u8; 32];
        let a = embedding_vector(&seed, 20);
        assert_eq!(a, embedding_vector(&seed, 20));
        assert_eq!(a.len(), 20);
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn truncation_by_stop_sequence_and_max_tokens() {
        let stops = [Cow::Borrowed("c d"), Cow::Borrowed("zz")];
        let mut s = "a b c d e".to_owned();
        assert_eq!(
            truncate(&mut s, &stops, None),
            Some(Truncation::StopSequence("c d".into()))
        );
        assert_eq!(s, "a b ");
        let mut s = "a b c d e".to_owned();
        assert_eq!(
            truncate(&mut s, &stops, Some(2)),
            Some(Truncation::MaxTokens)
        );
        assert_eq!(s, "a b");
        let mut s = "a b c d e".to_owned();
        assert_eq!(truncate(&mut s, &[], Some(5)), None);
        assert_eq!(s, "a b c d e");
        let mut s = "a b".to_owned();
        assert_eq!(
            truncate(&mut s, &[Cow::Borrowed("")], Some(0)),
            Some(Truncation::MaxTokens)
        );
        assert_eq!(s, "");
    }

    #[test]
    fn raw_object_members() {
        let body = r#"{"a":1,"b\u0041":"x","c":null}"#;
        let o: RawObject<'_> = serde_json::from_str(body).unwrap();
        assert_eq!(o.get("a").unwrap().get(), "1");
        assert!(o.get("bA").is_some());
        assert!(o.get("c").is_none());
        assert_eq!(o.unknown_key(&["a", "bA"]), Some("c"));
        assert_eq!(o.unknown_key(&["a", "bA", "c"]), None);
        let s: Option<Str<'_>> = o.parse("bA").unwrap();
        assert_eq!(s.unwrap().as_str(), "x");
        assert!(o.parse::<Str<'_>>("a").is_err());
        assert_eq!(o.parse::<u32>("a").unwrap(), Some(1));
    }
}
