//! Sequences of profiles (built from small structured inputs, or decoded
//! from bytes, checked or not) through one `Delta`: it never panics, never
//! sends a negative cumulative value, and agrees with a naive model.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run delta ../target/fuzz/corpus/delta seeds/delta
//! ```
//!
//! The checks live in `ferroprof_fuzz::delta`, which `cargo test` in
//! `fuzz/` also runs (on stable) over the seeds, the regressions and
//! pseudo-random inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroprof_fuzz::delta::run(data));
