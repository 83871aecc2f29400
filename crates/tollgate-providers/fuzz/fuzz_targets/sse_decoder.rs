//! Arbitrary bytes through `SseDecoder`, whole and split: never panics, same events
//! at every split, and memory held stays within the event limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_providers_fuzz::sse_decoder(data);
});
