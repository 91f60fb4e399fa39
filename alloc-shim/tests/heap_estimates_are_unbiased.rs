//! The estimates are unbiased: for allocation sizes from 8 B to 4 MiB, at
//! 64 KiB and 512 KiB intervals, the estimated bytes and objects allocated at
//! a site fall within a bound derived from the sampling variance.
//!
//! The bound: the sample points are a Poisson process of rate 1/mean over
//! the bytes allocated, so the number of points N that land in T bytes is
//! Poisson(T / mean) and the estimate of bytes is `mean × N`, with standard
//! deviation `sqrt(mean × T)`. All allocations here have one size s, so the
//! object estimate is `bytes / s` with the same relative deviation. We accept
//! 5 standard deviations (a false failure about once in 1.7 million runs for
//! a random seed); the seeds are fixed, so the test is deterministic.

mod common;

use std::alloc::System;

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Allocates and frees `count` blocks of `size` bytes.
#[inline(never)]
fn unbiased_site(size: usize, count: usize) {
    for _ in 0..count {
        let v: Vec<u8> = Vec::with_capacity(size);
        std::hint::black_box(&v);
    }
}

#[test]
fn estimates_within_five_sigma_for_every_size_and_interval() {
    let _serial = common::serial();
    let sizes = [
        8usize,
        100,
        1024,
        10_000,
        64 << 10,
        300_000,
        1 << 20,
        4 << 20,
    ];
    let mut report = Vec::new();
    for (k, &mean) in [64u64 << 10, 512 << 10].iter().enumerate() {
        for (j, &size) in sizes.iter().enumerate() {
            // 256 MiB per case at 512 KiB (512 expected samples), 64 MiB at 64 KiB.
            let total: u64 = if mean == 512 << 10 {
                256 << 20
            } else {
                64 << 20
            };
            let count = (total / size as u64).max(1) as usize;
            let truth = (count * size) as f64;
            let seed = 0x5EED_0000 + (k * 100 + j) as u64;
            ferroprof_alloc::set_sample_interval(mean);
            ferroprof_alloc::reseed_this_thread(seed);
            let before = ferroprof_alloc::snapshot();
            unbiased_site(size, count);
            let after = ferroprof_alloc::snapshot();
            ferroprof_alloc::set_sample_interval(0);
            let (b0, o0, _, _) = common::totals(&before, "unbiased_site");
            let (b1, o1, _, _) = common::totals(&after, "unbiased_site");
            let bytes = (b1 - b0) as f64;
            let objects = o1 - o0;
            let sigma = (mean as f64 * truth).sqrt();
            let z_bytes = (bytes - truth) / sigma;
            let z_objects = (objects - count as f64) * size as f64 / sigma;
            report.push(format!(
                "mean {mean} size {size} seed {seed:#x}: bytes {bytes} vs {truth} (z {z_bytes:.2}), objects {objects:.1} vs {count} (z {z_objects:.2})"
            ));
            assert!(z_bytes.abs() < 5.0, "{}", report.join("\n"));
            assert!(z_objects.abs() < 5.0, "{}", report.join("\n"));
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn interval_one_is_exact() {
    let _serial = common::serial();
    ferroprof_alloc::set_sample_interval(1);
    let before = ferroprof_alloc::snapshot();
    exact_site();
    let after = ferroprof_alloc::snapshot();
    ferroprof_alloc::set_sample_interval(0);
    let (b0, o0, _, _) = common::totals(&before, "exact_site");
    let (b1, o1, _, _) = common::totals(&after, "exact_site");
    assert_eq!(b1 - b0, 10 + 20 + 30 + 4000);
    assert!((o1 - o0 - 4.0).abs() < 1e-3, "objects {}", o1 - o0);
}

#[inline(never)]
fn exact_site() {
    for size in [10usize, 20, 30, 4000] {
        let v: Vec<u8> = Vec::with_capacity(size);
        std::hint::black_box(&v);
    }
}
