//! Arbitrary `DD_*` environments through configuration resolution: never a
//! panic, every error names its variable, the API key is never shown.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run config_env ../target/fuzz/corpus/config_env seeds/config_env
//! ```
//!
//! The checks live in `ferroprof_fuzz::config_env`, which `cargo test` in
//! `fuzz/` also runs (on stable) over the seeds, the regressions and
//! pseudo-random inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroprof_fuzz::config_env::run(data));
