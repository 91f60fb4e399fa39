//! Samples taken again and again from one call site replay their stack's
//! frames from the last walk rather than unwinding them, and the
//! statistics count both.

mod common;

use std::alloc::System;
use std::hint::black_box;

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn allocate_from_one_site(round: usize) -> Box<[u8; 48]> {
    black_box(Box::new([round as u8; 48]))
}

#[test]
fn a_repeated_call_site_is_replayed_not_unwound() {
    let _serial = common::serial();
    let before = ferroprof_alloc::stats();
    ferroprof_alloc::set_sample_interval(1);
    let mut kept = Vec::with_capacity(2_000);
    for round in 0..2_000 {
        kept.push(allocate_from_one_site(round));
        black_box(&kept);
    }
    ferroprof_alloc::set_sample_interval(0);
    let after = ferroprof_alloc::stats();
    drop(kept);
    let samples = after.samples - before.samples;
    let replayed = after.unwind_frames_replayed - before.unwind_frames_replayed;
    let unwound = after.unwind_frames_unwound - before.unwind_frames_unwound;
    assert!(samples >= 2_000, "{samples} samples");
    // Every walk is several frames deep (the test harness's thread below
    // this function).
    assert!(
        replayed + unwound >= 4 * samples,
        "{replayed} replayed + {unwound} unwound frames for {samples} samples"
    );
    // After the first walk, hardly any frame is unwound again. (Whether
    // the caller's frame pointer differs at each round here is up to the
    // compiler; the replay's unit tests cover frames that save a different
    // one each time.)
    assert!(
        unwound * 10 <= samples,
        "{replayed} replayed, {unwound} unwound frames for {samples} samples"
    );
}
