//! CPU sampling at 1000 Hz survives a hostile mix of work, with the heap
//! sampler taking every allocation at the same time: four threads, for
//! about 5 s of wall time each, allocate and free vectors and strings of
//! varied sizes, spawn and join short threads, panic and catch the panic
//! (the unwinder runs under the signal), and `dlopen`/`dlclose` a system
//! library that the test binary does not link (the module list changes
//! under the handler's feet). Meanwhile the main thread polls every 100 ms
//! and collects every second.
//!
//! What must hold: no crash and no deadlock (a watchdog aborts the process
//! with a message after 60 s rather than letting a hung test hang CI
//! silently); every collected profile is well formed
//! (`ferroprof::pprof::check`: every reference valid) and has samples;
//! `stop` succeeds; and the stacks are still real: of the samples taken on
//! the stress threads, more than 90 % have at least 3 frames and a frame
//! symbolized to one of this test's own worker functions, so walks did not
//! give up or wander off into garbage under stress.
//!
//! The heap sample interval is 1 byte, i.e. every allocation is sampled and
//! unwound, the heaviest setting (and the one where the CPU handler most
//! often interrupts the heap sampler's own unwinding). The workers are
//! bounded by wall time, not by an amount of work, so a slow machine does
//! less work but the same checks; nothing depends on the machine's speed.
#![cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::collections::HashSet;
use std::ffi::CStr;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferroprof::cpu::CpuProfiler;
use ferroprof::pprof::{Profile, Symbolizer};

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator<ferroprof::Jemalloc> =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

const HZ: u32 = 1000;
const WORKERS: usize = 4;
const WORK_FOR: Duration = Duration::from_secs(5);
const WATCHDOG: Duration = Duration::from_secs(60);
const INTENTIONAL: &str = "stress: intentional panic";
/// Libraries the test binary does not link (libm does not qualify: jemalloc
/// links it), so that `dlopen` maps them and `dlclose` unmaps them again;
/// those missing on this system are skipped (libresolv is part of glibc).
const LIBRARIES: [&CStr; 3] = [c"libresolv.so.2", c"libz.so.1", c"libexpat.so.1"];

/// Threads whose samples are checked (the workers and their children).
static STRESS_TIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static FINISHED: AtomicBool = AtomicBool::new(false);

fn register_this_thread() {
    // SAFETY: `gettid` has no preconditions.
    let tid = unsafe { libc::gettid() };
    STRESS_TIDS.lock().unwrap().push(tid);
}

/// Aborts the process if the test has not finished after [`WATCHDOG`].
fn start_watchdog() {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| {
            let start = Instant::now();
            while !FINISHED.load(Ordering::SeqCst) {
                if start.elapsed() > WATCHDOG {
                    eprintln!(
                        "cpu_sampling_survives_stress: not finished after {WATCHDOG:?}, \
                         presumably deadlocked; aborting"
                    );
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .unwrap();
}

/// Silences the intentional panics only; any other panic reports as usual.
fn quiet_intentional_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&INTENTIONAL) {
            default(info);
        }
    }));
}

#[inline(never)]
fn stress_allocate(k: usize) -> usize {
    let mut total = 0;
    let mut vecs: Vec<Vec<u64>> = Vec::new();
    for i in 0..16 {
        let len = (k * 31 + i * 97) % 4096 + 1;
        vecs.push(vec![i as u64; len]);
    }
    let mut s = String::new();
    for i in 0..32 {
        s.push_str(&format!("{k}-{i};"));
    }
    total += s.len();
    let big: Vec<u8> = vec![1; 64 * 1024 + k % 1024];
    total += big.len();
    for v in &mut vecs {
        v.extend_from_slice(&[7; 100]);
        total += v.len();
    }
    black_box(total)
}

#[inline(never)]
fn stress_spin(rounds: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..rounds {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}

#[inline(never)]
fn stress_child(k: usize) -> usize {
    register_this_thread();
    black_box(stress_spin(20_000));
    stress_allocate(k)
}

#[inline(never)]
fn stress_spawn(k: usize) -> usize {
    std::thread::Builder::new()
        .name("stress-child".into())
        .spawn(move || stress_child(k))
        .unwrap()
        .join()
        .unwrap()
}

#[inline(never)]
fn stress_panicking(k: usize) -> usize {
    let v = black_box(vec![k; 8]);
    if black_box(true) {
        std::panic::panic_any(INTENTIONAL);
    }
    v.len()
}

#[inline(never)]
fn stress_panic(k: usize) {
    let caught = std::panic::catch_unwind(|| stress_panicking(k));
    assert!(caught.is_err());
}

/// Loads a library, calls into it when it is zlib, and unloads it.
#[inline(never)]
fn stress_dl(k: usize) -> bool {
    let name = LIBRARIES[k % LIBRARIES.len()];
    // SAFETY: a valid C string; these system libraries have no unsafe
    // initialisers.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: a handle from `dlopen` and a valid C string.
    let version = unsafe { libc::dlsym(handle, c"zlibVersion".as_ptr()) };
    if !version.is_null() {
        // SAFETY: zlib's `const char *zlibVersion(void)`.
        let version: extern "C" fn() -> *const libc::c_char =
            unsafe { std::mem::transmute(version) };
        black_box(version());
    }
    // SAFETY: the handle from `dlopen` above, closed once; nothing from the
    // library is used after this.
    let rc = unsafe { libc::dlclose(handle) };
    assert_eq!(rc, 0, "dlclose");
    true
}

/// Returns (iterations, libraries loaded).
#[inline(never)]
fn stress_worker(seed: usize) -> (usize, usize) {
    register_this_thread();
    let start = Instant::now();
    let (mut k, mut loaded) = (seed * 1_000_003, 0);
    let mut iterations = 0;
    while start.elapsed() < WORK_FOR {
        black_box(stress_allocate(k));
        black_box(stress_spin(5_000));
        if k % 16 == 0 {
            black_box(stress_spawn(k));
        }
        if k % 8 == 3 {
            stress_panic(k);
        }
        if k % 4 == 1 && stress_dl(k) {
            loaded += 1;
        }
        k += 1;
        iterations += 1;
    }
    (iterations, loaded)
}

fn samples_of(profile: &Profile) -> i64 {
    profile.sample.iter().map(|s| s.value[0]).sum()
}

/// (samples on the stress threads, those with ≥ 3 frames and a worker
/// function among them).
fn valid_stacks(profile: &Profile, tids: &HashSet<i64>) -> (i64, i64) {
    let is_ours: HashSet<u64> = profile
        .function
        .iter()
        .filter(|f| {
            let name = profile.str(f.name);
            ["::stress_worker", "::stress_child"]
                .iter()
                .any(|w| name.contains(w))
        })
        .map(|f| f.id)
        .collect();
    let mut total = 0;
    let mut valid = 0;
    for s in &profile.sample {
        let on_stress_thread = s
            .label
            .iter()
            .any(|l| profile.str(l.key) == "thread id" && tids.contains(&l.num));
        if !on_stress_thread {
            continue;
        }
        total += s.value[0];
        let has_worker_frame = s.location_id.iter().any(|id| {
            profile
                .location
                .iter()
                .find(|l| l.id == *id)
                .is_some_and(|l| {
                    l.line
                        .iter()
                        .any(|line| is_ours.contains(&line.function_id))
                })
        });
        if s.location_id.len() >= 3 && has_worker_frame {
            valid += s.value[0];
        }
    }
    (total, valid)
}

#[test]
fn cpu_sampling_survives_stress() {
    start_watchdog();
    quiet_intentional_panics();
    ferroprof::alloc::set_sample_interval(1);
    let started = Instant::now();

    let mut profiler = CpuProfiler::start(HZ, 128).expect("the CPU profiler starts");
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("stress-{i}"))
                .spawn(move || stress_worker(i))
                .unwrap()
        })
        .collect();

    let mut symbolizer = Symbolizer::default();
    let mut profiles = Vec::new();
    let mut polls = 0;
    // Profiles collected while the workers run must have samples; the last
    // one may cover only the main thread's few milliseconds after they end.
    let mut collect = |profiler: &mut CpuProfiler, profiles: &mut Vec<Profile>, busy: bool| {
        let profile = profiler.collect(&mut symbolizer);
        if let Err(e) = ferroprof::pprof::check(&profile) {
            panic!("profile {}: {e}", profiles.len());
        }
        assert!(
            !busy || samples_of(&profile) > 0,
            "profile {} has no sample",
            profiles.len()
        );
        profiles.push(profile);
    };
    while !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        profiler.poll().expect("poll");
        polls += 1;
        if polls % 10 == 0 {
            collect(&mut profiler, &mut profiles, true);
        }
    }
    let done: Vec<(usize, usize)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    profiler.poll().expect("poll");
    collect(&mut profiler, &mut profiles, false);
    profiler.stop().expect("the CPU profiler stops");

    let tids: HashSet<i64> = STRESS_TIDS
        .lock()
        .unwrap()
        .iter()
        .map(|&t| i64::from(t))
        .collect();
    let (mut total, mut valid) = (0, 0);
    for p in &profiles {
        let (t, v) = valid_stacks(p, &tids);
        total += t;
        valid += v;
    }
    let all: i64 = profiles.iter().map(samples_of).sum();
    eprintln!(
        "{:?}: {} profiles, {all} samples, {total} on {} stress threads, {valid} valid; \
         workers (iterations, libraries loaded): {done:?}",
        started.elapsed(),
        profiles.len(),
        tids.len()
    );
    assert!(
        done.iter().all(|&(_, loaded)| loaded > 0),
        "no library could be loaded: {done:?}"
    );
    assert!(total > 200, "only {total} samples on the stress threads");
    assert!(
        valid as f64 > 0.9 * total as f64,
        "only {valid} of {total} samples on the stress threads have ≥ 3 frames \
         and a worker function"
    );
    FINISHED.store(true, Ordering::SeqCst);
}
