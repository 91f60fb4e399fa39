//! Arbitrary bytes as a pprof file: decoding never panics, and a profile
//! that decodes encodes and decodes back to itself.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run pprof_decode ../target/fuzz/corpus/pprof_decode seeds/pprof_decode
//! ```
//!
//! The checks live in `ferroprof_fuzz::pprof_decode`, which `cargo test` in
//! `fuzz/` also runs (on stable) over the seeds, the regressions and
//! pseudo-random inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroprof_fuzz::pprof_decode::run(data));
