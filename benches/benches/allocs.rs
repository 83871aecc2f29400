//! Heap allocations per request on the hot path, counted by a global allocator.
//!
//! Run with `cargo bench -p tollgate-benches --bench allocs`; it prints a table
//! to stderr. Each row is the mean over many repetitions after one warm-up, so
//! buffers that are reused (capacity kept) do not count, and only this thread
//! allocates while a row is measured.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// The one place in the workspace that needs `unsafe`: a `GlobalAlloc` impl.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use tollgate_benches::{
    auth_and_admit, fixture_stream, long_stream, long_stream_head, policy_bench, record_request,
    response_ctx, settle, small_request, target, text_response, tools_request, translate_stream,
    KINDS,
};
use tollgate_metrics::Metrics;
use tollgate_providers::{chat_request, chat_response, StreamTranslator};
use tollgate_schema::ChatRequest;

/// `System`, counting every allocation (`alloc`, `alloc_zeroed`, `realloc`) and its bytes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged;
// the counters are plain atomics and do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ITERS: u64 = 2000;

/// Mean allocations and bytes per call of `f`, after one warm-up call.
fn measure(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    for _ in 0..ITERS {
        f();
    }
    let (a1, b1) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    (
        (a1 - a0) as f64 / ITERS as f64,
        (b1 - b0) as f64 / ITERS as f64,
    )
}

struct Table(Vec<(String, f64, f64)>);

impl Table {
    fn row(&mut self, name: impl Into<String>, (allocs, bytes): (f64, f64)) {
        self.0.push((name.into(), allocs, bytes));
    }
}

fn main() {
    let mut t = Table(Vec::new());

    // Requests.
    let small = small_request();
    let tools = tools_request();
    for (name, body) in [("small", &small), ("tools", &tools)] {
        t.row(
            format!("parse {name}"),
            measure(|| {
                black_box(ChatRequest::parse(black_box(body)).unwrap());
            }),
        );
        for (kind, dir) in KINDS {
            let tc = target(kind);
            t.row(
                format!("parse+translate {name} {dir}"),
                measure(|| {
                    let req = ChatRequest::parse(black_box(body)).unwrap();
                    black_box(chat_request(&req, &tc).unwrap());
                }),
            );
        }
    }

    // Non-stream responses.
    let ctx = response_ctx();
    for (kind, dir) in KINDS {
        let body = Bytes::from(text_response(dir));
        t.row(
            format!("response {dir}"),
            measure(|| {
                black_box(chat_response(kind, body.clone(), &ctx).unwrap());
            }),
        );
    }

    // Streams: per text-delta event in steady state, then whole streams.
    let mut out = Vec::with_capacity(1 << 20);
    for (kind, dir) in KINDS {
        let events = long_stream(kind, 50);
        let head = long_stream_head(kind);
        let mut tr = StreamTranslator::new(kind, &ctx).unwrap();
        for e in &events[..head] {
            tr.feed(e, &mut out).unwrap();
        }
        let delta = &events[head];
        t.row(
            format!("stream delta event {dir}"),
            measure(|| {
                out.clear();
                tr.feed(black_box(delta), &mut out).unwrap();
            }),
        );
        let fixture = fixture_stream(kind);
        let (a, b) = measure(|| {
            translate_stream(kind, black_box(&fixture), &mut out);
        });
        t.row(
            format!("stream fixture {dir} ({} ev) /stream", fixture.len()),
            (a, b),
        );
        let (a, b) = measure(|| {
            translate_stream(kind, black_box(&events), &mut out);
        });
        t.row(
            format!("stream 50-chunk {dir} ({} ev) /stream", events.len()),
            (a, b),
        );
        let n = events.len() as f64;
        t.row(format!("stream 50-chunk {dir} /event"), (a / n, b / n));
    }

    // Auth + limits with 100k keys.
    let pb = policy_bench(100_000);
    let mut k = 0usize;
    t.row(
        "auth+4 limit layers+budgets 100k keys /request",
        measure(|| {
            k = (k + 7919) % pb.headers.len();
            let now = Instant::now();
            let a = auth_and_admit(&pb, pb.headers[k].as_bytes(), 420, now, 1_800_000_000).unwrap();
            settle(a, 380, 0.0001, now, 1_800_000_000);
        }),
    );

    // Metrics.
    let m = Metrics::new();
    let tm = m.target("gpt-4o", "openai");
    t.row(
        "metrics record /request",
        measure(|| record_request(&m, &tm, "gpt-4o", "openai")),
    );
    t.row(
        "metrics encode (1 target)",
        measure(|| {
            black_box(m.encode());
        }),
    );

    let w = t.0.iter().map(|r| r.0.len()).max().unwrap_or(0);
    eprintln!("\nallocations per operation (mean of {ITERS}, after warm-up)\n");
    eprintln!("{:<w$}  {:>8}  {:>10}", "operation", "allocs", "bytes");
    for (name, a, b) in &t.0 {
        eprintln!("{name:<w$}  {a:>8.2}  {b:>10.0}");
    }
}
