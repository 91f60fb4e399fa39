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

use std::ffi::{c_void, CStr};

use ferroprof_alloc::signal::{capture, prepare, Registers};

/// Libraries of Debian's `libc6` and `zlib1g` (both always installed) that a
/// Rust test binary does not load by itself.
const CANDIDATES: [&CStr; 4] = [
    c"libz.so.1",
    c"libresolv.so.2",
    c"libanl.so.1",
    c"libutil.so.1",
];

/// The address range of the executable segment of the loaded object whose
/// path ends with `name`.
fn code_range(name: &CStr) -> Option<(u64, u64)> {
    struct Find {
        name: Vec<u8>,
        found: Option<(u64, u64)>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info; `data` is our `Find`.
        unsafe {
            let find = &mut *(data as *mut Find);
            let info = &*info;
            if info.dlpi_name.is_null()
                || !CStr::from_ptr(info.dlpi_name)
                    .to_bytes()
                    .ends_with(&find.name)
            {
                return 0;
            }
            let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            for p in phdrs {
                if p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0 {
                    let start = info.dlpi_addr + p.p_vaddr;
                    find.found = Some((start, start + p.p_memsz));
                    return 1;
                }
            }
        }
        0
    }
    let mut find = Find {
        name: name.to_bytes().to_vec(),
        found: None,
    };
    // SAFETY: the callback writes only through `data`, our `Find`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut find as *mut Find as *mut c_void) };
    find.found
}

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
