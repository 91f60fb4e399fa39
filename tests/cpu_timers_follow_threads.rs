//! The CPU profiler's timers follow threads: every busy thread receives
//! `SIGPROF` in proportion to its own CPU time, idle threads receive none,
//! exited threads lose their timers, and stopping silences everything.
//!
//! Timers, interval timers and the `SIGPROF` disposition are process-wide, so
//! these tests live in their own binary (own process) and take turns through
//! [`serial`]. The `cpu` module is private to the crate, so this binary
//! compiles `src/cpu/timer.rs` itself.
//!
//! No bound depends on machine speed: every expectation comes from the
//! threads' own CPU clocks (`CLOCK_THREAD_CPUTIME_ID`), never from wall time.
//! Wall time only caps how long a busy loop may run on a loaded machine.

#![cfg(any(target_os = "linux", target_os = "android"))]

#[allow(dead_code)]
#[path = "../src/cpu/timer.rs"]
mod timer;

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use timer::{TimerError, TimerMode, Timers};

const HZ: u32 = 200;
/// Longest any busy loop runs, whatever CPU it got by then.
const WALL_CAP: Duration = Duration::from_secs(6);

/// One test at a time: they share the process's timers and signal handler.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- a counting SIGPROF handler ------------------------------------------

const SLOTS: usize = 8;
/// The tid registered in each slot (0: free).
static SLOT_TID: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
/// Timer periods (1 + `si_overrun`) received by each slot's thread.
static SLOT_PERIODS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Signals received by each slot's thread.
static SLOT_SIGNALS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// The thread's own CPU time (ns) when its latest signal was handled: the
/// periods received are those of its CPU time up to then (the kernel
/// notices a thread's expiries only at ticks it runs through, so on an
/// oversubscribed machine the last ones may never be delivered before the
/// thread exits).
static SLOT_LAST_CPU: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Periods received by unregistered threads.
static OTHER_PERIODS: AtomicU64 = AtomicU64::new(0);

fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Async-signal-safe: a syscall without side effects and relaxed atomics.
/// Every counter is only read by the thread it counts for (the signal is
/// delivered to that thread), or after that thread was joined.
extern "C" fn count_sigprof(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid `siginfo_t`.
    let periods = timer::expirations(unsafe { &*info });
    let tid = gettid();
    for slot in 0..SLOTS {
        if SLOT_TID[slot].load(Relaxed) == tid {
            SLOT_PERIODS[slot].fetch_add(periods, Relaxed);
            SLOT_SIGNALS[slot].fetch_add(1, Relaxed);
            if let Some(ns) = try_clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) {
                SLOT_LAST_CPU[slot].store(ns, Relaxed);
            }
            return;
        }
    }
    OTHER_PERIODS.fetch_add(periods, Relaxed);
}

/// Installs [`count_sigprof`] with zeroed counters; restores the previous
/// disposition when dropped.
struct CountingHandler {
    previous: libc::sigaction,
}

impl CountingHandler {
    fn install() -> Self {
        for slot in 0..SLOTS {
            SLOT_TID[slot].store(0, Relaxed);
            SLOT_PERIODS[slot].store(0, Relaxed);
            SLOT_SIGNALS[slot].store(0, Relaxed);
            SLOT_LAST_CPU[slot].store(0, Relaxed);
        }
        OTHER_PERIODS.store(0, Relaxed);
        // SAFETY: all-zero bytes are a valid `sigaction`.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = count_sigprof as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
        // SAFETY: as above.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are live locals; the handler is an
        // `extern "C"` function with the SA_SIGINFO signature.
        assert_eq!(0, unsafe {
            libc::sigaction(libc::SIGPROF, &action, &mut previous)
        });
        CountingHandler { previous }
    }
}

impl Drop for CountingHandler {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved by `install`.
        unsafe { libc::sigaction(libc::SIGPROF, &self.previous, std::ptr::null_mut()) };
    }
}

/// Counts signals to the calling thread in `slot` from now on.
fn register(slot: usize) {
    SLOT_TID[slot].store(gettid(), Relaxed);
}

fn periods(slot: usize) -> u64 {
    SLOT_PERIODS[slot].load(Relaxed)
}

// ---- clocks and kernel timers --------------------------------------------

fn clock_ns(clock: libc::clockid_t) -> u64 {
    try_clock_ns(clock).unwrap_or_else(|| panic!("clock_gettime({clock}) failed"))
}

/// `clock`'s time in nanoseconds; async-signal-safe (no panic, no lock).
fn try_clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is writable; clock_gettime is async-signal-safe.
    (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
        .then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The clock `ITIMER_PROF` counts: the process's user + system time as the
/// tick charges it, `MAKE_PROCESS_CPUCLOCK(0, CPUCLOCK_PROF)` = `~0 << 3`.
/// Not `CLOCK_PROCESS_CPUTIME_ID` (exact runtime): with the CPU oversubscribed,
/// a thread on the CPU between ticks was charged 2-10x less PROF than runtime.
const PROCESS_PROF_CLOCK: libc::clockid_t = !0 << 3;

/// Burns CPU on this thread until its own clock advanced by `cpu_ns` (or
/// [`WALL_CAP`] passed); returns (CPU used, periods received meanwhile).
fn burn(slot: usize, cpu_ns: u64) -> (u64, u64) {
    let (cpu, _, periods) = burn_until_last_signal(slot, cpu_ns);
    (cpu, periods)
}

/// [`burn`], also returning the CPU time burned up to the last signal this
/// thread handled (0 without one).
fn burn_until_last_signal(slot: usize, cpu_ns: u64) -> (u64, u64, u64) {
    let wall = Instant::now();
    let (c0, p0) = (thread_cpu_ns(), periods(slot));
    let mut x = 0u64;
    while thread_cpu_ns() - c0 < cpu_ns && wall.elapsed() < WALL_CAP {
        for i in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    let last = SLOT_LAST_CPU[slot].load(Relaxed).saturating_sub(c0);
    (thread_cpu_ns() - c0, last, periods(slot) - p0)
}

/// Live POSIX timers of this process, from `/proc/self/timers`
/// (`CONFIG_CHECKPOINT_RESTORE`), if the kernel has it.
fn kernel_timers() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/timers").ok()?;
    Some(text.lines().filter(|l| l.starts_with("ID:")).count())
}

/// Waits (at most [`WALL_CAP`]) until `tid` has left `/proc/self/task`.
fn wait_until_gone(tid: i32) {
    let path = format!("/proc/self/task/{tid}");
    let wall = Instant::now();
    while std::path::Path::new(&path).exists() {
        assert!(wall.elapsed() < WALL_CAP, "thread {tid} never left {path}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Samples a thread with `cpu_ns` of CPU should get: a Poisson count with
/// mean `cpu × hz` allows ±5σ = 5·√n, plus 3 for the phase of the first
/// expiry and the tick that notices the last one. A per-thread CPU timer is
/// in fact nearly deterministic (within a period or two on an idle machine);
/// the Poisson width absorbs the late expiry checks of a thread that is
/// rarely on the CPU at a tick (about -9% seen with two CPU hogs on 2 vCPUs).
fn assert_proportional(what: &str, cpu_ns: u64, got: u64) {
    let expected = cpu_ns as f64 * f64::from(HZ) / 1e9;
    let slack = 5.0 * expected.sqrt() + 3.0;
    eprintln!(
        "{what}: {:.3} s CPU, expected {expected:.1} periods, got {got} (allowed ±{slack:.1})",
        cpu_ns as f64 / 1e9
    );
    assert!(
        (got as f64 - expected).abs() <= slack,
        "{what}: {:.3} s of CPU at {HZ} Hz should give {expected:.1} ± {slack:.1} periods, got {got}",
        cpu_ns as f64 / 1e9
    );
}

// ---- the tests ------------------------------------------------------------

#[test]
fn busy_threads_are_sampled_in_proportion_to_their_own_cpu_time_and_idle_ones_not_at_all() {
    let _serial = serial();
    let _handler = CountingHandler::install();
    let start = Arc::new(Barrier::new(4));
    let (idle_tx, idle_rx) = mpsc::channel::<()>();

    let burner = |slot: usize, cpu_ns: u64| {
        let start = Arc::clone(&start);
        std::thread::spawn(move || {
            register(slot);
            start.wait(); // registered
            start.wait(); // armed
            burn_until_last_signal(slot, cpu_ns)
        })
    };
    let heavy = burner(0, 900_000_000);
    let light = burner(1, 300_000_000);
    let idle = {
        let start = Arc::clone(&start);
        std::thread::spawn(move || {
            register(2);
            start.wait();
            start.wait();
            let (c0, p0) = (thread_cpu_ns(), periods(2));
            let _ = idle_rx.recv();
            (thread_cpu_ns() - c0, periods(2) - p0)
        })
    };

    start.wait();
    let mut timers = Timers::new(HZ).expect("timers start");
    assert_eq!(timers.mode(), TimerMode::PerThread, "{timers:?}");
    // The listing can skip a live thread while another exits (see
    // `threads_that_exit_lose_their_timers...`); sync until all three are
    // armed, bounded by a count.
    let tids = [0, 1, 2].map(|slot| SLOT_TID[slot].load(Relaxed));
    for _ in 0..1000 {
        if tids.iter().all(|&tid| timers.is_armed(tid)) {
            break;
        }
        timers.sync().expect("sync");
    }
    assert!(
        tids.iter().all(|&tid| timers.is_armed(tid)),
        "threads {tids:?} not all armed after 1000 syncs: {timers:?}"
    );
    start.wait();

    let wall = Instant::now();
    let (heavy_cpu, heavy_signalled, heavy_periods) = heavy.join().unwrap();
    let (light_cpu, light_signalled, light_periods) = light.join().unwrap();
    idle_tx.send(()).unwrap();
    let (idle_cpu, idle_periods) = idle.join().unwrap();
    timers.stop().expect("timers stop");
    eprintln!("burning took {:?} of wall time", wall.elapsed());
    eprintln!(
        "signals: heavy {}, light {}, idle {}",
        SLOT_SIGNALS[0].load(Relaxed),
        SLOT_SIGNALS[1].load(Relaxed),
        SLOT_SIGNALS[2].load(Relaxed)
    );

    // Each thread's periods match its CPU time up to the last signal it
    // handled (see `SLOT_LAST_CPU`), and signals kept coming while it ran.
    for (what, cpu, signalled, periods) in [
        ("heavy thread", heavy_cpu, heavy_signalled, heavy_periods),
        ("light thread", light_cpu, light_signalled, light_periods),
    ] {
        eprintln!(
            "{what}: last signal after {:.3} of its {:.3} s of CPU",
            signalled as f64 / 1e9,
            cpu as f64 / 1e9
        );
        assert!(
            signalled >= cpu / 4,
            "{what}: signals stopped after {signalled} ns of its {cpu} ns of CPU"
        );
        assert_proportional(what, signalled, periods);
    }
    assert_proportional("idle thread", idle_cpu, idle_periods);
    assert!(
        idle_periods <= 1,
        "a sleeping thread ({idle_cpu} ns of CPU) got {idle_periods} samples"
    );
}

#[test]
fn threads_that_exit_lose_their_timers_and_kernel_timers_do_not_grow() {
    let _serial = serial();
    let _handler = CountingHandler::install();
    let before = kernel_timers();
    let mut timers = Timers::new(HZ).expect("timers start");
    assert_eq!(timers.mode(), TimerMode::PerThread, "{timers:?}");
    let baseline = timers.armed_threads();
    let (mut armed, mut removed, mut gone, mut failed) = (0, 0, 0, 0);

    let wall = Instant::now();
    for cycle in 0..200 {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = go_rx.recv();
            gettid()
        });
        // A listing of /proc/self/task taken while another thread of the
        // process exits (the harness runs other tests alongside) can miss
        // a live thread; the next sync, as the next poll would, finds it.
        // Bounded by a count, not by time.
        let mut stats = timers.sync().expect("sync");
        for _ in 0..1000 {
            armed += stats.armed;
            gone += stats.gone;
            failed += stats.failed;
            if stats.armed >= 1 {
                break;
            }
            stats = timers.sync().expect("sync");
        }
        assert!(
            stats.armed >= 1,
            "cycle {cycle}: new thread not armed after 1000 syncs: {stats:?}"
        );
        go_tx.send(()).unwrap();
        let tid = thread.join().unwrap();
        // `join` returns once the thread has cleared its tid, which is before
        // the kernel drops it from the thread list.
        wait_until_gone(tid);

        let stats = timers.sync().expect("sync");
        assert!(
            stats.removed >= 1,
            "cycle {cycle}: exited thread kept: {stats:?}"
        );
        assert_eq!(stats.total, timers.armed_threads());
        removed += stats.removed;
        gone += stats.gone;
        failed += stats.failed;
        // Every kernel timer is one we track, and the other way round.
        assert_eq!(
            kernel_timers(),
            before.map(|n| n + timers.armed_threads()),
            "cycle {cycle}"
        );
    }
    eprintln!(
        "200 spawn/exit cycles in {:?}: armed {armed}, removed {removed}, gone {gone}, failed {failed}; \
         threads armed {baseline} before, {} after; kernel timers {:?} before start, {:?} now",
        wall.elapsed(),
        timers.armed_threads(),
        before,
        kernel_timers()
    );
    assert_eq!(failed, 0, "{:?}", timers.last_error());
    assert!(armed >= 200 && removed >= 200);
    // Test-harness threads may come and go meanwhile; 200 exited ones must not
    // have accumulated.
    assert!(timers.armed_threads() <= baseline + 4, "{timers:?}");

    timers.stop().expect("timers stop");
    assert_eq!(kernel_timers(), before, "timers left behind after stop");
}

#[test]
fn stop_deletes_every_timer_and_no_signal_follows() {
    let _serial = serial();
    let _handler = CountingHandler::install();
    let before = kernel_timers();
    let start = Arc::new(Barrier::new(2));
    let stopped = Arc::new(Barrier::new(2));
    let worker = {
        let (start, stopped) = (Arc::clone(&start), Arc::clone(&stopped));
        std::thread::spawn(move || {
            register(0);
            start.wait(); // registered
            start.wait(); // armed
            let armed = burn(0, 100_000_000);
            stopped.wait(); // burned while armed
            stopped.wait(); // stopped
            (armed, burn(0, 200_000_000))
        })
    };
    start.wait();
    let timers = Timers::new(HZ).expect("timers start");
    assert_eq!(timers.mode(), TimerMode::PerThread, "{timers:?}");
    start.wait();
    stopped.wait();
    timers.stop().expect("timers stop");
    assert_eq!(kernel_timers(), before, "timers left behind after stop");
    stopped.wait();

    let ((armed_cpu, armed_periods), (after_cpu, after_periods)) = worker.join().unwrap();
    assert_proportional("while armed", armed_cpu, armed_periods);
    assert_eq!(
        after_periods, 0,
        "{after_cpu} ns of CPU after stop still brought {after_periods} samples"
    );
}

#[test]
fn process_wide_fallback_samples_the_process_and_restores_the_previous_itimer() {
    let _serial = serial();
    let _handler = CountingHandler::install();
    let zero = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // Someone else's profiling timer: 100 s of CPU, far beyond this test.
    let theirs = libc::itimerval {
        it_interval: zero,
        it_value: libc::timeval {
            tv_sec: 100,
            tv_usec: 0,
        },
    };
    // SAFETY: `theirs` is a live, initialized `itimerval`.
    assert_eq!(0, unsafe {
        libc::setitimer(libc::ITIMER_PROF, &theirs, std::ptr::null_mut())
    });

    let timers = Timers::process_wide(HZ).expect("process-wide timer starts");
    assert_eq!(timers.mode(), TimerMode::Process);
    assert_eq!(timers.period_ns(), 5_000_000);
    assert_eq!(timers.armed_threads(), 0);
    register(0);
    let process_cpu0 = clock_ns(PROCESS_PROF_CLOCK);
    let p0 = periods(0) + OTHER_PERIODS.load(Relaxed);
    // Until the clock ITIMER_PROF runs on has advanced by 300 ms: on an
    // oversubscribed machine the tick charges a thread far less than its
    // runtime (0-8 ms for 300 ms was seen at a load of 6 on 2 vCPUs).
    let wall = Instant::now();
    while clock_ns(PROCESS_PROF_CLOCK) - process_cpu0 < 300_000_000 && wall.elapsed() < WALL_CAP {
        burn(0, 10_000_000);
    }
    let process_cpu = clock_ns(PROCESS_PROF_CLOCK) - process_cpu0;
    let got = periods(0) + OTHER_PERIODS.load(Relaxed) - p0;
    let period_ns = timers.period_ns();
    timers.stop().expect("timers stop");
    SLOT_TID[0].store(0, Relaxed);

    // One busy thread: no merged signals, so the count follows the clock
    // ITIMER_PROF runs on.
    assert_proportional("process (PROF clock)", process_cpu, got);
    if process_cpu >= 2 * period_ns {
        assert!(got > 0, "no samples from ITIMER_PROF");
    }
    let mut now = libc::itimerval {
        it_interval: zero,
        it_value: zero,
    };
    // SAFETY: `now` is writable.
    assert_eq!(0, unsafe { libc::getitimer(libc::ITIMER_PROF, &mut now) });
    // SAFETY: as above; disarms the test's own timer.
    unsafe {
        libc::setitimer(
            libc::ITIMER_PROF,
            &libc::itimerval {
                it_interval: zero,
                it_value: zero,
            },
            std::ptr::null_mut(),
        )
    };
    assert_eq!((now.it_interval.tv_sec, now.it_interval.tv_usec), (0, 0));
    assert!(
        now.it_value.tv_sec >= 98 && now.it_value.tv_sec <= 100,
        "the previous ITIMER_PROF was not restored: {}.{:06} s left",
        now.it_value.tv_sec,
        now.it_value.tv_usec
    );
}

#[test]
fn timers_refuse_to_start_while_sigprof_would_kill_the_process() {
    let _serial = serial();
    // SAFETY: all-zero bytes are a valid `sigaction`.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries.
    assert_eq!(0, unsafe {
        libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut current)
    });
    assert_eq!(
        current.sa_sigaction,
        libc::SIG_DFL,
        "a handler leaked from another test"
    );
    let before = kernel_timers();
    assert_eq!(Timers::new(HZ).unwrap_err(), TimerError::NoSignalHandler);
    assert_eq!(
        Timers::process_wide(HZ).unwrap_err(),
        TimerError::NoSignalHandler
    );
    assert_eq!(kernel_timers(), before);
}

#[test]
fn only_one_set_of_timers_runs_at_a_time() {
    let _serial = serial();
    let _handler = CountingHandler::install();
    let first = Timers::new(HZ).expect("timers start");
    assert_eq!(Timers::new(HZ).unwrap_err(), TimerError::AlreadyRunning);
    assert_eq!(
        Timers::process_wide(HZ).unwrap_err(),
        TimerError::AlreadyRunning
    );
    drop(first);
    Timers::new(HZ).expect("timers start again after the first is dropped");
}
