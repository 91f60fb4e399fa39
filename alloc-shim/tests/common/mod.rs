//! Helpers shared by the integration tests: find a test's own stacks in a
//! snapshot by the name of a function on them.

#![allow(dead_code)]

use ferroprof_alloc::{HeapSnapshot, StackSample};

/// Symbol names of a stack's frames (inline chains expanded), innermost first.
pub fn names(frames: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    for &f in frames {
        backtrace::resolve(
            (f.saturating_sub(1)) as usize as *mut std::ffi::c_void,
            |s| {
                out.push(s.name().map(|n| format!("{n:#}")).unwrap_or_default());
            },
        );
    }
    out
}

/// The stacks of `snap` on which a function whose name contains `marker`
/// appears.
pub fn stacks_through<'a>(snap: &'a HeapSnapshot, marker: &str) -> Vec<&'a StackSample> {
    snap.stacks
        .iter()
        .filter(|s| names(&s.frames).iter().any(|n| n.contains(marker)))
        .collect()
}

/// Sums (alloc_bytes, alloc_objects, inuse_bytes, inuse_objects) over the
/// stacks through `marker`.
pub fn totals(snap: &HeapSnapshot, marker: &str) -> (u64, f64, u64, f64) {
    stacks_through(snap, marker)
        .iter()
        .fold((0, 0.0, 0, 0.0), |acc, s| {
            (
                acc.0 + s.alloc_bytes,
                acc.1 + s.alloc_objects,
                acc.2 + s.inuse_bytes,
                acc.3 + s.inuse_objects,
            )
        })
}

/// Tests of one binary that change the process-wide sampling interval take
/// this lock, so they can run on the default parallel test harness.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SERIAL`], surviving a previous test's panic.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Allocates `size` bytes `n` calls deep (each level its own frame, and no
/// tail call, so every level is on the sampled stack).
#[inline(never)]
pub fn deep(n: usize, size: usize) -> Vec<u8> {
    if n == 0 {
        return std::hint::black_box(vec![1u8; size]);
    }
    let v = deep(n - 1, size);
    std::hint::black_box(v)
}
