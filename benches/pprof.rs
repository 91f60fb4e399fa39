//! What the heap export costs: the work the profiler does once per period to
//! turn the allocator's snapshot into the bytes it uploads.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench pprof
//! cargo bench --bench pprof -- --warm-up-time 2 --measurement-time 5   # shorter
//! CARGO_PROFILE_BENCH_DEBUG=line-tables-only cargo bench --bench pprof  # with DWARF
//! ```
//!
//! The targets (issue: heap export budget), on this machine:
//!
//! - build + symbolize (warm cache) + delta + encode of a profile of 10 000
//!   distinct stacks of 32 frames: **≤ 50 ms and ≤ 20 MB** of memory;
//! - symbolization of 5 000 new addresses with a cold cache: measured and
//!   reported, with memory bounded.
//!
//! Nothing here asserts on time or memory (a bench does not fail because the
//! machine is slow); the numbers are printed and compared by hand.
//!
//! # The fixture
//!
//! A synthetic [`HeapSnapshot`] of 10 000 stacks of 32 frames each, whose
//! frames are addresses in this binary's own executable segment, so the
//! symbolizer does real work (module lookup, DWARF or symbol table, name
//! interning) and the profile gets real function names and files:
//!
//! - a pool of 5 000 distinct addresses spread over the segment by a
//!   fixed-seed xorshift, each stored plus one (heap stacks hold return
//!   addresses; the profile looks each up one byte earlier). Addresses whose
//!   inline chain names ferroprof or an allocator shim are skipped: the
//!   profile would trim them as allocator machinery and stacks would lose
//!   frames;
//! - per stack: frame 0 and frame 1 encode the stack's index (so the 10 000
//!   stacks are distinct by construction), frames 2 to 23 are drawn from the
//!   pool, and frames 24 to 31 are one of 16 shared "root" chains (`main`,
//!   runtime and thread entry frames are common to most stacks in a real
//!   service, which matters to gzip);
//! - values as the sampler estimates them: allocated bytes a multiple of the
//!   512 KiB interval, objects from a per-stack mean size, and half of the
//!   stacks with blocks still in use.
//!
//! Between two periods every stack allocates again, so the delta keeps all
//! 10 000 samples: the exported profile is as large as the snapshot, the
//! worst case for delta and encode (in a steady service most stacks do not
//! allocate in a given period and are dropped).
//!
//! # Rows
//!
//! - `export/warm_10k_x32`: one whole period with a warm symbolizer and a
//!   delta that saw the previous period: [`heap::build`] (symbolize from the
//!   cache, intern, build the tables), [`HeapProfiler::delta_of`],
//!   [`pprof::encode`], and freeing the profile. The snapshot's values grow
//!   before each iteration, outside the clock.
//! - `export/build_10k_x32`, `export/delta_10k_x32`, `export/encode_10k_x32`:
//!   the three steps alone (what each returns is freed outside the clock).
//! - `symbolize/cold_5000`: a new [`Symbolizer`] resolves the 5 000 pool
//!   addresses in address order (as `heap::build` does) and ends its batch; this includes reading the module list and
//!   opening this binary's symbols (`addr2line`'s loader), as the first batch
//!   after start-up, or a batch of new addresses, pays them.
//!
//! With cargo's default `bench` profile (no debug info; cargo strips it) the
//! symbolizer names functions from the symbol table only; a service built
//! with `debug = "line-tables-only"` or more has DWARF line tables and inline
//! chains, which make cold symbolization and the profile larger. The
//! `CARGO_PROFILE_BENCH_DEBUG` line above measures that case; the memory
//! report says which one ran (`has_lines`).
//!
//! # Memory
//!
//! The binary's global allocator is jemalloc wrapped in a counter of live
//! requested bytes and their peak (relaxed atomics: two uncontended atomic
//! operations per allocation, in the timed rows too). Before criterion
//! starts, one warm period and one cold symbolization are measured and
//! printed on stderr as `memory: key=value` lines (sizes in bytes): the
//! heap the snapshot takes, the state kept between periods (symbolizer
//! cache and delta), the peak heap growth during the period, the encoded
//! size, the profile's table sizes, the cold batch's peak and what it keeps
//! after `end_batch`, and the process's resident set growth (`VmRSS`, and
//! `VmHWM` after resetting it through `/proc/self/clear_refs`; `addr2line`
//! maps the binary's sections, which shows there and not in the heap). The
//! heap figures are requested bytes: jemalloc's size classes and retained
//! pages come on top.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, SamplingMode};
use ferroprof::alloc::{HeapSnapshot, StackSample, Stats};
use ferroprof::heap::{self, HeapProfiler};
use ferroprof::pprof::{self, Profile, Symbolizer};
use tikv_jemallocator::Jemalloc;

#[global_allocator]
static GLOBAL: Counting<Jemalloc> = Counting(Jemalloc);

/// Distinct stacks in the snapshot.
const STACKS: usize = 10_000;
/// Frames per stack.
const DEPTH: usize = 32;
/// Distinct addresses the stacks are drawn from.
const POOL: usize = 5_000;
/// Shared root chains, and their length (the outermost frames).
const ROOTS: usize = 16;
const ROOT_DEPTH: usize = 8;
/// The sampling interval the estimates are multiples of.
const INTERVAL: u64 = 512 << 10;
/// When the profiles are taken (fixed, so every period builds the same
/// strings) and the period they cover.
const EPOCH_SECS: u64 = 1_700_000_000;
const PERIOD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The counting allocator.

/// Requested bytes live now through [`GLOBAL`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest [`LIVE`] since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `A`, counting live requested bytes in [`LIVE`] and their peak in
/// [`PEAK`]. Relaxed is enough: the figures are read by the thread that
/// made the allocations being measured.
struct Counting<A>(A);

#[inline]
fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Relaxed) + bytes;
    if now > PEAK.load(Relaxed) {
        PEAK.fetch_max(now, Relaxed);
    }
}

#[inline]
fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Relaxed);
}

// SAFETY: every method forwards to `A` with the caller's arguments and
// returns `A`'s result unchanged; the counters are only bookkeeping.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract: `ptr`
        // came from this allocator (so from `A`) with `layout`.
        unsafe { self.0.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Live requested bytes now.
fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Starts a new peak at the current live bytes, and returns them.
fn reset_peak() -> usize {
    let now = live();
    PEAK.store(now, Relaxed);
    now
}

fn peak() -> usize {
    PEAK.load(Relaxed)
}

/// The resident set (`VmRSS`) and its high-water mark (`VmHWM`), in bytes.
fn rss() -> Option<(usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| -> Option<usize> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let n = line[key.len()..].trim().trim_end_matches("kB").trim();
        n.parse::<usize>().ok().map(|k| k << 10)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// Resets `VmHWM` to the current resident set (Linux 4.0+); says if it did.
fn reset_rss_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Heap and resident-set figures around one measured step.
struct Probe {
    heap_base: usize,
    rss_base: Option<(usize, usize)>,
    hwm_reset: bool,
}

impl Probe {
    fn start() -> Self {
        let hwm_reset = reset_rss_peak();
        Probe {
            heap_base: reset_peak(),
            rss_base: rss(),
            hwm_reset,
        }
    }

    /// Peak live heap above the start.
    fn heap_peak(&self) -> usize {
        peak().saturating_sub(self.heap_base)
    }

    /// Live heap now above the start (negative if freed).
    fn heap_now(&self) -> isize {
        live() as isize - self.heap_base as isize
    }

    /// Resident set now, and at its peak, above the start.
    fn rss(&self) -> String {
        match (self.rss_base, rss()) {
            (Some((base, _)), Some((now, hwm))) => {
                let grew = |x: usize| x as isize - base as isize;
                if self.hwm_reset {
                    format!("rss_now={} rss_peak={}", grew(now), grew(hwm))
                } else {
                    format!("rss_now={} rss_peak=n/a", grew(now))
                }
            }
            _ => "rss=n/a".to_owned(),
        }
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

// ---------------------------------------------------------------------------
// The fixture.

/// Marsaglia's xorshift64*, fixed seeds: the same fixture every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// The pool of return addresses and the snapshot built from it.
struct Fixture {
    /// [`POOL`] distinct return addresses in this binary's code, in
    /// address order: how `heap::build` resolves new addresses (DWARF is
    /// then read unit after unit).
    sorted: Vec<u64>,
    snapshot: HeapSnapshot,
    /// The executable segment has DWARF line tables.
    has_lines: bool,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (pool, has_lines) = address_pool();
        let snapshot = snapshot(&pool);
        let mut sorted = pool.clone();
        sorted.sort_unstable();
        Fixture {
            sorted,
            snapshot,
            has_lines,
        }
    })
}

/// A superset of what the heap profile trims as allocator machinery.
fn is_machinery(function: &str) -> bool {
    function.trim_start_matches('<').starts_with("ferroprof")
        || function.starts_with("__rust_")
        || function.starts_with("__rg_")
}

/// [`POOL`] distinct return addresses spread over this binary's executable
/// segment, none in allocator machinery; and whether the segment has lines.
fn address_pool() -> (Vec<u64>, bool) {
    let mut symbolizer = Symbolizer::default();
    let here = address_pool as *const () as u64;
    let segment = symbolizer
        .resolve(here)
        .mapping
        .clone()
        .expect("the bench's own code is in a mapped executable segment");
    let (start, limit) = (segment.start, segment.limit);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = HashSet::new();
    let mut pool = Vec::with_capacity(POOL);
    while pool.len() < POOL {
        // `ret - 1`, the address looked up, is in `start..limit`.
        let ret = start + 1 + rng.below(limit - start);
        if !seen.insert(ret) {
            continue;
        }
        let symbol = symbolizer.resolve(ret - 1);
        if symbol.frames.iter().any(|f| is_machinery(&f.function)) {
            continue;
        }
        pool.push(ret);
    }
    // The symbolizer learns whether the module has lines when it opens it,
    // after the first address (`here`) took its mapping: ask about the last.
    let has_lines = symbolizer
        .resolve(pool[POOL - 1] - 1)
        .mapping
        .as_ref()
        .is_some_and(|m| m.has_lines);
    (pool, has_lines)
}

/// [`STACKS`] distinct stacks of [`DEPTH`] frames from `pool`; see the
/// module docs.
fn snapshot(pool: &[u64]) -> HeapSnapshot {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let roots: Vec<Vec<u64>> = (0..ROOTS)
        .map(|_| (0..ROOT_DEPTH).map(|_| pool[rng.index(POOL)]).collect())
        .collect();
    let stacks: Vec<StackSample> = (0..STACKS)
        .map(|i| {
            // (i % POOL, i / POOL) determines i, and so does (a, b).
            let a = i % POOL;
            let b = (a * 7919 + i / POOL + 1) % POOL;
            let mut frames = Vec::with_capacity(DEPTH);
            frames.extend([pool[a], pool[b]]);
            frames.extend((2..DEPTH - ROOT_DEPTH).map(|_| pool[rng.index(POOL)]));
            frames.extend(&roots[rng.index(ROOTS)]);
            let samples = 1 + rng.below(64);
            let mean_size = 16u64 << rng.below(10);
            let alloc_bytes = samples * INTERVAL;
            let inuse_bytes = if i % 2 == 0 {
                samples.div_ceil(2) * INTERVAL
            } else {
                0
            };
            StackSample {
                id: i as u32,
                frames,
                truncated: false,
                overflow: false,
                alloc_objects: (alloc_bytes / mean_size) as f64,
                alloc_bytes,
                inuse_objects: (inuse_bytes / mean_size) as f64,
                inuse_bytes,
            }
        })
        .collect();
    let samples = stacks.iter().map(|s| s.alloc_bytes / INTERVAL).sum();
    let live_blocks = stacks.iter().map(|s| s.inuse_bytes / INTERVAL).sum::<u64>();
    HeapSnapshot {
        stacks,
        stats: Stats {
            samples,
            live_blocks: live_blocks as u32,
            live_capacity: 1 << 20,
            stacks: STACKS as u32,
            stack_capacity: 1 << 16,
            ..Stats::default()
        },
        sample_interval: INTERVAL,
    }
}

/// One more period of allocation: every stack allocates a few more
/// sampling intervals' worth.
fn grow(snapshot: &mut HeapSnapshot, period: u64) {
    for (i, s) in snapshot.stacks.iter_mut().enumerate() {
        let samples = 1 + (i as u64 + period) % 4;
        let mean_size = s.alloc_bytes as f64 / s.alloc_objects.max(1.0);
        s.alloc_bytes += samples * INTERVAL;
        s.alloc_objects += (samples * INTERVAL) as f64 / mean_size;
    }
    snapshot.stats.samples += STACKS as u64 * 2;
}

/// The profiler's state across periods, warmed by one period.
struct Exporter {
    snapshot: HeapSnapshot,
    symbolizer: Symbolizer,
    profiler: HeapProfiler,
    period: u64,
}

impl Exporter {
    /// Takes `snapshot` as the first period and exports it once, so the
    /// symbolizer's cache and the delta's state are warm.
    fn warm(snapshot: HeapSnapshot) -> Self {
        let mut e = Exporter {
            snapshot,
            symbolizer: Symbolizer::default(),
            profiler: HeapProfiler::new(),
            period: 0,
        };
        let first = e.export();
        let samples = pprof::decode(&first)
            .expect("the exporter's profile decodes")
            .sample
            .len();
        assert_eq!(samples, STACKS, "every synthetic stack is a sample");
        e
    }

    /// Grows the snapshot to the next period (untimed preparation).
    fn next_period(&mut self) {
        self.period += 1;
        grow(&mut self.snapshot, self.period);
    }

    fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS) + PERIOD * self.period as u32
    }

    /// The cumulative profile of the current snapshot.
    fn build(&mut self) -> Profile {
        let time = self.time();
        heap::build(&self.snapshot, &mut self.symbolizer, time, PERIOD)
    }

    /// One period's work: build, delta, encode.
    fn export(&mut self) -> Vec<u8> {
        let cumulative = self.build();
        let delta = self.profiler.delta_of(cumulative);
        pprof::encode(&delta)
    }
}

// ---------------------------------------------------------------------------
// The memory report.

fn report_memory() {
    let fx = fixture();
    eprintln!(
        "memory: fixture stacks={STACKS} depth={DEPTH} pool={POOL} has_lines={}",
        fx.has_lines
    );

    // Cold symbolization of the pool.
    let probe = Probe::start();
    let mut symbolizer = Symbolizer::default();
    let start = Instant::now();
    for &ret in &fx.sorted {
        black_box(symbolizer.resolve(ret - 1));
    }
    let resolved = start.elapsed();
    let during = probe.rss();
    let heap_peak = probe.heap_peak();
    symbolizer.end_batch();
    eprintln!(
        "memory: symbolize/cold_5000 heap_peak={heap_peak} ({:.1} MiB) \
         heap_kept_after_end_batch={} ({:.2} MiB) {during} (before end_batch) \
         {} (after end_batch) once={:.1}ms",
        mib(heap_peak),
        probe.heap_now(),
        mib(probe.heap_now().max(0) as usize),
        probe.rss(),
        resolved.as_secs_f64() * 1e3,
    );
    drop(symbolizer);

    // One warm period.
    let base = live();
    let snapshot = fx.snapshot.clone();
    let snapshot_bytes = live() - base;
    let mut exporter = Exporter::warm(snapshot);
    let state_bytes = live() as isize - base as isize - snapshot_bytes as isize;
    let profile = exporter.build();
    eprintln!(
        "memory: profile locations={} lines={} functions={} strings={} string_bytes={} \
         unzipped_bytes={}",
        profile.location.len(),
        profile.location.iter().map(|l| l.line.len()).sum::<usize>(),
        profile.function.len(),
        profile.string_table.len(),
        profile.string_table.iter().map(String::len).sum::<usize>(),
        prost::Message::encoded_len(&profile),
    );
    drop(profile);
    exporter.next_period();
    let probe = Probe::start();
    let start = Instant::now();
    let bytes = exporter.export();
    let took = start.elapsed();
    let heap_peak = probe.heap_peak();
    let total = peak().saturating_sub(base);
    eprintln!(
        "memory: export/warm_10k_x32 snapshot_heap={snapshot_bytes} ({:.1} MiB) \
         state_between_periods={state_bytes} ({:.1} MiB) \
         period_heap_peak={heap_peak} ({:.1} MiB) \
         total_heap_peak={total} ({:.1} MiB, snapshot + state + period) {} \
         encoded_bytes={} samples={} once={:.1}ms",
        mib(snapshot_bytes),
        mib(state_bytes.max(0) as usize),
        mib(heap_peak),
        mib(total),
        probe.rss(),
        bytes.len(),
        pprof::decode(&bytes).map_or(0, |p| p.sample.len()),
        took.as_secs_f64() * 1e3,
    );
}

// ---------------------------------------------------------------------------
// The benchmarks.

/// Runs `iters` iterations of `prepare` (untimed) then `step` (timed, its
/// output freed after the clock stops), and returns the time of the steps.
fn timed<I, O>(
    iters: u64,
    mut prepare: impl FnMut() -> I,
    mut step: impl FnMut(I) -> O,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = prepare();
        let start = Instant::now();
        let output = black_box(step(input));
        total += start.elapsed();
        drop(output);
    }
    total
}

fn bench_export(c: &mut Criterion) {
    let fx = fixture();
    let mut group = c.benchmark_group("export");
    // Milliseconds per iteration: a few samples of equal size are plenty.
    group.sample_size(20).sampling_mode(SamplingMode::Flat);

    let mut e = Exporter::warm(fx.snapshot.clone());
    group.bench_function("warm_10k_x32", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                e.next_period();
                let start = Instant::now();
                // The profile is freed inside `export`, on the clock, as in
                // the profiler; the bytes are freed on the clock too.
                drop(black_box(e.export()));
                total += start.elapsed();
            }
            total
        })
    });

    group.bench_function("build_10k_x32", |b| {
        b.iter_custom(|iters| timed(iters, || (), |()| e.build()))
    });

    // The delta of a cumulative profile built once and grown in place.
    let mut cumulative = e.build();
    let alloc_objects = cumulative.sample_type_index("alloc_objects").unwrap();
    let alloc_space = cumulative.sample_type_index("alloc_space").unwrap();
    group.bench_function("delta_10k_x32", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || {
                    for s in &mut cumulative.sample {
                        s.value[alloc_objects] += 3;
                        s.value[alloc_space] += INTERVAL as i64;
                    }
                    cumulative.clone()
                },
                |p| e.profiler.delta_of(p),
            )
        })
    });

    e.next_period();
    let cumulative = e.build();
    let delta = e.profiler.delta_of(cumulative);
    group.bench_function("encode_10k_x32", |b| b.iter(|| pprof::encode(&delta)));
    group.finish();
}

fn bench_symbolize(c: &mut Criterion) {
    let fx = fixture();
    let mut group = c.benchmark_group("symbolize");
    group.sample_size(20).sampling_mode(SamplingMode::Flat);
    group.bench_function("cold_5000", |b| {
        b.iter_batched(
            Symbolizer::default,
            |mut s| {
                for &ret in &fx.sorted {
                    black_box(s.resolve(ret - 1));
                }
                s.end_batch();
                s
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn main() {
    report_memory();
    let mut c = Criterion::default().configure_from_args();
    bench_export(&mut c);
    bench_symbolize(&mut c);
    c.final_summary();
}
