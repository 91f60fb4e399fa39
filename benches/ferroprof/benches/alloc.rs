//! What `SamplingAllocator` costs over the allocator it wraps.
//!
//! Run with (a separate target dir keeps it from blocking other builds):
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/bench-target cargo bench -p ferroprof-benches --bench alloc -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! These are wall times of operations that take a few nanoseconds: on a
//! shared, busy machine one run can move by a third from the next. Run it
//! under `nice -n -19` (as root) and several times, and compare medians.
//!
//! Every benchmark exists twice, once per allocator, named so that the ratio
//! reads off the report: `pair/64B/jemalloc` against `pair/64B/ferroprof`.
//! The two sides are local statics called through [`GlobalAlloc`] directly
//! (never through `Box` or `Vec`), with the pointer passed through
//! [`black_box`] so no allocation is elided:
//!
//! - `jemalloc`: bare [`tikv_jemallocator::Jemalloc`];
//! - `ferroprof`: `SamplingAllocator<Jemalloc>` at the default interval
//!   ([`ferroprof_alloc::DEFAULT_SAMPLE_INTERVAL`], 512 KiB), so it pays the
//!   fast path on every call and, now and then, a real sample (stack walk,
//!   interning, a region block and a live record).
//!
//! # Why the binary's own `#[global_allocator]` is a `SamplingAllocator` too
//!
//! A service that uses ferroprof has it as its global allocator, so
//! criterion's own allocations (and the rings' bookkeeping) go through it
//! here as well: the sampler's tables and region exist before the first
//! benchmark, as they would in production, and the per-thread countdown is
//! shared between the global allocator and the `ferroprof` static (it is one
//! thread local per thread, whichever `SamplingAllocator` charges it). That
//! sharing does not bias the `ferroprof` side: sampling points are spread by
//! bytes, so each measured allocation is sampled with the same probability
//! whoever else allocates. The `jemalloc` side never touches the countdown,
//! and both sides allocate from the same jemalloc arenas and thread caches.
//!
//! # Groups
//!
//! - `pair`, `pair_2threads`: `alloc` then `dealloc` of one block of 16 B,
//!   64 B, 1 KiB or 64 KiB. At 512 KiB a 64 KiB block is sampled one time in
//!   eight, so that row shows the price of sampling itself, not of the fast
//!   path.
//! - `window`, `window_2threads`: a ring of 4096 live blocks; each operation
//!   frees the oldest and allocates a new one whose size comes from a
//!   precomputed sequence (the same for both sides) of a service-like mix:
//!   mostly 8..=4096 B, skewed small, with one 64 KiB block in 128.
//! - `*_2threads`: two `std::thread` workers run the same loop, each with its
//!   own block or ring, released together by a barrier. Each worker does
//!   `iters` operations and the time reported is the wall time from the
//!   first start to the last finish divided by `iters`: the time of one
//!   operation while both threads run (equal to the one-thread figure under
//!   perfect scaling; two operations happen in it).
//! - `sampled`: the slow path alone. The interval is set to 1 (every
//!   allocation is a sample) only around the timed loop, which runs 32
//!   `#[inline(never)]` frames below criterion's own stack, for both
//!   [`UnwindMode`]s; `64B/32deep/jemalloc` is the same loop over bare
//!   jemalloc, for the difference. The interval and mode are put back to
//!   their defaults afterwards. One probe sample per mode, taken at the same
//!   depth before the clock starts, tells (on stderr, after the group) how
//!   many frames each sample really captured: a frame-pointer walk in a
//!   binary built without `-C force-frame-pointers=yes` stops at once, which
//!   makes it look much cheaper than it is. For a meaningful
//!   `frame-pointers` figure, run the group again with
//!   `RUSTFLAGS="-C force-frame-pointers=yes"` (and another target dir).

#[path = "../../window/mod.rs"]
mod window;

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ferroprof_alloc::{SamplingAllocator, UnwindMode, DEFAULT_SAMPLE_INTERVAL};
use tikv_jemallocator::Jemalloc;
use window::{layout, Window, SIZES};

#[global_allocator]
static GLOBAL: SamplingAllocator<Jemalloc> = SamplingAllocator::new(Jemalloc);

/// The allocator under test.
static FERROPROF: SamplingAllocator<Jemalloc> = SamplingAllocator::new(Jemalloc);
/// The baseline: the same allocator without the wrapper.
static JEMALLOC: Jemalloc = Jemalloc;

/// Block sizes of the `pair` groups, with their names.
const PAIR_SIZES: [(usize, &str); 4] = [
    (16, "16B"),
    (64, "64B"),
    (1024, "1KiB"),
    (64 << 10, "64KiB"),
];
/// Depth of the stack under the `sampled` loop.
const DEPTH: u32 = 32;
/// Size of the probe block that identifies the probe's stack in a snapshot.
const PROBE_SIZE: usize = 123_457;

/// `alloc` then `dealloc` of one block.
#[inline(always)]
fn pair<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: every layout here has a non-zero size; the block is checked
    // for null and freed at once by the allocator that made it, with the
    // layout it was made with.
    unsafe {
        let p = a.alloc(layout);
        if p.is_null() {
            handle_alloc_error(layout);
        }
        a.dealloc(black_box(p), layout);
    }
}

/// Runs `iters` steps on each of two threads, each with its own state from
/// `make`, and returns the wall time from the first start to the last end.
fn on_two_threads<S>(
    iters: u64,
    make: impl Fn(usize) -> S + Sync,
    step: impl Fn(&mut S) + Sync,
) -> Duration {
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let (barrier, make, step) = (&barrier, &make, &step);
                scope.spawn(move || {
                    let mut state = make(worker);
                    // Warm this thread's caches and its sampler state (its
                    // first slow path seeds it) before the clock starts.
                    for _ in 0..1024 {
                        step(&mut state);
                    }
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        step(&mut state);
                    }
                    let end = Instant::now();
                    drop(state);
                    (start, end)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("benchmark worker panicked"))
            .collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("two workers");
    let last = spans.iter().map(|s| s.1).max().expect("two workers");
    last - first
}

fn bench_pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("pair");
    for (size, name) in PAIR_SIZES {
        let layout = black_box(layout(size));
        group.bench_function(format!("{name}/jemalloc"), |b| {
            b.iter(|| pair(&JEMALLOC, layout))
        });
        group.bench_function(format!("{name}/ferroprof"), |b| {
            b.iter(|| pair(&FERROPROF, layout))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("pair_2threads");
    for (size, name) in PAIR_SIZES {
        let layout = black_box(layout(size));
        group.bench_function(format!("{name}/jemalloc"), |b| {
            b.iter_custom(|iters| on_two_threads(iters, |_| (), |_| pair(&JEMALLOC, layout)))
        });
        group.bench_function(format!("{name}/ferroprof"), |b| {
            b.iter_custom(|iters| on_two_threads(iters, |_| (), |_| pair(&FERROPROF, layout)))
        });
    }
    group.finish();
}

fn bench_windows(c: &mut Criterion) {
    let mut group = c.benchmark_group("window");
    group.bench_function("4096live/jemalloc", |b| {
        let mut w = Window::new(&JEMALLOC, 0);
        b.iter(|| w.step());
    });
    group.bench_function("4096live/ferroprof", |b| {
        let mut w = Window::new(&FERROPROF, 0);
        b.iter(|| w.step());
    });
    group.finish();

    // The second worker starts half-way through the sequence so that the two
    // threads do not allocate the same size at the same moment.
    let mut group = c.benchmark_group("window_2threads");
    group.bench_function("4096live/jemalloc", |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                iters,
                |w| Window::new(&JEMALLOC, w * SIZES / 2),
                Window::step,
            )
        })
    });
    group.bench_function("4096live/ferroprof", |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                iters,
                |w| Window::new(&FERROPROF, w * SIZES / 2),
                Window::step,
            )
        })
    });
    group.finish();
}

/// Runs `f` [`DEPTH`] frames deeper than the caller, one frame per level.
#[inline(never)]
fn at_depth(depth: u32, f: &mut dyn FnMut() -> Duration) -> Duration {
    if depth == 0 {
        return f();
    }
    // `black_box` on the result keeps the call from becoming a tail call (a
    // jump that would reuse this frame).
    black_box(at_depth(black_box(depth - 1), f))
}

/// Times `iters` pairs of 64 B on `a`, [`DEPTH`] frames down, with every
/// allocation sampled (when `a` samples at all). With `probe`, first takes
/// one sample of [`PROBE_SIZE`] bytes from `FERROPROF` at the very same
/// depth, before the clock starts, and returns it (to be freed by
/// [`probe_depth`]).
fn deep_pairs<A: GlobalAlloc>(a: &A, iters: u64, probe: bool) -> (Duration, *mut u8) {
    let layout = black_box(layout(64));
    let mut block = std::ptr::null_mut();
    let took = at_depth(DEPTH, &mut || {
        ferroprof_alloc::set_sample_interval(1);
        if probe {
            // SAFETY: a non-zero size; `probe_depth` frees it with this
            // layout.
            block = unsafe { FERROPROF.alloc(self::layout(PROBE_SIZE)) };
        }
        let start = Instant::now();
        for _ in 0..iters {
            pair(a, layout);
        }
        let took = start.elapsed();
        ferroprof_alloc::set_sample_interval(DEFAULT_SAMPLE_INTERVAL);
        took
    });
    (took, block)
}

/// Frees the probe block of [`deep_pairs`] and says how many frames its
/// sample kept and whether the walk was cut at the maximum depth.
fn probe_depth(block: *mut u8) -> Option<(usize, bool)> {
    let probe = layout(PROBE_SIZE);
    if block.is_null() {
        handle_alloc_error(probe);
    }
    // At interval 1 a sample weighs exactly its size, and the probe's call
    // site holds no other live block, so its stack is the one with
    // PROBE_SIZE bytes in use.
    let found = ferroprof_alloc::snapshot()
        .stacks
        .into_iter()
        .find(|s| s.inuse_bytes == PROBE_SIZE as u64)
        .map(|s| (s.frames.len(), s.truncated));
    // SAFETY: allocated by `FERROPROF` in `deep_pairs` with `probe`, freed
    // once.
    unsafe { FERROPROF.dealloc(block, probe) };
    found
}

fn bench_sampled(c: &mut Criterion) {
    let before = ferroprof_alloc::stats();
    let mut depths = Vec::new();

    let mut group = c.benchmark_group("sampled");
    group.bench_function("64B/32deep/jemalloc", |b| {
        b.iter_custom(|iters| deep_pairs(&JEMALLOC, iters, false).0)
    });
    for (mode, name) in [
        (UnwindMode::Dwarf, "dwarf"),
        (UnwindMode::FramePointers, "frame-pointers"),
    ] {
        // Criterion calls the closure once per sample: probe only once.
        let mut probed = false;
        group.bench_function(format!("64B/32deep/{name}"), |b| {
            ferroprof_alloc::set_unwind_mode(mode);
            b.iter_custom(|iters| {
                let (took, block) = deep_pairs(&FERROPROF, iters, !probed);
                if !probed {
                    depths.push((name, probe_depth(block)));
                    probed = true;
                }
                took
            });
            ferroprof_alloc::set_unwind_mode(UnwindMode::default());
        });
    }
    group.finish();
    ferroprof_alloc::set_sample_interval(DEFAULT_SAMPLE_INTERVAL);

    let after = ferroprof_alloc::stats();
    for (name, depth) in depths {
        match depth {
            Some((frames, truncated)) => eprintln!(
                "sampled/64B/32deep/{name}: each sample captured {frames} frames{}",
                if truncated {
                    " (cut at the maximum depth)"
                } else {
                    ""
                }
            ),
            None => eprintln!("sampled/64B/32deep/{name}: the probe sample was not recorded"),
        }
    }
    eprintln!(
        "sampled: {} samples taken, {} dropped",
        after.samples - before.samples,
        after.dropped - before.dropped
    );
}

criterion_group!(benches, bench_pairs, bench_windows, bench_sampled);
criterion_main!(benches);
