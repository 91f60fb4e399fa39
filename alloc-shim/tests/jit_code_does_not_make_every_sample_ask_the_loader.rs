//! A process that runs JIT-compiled code (a JavaScript or WebAssembly
//! engine, say) has stacks whose walks end in memory no module covers.
//! Such an end is also what a library loaded since the last module list
//! looks like, so the walk asks the loader whether modules changed; that
//! takes the loader's lock and ~170 ns, and must not happen at every
//! sample: at most once per 100 ms.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::alloc::System;
use std::time::Instant;

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

/// "JIT-compiled" code: calls the function its first argument points to,
/// then returns (`sub rsp, 8; call rdi; add rsp, 8; ret`), with no unwind
/// tables, in an anonymous mapping.
const CODE: [u8; 11] = [
    0x48, 0x83, 0xEC, 0x08, 0xFF, 0xD7, 0x48, 0x83, 0xC4, 0x08, 0xC3,
];

type Jitted = unsafe extern "C" fn(extern "C" fn());

/// Maps [`CODE`] executable; returns it and the page's address range.
fn jit() -> (Jitted, std::ops::Range<u64>) {
    // SAFETY: a fresh private anonymous page, written before it is made
    // executable, then only executed (never unmapped: the test's lifetime).
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), page.cast::<u8>(), CODE.len());
        assert_eq!(
            libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        let start = page as u64;
        (
            std::mem::transmute::<*mut libc::c_void, Jitted>(page),
            start..start + 4096,
        )
    }
}

/// Called from the JIT code: one sampled allocation (interval 1).
extern "C" fn allocate_from_jit() {
    std::hint::black_box(Box::new([1u8; 64]));
}

#[test]
fn samples_through_jit_code_ask_the_loader_at_most_once_a_period() {
    let (call, page) = jit();
    ferroprof_alloc::set_sample_interval(1);
    // SAFETY: `CODE` calls a valid `extern "C" fn()` with an aligned stack.
    unsafe { call(allocate_from_jit) };
    let before = ferroprof_alloc::stats();
    let start = Instant::now();
    for _ in 0..2000 {
        // SAFETY: as above.
        unsafe { call(allocate_from_jit) };
    }
    let elapsed = start.elapsed();
    let after = ferroprof_alloc::stats();
    ferroprof_alloc::set_sample_interval(ferroprof_alloc::DEFAULT_SAMPLE_INTERVAL);
    let samples = after.samples - before.samples;
    assert!(samples >= 2000, "{samples} samples");
    // The walks reached the JIT code (and ended there).
    let snap = ferroprof_alloc::snapshot();
    let through_jit = snap
        .stacks
        .iter()
        .filter(|s| s.frames.iter().any(|f| page.contains(f)))
        .count();
    assert!(through_jit > 0, "no stack reached the JIT page");
    // One ask per 100 ms begun while the loop ran, and one more for a
    // period that began just before it.
    let asks = after.unwind_loader_asks - before.unwind_loader_asks;
    let periods = elapsed.as_millis() as u64 / 100 + 1;
    assert!(
        asks <= periods + 1,
        "{asks} loader asks for {samples} samples in {elapsed:?}"
    );
}
