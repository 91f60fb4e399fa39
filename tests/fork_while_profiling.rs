//! A service that forks while the profiler runs keeps working on both
//! sides of the fork.
//!
//! The parent runs the full profiler (CPU at 250 Hz, the heap sampler at a
//! 4 KiB interval, a 300 ms period, batches to a folder) with two worker
//! threads allocating and burning CPU, so that at each `fork` signals are
//! in flight, the sample ring is in use and the heap sampler is busy. It
//! forks three times, from the test thread, a state it controls only in
//! that it holds the `Profiler` value there; what the other threads are
//! doing at that instant is left to chance, as in a real service.
//!
//! Each child checks that it did not inherit a half-running profiler: the
//! `SIGPROF` disposition is the one from before the parent's profiler
//! started, it has no POSIX or interval timer, and with `SIGPROF` blocked
//! while it burns CPU none arrives (one would be left pending); the
//! inherited `Profiler` says it is not running and heap sampling is off,
//! as after `stop()`. It allocates and frees freely (sizes from 8 B to
//! 1 MiB, growth by `realloc`, on its own thread and on threads it starts),
//! starts a profiler of its own, which is the only one (a second start is
//! refused), drops the inherited `Profiler` (which must neither hang, since
//! its thread does not exist here, nor disturb the child's own profiler),
//! burns CPU and stops. It reports through a pipe and exits 0.
//!
//! The parent checks that every child exited 0, that the child's folder got
//! batches whose CPU profile has samples on the child's own main thread and
//! a heap profile, and that its own profiling went on: after each fork a
//! new batch of its own arrives, with CPU samples.
//!
//! A fork must also stay cheap (a service spawning processes by
//! `fork` + `exec` forks often): the fork handlers must not write to the
//! 2 MiB sample ring, which would copy every page of it into each child.
//! Each child counts its minor page faults before doing anything, and the
//! count may exceed that of a control child, forked before any profiler
//! ran, by less than half the ring's pages. And the parent starts
//! processes as a service would, with `std::process::Command`, both by
//! `posix_spawn` (no fork handlers run) and by `fork` + `exec` (they do):
//! each runs its program.
//!
//! Nothing depends on the machine's speed: CPU work is measured on CPU
//! clocks, and everything else waits for a condition. A watchdog turns a
//! hang (of the parent, or of a child: it kills them) into a failure.
#![cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

mod support;

use std::hint::black_box;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use ferroprof::{Error, Profiler};
use support::scratch::Scratch;

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator<ferroprof::Jemalloc> =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

const CHILDREN: usize = 3;
const WATCHDOG: Duration = Duration::from_secs(180);
/// How long a child may take before it is deemed hung.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);
const HEAP_SAMPLE_SIZE: u64 = 4096;

static FINISHED: AtomicBool = AtomicBool::new(false);
static STOP_WORKERS: AtomicBool = AtomicBool::new(false);
/// The child being waited for (0: none), for the watchdog to kill.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Kills the child being waited for and aborts if the test has not
/// finished after [`WATCHDOG`].
fn start_watchdog() {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| {
            let start = Instant::now();
            // SeqCst (both flags): plain flags polled every 100 ms.
            while !FINISHED.load(Ordering::SeqCst) {
                if start.elapsed() > WATCHDOG {
                    let child = CHILD.load(Ordering::SeqCst);
                    if child > 0 {
                        // SAFETY: kill has no memory preconditions.
                        unsafe { libc::kill(child, libc::SIGKILL) };
                    }
                    eprintln!("fork_while_profiling: not finished after {WATCHDOG:?}; aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .unwrap();
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is writable; the clock ids used here always exist.
    assert_eq!(0, unsafe { libc::clock_gettime(clock, &mut ts) });
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Allocates and frees a mix of sizes (8 B to 1 MiB, growth by realloc).
#[inline(never)]
fn churn_heap(k: usize) -> usize {
    let mut total = 0;
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(32);
    for i in 0..32 {
        let len = 8 << ((k + i) % 18);
        kept.push(vec![(i % 251) as u8; len.min(1 << 20)]);
    }
    let mut grown = Vec::new();
    for i in 0..2000u32 {
        grown.push(i);
    }
    let text: String = (0..64).map(|i| format!("{k}:{i};")).collect();
    let boxed: Box<[u64; 512]> = Box::new([k as u64; 512]);
    total += kept.iter().map(Vec::len).sum::<usize>() + grown.len() + text.len() + boxed.len();
    black_box(total)
}

#[inline(never)]
fn spin(rounds: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..rounds {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

/// Burns `cpu` of this thread's CPU time, allocating as it goes.
#[inline(never)]
fn burn_and_allocate(cpu: Duration) {
    let start = cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut k = 0;
    while cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID) - start < cpu {
        black_box(spin(20_000));
        black_box(churn_heap(k));
        k += 1;
    }
}

#[inline(never)]
fn parent_worker() {
    let mut k = 0;
    while !STOP_WORKERS.load(Ordering::Relaxed) {
        black_box(spin(50_000));
        black_box(churn_heap(k));
        k += 1;
    }
}

/// The `SIGPROF` handler address (or SIG_DFL / SIG_IGN).
fn sigprof_disposition() -> usize {
    // SAFETY: all-zero is a valid sigaction; a null new action only reads.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut sa), 0);
        sa.sa_sigaction
    }
}

/// POSIX timers of this process (`/proc/self/timers`), if the kernel
/// lists them.
fn kernel_timers() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/timers").ok()?;
    Some(text.lines().filter(|l| l.starts_with("ID:")).count())
}

/// Batch folders under `dir` (complete ones: `event.json` is written last).
fn batches(dir: &Path) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("event.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    folders
}

/// CPU samples in a batch, all of them or those of thread `tid`.
fn cpu_samples(folder: &Path, tid: Option<i64>) -> i64 {
    let profile = ferroprof::view::load(&folder.join("cpu.pprof"))
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    ferroprof::pprof::check(&profile).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    profile
        .sample
        .iter()
        .filter(|s| {
            tid.is_none_or(|tid| {
                s.label
                    .iter()
                    .any(|l| profile.str(l.key) == "thread id" && l.num == tid)
            })
        })
        .map(|s| s.value[0])
        .sum()
}

fn builder(dir: &Path) -> ferroprof::ProfilerBuilder {
    Profiler::builder()
        .output_dir(dir)
        .upload(false)
        .log_startup(false)
        .period(Duration::from_millis(300))
        .cpu_profile_rate(250)
        .heap_sample_size(HEAP_SAMPLE_SIZE)
}

/// Starts `sh -c 'exit 7'` ten times by `posix_spawn` (std's way when it
/// can) and ten by `fork` + `exec` (std's way with a `pre_exec` hook, which
/// runs the fork handlers); each must run it.
fn spawn_processes_while_profiling() {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    for _ in 0..10 {
        let spawned = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .status()
            .expect("posix_spawn");
        assert_eq!(spawned.code(), Some(7), "posix_spawn: {spawned:?}");
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "exit 7"]);
        // SAFETY: the hook does nothing; it only makes std fork and exec.
        unsafe { command.pre_exec(|| Ok(())) };
        let forked = command.status().expect("fork + exec");
        assert_eq!(forked.code(), Some(7), "fork + exec: {forked:?}");
    }
}

/// Minor page faults of this process so far (in a new child: since the
/// fork, including the fork handlers' copy-on-write faults).
fn minor_faults() -> i64 {
    // SAFETY: all-zero is a valid rusage; a valid out-pointer.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(0, libc::getrusage(libc::RUSAGE_SELF, &mut usage));
        usage
    };
    usage.ru_minflt
}

/// Pages of the CPU profiler's sample ring.
fn ring_pages() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    (ferroprof::cpu::Ring::new(ferroprof::cpu::DEFAULT_CAPACITY).footprint() / page) as i64
}

/// A pipe (close-on-exec): the read end, then the write end.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds.
    assert_eq!(0, unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) });
    // SAFETY: both fds were just created and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Forks a child that only reports its page faults since the fork (the
/// control for [`ring_pages`]'s check); returns them.
fn control_child_faults() -> i64 {
    let (read_end, write_end) = pipe();
    // SAFETY: the child calls only async-signal-safe functions (getrusage,
    // write, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let faults = minor_faults().to_ne_bytes();
        // SAFETY: writes the 8 bytes of `faults` to the pipe, then ends the
        // child at once.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&write_end),
                faults.as_ptr().cast(),
                faults.len(),
            );
            libc::_exit(0)
        }
    }
    drop(write_end);
    CHILD.store(pid, Ordering::SeqCst);
    let status = wait_for(pid);
    CHILD.store(0, Ordering::SeqCst);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "control child: status {status:#x}"
    );
    let mut bytes = [0u8; 8];
    std::fs::File::from(read_end)
        .read_exact(&mut bytes)
        .expect("the control child's fault count");
    i64::from_ne_bytes(bytes)
}

/// Everything a child checks; any failure is the returned message.
fn child_checks(
    inherited: Profiler,
    dir: &Path,
    disposition_before_profiling: usize,
) -> Result<(), String> {
    macro_rules! ensure {
        ($cond:expr, $($msg:tt)+) => {
            if !$cond {
                return Err(format!($($msg)+));
            }
        };
    }
    // Nothing of the parent's profiler runs here.
    ensure!(
        !inherited.is_running(),
        "the inherited Profiler says it runs"
    );
    ensure!(
        ferroprof::alloc::sample_interval() == 0,
        "heap sampling is on ({} B) with no profiler in the child",
        ferroprof::alloc::sample_interval()
    );
    let disposition = sigprof_disposition();
    ensure!(
        disposition == disposition_before_profiling,
        "SIGPROF disposition {disposition:#x}, before the parent's profiler \
         {disposition_before_profiling:#x}"
    );
    if let Some(n) = kernel_timers() {
        ensure!(n == 0, "{n} POSIX timers in the child");
    }
    // SAFETY: a valid out-pointer.
    let itimer = unsafe {
        let mut v: libc::itimerval = std::mem::zeroed();
        libc::getitimer(libc::ITIMER_PROF, &mut v);
        v
    };
    ensure!(
        itimer.it_value.tv_sec == 0 && itimer.it_value.tv_usec == 0,
        "ITIMER_PROF is armed in the child"
    );

    // No SIGPROF arrives: blocked, one would stay pending.
    // SAFETY: sigset_t is plain data; the calls get valid pointers.
    let (mut block, mut old) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: as above.
    unsafe {
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGPROF);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
    }
    // Allocating and freeing freely, here and on new threads (which inherit
    // the mask).
    burn_and_allocate(Duration::from_millis(100));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                burn_and_allocate(Duration::from_millis(20));
                churn_heap(i)
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a child thread panicked".to_owned())?;
    }
    // SAFETY: as above.
    let pending = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        libc::sigismember(&set, libc::SIGPROF) == 1
    };
    ensure!(!pending, "a SIGPROF arrived in the child");
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };

    // A profiler of its own.
    let own = builder(dir)
        .start_with_env(&|_| None)
        .map_err(|e| format!("the child's profiler did not start: {e}"))?;
    ensure!(
        matches!(
            builder(dir).start_with_env(&|_| None),
            Err(Error::AlreadyRunning)
        ),
        "a second profiler started in the child"
    );
    ensure!(
        ferroprof::alloc::sample_interval() == HEAP_SAMPLE_SIZE,
        "the child's profiler did not set the heap interval"
    );
    // Dropping the inherited one neither hangs nor disturbs it.
    drop(inherited);
    ensure!(own.is_running(), "the child's profiler stopped");
    ensure!(
        matches!(
            builder(dir).start_with_env(&|_| None),
            Err(Error::AlreadyRunning)
        ),
        "dropping the inherited Profiler released the child's claim"
    );
    ensure!(
        ferroprof::alloc::sample_interval() == HEAP_SAMPLE_SIZE,
        "dropping the inherited Profiler changed the heap interval"
    );
    burn_and_allocate(Duration::from_millis(400));
    let stats = own.stop();
    ensure!(stats.batches >= 1, "the child's profiler: {stats:?}");
    ensure!(stats.collect_error == 0, "the child's profiler: {stats:?}");
    Ok(())
}

/// Runs in the child: reports on `report` (its page faults at the fork,
/// `faults`, if all went well; else what failed) and exits, never returns.
fn child_main(
    report: OwnedFd,
    faults: i64,
    inherited: Profiler,
    dir: &Path,
    disposition_before_profiling: usize,
) -> ! {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        child_checks(inherited, dir, disposition_before_profiling)
    }));
    let (code, message) = match outcome {
        Ok(Ok(())) => (0, faults.to_string()),
        Ok(Err(message)) => (1, message),
        Err(panic) => (
            2,
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()),
        ),
    };
    let mut file = std::fs::File::from(report);
    let _ = std::io::Write::write_all(&mut file, message.as_bytes());
    drop(file);
    // SAFETY: ends the child at once, without running the test harness's
    // exit path or atexit handlers copied from the parent.
    unsafe { libc::_exit(code) }
}

/// Waits for `pid` (killing it past [`CHILD_DEADLINE`]); returns its wait
/// status.
fn wait_for(pid: libc::pid_t) -> i32 {
    let deadline = Instant::now() + CHILD_DEADLINE;
    loop {
        let mut status = 0;
        // SAFETY: a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return status;
        }
        assert_eq!(r, 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() > deadline {
            // SAFETY: kill and a blocking waitpid on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("child {pid} still running after {CHILD_DEADLINE:?}: hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `dir` has a batch not in `seen` whose CPU profile has
/// samples; returns it.
fn next_batch_with_samples(dir: &Path, seen: &[PathBuf]) -> PathBuf {
    loop {
        for b in batches(dir) {
            if !seen.contains(&b) && cpu_samples(&b, None) > 0 {
                return b;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fork_while_profiling() {
    start_watchdog();
    // The parent's and the children's output folders, in one scratch
    // folder that only this process removes.
    let scratch = Scratch::new("fork");
    let root = scratch.path();
    let parent_dir = root.join("parent");
    let disposition_before = sigprof_disposition();

    // The workers first, so that the control child is forked from a
    // process with the same threads (and allocator arenas) as the others,
    // less the profiler's own.
    let workers: Vec<_> = (0..2)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(parent_worker)
                .unwrap()
        })
        .collect();
    let control_faults = control_child_faults();
    let ring_pages = ring_pages();

    let profiler = builder(&parent_dir)
        .start_with_env(&|_| None)
        .expect("the parent's profiler starts");
    // Steady state: a batch with CPU samples.
    next_batch_with_samples(&parent_dir, &[]);

    let mut profiler = Some(profiler);
    for n in 0..CHILDREN {
        let child_dir = root.join(format!("child-{n}"));
        let seen = batches(&parent_dir);
        let (read_end, write_end) = pipe();
        // SAFETY: the child only runs `child_main`, which ends in `_exit`;
        // see the module docs for what it may and does rely on after a fork
        // of a multi-threaded process (malloc is usable: jemalloc's fork
        // handlers).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // First, before this child touches anything.
            let faults = minor_faults();
            drop(read_end);
            let inherited = profiler.take().unwrap();
            child_main(write_end, faults, inherited, &child_dir, disposition_before);
        }
        CHILD.store(pid, Ordering::SeqCst);
        drop(write_end);

        // The parent keeps profiling meanwhile.
        let after_fork = next_batch_with_samples(&parent_dir, &seen);
        let status = wait_for(pid);
        CHILD.store(0, Ordering::SeqCst);
        let mut message = String::new();
        std::fs::File::from(read_end)
            .read_to_string(&mut message)
            .unwrap();
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child {n} (pid {pid}): {}: {message}",
            if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("exit status {}", libc::WEXITSTATUS(status))
            }
        );

        let child_batches = batches(&child_dir);
        assert!(!child_batches.is_empty(), "child {n} wrote no batch");
        let on_child_main: i64 = child_batches
            .iter()
            .map(|b| cpu_samples(b, Some(i64::from(pid))))
            .sum();
        assert!(
            child_batches
                .iter()
                .all(|b| b.join("delta-heap.pprof").is_file()),
            "child {n}: a batch has no heap profile"
        );
        let faults: i64 = message.trim().parse().expect("the child's fault count");
        eprintln!(
            "child {n} (pid {pid}): {} batches, {on_child_main} CPU samples on its main thread; \
             parent batch after the fork: {}, {} samples; {faults} page faults at the fork \
             (control child {control_faults}, ring {ring_pages} pages)",
            child_batches.len(),
            after_fork.display(),
            cpu_samples(&after_fork, None)
        );
        // Only where the ring spans enough pages to tell from the noise
        // (4 KiB pages: 514; 64 KiB pages: 33, too few).
        if ring_pages >= 128 {
            assert!(
                faults - control_faults < ring_pages / 2,
                "child {n}: {faults} page faults at the fork, {control_faults} in a child \
                 forked before profiling: the fork handlers copied the sample ring \
                 ({ring_pages} pages)"
            );
        }
        assert!(
            on_child_main > 0,
            "child {n}: no CPU sample on its own main thread"
        );
    }

    spawn_processes_while_profiling();
    // And the parent still profiles after the last child is gone.
    let seen = batches(&parent_dir);
    next_batch_with_samples(&parent_dir, &seen);
    STOP_WORKERS.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let stats = profiler.take().unwrap().stop();
    assert_eq!(stats.collect_error, 0, "{stats:?}");
    assert_eq!(sigprof_disposition(), disposition_before);
    FINISHED.store(true, Ordering::SeqCst);
}
