//! Arbitrary bytes → `ChatRequest::parse` → `chat_request` for every provider kind:
//! never panics, and every upstream body it builds is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_providers_fuzz::chat_request(data);
});
