//! Per-thread CPU-time timers: the kernel sends `SIGPROF` to the thread that
//! consumed the CPU, so every busy thread is sampled in proportion to its own
//! CPU use.
//!
//! This module only arms and disarms timers. Installing the `SIGPROF` handler
//! (and saving and restoring the previous disposition) belongs to the signal
//! handler module; [`Timers::new`] refuses to start while `SIGPROF` still has
//! its default action, which would terminate the process on the first sample.
//!
//! # Why per-thread timers
//!
//! The classic profiling timer, `setitimer(ITIMER_PROF)`, is one timer on the
//! *process* CPU clock (the sum over all threads). The kernel checks it from
//! the scheduler tick and, on expiry, raises one process-directed `SIGPROF`.
//! That has three defects once several threads are busy:
//!
//! - **Which thread is sampled is not proportional to CPU use.** The kernel
//!   hands the process-directed signal to a thread of its choosing (in
//!   practice the one on the CPU whose tick noticed the expiry); two equally
//!   busy threads have been observed splitting samples 80/20
//!   (golang/go#14434).
//! - **Samples are lost.** `SIGPROF` is a standard signal: while one is
//!   pending, further ones merge into it, and one tick raises at most one
//!   signal. The sample rate tops out at `CONFIG_HZ` per second, so a process
//!   using more than `CONFIG_HZ / hz` CPUs is under-counted (golang/go#35057),
//!   and the signal carries no overrun count to correct for it.
//! - **It runs on the tick-charged clock.** `ITIMER_PROF` counts user +
//!   system time, which the tick charges a whole tick at a time to the thread
//!   on the CPU at that instant. Measured here (Linux 6.18, 2 vCPUs, two
//!   competing busy processes): a thread whose exact runtime grew by 0.300 s
//!   was charged 0.032-0.164 s, so `ITIMER_PROF` sampled it 2-10x too little.
//!
//! A POSIX timer on a *thread's* CPU clock, created with `SIGEV_THREAD_ID`,
//! fixes all three: its expiry depends only on that thread's exact runtime
//! (`CPUCLOCK_SCHED`, below), and the signal is directed to exactly that
//! thread. Expirations the kernel could not
//! deliver one by one (several periods within one tick, or a delivery delayed
//! while the thread was not running) are reported in the signal's
//! `si_overrun`; [`expirations`] turns a `siginfo_t` into the number of
//! periods it stands for. Measured on Linux 6.18 with `CONFIG_HZ=250`: a
//! thread burning 0.5 s of CPU under a 1000 Hz timer received 125 signals
//! carrying 372 overruns, 497 periods of the 500 expected. This is the scheme
//! Go's runtime adopted in Go 1.18 and gperftools offers as
//! `CPUPROFILE_PER_THREAD_TIMERS`.
//!
//! The kernel still checks CPU timers only from the tick, and only for the
//! thread on the CPU at that tick. A thread that is rarely on the CPU at a
//! tick (apparently the oversubscribed case above) has its expiries noticed
//! late: one signal
//! then carries many periods (up to 40 seen at 200 Hz), all of them charged to
//! the stack the signal interrupts, and the last few periods before a
//! measurement may not have been delivered yet (up to 9% of 0.9 s). Counts
//! catch up; attribution within such a burst is coarser.
//!
//! When per-thread timers cannot be created (a seccomp policy returning
//! `EPERM`, no `/proc`, not Linux), [`Timers`] falls back to
//! `setitimer(ITIMER_PROF)` at the same rate and says so in [`Timers::mode`]
//! and [`Timers::fallback_reason`]; stopping restores the interval timer value
//! it replaced.
//!
//! # Which clock: `MAKE_THREAD_CPUCLOCK`
//!
//! `CLOCK_THREAD_CPUTIME_ID` names the *calling* thread's clock, but timers are
//! armed from the profiler's own thread, for every thread. Linux encodes "the
//! CPU clock of thread `tid`" in the clock id itself (`include/linux/posix-timers.h`,
//! used by `kernel/time/posix-cpu-timers.c`):
//!
//! ```text
//! MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) = (~tid << 3) | CPUCLOCK_PERTHREAD_MASK (4) | CPUCLOCK_SCHED (2)
//! ```
//!
//! the same value glibc's `pthread_getcpuclockid` returns
//! (`sysdeps/unix/sysv/linux/kernel-posix-cpu-timers.h`). `CPUCLOCK_SCHED`
//! is the scheduler's precise runtime (`sum_exec_runtime`), the clock
//! `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` reads, so a thread's sample count
//! can be checked against its own CPU clock. The kernel only accepts thread
//! clocks and `SIGEV_THREAD_ID` targets of the caller's own thread group.
//!
//! # How threads are found, and what is missed
//!
//! [`Timers::sync`] lists `/proc/self/task` (raw `getdents64` into a buffer
//! kept between calls), arms a timer for every thread it has not seen, and
//! deletes the timers of threads that are gone. The caller runs it
//! periodically, so:
//!
//! - a thread's CPU time before the first `sync` that sees it is not sampled,
//!   and a thread that lives less than one sync period may never be sampled;
//! - if a thread exits and the kernel hands its tid to a new thread between
//!   two syncs (the pid space must wrap within one period), the new thread
//!   keeps the dead thread's entry and is not sampled until that tid
//!   disappears from the listing;
//! - procfs resumes a listing read in several `getdents64` calls by
//!   position, so a thread exiting meanwhile can make the listing skip a
//!   live thread: an armed one keeps its timer (`sync` asks the kernel
//!   whether an unlisted thread still exists before deleting), a new one is
//!   armed by a later `sync`.
//!
//! Arming each thread from itself at birth (from the alloc-shim's first
//! allocation on a thread) would close these gaps, at the cost of two syscalls
//! on a new thread's first allocation and a map shared between threads; it is
//! not done.
//!
//! The first expiry of each thread's timer is drawn uniformly from one period,
//! so threads started together do not all fire in lockstep.
//!
//! # Exited threads, verified on Linux 6.18
//!
//! - A timer outlives its thread: it stays in `/proc/self/timers`, disarmed
//!   (`timer_gettime` reads zero, `timer_settime` fails with `ESRCH`), until
//!   `timer_delete`, which succeeds. Not deleting it leaks one kernel timer
//!   per exited thread (50 exits left 50 entries), and each timer counts
//!   against `RLIMIT_SIGPENDING` (the kernel preallocates its signal; over the
//!   limit, `timer_create` fails with `EAGAIN`). `sync` deletes them.
//! - `timer_create` for a tid that has just exited fails with `EINVAL`, not
//!   `ESRCH`, the same errno as for a tid of another process. `sync` asks
//!   `tgkill(pid, tid, 0)` whether the thread still exists, and counts
//!   `ESRCH` there as [`SyncStats::gone`] instead of a failure.
//!
//! # Costs
//!
//! Per thread: one kernel timer and a 16-byte entry in a sorted vector. Per
//! sample: one signal delivery to the sampled thread. Per [`Timers::sync`]:
//! `open`, `getdents64` and `close` on `/proc/self/task`, a sort of the tid
//! list, `timer_create` + `timer_settime` per new thread and `timer_delete`
//! per exited one; once the buffers have grown to the thread count, no heap
//! allocation (checked with a counting allocator: 0 allocations in 100 syncs
//! of 301 threads, nor in the sync that removed 300 of them). Measured on a
//! loaded 2-vCPU VM: a sync that changes nothing takes about 6 µs with 2
//! threads, 90 µs with 129 and 1.3 ms with 1001 (mostly procfs building the
//! listing); arming costs about 7 µs per new thread.
//!
//! Only one [`Timers`] exists per process at a time, since two would double
//! every sample and fight over `ITIMER_PROF`.
//!
//! # Fork
//!
//! A child of `fork` inherits none of the kernel timers (POSIX and interval
//! timers are not copied) but does inherit memory: the one-per-process slot
//! and, if it can reach it, the parent's `Timers` value. The slot records
//! the owner's pid, so a child finds it held by another process, i.e.
//! inherited, and may take it; an inherited `Timers` (owner pid not the
//! caller's) is inert: `sync` arms nothing, and teardown deletes and
//! restores nothing, since its ids may name the child's own timers.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::pid_t;

/// Highest accepted sampling frequency: one sample per microsecond of CPU,
/// the resolution of the `setitimer` fallback.
const MAX_HZ: u32 = 1_000_000;

/// Size of the reusable `getdents64` buffer: about 150 directory entries per
/// call; larger thread counts take more calls, not more memory.
const DIRENT_BUF_LEN: usize = 4096;

/// How [`Timers`] makes the kernel send `SIGPROF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// One timer on each thread's own CPU clock, signalling that thread: each
    /// thread is sampled in proportion to its CPU time.
    PerThread,
    /// The fallback: one `setitimer(ITIMER_PROF)` on the process's
    /// tick-charged CPU time. The kernel picks the receiving thread and merges
    /// signals that arrive while one is pending.
    Process,
}

/// What one [`Timers::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStats {
    /// Threads that got a new timer.
    pub armed: usize,
    /// Timers deleted because their thread has exited.
    pub removed: usize,
    /// Threads that were listed but exited before their timer was armed.
    pub gone: usize,
    /// Threads that could not be armed (or timers that could not be deleted)
    /// for another reason; [`Timers::last_error`] says why. A thread that
    /// failed is retried at the next sync.
    pub failed: usize,
    /// Threads with an armed timer after this sync.
    pub total: usize,
}

/// Why [`Timers`] could not start or could not arm a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimerError {
    /// The sampling frequency is zero or above one million per second.
    InvalidFrequency {
        /// The frequency that was asked for, in samples per CPU-second.
        hz: u32,
    },
    /// Another [`Timers`] is running in this process.
    AlreadyRunning,
    /// `SIGPROF` still has its default disposition, which terminates the
    /// process: the signal handler must be installed first.
    NoSignalHandler,
    /// A system call failed.
    Syscall {
        /// The call, with the argument that identifies what it was for.
        call: &'static str,
        /// The thread the call was about, if it was about one.
        tid: Option<pid_t>,
        /// The `errno` it failed with.
        errno: i32,
    },
}

impl TimerError {
    /// The `errno` of a failed system call, `None` for the other variants.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TimerError::Syscall { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerError::InvalidFrequency { hz } => write!(
                f,
                "CPU sampling frequency {hz} Hz is out of range (1..={MAX_HZ})"
            ),
            TimerError::AlreadyRunning => f.write_str(
                "CPU profiling timers are already running in this process (one `Timers` at a time)",
            ),
            TimerError::NoSignalHandler => f.write_str(
                "no SIGPROF handler is installed; arming CPU timers would let SIGPROF's default action terminate the process",
            ),
            TimerError::Syscall { call, tid, errno } => {
                let cause = std::io::Error::from_raw_os_error(*errno);
                match tid {
                    Some(tid) => write!(f, "{call} for thread {tid} failed: {cause}"),
                    None => write!(f, "{call} failed: {cause}"),
                }
            }
        }
    }
}

impl std::error::Error for TimerError {}

/// How many timer periods one `SIGPROF` stands for: 1 plus the expirations
/// the kernel merged into it (`si_overrun`) when the signal comes from a POSIX
/// timer, 1 for any other source (`setitimer`, `kill`).
///
/// Async-signal-safe: it only reads `info`. Each period is worth
/// [`Timers::period_ns`] nanoseconds of CPU.
pub fn expirations(info: &libc::siginfo_t) -> u64 {
    1 + u64::from(sys::timer_overrun(info).unwrap_or(0))
}

/// The pid of the process whose [`Timers`] exists, 0 if none; see
/// [`ActiveGuard`].
static ACTIVE: AtomicI32 = AtomicI32::new(0);

/// Proof that this is the only [`Timers`] in the process; dropping it lets the
/// next one start.
struct ActiveGuard {
    pid: pid_t,
}

impl ActiveGuard {
    fn acquire() -> Result<Self, TimerError> {
        let pid = getpid();
        let mut seen = 0;
        loop {
            if seen == pid {
                return Err(TimerError::AlreadyRunning);
            }
            // `seen` is 0 or another pid: this process's memory holds
            // another pid only when it was copied by `fork` from that
            // process, whose timers this one does not have (module docs,
            // "Fork"), so the slot is free here.
            // Acquire: pairs with the Release in `drop`, so the previous
            // owner's teardown (timers deleted, interval timer restored)
            // happens-before this owner arms anything.
            match ACTIVE.compare_exchange(seen, pid, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(ActiveGuard { pid }),
                Err(now) => seen = now,
            }
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // Only this guard's own claim is released: one inherited through
        // `fork` and dropped in the child must not free the child's.
        // Release: publishes this owner's teardown to the next `acquire`.
        let _ = ACTIVE.compare_exchange(self.pid, 0, Ordering::Release, Ordering::Relaxed);
    }
}

fn getpid() -> pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// A timer whose thread the listing did not show: deleted if the thread is
/// gone, kept (pushed to `next`, whose tid order the caller preserves) if it
/// still exists. A listing of `/proc/self/task` taken while other threads
/// exit can skip a live thread (seen in tests: a new thread missing from one
/// listing); deleting its timer would lose its samples until the next poll
/// re-armed it.
fn retire(
    unlisted: Armed,
    next: &mut Vec<Armed>,
    last_error: &mut Option<TimerError>,
    stats: &mut SyncStats,
) {
    if sys::thread_exists(unlisted.tid) {
        next.push(unlisted);
        return;
    }
    stats.removed += 1;
    if let Err(e) = sys::delete(unlisted.timer, Some(unlisted.tid)) {
        stats.failed += 1;
        *last_error = Some(e);
    }
}

/// One armed thread.
struct Armed {
    tid: pid_t,
    timer: sys::RawTimer,
}

/// The CPU profiler's timers: one per thread (or the process-wide fallback),
/// all sending `SIGPROF`.
///
/// Created running; [`sync`](Timers::sync) follows threads as they come and
/// go; [`stop`](Timers::stop) or drop disarms and deletes everything.
pub struct Timers {
    mode: TimerMode,
    hz: u32,
    /// The period actually programmed, in nanoseconds of CPU.
    period_ns: u64,
    /// Per-thread mode: one entry per thread with a live kernel timer that
    /// this value created and has not deleted, sorted by tid, no duplicates.
    /// Empty in process mode and after teardown.
    armed: Vec<Armed>,
    /// Scratch for `sync`: the next `armed`; empty between calls.
    next: Vec<Armed>,
    /// Scratch for `sync`: the tids listed in `/proc/self/task`.
    listed: Vec<pid_t>,
    /// Scratch for `sync`: the `getdents64` buffer.
    dirents: Box<[u8]>,
    /// splitmix64 state for the first expiry of each timer.
    rng: u64,
    /// Process mode: the `ITIMER_PROF` value replaced at start, restored at
    /// teardown; `None` otherwise and once restored.
    saved_itimer: Option<libc::itimerval>,
    /// Why per-thread timers were not used, in process mode.
    fallback_reason: Option<TimerError>,
    /// The most recent failure counted in [`SyncStats::failed`].
    last_error: Option<TimerError>,
    /// The process the timers belong to: a forked child inherits this value
    /// but none of the kernel timers, and must not delete or restore anything.
    owner_pid: pid_t,
    /// Dropped last (fields drop after `Drop::drop` has torn down).
    _active: ActiveGuard,
}

impl Timers {
    /// Starts sampling every thread of the process at `hz` samples per second
    /// of CPU: per-thread timers if the kernel allows them (every current
    /// thread is armed now), else the process-wide `ITIMER_PROF` fallback.
    ///
    /// A `SIGPROF` handler must already be installed.
    ///
    /// # Errors
    ///
    /// [`TimerError::InvalidFrequency`] unless `1 <= hz <= 1_000_000`,
    /// [`TimerError::AlreadyRunning`], [`TimerError::NoSignalHandler`], or a
    /// [`TimerError::Syscall`] if even the fallback cannot be armed.
    pub fn new(hz: u32) -> Result<Self, TimerError> {
        let mut timers = Self::prepare(hz)?;
        let per_thread = sys::probe().and_then(|()| {
            timers.mode = TimerMode::PerThread;
            timers.period_ns = 1_000_000_000 / u64::from(hz);
            timers.sync().map(drop)
        });
        if let Err(reason) = per_thread {
            // `sync` fails only when listing, before arming anything.
            debug_assert!(timers.armed.is_empty());
            timers.fallback_reason = Some(reason);
            timers.start_process_timer()?;
        }
        Ok(timers)
    }

    /// Starts the process-wide `setitimer(ITIMER_PROF)` mode directly, for
    /// environments where per-thread timers are known to be unwanted.
    ///
    /// # Errors
    ///
    /// As [`Timers::new`].
    pub fn process_wide(hz: u32) -> Result<Self, TimerError> {
        let mut timers = Self::prepare(hz)?;
        timers.start_process_timer()?;
        Ok(timers)
    }

    /// Validates `hz`, takes the one-per-process slot and checks that a
    /// `SIGPROF` handler is installed; nothing is armed yet.
    fn prepare(hz: u32) -> Result<Self, TimerError> {
        if hz == 0 || hz > MAX_HZ {
            return Err(TimerError::InvalidFrequency { hz });
        }
        let active = ActiveGuard::acquire()?;
        check_sigprof_handler()?;
        Ok(Timers {
            mode: TimerMode::Process,
            hz,
            period_ns: 0,
            armed: Vec::new(),
            next: Vec::new(),
            listed: Vec::new(),
            dirents: vec![0; DIRENT_BUF_LEN].into_boxed_slice(),
            rng: random_seed(),
            saved_itimer: None,
            fallback_reason: None,
            last_error: None,
            owner_pid: active.pid,
            _active: active,
        })
    }

    fn start_process_timer(&mut self) -> Result<(), TimerError> {
        let period_us = 1_000_000 / i64::from(self.hz);
        let period = libc::timeval {
            tv_sec: (period_us / 1_000_000) as libc::time_t,
            tv_usec: (period_us % 1_000_000) as libc::suseconds_t,
        };
        let new = libc::itimerval {
            it_interval: period,
            it_value: period,
        };
        let zero = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let mut old = libc::itimerval {
            it_interval: zero,
            it_value: zero,
        };
        // SAFETY: both pointers refer to live, properly initialized
        // `itimerval`s; the kernel reads `new` and writes `old`.
        if unsafe { libc::setitimer(libc::ITIMER_PROF, &new, &mut old) } != 0 {
            return Err(syscall_error("setitimer(ITIMER_PROF)", None));
        }
        self.mode = TimerMode::Process;
        self.period_ns = period_us as u64 * 1_000;
        self.saved_itimer = Some(old);
        Ok(())
    }

    /// Which mechanism is sampling.
    pub fn mode(&self) -> TimerMode {
        self.mode
    }

    /// The requested frequency, in samples per second of CPU.
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// The programmed period in nanoseconds of CPU: the weight of one
    /// expiration (see [`expirations`]). `1e9 / hz`, rounded down to whole
    /// microseconds in [`TimerMode::Process`].
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// Number of threads with an armed per-thread timer (0 in process mode).
    pub fn armed_threads(&self) -> usize {
        self.armed.len()
    }

    /// Whether thread `tid` has a timer of these (per-thread mode).
    #[allow(dead_code)] // For tests/cpu_timers_follow_threads.rs.
    pub fn is_armed(&self, tid: pid_t) -> bool {
        self.armed.binary_search_by_key(&tid, |a| a.tid).is_ok()
    }

    /// Why per-thread timers are not in use, in [`TimerMode::Process`] reached
    /// through [`Timers::new`].
    pub fn fallback_reason(&self) -> Option<&TimerError> {
        self.fallback_reason.as_ref()
    }

    /// The most recent failure counted in [`SyncStats::failed`].
    pub fn last_error(&self) -> Option<&TimerError> {
        self.last_error.as_ref()
    }

    /// Follows the threads of the process: arms a timer for each thread not
    /// seen before and deletes the timers of threads that have exited. Does
    /// nothing in [`TimerMode::Process`], where the kernel follows threads.
    ///
    /// # Errors
    ///
    /// A [`TimerError::Syscall`] if `/proc/self/task` cannot be listed; the
    /// timers are left as they were. Failures to arm single threads are
    /// counted in [`SyncStats`] instead.
    pub fn sync(&mut self) -> Result<SyncStats, TimerError> {
        if self.mode != TimerMode::PerThread {
            return Ok(SyncStats::default());
        }
        if getpid() != self.owner_pid {
            // Inherited through fork (module docs): arm nothing here.
            self.armed.clear();
            return Ok(SyncStats::default());
        }
        sys::list_threads(&mut self.dirents, &mut self.listed)?;
        self.listed.sort_unstable();
        self.listed.dedup();

        let mut stats = SyncStats::default();
        // Merge the sorted listing with the sorted `armed` into `next`.
        let mut old = self.armed.drain(..).peekable();
        for &tid in &self.listed {
            // Timers of threads below `tid` were not listed: gone, unless
            // the listing missed them (see `keep_unlisted`).
            while let Some(gone) = old.next_if(|a| a.tid < tid) {
                retire(gone, &mut self.next, &mut self.last_error, &mut stats);
            }
            if let Some(kept) = old.next_if(|a| a.tid == tid) {
                self.next.push(kept);
                continue;
            }
            let first_ns = 1 + splitmix64(&mut self.rng) % self.period_ns;
            match sys::create_armed(tid, first_ns, self.period_ns) {
                Ok(timer) => {
                    stats.armed += 1;
                    self.next.push(Armed { tid, timer });
                }
                Err(sys::ArmError::Gone) => stats.gone += 1,
                Err(sys::ArmError::Failed(e)) => {
                    stats.failed += 1;
                    self.last_error = Some(e);
                }
            }
        }
        for gone in old {
            retire(gone, &mut self.next, &mut self.last_error, &mut stats);
        }
        // `armed` is now empty with its capacity kept: it becomes the scratch.
        std::mem::swap(&mut self.armed, &mut self.next);
        stats.total = self.armed.len();
        Ok(stats)
    }

    /// Disarms and deletes every timer (restoring the previous `ITIMER_PROF`
    /// value in process mode). Dropping does the same, ignoring errors.
    ///
    /// Once this returns no new `SIGPROF` is generated by these timers, and
    /// the kernel discards per-thread timer signals still pending (verified:
    /// a signal left pending on a thread blocking `SIGPROF` is not delivered
    /// after `timer_delete` once the thread unblocks it); a handler already
    /// running on another thread may still be running. In process mode one
    /// `SIGPROF` already pending may still be delivered.
    ///
    /// # Errors
    ///
    /// The first failed `timer_delete` or `setitimer`; the rest of the
    /// teardown is done regardless.
    pub fn stop(mut self) -> Result<(), TimerError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), TimerError> {
        if getpid() != self.owner_pid {
            // A forked child: its kernel timers are not ours (fork does not
            // inherit POSIX or interval timers); ids may even collide.
            self.armed.clear();
            self.saved_itimer = None;
            return Ok(());
        }
        let mut first = self.delete_all().err();
        if let Some(old) = self.saved_itimer.take() {
            // SAFETY: `old` is the `itimerval` the kernel gave back at start;
            // the old-value pointer may be null.
            if unsafe { libc::setitimer(libc::ITIMER_PROF, &old, std::ptr::null_mut()) } != 0 {
                first.get_or_insert(syscall_error("setitimer(ITIMER_PROF) restore", None));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Deletes every per-thread timer; returns the first failure.
    fn delete_all(&mut self) -> Result<(), TimerError> {
        let mut first = None;
        for armed in self.armed.drain(..) {
            if let Err(e) = sys::delete(armed.timer, Some(armed.tid)) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timers")
            .field("mode", &self.mode)
            .field("hz", &self.hz)
            .field("period_ns", &self.period_ns)
            .field("armed_threads", &self.armed.len())
            .field("fallback_reason", &self.fallback_reason)
            .finish_non_exhaustive()
    }
}

/// Refuses to arm anything while `SIGPROF` would kill the process.
fn check_sigprof_handler() -> Result<(), TimerError> {
    // SAFETY: `sigaction` is a plain C struct of integers, pointers and a
    // signal set, for which all-zero bytes are a valid value.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `current` is writable.
    if unsafe { libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut current) } != 0 {
        return Err(syscall_error("sigaction(SIGPROF) query", None));
    }
    if current.sa_sigaction == libc::SIG_DFL {
        return Err(TimerError::NoSignalHandler);
    }
    Ok(())
}

/// The `errno` of the call that just failed, as a [`TimerError::Syscall`].
fn syscall_error(call: &'static str, tid: Option<pid_t>) -> TimerError {
    TimerError::Syscall {
        call,
        tid,
        errno: last_errno(),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A seed that differs between processes and between runs.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState's keys come from the OS's random source.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// splitmix64 (Steele, Lea, Flood 2014): a full-period 64-bit generator, plenty
/// for spreading timer phases.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    //! Linux: per-thread CPU clocks, `SIGEV_THREAD_ID`, `/proc/self/task`.

    use std::os::fd::{FromRawFd, OwnedFd};

    use libc::{c_int, pid_t};

    use super::{last_errno, TimerError};

    /// `CPUCLOCK_PERTHREAD_MASK` in `include/linux/posix-timers.h`.
    const CPUCLOCK_PERTHREAD_MASK: libc::clockid_t = 4;
    /// `CPUCLOCK_SCHED`: scheduler runtime, as `CLOCK_THREAD_CPUTIME_ID`.
    const CPUCLOCK_SCHED: libc::clockid_t = 2;

    /// A kernel POSIX timer id as the C library hands it out.
    pub(super) struct RawTimer(libc::timer_t);

    // SAFETY: for non-`SIGEV_THREAD` timers, glibc and musl hand out the
    // kernel's process-wide timer id cast to a pointer (old glibc: a pointer
    // to a heap block holding it). It is never dereferenced here, and any
    // thread of the process may pass it to `timer_settime`/`timer_delete`.
    unsafe impl Send for RawTimer {}

    /// Why a thread was not armed.
    pub(super) enum ArmError {
        /// The thread exited before its timer was armed.
        Gone,
        /// Anything else.
        Failed(TimerError),
    }

    /// Linux's `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`, the clock glibc's
    /// `pthread_getcpuclockid` returns for a thread.
    pub(super) fn thread_cpu_clock(tid: pid_t) -> libc::clockid_t {
        ((!tid) << 3) | CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED
    }

    pub(super) fn gettid() -> pid_t {
        // SAFETY: gettid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as pid_t }
    }

    /// Whether per-thread timers can be created at all: creates (unarmed) and
    /// deletes one on the calling thread's clock.
    pub(super) fn probe() -> Result<(), TimerError> {
        let tid = gettid();
        match create(tid) {
            Ok(timer) => delete(timer, Some(tid)),
            Err(ArmError::Failed(e)) => Err(e),
            // The calling thread cannot have exited; if the kernel says so,
            // it does not support what is asked.
            Err(ArmError::Gone) => Err(TimerError::Syscall {
                call: "timer_create(thread CPU clock, SIGEV_THREAD_ID)",
                tid: Some(tid),
                errno: libc::EINVAL,
            }),
        }
    }

    /// A timer on `tid`'s CPU clock that will signal `SIGPROF` to `tid`.
    fn create(tid: pid_t) -> Result<RawTimer, ArmError> {
        // SAFETY: `sigevent` is a plain C struct (integers, a union of an int
        // and a pointer, padding) for which all-zero bytes are valid.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = libc::SIGPROF;
        event.sigev_notify_thread_id = tid;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `id` are live locals; the kernel reads `event`
        // and the C library writes `id`.
        if unsafe { libc::timer_create(thread_cpu_clock(tid), &mut event, &mut id) } != 0 {
            return Err(classify(
                "timer_create(thread CPU clock, SIGEV_THREAD_ID)",
                tid,
            ));
        }
        Ok(RawTimer(id))
    }

    /// Creates and arms `tid`'s timer: first expiry after `first_ns` of the
    /// thread's CPU time, then every `period_ns`.
    pub(super) fn create_armed(
        tid: pid_t,
        first_ns: u64,
        period_ns: u64,
    ) -> Result<RawTimer, ArmError> {
        let timer = create(tid)?;
        let spec = libc::itimerspec {
            it_interval: timespec(period_ns),
            it_value: timespec(first_ns),
        };
        // SAFETY: `timer.0` is a timer this process created and has not
        // deleted; `spec` is a live local; the old value is not requested.
        if unsafe { libc::timer_settime(timer.0, 0, &spec, std::ptr::null_mut()) } != 0 {
            let failure = classify("timer_settime", tid);
            // The unarmed timer must not leak; its deletion error, if any,
            // matters less than why arming failed.
            let _ = delete(timer, Some(tid));
            return Err(failure);
        }
        Ok(timer)
    }

    /// Tells "the thread exited" from a real failure of `call`, just made.
    ///
    /// `timer_create` reports a vanished thread as `EINVAL` (both the clock
    /// lookup and the `SIGEV_THREAD_ID` target check), `timer_settime` as
    /// `ESRCH`. `EINVAL` also means "not our thread group" or "not supported",
    /// so the thread's existence is checked separately.
    fn classify(call: &'static str, tid: pid_t) -> ArmError {
        let errno = last_errno();
        if (errno == libc::EINVAL || errno == libc::ESRCH) && !thread_exists(tid) {
            ArmError::Gone
        } else {
            ArmError::Failed(TimerError::Syscall {
                call,
                tid: Some(tid),
                errno,
            })
        }
    }

    /// `tgkill(pid, tid, 0)`: existence and permission checks, no signal.
    pub(super) fn thread_exists(tid: pid_t) -> bool {
        // SAFETY: signal 0 is never delivered; the call only checks that
        // thread `tid` exists in this process.
        let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0 as c_int) };
        r == 0 || last_errno() != libc::ESRCH
    }

    pub(super) fn delete(timer: RawTimer, tid: Option<pid_t>) -> Result<(), TimerError> {
        // SAFETY: `timer` is consumed, so this id is deleted at most once; it
        // was created by this process. A timer whose thread has exited is
        // still valid here (verified: deletion succeeds and frees it).
        if unsafe { libc::timer_delete(timer.0) } != 0 {
            return Err(super::syscall_error("timer_delete", tid));
        }
        Ok(())
    }

    fn timespec(ns: u64) -> libc::timespec {
        libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        }
    }

    /// The threads of this process, from `/proc/self/task`, into `out`
    /// (cleared first), using `buf` for `getdents64`.
    pub(super) fn list_threads(buf: &mut [u8], out: &mut Vec<pid_t>) -> Result<(), TimerError> {
        const CALL_OPEN: &str = "open(/proc/self/task)";
        const CALL_GETDENTS: &str = "getdents64(/proc/self/task)";
        out.clear();
        let fd = loop {
            // SAFETY: the path is a NUL-terminated literal; no mode needed
            // without O_CREAT.
            let fd = unsafe {
                libc::open(
                    c"/proc/self/task".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` was just opened and is owned by nothing else.
                break unsafe { OwnedFd::from_raw_fd(fd) };
            }
            if last_errno() != libc::EINTR {
                return Err(super::syscall_error(CALL_OPEN, None));
            }
        };
        loop {
            use std::os::fd::AsRawFd;
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes and `fd`
            // is an open directory for the whole call.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            match usize::try_from(n) {
                Ok(0) => return Ok(()),
                Ok(n) => parse_tids(&buf[..n.min(buf.len())], out),
                Err(_) if last_errno() == libc::EINTR => {}
                Err(_) => return Err(super::syscall_error(CALL_GETDENTS, None)),
            }
        }
    }

    /// Offset of `d_name` in `struct linux_dirent64` (`d_ino` u64, `d_off`
    /// i64, `d_reclen` u16, `d_type` u8, `d_name`).
    const DIRENT_NAME: usize = 19;
    /// Offset of `d_reclen`.
    const DIRENT_RECLEN: usize = 16;

    /// Appends the numeric names of the `linux_dirent64` records in `buf`
    /// (skipping `.`, `..` and anything else); stops at a malformed record.
    pub(super) fn parse_tids(buf: &[u8], out: &mut Vec<pid_t>) {
        let mut offset = 0;
        while let Some(header) = buf.get(offset..offset + DIRENT_NAME) {
            let reclen = usize::from(u16::from_ne_bytes([
                header[DIRENT_RECLEN],
                header[DIRENT_RECLEN + 1],
            ]));
            let Some(record) = buf.get(offset..offset + reclen) else {
                return;
            };
            if reclen <= DIRENT_NAME {
                return;
            }
            let name = &record[DIRENT_NAME..];
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if let Some(tid) = parse_tid(name) {
                out.push(tid);
            }
            offset += reclen;
        }
    }

    fn parse_tid(name: &[u8]) -> Option<pid_t> {
        if name.is_empty() {
            return None;
        }
        let mut tid: pid_t = 0;
        for &b in name {
            if !b.is_ascii_digit() {
                return None;
            }
            tid = tid.checked_mul(10)?.checked_add(pid_t::from(b - b'0'))?;
        }
        (tid > 0).then_some(tid)
    }

    /// `si_overrun` of a POSIX timer signal (`si_code == SI_TIMER`).
    pub(super) fn timer_overrun(info: &libc::siginfo_t) -> Option<u32> {
        if info.si_code != libc::SI_TIMER {
            return None;
        }
        // The kernel's `siginfo_t`: three ints, then a union aligned like a
        // pointer whose timer member starts `int si_tid; int si_overrun;`.
        const UNION: usize = {
            let align = std::mem::align_of::<usize>();
            (3 * std::mem::size_of::<c_int>()).div_ceil(align) * align
        };
        const OVERRUN: usize = UNION + std::mem::size_of::<c_int>();
        const _: () = assert!(OVERRUN + 4 <= std::mem::size_of::<libc::siginfo_t>());
        // SAFETY: `OVERRUN` is inside the 128-byte `siginfo_t` (checked at
        // compile time) and 4-aligned within it; every byte of a `siginfo_t`
        // the kernel delivered is initialized.
        let overrun = unsafe {
            std::ptr::from_ref(info)
                .cast::<u8>()
                .add(OVERRUN)
                .cast::<c_int>()
                .read()
        };
        Some(u32::try_from(overrun).unwrap_or(0))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    //! Elsewhere: no per-thread CPU timers; `Timers` uses `ITIMER_PROF`.

    use libc::pid_t;

    use super::TimerError;

    /// Never constructed: no per-thread timers on this platform.
    pub(super) struct RawTimer(());

    pub(super) enum ArmError {
        #[allow(dead_code)]
        Gone,
        Failed(TimerError),
    }

    fn unsupported() -> TimerError {
        TimerError::Syscall {
            call: "timer_create(SIGEV_THREAD_ID)",
            tid: None,
            errno: libc::ENOSYS,
        }
    }

    pub(super) fn probe() -> Result<(), TimerError> {
        Err(unsupported())
    }

    pub(super) fn create_armed(_: pid_t, _: u64, _: u64) -> Result<RawTimer, ArmError> {
        Err(ArmError::Failed(unsupported()))
    }

    pub(super) fn delete(_: RawTimer, _: Option<pid_t>) -> Result<(), TimerError> {
        Ok(())
    }

    pub(super) fn list_threads(_: &mut [u8], _: &mut Vec<pid_t>) -> Result<(), TimerError> {
        Err(unsupported())
    }

    pub(super) fn timer_overrun(_: &libc::siginfo_t) -> Option<u32> {
        None
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    //! Pure checks only: a test here must never arm a timer, since the lib's
    //! test binary has no `SIGPROF` handler and runs other tests in parallel.
    //! Timers are exercised in `tests/cpu_timers_follow_threads.rs`.

    use super::*;

    #[test]
    fn thread_clock_encoding_matches_pthread_getcpuclockid() {
        let mut expected: libc::clockid_t = 0;
        // SAFETY: pthread_self is the calling, live thread; `expected` is
        // writable.
        assert_eq!(0, unsafe {
            libc::pthread_getcpuclockid(libc::pthread_self(), &mut expected)
        });
        assert_eq!(sys::thread_cpu_clock(sys::gettid()), expected);
    }

    /// This thread's CPU time in nanoseconds.
    fn own_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is writable.
        assert_eq!(0, unsafe {
            libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts)
        });
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[test]
    fn another_threads_clock_reads_its_cpu_time() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            while own_cpu_ns() < 20_000_000 {
                std::hint::black_box(0u64);
            }
            tx.send((sys::gettid(), own_cpu_ns())).unwrap();
            done_rx.recv().unwrap();
        });
        let (tid, reported) = rx.recv().unwrap();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is writable; the clock id names a live thread.
        let r = unsafe { libc::clock_gettime(sys::thread_cpu_clock(tid), &mut ts) };
        let read = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        done_tx.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!(r, 0);
        assert!(
            read >= reported,
            "the worker read {reported} ns on its own clock, we read {read} ns after"
        );
    }

    #[test]
    fn listing_finds_this_thread_and_a_new_one() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(sys::gettid()).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        // A small buffer forces several getdents64 calls. Between two of
        // them, a thread of another test exiting shifts procfs's index and
        // the listing can skip a live thread (seen in CI: the worker missing
        // from one listing; `retire` exists for this). So: every listing must
        // succeed, and each thread must appear in one of a few listings.
        let mut buf = vec![0u8; 64];
        let mut tids = Vec::new();
        let (mut saw_self, mut saw_worker) = (false, false);
        for _ in 0..100 {
            sys::list_threads(&mut buf, &mut tids).unwrap();
            saw_self |= tids.contains(&sys::gettid());
            saw_worker |= tids.contains(&tid);
            if saw_self && saw_worker {
                break;
            }
        }
        assert!(saw_self, "this thread never listed; last: {tids:?}");
        assert!(saw_worker, "worker {tid} never listed; last: {tids:?}");
        done_tx.send(()).unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn dirent_parser_keeps_numbers_and_stops_at_garbage() {
        fn record(name: &str) -> Vec<u8> {
            let mut r = vec![0u8; 19];
            r.extend_from_slice(name.as_bytes());
            r.push(0);
            r.resize(r.len().next_multiple_of(8), 0);
            let len = r.len() as u16;
            r[16..18].copy_from_slice(&len.to_ne_bytes());
            r
        }
        let mut buf = Vec::new();
        for name in [".", "..", "12", "x1", "2147483647", "2147483648", "7"] {
            buf.extend(record(name));
        }
        let mut bad = record("99");
        bad[16..18].copy_from_slice(&500u16.to_ne_bytes());
        buf.extend(bad);
        let mut out = Vec::new();
        sys::parse_tids(&buf, &mut out);
        assert_eq!(out, [12, 2147483647, 7]);

        out.clear();
        sys::parse_tids(&buf[..5], &mut out);
        sys::parse_tids(&[0u8; 40], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn an_exited_thread_is_reported_gone_not_failed() {
        let tid = std::thread::spawn(sys::gettid).join().unwrap();
        // `join` returns once the kernel clears the thread's tid word, which
        // happens before the task is released: for a moment the exited
        // thread can still be signalled. Wait for the release (bounded only
        // so that a kernel that never releases fails instead of hanging).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while sys::thread_exists(tid) {
            assert!(
                std::time::Instant::now() < deadline,
                "thread {tid} never went away"
            );
            std::thread::yield_now();
        }
        // An hour of CPU: should the tid have been reused by a thread of a
        // parallel test, its timer is deleted long before it could fire.
        let hour = 3_600_000_000_000;
        match sys::create_armed(tid, hour, hour) {
            Err(sys::ArmError::Gone) => {}
            Err(sys::ArmError::Failed(e)) => panic!("expected gone, got {e}"),
            Ok(timer) => {
                let _ = sys::delete(timer, Some(tid));
                panic!("armed a timer for exited thread {tid}");
            }
        }
    }

    #[test]
    fn only_threads_of_this_process_exist_for_tgkill() {
        assert!(sys::thread_exists(sys::gettid()));
        // pid 1 exists, but is not in this thread group (unless we are init).
        // SAFETY: getpid cannot fail.
        if unsafe { libc::getpid() } != 1 {
            assert!(!sys::thread_exists(1));
        }
    }

    #[test]
    fn frequencies_outside_one_to_a_million_are_rejected_before_anything_else() {
        for hz in [0, MAX_HZ + 1, u32::MAX] {
            assert_eq!(
                Timers::new(hz).unwrap_err(),
                TimerError::InvalidFrequency { hz }
            );
        }
    }

    #[test]
    fn errors_name_the_call_the_thread_and_the_errno() {
        let e = TimerError::Syscall {
            call: "timer_create(thread CPU clock, SIGEV_THREAD_ID)",
            tid: Some(42),
            errno: libc::EPERM,
        };
        let text = e.to_string();
        assert!(text.contains("timer_create"), "{text}");
        assert!(text.contains("thread 42"), "{text}");
        assert!(text.contains("os error 1"), "{text}");
        assert_eq!(e.errno(), Some(libc::EPERM));
    }

    #[test]
    fn timers_can_move_to_the_profiler_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Timers>();
    }

    #[test]
    fn non_timer_signals_count_one_period() {
        // SAFETY: all-zero bytes are a valid `siginfo_t`.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        info.si_code = libc::SI_KERNEL;
        assert_eq!(expirations(&info), 1);
    }

    #[test]
    fn splitmix_phases_cover_the_period() {
        let mut state = 1;
        let period = 5_000_000;
        let phases: Vec<u64> = (0..1000)
            .map(|_| 1 + splitmix64(&mut state) % period)
            .collect();
        assert!(phases.iter().all(|&p| (1..=period).contains(&p)));
        assert!(phases.iter().any(|&p| p < period / 10));
        assert!(phases.iter().any(|&p| p > period - period / 10));
    }
}
