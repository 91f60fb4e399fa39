//! ferroprof's sampling global allocator.
//!
//! [`SamplingAllocator`] wraps any [`GlobalAlloc`] (jemalloc by default) and
//! samples the bytes allocated through it by Poisson sampling: on average
//! one sample per [`sample_interval`] bytes (512 KiB by default), each sample
//! weighted so that sums are unbiased estimates of what was really allocated
//! and what is still in use. The profiler (crate `ferroprof`) reads them
//! through [`snapshot`]; nothing here knows about pprof, symbols or I/O.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: ferroprof_alloc::SamplingAllocator =
//!     ferroprof_alloc::SamplingAllocator::new(ferroprof_alloc::Jemalloc);
//! ```
//!
//! # How it is built (the pipeline)
//!
//! - [`sampler`](crate::set_sample_interval): a per-thread byte countdown; the
//!   fast path of `alloc` is one thread-local subtract and one branch.
//! - `unwind`: on a sample, raw return addresses (DWARF via framehop, or frame
//!   pointers), read only from the current thread's stack.
//! - [`stacks::StackTable`]: interns each stack once, keeps cumulative totals.
//! - `region`: every sampled block is served from one reserved address
//!   1 TiB-aligned range, so `dealloc` of a non-sampled block compares
//!   `ptr >> 40` with one word set at start-up: no header, no shared write.
//! - [`live::LiveTable`]: one record per live sampled block, found through
//!   the block's header in O(1), lock-free.
//!
//! Nothing blocks and nothing grows: when a table is full the sample is
//! still counted in the cumulative totals and [`Stats`] says how many were
//! dropped.
//!
//! # Feature flags
//!
//! - `heap` (default): sample. Without it, [`SamplingAllocator`] forwards
//!   each call to the inner allocator and adds no instruction.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Without `heap` the sampler is compiled (its API stays callable and
// `snapshot` returns nothing) but never reached from the allocator.
#![cfg_attr(not(feature = "heap"), allow(dead_code, unused_imports))]

use core::alloc::GlobalAlloc;
#[cfg(any(not(feature = "heap"), loom))]
use core::alloc::Layout;

/// Fork-handler registration shared by ferroprof's parts (not a user API).
#[cfg(not(loom))]
#[doc(hidden)]
pub mod atfork;
pub mod live;
mod primitive;
#[cfg(not(loom))]
mod region;
#[cfg(not(loom))]
mod sampler;
pub mod stacks;
mod storage;
#[cfg(not(loom))]
mod sys;
#[cfg(all(test, not(loom)))]
mod testing;
#[cfg(not(loom))]
mod unwind;

#[cfg(all(feature = "heap", not(loom)))]
mod allocator;
#[cfg(not(loom))]
mod global;

/// The loom build (`--cfg loom`) model-checks the tables only and builds no
/// jemalloc: the default inner allocator is then the system's.
#[cfg(loom)]
pub use std::alloc::System as Jemalloc;
#[cfg(not(loom))]
pub use tikv_jemallocator::Jemalloc;

#[cfg(not(loom))]
pub use global::{snapshot, stats, HeapSnapshot, StackSample, Stats};
#[cfg(not(loom))]
pub use sampler::DEFAULT_SAMPLE_INTERVAL;
/// Stack walks from a signal handler, for the CPU profiler (Linux).
#[cfg(all(
    not(loom),
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub use unwind::signal;
#[cfg(not(loom))]
pub use unwind::{UnwindMode, DEFAULT_MAX_FRAMES, MAX_FRAMES_LIMIT};

/// Default number of live sampled blocks the live table holds.
pub const DEFAULT_LIVE_CAPACITY: u32 = 1 << 17;
/// Default number of distinct stacks the stack table holds.
pub const DEFAULT_STACK_CAPACITY: u32 = 1 << 16;

/// A [`GlobalAlloc`] that samples the allocations it forwards to `A`.
///
/// Install it as the `#[global_allocator]`, ideally behind a cargo feature of
/// your own so that profiling is a build choice:
///
/// ```no_run
/// #[cfg_attr(feature = "profiling", global_allocator)]
/// static GLOBAL: ferroprof_alloc::SamplingAllocator =
///     ferroprof_alloc::SamplingAllocator::new(ferroprof_alloc::Jemalloc);
/// ```
///
/// It works over any allocator, `std::alloc::System` included. Sampling
/// starts with the first allocation of the process, before `main`, at the
/// default interval; the table capacities are fixed by the first sample.
pub struct SamplingAllocator<A: GlobalAlloc = Jemalloc> {
    inner: A,
    #[cfg_attr(not(feature = "heap"), allow(dead_code))]
    capacities: Capacities,
    /// The sampled-block region's tag (see `region::contains`) once this
    /// allocator has handed out a block of it, `usize::MAX` (which no
    /// pointer's tag equals) before. A copy in `self`, so that `dealloc`
    /// compares with a field of the user's own static rather than a static
    /// of this crate, which position-independent code reaches through the
    /// GOT (one load more on every `dealloc`).
    #[cfg_attr(any(not(feature = "heap"), loom), allow(dead_code))]
    region_tag: TagCopy,
}

/// [`SamplingAllocator::region_tag`]: alone in 128 bytes (a cache line, or
/// the pair the processor may fetch together), so that no write to the
/// wrapped allocator's state or to another static of the user's makes
/// every `dealloc` miss.
#[repr(align(128))]
struct TagCopy(core::sync::atomic::AtomicUsize);

impl core::ops::Deref for TagCopy {
    type Target = core::sync::atomic::AtomicUsize;

    fn deref(&self) -> &core::sync::atomic::AtomicUsize {
        &self.0
    }
}

/// Sizes of the tables, fixed when the first sample is taken.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "heap"), allow(dead_code))]
struct Capacities {
    live: u32,
    stacks: u32,
}

impl<A: GlobalAlloc> SamplingAllocator<A> {
    /// Wraps `inner` with the default table capacities
    /// ([`DEFAULT_LIVE_CAPACITY`] live blocks, [`DEFAULT_STACK_CAPACITY`]
    /// stacks).
    pub const fn new(inner: A) -> Self {
        SamplingAllocator {
            inner,
            capacities: Capacities {
                live: DEFAULT_LIVE_CAPACITY,
                stacks: DEFAULT_STACK_CAPACITY,
            },
            region_tag: TagCopy(core::sync::atomic::AtomicUsize::new(usize::MAX)),
        }
    }

    /// Room for `blocks` live sampled blocks (at least 1). At the default
    /// interval a table of N blocks covers about N × 512 KiB of live heap in
    /// small objects; past that, samples are counted as dropped.
    pub const fn with_live_capacity(mut self, blocks: u32) -> Self {
        self.capacities.live = if blocks == 0 { 1 } else { blocks };
        self
    }

    /// Room for `stacks` distinct stacks (rounded up to a power of two).
    pub const fn with_stack_capacity(mut self, stacks: u32) -> Self {
        self.capacities.stacks = if stacks < 2 { 2 } else { stacks };
        self
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

#[cfg(any(not(feature = "heap"), loom))]
// SAFETY: every method forwards to `inner` unchanged, so `inner`'s contract
// is ours.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SamplingAllocator<A> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

/// Sets the mean number of bytes between samples: 0 turns sampling off, 1
/// samples every allocation with its exact size.
///
/// Takes effect at once on the calling thread, and on every other thread at
/// its next sampling point (or, while sampling was off, within 256 KiB of its
/// allocations). Samples already taken keep the interval they were drawn
/// with, so estimates stay unbiased across changes.
#[cfg(not(loom))]
pub fn set_sample_interval(bytes: u64) {
    sampler::set_mean(bytes);
}

/// Restarts the calling thread's sampling generator from `seed` (any value;
/// 0 is mapped to 1) and draws its next sampling point, so that a test can
/// replay exactly the same samples. Other threads are not affected.
#[cfg(not(loom))]
pub fn reseed_this_thread(seed: u64) {
    sampler::reseed(seed);
}

/// The mean number of bytes between samples (0: off).
#[cfg(not(loom))]
pub fn sample_interval() -> u64 {
    sampler::mean()
}

/// Sets the deepest stack kept at a sample (1 to [`MAX_FRAMES_LIMIT`];
/// default [`DEFAULT_MAX_FRAMES`]); returns the value in effect. Deeper
/// stacks keep their innermost frames and are marked truncated.
#[cfg(not(loom))]
pub fn set_max_frames(frames: usize) -> usize {
    unwind::set_max_frames(frames)
}

/// Chooses how stacks are walked (see [`UnwindMode`]).
#[cfg(not(loom))]
pub fn set_unwind_mode(mode: UnwindMode) {
    unwind::set_mode(mode);
}

/// Whether this platform can capture stacks (Linux on x86_64 and aarch64).
/// Elsewhere samples are still counted but carry no frames.
#[cfg(not(loom))]
pub const STACKS_SUPPORTED: bool = unwind::SUPPORTED;
