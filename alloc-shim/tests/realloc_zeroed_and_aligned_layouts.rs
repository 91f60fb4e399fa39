//! Every `GlobalAlloc` method keeps its contract whether or not the block is
//! sampled: realloc grows, shrinks, stays in place and moves with contents
//! intact; zero-size and over-aligned (4 KiB, 2 MiB) layouts work;
//! `alloc_zeroed` returns zeroes even from recycled sampled blocks; and the
//! live record follows a sampled block through realloc.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Every interval the tests run under: never, always, and in between.
const INTERVALS: [u64; 3] = [0, 1, 4096];

fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: the caller owns `n` bytes at `p`.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

fn check(p: *const u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: the caller owns `n` bytes at `p`.
        let got = unsafe { p.add(i).read() };
        assert_eq!(got, seed.wrapping_add(i as u8), "byte {i} of {n}");
    }
}

#[test]
fn realloc_keeps_contents_through_every_path() {
    let _serial = common::serial();
    for mean in INTERVALS {
        ferroprof_alloc::set_sample_interval(mean);
        for (from, to) in [
            (16, 17),
            (16, 4000),
            (100, 8),
            (4000, 3000),
            (1 << 16, 1 << 20),
            (1 << 20, 100),
            (3, 0x3_0000),
        ] {
            for align in [1usize, 8, 64, 4096] {
                let layout = Layout::from_size_align(from, align).unwrap();
                // SAFETY: non-zero size; the block is freed below with the
                // layout realloc returned it under.
                unsafe {
                    let p = GLOBAL.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0);
                    fill(p, from, 7);
                    let q = GLOBAL.realloc(p, layout, to);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc keeps alignment {align}");
                    check(q, from.min(to), 7);
                    fill(q, to, 9);
                    GLOBAL.dealloc(q, Layout::from_size_align(to, align).unwrap());
                }
            }
        }
    }
    ferroprof_alloc::set_sample_interval(0);
}

#[test]
fn vec_growth_through_realloc_keeps_data() {
    let _serial = common::serial();
    for mean in INTERVALS {
        ferroprof_alloc::set_sample_interval(mean);
        let mut v = Vec::new();
        for i in 0..200_000u32 {
            v.push(i);
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10).collect::<Vec<_>>());
    }
    ferroprof_alloc::set_sample_interval(0);
}

#[test]
fn zero_size_and_over_aligned_layouts() {
    let _serial = common::serial();
    for mean in INTERVALS {
        ferroprof_alloc::set_sample_interval(mean);
        for (size, align) in [
            (0usize, 1usize),
            (0, 4096),
            (1, 4096),
            (5000, 4096),
            (1, 2 << 20),
            (3 << 20, 2 << 20),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: zero-size layouts are passed straight to the inner
            // allocator, which (System) accepts them; freed with the same layout.
            unsafe {
                let p = GLOBAL.alloc(layout);
                assert!(!p.is_null(), "size {size} align {align}");
                assert_eq!(
                    p as usize % align,
                    0,
                    "size {size} align {align} mean {mean}"
                );
                fill(p, size, 3);
                check(p, size, 3);
                GLOBAL.dealloc(p, layout);
            }
        }
    }
    ferroprof_alloc::set_sample_interval(0);
}

#[test]
fn alloc_zeroed_is_zero_even_when_recycled() {
    let _serial = common::serial();
    for mean in INTERVALS {
        ferroprof_alloc::set_sample_interval(mean);
        for size in [24usize, 1000, 70_000, 300_000] {
            let layout = Layout::from_size_align(size, 8).unwrap();
            for _ in 0..4 {
                // SAFETY: non-zero size, freed with the same layout.
                unsafe {
                    let dirty = GLOBAL.alloc(layout);
                    dirty.write_bytes(0xFF, size);
                    GLOBAL.dealloc(dirty, layout);
                    let p = GLOBAL.alloc_zeroed(layout);
                    assert!(
                        (0..size).all(|i| p.add(i).read() == 0),
                        "size {size} mean {mean}"
                    );
                    GLOBAL.dealloc(p, layout);
                }
            }
        }
    }
    ferroprof_alloc::set_sample_interval(0);
}

#[inline(never)]
fn realloc_site(layout: Layout) -> *mut u8 {
    // SAFETY: non-zero size; the test frees it.
    let p = unsafe { GLOBAL.alloc(layout) };
    // Not a tail call, so this frame is on the sampled stack.
    std::hint::black_box(p)
}

#[test]
fn record_follows_a_sampled_block_through_realloc() {
    let _serial = common::serial();
    ferroprof_alloc::set_sample_interval(1);
    let base = common::totals(&ferroprof_alloc::snapshot(), "realloc_site");
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let p = realloc_site(layout);
    let inuse = |snap| common::totals(&snap, "realloc_site").2 - base.2;
    assert_eq!(inuse(ferroprof_alloc::snapshot()), 1000);
    // SAFETY: `p` is live with `layout`; each realloc result replaces it.
    unsafe {
        let q = GLOBAL.realloc(p, layout, 900); // shrink in place
        assert_eq!(inuse(ferroprof_alloc::snapshot()), 900);
        let r = GLOBAL.realloc(q, Layout::from_size_align(900, 8).unwrap(), 100_000); // moves
        let after = ferroprof_alloc::snapshot();
        assert_eq!(inuse(after.clone()), 100_000);
        assert_eq!(
            common::totals(&after, "realloc_site").0 - base.0,
            1000 + 99_100,
            "growth is allocated bytes"
        );
        GLOBAL.dealloc(r, Layout::from_size_align(100_000, 8).unwrap());
    }
    assert_eq!(inuse(ferroprof_alloc::snapshot()), 0);
    ferroprof_alloc::set_sample_interval(0);
}

#[test]
fn freed_large_sampled_blocks_keep_at_most_64_mib_resident() {
    let _serial = common::serial();
    ferroprof_alloc::set_sample_interval(1);
    for align in [8usize, 4096] {
        let layout = Layout::from_size_align(1 << 20, align).unwrap();
        // 200 MiB of 1 MiB sampled blocks live at once, then all freed.
        let blocks: Vec<*mut u8> = (0..200)
            .map(|i| {
                // SAFETY: non-zero size; freed below with the same layout.
                let p = unsafe { GLOBAL.alloc(layout) };
                fill(p, 1 << 20, i as u8);
                p
            })
            .collect();
        for (i, &p) in blocks.iter().enumerate() {
            check(p, 1 << 20, i as u8);
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { GLOBAL.dealloc(p, layout) };
        }
        let kept = ferroprof_alloc::stats().region_kept;
        assert!(kept <= 64 << 20, "kept {kept} bytes resident");
        // Reuse after pages were given back: zeroed where asked, usable.
        for _ in 0..200 {
            // SAFETY: as above.
            unsafe {
                let p = GLOBAL.alloc_zeroed(layout);
                assert!((0..1 << 20).step_by(4096).all(|i| p.add(i).read() == 0));
                fill(p, 1 << 20, 1);
                GLOBAL.dealloc(p, layout);
            }
        }
        assert!(ferroprof_alloc::stats().region_kept <= 64 << 20);
    }
    ferroprof_alloc::set_sample_interval(0);
}
