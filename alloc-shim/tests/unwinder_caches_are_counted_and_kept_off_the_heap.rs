//! The DWARF walks' caches (framehop's rule caches, their tags, and each
//! slot's memory of its last walk) are the profiler's own memory: made
//! once per unwinder cache slot, so bounded by the pool; counted in
//! `Stats::unwind_cache_bytes`; and kept out of the wrapped allocator's
//! heap (they come from the region and from mappings of their own), so that
//! long-lived blocks of the profiler never sit among the program's.

#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use ferroprof_alloc::{Jemalloc, SamplingAllocator};
use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static GLOBAL: SamplingAllocator = SamplingAllocator::new(Jemalloc);

/// Slots in the heap sampler's unwinder cache pool (`unwind::linux::POOL`).
const POOL: usize = 8;

/// A lower bound of one slot's caches: framehop's 8 rule caches of 509
/// entries (over 16 KiB each), their tags (509 cache lines, ~32 KiB) and
/// the slot's memory of its last walk (76 KiB of pages). Without the rule
/// caches and tags (were they not served as the profiler's own memory and
/// counted) a slot would count the 76 KiB only.
const SLOT_AT_LEAST: u64 = 8 * (16 << 10) + (32 << 10) + (76 << 10);

/// Bytes jemalloc has handed out and not taken back.
fn jemalloc_allocated() -> u64 {
    epoch::advance().expect("jemalloc epoch");
    stats::allocated::read().expect("jemalloc stats.allocated") as u64
}

/// A thread that allocates (every allocation a sample) and ends. Its first
/// sample takes the next slot of the pool as its own.
fn sample_on_a_new_thread() {
    std::thread::spawn(|| std::hint::black_box(vec![7u8; 64]).len())
        .join()
        .expect("the sampling thread");
}

#[test]
fn unwinder_caches_are_bounded_counted_and_off_the_heap() {
    ferroprof_alloc::set_sample_interval(1);
    let before = ferroprof_alloc::stats();
    let heap_before = jemalloc_allocated();
    // One thread per slot: afterwards every slot has its caches.
    for _ in 0..POOL {
        sample_on_a_new_thread();
    }
    let full = ferroprof_alloc::stats();
    let heap_full = jemalloc_allocated();
    assert!(full.samples > before.samples, "{full:?}");
    assert!(
        full.unwind_cache_bytes >= POOL as u64 * SLOT_AT_LEAST,
        "{} bytes for {POOL} slots",
        full.unwind_cache_bytes
    );
    // Bounded: more threads reuse the slots and make no more caches.
    for _ in 0..2 * POOL {
        sample_on_a_new_thread();
    }
    let after = ferroprof_alloc::stats();
    ferroprof_alloc::set_sample_interval(ferroprof_alloc::DEFAULT_SAMPLE_INTERVAL);
    assert_eq!(after.unwind_cache_bytes, full.unwind_cache_bytes);
    // Off the heap: the slots made above (all but those the test's own
    // threads had made before it) would have taken ~300 KB each from
    // jemalloc; what it holds now beyond the start is the threads' leftovers.
    let made = (full.unwind_cache_bytes - before.unwind_cache_bytes) / SLOT_AT_LEAST;
    assert!(made >= 1, "no slot was made: {before:?}");
    let grown = heap_full.saturating_sub(heap_before);
    assert!(
        grown < 64 << 10,
        "jemalloc grew by {grown} bytes while {made} slots were made"
    );
    // The region's in-use bytes are the sampled blocks' only.
    assert!(after.region_in_use < after.region_committed);
}
