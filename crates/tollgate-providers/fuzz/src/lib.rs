//! The bodies of the fuzz targets, shared by the libFuzzer entry points
//! (`fuzz_targets/*.rs`, nightly `cargo fuzz`) and the stable harness
//! (`tests/smoke.rs`: seeded pseudo-random inputs for a fixed time).
//!
//! Every body takes arbitrary bytes and panics only on a real finding: a panic
//! inside the code under test, or a broken invariant asserted here.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::de::IgnoredAny;
use tollgate_providers::{ProviderKind, ResponseCtx, StreamTranslator, TargetCtx};
use tollgate_schema::sse::SseDecoder;
use tollgate_schema::{ChatRequest, EmbeddingsRequest};

/// Every provider kind.
pub const KINDS: [ProviderKind; 5] = [
    ProviderKind::Openai,
    ProviderKind::OpenaiCompatible,
    ProviderKind::Azure,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
];

/// The fuzz targets, by name (as in `fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 7] = [
    "stream_openai",
    "stream_azure",
    "stream_anthropic",
    "stream_gemini",
    "chat_request",
    "chat_response",
    "sse_decoder",
];

/// Run the target `name` on `data`. Unknown names panic.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "stream_openai" => stream(ProviderKind::Openai, data),
        "stream_azure" => stream(ProviderKind::Azure, data),
        "stream_anthropic" => stream(ProviderKind::Anthropic, data),
        "stream_gemini" => stream(ProviderKind::Gemini, data),
        "chat_request" => chat_request(data),
        "chat_response" => chat_response(data),
        "sse_decoder" => sse_decoder(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn target(kind: ProviderKind) -> TargetCtx<'static> {
    TargetCtx {
        kind,
        base_path: if kind == ProviderKind::Openai {
            "/v1"
        } else {
            ""
        },
        upstream_model: "test-model",
        api_version: None,
        default_max_tokens: 4096,
    }
}

fn response_ctx(wants_usage: bool) -> ResponseCtx<'static> {
    ResponseCtx {
        client_wants_usage: wants_usage,
        public_model: "public-model",
        upstream_model: "test-model",
        now_unix: 1_700_000_000,
        request_id: "req-fuzz",
        embeddings_base64: false,
        estimated_prompt_tokens: 12,
    }
}

fn is_json(b: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(b).is_ok()
}

/// Bytes in, the stream's observable result out: client bytes, usage, first-token flag.
type StreamOut = (Vec<u8>, Option<tollgate_schema::Usage>, bool);

/// Feed `pieces` as the gateway does: errors do not stop the feeding (the
/// translator has already written its final events), `finish` at the end.
fn feed(kind: ProviderKind, wants_usage: bool, pieces: &[&[u8]]) -> StreamOut {
    let Ok(mut s) = StreamTranslator::new(kind, &response_ctx(wants_usage)) else {
        panic!("no stream translator for {kind:?}");
    };
    let mut out = Vec::new();
    for p in pieces {
        let _ = s.feed(p, &mut out);
    }
    let _ = s.finish(&mut out);
    (out, s.usage(), s.first_token_seen())
}

/// Client events the gateway wrote, decoded as a client would.
fn client_events(out: &[u8]) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut d = SseDecoder::default();
    let res = d.feed(out, |e| events.push(e.data.to_vec()));
    assert!(res.is_ok(), "client stream does not frame: {res:?}");
    assert_eq!(d.buffered(), 0, "client stream ends inside an event");
    events
}

/// A stream target. `data` = 2 bytes split point, 1 byte chunk size, 1 flag byte, then the
/// provider's stream bytes. Fed whole, split at the point, and in chunks: all must agree.
pub fn stream(kind: ProviderKind, data: &[u8]) {
    let Some((&[s0, s1, chunk, flags], body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let wants_usage = flags & 1 == 1;
    let split = usize::from(u16::from_le_bytes([s0, s1])) % (body.len() + 1);
    let chunk = usize::from(chunk).max(1);

    let whole = feed(kind, wants_usage, &[body]);
    let at = feed(kind, wants_usage, &[&body[..split], &body[split..]]);
    assert!(
        whole == at,
        "{kind:?}: whole and split at {split} differ\nwhole: {whole:?}\nsplit: {at:?}"
    );
    let pieces: Vec<&[u8]> = body.chunks(chunk).collect();
    let chunked = feed(kind, wants_usage, &pieces);
    assert!(
        whole == chunked,
        "{kind:?}: whole and chunks of {chunk} differ\nwhole: {whole:?}\nchunks: {chunked:?}"
    );

    // What the client receives frames as SSE and ends with [DONE]. For kinds whose every
    // event the gateway writes itself (not passed through), each is JSON or [DONE].
    let events = client_events(&whole.0);
    let done_at: Vec<usize> = (0..events.len())
        .filter(|&i| events[i] == b"[DONE]")
        .collect();
    assert!(
        done_at == [events.len().wrapping_sub(1)],
        "{kind:?}: the client must see exactly one [DONE], last; it sees {done_at:?} of {} events in {:?}",
        events.len(),
        String::from_utf8_lossy(&whole.0)
    );
    if matches!(kind, ProviderKind::Anthropic | ProviderKind::Gemini) {
        for e in &events {
            assert!(
                e == b"[DONE]" || is_json(e),
                "{kind:?}: client event is not JSON: {:?}",
                String::from_utf8_lossy(e)
            );
        }
    }
}

/// Request translation: parse, then build the upstream request for every kind.
pub fn chat_request(data: &[u8]) {
    if let Ok(req) = ChatRequest::parse(data) {
        let _ = req.estimate_prompt_tokens();
        for kind in KINDS {
            if let Ok(up) = tollgate_providers::chat_request(&req, &target(kind)) {
                assert!(
                    is_json(&up.body),
                    "{kind:?}: upstream body is not JSON: {:?}",
                    String::from_utf8_lossy(&up.body)
                );
                assert_eq!(up.stream, req.stream, "{kind:?}: stream flag");
            }
        }
    }
    if let Ok(req) = EmbeddingsRequest::parse(data) {
        for kind in KINDS {
            if let Ok(up) = tollgate_providers::embeddings_request(&req, &target(kind)) {
                assert!(
                    is_json(&up.body),
                    "{kind:?}: upstream embeddings body is not JSON: {:?}",
                    String::from_utf8_lossy(&up.body)
                );
            }
        }
    }
}

/// Response translation: `data[0]` picks the error status and usage flag, the rest is the body.
pub fn chat_response(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    const STATUSES: [u16; 8] = [400, 401, 403, 404, 413, 429, 500, 529];
    let status = STATUSES[usize::from(first & 7)];
    let ctx = response_ctx(first & 8 != 0);
    let body = Bytes::copy_from_slice(body);
    for kind in KINDS {
        if let Ok(t) = tollgate_providers::chat_response(kind, body.clone(), &ctx) {
            assert!(
                is_json(&t.body),
                "{kind:?}: client chat body is not JSON: {:?}",
                String::from_utf8_lossy(&t.body)
            );
        }
        if let Ok(t) = tollgate_providers::embeddings_response(kind, body.clone(), &ctx) {
            assert!(
                is_json(&t.body),
                "{kind:?}: client embeddings body is not JSON: {:?}",
                String::from_utf8_lossy(&t.body)
            );
        }
        let e = tollgate_providers::error_response(kind, status, body.clone());
        assert!(
            is_json(&e.body),
            "{kind:?}: client error body is not JSON: {:?}",
            String::from_utf8_lossy(&e.body)
        );
        assert!(
            (400..=599).contains(&e.status),
            "{kind:?}: error status {}",
            e.status
        );
    }
}

type Events = Vec<(Option<String>, Vec<u8>)>;

fn decode(max_event: usize, pieces: &[&[u8]]) -> Result<Events, ()> {
    let mut d = SseDecoder::new(max_event);
    let mut out = Vec::new();
    for p in pieces {
        d.feed(p, |e| {
            out.push((e.event.map(str::to_owned), e.data.to_vec()))
        })
        .map_err(|_| ())?;
        assert!(
            d.buffered() <= max_event,
            "decoder holds {} bytes, limit {max_event}",
            d.buffered()
        );
    }
    Ok(out)
}

/// The SSE decoder. `data` = 2 bytes split point, 1 byte (limit selector), then the stream.
pub fn sse_decoder(data: &[u8]) {
    let Some((&[s0, s1, lim], body)) = data.split_first_chunk::<3>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([s0, s1])) % (body.len() + 1);
    // A small limit half the time, to reach the size checks.
    let max_event = if lim & 1 == 0 {
        16 * 1024 * 1024
    } else {
        usize::from(lim >> 1) + 1
    };
    let whole = decode(max_event, &[body]);
    let split_res = decode(max_event, &[&body[..split], &body[split..]]);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let one_by_one = decode(max_event, &bytes);
    // Where an event exceeds the limit depends on where the bytes were cut, so only
    // the successful decodes must agree (and the size limit is checked above).
    if let (Ok(w), Ok(s)) = (&whole, &split_res) {
        assert_eq!(w, s, "split at {split}");
    }
    if max_event >= body.len() {
        assert!(whole.is_ok(), "a stream shorter than the limit was refused");
        assert_eq!(whole, split_res, "split at {split}");
        assert_eq!(whole, one_by_one, "one byte at a time");
    }
}

/// The provider fixtures directory (`crates/tollgate-providers/tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn fixture_files(kinds: &[&str], names: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for kind in kinds {
        let Ok(cases) = std::fs::read_dir(fixtures_dir().join(kind)) else {
            continue;
        };
        let mut cases: Vec<PathBuf> = cases.filter_map(|e| e.ok().map(|e| e.path())).collect();
        cases.sort();
        for case in cases {
            for name in names {
                if let Ok(b) = std::fs::read(case.join(name)) {
                    out.push(b);
                }
            }
        }
    }
    out
}

/// Seed inputs for a target, built from the provider fixtures (with each target's prefix bytes).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    const ALL: [&str; 4] = ["openai", "azure", "anthropic", "gemini"];
    let prefixed = |prefix: &[u8], files: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        files
            .into_iter()
            .map(|f| [prefix, &f[..]].concat())
            .collect()
    };
    match name {
        "stream_openai" => prefixed(
            &[0x40, 0, 7, 1],
            fixture_files(&["openai"], &["stream.sse"]),
        ),
        "stream_azure" => prefixed(
            &[0x40, 0, 7, 1],
            fixture_files(&["azure", "openai"], &["stream.sse"]),
        ),
        "stream_anthropic" => prefixed(
            &[0x40, 0, 7, 1],
            fixture_files(&["anthropic"], &["stream.sse"]),
        ),
        "stream_gemini" => prefixed(
            &[0x40, 0, 7, 1],
            fixture_files(&["gemini"], &["stream.sse"]),
        ),
        "chat_request" => fixture_files(&ALL, &["request.json", "embeddings_request.json"]),
        "chat_response" => prefixed(&[8], fixture_files(&ALL, &["response.json", "error.json"])),
        "sse_decoder" => prefixed(&[0x40, 0, 0], fixture_files(&ALL, &["stream.sse"])),
        _ => Vec::new(),
    }
}

/// The tokens of `dict/sse_json.dict` (libFuzzer's dictionary format), for the stable mutator.
pub fn dictionary() -> Vec<Vec<u8>> {
    const DICT: &str = include_str!("../dict/sse_json.dict");
    let mut out = Vec::new();
    for line in DICT.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (Some(a), Some(b)) = (line.find('"'), line.rfind('"')) else {
            continue;
        };
        if b <= a {
            continue;
        }
        let mut tok = Vec::new();
        let mut bytes = line[a + 1..b].bytes();
        while let Some(c) = bytes.next() {
            if c != b'\\' {
                tok.push(c);
                continue;
            }
            match bytes.next() {
                Some(b'x') => {
                    let hi = bytes.next().and_then(|h| (h as char).to_digit(16));
                    let lo = bytes.next().and_then(|l| (l as char).to_digit(16));
                    if let (Some(h), Some(l)) = (hi, lo) {
                        tok.push((h * 16 + l) as u8);
                    }
                }
                Some(other) => tok.push(other),
                None => {}
            }
        }
        out.push(tok);
    }
    out
}

/// xorshift64*: a small deterministic generator for the stable harness.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator; a zero seed is replaced (xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A mutated input: a seed (or random bytes), with 1–8 random edits: bit flips,
/// byte sets, dictionary-token inserts, deletions, duplications, splices, truncation.
pub fn mutate(rng: &mut XorShift, seeds: &[Vec<u8>], dict: &[Vec<u8>]) -> Vec<u8> {
    let mut v = if seeds.is_empty() || rng.below(10) == 0 {
        let n = rng.below(256);
        (0..n).map(|_| rng.next_u64() as u8).collect()
    } else {
        seeds[rng.below(seeds.len())].clone()
    };
    for _ in 0..1 + rng.below(8) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next_u64() as u8;
            }
            2 if !dict.is_empty() => {
                let tok = &dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                v.splice(at..at, tok.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, piece);
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(128)).min(other.len());
                    let at = rng.below(len + 1);
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            6 if len > 0 => {
                v.truncate(rng.below(len));
            }
            _ => {
                // An "interesting" byte: framing and JSON structure.
                const B: &[u8] = b"\n\r:\"{}[],\\ \x00\xff0";
                let at = rng.below(len + 1);
                v.insert(at, B[rng.below(B.len())]);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_dictionary_load() {
        for t in TARGETS {
            let s = seeds(t);
            assert!(!s.is_empty(), "no seeds for {t}");
            for input in &s {
                run(t, input);
            }
        }
        let d = dictionary();
        assert!(d.len() > 50);
        assert!(d.contains(&b"\r\n\r\n".to_vec()));
        assert!(d.contains(&b"\"model\"".to_vec()));
    }
}
