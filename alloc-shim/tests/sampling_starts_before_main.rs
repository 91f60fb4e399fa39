//! Sampling covers the whole life of the process: a block allocated by a
//! constructor that runs before `main` (and before the test harness) is in
//! the in-use heap, on the constructor's stack.

mod common;

use std::alloc::System;
use std::sync::atomic::{AtomicPtr, Ordering};

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

static EARLY: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());

#[inline(never)]
extern "C" fn allocate_before_main() {
    ferroprof_alloc::set_sample_interval(1);
    let block = Box::new(vec![9u8; 333_333]);
    EARLY.store(Box::into_raw(block), Ordering::Release);
    ferroprof_alloc::set_sample_interval(ferroprof_alloc::DEFAULT_SAMPLE_INTERVAL);
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = allocate_before_main;

#[test]
fn a_block_from_before_main_is_in_use() {
    let early = EARLY.load(Ordering::Acquire);
    assert!(!early.is_null(), "the constructor ran");
    let snap = ferroprof_alloc::snapshot();
    let (_, _, inuse, objects) = common::totals(&snap, "allocate_before_main");
    // The vector's buffer and the box around it.
    assert_eq!(inuse, 333_333 + std::mem::size_of::<Vec<u8>>() as u64);
    assert!((objects - 2.0).abs() < 1e-3);
    assert_eq!(snap.stats.dropped, 0, "{:?}", snap.stats);
}
