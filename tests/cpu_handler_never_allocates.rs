//! The `SIGPROF` handler never allocates: a worker thread that itself makes
//! no allocation at all is sampled at 1000 Hz for about 1 s of its CPU
//! time, and a counting global allocator sees no allocation on it, while
//! the profile holds hundreds of that thread's samples, so the handler
//! really ran there about a thousand times.
//!
//! Why: a handler that allocates can deadlock (the interrupted thread may
//! hold the allocator's lock) or corrupt the heap, and would do so only
//! rarely, under load. Counting on the interrupted thread catches any
//! allocation on the handler's path, including lazy first-use
//! initialisation, deterministically.
//!
//! The counter counts only on the designated thread (its tid, compared with
//! `gettid()`, a plain system call that does not allocate), so the main
//! thread's polling and symbolization do not disturb it. A baseline of the
//! same spin loop without the profiler must count zero first: otherwise a
//! non-zero count would not be the handler's. Nothing depends on the
//! machine's speed: the worker stops on its own CPU clock.
#![cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use ferroprof::cpu::CpuProfiler;
use ferroprof::pprof::Symbolizer;
use support::clocks::thread_cpu;

/// The thread whose allocations are counted (0: none; no tid is 0).
static WATCHED: AtomicI32 = AtomicI32::new(0);
/// Allocations (including zeroed and reallocations) made on it.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

impl Counting {
    #[inline]
    fn count(&self) {
        let watched = WATCHED.load(Ordering::Relaxed);
        // SAFETY: `gettid` has no preconditions and does not allocate.
        if watched != 0 && watched == unsafe { libc::gettid() } {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every call to `System` with the caller's guarantees;
// counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count();
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HZ: u32 = 1000;

/// Burns `cpu` of this thread's CPU time without allocating.
#[inline(never)]
fn spin_without_allocating(cpu: Duration) {
    let start = thread_cpu();
    let mut x = 1u64;
    while thread_cpu() - start < cpu {
        for _ in 0..10_000 {
            x = black_box(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
    }
    black_box(x);
}

static BASELINE_DONE: AtomicBool = AtomicBool::new(false);
static GO: AtomicBool = AtomicBool::new(false);
static BASELINE: AtomicU64 = AtomicU64::new(u64::MAX);

/// The watched thread: a baseline without the profiler, then about 1 s of
/// CPU under it. Returns its tid, the allocations counted over both, and
/// the count after one deliberate allocation (the counter's positive
/// control: it does see this thread's allocations).
#[inline(never)]
fn worker() -> (i32, u64, u64) {
    // SAFETY: `gettid` has no preconditions.
    let tid = unsafe { libc::gettid() };
    WATCHED.store(tid, Ordering::SeqCst);
    spin_without_allocating(Duration::from_millis(50));
    BASELINE.store(ALLOCATIONS.load(Ordering::SeqCst), Ordering::SeqCst);
    BASELINE_DONE.store(true, Ordering::SeqCst);
    while !GO.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    spin_without_allocating(Duration::from_secs(1));
    let total = ALLOCATIONS.load(Ordering::SeqCst);
    drop(black_box(Box::new(black_box(1u64))));
    let control = ALLOCATIONS.load(Ordering::SeqCst);
    WATCHED.store(0, Ordering::SeqCst);
    (tid, total, control)
}

#[test]
fn cpu_handler_never_allocates() {
    let handle = std::thread::Builder::new()
        .name("no-alloc".into())
        .spawn(worker)
        .unwrap();
    while !BASELINE_DONE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        BASELINE.load(Ordering::SeqCst),
        0,
        "the spin loop allocates by itself, so the count would prove nothing"
    );

    // The worker exists, so `start` arms its timer.
    let mut profiler = CpuProfiler::start(HZ, 64).expect("the CPU profiler starts");
    GO.store(true, Ordering::SeqCst);
    while !handle.is_finished() {
        profiler.poll().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let (tid, allocations, control) = handle.join().unwrap();
    let profile = profiler.collect(&mut Symbolizer::default());
    profiler.stop().unwrap();

    ferroprof::pprof::check(&profile).expect("a well-formed profile");
    let worker_samples: i64 = profile
        .sample
        .iter()
        .filter(|s| {
            s.label
                .iter()
                .any(|l| profile.str(l.key) == "thread id" && l.num == i64::from(tid))
        })
        .map(|s| s.value[0])
        .sum();
    eprintln!("worker {tid}: {worker_samples} samples, {allocations} allocations");
    assert_eq!(
        control,
        allocations + 1,
        "the counter misses the worker's own allocations"
    );
    assert!(
        worker_samples > 100,
        "the handler ran on the worker only {worker_samples} times"
    );
    assert_eq!(
        allocations, 0,
        "{allocations} allocations on a thread that allocates nothing: \
         the SIGPROF handler allocated"
    );
}
