//! The sampled-block region: where every sampled allocation lives.
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
//! race) always reads mapped memory; the tag makes its CAS fail.

use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

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
const DIRTY_LIMIT: usize = 64 << 20;
const OFFSET_BITS: u32 = 37;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// Marks a header as ours; a header without it means memory corruption.
const MAGIC: u64 = 0xFE44_0000;
const MAGIC_MASK: u64 = 0xFFFF_0000;

/// log2 of the region's size and alignment: 1 TiB.
const WINDOW_SHIFT: u32 = 40;
const WINDOW: usize = 1 << WINDOW_SHIFT;

/// Where the region is: `base >> WINDOW_SHIFT` once reserved (the base is
/// `tag << WINDOW_SHIFT`, the length [`WINDOW`]); `usize::MAX`, which no
/// pointer shifted right by 40 can equal, before. Written once (by the
/// thread that reserves it) and read by every `dealloc`; on its own cache
/// line so that no write to any other state ever invalidates it.
#[repr(C, align(128))]
struct Tag(AtomicUsize);

static TAG: Tag = Tag(AtomicUsize::new(usize::MAX));

/// The region's first byte; only meaningful once it is reserved.
fn base() -> usize {
    TAG.0.load(Ordering::Relaxed) << WINDOW_SHIFT
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
    (ptr as usize >> WINDOW_SHIFT) == TAG.0.load(Ordering::Relaxed)
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
            TAG.0.store(base >> WINDOW_SHIFT, Ordering::Relaxed);
            // Release: pairs with the Acquire loads of `init` above, so a
            // thread that sees READY sees the tag.
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
    Some(Block {
        user: user as *mut u8,
    })
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
    // blocks and leads are multiples of 16. The region is never unmapped, so
    // the references stay valid; atomics make the Treiber race benign.
    unsafe {
        (
            &*((user - 16) as *const AtomicU64),
            &*((user - 8) as *const AtomicU64),
        )
    }
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
    let (w0, w1) = header_words(user as usize);
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
    write_header(user as usize, h.lead, h.shift, slot);
}

/// Returns a block to its class.
pub(crate) fn free(user: *mut u8) {
    let h = header(user);
    let start = user as usize - h.lead;
    let class = 1usize << h.shift;
    // Clear the magic so a double free is caught rather than corrupting lists.
    header_words(user as usize).1.store(0, Ordering::Relaxed);
    STATE.in_use.fetch_sub(class, Ordering::Relaxed);
    if class >= DISCARD_MIN {
        let kept = STATE.dirty.fetch_add(class, Ordering::Relaxed) + class;
        if kept > DIRTY_LIMIT {
            STATE.dirty.fetch_sub(class, Ordering::Relaxed);
            // SAFETY: the block is committed and freed; its first page keeps
            // the free-list link, the rest is no one's.
            unsafe { crate::sys::discard(start + PAGE, class - PAGE) };
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
    // and unused while the block is free.
    let w = unsafe { &*((start + 8) as *const AtomicU64) };
    w.store(dirty as u64, Ordering::Relaxed);
}

fn link(start: usize) -> &'static AtomicU64 {
    // SAFETY: `start` is a committed, 16-aligned block start in the region,
    // which is never unmapped.
    unsafe { &*(start as *const AtomicU64) }
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
                    let w = unsafe { &*((start + 8) as *const AtomicU64) };
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
        if !unsafe { crate::sys::commit(base + done, target - done) } {
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
