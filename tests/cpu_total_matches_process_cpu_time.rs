//! The CPU profile's total accounts for the whole process's CPU time: two
//! threads burn about 1 s of CPU each while the main thread polls, the
//! profiler samples at 100 Hz, and the sum of the profile's
//! `cpu/nanoseconds` matches what `CLOCK_PROCESS_CPUTIME_ID` measured
//! between just after `start` and just before `collect`. A profiler that
//! loses threads, loses samples in the ring or double-counts overruns
//! would miss by hundreds of milliseconds.
//!
//! The bound: each thread's timer fires once per 10 ms of that thread's
//! own CPU time, so the process-wide count is n = process CPU × 100 Hz up
//! to delivery lag (on a loaded machine the kernel may notice expiries
//! late, then merges them as overruns, which are counted) and the residue
//! of each thread's last, incomplete period. We allow 5·√n + 3 samples'
//! worth, as if the count were Poisson (far wider than the lag seen in
//! practice, far narrower than losing a burner's second, i.e. 100 samples),
//! plus the main thread's own CPU time over the window: it polls between
//! sleeps, in slices far shorter than a period, so its share is the part
//! of the measurement most exposed to timer granularity. Nothing depends on
//! the machine's speed: the burners stop on their own CPU clocks.
#![cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Duration;

mod support;

use ferroprof::cpu::CpuProfiler;
use ferroprof::pprof::Symbolizer;
use support::clocks::{process_cpu, spin, thread_cpu};

const HZ: u32 = 100;
const PERIOD_NS: f64 = 1e9 / HZ as f64;

/// Waits for the profiler to be armed, then burns about 1 s of this
/// thread's CPU time.
#[inline(never)]
fn burn_one_second(go: Arc<Barrier>) -> Duration {
    go.wait();
    let start = thread_cpu();
    let mut x = 1;
    while thread_cpu() - start < Duration::from_secs(1) {
        x = spin(100_000, x);
    }
    black_box(x);
    thread_cpu() - start
}

#[test]
fn cpu_total_matches_process_cpu_time() {
    // The burners exist before `start`, so their timers are armed by it;
    // they only burn once the window opens.
    let go = Arc::new(Barrier::new(3));
    let burners: Vec<_> = (0..2)
        .map(|i| {
            let go = Arc::clone(&go);
            std::thread::Builder::new()
                .name(format!("burner-{i}"))
                .spawn(move || burn_one_second(go))
                .unwrap()
        })
        .collect();

    let mut profiler = CpuProfiler::start(HZ, 64).expect("the CPU profiler starts");
    let process_before = process_cpu();
    let main_before = thread_cpu();
    go.wait();
    while !burners.iter().all(|b| b.is_finished()) {
        profiler.poll().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    profiler.poll().unwrap();
    let main_share = thread_cpu() - main_before;
    let process = process_cpu() - process_before;
    let profile = profiler.collect(&mut Symbolizer::default());
    profiler.stop().unwrap();
    let burned: Vec<Duration> = burners.into_iter().map(|b| b.join().unwrap()).collect();

    ferroprof::pprof::check(&profile).expect("a well-formed profile");
    assert_eq!(profile.str(profile.sample_type[1].r#type), "cpu");
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    let cpu_ns: i64 = profile.sample.iter().map(|s| s.value[1]).sum();
    assert_eq!(cpu_ns, samples * PERIOD_NS as i64, "cpu = samples × period");

    let n = process.as_secs_f64() * f64::from(HZ);
    let got = cpu_ns as f64 / PERIOD_NS;
    let main_periods = main_share.as_secs_f64() * f64::from(HZ);
    let bound = 5.0 * n.sqrt() + 3.0 + main_periods;
    eprintln!(
        "process CPU {process:?} ({n:.1} periods), profile {got} samples, \
         main thread {main_share:?}, burners {burned:?}, bound ±{bound:.1}"
    );
    assert!(
        burned.iter().all(|b| *b >= Duration::from_secs(1)),
        "{burned:?}"
    );
    assert!(
        (got - n).abs() <= bound,
        "profile {got} samples ({cpu_ns} ns), process CPU clock says {n:.1} \
         periods ({process:?}); bound ±{bound:.1} (main thread {main_share:?})"
    );
}
