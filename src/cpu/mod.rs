//! The CPU profiler: per-thread CPU-time timers deliver `SIGPROF` to the
//! thread that used the CPU; an async-signal-safe handler walks the
//! interrupted stack into a pre-allocated lock-free ring; once per period
//! the profiler thread drains the ring into `cpu.pprof`.
//!
//! [`CpuProfiler`] ties them together: `start`, `poll` (often), `collect`
//! (once per period), `stop`.
//!
//! # Fork
//!
//! A child of `fork` starts with no CPU profiler running, whatever ran in
//! the parent: it inherits no timer and no pending signal, and a
//! `pthread_atfork` child handler puts back the `SIGPROF` disposition and
//! marks the sample ring stale, to be emptied when the child
//! [`start`](CpuProfiler::start)s a profiler of its own (the handler
//! module's docs, "Fork"). A
//! `CpuProfiler` value the child inherited (one owned by the forking
//! thread) is inert there: `poll` reads and arms nothing, `collect` returns
//! only what was drained before the fork, and stopping or dropping it
//! undoes nothing.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::pprof::{Profile, Symbolizer};

mod handler;
mod profile;
mod ring;
mod timer;

pub use handler::{HandlerError, Installed};
pub use profile::{Aggregator, DROPPED_FRAME, NOT_WALKED_FRAME, SAMPLE_TYPES, TRUNCATED_FRAME};
pub use ring::{
    Record, Ring, Slot, DEFAULT_CAPACITY, FLAG_NOT_WALKED, FLAG_TRUNCATED, MAX_CAPACITY,
    MAX_FRAMES, RESERVE_ATTEMPTS,
};
pub use timer::{expirations, SyncStats, TimerError, TimerMode, Timers};

/// Why the CPU profiler could not start or stop.
#[derive(Debug)]
pub enum CpuError {
    /// The signal handler could not be installed.
    Handler(HandlerError),
    /// The timers could not be created, synced or deleted.
    Timer(TimerError),
}

impl std::fmt::Display for CpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuError::Handler(e) => write!(f, "CPU profiler: {e}"),
            CpuError::Timer(e) => write!(f, "CPU profiler: {e}"),
        }
    }
}

impl std::error::Error for CpuError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CpuError::Handler(e) => Some(e),
            CpuError::Timer(e) => Some(e),
        }
    }
}

/// The sample ring, created once per process and never freed (a handler
/// may be writing to it at any time).
fn shared_ring() -> &'static Ring {
    static RING: OnceLock<&'static Ring> = OnceLock::new();
    RING.get_or_init(|| Box::leak(Box::new(Ring::default())))
}

/// A running CPU profiler: handler installed, timers armed.
///
/// Call [`poll`](Self::poll) every few hundred milliseconds (it drains the
/// ring, which holds [`DEFAULT_CAPACITY`] samples, and arms timers for new
/// threads) and [`collect`](Self::collect) once per period.
pub struct CpuProfiler {
    timers: Option<Timers>,
    handler: Option<Installed>,
    ring: &'static Ring,
    aggregator: Aggregator,
    dropped: u64,
    dropped_total: u64,
    hz: u32,
    last: SystemTime,
}

impl std::fmt::Debug for CpuProfiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuProfiler")
            .field("hz", &self.hz)
            .field("mode", &self.mode())
            .field("stacks", &self.aggregator.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl CpuProfiler {
    /// Starts sampling every thread at `hz` per second of its CPU time,
    /// keeping stacks of at most `depth` frames.
    pub fn start(hz: u32, depth: usize) -> Result<CpuProfiler, CpuError> {
        let ring = shared_ring();
        // Installing first: it fails if a profiler runs, whose samples must
        // not be touched.
        let handler = Installed::install(ring, depth).map_err(CpuError::Handler)?;
        // Samples left from an earlier profiler are not this one's (no timer
        // is armed yet, so nothing new arrives meanwhile).
        ring.drain(|_| {});
        ring.take_dropped();
        let timers = Timers::new(hz).map_err(CpuError::Timer)?;
        Ok(CpuProfiler {
            timers: Some(timers),
            handler: Some(handler),
            ring,
            aggregator: Aggregator::default(),
            dropped: 0,
            dropped_total: 0,
            hz,
            last: SystemTime::now(),
        })
    }

    /// How the timers run (per thread, or the process-wide fallback).
    pub fn mode(&self) -> Option<TimerMode> {
        self.timers.as_ref().map(Timers::mode)
    }

    /// Moves the ring's samples into this period's counts and arms timers
    /// for threads started since the last call.
    pub fn poll(&mut self) -> Result<SyncStats, CpuError> {
        if self.inherited() {
            return Ok(SyncStats::default());
        }
        // Modules loaded or unloaded since become known to the handler.
        ferroprof_alloc::signal::prepare();
        self.drain();
        match self.timers.as_mut() {
            Some(t) => t.sync().map_err(CpuError::Timer),
            None => Ok(SyncStats::default()),
        }
    }

    /// Whether this value was inherited through `fork` (module docs).
    fn inherited(&self) -> bool {
        self.handler.as_ref().is_some_and(|h| !h.is_current())
    }

    fn drain(&mut self) {
        if self.inherited() {
            // The ring is the child's own now (stale until its first
            // install empties it).
            return;
        }
        let aggregator = &mut self.aggregator;
        self.ring.drain(|r| {
            aggregator.add(
                r.tid(),
                r.frames(),
                r.is_truncated(),
                r.is_walked(),
                u64::from(r.weight()),
            )
        });
        let dropped = self.ring.take_dropped();
        self.dropped += dropped;
        self.dropped_total += dropped;
    }

    /// Samples dropped since `start` because the ring was full (each
    /// period's also appear in its profile under [`DROPPED_FRAME`]).
    pub fn dropped_samples(&self) -> u64 {
        self.dropped_total
    }

    /// The period's profile (since `start` or the last `collect`). Ends
    /// the symbolizer's batch.
    pub fn collect(&mut self, symbolizer: &mut Symbolizer) -> Profile {
        let profile = self.collect_in_batch(symbolizer);
        symbolizer.end_batch();
        profile
    }

    /// [`collect`](Self::collect) without ending the symbolizer's batch.
    pub(crate) fn collect_in_batch(&mut self, symbolizer: &mut Symbolizer) -> Profile {
        // New modules (dlopen) become walkable from the next sample on.
        ferroprof_alloc::signal::prepare();
        self.drain();
        let now = SystemTime::now();
        let duration = now.duration_since(self.last).unwrap_or_default();
        self.last = now;
        let dropped = std::mem::take(&mut self.dropped);
        self.aggregator
            .build_in_batch(symbolizer, self.hz, dropped, now, duration)
    }

    /// Disarms every timer and restores the previous `SIGPROF` disposition.
    /// Samples not yet collected are discarded.
    pub fn stop(mut self) -> Result<(), CpuError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), CpuError> {
        let result = match self.timers.take() {
            Some(t) => t.stop().map_err(CpuError::Timer),
            None => Ok(()),
        };
        if let Some(handler) = self.handler.take() {
            if handler.is_current() {
                // Handlers still running on other threads finish before the
                // disposition changes (pending signals are discarded by the
                // restore itself). An inherited handler restores nothing.
                let period = Duration::from_nanos(2_000_000_000 / u64::from(self.hz.max(1)));
                std::thread::sleep(period.min(Duration::from_millis(50)));
            }
            drop(handler);
        }
        result
    }
}

impl Drop for CpuProfiler {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
