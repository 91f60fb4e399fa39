//! The heap profile on its own: three allocation sites with known sizes, a
//! heap profile of them written to `profiles/heap.pprof` (any pprof viewer
//! reads it), and per site the estimated in-use and allocated bytes read
//! from that profile, next to the truth.
//!
//! ```sh
//! cargo run --release --example heap_top
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ferroprof::pprof::{Profile, Symbolizer};

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

/// In-use and allocated bytes per site: the samples whose stack has the
/// site's function on it.
fn per_site(profile: &Profile) -> BTreeMap<&'static str, (i64, i64)> {
    let inuse = profile
        .sample_type_index("inuse_space")
        .expect("a heap profile");
    let alloc = profile
        .sample_type_index("alloc_space")
        .expect("a heap profile");
    let function_name = |id: u64| {
        let f = profile.function.iter().find(|f| f.id == id);
        profile.str(f.map_or(0, |f| f.name))
    };
    let mut out: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for sample in &profile.sample {
        let names: Vec<&str> = sample
            .location_id
            .iter()
            .filter_map(|id| profile.location.iter().find(|l| l.id == *id))
            .flat_map(|l| l.line.iter().map(|line| function_name(line.function_id)))
            .collect();
        if let Some(site) = SITES
            .iter()
            .find(|site| names.iter().any(|n| n.contains(*site)))
        {
            let e = out.entry(site).or_default();
            e.0 += sample.value[inuse];
            e.1 += sample.value[alloc];
        }
    }
    out
}

fn main() {
    let interval = 64 * 1024;
    ferroprof::alloc::set_sample_interval(interval);
    let small = cache_of_small_blocks();
    let large = large_buffers();
    let churned = churn_tiny_blocks();
    let snap = ferroprof::alloc::snapshot();
    let profile = ferroprof::heap::build(
        &snap,
        &mut Symbolizer::default(),
        SystemTime::now(),
        Duration::ZERO,
    );
    std::fs::create_dir_all("profiles").expect("creating ./profiles");
    let path = std::path::Path::new("profiles/heap.pprof");
    std::fs::write(path, ferroprof::pprof::encode(&profile)).expect("writing the profile");
    let per_site = per_site(&profile);
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
            mib(ei as u64),
            mib(inuse),
            mib(ea as u64),
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
    println!(
        "wrote {} ({} samples, {} functions); read it with any pprof viewer, \
         e.g. `pprof -top -sample_index=inuse_space {}`",
        path.display(),
        profile.sample.len(),
        profile.function.len(),
        path.display()
    );
    std::hint::black_box((small, large, churned));
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
