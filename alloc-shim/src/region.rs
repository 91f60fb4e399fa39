//! The sampled-block region: where every sampled allocation lives (and
//! the profiler's own long-lived memory, see `allocator`).
//!
//! Design rule 1 says a non-sampled `dealloc` must tell "not sampled" without
//! touching shared, written memory. ferroprof serves every sampled block from
//! one reserved range of address space, so the test is a shift and a
//! compare against one word written once at start-up ([`contains`]). This
//! works over any inner allocator (jemalloc, `System`, ...), and only sampled
//! blocks pay for a header: 16 bytes just before the user's pointer holding
//! the block's start and its live-table slot.
//!
//! The range is 1 TiB of address space aligned to 1 TiB, so the test is
//! `ptr >> 40 == tag`: one load of a word that never changes after start-up
//! (see [`contains`]). It is reserved `PROT_NONE` with `MAP_NORESERVE` (no
//! memory, no commit charge) and committed read-write in 2 MiB steps behind
//! a bump pointer. If no such window can be reserved (an address-space limit,
//! a 39-bit address space), nothing is sampled and `dropped_region` counts
//! what would have been. Blocks have power-of-two sizes ("classes") and are naturally
//! aligned up to 2 MiB, so any alignment a `Layout` asks for up to the class
//! size is met. Classes below 64 KiB are carved from 64 KiB slabs; larger
//! blocks are bumped one by one. Freed blocks go onto a per-class Treiber
//! stack whose head packs a 27-bit ABA tag with the block's offset, so reuse
//! is lock-free. Blocks of 256 KiB and more give their pages back
//! (`MADV_DONTNEED`) once more than 64 MiB of freed large blocks are kept.
//!
//! Memory is never unmapped, so a stale read of a free-list link (the Treiber
//! race) always reads mapped memory; the tag makes its CAS fail. The words
//! the region itself keeps in a block (header, link, dirty mark) are only
//! ever accessed atomically, so that race is not a data race either.
//!
//! Addresses are computed as integers, but every pointer into the region is
//! derived from the pointer of the reservation ([`ptr_at`]), so the region
//! keeps strict provenance. Under Miri (see `sys`) the window is an ordinary
//! 16 MiB allocation aligned to 16 MiB, and 1 MiB of freed large blocks is
//! kept before pages are given back, so that the tests reach every path.

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Bytes of header before every sampled block's user pointer.
pub(crate) const HEADER: usize = 16;
const MIN_SHIFT: u32 = 5;
const SLAB_SHIFT: u32 = 16;
const MAX_SHIFT: u32 = 40;
const CLASSES: usize = (MAX_SHIFT + 1) as usize;
const COMMIT_STEP: usize = 2 << 20;
const MAX_NATURAL_ALIGN: usize = 2 << 20;
const PAGE: usize = 4096;
const DISCARD_MIN: usize = 256 << 10;
#[cfg(not(miri))]
const DIRTY_LIMIT: usize = 64 << 20;
#[cfg(miri)]
const DIRTY_LIMIT: usize = 1 << 20;
const OFFSET_BITS: u32 = 37;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// Marks a header as ours; a header without it means memory corruption.
const MAGIC: u64 = 0xFE44_0000;
const MAGIC_MASK: u64 = 0xFFFF_0000;

/// log2 of the region's size and alignment: 1 TiB (16 MiB under Miri).
#[cfg(not(miri))]
const WINDOW_SHIFT: u32 = 40;
#[cfg(miri)]
const WINDOW_SHIFT: u32 = 24;
const WINDOW: usize = 1 << WINDOW_SHIFT;

/// Where the region is. Written once (by the thread that reserves it) and
/// read by every `dealloc`; on its own cache line so that no write to any
/// other state ever invalidates it.
#[repr(C, align(128))]
struct Tag {
    /// `base >> WINDOW_SHIFT` once reserved (the base is
    /// `tag << WINDOW_SHIFT`, the length [`WINDOW`]); `usize::MAX`, which no
    /// pointer shifted right by [`WINDOW_SHIFT`] can equal, before.
    tag: AtomicUsize,
    /// The region's first byte as the reservation returned it (null before):
    /// the pointer every pointer into the region is derived from.
    base: AtomicPtr<u8>,
}

static TAG: Tag = Tag {
    tag: AtomicUsize::new(usize::MAX),
    base: AtomicPtr::new(core::ptr::null_mut()),
};

/// The region's first byte; only meaningful once it is reserved.
fn base() -> usize {
    TAG.tag.load(Ordering::Relaxed) << WINDOW_SHIFT
}

/// A pointer to address `addr` of the region, with the reservation's
/// provenance. Relaxed, like the tag (see [`contains`]): it is read only
/// once `ready` has seen READY or for a block the caller holds, both after
/// the store.
fn ptr_at(addr: usize) -> *mut u8 {
    TAG.base.load(Ordering::Relaxed).with_addr(addr)
}

/// The 8-byte word at address `addr` of the region.
///
/// # Safety
///
/// `addr` is 8-aligned and lies in a committed part of the region that only
/// the region's atomics access (a header, a free-list link, a dirty mark).
/// The region is never unmapped, so the reference stays valid.
unsafe fn word(addr: usize) -> &'static AtomicU64 {
    // SAFETY: the caller guarantees the word is committed, aligned and only
    // accessed atomically; an all-bytes-initialised u64 is a valid atomic.
    unsafe { &*ptr_at(addr).cast::<AtomicU64>() }
}

const UNRESERVED: u8 = 0;
const RESERVING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

#[repr(C, align(128))]
struct State {
    init: AtomicU8,
    /// Offset of the first unused byte.
    bump: AtomicUsize,
    /// Offset up to which the range is read-write.
    committed: AtomicUsize,
    /// Bytes of freed large blocks kept without `MADV_DONTNEED`.
    dirty: AtomicUsize,
    /// Bytes of blocks currently handed out.
    in_use: AtomicUsize,
    /// Per-class free lists: `tag << 37 | (offset / 16 + 1)`, 0 = empty.
    free: [AtomicU64; CLASSES],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_LIST: AtomicU64 = AtomicU64::new(0);

static STATE: State = State {
    init: AtomicU8::new(UNRESERVED),
    bump: AtomicUsize::new(0),
    committed: AtomicUsize::new(0),
    dirty: AtomicUsize::new(0),
    in_use: AtomicUsize::new(0),
    free: [EMPTY_LIST; CLASSES],
};

/// Is `ptr` a sampled block? The whole cost a non-sampled `dealloc` pays:
/// one load, a shift and a compare. (Measured on x86_64: a quarter of the
/// cost of comparing against a base and a length, see `alloc_overhead`.)
#[inline(always)]
pub(crate) fn contains(ptr: *mut u8) -> bool {
    // Relaxed: a pointer into the region can only have reached this thread
    // through the allocation that produced it, which happened after the tag
    // was stored and is ordered before this call by the user's own
    // synchronisation; before the reservation the tag matches nothing,
    // which is right since nothing is in the region yet.
    (ptr.addr() >> WINDOW_SHIFT) == TAG.tag.load(Ordering::Relaxed)
}

/// [`contains`] against a copy of the tag, `copy` (see
/// `SamplingAllocator::region_tag`).
#[inline(always)]
pub(crate) fn contains_by(copy: &AtomicUsize, ptr: *mut u8) -> bool {
    // Relaxed: the copy is stored (`learn`) before the allocator hands out
    // its first region block, by the thread that hands it out; a pointer
    // into the region reaches another thread only after that, through the
    // user's own synchronisation, as for `contains`.
    (ptr.addr() >> WINDOW_SHIFT) == copy.load(Ordering::Relaxed)
}

/// Makes `copy` the region's tag if `user` is a region block, before the
/// allocator owning `copy` hands `user` out.
#[inline]
pub(crate) fn learn(copy: &AtomicUsize, user: *mut u8) {
    if contains(user) && !contains_by(copy, user) {
        // Relaxed: see `contains_by`.
        copy.store(user.addr() >> WINDOW_SHIFT, Ordering::Relaxed);
    }
}

/// Reserves the range on first use. Never waits: a thread that finds another
/// one reserving gets `false` and serves its allocation unsampled.
pub(crate) fn ready() -> bool {
    match STATE.init.load(Ordering::Acquire) {
        READY => return true,
        RESERVING | FAILED => return false,
        _ => {}
    }
    if STATE
        .init
        .compare_exchange(UNRESERVED, RESERVING, Ordering::Acquire, Ordering::Acquire)
        .is_err()
    {
        return STATE.init.load(Ordering::Acquire) == READY;
    }
    match crate::sys::reserve_aligned(WINDOW) {
        Some(base) => {
            TAG.base.store(base.as_ptr(), Ordering::Relaxed);
            TAG.tag
                .store(base.as_ptr().addr() >> WINDOW_SHIFT, Ordering::Relaxed);
            // Release: pairs with the Acquire loads of `init` above, so a
            // thread that sees READY sees the tag and the base.
            STATE.init.store(READY, Ordering::Release);
            true
        }
        None => {
            STATE.init.store(FAILED, Ordering::Release);
            false
        }
    }
}

/// A block handed out by [`alloc`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    /// The pointer the user gets.
    pub(crate) user: *mut u8,
}

/// The class of a block that fits `size` bytes after a header aligned to
/// `align`; `None` if too big.
fn class_of(size: usize, align: usize) -> Option<(u32, usize)> {
    let lead = align.max(HEADER);
    let total = size.checked_add(lead)?;
    let shift = total.next_power_of_two().trailing_zeros().max(MIN_SHIFT);
    (shift <= MAX_SHIFT).then_some((shift, lead))
}

/// Allocates a block for `size` bytes aligned to `align` and writes its
/// header with `slot`. `None` when the region is unavailable or exhausted.
pub(crate) fn alloc(size: usize, align: usize, slot: u32) -> Option<Block> {
    if !ready() {
        return None;
    }
    let (shift, lead) = class_of(size, align)?;
    let start = pop(shift, align).or_else(|| fresh(shift, align))?;
    let class = 1usize << shift;
    STATE.in_use.fetch_add(class, Ordering::Relaxed);
    let user = start + lead;
    write_header(user, lead, shift, slot);
    Some(Block { user: ptr_at(user) })
}

/// What a block's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Bytes from block start to the user pointer.
    pub(crate) lead: usize,
    /// log2 of the block size.
    pub(crate) shift: u32,
    /// The live-table slot of the block's record.
    pub(crate) slot: u32,
}

impl Header {
    /// Bytes usable from the user pointer.
    pub(crate) fn usable(&self) -> usize {
        (1usize << self.shift) - self.lead
    }
}

fn header_words(user: usize) -> (&'static AtomicU64, &'static AtomicU64) {
    // SAFETY: every user pointer of the region has HEADER committed bytes
    // before it inside its own block (lead >= HEADER), 8-aligned because
    // blocks and leads are multiples of 16, and outside what the user owns.
    unsafe { (word(user - 16), word(user - 8)) }
}

fn write_header(user: usize, lead: usize, shift: u32, slot: u32) {
    let (w0, w1) = header_words(user);
    w0.store(lead as u64, Ordering::Relaxed);
    w1.store(
        (slot as u64) << 32 | MAGIC | shift as u64,
        Ordering::Relaxed,
    );
}

/// Reads the header of a block this thread owns.
pub(crate) fn header(user: *mut u8) -> Header {
    let (w0, w1) = header_words(user.addr());
    let meta = w1.load(Ordering::Relaxed);
    assert_eq!(
        meta & MAGIC_MASK,
        MAGIC,
        "ferroprof: freeing a block whose header is corrupt (double free or overflow?)"
    );
    Header {
        lead: w0.load(Ordering::Relaxed) as usize,
        shift: (meta & 0xFF) as u32,
        slot: (meta >> 32) as u32,
    }
}

/// Points the block's header at another live-table slot.
pub(crate) fn set_slot(user: *mut u8, slot: u32) {
    let h = header(user);
    write_header(user.addr(), h.lead, h.shift, slot);
}

/// Returns a block to its class.
pub(crate) fn free(user: *mut u8) {
    let h = header(user);
    let start = user.addr() - h.lead;
    let class = 1usize << h.shift;
    // Clear the magic so a double free is caught rather than corrupting lists.
    header_words(user.addr()).1.store(0, Ordering::Relaxed);
    STATE.in_use.fetch_sub(class, Ordering::Relaxed);
    if class >= DISCARD_MIN {
        let kept = STATE.dirty.fetch_add(class, Ordering::Relaxed) + class;
        if kept > DIRTY_LIMIT {
            STATE.dirty.fetch_sub(class, Ordering::Relaxed);
            // SAFETY: the block is committed and freed; its first page keeps
            // the free-list link, the rest is no one's.
            unsafe { crate::sys::discard(ptr_at(start + PAGE), class - PAGE) };
            // Word 1 may hold user data (when the header sat further in).
            mark_dirty(start, false);
        } else {
            mark_dirty(start, true);
        }
    }
    push(h.shift, start);
}

/// Large free blocks remember whether their pages are still resident (word 1
/// of the block; the link is word 0).
fn mark_dirty(start: usize, dirty: bool) {
    // SAFETY: large blocks are at least 256 KiB; word 1 is inside, committed
    // and, while the block is free, only the region's.
    let w = unsafe { word(start + 8) };
    w.store(dirty as u64, Ordering::Relaxed);
}

fn link(start: usize) -> &'static AtomicU64 {
    // SAFETY: `start` is a committed, 16-aligned block start in the region;
    // word 0 of a block is before any user pointer (lead >= HEADER), so only
    // links and headers, both atomic, are ever stored there.
    unsafe { word(start) }
}

fn encode(start: usize) -> u64 {
    ((start - base()) / 16 + 1) as u64
}

fn decode(bits: u64) -> usize {
    base() + ((bits & OFFSET_MASK) as usize - 1) * 16
}

fn push(shift: u32, start: usize) {
    push_chain(shift, start, start);
}

/// Pushes the chain `first -> ... -> last` (already linked) in one CAS.
fn push_chain(shift: u32, first: usize, last: usize) {
    let head = &STATE.free[shift as usize];
    let mut cur = head.load(Ordering::Relaxed);
    loop {
        link(last).store(cur & OFFSET_MASK, Ordering::Relaxed);
        let tag = (cur >> OFFSET_BITS).wrapping_add(1);
        let new = tag << OFFSET_BITS | encode(first);
        // Release: the link written above (and the chain's links) are
        // visible to the thread whose Acquire pop takes these blocks.
        match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

fn pop(shift: u32, align: usize) -> Option<usize> {
    let head = &STATE.free[shift as usize];
    // Acquire: pairs with the Release push that published the block and its link.
    let mut cur = head.load(Ordering::Acquire);
    loop {
        if cur & OFFSET_MASK == 0 {
            return None;
        }
        let start = decode(cur);
        let next = link(start).load(Ordering::Relaxed);
        let tag = (cur >> OFFSET_BITS).wrapping_add(1);
        match head.compare_exchange_weak(
            cur,
            tag << OFFSET_BITS | (next & OFFSET_MASK),
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                if !start.is_multiple_of(align) {
                    // Only alignments above 2 MiB can miss; keep the block for others.
                    push(shift, start);
                    return None;
                }
                if 1usize << shift >= DISCARD_MIN {
                    // SAFETY: large blocks are at least 256 KiB; word 1 is ours now.
                    let w = unsafe { word(start + 8) };
                    if w.load(Ordering::Relaxed) == 1 {
                        STATE.dirty.fetch_sub(1 << shift, Ordering::Relaxed);
                    }
                }
                return Some(start);
            }
            Err(seen) => cur = seen,
        }
    }
}

/// Bumps a new block (large classes) or a slab split into blocks.
fn fresh(shift: u32, align: usize) -> Option<usize> {
    if shift < SLAB_SHIFT {
        let slab = bump(1 << SLAB_SHIFT, 1 << SLAB_SHIFT)?;
        let size = 1usize << shift;
        let count = (1usize << SLAB_SHIFT) / size;
        if count > 1 {
            for i in 1..count - 1 {
                let b = slab + i * size;
                link(b).store(encode(b + size), Ordering::Relaxed);
            }
            push_chain(shift, slab + size, slab + (count - 1) * size);
        }
        Some(slab)
    } else {
        let natural = (1usize << shift).min(MAX_NATURAL_ALIGN);
        bump(1 << shift, natural.max(align))
    }
}

fn bump(size: usize, align: usize) -> Option<usize> {
    let (base, len) = (base(), WINDOW);
    let mut cur = STATE.bump.load(Ordering::Relaxed);
    let (start, end) = loop {
        let start = (base + cur).checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > base + len {
            return None;
        }
        match STATE.bump.compare_exchange_weak(
            cur,
            end - base,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => break (start, end - base),
            Err(seen) => cur = seen,
        }
    };
    loop {
        // Acquire: pairs with the Release below; seeing `committed >= end`
        // means the mprotect that made it so has returned.
        let done = STATE.committed.load(Ordering::Acquire);
        if done >= end {
            return Some(start);
        }
        let target = (end.div_ceil(COMMIT_STEP) * COMMIT_STEP).min(len);
        // SAFETY: [done, target) lies inside the reservation.
        if !unsafe { crate::sys::commit(ptr_at(base + done), target - done) } {
            return None;
        }
        // Release: see the Acquire above. Losing the race is fine: whoever
        // won committed at least up to its own target, and we loop.
        let _ =
            STATE
                .committed
                .compare_exchange(done, target, Ordering::Release, Ordering::Relaxed);
    }
}

/// Region statistics: (reserved, committed, in use, kept dirty) bytes.
pub(crate) fn stats() -> (usize, usize, usize, usize) {
    let reserved = if STATE.init.load(Ordering::Relaxed) == READY {
        WINDOW
    } else {
        0
    };
    (
        reserved,
        STATE.committed.load(Ordering::Relaxed),
        STATE.in_use.load(Ordering::Relaxed),
        STATE.dirty.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    //! The region is process-wide state: these tests take turns through
    //! `LOCK` so that its counters can be checked exactly. Nothing else in
    //! this test binary allocates from the region (no sampling allocator is
    //! installed here) but the allocator's own-memory test, which takes
    //! the same turns.

    use super::*;
    use crate::testing::Rng;
    use std::collections::BTreeMap;
    use std::sync::{Mutex, MutexGuard};

    static LOCK: Mutex<()> = Mutex::new(());

    /// A turn at the region, for any test that allocates from it.
    pub(crate) fn lock() -> MutexGuard<'static, ()> {
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block the test holds: where it is, what is in it.
    struct Held {
        user: *mut u8,
        size: usize,
        slot: u32,
        fill: u8,
    }

    // SAFETY: the test's blocks are plain memory owned by one thread at a time.
    unsafe impl Send for Held {}

    fn take(size: usize, align: usize, slot: u32, fill: u8) -> Held {
        let b = alloc(size, align, slot)
            .unwrap_or_else(|| panic!("no block for size {size}, align {align}"));
        assert!(contains(b.user), "block outside the region");
        assert!(
            b.user.addr().is_multiple_of(align),
            "size {size}: misaligned"
        );
        let h = header(b.user);
        assert_eq!(h.slot, slot);
        assert!(h.usable() >= size && h.lead >= HEADER && h.lead.is_multiple_of(16));
        let start = b.user.addr() - h.lead;
        assert!(start >= base() && start + (1 << h.shift) <= base() + WINDOW);
        // SAFETY: `size` usable bytes at `user` are ours until `give_back`.
        unsafe { b.user.write_bytes(fill, size) };
        Held {
            user: b.user,
            size,
            slot,
            fill,
        }
    }

    /// The block's bytes are still what `take` wrote (every byte up to 4 KiB,
    /// then the first, middle and last), and its header still names its slot.
    fn check(h: &Held) {
        // SAFETY: the block is live and its `size` bytes were written by `take`.
        let bytes = unsafe { core::slice::from_raw_parts(h.user, h.size) };
        let probe: Vec<u8> = if h.size <= 4096 {
            bytes.to_vec()
        } else {
            vec![bytes[0], bytes[h.size / 2], bytes[h.size - 1]]
        };
        assert!(
            probe.iter().all(|&b| b == h.fill),
            "block of {} bytes overwritten: someone else had it",
            h.size
        );
        assert_eq!(header(h.user).slot, h.slot, "header overwritten");
    }

    fn give_back(h: Held) {
        check(&h);
        free(h.user);
    }

    /// The block range `[start, end)` of a held block.
    fn range(h: &Held) -> (usize, usize) {
        let hd = header(h.user);
        let start = h.user.addr() - hd.lead;
        (start, start + (1 << hd.shift))
    }

    #[test]
    fn every_layout_gets_a_disjoint_aligned_block_and_freed_blocks_are_reused() {
        let _turn = lock();
        let in_use = stats().2;
        let layouts = [
            (0, 1),
            (1, 1),
            (16, 16),
            (17, 8),
            (100, 64),
            (4096, 4096),
            (5000, 8),
            (70_000, 16),
            (300_000, 4096),
            (1 << 20, 2 << 20),
        ];
        let round = |n: u32| -> BTreeMap<usize, usize> {
            let held: Vec<Held> = layouts
                .iter()
                .zip(0..)
                .map(|(&(size, align), i)| take(size, align, n * 100 + i, i as u8 + 1))
                .collect();
            for (i, h) in held.iter().enumerate() {
                set_slot(h.user, 7_000 + i as u32);
            }
            let mut ranges = BTreeMap::new();
            for (i, mut h) in held.into_iter().enumerate() {
                h.slot = 7_000 + i as u32;
                let (start, end) = range(&h);
                assert!(
                    ranges.insert(start, end).is_none(),
                    "two blocks at {start:#x}"
                );
                give_back(h);
            }
            let mut last_end = 0;
            for (&start, &end) in &ranges {
                assert!(start >= last_end, "blocks overlap at {start:#x}");
                last_end = end;
            }
            ranges
        };
        let first = round(0);
        assert_eq!(stats().2, in_use, "in-use bytes after freeing everything");
        // Every class now has a freed block on its list, so nothing is new.
        let second = round(1);
        assert!(
            second.keys().all(|start| first.contains_key(start)),
            "a freed block was not reused"
        );
        assert_eq!(stats().2, in_use);
    }

    #[test]
    fn large_blocks_past_the_dirty_limit_give_their_pages_back() {
        let _turn = lock();
        let class = DISCARD_MIN.max(DIRTY_LIMIT / 16);
        let size = class - HEADER;
        let n = DIRTY_LIMIT / class + 2;
        let held: Vec<Held> = (0..n).map(|i| take(size, 16, i as u32, 0xA5)).collect();
        for h in held {
            give_back(h);
            assert!(stats().3 <= DIRTY_LIMIT, "kept {} dirty bytes", stats().3);
        }
        // More than the limit was freed, so the last block was discarded:
        // taken again (the free list is LIFO) it reads as zero past its first
        // page, and taking it does not change the dirty count.
        let dirty = stats().3;
        let b = alloc(size, 16, 0).expect("a freed block");
        assert_eq!(stats().3, dirty, "a discarded block counted as dirty");
        // SAFETY: `size` bytes at `user` are ours; the region's memory is
        // always initialised (zero or written).
        let tail = unsafe { core::slice::from_raw_parts(b.user.add(PAGE), size - PAGE) };
        assert!(tail.iter().step_by(PAGE).all(|&x| x == 0), "pages kept");
        assert_eq!(tail[tail.len() - 1], 0);
        free(b.user);
    }

    #[test]
    fn threads_share_the_free_lists_without_sharing_a_block() {
        const THREADS: u32 = 3;
        const OPS: usize = if cfg!(miri) { 150 } else { 20_000 };
        let _turn = lock();
        let in_use = stats().2;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(t + 1));
                    let mut held: Vec<Held> = Vec::new();
                    for op in 0..OPS {
                        if held.len() < 8 && (held.is_empty() || rng.below(2) == 0) {
                            // Small classes that every thread shares, now
                            // and then an over-aligned one.
                            let size = [1, 24, 40, 100, 200][rng.below(5) as usize];
                            let align = if rng.below(8) == 0 { 256 } else { 8 };
                            let fill = (t * 64 + op as u32 % 64) as u8;
                            held.push(take(size, align, t << 24 | op as u32, fill));
                        } else {
                            let i = rng.below(held.len() as u64) as usize;
                            give_back(held.swap_remove(i));
                        }
                    }
                    held.into_iter().for_each(give_back);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker panicked");
        }
        assert_eq!(stats().2, in_use, "in-use bytes after every thread freed");
    }
}
