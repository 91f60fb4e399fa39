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

/// The address range of the executable segment of the loaded object whose
/// path ends with `name`.
#[cfg(target_os = "linux")]
pub fn code_range(name: &std::ffi::CStr) -> Option<(u64, u64)> {
    struct Find {
        name: Vec<u8>,
        found: Option<(u64, u64)>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _: libc::size_t,
        data: *mut std::ffi::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info; `data` is our `Find`.
        unsafe {
            let find = &mut *(data as *mut Find);
            let info = &*info;
            if info.dlpi_name.is_null()
                || !std::ffi::CStr::from_ptr(info.dlpi_name)
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
    unsafe { libc::dl_iterate_phdr(Some(each), &mut find as *mut Find as *mut std::ffi::c_void) };
    find.found
}
