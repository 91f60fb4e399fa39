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

static BARE: Jemalloc = Jemalloc;
static WRAPPED: SamplingAllocator = SamplingAllocator::new(Jemalloc);

const ROUNDS: usize = 2000;

/// Nanoseconds per alloc+free pair over `n` pairs.
#[inline(never)]
fn pairs<A: GlobalAlloc>(a: &A, layout: Layout, n: u32) -> f64 {
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
    let start = Instant::now();
    for _ in 0..n {
        window.step();
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// [`ROUNDS`] rounds of a burst of 16 384 steps of `a` and one of `b`,
/// `a` first in even rounds and `b` first in odd ones, so that neither
/// gains from its place in the round.
fn window_rounds<A: GlobalAlloc, B: GlobalAlloc>(
    a: &mut Window<'_, A>,
    b: &mut Window<'_, B>,
) -> (Vec<f64>, Vec<f64>) {
    (0..ROUNDS)
        .map(|round| {
            if round % 2 == 0 {
                (steps(a, 16_384), steps(b, 16_384))
            } else {
                let later = steps(b, 16_384);
                (steps(a, 16_384), later)
            }
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
    let burst = |ring: &mut Window<'_, A>, mean: u64, times: &mut Vec<f64>, taken: &mut u64| {
        ferroprof::alloc::set_sample_interval(mean);
        let before = ferroprof::alloc::stats().samples;
        times.push(steps(ring, 16_384));
        *taken += ferroprof::alloc::stats().samples - before;
    };
    for round in 0..ROUNDS {
        let [taken_off, taken_on] = &mut samples;
        // Each kind first in every other round, as in `window_rounds`.
        if round % 2 == 0 {
            burst(ring, 0, &mut off, taken_off);
            burst(ring, interval, &mut on, taken_on);
        } else {
            burst(ring, interval, &mut on, taken_on);
            burst(ring, 0, &mut off, taken_off);
        }
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
            // Each allocator first in every other round, as in
            // `window_rounds`.
            if round % 2 == 0 {
                bare.push(pairs(&BARE, layout, n));
                wrapped.push(pairs(&WRAPPED, layout, n));
            } else {
                wrapped.push(pairs(&WRAPPED, layout, n));
                bare.push(pairs(&BARE, layout, n));
            }
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
