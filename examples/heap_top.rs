//! The sampling allocator on its own: three allocation sites with known
//! sizes, then the estimated in-use and allocated bytes per site, next to the
//! truth, from one `ferroprof::alloc::snapshot()`.
//!
//! ```sh
//! cargo run --release --example heap_top
//! ```
//!
//! Symbols are resolved here with the `backtrace` crate only to make the
//! output readable; ferroprof's own symbolizer arrives with the pprof export.

use std::collections::BTreeMap;

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

/// Keeps 64 MiB in 1 KiB blocks.
#[inline(never)]
fn cache_of_small_blocks() -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(64 * 1024);
    for i in 0..64 * 1024 {
        v.push(vec![i as u8; 1024]);
    }
    std::hint::black_box(v)
}

/// Keeps 32 MiB in 128 KiB blocks.
#[inline(never)]
fn large_buffers() -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(256);
    for i in 0..256 {
        v.push(vec![i as u8; 128 * 1024]);
    }
    std::hint::black_box(v)
}

/// Allocates and frees 1 GiB in 64 B blocks.
#[inline(never)]
fn churn_tiny_blocks() -> u64 {
    let mut sum = 0u64;
    for i in 0..(1u64 << 30) / 64 {
        let b = std::hint::black_box(vec![i as u8; 64]);
        sum += b[0] as u64;
    }
    sum
}

const SITES: [&str; 3] = [
    "cache_of_small_blocks",
    "large_buffers",
    "churn_tiny_blocks",
];

/// The first of our sites on the stack, if any.
fn site_of(frames: &[u64]) -> Option<&'static str> {
    let mut found = None;
    for &f in frames {
        backtrace::resolve((f - 1) as *mut std::ffi::c_void, |s| {
            if found.is_none() {
                let name = s.name().map(|n| n.to_string()).unwrap_or_default();
                found = SITES.iter().find(|site| name.contains(*site)).copied();
            }
        });
        if found.is_some() {
            break;
        }
    }
    found
}

fn main() {
    let interval = 64 * 1024;
    ferroprof::alloc::set_sample_interval(interval);
    let small = cache_of_small_blocks();
    let large = large_buffers();
    let churned = churn_tiny_blocks();
    let snap = ferroprof::alloc::snapshot();

    let mut per_site: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for s in &snap.stacks {
        if let Some(site) = site_of(&s.frames) {
            let e = per_site.entry(site).or_default();
            e.0 += s.inuse_bytes;
            e.1 += s.alloc_bytes;
        }
    }
    // Each site also keeps its outer vector of 24-byte `Vec` headers.
    let small_true = (64u64 << 20) + 64 * 1024 * 24;
    let large_true = (32u64 << 20) + 256 * 24;
    let truth = [
        ("cache_of_small_blocks", small_true, small_true),
        ("large_buffers", large_true, large_true),
        ("churn_tiny_blocks", 0, 1 << 30),
    ];
    println!(
        "sampling interval {interval} B, {} samples taken",
        snap.stats.samples
    );
    println!(
        "{:<24} {:>14} {:>14} {:>14} {:>14}",
        "site", "in-use est.", "in-use true", "alloc est.", "alloc true"
    );
    for (site, inuse, alloc) in truth {
        let (ei, ea) = per_site.get(site).copied().unwrap_or_default();
        println!(
            "{site:<24} {:>11.1} MiB {:>11.1} MiB {:>11.1} MiB {:>11.1} MiB",
            mib(ei),
            mib(inuse),
            mib(ea),
            mib(alloc)
        );
    }
    let st = &snap.stats;
    println!(
        "live records {}/{}, stacks {}/{}, dropped {}, tables {:.1} MiB of address space",
        st.live_blocks,
        st.live_capacity,
        st.stacks,
        st.stack_capacity,
        st.dropped,
        mib(st.table_bytes)
    );
    std::hint::black_box((small, large, churned));
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
