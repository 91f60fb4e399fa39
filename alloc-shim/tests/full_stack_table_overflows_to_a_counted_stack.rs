//! When the stack table is full, new stacks share the synthetic overflow
//! stack: their samples and totals are kept there and counted.

mod common;

use std::alloc::System;

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System).with_stack_capacity(8);

#[test]
fn overflow_stack_accounts_for_what_did_not_fit() {
    let _serial = common::serial();
    ferroprof_alloc::set_sample_interval(1);
    // 40 distinct stacks (different depths) cannot fit in 8 slots.
    let mut total = 0u64;
    for n in 0..40 {
        drop(common::deep(n, 1000 + n));
        total += (1000 + n) as u64;
    }
    let snap = ferroprof_alloc::snapshot();
    ferroprof_alloc::set_sample_interval(0);
    let stats = &snap.stats;
    assert_eq!(stats.stack_capacity, 8);
    assert!(stats.stacks <= 8);
    assert!(stats.stack_overflow_samples > 0, "{stats:?}");
    let overflow = snap
        .stacks
        .iter()
        .find(|s| s.overflow)
        .expect("an overflow stack");
    assert!(overflow.frames.is_empty());
    let named: u64 = common::totals(&snap, "common::deep").0;
    // Everything `deep` allocated is either on a named stack or in overflow.
    assert!(
        named + overflow.alloc_bytes >= total,
        "named {named} + overflow {} < {total}",
        overflow.alloc_bytes
    );
    assert!(overflow.alloc_bytes > 0);
}
