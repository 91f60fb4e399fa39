//! A sampled allocation's stack names the function that allocated, with the
//! DWARF unwinder (this test binary is built without frame pointers) and with
//! the frame-pointer walker reaching at least the allocator's caller.

mod common;

use std::alloc::System;

use common::names;
use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

#[inline(never)]
fn distinctive_allocation_site(n: usize) -> Vec<u8> {
    std::hint::black_box(vec![7u8; n])
}

#[inline(never)]
fn outer_caller_of_site(n: usize) -> Vec<u8> {
    let v = distinctive_allocation_site(n);
    std::hint::black_box(v)
}

#[test]
fn dwarf_stack_contains_site_and_its_caller() {
    let _serial = common::serial();
    ferroprof_alloc::set_sample_interval(1);
    let kept = outer_caller_of_site(123_457);
    let snap = ferroprof_alloc::snapshot();
    ferroprof_alloc::set_sample_interval(0);
    let ours = snap
        .stacks
        .iter()
        .filter(|s| s.inuse_bytes == 123_457)
        .map(|s| names(&s.frames))
        .collect::<Vec<_>>();
    drop(kept);
    assert_eq!(
        ours.len(),
        1,
        "one stack holds the 123457-byte block: {ours:#?}"
    );
    let stack = &ours[0];
    let site = stack
        .iter()
        .position(|n| n.contains("distinctive_allocation_site"))
        .unwrap_or_else(|| panic!("site missing from {stack:#?}"));
    let caller = stack
        .iter()
        .position(|n| n.contains("outer_caller_of_site"))
        .unwrap_or_else(|| panic!("caller missing from {stack:#?}"));
    assert!(site < caller, "{stack:#?}");
    // Only the inlined `GlobalAlloc` method may appear (inside `__rust_alloc`);
    // the sampler's own out-of-line frames must have been skipped.
    assert!(
        !stack
            .iter()
            .any(|n| n.contains("ferroprof_alloc::")
                && !n.contains("GlobalAlloc for ferroprof_alloc")),
        "sampler frames leaked into the stack: {stack:#?}"
    );
    assert!(
        stack.iter().any(|n| n.contains("run_test")),
        "stack reaches the test harness: {stack:#?}"
    );
}

#[test]
fn deep_stacks_are_cut_at_max_frames_and_marked() {
    let _serial = common::serial();
    assert_eq!(
        ferroprof_alloc::set_max_frames(1000),
        ferroprof_alloc::MAX_FRAMES_LIMIT
    );
    assert_eq!(ferroprof_alloc::set_max_frames(16), 16);
    ferroprof_alloc::set_sample_interval(1);
    let v = common::deep(40, 77_777);
    let snap = ferroprof_alloc::snapshot();
    ferroprof_alloc::set_sample_interval(0);
    ferroprof_alloc::set_max_frames(ferroprof_alloc::DEFAULT_MAX_FRAMES);
    drop(v);
    let s = snap
        .stacks
        .iter()
        .find(|s| s.inuse_bytes == 77_777)
        .expect("the block is recorded");
    assert_eq!(s.frames.len(), 16);
    assert!(s.truncated, "a 40-deep recursion does not fit in 16 frames");
    assert!(names(&s.frames).iter().any(|n| n.contains("deep")));
}

#[test]
fn frame_pointer_walk_without_frame_pointers_is_safe() {
    // This binary is built without frame pointers, so rbp holds arbitrary
    // values: the walk must stop at the first read outside the stack and
    // never fault.
    let _serial = common::serial();
    ferroprof_alloc::set_unwind_mode(ferroprof_alloc::UnwindMode::FramePointers);
    ferroprof_alloc::set_sample_interval(1);
    let mut kept = Vec::new();
    for n in 0..50 {
        kept.push(common::deep(n % 20, 50_000 + n));
    }
    let snap = ferroprof_alloc::snapshot();
    ferroprof_alloc::set_sample_interval(0);
    ferroprof_alloc::set_unwind_mode(ferroprof_alloc::UnwindMode::Dwarf);
    // Stacks may be short or empty, but every block is still recorded.
    let kept_bytes: u64 = kept.iter().map(|v| v.len() as u64).sum();
    let inuse: u64 = snap.stacks.iter().map(|s| s.inuse_bytes).sum();
    assert!(inuse >= kept_bytes, "in-use {inuse} < kept {kept_bytes}");
    drop(kept);
}
