//! The CPU profiler: per-thread CPU-time timers deliver `SIGPROF` to the
//! thread that used the CPU; an async-signal-safe handler walks the
//! interrupted stack into a pre-allocated lock-free ring; once per period
//! the profiler thread drains the ring into `cpu.pprof`.
//!
//! This is being built (issue 4): today it has the timers and the
//! aggregation into pprof.

mod profile;
mod ring;
mod timer;

pub use profile::{Aggregator, DROPPED_FRAME, NOT_WALKED_FRAME, SAMPLE_TYPES, TRUNCATED_FRAME};
pub use ring::{
    Record, Ring, Slot, DEFAULT_CAPACITY, FLAG_NOT_WALKED, FLAG_TRUNCATED, MAX_CAPACITY,
    MAX_FRAMES, RESERVE_ATTEMPTS,
};
pub use timer::{expirations, SyncStats, TimerError, TimerMode, Timers};
