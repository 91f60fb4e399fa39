//! Three allocation sites with known totals, profiled at a 64 KiB interval in
//! a build without frame pointers or debug info: Google's pprof reads the
//! heap profile and finds each site's in-use and allocated bytes within five
//! standard deviations of the truth.
//!
//! The statistics: sampling is a Poisson process over bytes with mean `m`,
//! and a sample's weight is `m` per interval crossed, so the estimate of `B`
//! bytes has variance `m × B` (each allocation of `s` bytes contributes
//! `m² × s/m`). At 64 KiB, 64 MiB is estimated within ±2 MiB (one standard
//! deviation, 3 %), 32 MiB within ±1.4 MiB and 1 GiB within ±8 MiB.

mod support;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use ferroprof::pprof::{self, Symbolizer};
use support::pprof_tools;
use support::scratch::Scratch;
use support::stats::within_5_sigma;

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

const INTERVAL: u64 = 64 << 10;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

#[inline(never)]
fn keep_64mib_in_1kib_blocks(keep: &mut Vec<Vec<u8>>) {
    for _ in 0..(64 * MIB / KIB) {
        keep.push(black_box(vec![1u8; 1024]));
    }
}

#[inline(never)]
fn keep_32mib_in_128kib_blocks(keep: &mut Vec<Vec<u8>>) {
    for _ in 0..(32 * MIB / (128 * KIB)) {
        keep.push(black_box(vec![2u8; 128 << 10]));
    }
}

#[inline(never)]
fn churn_1gib_in_64b_blocks() {
    for i in 0..(1 << 30) / 64 {
        drop(black_box(Box::new([i as u8; 64])));
    }
}

#[test]
fn heap_profile_names_allocation_sites() {
    ferroprof::alloc::set_sample_interval(INTERVAL);
    // Each site runs on a thread started after the interval is set, so its
    // countdowns are drawn with the new mean from the start.
    let (kept_1k, kept_128k) = std::thread::spawn(|| {
        // Holders allocated here, not in the sites.
        let mut a = Vec::with_capacity((64 * MIB / KIB) as usize);
        let mut b = Vec::with_capacity(256);
        keep_64mib_in_1kib_blocks(&mut a);
        keep_32mib_in_128kib_blocks(&mut b);
        churn_1gib_in_64b_blocks();
        (a, b)
    })
    .join()
    .unwrap();

    let snapshot = ferroprof::alloc::snapshot();
    let mut symbolizer = Symbolizer::default();
    let profile = ferroprof::heap::build(
        &snapshot,
        &mut symbolizer,
        SystemTime::now(),
        Duration::from_secs(1),
    );
    let scratch = Scratch::new("heap-sites");
    let path = scratch.path().join("heap_sites.pprof");
    std::fs::write(&path, pprof::encode(&profile))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));

    let report = pprof_tools::check(&path);
    assert_eq!(
        report.sample_types,
        [
            "alloc_objects/count",
            "alloc_space/bytes",
            "inuse_objects/count",
            "inuse_space/bytes"
        ]
    );
    assert_eq!(report.period, INTERVAL as i64);

    let cum = |f: &str, ty: &str| report.cum_of(f, ty);
    within_5_sigma(
        "in-use bytes of 1 KiB blocks",
        cum("keep_64mib_in_1kib_blocks", "inuse_space"),
        64 * MIB,
        INTERVAL,
    );
    within_5_sigma(
        "allocated bytes of 1 KiB blocks",
        cum("keep_64mib_in_1kib_blocks", "alloc_space"),
        64 * MIB,
        INTERVAL,
    );
    within_5_sigma(
        "in-use bytes of 128 KiB blocks",
        cum("keep_32mib_in_128kib_blocks", "inuse_space"),
        32 * MIB,
        INTERVAL,
    );
    within_5_sigma(
        "allocated bytes of 128 KiB blocks",
        cum("keep_32mib_in_128kib_blocks", "alloc_space"),
        32 * MIB,
        INTERVAL,
    );
    within_5_sigma(
        "allocated bytes of 64 B blocks",
        cum("churn_1gib_in_64b_blocks", "alloc_space"),
        1 << 30,
        INTERVAL,
    );
    // Objects: the same estimate divided by the block size.
    let objects = cum("keep_64mib_in_1kib_blocks", "inuse_objects");
    within_5_sigma(
        "in-use 1 KiB objects (as bytes)",
        objects * 1024,
        64 * MIB,
        INTERVAL,
    );
    let objects = cum("churn_1gib_in_64b_blocks", "alloc_objects");
    within_5_sigma(
        "allocated 64 B objects (as bytes)",
        objects * 64,
        1 << 30,
        INTERVAL,
    );
    // Everything churned was freed: at most what the holders' last few
    // blocks could amount to (none of it is held).
    assert!(
        cum("churn_1gib_in_64b_blocks", "inuse_space") <= 8 * INTERVAL as i64,
        "{report:#?}"
    );

    // The allocator's frames are cut: no leaf is ferroprof's or a shim.
    for function in report.flat.keys() {
        assert!(
            !function.contains("ferroprof_alloc") && !function.starts_with("__r"),
            "leaf frame {function:?} is the allocator's"
        );
    }
    // The executable's mapping carries its build id for re-symbolization.
    let exe = std::env::current_exe().unwrap();
    assert!(
        report
            .mappings
            .iter()
            .any(|m| m.file == exe.to_str().unwrap() && !m.build_id.is_empty()),
        "{:?}",
        report.mappings
    );
    // Google's own pprof tool reads it too.
    let top = pprof_tools::pprof_top(&path, "inuse_space");
    assert!(top.contains("keep_64mib_in_1kib_blocks"), "{top}");

    drop((kept_1k, kept_128k));
}
