//! In-use estimates follow frees exactly: threads allocate and free
//! concurrently; with everything freed the in-use estimate of their site is
//! 0, with half kept it is what was kept (exactly at interval 1, within the
//! sampling bound at 64 KiB).

mod common;

use std::alloc::System;

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

const THREADS: usize = 4;

/// Allocates `count` blocks of mixed sizes; returns them with the bytes this
/// function allocated.
#[inline(never)]
fn live_site(count: usize, seed: u64) -> (Vec<Vec<u8>>, usize) {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(count);
    // The outer vector is allocated here too.
    let mut total = count * std::mem::size_of::<Vec<u8>>();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 1 + (x % 20_000) as usize;
        total += size;
        out.push(vec![1u8; size]);
    }
    (out, total)
}

/// Runs the threads; each keeps every other block. Returns (kept bytes, all bytes).
fn churn(keep: bool, mean: u64) -> (usize, usize, Vec<Vec<Vec<u8>>>) {
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                ferroprof_alloc::set_sample_interval(mean);
                ferroprof_alloc::reseed_this_thread(0xA11C + t as u64);
                let (blocks, all) = live_site(4_000, 0xC0FFEE + t as u64);
                let mut kept = Vec::new();
                let mut kept_bytes = 0;
                for (i, b) in blocks.into_iter().enumerate() {
                    if keep && i % 2 == 0 {
                        kept_bytes += b.len();
                        kept.push(b);
                    }
                }
                (kept_bytes, all, kept)
            })
        })
        .collect();
    let mut kept_bytes = 0;
    let mut all = 0;
    let mut kept = Vec::new();
    for h in handles {
        let (k, a, v) = h.join().unwrap();
        kept_bytes += k;
        all += a;
        kept.push(v);
    }
    (kept_bytes, all, kept)
}

#[test]
fn in_use_is_exact_at_interval_one() {
    let _serial = common::serial();
    let base = common::totals(&ferroprof_alloc::snapshot(), "live_site");
    let (kept_bytes, all, kept) = churn(true, 1);
    let mid = common::totals(&ferroprof_alloc::snapshot(), "live_site");
    assert_eq!(mid.0 - base.0, all as u64, "allocated bytes are exact");
    assert_eq!(
        mid.2 - base.2,
        kept_bytes as u64,
        "in-use bytes are the kept blocks"
    );
    assert!(
        (mid.3 - base.3 - (THREADS * 2_000) as f64).abs() < 1e-2,
        "in-use objects {}",
        mid.3 - base.3
    );
    drop(kept);
    let end = common::totals(&ferroprof_alloc::snapshot(), "live_site");
    ferroprof_alloc::set_sample_interval(0);
    assert_eq!(
        end.2, base.2,
        "in-use returns to where it was once all is freed"
    );
    assert!((end.3 - base.3).abs() < 1e-6);
}

#[test]
fn in_use_is_zero_after_free_and_within_bound_when_half_kept() {
    let _serial = common::serial();
    let mean = 64u64 << 10;
    let base = common::totals(&ferroprof_alloc::snapshot(), "live_site");
    let (kept_bytes, _, kept) = churn(true, mean);
    let mid = common::totals(&ferroprof_alloc::snapshot(), "live_site");
    // The in-use estimate is mean × (points in the kept bytes): sd sqrt(mean × kept).
    let sigma = (mean as f64 * kept_bytes as f64).sqrt();
    let z = ((mid.2 - base.2) as f64 - kept_bytes as f64) / sigma;
    assert!(
        z.abs() < 5.0,
        "in-use {} vs kept {kept_bytes} (z {z:.2})",
        mid.2 - base.2
    );
    drop(kept);
    let (_, _, none) = churn(false, mean);
    drop(none);
    let end = common::totals(&ferroprof_alloc::snapshot(), "live_site");
    ferroprof_alloc::set_sample_interval(0);
    assert_eq!(end.2, base.2, "nothing of this site is live any more");
    let stats = ferroprof_alloc::stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
}
