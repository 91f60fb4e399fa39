//! Starting and stopping the CPU profiler: a second profiler is refused
//! while one runs; stopping puts back the `SIGPROF` disposition that was
//! there before (here, the test's own handler) and no sample arrives after;
//! the profiler can start again.
#![cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferroprof::cpu::CpuProfiler;
use ferroprof::pprof::Symbolizer;

static OURS: AtomicU64 = AtomicU64::new(0);

extern "C" fn our_handler(_: libc::c_int) {
    OURS.fetch_add(1, Ordering::Relaxed);
}

fn sigprof_handler() -> usize {
    // SAFETY: querying the disposition into a valid out-pointer.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut sa), 0);
        sa.sa_sigaction
    }
}

fn burn(d: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < d {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
    x
}

#[test]
fn cpu_profiler_stops_cleanly() {
    // SAFETY: a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = our_handler as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
    let ours = sigprof_handler();

    for round in 0..2 {
        let mut profiler = CpuProfiler::start(250, 64).expect("starts");
        assert_ne!(
            sigprof_handler(),
            ours,
            "round {round}: the profiler's handler is in place"
        );
        assert!(
            CpuProfiler::start(250, 64).is_err(),
            "a second profiler is refused"
        );
        burn(Duration::from_millis(300));
        profiler.poll().unwrap();
        let profile = profiler.collect(&mut Symbolizer::default());
        let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
        assert!(samples > 0, "round {round}: samples were taken");
        profiler.stop().unwrap();
        assert_eq!(
            sigprof_handler(),
            ours,
            "round {round}: the old disposition is back"
        );
        let before = OURS.load(Ordering::Relaxed);
        burn(Duration::from_millis(200));
        assert_eq!(
            OURS.load(Ordering::Relaxed),
            before,
            "no SIGPROF after stop"
        );
    }
}
