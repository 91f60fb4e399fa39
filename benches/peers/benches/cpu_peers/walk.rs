//! ferroprof's cost per sample taken apart: `signal::capture` (the walk its
//! `SIGPROF` handler does) timed in a loop inside a `SIGUSR1` handler raised
//! [`DEPTH`] frames down, and the `raise` round trip with an empty handler
//! and with one capture, for the kernel's share. pprof-rs has no such entry
//! point, so this part is ferroprof's alone.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use ferroprof::alloc::signal::{self, Registers, SignalCapture};

use crate::quantile;
use crate::workload::{at_depth, DEPTH};

/// Frames kept per capture (ferroprof's default).
const MAX_FRAMES: usize = 64;

// Every static below is written and read by one thread: the handler runs on
// the thread that raised the signal, so Relaxed suffices throughout.

/// Captures per handler call (0: the handler returns at once).
static CAPTURES: AtomicUsize = AtomicUsize::new(0);
/// Nanoseconds the last handler call spent in its captures.
static CAPTURE_NS: AtomicU64 = AtomicU64::new(0);
/// Frames and flag of the last capture.
static CAPTURED: AtomicUsize = AtomicUsize::new(0);
static WALKED: AtomicBool = AtomicBool::new(false);

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; clock_gettime is
    // async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

extern "C" fn on_sigusr1(_: libc::c_int, _: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let n = CAPTURES.load(Ordering::Relaxed);
    if n == 0 {
        return;
    }
    // SAFETY: the context argument of an SA_SIGINFO handler.
    let Some(regs) = (unsafe { Registers::from_ucontext(context) }) else {
        return;
    };
    let mut buf = [0u64; MAX_FRAMES];
    let mut got = SignalCapture::default();
    let t0 = monotonic_ns();
    for _ in 0..n {
        got = signal::capture(black_box(&regs), black_box(&mut buf));
    }
    let t1 = monotonic_ns();
    CAPTURE_NS.store(t1 - t0, Ordering::Relaxed);
    CAPTURED.store(got.frames, Ordering::Relaxed);
    WALKED.store(got.walked, Ordering::Relaxed);
}

/// Raises `SIGUSR1` [`DEPTH`] frames down with `captures` per handler call;
/// returns the median nanoseconds per capture (0 when `captures` is 0) and
/// per `raise` round trip.
fn raise_deep(captures: usize, raises: usize) -> (f64, f64) {
    CAPTURES.store(captures, Ordering::Relaxed);
    let (mut per_capture, mut per_raise) = (Vec::new(), Vec::new());
    for _ in 0..raises {
        at_depth(DEPTH, &mut || {
            let t0 = monotonic_ns();
            // SAFETY: our SIGUSR1 handler is installed; raise has no other
            // precondition.
            unsafe { libc::raise(libc::SIGUSR1) };
            let t1 = monotonic_ns();
            per_raise.push((t1 - t0) as f64);
            0
        });
        per_capture.push(CAPTURE_NS.load(Ordering::Relaxed) as f64 / captures.max(1) as f64);
    }
    (quantile(&per_capture, 0.5), quantile(&per_raise, 0.5))
}

/// Measures and prints part 3.
pub fn walk_alone() {
    signal::prepare();
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO
    // signature and is async-signal-safe (atomics, clock_gettime and
    // `signal::capture`); `previous` is a valid out-pointer.
    let previous = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr1 as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        let rc = libc::sigaction(libc::SIGUSR1, &action, &mut previous);
        assert_eq!(rc, 0, "sigaction(SIGUSR1)");
        previous
    };
    // Warm up: the first walk of a thread reads /proc/self/maps for its
    // stack bounds, and the unwinder caches fill.
    raise_deep(100, 10);
    let (capture_ns, _) = raise_deep(200, 101);
    let frames = CAPTURED.load(Ordering::Relaxed);
    let walked = WALKED.load(Ordering::Relaxed);
    let (_, empty_ns) = raise_deep(0, 2001);
    let (_, one_ns) = raise_deep(1, 2001);
    // SAFETY: puts back the disposition replaced above.
    let rc = unsafe { libc::sigaction(libc::SIGUSR1, &previous, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "sigaction(SIGUSR1) restore");

    println!(
        "signal::capture, {DEPTH} frames down: {capture_ns:.0} ns per walk, \
         {frames} frames captured{}",
        if walked { "" } else { " (NOT walked)" }
    );
    println!(
        "raise(SIGUSR1) round trip: {empty_ns:.0} ns with an empty handler, \
         {one_ns:.0} ns with one capture (difference {:.0} ns)",
        one_ns - empty_ns
    );
}
