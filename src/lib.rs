//! ferroprof: an in-process continuous profiler for Rust services.
//!
//! Swap in the sampling allocator, start the profiler, and every period
//! (60 s) it collects a CPU profile (`cpu.pprof`), a heap and allocation
//! profile (`delta-heap.pprof`) and jemalloc's statistics (`metrics.json`),
//! and sends them to a Datadog agent (or the agentless intake), and/or
//! writes them to a folder, in the format of Datadog's Go profiler.
//!
//! # Quick start
//!
//! Turn it on with a cargo feature of your own (`profiling = ["dep:ferroprof"]`):
//!
//! ```no_run
//! #[cfg_attr(feature = "profiling", global_allocator)]
//! static GLOBAL: ferroprof::SamplingAllocator =
//!     ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);
//!
//! fn main() -> Result<(), ferroprof::Error> {
//!     let profiler = ferroprof::Profiler::builder()
//!         .service("checkout")
//!         .env("prod")
//!         .version("1.4.2")
//!         .tags(["team:payments"])
//!         .start()?;
//!     // ... the service runs ...
//!     profiler.stop(); // sends the last, partial period; dropping does too
//!     Ok(())
//! }
//! ```
//!
//! Every builder option has a `DD_*` environment variable (the builder
//! wins, then the environment, then the default; see [`ProfilerBuilder`]).
//! A malformed value is an [`Error`] from `start()` naming the variable and
//! the value. `DD_PROFILING_ENABLED=false` makes `start()` a no-op. With no
//! agent around, `DD_PROFILING_OUTPUT_DIR=profiles` (or
//! [`ProfilerBuilder::output_dir`]) writes every batch to
//! `profiles/<UTC time>/`, ready for `go tool pprof`.
//!
//! The profiler runs on its own thread, `ferroprof`, with its own
//! current-thread tokio runtime: it works the same with or without tokio in
//! the application. Uploads never block collection or the application: at
//! most 5 batches wait, the oldest is dropped (and counted) when full.
//! [`Profiler::stats`] and a [`StatsdClient`] report what it did and what it
//! dropped.
//!
//! # The parts
//!
//! Each part is usable on its own: [`heap::HeapProfiler`] builds heap
//! profiles from the allocator's samples, [`cpu::CpuProfiler`] runs the
//! SIGPROF sampler, [`pprof`] encodes, decodes, symbolizes and computes
//! deltas, [`metrics::RuntimeMetrics`] reads jemalloc's statistics.
//!
//! # Platforms
//!
//! Linux on x86_64 and aarch64 profile fully, and are the only targets
//! tested. Elsewhere the crate is meant to compile with profiling reduced
//! to what needs no Linux: the allocator counts samples without stacks,
//! there is no CPU profile (`start()` says so), batches still carry the
//! heap totals and `metrics.json`.
//!
//! # Supported Rust versions
//!
//! Rust 1.88 or newer (the `rust-version` of the crate, the newest any
//! of its dependencies on Linux asks for).
//!
//! # Feature flags
//!
//! - `heap` (default): [`SamplingAllocator`] samples allocations. Without it
//!   it forwards every call to the inner allocator unchanged.
//! - `cpu` (default): the SIGPROF CPU profiler, [`cpu::CpuProfiler`] (Linux
//!   on x86_64 and aarch64; elsewhere the module is absent and no CPU
//!   profile is sent).
//! - `cli` (off): `ferroprof::view`, top tables and flamegraph SVGs of any pprof
//!   file, and the `ferroprof` command (`ferroprof top FILE`,
//!   `ferroprof flamegraph FILE -o out.svg`). A service does not need it.

pub use ferroprof_alloc::{Jemalloc, SamplingAllocator};

/// The sampling allocator's own API: interval, snapshot, statistics.
pub use ferroprof_alloc as alloc;

pub use config::ApiKey;
pub use metrics::{SelfStats, StatsdClient};
pub use profiler::{Profiler, ProfilerBuilder};

use std::fmt;

pub mod config;
// `build.rs` sets `ferroprof_cpu` for the `cpu` feature on Linux x86_64
// and aarch64.
#[cfg(ferroprof_cpu)]
pub mod cpu;
mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod heap;
pub mod metrics;
pub mod pprof;
mod profiler;
#[cfg(feature = "cli")]
pub mod view;

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
    /// An API key is missing or malformed where it is needed: agentless
    /// uploads without a well-formed `DD_API_KEY`, or a malformed key given
    /// to the builder's `api_key` (a malformed `DD_API_KEY` with an agent is
    /// only a warning: the agent never gets it). The key is never shown.
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
                "an API key is 32 lowercase letters and digits (agentless uploads need one); \
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
