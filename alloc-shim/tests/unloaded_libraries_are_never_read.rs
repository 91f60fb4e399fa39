//! A library unloaded (`dlclose`) while a module list naming it is still in
//! use is never read: a stack walk whose frame falls where that library was
//! finishes, it does not fault.
//!
//! Module lists are rebuilt only when a walk or `signal::prepare` notices the
//! loader's counters moved, and the SIGPROF handler never rebuilds one, so
//! the handler walks with a list made before the last `dlclose`. This was
//! seen killing `tests/cpu_sampling_survives_stress.rs`: the handler
//! interrupted a library loaded again at a lower address, found the stale
//! entry of its earlier load covering the pc, and read that entry's
//! `.eh_frame_hdr`, unmapped since (SIGSEGV). Here the same happens
//! deterministically: publish a list naming a library, unload it, walk from
//! a pc inside it. Before shared libraries' tables were copied, this process
//! died in the walk.

#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod common;

use std::ffi::CStr;

use common::code_range;
use ferroprof_alloc::signal::{capture, prepare, Registers};

/// Libraries of Debian's `libc6` and `zlib1g` (both always installed) that a
/// Rust test binary does not load by itself.
const CANDIDATES: [&CStr; 4] = [
    c"libz.so.1",
    c"libresolv.so.2",
    c"libanl.so.1",
    c"libutil.so.1",
];

/// Whether `[start, end)` overlaps any mapping of this process.
fn mapped(start: u64, end: u64) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            return false;
        };
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        a < end && start < b
    })
}

#[inline(never)]
fn walk_from(pc: u64) -> usize {
    let local = 0u64;
    let sp = std::hint::black_box(&local) as *const u64 as u64 & !7;
    let regs = Registers {
        pc,
        sp,
        fp: 0,
        lr: 0,
    };
    let mut buf = [0u64; 64];
    capture(&regs, &mut buf).frames
}

#[test]
fn a_walk_through_an_unloaded_library_does_not_fault() {
    let mut tried = Vec::new();
    for name in CANDIDATES {
        // SAFETY: plain dlopen calls; RTLD_NOLOAD only asks.
        let already =
            unsafe { !libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD).is_null() };
        if already {
            tried.push(format!("{name:?}: already loaded"));
            continue;
        }
        // SAFETY: loading a system library runs its constructors; these
        // libraries' only set up their own state.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            tried.push(format!("{name:?}: not found"));
            continue;
        }
        let (start, end) = code_range(name).expect("a loaded library has code");
        // The list the handler will use names the library.
        prepare();
        // SAFETY: nothing of the library is in use.
        assert_eq!(unsafe { libc::dlclose(handle) }, 0);
        if mapped(start, end) {
            tried.push(format!("{name:?}: still mapped after dlclose"));
            continue;
        }
        // A pc where its code was: the stale entry covers it.
        let pc = start + (end - start) / 2;
        let frames = walk_from(pc);
        assert!(frames >= 1, "the walk records at least the pc");
        let stats = ferroprof_alloc::stats();
        assert!(
            stats.unwind_copies > 0,
            "the library's tables were copied: {stats:?}"
        );
        eprintln!(
            "{name:?} at {start:#x}..{end:#x}, unloaded: walk from {pc:#x} recorded {frames} \
             frame(s); {} bytes of unwind tables copied",
            stats.unwind_copies
        );
        return;
    }
    panic!("no candidate library could be loaded and unloaded ({CANDIDATES:?}): {tried:?}");
}
