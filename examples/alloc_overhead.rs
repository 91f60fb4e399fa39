//! What the sampling allocator costs, as ratios measured side by side.
//!
//! ```sh
//! cargo run --release --example alloc_overhead
//! ```
//!
//! Criterion (`cargo bench -p ferroprof-benches --bench alloc`) measures each allocator in its own
//! block of time; on a shared machine the load moves between blocks and a
//! 5 ns operation can look 30 % slower or faster from one to the next. This
//! example instead alternates short bursts of bare jemalloc and of
//! `SamplingAllocator<Jemalloc>` (default 512 KiB interval) thousands of
//! times, so both see the same load, and reports the median of the per-round
//! ratios and the ratio of the fastest bursts.
//!
//! Rows: alloc+free pairs of 16 B, 64 B, 1 KiB and 64 KiB, and the
//! benchmark's window: a ring of 4096 live blocks whose sizes follow a fixed
//! service-like mix (the same sequence for both; `benches/window/mod.rs`):
//! half of 64 B or less, one block in 128 of 64 KiB. The window runs again
//! with sampling off: that row is the fast path alone (the countdown and the
//! region check), so the difference between the two is what samples cost;
//! then that cost per sample (the wrapped ring alone, bursts with sampling
//! on and off alternated); then bare jemalloc against itself (a second
//! ring), the harness's own bias.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::Instant;

use ferroprof::{Jemalloc, SamplingAllocator};
use window::{layout, Window};

/// The window workload of `benches/ferroprof/benches/alloc.rs`, so both measure the same mix.
#[path = "../benches/window/mod.rs"]
mod window;

#[global_allocator]
static GLOBAL: SamplingAllocator = SamplingAllocator::new(Jemalloc);

/// Bytes of padding in this program's code, from `FERROPROF_LAYOUT_PAD` at
/// build time (0 without it).
const PAD: usize = match option_env!("FERROPROF_LAYOUT_PAD") {
    Some(pad) => parse(pad),
    None => 0,
};

/// Bytes of padding at the start of the benchmark loops' functions, from
/// `FERROPROF_LAYOUT_LOOP_PAD` at build time (0 without it): moves the
/// loops without moving the allocators.
const LOOP_PAD: usize = match option_env!("FERROPROF_LAYOUT_LOOP_PAD") {
    Some(pad) => parse(pad),
    None => 0,
};

/// `s` as a decimal number, at compile time (a build with a bad value
/// fails).
const fn parse(s: &str) -> usize {
    let (bytes, mut n, mut i) = (s.as_bytes(), 0, 0);
    while i < bytes.len() {
        assert!(
            bytes[i].is_ascii_digit(),
            "FERROPROF_LAYOUT_PAD, FERROPROF_LAYOUT_LOOP_PAD: not a number"
        );
        n = n * 10 + (bytes[i] - b'0') as usize;
        i += 1;
    }
    n
}

/// Moves the code linked after this function (the allocators among it) by
/// [`PAD`] bytes: see BENCHMARKS.md on measuring over code layouts.
#[inline(never)]
fn layout_pad() {
    skip::<PAD>();
}

/// `N` bytes of code where it is called, jumped over.
#[inline(always)]
fn skip<const N: usize>() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: jumps over the padding; reads and writes nothing.
    unsafe {
        std::arch::asm!("jmp 2f", ".skip {n}, 0xcc", "2:", n = const N, options(nomem, nostack, preserves_flags));
    }
}

static BARE: Jemalloc = Jemalloc;
static WRAPPED: SamplingAllocator = SamplingAllocator::new(Jemalloc);

const ROUNDS: usize = 2000;

/// Nanoseconds per alloc+free pair over `n` pairs.
#[inline(never)]
fn pairs<A: GlobalAlloc>(a: &A, layout: Layout, n: u32) -> f64 {
    skip::<LOOP_PAD>();
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: `layout` has a non-zero size; the block is freed at once
        // with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            a.dealloc(black_box(p), layout);
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Nanoseconds per window step over `n` steps.
#[inline(never)]
fn steps<A: GlobalAlloc>(window: &mut Window<'_, A>, n: u32) -> f64 {
    skip::<LOOP_PAD>();
    let start = Instant::now();
    for _ in 0..n {
        window.step();
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Runs `a` and `b` on `state`, `a` first in even rounds and `b` first in
/// odd ones, so that neither gains from its place in the round.
fn in_turn<S, T, U>(
    round: usize,
    state: &mut S,
    a: impl FnOnce(&mut S) -> T,
    b: impl FnOnce(&mut S) -> U,
) -> (T, U) {
    if round.is_multiple_of(2) {
        let first = a(state);
        (first, b(state))
    } else {
        let first = b(state);
        (a(state), first)
    }
}

/// [`ROUNDS`] rounds of a burst of 16 384 steps of `a` and one of `b`,
/// [`in_turn`].
fn window_rounds<A: GlobalAlloc, B: GlobalAlloc>(
    a: &mut Window<'_, A>,
    b: &mut Window<'_, B>,
) -> (Vec<f64>, Vec<f64>) {
    let mut rings = (a, b);
    (0..ROUNDS)
        .map(|round| {
            in_turn(
                round,
                &mut rings,
                |(a, _)| steps(a, 16_384),
                |(_, b)| steps(b, 16_384),
            )
        })
        .unzip()
}

/// (fastest, median) of `v`.
fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn report(name: &str, bare: Vec<f64>, wrapped: Vec<f64>) {
    let ratios = bare.iter().zip(&wrapped).map(|(b, w)| w / b).collect();
    let (_, ratio) = min_median(ratios);
    let (bmin, bmed) = min_median(bare);
    let (wmin, wmed) = min_median(wrapped);
    println!(
        "{name:<18} {bmed:>9.2} {wmed:>9.2} {ratio:>9.3} {:>9.3}   (fastest {bmin:.2} / {wmin:.2})",
        wmin / bmin
    );
}

/// What one sample costs in the window: bursts of the wrapped ring with
/// sampling at `interval` and off, alternated, so that both see the same
/// load and the same ring; the medians' difference over the difference in
/// samples per step (an "off" burst may still take the sample its
/// countdown was drawn for, and an "on" burst starts with the countdown
/// sampling off drew).
fn per_sample<A: GlobalAlloc>(ring: &mut Window<'_, A>, interval: u64) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut samples = [0u64; 2];
    // A burst's time per step and the samples it took.
    let burst = |ring: &mut Window<'_, A>, mean: u64| {
        ferroprof::alloc::set_sample_interval(mean);
        let before = ferroprof::alloc::stats().samples;
        let time = steps(ring, 16_384);
        (time, ferroprof::alloc::stats().samples - before)
    };
    for round in 0..ROUNDS {
        let ((time_off, taken_off), (time_on, taken_on)) =
            in_turn(round, ring, |r| burst(r, 0), |r| burst(r, interval));
        off.push(time_off);
        on.push(time_on);
        samples[0] += taken_off;
        samples[1] += taken_on;
    }
    let ((_, on), (_, off)) = (min_median(on), min_median(off));
    let steps = (ROUNDS * 16_384) as f64;
    let per_step = (samples[1] as f64 - samples[0] as f64) / steps;
    println!(
        "  per sample        {:.0} ns (one sample per {:.0} steps; {on:.2} ns a step sampling, {off:.2} not)",
        (on - off) / per_step,
        1.0 / per_step
    );
}

fn main() {
    layout_pad();
    println!(
        "ns per operation, medians of {ROUNDS} interleaved bursts; interval {} B",
        ferroprof::alloc::sample_interval()
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9}",
        "", "jemalloc", "ferroprof", "ratio", "fastest"
    );
    for size in [16usize, 64, 1024, 64 << 10] {
        let layout = black_box(layout(size));
        let n = if size >= 64 << 10 { 200 } else { 20_000 };
        let (mut bare, mut wrapped) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (b, w) = in_turn(
                round,
                &mut (),
                |_| pairs(&BARE, layout, n),
                |_| pairs(&WRAPPED, layout, n),
            );
            bare.push(b);
            wrapped.push(w);
        }
        report(&format!("pair {size} B"), bare, wrapped);
    }
    let mut bare_ring = Window::new(&BARE, 0);
    let mut wrapped_ring = Window::new(&WRAPPED, 0);
    let (bare, wrapped) = window_rounds(&mut bare_ring, &mut wrapped_ring);
    report("window 4096 live", bare, wrapped);
    // The same with sampling off: what the fast path alone costs, so the
    // difference to the row above is the cost of the samples.
    let interval = ferroprof::alloc::sample_interval();
    ferroprof::alloc::set_sample_interval(0);
    let (bare, wrapped) = window_rounds(&mut bare_ring, &mut wrapped_ring);
    ferroprof::alloc::set_sample_interval(interval);
    report("  sampling off", bare, wrapped);
    per_sample(&mut wrapped_ring, interval);
    // A/A control: bare jemalloc against itself, a second ring in the
    // wrapped ring's place (same order, same sizes). What it reads beyond
    // 1.000 is the harness's own bias, not the wrapper's.
    let mut other_ring = Window::new(&BARE, 0);
    let (bare, other) = window_rounds(&mut bare_ring, &mut other_ring);
    report("  A/A control", bare, other);
    let stats = ferroprof::alloc::stats();
    println!("{} samples taken, {} dropped", stats.samples, stats.dropped);
}
