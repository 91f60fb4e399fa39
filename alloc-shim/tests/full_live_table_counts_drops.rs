//! When the live table is full, samples are dropped from it but counted:
//! the allocation totals still include them, `dropped_table_full` rises,
//! nothing crashes, and the in-use estimate stays consistent (never more
//! than what is live, back to its baseline when everything is freed).

mod common;

use std::alloc::System;

use ferroprof_alloc::SamplingAllocator;

const CAPACITY: u32 = 64;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> =
    SamplingAllocator::new(System).with_live_capacity(CAPACITY);

// Each box is one sampled allocation; that is the point.
#[allow(clippy::vec_box)]
#[inline(never)]
fn full_site(n: usize) -> Vec<Box<[u8; 100]>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Box::new([5u8; 100]));
    }
    std::hint::black_box(out)
}

#[test]
fn drops_are_counted_and_totals_kept() {
    let _serial = common::serial();
    ferroprof_alloc::set_sample_interval(1);
    let base = common::totals(&ferroprof_alloc::snapshot(), "full_site");
    let before = ferroprof_alloc::stats();
    let kept = full_site(1000);
    let snap = ferroprof_alloc::snapshot();
    let stats = &snap.stats;
    assert_eq!(stats.live_capacity, CAPACITY);
    assert!(stats.live_blocks <= CAPACITY, "{stats:?}");
    let dropped = stats.dropped_table_full - before.dropped_table_full;
    assert!(
        dropped >= 1000 - CAPACITY as u64,
        "dropped {dropped}: {stats:?}"
    );
    let t = common::totals(&snap, "full_site");
    // 1000 boxes plus the outer vector's growth (counted exactly at interval 1).
    let outer: u64 = kept.capacity() as u64 * 8;
    assert!(
        t.0 - base.0 >= 1000 * 100 + outer / 2,
        "dropped samples still count as allocated: {}",
        t.0 - base.0
    );
    assert!(t.0 - base.0 <= 1000 * 100 + 2 * outer);
    assert!(
        t.2 - base.2 <= CAPACITY as u64 * 100 + outer,
        "in-use only from kept records"
    );
    assert!(t.2 - base.2 > 0, "some blocks were recorded");
    // Every kept block is usable, recorded or not.
    assert!(kept.iter().all(|b| b.iter().all(|&x| x == 5)));
    drop(kept);
    let end = common::totals(&ferroprof_alloc::snapshot(), "full_site");
    ferroprof_alloc::set_sample_interval(0);
    assert_eq!(end.2, base.2, "in-use back to baseline");
    // Slots are reusable once freed.
    assert!(ferroprof_alloc::stats().live_blocks < CAPACITY);
}
