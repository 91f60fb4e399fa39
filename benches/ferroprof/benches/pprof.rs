//! What the profiles' export costs: the work the profiler does once per
//! period to turn the allocator's snapshot (and the CPU samples) into the
//! bytes it uploads, at 1 000, 10 000 and 100 000 distinct stacks, so the
//! growth with the number of stacks is visible.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p ferroprof-benches --bench pprof            # every size, ~2-3 min
//! cargo bench -p ferroprof-benches --bench pprof -- --warm-up-time 0.5 --measurement-time 1
//! cargo bench -p ferroprof-benches --bench pprof -- '_10k_|_5000$'   # one size's rows
//! CARGO_PROFILE_BENCH_DEBUG=line-tables-only cargo bench -p ferroprof-benches --bench pprof  # DWARF
//! ```
//!
//! The targets (issue: heap export budget), on this machine:
//!
//! - build + symbolize (warm cache) + delta + encode of a profile of 10 000
//!   distinct stacks of 32 frames: **≤ 50 ms and ≤ 20 MB** of memory;
//! - symbolization of 5 000 new addresses with a cold cache: measured and
//!   reported, with memory bounded;
//! - the same period at 1 000 and 100 000 stacks (issue 7): measured, to
//!   show whether time and memory grow linearly with the stacks.
//!
//! Nothing here asserts on time or memory (a bench does not fail because the
//! machine is slow); the numbers are printed and compared by hand.
//!
//! # The fixture
//!
//! Per size, a synthetic [`HeapSnapshot`] of `N` stacks of 32 frames each
//! (`benches/ferroprof/benches/pprof/fixture.rs`), whose frames are addresses in this binary's
//! own executable segment, so the symbolizer does real work (module lookup,
//! DWARF or symbol table, name interning) and the profile gets real
//! function names and files:
//!
//! - a pool of `N / 2` distinct addresses (500, 5 000, 50 000: a service
//!   with more distinct stacks runs more distinct code) spread over the
//!   segment by a fixed-seed xorshift, each stored plus one (heap stacks
//!   hold return addresses; the profile looks each up one byte earlier).
//!   Addresses whose inline chain names ferroprof or an allocator shim are
//!   skipped: the profile would trim them as allocator machinery and stacks
//!   would lose frames. Each size's pool is a prefix of the largest, and
//!   the 10 000-stack fixture is the one the README's first figures used;
//! - per stack: frame 0 and frame 1 encode the stack's index (so the `N`
//!   stacks are distinct by construction), frames 2 to 23 are drawn from the
//!   pool, and frames 24 to 31 are one of 16 shared "root" chains (`main`,
//!   runtime and thread entry frames are common to most stacks in a real
//!   service, which matters to gzip);
//! - values as the sampler estimates them: allocated bytes a multiple of the
//!   512 KiB interval, objects from a per-stack mean size, and half of the
//!   stacks with blocks still in use.
//!
//! Between two periods every stack allocates again, so the delta keeps all
//! `N` samples: the exported profile is as large as the snapshot, the worst
//! case for delta and encode (in a steady service most stacks do not
//! allocate in a given period and are dropped).
//!
//! The CPU fixture is the same stacks as one period of CPU records: frame 0
//! is the interrupted instruction (the return address minus one, looked up
//! as is), the rest return addresses; records are spread over 4 parked
//! threads of this process (the profile labels samples with their thread's
//! id and name) with weights 1 to 4, one record per distinct stack.
//!
//! # Rows
//!
//! For each size (`1k`, `10k`, `100k`; the pool in the symbolize row):
//!
//! - `export/warm_10k_x32`: one heap period as the profiler's
//!   `Worker::heap_profile` does it, with a warm symbolizer and a delta
//!   that saw the previous period: [`heap::build`] (symbolize from the
//!   cache, intern, build the tables, end the symbolizer's batch),
//!   [`HeapProfiler::delta_of`], [`pprof::encode`] (protobuf, then gzip at
//!   the fastest level, as uploaded), and freeing the profile and the
//!   bytes. The snapshot's values grow before each iteration, outside the
//!   clock; taking the snapshot from the sampler is not measured (it needs
//!   a live sampler with `N` stacks; its size is reported).
//! - `export/build_10k_x32`, `export/delta_10k_x32`, `export/encode_10k_x32`:
//!   the three steps alone (what each returns is freed outside the clock).
//! - `symbolize/cold_5000`: a new [`Symbolizer`] resolves the size's pool
//!   in address order (as `heap::build` does) and ends its batch; this
//!   includes reading the module list and opening this binary's symbols
//!   (`addr2line`'s loader), as the first batch after start-up, or a batch
//!   of new addresses, pays them.
//! - `cpu/period_10k_x32`: one CPU period: the records counted into the
//!   profiler's [`Aggregator`] (done by `poll` during the period in the
//!   profiler; no ring is involved here), [`Aggregator::build`] with a warm
//!   symbolizer, and [`pprof::encode`]. The CPU profile has no delta (each
//!   period counts its own samples). `N` distinct CPU stacks in one period
//!   is a lot: at 100 Hz a fully busy core gives 6 000 samples a minute.
//!
//! With cargo's default `bench` profile (no debug info; cargo strips it) the
//! symbolizer names functions from the symbol table only; a service built
//! with `debug = "line-tables-only"` or more has DWARF line tables and inline
//! chains, which make cold symbolization and the profile larger. The
//! `CARGO_PROFILE_BENCH_DEBUG` line above measures that case; the memory
//! report says which one ran (`has_lines`).
//!
//! Criterion runs 20 samples per row (10 at 100k, where one iteration takes
//! hundreds of milliseconds), 1 s of warm-up and 4 s of measurement unless
//! the command line says otherwise.
//!
//! # Memory
//!
//! The binary's global allocator is jemalloc wrapped in a counter of live
//! requested bytes and their peak (relaxed atomics: two uncontended atomic
//! operations per allocation, in the timed rows too). Before criterion
//! starts, per size, one cold symbolization, one cold first period, one warm
//! period, the next warm period step by step, and one CPU period step by
//! step are measured once and printed on stderr as `memory: key=value` lines
//! (sizes in bytes, times of that one run): the heap the snapshot takes, the
//! state kept between periods (symbolizer cache and delta), the peak heap
//! growth during the period and during each step (the cumulative profile,
//! the delta's tables, the protobuf and gzip buffers), the encoded size and
//! the gzip buffer's capacity, the profile's table sizes, the cold batch's
//! peak and what it keeps after `end_batch`, the CPU aggregator's records,
//! and the process's resident set growth (`VmRSS`, and `VmHWM` after
//! resetting it through `/proc/self/clear_refs`; `addr2line` maps the
//! binary's sections, which shows there and not in the heap). A
//! `memory: summary` table of every size follows.
//! The heap figures are requested bytes: jemalloc's size classes and
//! retained pages come on top.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode};
use ferroprof::alloc::HeapSnapshot;
use ferroprof::config::DEFAULT_CPU_PROFILE_RATE;
use ferroprof::cpu::Aggregator;
use ferroprof::heap::{self, HeapProfiler};
use ferroprof::pprof::{self, Profile, Symbolizer};
use tikv_jemallocator::Jemalloc;

// The bench's root is `benches/ferroprof/benches/pprof.rs`, so its modules
// live beside it.
#[path = "pprof/fixture.rs"]
mod fixture;

use fixture::{Fixture, DEPTH, INTERVAL};

#[global_allocator]
static GLOBAL: Counting<Jemalloc> = Counting(Jemalloc);

/// When the profiles are taken (fixed, so every period builds the same
/// strings) and the period they cover.
const EPOCH_SECS: u64 = 1_700_000_000;
const PERIOD: Duration = Duration::from_secs(60);
/// The CPU profile's sampling rate: the profiler's default.
const CPU_HZ: u32 = DEFAULT_CPU_PROFILE_RATE;

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
// The periods.

fn at(period: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS) + PERIOD * period as u32
}

/// The heap profile's state across periods.
struct Exporter {
    snapshot: HeapSnapshot,
    symbolizer: Symbolizer,
    profiler: HeapProfiler,
    period: u64,
}

impl Exporter {
    /// An exporter that has seen nothing yet: its first period symbolizes
    /// every address cold and its delta has no previous profile.
    fn cold(snapshot: HeapSnapshot) -> Self {
        Exporter {
            snapshot,
            symbolizer: Symbolizer::default(),
            profiler: HeapProfiler::new(),
            period: 0,
        }
    }

    /// Takes `snapshot` as the first period and exports it once, so the
    /// symbolizer's cache and the delta's state are warm.
    fn warm(snapshot: HeapSnapshot) -> Self {
        let mut e = Self::cold(snapshot);
        e.first();
        e
    }

    /// Exports the first period and checks that every stack is a sample.
    fn first(&mut self) -> Vec<u8> {
        let bytes = self.export();
        assert_eq!(
            samples(&bytes),
            self.snapshot.stacks.len(),
            "every synthetic stack is a heap sample"
        );
        bytes
    }

    /// Grows the snapshot to the next period (untimed preparation).
    fn next_period(&mut self) {
        self.period += 1;
        fixture::grow(&mut self.snapshot, self.period);
    }

    /// The cumulative profile of the current snapshot.
    fn build(&mut self) -> Profile {
        heap::build(
            &self.snapshot,
            &mut self.symbolizer,
            at(self.period),
            PERIOD,
        )
    }

    /// One period's work: build, delta, encode.
    fn export(&mut self) -> Vec<u8> {
        let cumulative = self.build();
        let delta = self.profiler.delta_of(cumulative);
        pprof::encode(&delta)
    }
}

/// The CPU profile's state across periods: the profiler keeps its
/// aggregator (whose table keeps its capacity) and the symbolizer.
struct CpuExporter<'f> {
    fixture: &'f Fixture,
    aggregator: Aggregator,
    symbolizer: Symbolizer,
    period: u64,
}

impl<'f> CpuExporter<'f> {
    /// Exports one period first, so the symbolizer and the aggregator's
    /// table are warm.
    fn warm(fixture: &'f Fixture) -> Self {
        let mut e = CpuExporter {
            fixture,
            aggregator: Aggregator::default(),
            symbolizer: Symbolizer::default(),
            period: 0,
        };
        let bytes = e.export();
        let profile = pprof::decode(&bytes).expect("the CPU profile decodes");
        assert_eq!(
            profile.sample.len(),
            fixture.cpu.len(),
            "every synthetic CPU stack is a sample"
        );
        let named = profile
            .sample
            .iter()
            .filter(|s| s.label.iter().any(|l| profile.str(l.key) == "thread name"))
            .count();
        assert_eq!(named, fixture.cpu.len(), "samples name their thread");
        e
    }

    /// Counts the period's records, as `poll` does during the period.
    fn aggregate(&mut self) {
        for s in &self.fixture.cpu {
            self.aggregator.add(s.tid, &s.frames, false, true, s.weight);
        }
    }

    /// The period's profile; empties the aggregator for the next period.
    fn build(&mut self) -> Profile {
        self.period += 1;
        let time = at(self.period);
        self.aggregator
            .build(&mut self.symbolizer, CPU_HZ, 0, time, PERIOD)
    }

    /// One period: count the records, build, encode.
    fn export(&mut self) -> Vec<u8> {
        self.aggregate();
        pprof::encode(&self.build())
    }
}

/// The number of samples in an encoded profile.
fn samples(bytes: &[u8]) -> usize {
    pprof::decode(bytes)
        .expect("the exporter's profile decodes")
        .sample
        .len()
}

// ---------------------------------------------------------------------------
// The memory report.

/// One size's figures for the summary table, in bytes and milliseconds.
struct Summary {
    stacks: usize,
    snapshot: usize,
    state: isize,
    period_peak: usize,
    encoded: usize,
    once_ms: f64,
    first_peak: usize,
    first_ms: f64,
    cold_peak: usize,
    cold_ms: f64,
    cpu_table: isize,
    cpu_peak: usize,
    cpu_encoded: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report_memory(fx: &Fixture) -> Summary {
    let label = fx.size.label;
    let pool = fx.sorted.len();

    // Cold symbolization of the pool.
    let probe = Probe::start();
    let mut symbolizer = Symbolizer::default();
    let start = Instant::now();
    for &ret in &fx.sorted {
        black_box(symbolizer.resolve(ret - 1));
    }
    let cold = start.elapsed();
    let during = probe.rss();
    let cold_peak = probe.heap_peak();
    symbolizer.end_batch();
    eprintln!(
        "memory: symbolize/cold_{pool} heap_peak={cold_peak} ({:.1} MiB) \
         heap_kept_after_end_batch={} ({:.2} MiB) {during} (before end_batch) \
         {} (after end_batch) once={:.1}ms",
        mib(cold_peak),
        probe.heap_now(),
        mib(probe.heap_now().max(0) as usize),
        probe.rss(),
        ms(cold),
    );
    drop(symbolizer);

    // The first period: cold symbolizer, no previous profile.
    let base = live();
    let snapshot = fx.snapshot.clone();
    let snapshot_bytes = live() - base;
    let mut exporter = Exporter::cold(snapshot);
    let probe = Probe::start();
    let start = Instant::now();
    let bytes = exporter.first();
    let first = start.elapsed();
    let first_peak = probe.heap_peak();
    eprintln!(
        "memory: export/first_{label}_x{DEPTH} period_heap_peak={first_peak} ({:.1} MiB) \
         {} encoded_bytes={} once={:.1}ms (cold symbolizer, cumulative profile)",
        mib(first_peak),
        probe.rss(),
        bytes.len(),
        ms(first),
    );
    drop(bytes);
    let state_bytes = live() as isize - base as isize - snapshot_bytes as isize;

    // A warm period.
    let profile = exporter.build();
    eprintln!(
        "memory: profile_{label} locations={} lines={} functions={} strings={} \
         string_bytes={} unzipped_bytes={}",
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
    let once = start.elapsed();
    let period_peak = probe.heap_peak();
    let total = peak().saturating_sub(base);
    eprintln!(
        "memory: export/warm_{label}_x{DEPTH} snapshot_heap={snapshot_bytes} ({:.1} MiB) \
         state_between_periods={state_bytes} ({:.1} MiB) \
         period_heap_peak={period_peak} ({:.1} MiB) \
         total_heap_peak={total} ({:.1} MiB, snapshot + state + period) {} \
         encoded_bytes={} samples={} once={:.1}ms",
        mib(snapshot_bytes),
        mib(state_bytes.max(0) as usize),
        mib(period_peak),
        mib(total),
        probe.rss(),
        bytes.len(),
        samples(&bytes),
        ms(once),
    );
    let encoded = bytes.len();
    drop(bytes);

    // The next period step by step: where its time and memory go. Each
    // step's peak is above the period's start (snapshot and state).
    exporter.next_period();
    let base = reset_peak();
    let step_peak = |since: usize| peak().saturating_sub(since) + since.saturating_sub(base);
    let start = Instant::now();
    let cumulative = exporter.build();
    let build = (start.elapsed(), peak() - base, live() - base);
    let since = reset_peak();
    let start = Instant::now();
    let delta = exporter.profiler.delta_of(cumulative);
    let delta_step = (start.elapsed(), step_peak(since), live() - base);
    let raw = prost::Message::encoded_len(&delta);
    let since = reset_peak();
    let start = Instant::now();
    let bytes = pprof::encode(&delta);
    let encode = (start.elapsed(), step_peak(since));
    eprintln!(
        "memory: export/steps_{label}_x{DEPTH} \
         build: {:.1}ms peak={} cumulative_profile={} | \
         delta: {:.1}ms peak={} delta_profile={} | \
         encode: {:.1}ms peak={} protobuf_bytes={raw} gzip_bytes={} gzip_capacity={} (heap \
         bytes above the period's start)",
        ms(build.0),
        build.1,
        build.2,
        ms(delta_step.0),
        delta_step.1,
        delta_step.2,
        ms(encode.0),
        encode.1,
        bytes.len(),
        bytes.capacity(),
    );
    drop((delta, bytes));
    drop(exporter);

    // A warm CPU period, step by step.
    let mut cpu = CpuExporter::warm(fx);
    let probe = Probe::start();
    let start = Instant::now();
    cpu.aggregate();
    let aggregated = start.elapsed();
    let cpu_table = probe.heap_now();
    let start = Instant::now();
    let profile = cpu.build();
    let built = start.elapsed();
    let start = Instant::now();
    let bytes = pprof::encode(&profile);
    let encoded_in = start.elapsed();
    drop(profile);
    let cpu_peak = probe.heap_peak();
    eprintln!(
        "memory: cpu/period_{label}_x{DEPTH} aggregated_records_heap={cpu_table} ({:.1} MiB) \
         period_heap_peak={cpu_peak} ({:.1} MiB, records + build + encode) {} \
         encoded_bytes={} once: aggregate={:.1}ms build={:.1}ms encode={:.1}ms",
        mib(cpu_table.max(0) as usize),
        mib(cpu_peak),
        probe.rss(),
        bytes.len(),
        ms(aggregated),
        ms(built),
        ms(encoded_in),
    );

    Summary {
        stacks: fx.size.stacks,
        snapshot: snapshot_bytes,
        state: state_bytes,
        period_peak,
        encoded,
        once_ms: ms(once),
        first_peak,
        first_ms: ms(first),
        cold_peak,
        cold_ms: ms(cold),
        cpu_table,
        cpu_peak,
        cpu_encoded: bytes.len(),
    }
}

/// Prints every size's figures as one table (MiB of requested heap, KB of
/// 1 000 bytes, milliseconds of one run).
fn report_summary(rows: &[Summary]) {
    eprintln!(
        "memory: summary | stacks | warm period peak MiB | snapshot MiB | state MiB | \
         encoded KB | once ms | first period peak MiB | first ms | cold symbolize peak MiB | \
         cold ms | cpu records MiB | cpu period peak MiB | cpu encoded KB |"
    );
    for r in rows {
        eprintln!(
            "memory: summary | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | \
             {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            r.stacks,
            mib(r.period_peak),
            mib(r.snapshot),
            mib(r.state.max(0) as usize),
            r.encoded as f64 / 1e3,
            r.once_ms,
            mib(r.first_peak),
            r.first_ms,
            mib(r.cold_peak),
            r.cold_ms,
            mib(r.cpu_table.max(0) as usize),
            mib(r.cpu_peak),
            r.cpu_encoded as f64 / 1e3,
        );
    }
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

/// A group for one size's rows: fewer samples where an iteration takes
/// hundreds of milliseconds.
fn group<'c>(c: &'c mut Criterion, name: &str, fx: &Fixture) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    if fx.size.stacks >= 100_000 {
        group.sample_size(10);
    }
    group
}

fn bench_export(c: &mut Criterion, fx: &Fixture) {
    let name = |row: &str| format!("{row}_{}_x{DEPTH}", fx.size.label);
    let mut group = group(c, "export", fx);

    let mut e = Exporter::warm(fx.snapshot.clone());
    group.bench_function(name("warm"), |b| {
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

    group.bench_function(name("build"), |b| {
        b.iter_custom(|iters| timed(iters, || (), |()| e.build()))
    });

    // The delta of a cumulative profile built once and grown in place.
    let mut cumulative = e.build();
    let alloc_objects = cumulative.sample_type_index("alloc_objects").unwrap();
    let alloc_space = cumulative.sample_type_index("alloc_space").unwrap();
    group.bench_function(name("delta"), |b| {
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
    drop(cumulative);

    e.next_period();
    let cumulative = e.build();
    let delta = e.profiler.delta_of(cumulative);
    group.bench_function(name("encode"), |b| b.iter(|| pprof::encode(&delta)));
    group.finish();
}

fn bench_symbolize(c: &mut Criterion, fx: &Fixture) {
    let mut group = group(c, "symbolize", fx);
    group.bench_function(format!("cold_{}", fx.sorted.len()), |b| {
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

fn bench_cpu(c: &mut Criterion, fx: &Fixture) {
    let mut group = group(c, "cpu", fx);
    let mut e = CpuExporter::warm(fx);
    group.bench_function(format!("period_{}_x{DEPTH}", fx.size.label), |b| {
        b.iter_custom(|iters| timed(iters, || (), |()| e.export()))
    });
    group.finish();
}

fn main() {
    let (fixtures, has_lines) = fixture::all();
    eprintln!(
        "memory: fixture sizes={:?} depth={DEPTH} pools={:?} has_lines={has_lines}",
        fixtures.iter().map(|f| f.size.stacks).collect::<Vec<_>>(),
        fixtures.iter().map(|f| f.sorted.len()).collect::<Vec<_>>(),
    );
    let summary: Vec<Summary> = fixtures.iter().map(report_memory).collect();
    report_summary(&summary);

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    for fx in &fixtures {
        bench_export(&mut c, fx);
        bench_symbolize(&mut c, fx);
        bench_cpu(&mut c, fx);
    }
    c.final_summary();
}
