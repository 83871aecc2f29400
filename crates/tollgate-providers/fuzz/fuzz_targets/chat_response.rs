//! Arbitrary bytes as a provider's 2xx chat/embeddings body or error body, for every
//! provider kind: never panics, and every body the client would get is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_providers_fuzz::chat_response(data);
});
