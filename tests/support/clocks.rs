//! CPU clocks, the truth the CPU profiler's tests compare against, and a
//! way to spend CPU.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Duration;

/// The time `clock` says.
pub fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock id is checked by the kernel.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process.
pub fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// `rounds` steps of an LCG from `x`: CPU work the optimizer cannot remove.
#[inline(never)]
pub fn spin(rounds: u64, x: u64) -> u64 {
    let mut x = x;
    for _ in 0..rounds {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}
