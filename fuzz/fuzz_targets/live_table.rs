//! Fuzzes `LiveTable` single-threaded against a `HashMap` model: arbitrary
//! bytes become a capacity and a sequence of insert, update, remove, get and
//! for_each calls, and every result must be what the model predicts.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run live_table ../target/fuzz/corpus/live_table seeds/live_table
//! ```
//!
//! The checks live in `ferroprof_fuzz::live_table`, which `cargo test` in
//! `fuzz/` also runs (on stable) over the seeds, the regressions and
//! pseudo-random inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroprof_fuzz::live_table::run(data));
