//! A stack walk from inside a signal handler: another thread interrupts a
//! busy loop at arbitrary instructions with `SIGUSR1`; the handler walks
//! the interrupted stack with `signal::capture` (no allocation, no loader
//! lock, memory reads proven inside the stack). The frames name the
//! spinning function and its caller, in a build without frame pointers.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ferroprof_alloc::signal::{self, Registers};

const WALKS: usize = 200;
const DEPTH: usize = 64;

/// Frames of every walk, written only by the handler on the spinning thread.
static FRAMES: [[AtomicU64; DEPTH]; WALKS] =
    [const { [const { AtomicU64::new(0) }; DEPTH] }; WALKS];
static WALKED: AtomicUsize = AtomicUsize::new(0);
static UNWALKED: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static SPINNING: AtomicBool = AtomicBool::new(false);

extern "C" fn handler(_: libc::c_int, _: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let i = WALKED.load(Ordering::Relaxed);
    if i >= WALKS {
        return;
    }
    // SAFETY: the third argument of an SA_SIGINFO handler.
    let Some(regs) = (unsafe { Registers::from_ucontext(context) }) else {
        return;
    };
    let mut buf = [0u64; DEPTH];
    let got = signal::capture(&regs, &mut buf);
    if !got.walked {
        UNWALKED.fetch_add(1, Ordering::Relaxed);
    }
    for (slot, &frame) in FRAMES[i].iter().zip(&buf[..got.frames]) {
        slot.store(frame, Ordering::Relaxed);
    }
    WALKED.store(i + 1, Ordering::Release);
}

#[inline(never)]
fn spin_in_a_named_function() -> u64 {
    let mut x = 1u64;
    SPINNING.store(true, Ordering::Relaxed);
    while !STOP.load(Ordering::Relaxed) {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

#[inline(never)]
fn outer_caller() -> u64 {
    black_box(spin_in_a_named_function()) + 1
}

fn names(ip: u64, leaf: bool) -> Vec<String> {
    let mut out = Vec::new();
    let at = if leaf { ip } else { ip - 1 };
    backtrace::resolve(at as *mut std::ffi::c_void, |s| {
        out.push(s.name().map(|n| n.to_string()).unwrap_or_default());
    });
    out
}

#[test]
fn signal_walks_name_the_interrupted_function() {
    signal::prepare();
    // SAFETY: installing a handler that only uses atomics and the
    // async-signal-safe walk; the previous one is restored below.
    let old = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, &mut old), 0);
        old
    };
    let spinner = std::thread::spawn(outer_caller);
    let target = {
        use std::os::unix::thread::JoinHandleExt;
        spinner.as_pthread_t()
    };
    while !SPINNING.load(Ordering::Relaxed) {
        std::thread::yield_now();
    }
    while WALKED.load(Ordering::Acquire) < WALKS {
        // SAFETY: signalling a thread that is alive until STOP is set.
        assert_eq!(unsafe { libc::pthread_kill(target, libc::SIGUSR1) }, 0);
        std::thread::sleep(Duration::from_micros(500));
    }
    STOP.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
    // SAFETY: restoring the disposition saved above.
    unsafe { libc::sigaction(libc::SIGUSR1, &old, std::ptr::null_mut()) };

    assert_eq!(
        UNWALKED.load(Ordering::Relaxed),
        0,
        "{:?}",
        signal::signal_stats()
    );
    let mut named = 0;
    for walk in &FRAMES {
        let frames: Vec<u64> = walk
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .take_while(|&f| f != 0)
            .collect();
        let leaf = names(frames[0], true);
        let callers: Vec<String> = frames[1..].iter().flat_map(|&f| names(f, false)).collect();
        let leaf_ok = leaf.iter().any(|n| n.contains("spin_in_a_named_function"));
        let caller_ok = callers.iter().any(|n| n.contains("outer_caller"));
        if leaf_ok && caller_ok {
            named += 1;
        } else {
            eprintln!("leaf {leaf:?}, callers {callers:?}");
        }
    }
    // Every interruption lands in the loop (the spinning thread does
    // nothing else), and every walk must get from there to the caller.
    assert_eq!(named, WALKS, "walks that named the leaf and its caller");
}
