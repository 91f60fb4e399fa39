//! With an output folder and no agent, every batch lands in
//! `<dir>/<end, UTC, 20060102T150405Z>/`: the profiles chosen (and only
//! them), under the names `delta_profiles` chooses, with an `event.json`
//! listing them, each read by Google's pprof. A CPU duration shorter than
//! the period still gives one CPU profile per period.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ferroprof::{ProfileType, Profiler};
use support::scratch::Scratch;

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

/// One profiler per process at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The output folder in `scratch`, not made yet: the profiler makes it.
fn output_folder(scratch: &Scratch) -> PathBuf {
    scratch.path().join("out")
}

/// An agent address nobody listens on.
fn nobody() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Runs a profiler built by `build`, busy, until it has collected
/// `batches` batches (however long the machine takes), then stops it;
/// returns the batch folders, oldest first, and the final counters.
fn run_with(
    dir: &Path,
    batches: u64,
    build: impl FnOnce(ferroprof::ProfilerBuilder) -> ferroprof::ProfilerBuilder,
) -> (Vec<PathBuf>, ferroprof::SelfStats) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let builder = Profiler::builder()
        .agent_addr(nobody())
        .output_dir(dir)
        .upload_timeout(Duration::from_millis(500))
        .log_startup(false);
    let profiler = build(builder).start_with_env(&|_| None).expect("starts");
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    let mut x = 1;
    while profiler.stats().batches < batches {
        assert!(
            std::time::Instant::now() < give_up,
            "{:?}",
            profiler.stats()
        );
        x = support::clocks::spin(100_000, x);
    }
    std::hint::black_box(x);
    let kept: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 10_000]).collect();
    std::hint::black_box(&kept);
    let stats = profiler.stop();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    folders.sort();
    (folders, stats)
}

fn files_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn attachments(folder: &Path) -> Vec<String> {
    let event: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("event.json")).unwrap()).unwrap();
    serde_json::from_value(event["attachments"].clone()).unwrap()
}

#[test]
fn every_batch_is_written_with_all_profiles() {
    let scratch = Scratch::new("all");
    let dir = output_folder(&scratch);
    let (folders, stats) = run_with(&dir, 2, |b| b.period(Duration::from_millis(500)));
    assert_eq!(folders.len() as u64, stats.batches, "{folders:?}");
    assert!(stats.batches >= 3, "2 full periods and the last: {stats:?}");
    assert_eq!(stats.upload_success, 0);
    assert_eq!(
        stats.upload_error + stats.queue_full,
        stats.batches,
        "{stats:?}"
    );
    for folder in &folders {
        let name = folder.file_name().unwrap().to_str().unwrap();
        // 20261126T024719Z, perhaps with .1 when two batches end in one second.
        let stamp = name.split('.').next().unwrap();
        assert!(
            stamp.len() == 16 && &stamp[8..9] == "T" && stamp.ends_with('Z'),
            "{name}"
        );
        assert_eq!(
            files_in(folder),
            [
                "cpu.pprof",
                "delta-heap.pprof",
                "event.json",
                "metrics.json"
            ]
        );
        assert_eq!(
            attachments(folder),
            ["cpu.pprof", "delta-heap.pprof", "metrics.json"]
        );
        for profile in ["cpu.pprof", "delta-heap.pprof"] {
            support::pprof_tools::check(&folder.join(profile));
        }
    }
}

#[test]
fn only_the_chosen_profiles_and_cumulative_names_without_deltas() {
    let heap_only = Scratch::new("heap-only");
    let dir = output_folder(&heap_only);
    let (folders, _) = run_with(&dir, 1, |b| {
        b.period(Duration::from_millis(300))
            .profile_types([ProfileType::Heap])
            .delta_profiles(false)
    });
    assert!(!folders.is_empty());
    for folder in &folders {
        assert_eq!(
            files_in(folder),
            ["event.json", "heap.pprof", "metrics.json"]
        );
        let report = support::pprof_tools::check(&folder.join("heap.pprof"));
        assert_eq!(report.sample_types.len(), 4);
    }

    let cpu_only = Scratch::new("cpu-only");
    let dir = output_folder(&cpu_only);
    let (folders, _) = run_with(&dir, 1, |b| {
        b.period(Duration::from_millis(300))
            .profile_types([ProfileType::Cpu, ProfileType::Metrics])
    });
    assert!(!folders.is_empty());
    for folder in &folders {
        assert_eq!(
            files_in(folder),
            ["cpu.pprof", "event.json", "metrics.json"]
        );
    }
}

#[test]
fn a_cpu_duration_shorter_than_the_period_samples_part_of_each_period() {
    let scratch = Scratch::new("cpu-duration");
    let dir = output_folder(&scratch);
    let (folders, stats) = run_with(&dir, 2, |b| {
        b.period(Duration::from_millis(700))
            .cpu_duration(Duration::from_millis(200))
            .profile_types([ProfileType::Cpu])
    });
    assert_eq!(folders.len() as u64, stats.batches);
    assert!(stats.batches >= 3, "{stats:?}");
    // Each full period's CPU profile covers at most its 200 ms window of
    // this one busy thread (plus the profiler's own work).
    for folder in &folders[..folders.len() - 1] {
        let report = support::pprof_tools::check(&folder.join("cpu.pprof"));
        let cpu_ns = report.total("cpu/nanoseconds");
        assert!(cpu_ns > 0, "{folder:?}: no CPU samples");
        assert!(
            cpu_ns <= 450_000_000,
            "{folder:?}: {cpu_ns} ns in a 200 ms window"
        );
    }
}

#[test]
fn with_uploads_off_only_the_folder_gets_batches() {
    let scratch = Scratch::new("no-upload");
    let dir = output_folder(&scratch);
    let (folders, stats) = run_with(&dir, 1, |b| {
        b.period(Duration::from_millis(300)).upload(false)
    });
    assert_eq!(folders.len() as u64, stats.batches);
    assert!(stats.batches >= 2, "{stats:?}");
    // Nothing was tried, so nothing failed or waited.
    assert_eq!(
        (
            stats.upload_success,
            stats.upload_error,
            stats.upload_retry,
            stats.queue_full
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
}
