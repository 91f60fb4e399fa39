//! Poisson sampling of allocated bytes: the per-thread countdown.
//!
//! Every thread owns a countdown of bytes until its next sampling point. The
//! points form a Poisson process over the bytes the thread allocates, with
//! mean spacing `mean` (the sample interval): the gaps are drawn from an
//! exponential distribution by a per-thread xorshift generator. An allocation
//! of `s` bytes is sampled when it covers at least one point, and carries the
//! number `n` of points it covers. Because the expected number of points in
//! `s` bytes is `s / mean`, the weight `n × mean` bytes is an unbiased
//! estimate of `s`, and `n × mean / s` objects an unbiased estimate of one
//! object, per allocation and so for any sum of allocations (design.md,
//! "Sampling, exactly"). No `exp()` correction is needed at export.
//!
//! The fast path (`charge`) is one thread-local subtract and one branch. The
//! countdown is a `const`-initialised thread local without a destructor, so it
//! is readable from the first allocation of the process, in thread-local
//! destructors and after a thread's TLS has been torn down.
//!
//! Drawing `n`: after the first point, the number of further points in the
//! remaining `r` bytes is Poisson(`r / mean`) and the gap from the end of the
//! allocation to the next point is a fresh exponential, independent of it
//! (the process is memoryless), so huge allocations cost O(1).
//!
//! `mean == 1` means "sample every allocation": the weight is then exactly the
//! allocation's size and one object, with no randomness.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

/// Default mean sampling interval: 512 KiB, like Go and TCMalloc.
pub const DEFAULT_SAMPLE_INTERVAL: u64 = 512 * 1024;

/// With sampling off, a thread looks at the interval again after this many
/// bytes, so turning sampling on reaches every thread quickly.
const RECHECK_BYTES: i64 = 256 * 1024;

/// Fixed-point scale of object weights: 2^20 units per object.
pub(crate) const OBJECT_SCALE: u64 = 1 << 20;

/// The interval new countdowns are drawn with. Relaxed: it is a plain
/// setting; a thread that sees an older value draws one more gap with it and
/// weighs the sample with the value it drew with, which keeps it unbiased.
static MEAN: AtomicU64 = AtomicU64::new(DEFAULT_SAMPLE_INTERVAL);

/// What one sampled allocation stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Weight {
    /// Estimated bytes: `n × mean`.
    pub(crate) bytes: u64,
    /// Estimated objects in units of 1 / [`OBJECT_SCALE`].
    pub(crate) objects: u64,
}

impl Weight {
    /// The weight of `n` points of spacing `mean` in an allocation of `size`
    /// bytes. `object` is false for bytes added by growing a block in place,
    /// which are not a new object.
    pub(crate) fn new(n: u64, mean: u64, size: u64, object: bool) -> Weight {
        let bytes = n.saturating_mul(mean);
        let objects = if object && size > 0 {
            ((bytes as u128 * OBJECT_SCALE as u128) / size as u128).min(u64::MAX as u128) as u64
        } else {
            0
        };
        Weight { bytes, objects }
    }
}

struct ThreadState {
    /// Bytes until the next point; `<= 0` after an allocation means it crossed.
    countdown: Cell<i64>,
    /// xorshift64* state; 0 until the thread's first slow path.
    rng: Cell<u64>,
    /// The mean the current countdown was drawn with (0: sampling was off).
    mean: Cell<u64>,
    /// Set while this thread is inside the sampler or taking a snapshot: any
    /// allocation made then is served unsampled.
    busy: Cell<bool>,
    /// Set while this thread allocates the profiler's own long-lived memory
    /// (see [`own_memory`]).
    own: Cell<bool>,
    /// The countdown, put aside while `own` is set.
    saved_countdown: Cell<i64>,
    /// The unwinder cache slot this thread tries first (0: not chosen yet).
    cache_hint: Cell<u8>,
    /// Stack bounds of this thread, for the unwinder (0, 0 until looked up).
    pub(crate) stack_lo: Cell<usize>,
    pub(crate) stack_hi: Cell<usize>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            countdown: Cell::new(0),
            rng: Cell::new(0),
            mean: Cell::new(0),
            busy: Cell::new(false),
            own: Cell::new(false),
            saved_countdown: Cell::new(0),
            cache_hint: Cell::new(0),
            stack_lo: Cell::new(0),
            stack_hi: Cell::new(0),
        }
    };
}

/// The fast path: charges `size` bytes to this thread's countdown and says
/// whether the slow path must run.
#[inline(always)]
pub(crate) fn charge(size: usize) -> bool {
    STATE.with(|s| {
        let before = s.countdown.get();
        s.countdown.set(before.wrapping_sub(size as i64));
        // Compared before the subtraction so that the compiler can take the
        // flags of one memory-destination `sub` (no separate test).
        before <= size as i64
    })
}

/// The slow path after [`charge`] returned true for `size` bytes: decides
/// whether this allocation is a sample, re-arms the countdown, and returns the
/// sample's weight. `object` is false when the bytes grow an existing block.
pub(crate) fn decide(size: usize, object: bool) -> Option<Weight> {
    STATE.with(|s| {
        let now = MEAN.load(Ordering::Relaxed);
        if s.rng.get() == 0 {
            // First slow path of this thread: seed, draw the first gap, and
            // apply this allocation to it as the fast path would have.
            s.rng.set(seed());
            rearm(s, now);
            let left = s.countdown.get() - size as i64;
            s.countdown.set(left);
            if left > 0 {
                return None;
            }
        }
        let overshoot = s.countdown.get().unsigned_abs();
        let drawn_with = s.mean.get();
        rearm(s, now);
        if s.busy.get() || drawn_with == 0 {
            // Our own allocation, or sampling was off: just re-armed.
            return None;
        }
        let n = if drawn_with == 1 {
            size as u64
        } else {
            1 + poisson(s, overshoot as f64 / drawn_with as f64)
        };
        Some(Weight::new(n, drawn_with, size as u64, object))
    })
}

/// Draws this thread's next countdown with `mean`.
fn rearm(s: &ThreadState, mean: u64) {
    s.mean.set(mean);
    let gap = match mean {
        0 => RECHECK_BYTES,
        1 => 1,
        m => {
            // Rounded up to whole bytes as `floor + 1`, which equals the
            // ceiling except at exact integers (never, for a continuous
            // draw) and is one conversion instead of a call to `ceil` on
            // x86_64's baseline (no SSE4.1 `roundsd`). The float-to-int
            // cast saturates, and the clamp keeps countdowns far from
            // overflow.
            let g = -uniform(s).ln() * m as f64;
            (g as i64).saturating_add(1).clamp(1, i64::MAX / 4)
        }
    };
    s.countdown.set(gap);
}

/// Uniform in (0, 1].
fn uniform(s: &ThreadState) -> f64 {
    // xorshift64* (Vigna); the state is never 0 once seeded.
    let mut x = s.rng.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s.rng.set(x);
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    ((r >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Poisson(`lambda`): multiplication of uniforms (Knuth) for small means, the
/// normal approximation, rounded, above 30 (where its bias is far below the
/// sampling noise).
fn poisson(s: &ThreadState, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda <= 30.0 {
        let mut p = uniform(s);
        // No point at all unless `p > e^-lambda`; since `e^-lambda >= 1 -
        // lambda`, a `p` at or below `1 - lambda` settles it without the
        // exponential. At the default interval `lambda` is the part of one
        // allocation past its sampling point over 512 KiB, a small
        // fraction, so this settles almost every sample.
        if p <= 1.0 - lambda {
            return 0;
        }
        let limit = (-lambda).exp();
        let mut k = 0u64;
        while p > limit {
            k += 1;
            p *= uniform(s);
        }
        k
    } else {
        let (u1, u2) = (uniform(s), uniform(s));
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * core::f64::consts::PI * u2).cos();
        (lambda + lambda.sqrt() * z).round().max(0.0) as u64
    }
}

/// A per-thread seed: a process-wide counter mixed with the clock and the
/// address of this thread's state (no allocation, no lock).
fn seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let count = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let now = crate::sys::clock_ns(libc::CLOCK_MONOTONIC);
    let here = STATE.with(|s| s as *const ThreadState as u64);
    let mut z = count ^ now.rotate_left(32) ^ here;
    // splitmix64 finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z.max(1)
}

/// Sets the mean interval; see [`crate::set_sample_interval`].
pub(crate) fn set_mean(bytes: u64) {
    MEAN.store(bytes, Ordering::Relaxed);
    STATE.with(|s| {
        if s.rng.get() != 0 {
            rearm(s, bytes);
        }
    });
}

/// Restarts this thread's generator from `seed` and draws a new countdown.
pub(crate) fn reseed(seed: u64) {
    STATE.with(|s| {
        s.rng.set(seed.max(1));
        rearm(s, MEAN.load(Ordering::Relaxed));
    });
}

/// The current mean interval.
pub(crate) fn mean() -> u64 {
    MEAN.load(Ordering::Relaxed)
}

/// Proof that this thread is inside the sampler (or a snapshot): while it
/// lives, every allocation of this thread is served unsampled. Dropping it
/// leaves.
pub(crate) struct Busy(());

impl Drop for Busy {
    fn drop(&mut self) {
        STATE.with(|s| s.busy.set(false));
    }
}

/// Enters the sampler; `None` if this thread is already inside it.
#[inline(always)]
pub(crate) fn enter() -> Option<Busy> {
    // `then`, not `then_some`: a `Busy` built eagerly and dropped on the
    // failing path would clear the flag the outer caller still holds.
    STATE.with(|s| !s.busy.replace(true)).then(|| Busy(()))
}

/// Proof that this thread is allocating the profiler's own long-lived
/// memory (the unwinder's caches): while it lives, every allocation of this
/// thread takes the allocator's slow path, which serves it from the
/// sampled-block region, apart from the wrapped allocator's heap and
/// counted (`Stats::unwind_cache_bytes`). Dropping it gives the countdown
/// back as it was: these bytes are not the program's and are not sampled.
pub(crate) struct OwnMemory(());

impl Drop for OwnMemory {
    fn drop(&mut self) {
        STATE.with(|s| {
            s.own.set(false);
            s.countdown.set(s.saved_countdown.get());
        });
    }
}

/// Starts serving this thread's allocations as the profiler's own memory;
/// `None` if it already does. Async-signal-safe, but only meaningful where
/// allocating is (not in a signal handler).
pub(crate) fn own_memory() -> Option<OwnMemory> {
    STATE.with(|s| {
        if s.own.replace(true) {
            return None;
        }
        s.saved_countdown.set(s.countdown.get());
        // Every allocation's `charge` now crosses: `0 <= size`, and the
        // countdown only falls from here until the guard restores it.
        s.countdown.set(0);
        Some(OwnMemory(()))
    })
}

/// Whether this thread's countdown was drawn with sampling on, so that its
/// crossing is a sample (unless the thread is inside the sampler): with
/// sampling off, a crossing only looks at the interval again
/// (`RECHECK_BYTES`), and the allocator skips the work it does ahead of a
/// sample.
#[inline]
pub(crate) fn armed() -> bool {
    STATE.with(|s| s.mean.get() != 0)
}

/// Whether this thread is allocating the profiler's own memory.
#[inline]
pub(crate) fn is_own() -> bool {
    STATE.with(|s| s.own.get())
}

/// This thread's preferred unwinder cache slot, chosen once by `pick`
/// (async-signal-safe if `pick` is: a handler and the code it interrupted
/// may both choose, and then one choice stands, which is fine for a hint).
pub(crate) fn cache_hint(pick: impl FnOnce() -> u8) -> u8 {
    STATE.with(|s| {
        if s.cache_hint.get() == 0 {
            s.cache_hint.set(pick() | 0x80);
        }
        s.cache_hint.get() & 0x7F
    })
}

/// This thread's stack bounds if already known (async-signal-safe).
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code)
)]
pub(crate) fn cached_stack_bounds() -> Option<(usize, usize)> {
    STATE.with(|s| (s.stack_hi.get() != 0).then(|| (s.stack_lo.get(), s.stack_hi.get())))
}

/// Caches this thread's stack bounds (async-signal-safe).
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code)
)]
pub(crate) fn cache_stack_bounds(lo: usize, hi: usize) {
    STATE.with(|s| {
        s.stack_lo.set(lo);
        s.stack_hi.set(hi);
    })
}

pub(crate) fn stack_bounds() -> Option<(usize, usize)> {
    STATE.with(|s| {
        if s.stack_hi.get() == 0 {
            let (lo, hi) = crate::unwind::thread_stack_bounds()?;
            s.stack_lo.set(lo);
            s.stack_hi.set(hi);
        }
        Some((s.stack_lo.get(), s.stack_hi.get()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_n_times_mean_and_objects_scale_with_size() {
        let w = Weight::new(3, 1000, 1500, true);
        assert_eq!(w.bytes, 3000);
        assert_eq!(w.objects, 2 * OBJECT_SCALE);
        assert_eq!(Weight::new(3, 1000, 1500, false).objects, 0);
    }

    #[test]
    fn poisson_mean_matches_lambda() {
        STATE.with(|s| {
            s.rng.set(12345);
            for lambda in [0.01, 0.5, 5.0, 29.0, 100.0, 5000.0] {
                let draws = 20_000;
                let sum: u64 = (0..draws).map(|_| poisson(s, lambda)).sum();
                let mean = sum as f64 / draws as f64;
                // Standard error of the mean is sqrt(lambda / draws); allow 5 of them.
                let bound = 5.0 * (lambda / draws as f64).sqrt();
                assert!(
                    (mean - lambda).abs() < bound,
                    "lambda {lambda}: mean {mean}"
                );
            }
        });
    }
}
