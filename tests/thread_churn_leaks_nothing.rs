//! 10 000 short-lived threads leave nothing behind in the profiler: no file
//! descriptor, no kernel timer, no armed-thread entry, no memory.
//!
//! A service that spawns a thread per task (or a pool that recycles its
//! threads) runs for months; anything the profiler keeps per thread, and
//! does not give back when the thread exits, grows without bound. One
//! test (so that no other test's threads come and go in the counts), two
//! runs, one after the other:
//!
//! - **The CPU profiler, directly** (1000 Hz, with the heap sampler at a
//!   4 KiB interval): threads start in waves of [`WAVE`]; each wave waits
//!   until `poll` has armed a timer for every thread of it (so all 10 000
//!   are armed, and later removed), then burns a little CPU, allocates,
//!   and exits. Checked: every poll armed the whole wave and failed
//!   nothing; over the run, timers armed minus timers removed equals the
//!   change of the armed count.
//! - **The full profiler** (`Profiler::builder()`, 1000 Hz, heap at
//!   4 KiB, 200 ms period, batches to a folder): the same threads, but the
//!   profiler's own thread polls when it wants; one wave in 50 waits until
//!   the profiler has armed all of its threads (read from
//!   `/proc/self/timers`), the others are gone before it looks.
//!
//! Each test takes a checkpoint after a warm-up of [`WARM_UP`] threads and
//! one at the end, both once the churn threads are gone and the profiler
//! has caught up (it has deleted their timers: the kernel's timer list
//! names exactly the live threads). Between the two, 9 000 threads came
//! and went, and what must not have grown:
//!
//! - open file descriptors (`/proc/self/fd`);
//! - kernel POSIX timers (`/proc/self/timers`), and the CPU profiler's
//!   armed-thread count, both equal to the live threads;
//! - memory: jemalloc's bytes in use by the program (`stats.allocated`
//!   less the bytes parked in thread caches, `tcache_bytes`, which come
//!   and go with the threads' caches), within [`MEMORY_TOLERANCE`]; and the
//!   sampler's live sampled blocks, within [`LIVE_BLOCKS_TOLERANCE`].
//!
//! In the full-profiler test the profiler thread allocates and frees a
//! batch's worth of memory each period, so its checkpoint takes the
//! minimum of each measure over two periods (the idle state between
//! collections) rather than one reading.
//!
//! Nothing depends on the machine's speed: waves wait for conditions, CPU
//! work is measured on the thread's CPU clock. A watchdog turns a hang
//! into a failure.
#![cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod support;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ferroprof::cpu::CpuProfiler;
use ferroprof::pprof::Symbolizer;
use support::scratch::Scratch;

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator<ferroprof::Jemalloc> =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

/// Threads in all.
const THREADS: usize = 10_000;
/// Threads alive at a time.
const WAVE: usize = 8;
/// Threads before the first checkpoint.
const WARM_UP: usize = 1_000;
const HZ: u32 = 1000;
const HEAP_SAMPLE_SIZE: u64 = 4096;
/// CPU each churn thread burns (on its own clock).
const BURN: Duration = Duration::from_micros(300);
const WATCHDOG: Duration = Duration::from_secs(600);

/// Allowed growth of the program's jemalloc bytes between the checkpoints.
///
/// What legitimately differs between two quiescent points is bounded and
/// does not scale with the number of threads: the symbolizer's cache and
/// the aggregator's tables reach their working size during the warm-up
/// (the same code runs after it), and jemalloc's own metadata is not
/// counted. A leak of one 32-byte object per thread would be 288 000 bytes
/// over the 9 000 threads between the checkpoints, above this.
const MEMORY_TOLERANCE: i64 = 256 * 1024;
/// Allowed growth of the live sampled blocks: at a 4 KiB interval a leak
/// of 1 KiB per thread (9 MiB) would be about 2 300 more blocks; the main
/// thread's own retained allocations vary by a few.
const LIVE_BLOCKS_TOLERANCE: i64 = 200;

static FINISHED: AtomicBool = AtomicBool::new(false);

/// Aborts the process if the test has not finished after [`WATCHDOG`].
fn start_watchdog() {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| {
            let start = Instant::now();
            // SeqCst: a plain flag polled every 100 ms.
            while !FINISHED.load(Ordering::SeqCst) {
                if start.elapsed() > WATCHDOG {
                    eprintln!(
                        "thread_churn_leaks_nothing: not finished after {WATCHDOG:?}; aborting"
                    );
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .unwrap();
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is writable.
    assert_eq!(0, unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts)
    });
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

thread_local! {
    /// Freed by the thread-exit path, after the thread's last sample.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// What each churn thread does once running: burn [`BURN`] of CPU while
/// allocating and freeing (about 20 KiB, a few heap samples), and leave a
/// thread-local allocation for its exit to free.
#[inline(never)]
fn churn_thread_body(k: usize) -> usize {
    let start = thread_cpu();
    let mut total = 0;
    let mut x = k as u64 | 1;
    while thread_cpu() - start < BURN {
        for _ in 0..2_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let v = vec![x; 64 + k % 256];
        total += v.len();
    }
    let text: String = (0..32).map(|i| format!("{k}.{i} ")).collect();
    let boxed = Box::new([x; 256]);
    SCRATCH.with(|s| s.borrow_mut().extend_from_slice(&boxed[..64 + k % 64]));
    black_box(total + text.len() + boxed.len())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn task_tids() -> BTreeSet<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The threads that kernel POSIX timers of this process signal, one entry
/// per timer (`notify: signal/tid.<tid>`); `None` if the kernel does not
/// list timers (`CONFIG_CHECKPOINT_RESTORE`).
fn timer_tids() -> Option<Vec<i32>> {
    let text = std::fs::read_to_string("/proc/self/timers").ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("notify:")?.trim().split_once("tid."))
            .filter_map(|(_, tid)| tid.parse().ok())
            .collect(),
    )
}

/// The program's jemalloc bytes: allocated, less what sits in thread
/// caches.
fn program_bytes() -> i64 {
    use tikv_jemalloc_ctl::{epoch, raw, stats};
    epoch::advance().unwrap();
    let allocated = stats::allocated::read().unwrap() as i64;
    // SAFETY: a NUL-terminated name of a size_t statistic
    // (`MALLCTL_ARENAS_ALL` = 4096: merged over arenas).
    let cached: usize = unsafe { raw::read(b"stats.arenas.4096.tcache_bytes\0") }.unwrap();
    allocated - cached as i64
}

#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    threads: usize,
    fds: usize,
    timers: Option<usize>,
    armed: Option<usize>,
    bytes: i64,
    live_blocks: i64,
    stacks: u32,
}

impl Checkpoint {
    fn measure(threads: usize, timers: Option<usize>, armed: Option<usize>) -> Checkpoint {
        Checkpoint {
            threads,
            fds: open_fds(),
            timers,
            armed,
            bytes: program_bytes(),
            live_blocks: i64::from(ferroprof::alloc::stats().live_blocks),
            stacks: ferroprof::alloc::stats().stacks,
        }
    }

    /// The minimum of each measure.
    fn min(self, o: Checkpoint) -> Checkpoint {
        Checkpoint {
            fds: self.fds.min(o.fds),
            bytes: self.bytes.min(o.bytes),
            live_blocks: self.live_blocks.min(o.live_blocks),
            stacks: self.stacks.min(o.stacks),
            ..self
        }
    }
}

/// Compares the end with the warm-up; every failure names both.
fn assert_flat(what: &str, warm: &Checkpoint, end: &Checkpoint) {
    eprintln!(
        "{what}: after {} threads {warm:?}\n{what}: after {} threads {end:?}\n\
         {what}: growth: {} fds, {} program bytes ({:.1} B per thread), {} live sampled blocks",
        warm.threads,
        end.threads,
        end.fds as i64 - warm.fds as i64,
        end.bytes - warm.bytes,
        (end.bytes - warm.bytes) as f64 / (end.threads - warm.threads) as f64,
        end.live_blocks - warm.live_blocks,
    );
    assert!(
        end.fds <= warm.fds,
        "{what}: file descriptors grew: {warm:?} -> {end:?}"
    );
    assert_eq!(
        end.timers, warm.timers,
        "{what}: kernel timers: {warm:?} -> {end:?}"
    );
    assert_eq!(
        end.armed, warm.armed,
        "{what}: armed threads: {warm:?} -> {end:?}"
    );
    assert!(
        end.bytes - warm.bytes <= MEMORY_TOLERANCE,
        "{what}: the program's memory grew by {} bytes over {} threads (allowed {MEMORY_TOLERANCE}): \
         {warm:?} -> {end:?}",
        end.bytes - warm.bytes,
        end.threads - warm.threads
    );
    assert!(
        end.live_blocks - warm.live_blocks <= LIVE_BLOCKS_TOLERANCE,
        "{what}: live sampled blocks grew: {warm:?} -> {end:?}"
    );
}

/// Starts one wave of churn threads (numbers `first..first + WAVE`); each
/// waits at `gate` (if any) before it works. Returns the handles and the
/// tids.
fn spawn_wave(
    first: usize,
    gate: Option<&Arc<Barrier>>,
) -> (Vec<std::thread::JoinHandle<usize>>, Vec<i32>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handles = (first..first + WAVE)
        .map(|k| {
            let gate = gate.cloned();
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("churn-{k}"))
                .spawn(move || {
                    tx.send(gettid()).unwrap();
                    drop(tx);
                    if let Some(gate) = gate {
                        gate.wait();
                    }
                    churn_thread_body(k)
                })
                .unwrap()
        })
        .collect();
    drop(tx);
    let tids = rx.iter().collect();
    (handles, tids)
}

/// The CPU profiler on its own, polled by the test, and its tallies.
struct Direct {
    profiler: CpuProfiler,
    symbolizer: Symbolizer,
    /// Threads of the process other than churn threads.
    baseline: BTreeSet<i32>,
    armed: usize,
    removed: usize,
    samples: i64,
}

impl Direct {
    fn poll(&mut self) -> ferroprof::cpu::SyncStats {
        let stats = self.profiler.poll().expect("poll");
        assert_eq!(stats.failed, 0, "{stats:?}");
        self.armed += stats.armed;
        self.removed += stats.removed;
        stats
    }

    fn collect(&mut self) {
        let profile = self.profiler.collect(&mut self.symbolizer);
        ferroprof::pprof::check(&profile).unwrap();
        self.samples += profile.sample.iter().map(|s| s.value[0]).sum::<i64>();
    }

    /// Polls until the churn threads are gone and none has a timer left,
    /// collects (emptying the period's tables), and measures.
    fn checkpoint(&mut self, threads: usize) -> Checkpoint {
        let total = loop {
            let stats = self.poll();
            if task_tids() == self.baseline && stats.total == self.baseline.len() {
                break stats.total;
            }
            std::thread::yield_now();
        };
        self.collect();
        let timers = timer_tids().map(|t| {
            let set: BTreeSet<i32> = t.iter().copied().collect();
            assert_eq!(
                set, self.baseline,
                "kernel timers signal exactly the live threads"
            );
            t.len()
        });
        Checkpoint::measure(threads, timers, Some(total))
    }
}

/// The CPU profiler on its own, polled by the test.
fn cpu_profiler_arms_and_releases_every_thread_and_keeps_nothing() {
    ferroprof::alloc::set_sample_interval(HEAP_SAMPLE_SIZE);
    let profiler = CpuProfiler::start(HZ, 64).expect("the CPU profiler starts");
    let mut d = Direct {
        profiler,
        symbolizer: Symbolizer::default(),
        baseline: task_tids(),
        armed: 0,
        removed: 0,
        samples: 0,
    };
    let initial_total = d.poll().total;

    let mut warm = None;
    let mut started = 0;
    while started < THREADS {
        let gate = Arc::new(Barrier::new(WAVE + 1));
        let (handles, tids) = spawn_wave(started, Some(&gate));
        // Every thread of the wave is alive (held at the gate): one poll
        // arms them all.
        let stats = d.poll();
        assert_eq!(
            stats.armed, WAVE,
            "threads {tids:?} were not all armed: {stats:?}"
        );
        gate.wait();
        for h in handles {
            h.join().unwrap();
        }
        started += WAVE;
        if started % 400 == 0 {
            d.collect();
        }
        if started == WARM_UP {
            warm = Some(d.checkpoint(started));
        }
    }
    let end = d.checkpoint(started);
    let end_total = end.armed.unwrap();
    let Direct {
        profiler,
        armed,
        removed,
        samples,
        ..
    } = d;
    profiler.stop().expect("the CPU profiler stops");
    ferroprof::alloc::set_sample_interval(0);
    eprintln!(
        "CPU profiler: {armed} timers armed, {removed} removed, {samples} CPU samples; \
         {} heap samples, {} stacks",
        ferroprof::alloc::stats().samples,
        ferroprof::alloc::stats().stacks
    );
    assert!(armed >= THREADS, "only {armed} threads were armed");
    assert_eq!(
        armed as i64 - removed as i64,
        end_total as i64 - initial_total as i64,
        "armed {armed}, removed {removed}, armed threads {initial_total} -> {end_total}"
    );
    assert!(samples > 0, "no CPU sample at all");
    assert_flat("CPU profiler", &warm.unwrap(), &end);
}

/// Waits until the churn threads are gone and the profiler has deleted
/// their timers (the kernel's timers signal exactly the live threads),
/// then measures over two periods, keeping the minima.
fn settle_and_measure(baseline: &BTreeSet<i32>, threads: usize, period: Duration) -> Checkpoint {
    let timers = loop {
        let tasks = task_tids();
        match timer_tids() {
            Some(t) if tasks == *baseline => {
                let set: BTreeSet<i32> = t.iter().copied().collect();
                if set == tasks && t.len() == tasks.len() {
                    break Some(t.len());
                }
            }
            None if tasks == *baseline => break None,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut best = Checkpoint::measure(threads, timers, None);
    let until = Instant::now() + 2 * period;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        best = best.min(Checkpoint::measure(threads, timers, None));
    }
    best
}

/// The full profiler, polling on its own schedule.
fn full_profiler_with_short_lived_threads_keeps_nothing() {
    let scratch = Scratch::new("churn");
    // Not made yet: the profiler makes its output folder.
    let dir = scratch.path().join("out");
    let period = Duration::from_millis(200);
    let profiler = ferroprof::Profiler::builder()
        .output_dir(&dir)
        .upload(false)
        .log_startup(false)
        .period(period)
        .cpu_profile_rate(HZ)
        .heap_sample_size(HEAP_SAMPLE_SIZE)
        .start_with_env(&|_| None)
        .expect("the profiler starts");
    let baseline = task_tids();

    let mut warm = None;
    let mut started = 0;
    let mut waited_waves = 0;
    while started < THREADS {
        let wait_for_timers = (started / WAVE) % 50 == 25;
        let gate = wait_for_timers.then(|| Arc::new(Barrier::new(WAVE + 1)));
        let (handles, tids) = spawn_wave(started, gate.as_ref());
        if let Some(gate) = gate {
            // The profiler's next poll arms them (unless the kernel does
            // not list timers, in which case there is nothing to wait for).
            while let Some(timers) = timer_tids() {
                if tids.iter().all(|t| timers.contains(t)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            waited_waves += 1;
            gate.wait();
        }
        for h in handles {
            h.join().unwrap();
        }
        started += WAVE;
        if started == WARM_UP {
            warm = Some(settle_and_measure(&baseline, started, period));
        }
    }
    let end = settle_and_measure(&baseline, started, period);
    let stats = profiler.stop();
    eprintln!(
        "full profiler: {} batches, {waited_waves} waves waited for their timers; {stats:?}",
        stats.batches
    );
    assert_eq!(stats.collect_error, 0, "{stats:?}");
    assert!(stats.batches >= 2, "{stats:?}");
    let last = last_batch(&dir);
    assert!(last.join("cpu.pprof").is_file(), "{}", last.display());
    assert_flat("full profiler", &warm.unwrap(), &end);
}

fn last_batch(dir: &Path) -> std::path::PathBuf {
    let mut folders: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("event.json").is_file())
        .collect();
    folders.sort();
    folders.pop().expect("a batch")
}

/// The format `timer_tids` parses (fs/proc/base.c, `show_timer`):
/// `notify: signal/tid.<tid>` for a `SIGEV_THREAD_ID` timer. Checked on a
/// timer of our own, never armed, so that the checks cannot pass by
/// reading nothing.
fn the_kernel_timer_listing_names_threads_as_read_here() {
    // SAFETY: zeroed sigevent is valid; the fields set make a
    // thread-directed SIGPROF timer on this thread's CPU clock, never
    // armed, deleted below.
    let timer = unsafe {
        let mut ev: libc::sigevent = std::mem::zeroed();
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = libc::SIGPROF;
        ev.sigev_notify_thread_id = gettid();
        let mut id: libc::timer_t = std::ptr::null_mut();
        assert_eq!(
            0,
            libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut ev, &mut id)
        );
        id
    };
    let listed = timer_tids();
    // SAFETY: the timer created above, deleted once.
    unsafe { libc::timer_delete(timer) };
    if let Some(tids) = listed {
        assert!(tids.contains(&gettid()), "{tids:?}");
    }
}

#[test]
fn thread_churn_leaks_nothing() {
    start_watchdog();
    the_kernel_timer_listing_names_threads_as_read_here();
    cpu_profiler_arms_and_releases_every_thread_and_keeps_nothing();
    full_profiler_with_short_lived_threads_keeps_nothing();
    FINISHED.store(true, Ordering::SeqCst);
}
