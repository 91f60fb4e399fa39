//! ferroprof: an in-process continuous profiler for Rust services.
//!
//! This crate is being built issue by issue; today it provides the sampling
//! allocator. Install it as your global allocator, behind a feature of your
//! own:
//!
//! ```no_run
//! #[cfg_attr(feature = "profiling", global_allocator)]
//! static GLOBAL: ferroprof::SamplingAllocator =
//!     ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);
//! ```
//!
//! # Feature flags
//!
//! - `heap` (default): [`SamplingAllocator`] samples allocations. Without it
//!   it forwards every call to the inner allocator unchanged.
//! - `cpu` (default): the SIGPROF CPU profiler (not yet built).

pub use ferroprof_alloc::{Jemalloc, SamplingAllocator};

/// The sampling allocator's own API: interval, snapshot, statistics.
pub use ferroprof_alloc as alloc;

pub mod heap;
pub mod pprof;
