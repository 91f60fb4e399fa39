//! The workload every configuration of `cpu_peers` runs: two worker threads
//! that descend [`DEPTH`] `#[inline(never)]` frames and burn CPU in
//! [`work_unit`] at the bottom, one steadily and one a third of the time, so
//! that the profiles have deep stacks to walk and two CPU shares to tell
//! apart. Each worker measures its own CPU clock; that is the truth the
//! profiles are checked against.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Frames of [`at_depth`] between a worker's entry function and its work:
/// `at_depth(DEPTH, ..)` leaves `DEPTH` of them on every stack taken during
/// the work (the call with depth 0 tail-calls the work).
pub const DEPTH: u32 = 32;

/// How often the main thread wakes during a burst (ferroprof's `poll`).
pub const POLL: Duration = Duration::from_millis(100);

/// The duty worker works for this much wall time, then sleeps
/// [`DUTY_SLEEP_FACTOR`] times as long as the slice took.
const DUTY_SLICE: Duration = Duration::from_millis(2);
const DUTY_SLEEP_FACTOR: u32 = 2;

/// The two workers, in the order of every per-worker array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Works without pause: about one core.
    Steady,
    /// Works a slice, sleeps twice as long: about a third of a core.
    Duty,
}

pub const ROLES: [Role; 2] = [Role::Steady, Role::Duty];

impl Role {
    /// The thread's name (at most 15 bytes: the kernel's limit).
    pub fn thread_name(self) -> &'static str {
        match self {
            Role::Steady => "cpu-steady",
            Role::Duty => "cpu-duty",
        }
    }

    /// The worker's entry function, which every usable stack of its thread
    /// reaches.
    pub fn entry_function(self) -> &'static str {
        match self {
            Role::Steady => "steady_worker",
            Role::Duty => "duty_worker",
        }
    }
}

/// CPU time of `clock` in seconds.
pub fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clocks used here exist on
    // every Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// This thread's CPU time in seconds (it includes the time its signal
/// handlers ran).
pub fn thread_cpu() -> f64 {
    cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// One work unit, where the workers spend nearly all their CPU: integer
/// mixing over a buffer that stays in L1 (a few microseconds).
#[inline(never)]
pub fn work_unit(state: &mut [u64; 64]) {
    for _ in 0..16 {
        let mut carry = state[63];
        for x in state.iter_mut() {
            carry = (carry ^ *x)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(23);
            *x = carry;
        }
    }
}

/// Runs `f` `depth` frames deeper than the caller, one frame per level.
#[inline(never)]
pub fn at_depth(depth: u32, f: &mut dyn FnMut() -> u64) -> u64 {
    if depth == 0 {
        return f();
    }
    // `black_box` on the result keeps the call from becoming a tail call (a
    // jump that would reuse this frame).
    black_box(at_depth(black_box(depth - 1), f))
}

/// Works until `stop`; returns the units done.
#[inline(never)]
fn steady_worker(state: &mut [u64; 64], stop: &AtomicBool) -> u64 {
    black_box(at_depth(DEPTH, &mut || {
        let mut units = 0;
        // Relaxed: the flag carries no data; the barriers order the rest.
        while !stop.load(Ordering::Relaxed) {
            work_unit(state);
            units += 1;
        }
        units
    }))
}

/// Works [`DUTY_SLICE`], sleeps twice as long, until `stop`; returns the
/// units done.
#[inline(never)]
fn duty_worker(state: &mut [u64; 64], stop: &AtomicBool) -> u64 {
    black_box(at_depth(DEPTH, &mut || {
        let mut units = 0;
        // Relaxed: as in `steady_worker`.
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            loop {
                for _ in 0..8 {
                    work_unit(state);
                }
                units += 8;
                if began.elapsed() >= DUTY_SLICE {
                    break;
                }
            }
            std::thread::sleep(began.elapsed() * DUTY_SLEEP_FACTOR);
        }
        units
    }))
}

/// What one burst measured: units of work, and the CPU seconds of each
/// worker (its own clock) and of the main thread during the burst.
#[derive(Clone, Copy, Debug, Default)]
pub struct BurstCpu {
    pub units: u64,
    pub workers: [f64; 2],
    pub main: f64,
}

/// The workers: parked on `start` between bursts (no CPU), they work until
/// `stop` is set, report `(role index, units, cpu seconds)` and meet at
/// `done`.
pub struct Workers {
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    results: mpsc::Receiver<(usize, u64, f64)>,
    /// Kernel thread ids, in [`ROLES`] order.
    pub tids: [i32; 2],
}

impl Workers {
    pub fn spawn() -> Workers {
        let start = Arc::new(Barrier::new(ROLES.len() + 1));
        let done = Arc::new(Barrier::new(ROLES.len() + 1));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, results) = mpsc::channel();
        let (tid_tx, tid_rx) = mpsc::channel();
        for (i, role) in ROLES.into_iter().enumerate() {
            let (start, done, stop, tx, tid_tx) = (
                start.clone(),
                done.clone(),
                stop.clone(),
                tx.clone(),
                tid_tx.clone(),
            );
            std::thread::Builder::new()
                .name(role.thread_name().into())
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    tid_tx.send((i, tid)).expect("report the tid");
                    let mut state = [i as u64 + 1; 64];
                    loop {
                        start.wait();
                        let cpu0 = thread_cpu();
                        let units = match role {
                            Role::Steady => steady_worker(&mut state, &stop),
                            Role::Duty => duty_worker(&mut state, &stop),
                        };
                        let cpu = thread_cpu() - cpu0;
                        black_box(&state);
                        if tx.send((i, units, cpu)).is_err() {
                            return;
                        }
                        done.wait();
                    }
                })
                .expect("spawn a worker");
        }
        let mut tids = [0; 2];
        for _ in ROLES {
            let (i, tid) = tid_rx.recv().expect("a worker's tid");
            tids[i] = tid;
        }
        Workers {
            start,
            done,
            stop,
            results,
            tids,
        }
    }

    /// Runs one burst of `length`, calling `tick` every [`POLL`].
    pub fn burst(&self, length: Duration, mut tick: impl FnMut()) -> BurstCpu {
        // Relaxed: the `start` barrier publishes the store to the workers.
        self.stop.store(false, Ordering::Relaxed);
        self.start.wait();
        let cpu0 = thread_cpu();
        let began = Instant::now();
        while began.elapsed() < length {
            std::thread::sleep(POLL.min(length.saturating_sub(began.elapsed())));
            tick();
        }
        // Relaxed: the workers only need to see it eventually.
        self.stop.store(true, Ordering::Relaxed);
        let mut out = BurstCpu {
            main: thread_cpu() - cpu0,
            ..BurstCpu::default()
        };
        for _ in ROLES {
            let (i, units, cpu) = self.results.recv().expect("a worker's result");
            out.units += units;
            out.workers[i] = cpu;
        }
        self.done.wait();
        out
    }
}

/// Whether this build keeps frame pointers (`-C force-frame-pointers=yes`):
/// the frame-pointer register of a function that has a local must point just
/// above that local, at a saved frame pointer followed by a return address
/// into its caller.
#[cfg(target_arch = "x86_64")]
pub fn has_frame_pointers() -> bool {
    at_depth(4, &mut || u64::from(probe_caller())) == 1
}

/// Not known elsewhere (the benchmarks are x86_64 only).
#[cfg(not(target_arch = "x86_64"))]
pub fn has_frame_pointers() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn probe_caller() -> bool {
    black_box(probe())
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn probe() -> bool {
    let rbp: usize;
    // SAFETY: reads a register into a variable; no memory, no stack.
    unsafe { std::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
    let local = black_box(0u64);
    let here = &local as *const u64 as usize;
    if rbp < here || rbp > here + 4096 || !rbp.is_multiple_of(8) {
        return false;
    }
    // SAFETY: `rbp + 8` is aligned and within 4 KiB above a local of this
    // frame, inside this thread's stack, which is mapped (there are at least
    // the four `at_depth` frames of `has_frame_pointers` above).
    let ret = unsafe { std::ptr::read_volatile((rbp as *const usize).add(1)) };
    let caller = probe_caller as *const () as usize;
    black_box(local);
    ret > caller && ret < caller + 256
}
