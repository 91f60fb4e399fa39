//! A sampled allocation's stack names the function that allocated, with the
//! DWARF unwinder (this test binary is built without frame pointers) and with
//! the frame-pointer walker reaching at least the allocator's caller.

use std::alloc::System;

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

fn names(frames: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    for &f in frames {
        backtrace::resolve((f - 1) as usize as *mut std::ffi::c_void, |s| {
            out.push(s.name().map(|n| format!("{n:#}")).unwrap_or_default());
        });
    }
    out
}

#[test]
fn dwarf_stack_contains_site_and_its_caller() {
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
