//! Arbitrary `/proc/self/cgroup` text through the container id parser:
//! never a panic, and an id found is one of the shapes it accepts, taken
//! from the text.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run cgroup ../target/fuzz/corpus/cgroup seeds/cgroup
//! ```
//!
//! The checks live in `ferroprof_fuzz::cgroup`, which `cargo test` in
//! `fuzz/` also runs (on stable) over the seeds, the regressions and
//! pseudo-random inputs.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroprof_fuzz::cgroup::run(data));
