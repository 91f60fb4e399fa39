//! Two threads burn CPU concurrently, one for 3 s in one function, the
//! other for 1 s in another, while the CPU profiler samples at 100 Hz. Read
//! through Google's pprof, the profile gives each function the CPU time its
//! thread's own CPU clock measured, within statistically justified bounds,
//! in a build without frame pointers.
//!
//! The bound: per-thread CPU timers fire every 10 ms of the thread's own CPU
//! time, so the count is the measured time / 10 ms up to a few periods of
//! delivery lag; on a loaded machine the kernel may notice expiries late
//! (and merge them as overruns, which are counted). We allow 5·√n + 3
//! samples, as if the count were Poisson: far wider than the lag seen in
//! practice, far narrower than any misattribution (the two truths differ by
//! 200 samples).
#![cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod support;

use std::hint::black_box;
use std::time::Duration;

use ferroprof::cpu::CpuProfiler;
use ferroprof::pprof::{self, Symbolizer};
use support::clocks::{spin, thread_cpu};
use support::pprof_tools;
use support::scratch::Scratch;

const HZ: u32 = 100;

/// Burns `cpu` of this thread's CPU time; returns what it measured.
fn burn(cpu: Duration) -> Duration {
    let mut x = 1;
    while thread_cpu() < cpu {
        x = spin(200_000, x);
    }
    black_box(x);
    thread_cpu()
}

#[inline(never)]
fn burn_for_three_seconds() -> Duration {
    black_box(burn(Duration::from_secs(3)))
}

#[inline(never)]
fn burn_for_one_second() -> Duration {
    black_box(burn(Duration::from_secs(1)))
}

#[test]
fn cpu_profile_attributes_cpu_time() {
    let mut profiler = CpuProfiler::start(HZ, 64).expect("the CPU profiler starts");
    let a = std::thread::Builder::new()
        .name("burner-a".into())
        .spawn(burn_for_three_seconds)
        .unwrap();
    let b = std::thread::Builder::new()
        .name("burner-b".into())
        .spawn(burn_for_one_second)
        .unwrap();
    // Arm the new threads' timers and drain the ring while they burn.
    while !(a.is_finished() && b.is_finished()) {
        profiler.poll().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let (truth_a, truth_b) = (a.join().unwrap(), b.join().unwrap());
    let profile = profiler.collect(&mut Symbolizer::default());
    profiler.stop().unwrap();

    let scratch = Scratch::new("cpu-two-threads");
    let path = scratch.path().join("cpu_two_threads.pprof");
    std::fs::write(&path, pprof::encode(&profile))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let report = pprof_tools::check(&path);
    assert_eq!(report.sample_types, ["samples/count", "cpu/nanoseconds"]);
    assert_eq!(
        (report.period_type.as_str(), report.period),
        ("cpu/nanoseconds", 10_000_000)
    );

    for (function, truth) in [
        ("burn_for_three_seconds", truth_a),
        ("burn_for_one_second", truth_b),
    ] {
        let expected = truth.as_secs_f64() * f64::from(HZ);
        let got = report.cum_of(function, "samples") as f64;
        let bound = 5.0 * expected.sqrt() + 3.0;
        assert!(
            (got - expected).abs() <= bound,
            "{function}: {got} samples, its thread's CPU clock says {expected:.1} (bound ±{bound:.1})"
        );
        assert_eq!(
            report.cum_of(function, "cpu"),
            report.cum_of(function, "samples") * 10_000_000
        );
    }
    let names = &report.labels["thread name"];
    assert!(
        names.iter().any(|n| n == "burner-a") && names.iter().any(|n| n == "burner-b"),
        "{names:?}"
    );
    assert!(report.labels.contains_key("thread id"));
}
