//! Arbitrary service, env, version, tags, times and files through
//! `event.json` and the multipart form: valid JSON with the right tags, and
//! a strictly well-formed body whose parts round-trip byte for byte.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run event_multipart ../target/fuzz/corpus/event_multipart seeds/event_multipart
//! ```
//!
//! The checks live in `ferroprof_fuzz::event_multipart`, which `cargo test` in
//! `fuzz/` also runs (on stable) over the seeds, the regressions and
//! pseudo-random inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroprof_fuzz::event_multipart::run(data));
