//! Arbitrary bytes as a gemini stream, split at fuzzer-chosen points: never panics,
//! and every split gives the same client bytes, usage and first-token flag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_providers::ProviderKind;

fuzz_target!(|data: &[u8]| {
    tollgate_providers_fuzz::stream(ProviderKind::Gemini, data);
});
