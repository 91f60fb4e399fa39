//! The export bench's synthetic inputs: heap snapshots and CPU samples of
//! 1 000, 10 000 and 100 000 distinct stacks of 32 frames whose addresses
//! are in the bench binary's own code, so symbolization does real work.
//!
//! Kept apart from `pprof.rs` (the measurements) because the same stacks
//! feed both profiles and every size; see that file's module docs for the
//! shape of the stacks and why.

use std::collections::HashSet;
use std::sync::mpsc;

use ferroprof::alloc::{HeapSnapshot, StackSample, Stats};
use ferroprof::pprof::Symbolizer;

/// Frames per stack.
pub const DEPTH: usize = 32;
/// Shared root chains, and their length (the outermost frames).
const ROOTS: usize = 16;
const ROOT_DEPTH: usize = 8;
/// The sampling interval the heap estimates are multiples of.
pub const INTERVAL: u64 = 512 << 10;
/// Threads the CPU samples are spread over.
const CPU_THREADS: usize = 4;

/// One size of the bench.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Distinct stacks in the snapshot (and CPU stacks in the period).
    pub stacks: usize,
    /// The size in row names: `1k`, `10k`, `100k`.
    pub label: &'static str,
}

impl Size {
    /// Distinct addresses the stacks are drawn from: one for every two
    /// stacks (5 000 at 10 000 stacks, the fixture the README's first
    /// figures were measured on).
    pub fn pool(self) -> usize {
        self.stacks / 2
    }
}

/// The sizes measured, smallest first.
pub const SIZES: [Size; 3] = [
    Size {
        stacks: 1_000,
        label: "1k",
    },
    Size {
        stacks: 10_000,
        label: "10k",
    },
    Size {
        stacks: 100_000,
        label: "100k",
    },
];

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

/// One CPU record: what the signal handler stores, before aggregation.
pub struct CpuStack {
    /// The sampled thread.
    pub tid: i32,
    /// The interrupted instruction, then return addresses.
    pub frames: Vec<u64>,
    /// Samples this record stands for.
    pub weight: u64,
}

/// The inputs of one size.
pub struct Fixture {
    /// The size these are.
    pub size: Size,
    /// The size's [`Size::pool`] return addresses, in address order: how
    /// `heap::build` resolves new addresses (DWARF is then read unit after
    /// unit).
    pub sorted: Vec<u64>,
    /// The heap snapshot of the first period.
    pub snapshot: HeapSnapshot,
    /// One period of CPU samples, one record per distinct stack.
    pub cpu: Vec<CpuStack>,
}

/// The fixtures of every size in [`SIZES`], and whether the binary's
/// executable segment has DWARF line tables.
pub fn all() -> (Vec<Fixture>, bool) {
    let largest = SIZES.iter().map(|s| s.pool()).max().unwrap_or(0);
    let (pool, has_lines) = address_pool(largest);
    let tids = parked_threads(CPU_THREADS);
    let fixtures = SIZES
        .iter()
        .map(|&size| {
            // Every size's pool is a prefix of the largest: the same
            // addresses, drawn in the same order.
            let pool = &pool[..size.pool()];
            let snapshot = snapshot(size.stacks, pool);
            let cpu = cpu_stacks(&snapshot, &tids);
            let mut sorted = pool.to_vec();
            sorted.sort_unstable();
            Fixture {
                size,
                sorted,
                snapshot,
                cpu,
            }
        })
        .collect();
    (fixtures, has_lines)
}

/// A superset of what the heap profile trims as allocator machinery.
fn is_machinery(function: &str) -> bool {
    function.trim_start_matches('<').starts_with("ferroprof")
        || function.starts_with("__rust_")
        || function.starts_with("__rg_")
}

/// `n` distinct return addresses spread over this binary's executable
/// segment, none in allocator machinery; and whether the segment has lines.
fn address_pool(n: usize) -> (Vec<u64>, bool) {
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
    let mut pool = Vec::with_capacity(n);
    while pool.len() < n {
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
    let has_lines = pool.last().is_some_and(|&ret| {
        symbolizer
            .resolve(ret - 1)
            .mapping
            .as_ref()
            .is_some_and(|m| m.has_lines)
    });
    (pool, has_lines)
}

/// `stacks` distinct stacks of [`DEPTH`] frames from `pool`; see the
/// module docs of `pprof.rs`.
fn snapshot(stacks: usize, pool: &[u64]) -> HeapSnapshot {
    let n = pool.len();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let roots: Vec<Vec<u64>> = (0..ROOTS)
        .map(|_| (0..ROOT_DEPTH).map(|_| pool[rng.index(n)]).collect())
        .collect();
    let samples: Vec<StackSample> = (0..stacks)
        .map(|i| {
            // (i % n, i / n) determines i, and so does (a, b).
            let a = i % n;
            let b = (a * 7919 + i / n + 1) % n;
            let mut frames = Vec::with_capacity(DEPTH);
            frames.extend([pool[a], pool[b]]);
            frames.extend((2..DEPTH - ROOT_DEPTH).map(|_| pool[rng.index(n)]));
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
    let sampled = samples.iter().map(|s| s.alloc_bytes / INTERVAL).sum();
    let live_blocks = samples
        .iter()
        .map(|s| s.inuse_bytes / INTERVAL)
        .sum::<u64>();
    // `Stats` is non-exhaustive: set the fields a heap export reads.
    let mut stats = Stats::default();
    stats.samples = sampled;
    stats.live_blocks = live_blocks as u32;
    stats.live_capacity = 1 << 20;
    stats.stacks = stacks as u32;
    stats.stack_capacity = (stacks as u32).next_power_of_two().max(1 << 16);
    HeapSnapshot {
        stacks: samples,
        stats,
        sample_interval: INTERVAL,
    }
}

/// One more period of allocation: every stack allocates a few more
/// sampling intervals' worth.
pub fn grow(snapshot: &mut HeapSnapshot, period: u64) {
    for (i, s) in snapshot.stacks.iter_mut().enumerate() {
        let samples = 1 + (i as u64 + period) % 4;
        let mean_size = s.alloc_bytes as f64 / s.alloc_objects.max(1.0);
        s.alloc_bytes += samples * INTERVAL;
        s.alloc_objects += (samples * INTERVAL) as f64 / mean_size;
    }
    snapshot.stats.samples += snapshot.stacks.len() as u64 * 2;
}

/// The heap stacks as CPU records: frame 0 becomes the interrupted
/// instruction (the return address minus one, inside the code, looked up
/// as is), the others stay return addresses; the records are spread over
/// the threads `tids`, with weights 1 to 4.
fn cpu_stacks(snapshot: &HeapSnapshot, tids: &[i32]) -> Vec<CpuStack> {
    snapshot
        .stacks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut frames = s.frames.clone();
            frames[0] -= 1;
            CpuStack {
                tid: tids[i % tids.len()],
                frames,
                weight: 1 + i as u64 % 4,
            }
        })
        .collect()
}

/// Starts `n` named threads that stay parked for the rest of the process
/// and returns their thread ids: the CPU profile reads each sampled
/// thread's name from `/proc/self/task/<tid>/comm`, so the tids must be
/// live threads for the profile to carry `thread name` labels.
fn parked_threads(n: usize) -> Vec<i32> {
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("bench-worker-{i}"))
            .spawn(move || {
                tx.send(current_tid()).expect("the bench waits for the tid");
                drop(tx);
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning a parked thread");
    }
    drop(tx);
    rx.iter().collect()
}

/// The calling thread's id, from `/proc/thread-self` (a link to
/// `<pid>/task/<tid>`).
fn current_tid() -> i32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|t| t.to_str())
        .and_then(|t| t.parse().ok())
        .expect("/proc/thread-self ends in the thread id")
}
