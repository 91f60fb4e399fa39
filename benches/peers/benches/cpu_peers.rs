//! ferroprof's CPU profiler next to pprof-rs, side by side in one run: what
//! each costs in throughput, and how faithfully each profile attributes CPU
//! time, judged against the threads' own CPU clocks.
//!
//! ```sh
//! cd benches/peers
//! # pprof-rs with its default unwinder (backtrace-rs over libgcc)
//! CARGO_TARGET_DIR=../../target/peers cargo bench --bench cpu_peers
//! # pprof-rs with its frame-pointer unwinder (a Cargo feature of pprof-rs,
//! # so a second build; everything is built with frame pointers)
//! RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR=../../target/peers-fp \
//!     cargo bench --bench cpu_peers --features pprof-frame-pointer
//! # longer: rounds of parts 1 and 2 (default 30), windows of part 3 (default 3)
//! CPU_PEERS_ROUNDS=100 CPU_PEERS_WINDOWS=10 cargo bench --bench cpu_peers
//! ```
//!
//! The default run takes about three minutes on an idle 2-core machine.
//!
//! # Method
//!
//! Two worker threads descend [`DEPTH`](workload::DEPTH) `#[inline(never)]`
//! frames below their entry functions (`steady_worker`, `duty_worker`) and
//! burn CPU in `work_unit` at the bottom. The steady worker works without
//! pause (about one core); the duty worker works 2 ms slices and sleeps
//! twice as long after each (about a third of a core), so a profile must
//! tell two different CPU shares apart. Each worker measures its own CPU
//! clock (`CLOCK_THREAD_CPUTIME_ID`, which includes its signal handlers);
//! the main thread, which sleeps and (for ferroprof) calls `poll` every
//! 100 ms, measures its own. Between bursts the workers wait on a barrier
//! and use no CPU.
//!
//! A burst runs the workload under one configuration: no profiler;
//! ferroprof's [`CpuProfiler`](ferroprof::cpu::CpuProfiler) (per-thread CPU
//! timers, its default DWARF walk, 64 frames); pprof-rs's `ProfilerGuard`
//! (one process-wide `ITIMER_PROF`; its default unwinder, or its
//! frame-pointer one in the `pprof-frame-pointer` build). Each profiler is
//! started before its burst and stopped after it, so only one is ever
//! installed. A round runs one burst of each configuration, in an order that
//! rotates from round to round, so the load of the rest of the machine falls
//! on all alike.
//!
//! # What is printed
//!
//! 1. **Throughput at 100 Hz**, bursts of [`BURST`]: work units per
//!    CPU-second of the whole process (workers and main thread), so whatever
//!    a profiler spends, on whichever thread, lowers it. The ratio to the
//!    unprofiled burst of the same round is taken per round; the median over
//!    rounds is reported, with `[p25, p75]` as the resolution of the
//!    measurement. `samples/CPU-s` is the median over bursts of what each
//!    profiler delivered (a short burst ends with a period begun and not
//!    finished on each thread, so it reads a little under the rate).
//! 2. **Cost per sample at 250 Hz**, where the cost stands out of the noise:
//!    the CPU lost divided by the samples taken, i.e. the whole path of a
//!    sample (timer, signal delivery, handler, `sigreturn`, and ferroprof's
//!    share of `poll`).
//! 3. **Accuracy**, at 100 and 250 Hz, over profiles of [`WINDOW`] (long, so
//!    the unfinished last period of each thread weighs little): samples taken
//!    against `CPU-seconds × hz` (the CPU of the workers and of the main
//!    thread while the profiler ran); each thread's share of the samples,
//!    by the thread the profiler recorded, against its share of that CPU by
//!    its own clock, with the error in percentage points, summed over all
//!    windows and for the worst window. Then the stacks: mean frames per
//!    sample; the share of worker samples whose stack is *usable*, i.e.
//!    reaches the worker's own entry function through all `DEPTH` frames of
//!    `at_depth`; and the share with `work_unit` on it, where nearly all the
//!    workers' CPU goes (an unwinder that skips the interrupted frame misses
//!    it).
//! 4. **ferroprof's walk alone**: see `cpu_peers/walk.rs`.

#[path = "cpu_peers/profilers.rs"]
mod profilers;
#[path = "cpu_peers/walk.rs"]
mod walk;
#[path = "cpu_peers/workload.rs"]
mod workload;

use std::time::{Duration, SystemTime};

use ferroprof::pprof::Symbolizer;

use profilers::{run, Burst, Config, Sampled, CONFIGS};
use workload::{Workers, DEPTH, ROLES};

/// Length of one burst.
const BURST: Duration = Duration::from_millis(500);
/// Sampling frequency of part 1 (the production default of both).
const HZ: u32 = 100;
/// Sampling frequency of part 2: `CONFIG_HZ` of the usual kernel, the
/// highest rate at which POSIX CPU timers (checked on the tick) fire
/// without merging expiries.
const HIGH_HZ: u32 = 250;
/// Rounds of parts 1 and 2 unless `CPU_PEERS_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: usize = 30;
/// Length of one profile in part 3: long enough that the period each thread
/// leaves unfinished when a profile ends weighs little.
const WINDOW: Duration = Duration::from_secs(5);
/// Windows per profiler and rate in part 3 unless `CPU_PEERS_WINDOWS` says
/// otherwise.
const DEFAULT_WINDOWS: usize = 3;

/// The configurations with a profiler, in [`CONFIGS`] order.
const PROFILED: [Config; 2] = [Config::Ferroprof, Config::PprofRs];

/// A positive count from the environment variable `name`, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{name}: a positive whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// The `q` quantile of `v` (nearest rank).
pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Runs `rounds` interleaved rounds of `configs` at `hz`, each burst
/// `length` long; returns each configuration's bursts, in `configs` order.
fn measure(
    workers: &Workers,
    configs: &[Config],
    hz: u32,
    rounds: usize,
    length: Duration,
) -> Vec<Vec<Burst>> {
    let mut symbols = Symbolizer::default();
    let mut bursts = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for k in 0..configs.len() {
            let i = (round + k) % configs.len();
            bursts[i].push(run(workers, configs[i], hz, length, &mut symbols));
        }
    }
    bursts
}

/// Prints the throughput table; returns, per profiled configuration, the
/// CPU share lost (from the median, p75 and p25 ratios) and the samples per
/// CPU-second.
fn throughput(bursts: &[Vec<Burst>]) -> Vec<([f64; 3], f64)> {
    println!(
        "{:<12} {:>12} {:>8} {:>8} {:>18} {:>13}",
        "", "units/CPU-s", "ratio", "lost", "ratio [p25, p75]", "samples/CPU-s"
    );
    let base = &bursts[0];
    let mut out = Vec::new();
    for (config, runs) in CONFIGS.iter().zip(bursts) {
        let thr: Vec<f64> = runs.iter().map(Burst::throughput).collect();
        let ratios: Vec<f64> = runs
            .iter()
            .zip(base)
            .map(|(r, b)| r.throughput() / b.throughput())
            .collect();
        let rate: Vec<f64> = runs
            .iter()
            .map(|r| r.sampled.map_or(0, |s| s.total()) as f64 / r.truth().iter().sum::<f64>())
            .collect();
        let ratio = quantile(&ratios, 0.5);
        let rate = quantile(&rate, 0.5);
        println!(
            "{:<12} {:>12.0} {:>8.4} {:>7.2}% {:>8.4}, {:>7.4} {:>13.1}",
            config.name(),
            quantile(&thr, 0.5),
            ratio,
            (1.0 - ratio) * 100.0,
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
            rate,
        );
        if *config != Config::Unprofiled {
            let lost = [ratio, quantile(&ratios, 0.75), quantile(&ratios, 0.25)].map(|r| 1.0 - r);
            out.push((lost, rate));
        }
    }
    out
}

/// Each row's share in percent: the two workers, then everything else.
fn shares(v: [f64; 3]) -> [f64; 3] {
    let total: f64 = v.iter().sum();
    v.map(|x| 100.0 * x / total)
}

/// Profile shares minus clock shares, in percentage points.
fn errors(sampled: &Sampled, truth: [f64; 3]) -> [f64; 3] {
    let got = shares([
        sampled.workers[0] as f64,
        sampled.workers[1] as f64,
        sampled.other as f64,
    ]);
    let want = shares(truth);
    [0, 1, 2].map(|i| got[i] - want[i])
}

fn max_abs(v: [f64; 3]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Prints the accuracy and stack tables of the [`PROFILED`] configurations'
/// `windows`.
fn accuracy(windows: &[Vec<Burst>], hz: u32) {
    let row_names = [ROLES[0].thread_name(), ROLES[1].thread_name(), "main+other"];
    println!(
        "{:<12} {:>8} {:>9} {:>8}  {:>21} {:>21} {:>21} {:>8} {:>9}",
        "",
        "samples",
        "expected",
        "got/exp",
        format!("{} % prof/clock", row_names[0]),
        format!("{} % prof/clock", row_names[1]),
        format!("{} % prof/clock", row_names[2]),
        "max err",
        "worst win"
    );
    let mut stacks = Vec::new();
    for (config, runs) in PROFILED.iter().zip(windows) {
        let mut sum = Sampled::default();
        let mut truth = [0.0; 3];
        let mut per_window = Vec::new();
        for r in runs {
            let s = r.sampled.expect("a profiled burst has samples");
            sum.add(&s);
            for (t, x) in truth.iter_mut().zip(r.truth()) {
                *t += x;
            }
            per_window.push(max_abs(errors(&s, r.truth())));
        }
        let expected = truth.iter().sum::<f64>() * f64::from(hz);
        let got = shares([
            sum.workers[0] as f64,
            sum.workers[1] as f64,
            sum.other as f64,
        ]);
        let want = shares(truth);
        let err = errors(&sum, truth);
        let cell = |i: usize| format!("{:.2} / {:.2} ({:+.2})", got[i], want[i], err[i]);
        println!(
            "{:<12} {:>8} {:>9.0} {:>8.3}  {:>21} {:>21} {:>21} {:>7.2}p {:>8.2}p",
            config.name(),
            sum.total(),
            expected,
            sum.total() as f64 / expected,
            cell(0),
            cell(1),
            cell(2),
            max_abs(err),
            quantile(&per_window, 1.0),
        );
        stacks.push((config.name(), sum));
    }
    println!(
        "\n{:<12} {:>12} {:>22} {:>22}",
        "", "mean frames", "usable worker stacks", "work_unit on stack"
    );
    for (name, s) in stacks {
        let on_workers = (s.workers[0] + s.workers[1]).max(1) as f64;
        println!(
            "{:<12} {:>12.1} {:>21.2}% {:>21.2}%",
            name,
            s.frames as f64 / s.total().max(1) as f64,
            100.0 * s.usable as f64 / on_workers,
            100.0 * s.in_work_unit as f64 / on_workers,
        );
    }
}

/// Today's date and time (UTC), from the civil-from-days algorithm of
/// H. Hinnant.
fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let hms = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        hms / 3600,
        hms / 60 % 60
    )
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}")
}

/// The 1-minute load average, or "?".
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let rounds = env_count("CPU_PEERS_ROUNDS", DEFAULT_ROUNDS);
    let windows = env_count("CPU_PEERS_WINDOWS", DEFAULT_WINDOWS);
    let frame_pointers = workload::has_frame_pointers();
    println!("cpu_peers: {}; {}", machine(), now_utc());
    println!(
        "build: pprof-rs unwinder = {}; frame pointers in this build: {}",
        if cfg!(feature = "pprof-frame-pointer") {
            "frame pointers (feature pprof-frame-pointer)"
        } else {
            "backtrace-rs (default)"
        },
        if frame_pointers { "yes" } else { "no" }
    );
    if cfg!(feature = "pprof-frame-pointer") && !frame_pointers {
        println!(
            "WARNING: pprof-rs walks frame pointers but this build has none: \
             build with RUSTFLAGS=\"-C force-frame-pointers=yes\""
        );
    }
    println!("load average (1 min) at start: {}", load());

    let workers = Workers::spawn();
    // Warm up: caches, both symbolizers' first scans, thread stacks.
    measure(&workers, &CONFIGS, HZ, 1, BURST);

    let describe = |hz: u32| {
        format!(
            "{hz} Hz, {} workers {DEPTH} frames down, {rounds} rounds x {} configs x {} ms",
            ROLES.len(),
            CONFIGS.len(),
            BURST.as_millis()
        )
    };
    println!("\n1. throughput at {}", describe(HZ));
    throughput(&measure(&workers, &CONFIGS, HZ, rounds, BURST));

    println!("\n2. cost per sample at {}", describe(HIGH_HZ));
    let costs = throughput(&measure(&workers, &CONFIGS, HIGH_HZ, rounds, BURST));
    for ((lost, rate), config) in costs.iter().zip(&PROFILED) {
        let us = lost.map(|l| l / rate * 1e6);
        println!(
            "{:<12} {:>8.2} us per sample  (from the p75 and p25 ratios: {:.2} .. {:.2} us)",
            config.name(),
            us[0],
            us[1],
            us[2]
        );
    }

    for (part, hz) in [("3a", HZ), ("3b", HIGH_HZ)] {
        println!(
            "\n{part}. samples against the threads' own CPU clocks at {hz} Hz: \
             {windows} windows x {} profilers x {} s",
            PROFILED.len(),
            WINDOW.as_secs()
        );
        accuracy(&measure(&workers, &PROFILED, hz, windows, WINDOW), hz);
    }

    println!("\n4. ferroprof's walk alone");
    walk::walk_alone();
    println!("\nload average (1 min) at the end: {}", load());
}
