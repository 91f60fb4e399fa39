//! The heap profiler's periods: the first profile is cumulative, later ones
//! carry only what was allocated since, and in-use bytes are always the
//! snapshot. Read through Google's pprof, at a 64 KiB sampling interval.

mod support;

use std::hint::black_box;
use std::path::Path;

use ferroprof::heap::HeapProfiler;
use ferroprof::pprof::{self, Symbolizer};
use support::pprof_tools::{self, Report};
use support::scratch::Scratch;
use support::stats::within_5_sigma;

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

const INTERVAL: u64 = 64 << 10;
const MIB: u64 = 1 << 20;

#[inline(never)]
fn keep_16mib_in_4kib_blocks() -> Vec<Vec<u8>> {
    let kept = (0..4096).map(|_| black_box(vec![3u8; 4096])).collect();
    // Work after the call keeps it from being a tail call, which would take
    // this function's frame off the stack.
    black_box(kept)
}

#[inline(never)]
fn churn_256mib_in_256b_blocks() {
    for i in 0..(256 * MIB / 256) {
        drop(black_box(Box::new([i as u8; 256])));
    }
}

/// Collects period `n`, writes it to `heap_period_<n>.pprof` in `dir`, and
/// reads it with pprof.
fn period(
    dir: &Path,
    profiler: &mut HeapProfiler,
    symbolizer: &mut Symbolizer,
    n: usize,
) -> Report {
    let path = dir.join(format!("heap_period_{n}.pprof"));
    std::fs::write(&path, pprof::encode(&profiler.collect(symbolizer)))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    pprof_tools::check(&path)
}

#[test]
fn heap_deltas_count_each_allocation_once() {
    let scratch = Scratch::new("heap-deltas");
    ferroprof::alloc::set_sample_interval(INTERVAL);
    let mut profiler = HeapProfiler::new();
    let mut symbolizer = Symbolizer::default();
    // Work runs on fresh threads so their countdowns use the new interval.
    let kept = std::thread::spawn(keep_16mib_in_4kib_blocks)
        .join()
        .unwrap();
    let first = period(scratch.path(), &mut profiler, &mut symbolizer, 0);
    within_5_sigma(
        "first period allocated",
        first.cum_of("keep_16mib_in_4kib_blocks", "alloc_space"),
        16 * MIB,
        INTERVAL,
    );
    within_5_sigma(
        "first period in use",
        first.cum_of("keep_16mib_in_4kib_blocks", "inuse_space"),
        16 * MIB,
        INTERVAL,
    );

    std::thread::spawn(churn_256mib_in_256b_blocks)
        .join()
        .unwrap();
    let second = period(scratch.path(), &mut profiler, &mut symbolizer, 1);
    // Nothing new was allocated by the keeper: its allocation delta is gone,
    // its in-use bytes stay.
    assert_eq!(
        second.cum_of("keep_16mib_in_4kib_blocks", "alloc_space"),
        0,
        "{second:?}"
    );
    assert_eq!(
        second.cum_of("keep_16mib_in_4kib_blocks", "inuse_space"),
        first.cum_of("keep_16mib_in_4kib_blocks", "inuse_space")
    );
    within_5_sigma(
        "second period churn",
        second.cum_of("churn_256mib_in_256b_blocks", "alloc_space"),
        256 * MIB,
        INTERVAL,
    );

    drop(kept);
    let third = period(scratch.path(), &mut profiler, &mut symbolizer, 2);
    // Freed and nothing allocated: the keeper's stack is all zero and dropped.
    assert_eq!(
        third.cum_of("keep_16mib_in_4kib_blocks", "inuse_space"),
        0,
        "{third:?}"
    );
    assert_eq!(
        third.cum_of("churn_256mib_in_256b_blocks", "alloc_space"),
        0,
        "{third:?}"
    );
    assert!(profiler.delta_stats().keys > 0);
}
