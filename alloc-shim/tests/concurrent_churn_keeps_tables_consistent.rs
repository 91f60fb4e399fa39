//! The real allocator under concurrent churn: threads allocate, grow,
//! shrink and free blocks of every size class (many of them sampled) and
//! threads come and go, while another thread takes snapshots. Every
//! snapshot is consistent (a stack never has more in use than it
//! allocated), every block keeps its contents, and once everything is freed
//! the site's in-use estimate and the region's bytes in use are back where
//! they started, with nothing dropped.

mod common;

use std::alloc::System;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Random alloc / grow / shrink / free over a window of live vectors, each
/// filled with a byte derived from its id so corruption is detected.
#[inline(never)]
fn churn_site(seed: u64, steps: usize) {
    let mut x = seed | 1;
    let mut live: Vec<(u8, Vec<u8>)> = Vec::new();
    for step in 0..steps {
        let r = next(&mut x);
        let size = match r % 16 {
            0 => 64 << 10,
            1 => 300 << 10,
            2..=5 => (r >> 8) as usize % 4096,
            _ => (r >> 8) as usize % 256,
        };
        match (r >> 40) % 4 {
            0 | 1 => {
                let tag = step as u8;
                live.push((tag, vec![tag; size]));
            }
            2 if !live.is_empty() => {
                let i = (r >> 20) as usize % live.len();
                let (tag, v) = &mut live[i];
                assert!(v.iter().all(|b| b == tag), "block corrupted before resize");
                v.resize(size, *tag);
                v.shrink_to_fit();
            }
            _ if !live.is_empty() => {
                let i = (r >> 20) as usize % live.len();
                let (tag, v) = live.swap_remove(i);
                assert!(v.iter().all(|&b| b == tag), "block corrupted before free");
            }
            _ => {}
        }
        if live.len() > 200 {
            live.truncate(100);
        }
    }
}

#[test]
fn snapshots_stay_consistent_and_everything_returns() {
    let _serial = common::serial();
    // Symbols are resolved only after the last snapshot: the resolver's own
    // caches are allocations that stay live.
    let before = ferroprof_alloc::snapshot();
    let stop = Arc::new(AtomicBool::new(false));
    let snapshotter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut taken = 0;
            while !stop.load(Ordering::Relaxed) {
                let snap = ferroprof_alloc::snapshot();
                for s in &snap.stacks {
                    assert!(
                        s.inuse_bytes <= s.alloc_bytes,
                        "in use {} > allocated {} on stack {}",
                        s.inuse_bytes,
                        s.alloc_bytes,
                        s.id
                    );
                }
                taken += 1;
            }
            taken
        })
    };
    for round in 0..6u64 {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    ferroprof_alloc::set_sample_interval(if t % 2 == 0 { 1 } else { 4096 });
                    churn_site(round * 100 + t + 1, 20_000);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let taken = snapshotter.join().unwrap();
    assert!(taken > 0);
    let after = ferroprof_alloc::snapshot();
    ferroprof_alloc::set_sample_interval(0);
    assert_eq!(
        after.stats.dropped, before.stats.dropped,
        "{:?}",
        after.stats
    );
    assert_eq!(after.stats.live_blocks, before.stats.live_blocks);
    assert_eq!(after.stats.region_in_use, before.stats.region_in_use);
    let base = common::totals(&before, "churn_site");
    let end = common::totals(&after, "churn_site");
    assert!(end.0 > base.0, "the churn was sampled");
    assert_eq!(end.2, base.2, "nothing of the churn is in use any more");
}
