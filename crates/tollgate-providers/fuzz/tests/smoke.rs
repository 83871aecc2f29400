//! The fuzz targets on stable Rust, without libFuzzer: each target runs on its
//! fixture seeds and on `corpus/<target>/*` (what libFuzzer runs kept, if any),
//! then on seeded xorshift mutations of them for `FUZZ_SECONDS` (default 2).
//! Deterministic for a given `FUZZ_SEED` and corpus; not coverage-guided.
//!
//!     FUZZ_SECONDS=20 cargo test --release --no-default-features -- --test-threads=1
//!
//! A panic is reported with the input written to `artifacts/<target>/crash-<n>`
//! (replayable with `cargo fuzz run <target> <file>` where nightly exists).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use tollgate_providers_fuzz::{dictionary, mutate, run, seeds, XorShift, TARGETS};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn save_crash(target: &str, input: &[u8]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("crash-{hash:016x}"));
    let _ = std::fs::write(&path, input);
    path.display().to_string()
}

fn smoke(target: &str) {
    let secs = env_u64("FUZZ_SECONDS", 2);
    let seed = env_u64("FUZZ_SEED", 0x7011_6a7e)
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut corpus = seeds(target);
    // Whatever a libFuzzer run left in corpus/<target> (or a crash put there to replay).
    let saved = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    if let Ok(dir) = std::fs::read_dir(saved) {
        let mut files: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        corpus.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
    }
    let dict = dictionary();
    let mut rng = XorShift::new(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);

    // Seeds first, then mutations until the deadline; the first panic stops the target.
    let mut execs = 0u64;
    let mut failure = None;
    let mut inputs = corpus.clone().into_iter();
    loop {
        let input = match inputs.next() {
            Some(s) => s,
            None if Instant::now() >= deadline => break,
            None => mutate(&mut rng, &corpus, &dict),
        };
        execs += 1;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(target, &input))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failure = Some((input, msg));
            break;
        }
    }
    eprintln!(
        "{target}: {execs} inputs in {secs}s ({} seeds, seed {seed:#x})",
        corpus.len()
    );
    if let Some((input, msg)) = failure {
        let path = save_crash(target, &input);
        panic!(
            "{target}: crash after {execs} inputs: {msg}\ninput ({} bytes) saved to {path}: {:?}",
            input.len(),
            String::from_utf8_lossy(&input[..input.len().min(512)])
        );
    }
}

#[test]
fn targets_list_matches_tests() {
    assert_eq!(TARGETS.len(), 7);
}

#[test]
fn stream_openai() {
    smoke("stream_openai");
}

#[test]
fn stream_azure() {
    smoke("stream_azure");
}

#[test]
fn stream_anthropic() {
    smoke("stream_anthropic");
}

#[test]
fn stream_gemini() {
    smoke("stream_gemini");
}

#[test]
fn chat_request() {
    smoke("chat_request");
}

#[test]
fn chat_response() {
    smoke("chat_response");
}

#[test]
fn sse_decoder() {
    smoke("sse_decoder");
}
