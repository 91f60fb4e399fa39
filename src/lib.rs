//! ferroprof: an in-process continuous profiler for Rust services.
//!
//! This crate is being built issue by issue; today it provides the sampling
//! allocator, the heap profile built from it (pprof, symbolized, with
//! deltas) and the CPU profiler's parts (per-thread CPU timers, an
//! async-signal-safe `SIGPROF` handler, `cpu.pprof`). Install the allocator as your global allocator, behind a feature
//! of your own:
//!
//! ```no_run
//! #[cfg_attr(feature = "profiling", global_allocator)]
//! static GLOBAL: ferroprof::SamplingAllocator =
//!     ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);
//! ```
//!
//! Once per period, [`heap::HeapProfiler::collect`] turns what it sampled
//! into a pprof heap profile (the change in allocations since the last
//! period, the in-use heap now) and [`pprof::encode`] into the bytes pprof
//! and Datadog read:
//!
//! ```no_run
//! let mut heap = ferroprof::heap::HeapProfiler::new();
//! let mut symbols = ferroprof::pprof::Symbolizer::default();
//! // ... one period later:
//! let bytes = ferroprof::pprof::encode(&heap.collect(&mut symbols));
//! std::fs::write("heap.pprof", bytes)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Feature flags
//!
//! - `heap` (default): [`SamplingAllocator`] samples allocations. Without it
//!   it forwards every call to the inner allocator unchanged.
//! - `cpu` (default): the SIGPROF CPU profiler, [`cpu::CpuProfiler`] (Linux
//!   on x86_64 and aarch64; elsewhere the module is absent).

pub use ferroprof_alloc::{Jemalloc, SamplingAllocator};

/// The sampling allocator's own API: interval, snapshot, statistics.
pub use ferroprof_alloc as alloc;

#[cfg(all(
    feature = "cpu",
    not(loom),
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub mod cpu;
#[cfg(not(loom))]
pub mod heap;
pub mod pprof;
