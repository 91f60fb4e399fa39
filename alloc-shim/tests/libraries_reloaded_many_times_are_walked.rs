//! A process that loads and unloads libraries without end keeps walking
//! through the libraries it loads, and keeps a bounded number of module
//! lists and unwind-table copies.
//!
//! Stack walks use a module list built from the loader's view; a list
//! replaced after a `dlopen` or `dlclose` may still be in use by a walk on
//! another thread (or a signal handler), so it can only be freed once no
//! walk holds it. Here 600 rounds load a library, publish a list naming it
//! and unload it; then a library loaded afterwards calls back into this
//! test (zlib's allocation callback), and the sampled allocation's stack
//! must run through zlib's frames into the test function that called zlib.

#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod common;

use std::alloc::{Layout, System};
use std::ffi::{c_void, CStr};

use common::{code_range, names};
use ferroprof_alloc::signal::prepare;
use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Libraries of Debian's `libc6` that a Rust test binary does not load by
/// itself, cycled through so that loads land at different addresses.
const CYCLED: [&CStr; 3] = [c"libresolv.so.2", c"libanl.so.1", c"libutil.so.1"];
/// zlib (Debian's `zlib1g`, always installed): it calls back into us.
const ZLIB: &CStr = c"libz.so.1";
const ROUNDS: usize = 600;

/// zlib's `z_stream` on LP64 targets (zlib.h), 112 bytes.
#[repr(C)]
struct ZStream {
    next_in: *const u8,
    avail_in: u32,
    total_in: u64,
    next_out: *mut u8,
    avail_out: u32,
    total_out: u64,
    msg: *const u8,
    state: *mut c_void,
    zalloc: unsafe extern "C" fn(*mut c_void, u32, u32) -> *mut c_void,
    zfree: unsafe extern "C" fn(*mut c_void, *mut c_void),
    opaque: *mut c_void,
    data_type: i32,
    adler: u64,
    reserved: u64,
}

/// Bytes before each block zlib gets from us: its size, for `zfree`.
const HEADER: usize = 16;

/// zlib's allocation callback: a Rust allocation, so it goes through the
/// sampling allocator with zlib's frames on the stack.
unsafe extern "C" fn zalloc(_: *mut c_void, items: u32, size: u32) -> *mut c_void {
    let bytes = HEADER + items as usize * size as usize;
    let layout = Layout::from_size_align(bytes, HEADER).expect("a small layout");
    // SAFETY: a non-zero size; the size is stored for `zfree`.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return p.cast();
        }
        (p as *mut usize).write(bytes);
        p.add(HEADER).cast()
    }
}

unsafe extern "C" fn zfree(_: *mut c_void, block: *mut c_void) {
    // SAFETY: `block` came from `zalloc`, which stored its size before it.
    unsafe {
        let p = (block as *mut u8).sub(HEADER);
        let bytes = (p as *const usize).read();
        std::alloc::dealloc(p, Layout::from_size_align_unchecked(bytes, HEADER));
    }
}

type DeflateInit = unsafe extern "C" fn(*mut ZStream, i32, *const u8, i32) -> i32;
type DeflateEnd = unsafe extern "C" fn(*mut ZStream) -> i32;

/// Calls zlib's `deflateInit_` (which allocates through [`zalloc`]) and
/// keeps the stream's blocks live until `deflateEnd`, after `f` ran.
#[inline(never)]
fn deflate_init_from_the_test(zlib: *mut c_void, f: impl FnOnce()) {
    // SAFETY: symbols of the loaded zlib with their zlib.h signatures.
    let (init, end): (DeflateInit, DeflateEnd) = unsafe {
        let init = libc::dlsym(zlib, c"deflateInit_".as_ptr());
        let end = libc::dlsym(zlib, c"deflateEnd".as_ptr());
        assert!(!init.is_null() && !end.is_null(), "zlib exports deflate");
        (
            std::mem::transmute::<*mut c_void, DeflateInit>(init),
            std::mem::transmute::<*mut c_void, DeflateEnd>(end),
        )
    };
    let mut stream = ZStream {
        next_in: std::ptr::null(),
        avail_in: 0,
        total_in: 0,
        next_out: std::ptr::null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: std::ptr::null(),
        state: std::ptr::null_mut(),
        zalloc,
        zfree,
        opaque: std::ptr::null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    };
    // SAFETY: a zeroed stream with our callbacks, its real size, and a
    // version string whose major number zlib accepts.
    let rc = unsafe { init(&mut stream, 6, c"1.2.11".as_ptr().cast(), 112) };
    assert_eq!(rc, 0, "deflateInit_ succeeds");
    f();
    // SAFETY: a stream `deflateInit_` set up.
    assert_eq!(unsafe { end(&mut stream) }, 0, "deflateEnd succeeds");
}

#[test]
fn walks_reach_through_a_library_loaded_after_many_reloads() {
    let _serial = common::serial();
    assert_eq!(std::mem::size_of::<ZStream>(), 112);
    ferroprof_alloc::set_sample_interval(0);
    // SAFETY: RTLD_NOLOAD only asks.
    let preloaded = CYCLED.iter().chain([&ZLIB]).any(|name| unsafe {
        !libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD).is_null()
    });
    assert!(
        !preloaded,
        "the test binary loads none of {CYCLED:?}, {ZLIB:?}"
    );
    prepare();
    let before = ferroprof_alloc::stats();
    let mut unloaded = 0;
    for round in 0..ROUNDS {
        let name = CYCLED[round % CYCLED.len()];
        // SAFETY: loading a system library runs its constructors; these
        // only set up their own state.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "{name:?} loads");
        // A list naming it, as a CPU profiler's periodic `prepare` makes.
        prepare();
        assert!(code_range(name).is_some(), "{name:?} is listed");
        // SAFETY: nothing of the library is in use.
        assert_eq!(unsafe { libc::dlclose(handle) }, 0);
        unloaded += usize::from(code_range(name).is_none());
    }
    assert!(
        unloaded > ROUNDS / 2,
        "dlclose unloaded the library in only {unloaded} of {ROUNDS} rounds"
    );
    prepare();
    let kept = ferroprof_alloc::stats();

    // SAFETY: as above.
    let zlib = unsafe { libc::dlopen(ZLIB.as_ptr(), libc::RTLD_NOW) };
    assert!(!zlib.is_null(), "zlib loads");
    let (zlo, zhi) = code_range(ZLIB).expect("zlib has code");
    ferroprof_alloc::set_sample_interval(1);
    let mut snap = None;
    deflate_init_from_the_test(zlib, || {
        ferroprof_alloc::set_sample_interval(0);
        snap = Some(ferroprof_alloc::snapshot());
    });
    let snap = snap.expect("the snapshot was taken");
    let in_zlib = |f: &u64| (zlo..zhi).contains(f);
    let through: Vec<_> = snap
        .stacks
        .iter()
        .filter(|s| s.inuse_bytes > 0 && s.frames.iter().any(in_zlib))
        .collect();
    assert!(
        !through.is_empty(),
        "zlib's allocations were sampled with zlib on their stacks"
    );
    // The first walk through zlib cannot know it (its list predates the
    // load) and ends in zlib's frame; that makes the next walk ask the
    // loader, rebuild the list, and from then on walk through zlib.
    let cut: Vec<_> = through
        .iter()
        .filter(|stack| {
            let last = stack.frames.iter().rposition(in_zlib).unwrap();
            !names(&stack.frames[last + 1..])
                .iter()
                .any(|n| n.contains("deflate_init_from_the_test"))
        })
        .map(|stack| names(&stack.frames))
        .collect();
    assert!(
        cut.len() <= 1 && through.len() > cut.len(),
        "after the first, every walk went on through zlib into its caller; \
         {} of {} did not: {cut:#?}",
        cut.len(),
        through.len()
    );
    eprintln!(
        "{ROUNDS} reloads: {} module list(s) kept, {} bytes of unwind tables copied \
         (before: {} bytes); {} stack(s) through zlib, {} cut there",
        kept.unwind_module_lists,
        kept.unwind_copies,
        before.unwind_copies,
        through.len(),
        cut.len()
    );
    assert!(
        kept.unwind_module_lists <= 2,
        "replaced module lists were freed: {kept:?}"
    );
    assert_eq!(
        kept.unwind_copies, before.unwind_copies,
        "the copies of the unloaded libraries were freed: {before:?} then {kept:?}"
    );
    assert_eq!(kept.unwind_libraries_left_out, 0, "{kept:?}");
}

/// Allocates and frees `n` sampled blocks, each a stack walk.
#[inline(never)]
fn sampled_churn(n: usize) {
    for i in 0..n {
        std::hint::black_box(vec![0u8; 64 + i % 512]);
    }
}

#[test]
fn lists_are_freed_while_other_threads_walk() {
    let _serial = common::serial();
    ferroprof_alloc::set_sample_interval(1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let walks = std::sync::atomic::AtomicUsize::new(0);
    let most = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sampled_churn(100);
                    walks.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        let mut most = 0;
        for round in 0..ROUNDS / 2 {
            let name = CYCLED[round % CYCLED.len()];
            // SAFETY: as in the test above.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
            assert!(!handle.is_null(), "{name:?} loads");
            // Replaces the list the walkers may be using.
            prepare();
            most = most.max(ferroprof_alloc::stats().unwind_module_lists);
            // SAFETY: nothing of the library is in use.
            assert_eq!(unsafe { libc::dlclose(handle) }, 0);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        most
    });
    ferroprof_alloc::set_sample_interval(0);
    // The walkers are gone: a rebuild frees every replaced list. One is
    // due, as the last round unloaded a library.
    prepare();
    let stats = ferroprof_alloc::stats();
    let walks = walks.into_inner();
    eprintln!(
        "{} reloads under {walks} walks on 2 threads: at most {most} module lists kept \
         meanwhile, {} after; {} samples",
        ROUNDS / 2,
        stats.unwind_module_lists,
        stats.samples
    );
    assert!(walks > 0, "the walkers ran");
    assert_eq!(stats.unwind_module_lists, 1, "{stats:?}");
    // Lists are freed while the others walk, not only once they stop: a
    // walk pins a list for microseconds, a round takes longer.
    assert!(
        most < (ROUNDS / 2) as u64 / 4,
        "replaced lists piled up while threads walked: {most}"
    );
}
