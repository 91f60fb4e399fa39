//! The process-wide tables, the drop counters, and the snapshot the profiler
//! reads once per period.
//!
//! The tables are created by the first sample (the first allocation that
//! crosses a thread's countdown, usually before `main`), sized by the
//! [`SamplingAllocator`](crate::SamplingAllocator) that took it, and live
//! until the process ends. Creation is a one-shot state machine: the thread
//! that wins the CAS maps the tables; any thread that samples meanwhile
//! drops its sample (counted in `dropped_not_ready`) rather than wait.

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

use crate::live::LiveTable;
use crate::stacks::{StackTable, OVERFLOW};
use crate::{region, sampler};

/// Average frames per stack the frame arena is sized for.
const ARENA_WORDS_PER_STACK: usize = 32;

pub(crate) struct Tables {
    pub(crate) live: LiveTable,
    pub(crate) stacks: StackTable,
}

static TABLES: AtomicPtr<Tables> = AtomicPtr::new(core::ptr::null_mut());
static TABLES_STATE: AtomicU8 = AtomicU8::new(0);

/// Counters of everything that did not go as planned (design rule 3).
pub(crate) struct Counters {
    pub(crate) samples: AtomicU64,
    pub(crate) dropped_table_full: AtomicU64,
    pub(crate) dropped_region: AtomicU64,
    pub(crate) dropped_not_ready: AtomicU64,
    /// Block bytes of the region held by the profiler's own memory (the
    /// unwinder's caches, see `sampler::own_memory`).
    pub(crate) own_bytes: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    samples: AtomicU64::new(0),
    dropped_table_full: AtomicU64::new(0),
    dropped_region: AtomicU64::new(0),
    dropped_not_ready: AtomicU64::new(0),
    own_bytes: AtomicU64::new(0),
};

/// The tables, once created.
#[inline]
pub(crate) fn tables() -> Option<&'static Tables> {
    // Acquire: pairs with the Release store in `tables_or_create`.
    // SAFETY: a published `Tables` is leaked and never freed.
    unsafe { TABLES.load(Ordering::Acquire).as_ref() }
}

/// The tables, created with these capacities if this is the first sample.
pub(crate) fn tables_or_create(live: u32, stacks: u32) -> Option<&'static Tables> {
    if let Some(t) = tables() {
        return Some(t);
    }
    if TABLES_STATE
        .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return tables();
    }
    let made = LiveTable::new(live).and_then(|live| {
        let stacks = StackTable::new(stacks, stacks as usize * ARENA_WORDS_PER_STACK)?;
        Some(Tables { live, stacks })
    });
    let Some(made) = made else {
        TABLES_STATE.store(2, Ordering::Relaxed);
        return None;
    };
    // The caller is inside the sampler, so this allocation is served
    // unsampled by the inner allocator.
    let ptr = Box::into_raw(Box::new(made));
    // Release: the tables' contents are visible to whoever Acquire-loads it.
    TABLES.store(ptr, Ordering::Release);
    // SAFETY: just created and leaked.
    Some(unsafe { &*ptr })
}

/// Creates the tables and reserves the region if that has not happened yet.
///
/// Called on every thread's first slow path, so in practice by the first
/// allocation of the process, before `main` and before any other thread
/// exists: the races in which a sample finds the tables or the region being
/// created by another thread (and is dropped, counted, rather than wait)
/// then cannot happen in a normal program.
#[cold]
pub(crate) fn warm_up(live: u32, stacks: u32) {
    if tables().is_some() {
        return;
    }
    if let Some(_busy) = sampler::enter() {
        tables_or_create(live, stacks);
        region::ready();
    }
}

/// Health of the sampler: how much was sampled, what was dropped and why,
/// and how full the tables are.
///
/// `#[non_exhaustive]`: counters are added as the sampler learns to count
/// more. Outside this crate, build one from [`Stats::default`] and set its
/// fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Samples taken since start (allocations, and growths by `realloc`).
    pub samples: u64,
    /// Samples that could not be kept as live records: the sum of the three
    /// `dropped_*` counters. Each still counts in the allocation totals
    /// except `dropped_not_ready`.
    pub dropped: u64,
    /// The live table was full.
    pub dropped_table_full: u64,
    /// The sampled-block region was unavailable or exhausted.
    pub dropped_region: u64,
    /// Sampled while the tables were being created or could not be mapped.
    pub dropped_not_ready: u64,
    /// Samples whose stack did not fit in the stack table (their totals are
    /// kept under the `[ferroprof: stack table full]` stack).
    pub stack_overflow_samples: u64,
    /// Live sampled blocks now, counted from the live table's slots (no
    /// counter is kept for them on the sampled path).
    pub live_blocks: u32,
    /// Capacity of the live table.
    pub live_capacity: u32,
    /// Distinct stacks stored.
    pub stacks: u32,
    /// Capacity of the stack table.
    pub stack_capacity: u32,
    /// Address space of the two tables, in bytes (pages are touched as used).
    pub table_bytes: u64,
    /// Address space reserved for sampled blocks.
    pub region_reserved: u64,
    /// Of which committed read-write.
    pub region_committed: u64,
    /// Bytes of sampled blocks handed out now (block sizes, not requests;
    /// the unwinder's caches the region also holds are in
    /// `unwind_cache_bytes`, not here).
    pub region_in_use: u64,
    /// Bytes of freed large sampled blocks kept resident for reuse.
    pub region_kept: u64,
    /// Bytes of unwind tables (`.eh_frame_hdr`, `.eh_frame`) copied out of
    /// shared libraries, so that a library unloaded while its entry is in
    /// use is never read (bounded at 64 MiB; freed once no module list in
    /// use names them).
    pub unwind_copies: u64,
    /// Times a library was left out of the stack walks' module list
    /// because copying its tables would have passed that bound.
    pub unwind_libraries_left_out: u64,
    /// Module lists the stack walks keep: the current one, and replaced
    /// ones a walk may still be using (freed as soon as none is).
    pub unwind_module_lists: u64,
    /// Frames of DWARF stack walks (the allocator's, and the CPU signal
    /// handler's) replayed from the last walk of their unwinder cache slot,
    /// or of their thread (the allocator's walks that repeat the thread's
    /// last walk whole, added in batches of up to 64 walks a thread), since
    /// start: a frame whose registers and stack words are unchanged is not
    /// unwound again.
    pub unwind_frames_replayed: u64,
    /// Frames of DWARF stack walks unwound with framehop since start.
    pub unwind_frames_unwound: u64,
    /// Memory of the DWARF walks' caches, allocated once per unwinder cache
    /// slot (at most 8 for the heap sampler, 8 for the CPU handler): the
    /// slots' memories of their last walks, mapped on their own, and
    /// framehop's rule caches and their tags, which this allocator serves
    /// from its region (block sizes; when it is the global allocator: over
    /// another one those are in that allocator's heap and not counted).
    pub unwind_cache_bytes: u64,
    /// Times the stack walks asked the loader whether modules changed
    /// (`dl_iterate_phdr`, which takes the loader's lock): for the first
    /// list, on `signal::prepare`, and after a walk ended outside every
    /// known module (JIT-compiled code, a library loaded since), at most
    /// once per 100 ms for those.
    pub unwind_loader_asks: u64,
}

/// Current statistics, without touching the stacks. Counting the live
/// blocks reads one word per live-table slot ever used at once (see
/// [`Stats::live_blocks`]), microseconds for thousands.
pub fn stats() -> Stats {
    let c = &COUNTERS;
    let (reserved, committed, in_use, kept) = region::stats();
    let (copied, left_out, lists) = crate::unwind::kept();
    let (replayed, unwound) = crate::unwind::walked_frames();
    let full = c.dropped_table_full.load(Ordering::Relaxed);
    let reg = c.dropped_region.load(Ordering::Relaxed);
    let nr = c.dropped_not_ready.load(Ordering::Relaxed);
    let own = c.own_bytes.load(Ordering::Relaxed);
    let mut s = Stats {
        samples: c.samples.load(Ordering::Relaxed),
        dropped: full + reg + nr,
        dropped_table_full: full,
        dropped_region: reg,
        dropped_not_ready: nr,
        region_reserved: reserved as u64,
        region_committed: committed as u64,
        region_in_use: (in_use as u64).saturating_sub(own),
        region_kept: kept as u64,
        unwind_copies: copied as u64,
        unwind_libraries_left_out: left_out as u64,
        unwind_module_lists: lists as u64,
        unwind_frames_replayed: replayed,
        unwind_frames_unwound: unwound,
        unwind_cache_bytes: own + crate::unwind::mapped_bytes(),
        unwind_loader_asks: crate::unwind::loader_asks(),
        ..Stats::default()
    };
    if let Some(t) = tables() {
        s.stack_overflow_samples = t.stacks.overflowed();
        s.live_blocks = t.live.len();
        s.live_capacity = t.live.capacity();
        s.stacks = t.stacks.len();
        s.stack_capacity = t.stacks.capacity();
        s.table_bytes = (t.live.footprint() + t.stacks.footprint()) as u64;
    }
    s
}

/// One stack's estimates in a [`HeapSnapshot`].
#[derive(Clone, Debug, PartialEq)]
pub struct StackSample {
    /// Stable id of the stack within this process.
    pub id: u32,
    /// Return addresses, innermost first; frame 0 is in the function that
    /// called the allocator (its `__rg_alloc`/`__rust_alloc` shims included).
    pub frames: Vec<u64>,
    /// The stack was cut at the maximum depth.
    pub truncated: bool,
    /// This is the synthetic stack for samples whose stack could not be
    /// stored (`frames` is empty).
    pub overflow: bool,
    /// Estimated objects allocated here since start.
    pub alloc_objects: f64,
    /// Estimated bytes allocated here since start.
    pub alloc_bytes: u64,
    /// Estimated objects allocated here and still live.
    pub inuse_objects: f64,
    /// Estimated bytes allocated here and still live.
    pub inuse_bytes: u64,
}

/// What the profiler reads each period: every stack with a non-zero
/// estimate, and the statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeapSnapshot {
    /// Stacks in id order.
    pub stacks: Vec<StackSample>,
    /// Sampler statistics at the time of the snapshot.
    pub stats: Stats,
    /// The mean sampling interval now (the pprof `period`).
    pub sample_interval: u64,
}

/// Takes a snapshot of cumulative and in-use estimates per stack.
///
/// Lock-free and never blocks an allocating thread; blocks freed or
/// allocated while it runs may or may not be included. The calling thread's
/// own allocations are not sampled while it runs.
pub fn snapshot() -> HeapSnapshot {
    let _busy = sampler::enter();
    let mut snap = HeapSnapshot {
        stacks: Vec::new(),
        stats: stats(),
        sample_interval: sampler::mean(),
    };
    let Some(t) = tables() else {
        return snap;
    };
    // In-use sums per stack id; the last entry is the overflow stack.
    let cap = t.stacks.capacity() as usize;
    let mut inuse = vec![(0u64, 0u64); cap + 1];
    t.live.for_each(|rec| {
        let i = if rec.stack == OVERFLOW {
            cap
        } else {
            (rec.stack as usize).min(cap)
        };
        inuse[i].0 += rec.weight_bytes;
        inuse[i].1 += rec.weight_objects;
    });
    let scale = sampler::OBJECT_SCALE as f64;
    let mut push = |id: u32, view: crate::stacks::StackView, (ib, io): (u64, u64)| {
        if view.alloc_bytes == 0 && view.alloc_objects == 0 && ib == 0 && io == 0 {
            return;
        }
        snap.stacks.push(StackSample {
            id,
            overflow: id == OVERFLOW,
            frames: view.frames,
            truncated: view.truncated,
            alloc_objects: view.alloc_objects as f64 / scale,
            alloc_bytes: view.alloc_bytes,
            inuse_objects: io as f64 / scale,
            inuse_bytes: ib,
        });
    };
    for id in t.stacks.ids() {
        if let Some(view) = t.stacks.get(id) {
            push(id, view, inuse[id as usize]);
        }
    }
    if let Some(view) = t.stacks.get(OVERFLOW) {
        push(OVERFLOW, view, inuse[cap]);
    }
    snap
}
