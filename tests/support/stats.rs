//! Statistical bounds for the sampler's estimates.
//!
//! Sampling is a Poisson process over bytes with mean `m` (the interval),
//! and a sample's weight is `m` per interval crossed, so the estimate of `B`
//! bytes has variance `m × B` (each allocation of `s` bytes contributes
//! `m² × s/m`).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

/// Asserts `estimate` is within five standard deviations of `truth` bytes
/// sampled at `interval`.
pub fn within_5_sigma(what: &str, estimate: i64, truth: u64, interval: u64) {
    let sigma = ((interval * truth) as f64).sqrt();
    let error = (estimate as f64 - truth as f64).abs();
    assert!(
        error <= 5.0 * sigma,
        "{what}: estimated {estimate}, true {truth}, off by {:.1} standard deviations",
        error / sigma
    );
}
