//! The atomics every lock-free structure of this crate is built from.
//!
//! Under `--cfg loom` they come from [loom], which model-checks every
//! interleaving of the tests in `tests/loom.rs`; otherwise from `core`. The
//! live table and the stack table use only what this module exports, so the
//! code loom checks is the code that ships (crossbeam's `primitive` pattern).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Spin-wait hint; under loom, a yield so the model checker can schedule the
/// thread being waited for.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
