//! The bodies of ferroprof's fuzz targets, as plain functions of bytes.
//!
//! Each module is one target: `fuzz_targets/<name>.rs` hands libFuzzer's
//! input to `<name>::run`, and the tests here (`cargo test --release` in
//! `fuzz/`, on stable) run the same function over the target's seeds
//! (`seeds/<name>/`), its regressions (`regressions/<name>/`, inputs that
//! once failed) and a few thousand pseudo-random inputs, so the properties
//! are checked even where no nightly toolchain or cargo-fuzz is installed.
//! `run` panics when a property fails and returns otherwise.
//!
//! Targets:
//!
//! - [`pprof_decode`]: bytes as a pprof file;
//! - [`delta`]: sequences of profiles through one `Delta`, against a model;
//! - [`config_env`]: `DD_*` environments through configuration resolution;
//! - [`event_multipart`]: tags, times and files through `event.json` and
//!   the multipart form;
//! - [`cgroup`]: `/proc/self/cgroup` text through the container id parser;
//! - [`live_table`]: the allocator's live-heap table against a `HashMap`.

pub mod cgroup;
pub mod config_env;
pub mod delta;
pub mod event_multipart;
pub mod live_table;
pub mod pprof_decode;
mod pprof_util;

#[cfg(test)]
mod tests;

/// A target's body: panics when a property fails.
pub type Body = fn(&[u8]);

/// Every target: its name (that of its binary and of its folders) and body.
pub const TARGETS: [(&str, Body); 6] = [
    ("pprof_decode", pprof_decode::run),
    ("delta", delta::run),
    ("config_env", config_env::run),
    ("event_multipart", event_multipart::run),
    ("cgroup", cgroup::run),
    ("live_table", live_table::run),
];

/// A deterministic pseudo-random generator (SplitMix64) for the tests'
/// inputs and the seed files.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (which is not 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
