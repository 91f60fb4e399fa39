//! What the sampling allocator costs, as ratios measured side by side.
//!
//! ```sh
//! cargo run --release --example alloc_overhead
//! ```
//!
//! Criterion (`cargo bench --bench alloc`) measures each allocator in its own
//! block of time; on a shared machine the load moves between blocks and a
//! 5 ns operation can look 30 % slower or faster from one to the next. This
//! example instead alternates short bursts of bare jemalloc and of
//! `SamplingAllocator<Jemalloc>` (default 512 KiB interval) thousands of
//! times, so both see the same load, and reports the median of the per-round
//! ratios and the ratio of the fastest bursts.
//!
//! Rows: alloc+free pairs of 16 B, 64 B, 1 KiB and 64 KiB, and a ring of
//! 4096 live blocks whose sizes follow a fixed service-like mix (the same
//! sequence for both): half below 64 B, one block in 128 of 64 KiB.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::Instant;

use ferroprof::{Jemalloc, SamplingAllocator};

#[global_allocator]
static GLOBAL: SamplingAllocator = SamplingAllocator::new(Jemalloc);

static BARE: Jemalloc = Jemalloc;
static WRAPPED: SamplingAllocator = SamplingAllocator::new(Jemalloc);

const ROUNDS: usize = 2000;
const RING: usize = 4096;

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

/// A ring of live blocks: each step frees the oldest, allocates the next size.
struct Ring<'a, A: GlobalAlloc> {
    alloc: &'a A,
    live: Vec<(*mut u8, Layout)>,
    head: usize,
    sizes: &'a [usize],
    next: usize,
}

impl<'a, A: GlobalAlloc> Ring<'a, A> {
    fn new(alloc: &'a A, sizes: &'a [usize]) -> Self {
        let live = sizes[..RING]
            .iter()
            .map(|&s| {
                let l = Layout::from_size_align(s, 8).unwrap();
                // SAFETY: non-zero size; freed in `drop`.
                (unsafe { alloc.alloc(l) }, l)
            })
            .collect();
        Ring {
            alloc,
            live,
            head: 0,
            sizes,
            next: RING,
        }
    }

    /// Nanoseconds per step over `n` steps.
    #[inline(never)]
    fn steps(&mut self, n: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..n {
            let layout = Layout::from_size_align(self.sizes[self.next], 8).unwrap();
            let slot = &mut self.live[self.head];
            // SAFETY: `slot` holds a live block of this allocator with its
            // layout; it is replaced by a new live block.
            unsafe {
                self.alloc.dealloc(slot.0, slot.1);
                let p = self.alloc.alloc(layout);
                assert!(!p.is_null());
                *slot = (black_box(p), layout);
            }
            self.head = (self.head + 1) % RING;
            self.next = (self.next + 1) % self.sizes.len();
        }
        start.elapsed().as_nanos() as f64 / n as f64
    }
}

impl<A: GlobalAlloc> Drop for Ring<'_, A> {
    fn drop(&mut self) {
        for &(p, l) in &self.live {
            // SAFETY: every block in the ring is live with its layout.
            unsafe { self.alloc.dealloc(p, l) };
        }
    }
}

/// The service-like size mix, from a fixed xorshift sequence.
fn size_mix() -> Vec<usize> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    };
    (0..1 << 14)
        .map(|_| {
            let (roll, r) = (next() % 1024, next() as usize);
            match roll {
                0..=7 => 64 << 10,
                8..=519 => 8 + r % 57,
                520..=839 => 65 + r % 192,
                840..=975 => 257 + r % 768,
                _ => 1025 + r % 3072,
            }
        })
        .collect()
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
        let layout = black_box(Layout::from_size_align(size, 8).unwrap());
        let n = if size >= 64 << 10 { 200 } else { 20_000 };
        let (mut bare, mut wrapped) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(pairs(&BARE, layout, n));
            wrapped.push(pairs(&WRAPPED, layout, n));
        }
        report(&format!("pair {size} B"), bare, wrapped);
    }
    let sizes = size_mix();
    let mut bare_ring = Ring::new(&BARE, &sizes);
    let mut wrapped_ring = Ring::new(&WRAPPED, &sizes);
    let (mut bare, mut wrapped) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(bare_ring.steps(16_384));
        wrapped.push(wrapped_ring.steps(16_384));
    }
    report("window 4096 live", bare, wrapped);
    let stats = ferroprof::alloc::stats();
    println!("{} samples taken, {} dropped", stats.samples, stats.dropped);
}
