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

pub use config::ApiKey;
pub use metrics::{SelfStats, StatsdClient};
pub use profiler::{Profiler, ProfilerBuilder};

use std::fmt;

pub mod config;
// `build.rs` sets `ferroprof_cpu` for the `cpu` feature on Linux x86_64
// and aarch64 (not under loom).
#[cfg(ferroprof_cpu)]
pub mod cpu;
#[cfg(not(loom))]
mod export;
#[cfg(not(loom))]
pub mod heap;
#[cfg(not(loom))]
pub mod metrics;
pub mod pprof;
#[cfg(not(loom))]
mod profiler;

/// A kind of profile the profiler collects each period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProfileType {
    /// `cpu.pprof`: where threads spent CPU time (SIGPROF sampling).
    Cpu,
    /// `delta-heap.pprof` (or `heap.pprof` without deltas): allocations in
    /// the period and the heap in use at its end.
    Heap,
    /// `metrics.json`: jemalloc's statistics and the allocation rate.
    /// Always collected.
    Metrics,
}

/// Why the profiler could not start.
///
/// No variant ever contains an API key.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable has a value that does not parse.
    Env {
        /// The variable, e.g. `DD_PROFILING_UPLOAD_TIMEOUT`.
        variable: &'static str,
        /// Its value, as found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A builder option has a value that cannot work.
    Option {
        /// The builder method, e.g. `upload_timeout`.
        option: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Agentless uploads need a well-formed API key, and the one from
    /// `variable` is missing or malformed. The key itself is never shown.
    ApiKey {
        /// Where the key was looked for: `DD_API_KEY` or the builder's
        /// `api_key`.
        variable: &'static str,
    },
    /// `start()` was called while a profiler is running.
    AlreadyRunning,
    /// Something the profiler needs could not be set up: the CPU profiler,
    /// the output folder, the HTTP client or the profiler thread.
    Start {
        /// What could not be set up.
        what: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Env {
                variable,
                value,
                reason,
            } => write!(f, "{variable}={value:?} {reason}"),
            Error::Option {
                option,
                value,
                reason,
            } => {
                write!(f, "ferroprof option {option}({value}) {reason}")
            }
            Error::ApiKey { variable } => write!(
                f,
                "agentless uploads need an API key of 32 lowercase letters and digits; \
                 {variable} is missing or malformed (its value is not shown)"
            ),
            Error::AlreadyRunning => {
                f.write_str("a ferroprof profiler is already running in this process")
            }
            Error::Start { what, source } => {
                write!(f, "could not start ferroprof: {what}: {source}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Start { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
