//! The sampling `GlobalAlloc` implementation.
//!
//! Each method is tiny and inline: charge the countdown, branch, forward. The
//! branch taken about once per sample interval leads to a `#[cold]`,
//! `#[inline(never)]` method that asks the sampler for a weight, captures the
//! stack, interns it, and serves the block from the region with a live
//! record. A `dealloc` or `realloc` tells sampled blocks by
//! [`region::contains_by`] (the region's tag as this allocator learnt it
//! when it handed out its first region block).
//!
//! `realloc` semantics (kept unbiased):
//! - a sampled block moves (or stays) with its record; bytes it grows by go
//!   through the countdown and, if they cross it, add `n × mean` to the
//!   record and to its stack's allocation totals; shrinking scales the
//!   record's bytes by `new / old`;
//! - an unsampled block that grows charges only the new bytes; if they cross
//!   the countdown, the block moves into the region as a sample of the
//!   `realloc` call's stack, weighing those bytes (and no new object).
//!
//! The profiler's own long-lived memory (the unwinder's caches) takes the
//! same slow path: while a thread holds `sampler::own_memory`, its
//! countdown is held at zero, and every allocation it makes is served from
//! the region with no live record (a header slot of `NO_SLOT`), counted in
//! `Stats::unwind_cache_bytes`. So those blocks never sit in the wrapped
//! allocator's heap among the program's (the layout risk `replay::Room`
//! describes), and `dealloc`/`realloc` find them by the same region check.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::Ordering;

use crate::global::{tables, tables_or_create, warm_up, COUNTERS};
use crate::live::LiveRecord;
use crate::sampler::{self, Weight};
use crate::{region, unwind, SamplingAllocator, MAX_FRAMES_LIMIT};

/// Frames between `unwind::capture` and the allocator's caller: capture
/// itself, `record`, and the cold entry point (all `#[inline(never)]`).
const SKIP: usize = 3;
/// Header slot value before the live record exists.
const NO_SLOT: u32 = u32::MAX;

// SAFETY: every pointer returned comes either from `inner` (with the
// caller's layout) or from the region (a block of at least `size` bytes,
// aligned to `align`, owned by nobody else); `dealloc`/`realloc` route each
// pointer back to where it came from by `region::contains_by`, whose copy
// of the region's tag is set before this allocator hands out a region
// block (`region::learn`).
unsafe impl<A: GlobalAlloc> GlobalAlloc for SamplingAllocator<A> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if sampler::charge(layout.size()) {
            // SAFETY: the caller's guarantees on `layout` carry over.
            return unsafe { self.alloc_slow(layout, false) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if sampler::charge(layout.size()) {
            // SAFETY: the caller's guarantees on `layout` carry over.
            return unsafe { self.alloc_slow(layout, true) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if region::contains_by(&self.region_tag, ptr) {
            dealloc_sampled(ptr);
            return;
        }
        // SAFETY: not a region block, so it came from `inner` with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if region::contains_by(&self.region_tag, ptr) {
            // SAFETY: a live region block of `layout`, per the caller.
            return unsafe { self.realloc_sampled(ptr, layout, new_size) };
        }
        if new_size > layout.size() && sampler::charge(new_size - layout.size()) {
            // SAFETY: an `inner` block of `layout`, per the caller.
            return unsafe { self.realloc_slow(ptr, layout, new_size) };
        }
        // SAFETY: not a region block, so it came from `inner` with `layout`.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

impl<A: GlobalAlloc> SamplingAllocator<A> {
    /// The countdown crossed during `alloc`/`alloc_zeroed`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if sampler::is_own() {
            // SAFETY: the caller's guarantees on `layout` carry over.
            return unsafe { self.alloc_own(layout, zeroed) };
        }
        unwind::warm_stack();
        warm_up(self.capacities.live, self.capacities.stacks);
        if let Some(weight) = sampler::decide(layout.size(), true) {
            if let Some(user) = record(layout, weight, self.capacities.live, self.capacities.stacks)
            {
                region::learn(&self.region_tag, user);
                if zeroed {
                    // SAFETY: the block has at least `layout.size()` bytes.
                    unsafe { user.write_bytes(0, layout.size()) };
                }
                return user;
            }
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner_alloc(layout, zeroed) }
    }

    /// `inner`'s `alloc` or `alloc_zeroed`.
    ///
    /// # Safety
    ///
    /// As for [`GlobalAlloc::alloc`].
    unsafe fn inner_alloc(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        }
    }

    /// An unsampled block grew across the countdown: it moves into the
    /// region as a sample, or as the profiler's own memory, or is resized
    /// by `inner`.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_slow(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `realloc`'s caller guarantees `new_size` rounded to
        // `layout.align()` does not overflow isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let user = if sampler::is_own() {
            // SAFETY: `new_layout` is larger than `layout`, so not zero-sized.
            unsafe { self.alloc_own(new_layout, false) }
        } else {
            unwind::warm_stack();
            let sampled = sampler::decide(new_size - layout.size(), false).and_then(|weight| {
                record(
                    new_layout,
                    weight,
                    self.capacities.live,
                    self.capacities.stacks,
                )
            });
            match sampled {
                Some(user) => {
                    region::learn(&self.region_tag, user);
                    user
                }
                // SAFETY: forwarded with the caller's guarantees.
                None => return unsafe { self.inner.realloc(ptr, layout, new_size) },
            }
        };
        if !user.is_null() {
            // SAFETY: both blocks hold at least `layout.size()` bytes and are
            // distinct; the old one came from `inner` with `layout`.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, user, layout.size());
                self.inner.dealloc(ptr, layout);
            }
        }
        user
    }

    /// `realloc` of a sampled block: move or resize it with its record.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_sampled(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        let header = region::header(ptr);
        if header.slot == NO_SLOT {
            // SAFETY: a live block of the profiler's own memory, per the caller.
            return unsafe { self.realloc_own(ptr, layout, new_size, header) };
        }
        let extra = if new_size > old && sampler::charge(new_size - old) {
            sampler::decide(new_size - old, false)
        } else {
            None
        };
        let t = tables().expect("a region block exists only once the tables do");
        let mut rec = t.live.get(header.slot);
        if new_size < old && old > 0 {
            rec.weight_bytes = (rec.weight_bytes as u128 * new_size as u128 / old as u128) as u64;
        }
        if let Some(w) = extra {
            rec.weight_bytes += w.bytes;
            t.stacks.add(rec.stack, w.bytes, 0);
            COUNTERS.samples.fetch_add(1, Ordering::Relaxed);
        }
        rec.size = new_size as u64;
        if stays(header, new_size) {
            t.live.update(header.slot, rec);
            return ptr;
        }
        let moved = {
            let _busy = sampler::enter();
            region::alloc(new_size, layout.align(), header.slot)
        };
        let user = match moved {
            Some(block) => {
                rec.addr = block.user as u64;
                t.live.update(header.slot, rec);
                block.user
            }
            None => {
                // The region is exhausted: hand the data to `inner` and give
                // up the record (counted).
                // SAFETY: as in `realloc_slow`.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: `new_layout` has a non-zero size (it is larger than
                // a block's usable bytes).
                let user = unsafe { self.inner.alloc(new_layout) };
                if user.is_null() {
                    t.live.update(
                        header.slot,
                        LiveRecord {
                            size: old as u64,
                            ..rec
                        },
                    );
                    return user;
                }
                t.live.remove(header.slot);
                COUNTERS.dropped_region.fetch_add(1, Ordering::Relaxed);
                user
            }
        };
        // SAFETY: both blocks hold at least min(old, new) bytes and are distinct.
        unsafe { core::ptr::copy_nonoverlapping(ptr, user, old.min(new_size)) };
        region::free(ptr);
        user
    }
}

/// Whether a region block resized to `new_size` bytes stays where it is:
/// it fits, and does not keep a large block for a small remainder.
fn stays(header: region::Header, new_size: usize) -> bool {
    let usable = header.usable();
    new_size <= usable && (usable <= 4096 || new_size >= usable / 4)
}

impl<A: GlobalAlloc> SamplingAllocator<A> {
    /// An allocation of the profiler's own memory (`sampler::own_memory`):
    /// from the region, with no live record, else from `inner`.
    ///
    /// # Safety
    ///
    /// As for [`GlobalAlloc::alloc`].
    #[cold]
    #[inline(never)]
    unsafe fn alloc_own(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if let Some(block) = region::alloc(layout.size(), layout.align(), NO_SLOT) {
            region::learn(&self.region_tag, block.user);
            let bytes = 1u64 << region::header(block.user).shift;
            // Relaxed: a statistic.
            COUNTERS.own_bytes.fetch_add(bytes, Ordering::Relaxed);
            if zeroed {
                // SAFETY: the block has at least `layout.size()` bytes.
                unsafe { block.user.write_bytes(0, layout.size()) };
            }
            return block.user;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner_alloc(layout, zeroed) }
    }

    /// `realloc` of a block of the profiler's own memory: it stays in the
    /// region (or goes to `inner` if the region is exhausted).
    ///
    /// # Safety
    ///
    /// `ptr` is a live own block of `layout`, whose header is `header`, and
    /// `new_size` is valid for `realloc` with it.
    unsafe fn realloc_own(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        header: region::Header,
    ) -> *mut u8 {
        if stays(header, new_size) {
            return ptr;
        }
        // SAFETY: as in `realloc_slow`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (`realloc`'s contract).
        let user = unsafe { self.alloc_own(new_layout, false) };
        if !user.is_null() {
            // SAFETY: both blocks hold at least min(old, new) bytes and are
            // distinct.
            unsafe { core::ptr::copy_nonoverlapping(ptr, user, layout.size().min(new_size)) };
            free_own(ptr, header);
        }
        user
    }
}

/// Frees a block of the profiler's own memory.
fn free_own(ptr: *mut u8, header: region::Header) {
    // Relaxed: a statistic.
    COUNTERS
        .own_bytes
        .fetch_sub(1 << header.shift, Ordering::Relaxed);
    region::free(ptr);
}

/// Frees a sampled block and its record, or a block of the profiler's own
/// memory (no record).
#[cold]
#[inline(never)]
fn dealloc_sampled(ptr: *mut u8) {
    let header = region::header(ptr);
    if header.slot == NO_SLOT {
        free_own(ptr, header);
        return;
    }
    if let Some(t) = tables() {
        t.live.remove(header.slot);
    }
    region::free(ptr);
}

/// Takes a sample: captures and interns the stack, adds the weight to its
/// totals, and serves the block from the region with a live record. `None`
/// (and a counter) when the block must come from the inner allocator.
#[inline(never)]
fn record(layout: Layout, weight: Weight, live_cap: u32, stack_cap: u32) -> Option<*mut u8> {
    let _busy = sampler::enter()?;
    let Some(t) = tables_or_create(live_cap, stack_cap) else {
        COUNTERS.dropped_not_ready.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let mut frames = [0u64; MAX_FRAMES_LIMIT];
    let depth = unwind::max_frames();
    let (n, truncated) = unwind::capture(&mut frames[..depth], SKIP);
    let stack = t.stacks.intern(&frames[..n], truncated);
    t.stacks.add(stack, weight.bytes, weight.objects);
    COUNTERS.samples.fetch_add(1, Ordering::Relaxed);
    let Some(block) = region::alloc(layout.size(), layout.align(), NO_SLOT) else {
        COUNTERS.dropped_region.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let rec = LiveRecord {
        addr: block.user as u64,
        size: layout.size() as u64,
        stack,
        weight_bytes: weight.bytes,
        weight_objects: weight.objects,
    };
    match t.live.insert(rec) {
        Some(slot) => {
            region::set_slot(block.user, slot);
            Some(block.user)
        }
        None => {
            region::free(block.user);
            COUNTERS.dropped_table_full.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::alloc::System;

    /// Bytes of the profiler's own memory in the region now.
    fn own_bytes() -> u64 {
        COUNTERS.own_bytes.load(Ordering::Relaxed)
    }

    #[test]
    fn the_profilers_own_memory_comes_from_the_region_and_is_counted() {
        let _turn = region::tests::lock();
        // A wrapper of its own, called directly: this test binary has no
        // sampling global allocator.
        let a = SamplingAllocator::new(System);
        let layout = |size| Layout::from_size_align(size, 8).unwrap();
        let (own_before, in_use_before) = (own_bytes(), region::stats().2);
        // SAFETY: non-zero layouts; every block is freed below with the
        // layout it has then.
        unsafe {
            // From the inner allocator itself: through the wrapper this
            // thread's countdown could take it as a sample.
            let outside = System.alloc(layout(48));
            assert!(!outside.is_null() && !region::contains(outside));
            outside.write_bytes(0x5A, 48);
            let own = sampler::own_memory().expect("not own yet");
            assert!(sampler::own_memory().is_none(), "nested");
            let p = a.alloc(layout(100));
            assert!(region::contains(p), "an own block is in the region");
            // 100 bytes and the 16-byte header: the 128-byte class.
            assert_eq!(own_bytes() - own_before, 128);
            for i in 0..100 {
                p.add(i).write(i as u8);
            }
            // An unsampled block that grows moves into the region.
            let moved = a.realloc(outside, layout(48), 4000);
            assert!(region::contains(moved));
            assert_eq!(core::slice::from_raw_parts(moved, 48), &[0x5A; 48]);
            drop(own);
            // Own blocks stay the region's after the guard: shrinking a
            // little keeps the block, growing moves it with the data.
            assert_eq!(a.realloc(p, layout(100), 90), p);
            let q = a.realloc(p, layout(90), 10_000);
            assert!(region::contains(q) && q != p);
            assert!((0..90).all(|i| *q.add(i) == i as u8));
            // 128 + 4096 (4000 + 16) + 16384 (10 000 + 16): the first
            // block was freed by the move.
            assert_eq!(own_bytes() - own_before, 4096 + 16384);
            // The region's in-use bytes count them (the statistic subtracts
            // them, see `global::stats`).
            assert_eq!(region::stats().2 - in_use_before, 4096 + 16384);
            a.dealloc(q, layout(10_000));
            a.dealloc(moved, layout(4000));
            // A freed block handed out again zeroed.
            let own = sampler::own_memory().expect("left");
            let z = a.alloc_zeroed(layout(4000));
            assert!(region::contains(z));
            assert!(core::slice::from_raw_parts(z, 4000).iter().all(|&b| b == 0));
            drop(own);
            a.dealloc(z, layout(4000));
        }
        assert_eq!(own_bytes(), own_before);
        assert_eq!(region::stats().2, in_use_before);
    }
}
