//! Uploads survive an agent that misbehaves: refuses connections, answers
//! 500 or 404, never answers, answers after 30 s, or resets the connection.
//! Whatever the agent does, `stop()` returns within about the upload
//! timeout, every batch is in the output folder (the four files, none
//! empty), and every batch is accounted for: uploaded, given up on, or
//! dropped from a full queue (`upload_success + upload_error + queue_full
//! == batches`). Transport errors and 5xx are retried once; a 404 is final.
//! A full queue drops batches and says so; a well-behaved agent gets every
//! batch, once, as a multipart POST.
//!
//! The agent is `tests/support/fake_agent.rs`. Only one profiler may run
//! per process, so the tests here take turns (`LOCK`). Nothing asserts a
//! batch count that depends on timing: only identities between counters,
//! and generous time bounds.

mod support;

use std::collections::HashMap;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferroprof::{ProfileType, Profiler, ProfilerBuilder, SelfStats, StatsdClient};
use support::fake_agent::{Behaviour, FakeAgent};
use support::scratch::Scratch;

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

/// One profiler per process: the tests take turns.
static LOCK: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const PERIOD: Duration = Duration::from_millis(300);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the profiler runs at least.
const RUN: Duration = Duration::from_millis(1200);
/// How long a run may wait, past [`RUN`], for what it waits for.
const PATIENCE: Duration = Duration::from_secs(60);
/// What `stop()` may take beyond the upload timeout after the last
/// collection: writing and queueing the batch, stopping the CPU profiler,
/// ending the thread, a busy machine.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// The files of each batch folder.
const BATCH_FILES: [&str; 4] = [
    "cpu.pprof",
    "delta-heap.pprof",
    "event.json",
    "metrics.json",
];

/// The self metrics sent to the statsd client, and when the last
/// collection ended.
#[derive(Debug, Default)]
struct Recorded {
    counts: HashMap<String, i64>,
    /// When `ferroprof.collect_time` was last reported: the end of the
    /// latest collection.
    last_collect_end: Option<Instant>,
}

/// A [`StatsdClient`] that keeps what it is told.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Recorded>>);

impl Recorder {
    fn take(&self) -> Recorded {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl StatsdClient for Recorder {
    fn count(&self, name: &str, value: i64, _tags: &[&str]) {
        let mut recorded = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *recorded.counts.entry(name.to_owned()).or_default() += value;
    }

    fn timing(&self, name: &str, _value: Duration, _tags: &[&str]) {
        if name == "ferroprof.collect_time" {
            let mut recorded = self.0.lock().unwrap_or_else(|e| e.into_inner());
            recorded.last_collect_end = Some(Instant::now());
        }
    }
}

/// What a run came to.
struct Run {
    /// `stop()`'s counters.
    stats: SelfStats,
    /// How long `stop()` took, all told.
    stop_took: Duration,
    /// How long `stop()` took after the last collection ended: the time
    /// given to the uploads. (`stop()` first waits for a collection under
    /// way, then collects the last period; in a debug build on a busy
    /// machine each collection can take seconds, mostly symbolization.)
    after_collect: Duration,
    /// The self metrics the statsd client got.
    statsd: HashMap<String, i64>,
}

/// How a run ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Stop as soon as the run's condition holds.
    AtOnce,
    /// Then stop just after an upload's outcome is counted, when no upload
    /// is in flight: the last collection then cannot stall one (see the
    /// 404 test).
    BetweenUploads,
}

/// Allocates and computes for a moment, so the profiles have something.
fn work(round: u64) {
    let strings: Vec<String> = (0..2_000)
        .map(|i| format!("round {round}, item {i}"))
        .collect();
    black_box(&strings);
    black_box(support::clocks::spin(200_000, round));
}

/// Starts `builder` (with a statsd recorder, no startup line, and an empty
/// environment), works for at least `run_for` and until `until(stats)`
/// holds (at most [`PATIENCE`] more), ends as `ending` says, and times
/// `stop()`.
fn run(
    builder: ProfilerBuilder,
    run_for: Duration,
    until: impl Fn(&SelfStats) -> bool,
    ending: Ending,
) -> Run {
    let recorder = Recorder::default();
    let profiler = builder
        .statsd(recorder.clone())
        .service("ferroprof-misbehaving-agent-test")
        .log_startup(false)
        .start_with_env(&|_| None)
        .expect("the profiler starts");
    let started = Instant::now();
    let give_up = run_for + PATIENCE;
    let mut round = 0;
    while started.elapsed() < run_for || (!until(&profiler.stats()) && started.elapsed() < give_up)
    {
        work(round);
        round += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    if ending == Ending::BetweenUploads {
        let outcomes = |s: SelfStats| s.upload_success + s.upload_error;
        let before = outcomes(profiler.stats());
        while outcomes(profiler.stats()) == before && started.elapsed() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let stop_began = Instant::now();
    let stats = profiler.stop();
    let stopped = Instant::now();
    let recorded = recorder.take();
    let last_collect_end = recorded
        .last_collect_end
        .expect("stop() collects the last period");
    let run = Run {
        stats,
        stop_took: stopped - stop_began,
        after_collect: stopped.saturating_duration_since(last_collect_end.max(stop_began)),
        statsd: recorded.counts,
    };
    eprintln!(
        "stop() took {:?} ({:?} after the last collection); {stats:?}",
        run.stop_took, run.after_collect
    );
    run
}

/// A builder for the agent at `agent_addr` writing to `out`.
fn builder(
    agent_addr: &str,
    upload_timeout: Duration,
    period: Duration,
    out: &Path,
) -> ProfilerBuilder {
    Profiler::builder()
        .agent_addr(agent_addr)
        .period(period)
        .upload_timeout(upload_timeout)
        .output_dir(out)
}

/// The output folder has exactly one folder per batch, each with `files`
/// (sorted), none empty, and nothing else.
fn assert_every_batch_written(out: &Path, stats: &SelfStats, files: &[&str]) {
    let mut folders: Vec<PathBuf> = fs::read_dir(out)
        .unwrap_or_else(|e| panic!("reading {}: {e}", out.display()))
        .map(|entry| entry.expect("a folder entry").path())
        .collect();
    folders.sort();
    assert_eq!(
        folders.len() as u64,
        stats.batches,
        "one folder per batch in {}: {folders:?}; {stats:?}",
        out.display()
    );
    for folder in &folders {
        assert!(folder.is_dir(), "{} is not a folder", folder.display());
        let mut names: Vec<String> = fs::read_dir(folder)
            .unwrap_or_else(|e| panic!("reading {}: {e}", folder.display()))
            .map(|entry| {
                entry
                    .expect("a folder entry")
                    .file_name()
                    .into_string()
                    .expect("a UTF-8 file name")
            })
            .collect();
        names.sort();
        assert_eq!(names, files, "in {}", folder.display());
        for name in files {
            let file = folder.join(name);
            let len = fs::metadata(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                .len();
            assert!(len > 0, "{} is empty", file.display());
        }
    }
}

/// Every batch was uploaded, given up on, or dropped from the queue, and
/// the statsd client was told the same as `stop()` says.
fn assert_accounted(run: &Run) {
    let stats = &run.stats;
    assert!(
        stats.batches >= 1,
        "the last period is always a batch: {stats:?}"
    );
    assert_eq!(
        stats.upload_success + stats.upload_error + stats.queue_full,
        stats.batches,
        "every batch is accounted for: {stats:?}"
    );
    assert_eq!(stats.collect_error, 0, "{stats:?}");
    for (name, value) in [
        ("ferroprof.upload_success", stats.upload_success),
        ("ferroprof.upload_error", stats.upload_error),
        ("ferroprof.upload_retry", stats.upload_retry),
        ("ferroprof.queue_full", stats.queue_full),
        (
            "ferroprof.uploaded_profile_bytes",
            stats.uploaded_profile_bytes,
        ),
    ] {
        let sent = run.statsd.get(name).copied().unwrap_or(0);
        assert_eq!(sent, value as i64, "statsd {name} vs {stats:?}");
    }
}

/// `stop()` gave the uploads at most the upload timeout (plus slack) after
/// collecting the last period.
fn assert_stop_bounded(run: &Run, upload_timeout: Duration) {
    assert!(
        run.after_collect < upload_timeout + STOP_SLACK,
        "stop() took {:?} after the last collection (of {:?} in all), more than the \
         upload timeout {upload_timeout:?} + {STOP_SLACK:?}",
        run.after_collect,
        run.stop_took
    );
}

/// A standard run against a misbehaving agent and the checks all of them
/// share; `until` says when the run has seen enough.
fn misbehaving(
    name: &str,
    agent: &FakeAgent,
    until: impl Fn(&SelfStats) -> bool,
    ending: Ending,
) -> Run {
    let out = Scratch::new(name);
    let run = run(
        builder(&agent.agent_addr(), UPLOAD_TIMEOUT, PERIOD, out.path()),
        RUN,
        until,
        ending,
    );
    assert_stop_bounded(&run, UPLOAD_TIMEOUT);
    assert_every_batch_written(out.path(), &run.stats, &BATCH_FILES);
    assert_accounted(&run);
    assert_eq!(run.stats.upload_success, 0, "{:?}", run.stats);
    assert_eq!(run.stats.uploaded_profile_bytes, 0, "{:?}", run.stats);
    run
}

#[test]
fn a_refused_connection_is_retried_once_then_given_up() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::Refused);
    let run = misbehaving("refused", &agent, |s| s.upload_retry >= 1, Ending::AtOnce);
    assert!(run.stats.upload_retry >= 1, "{:?}", run.stats);
    assert!(run.stats.upload_error >= 1, "{:?}", run.stats);
}

#[test]
fn a_500_is_retried_once_then_given_up() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::Status(500));
    let run = misbehaving(
        "status-500",
        &agent,
        |s| s.upload_retry >= 1,
        Ending::AtOnce,
    );
    assert!(run.stats.upload_retry >= 1, "{:?}", run.stats);
    assert!(run.stats.upload_error >= 1, "{:?}", run.stats);
    let requests = agent.requests();
    assert!(
        requests.len() as u64 >= run.stats.upload_retry,
        "each retry follows a request the agent answered 500: {} requests; {:?}",
        requests.len(),
        run.stats
    );
}

#[test]
fn a_404_is_final_and_never_retried() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::Status(404));
    // Stopped between uploads: while the profiler collects, its uploads
    // stall, and a 404 that arrives meanwhile can be taken for a timeout
    // (and retried) once the collection outlasts the upload timeout.
    let run = misbehaving(
        "status-404",
        &agent,
        |s| s.upload_error >= 1,
        Ending::BetweenUploads,
    );
    assert_eq!(run.stats.upload_retry, 0, "{:?}", run.stats);
    assert!(!agent.requests().is_empty(), "the agent got the uploads");
    assert_eq!(
        run.stats.upload_error, run.stats.batches,
        "every batch ended in an upload error: {:?}",
        run.stats
    );
    assert_eq!(
        agent.requests().len() as u64,
        run.stats.batches,
        "one request per batch, none retried: {:?}",
        run.stats
    );
}

#[test]
fn an_agent_that_never_answers_does_not_hold_stop() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::NeverAnswer);
    let run = misbehaving("never-answers", &agent, |s| s.batches >= 2, Ending::AtOnce);
    assert!(
        run.stop_took < Duration::from_secs(30),
        "stop() took {:?}",
        run.stop_took
    );
    assert!(run.stats.upload_error >= 1, "{:?}", run.stats);
    assert!(
        !agent.requests().is_empty(),
        "the agent read at least one upload"
    );
}

#[test]
fn an_agent_answering_after_30_s_does_not_hold_stop() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::AnswerAfter(Duration::from_secs(30)));
    let run = misbehaving(
        "answers-after-30s",
        &agent,
        |s| s.batches >= 2,
        Ending::AtOnce,
    );
    assert!(
        run.stop_took < Duration::from_secs(30),
        "stop() took {:?}",
        run.stop_took
    );
    assert!(run.stats.upload_error >= 1, "{:?}", run.stats);
    assert!(
        !agent.requests().is_empty(),
        "the agent read at least one upload"
    );
}

#[test]
fn a_reset_connection_is_retried_once_then_given_up() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::Reset);
    let run = misbehaving("reset", &agent, |s| s.upload_retry >= 1, Ending::AtOnce);
    assert!(run.stats.upload_retry >= 1, "{:?}", run.stats);
    assert!(run.stats.upload_error >= 1, "{:?}", run.stats);
    assert!(
        agent.connections() as u64 >= run.stats.upload_retry,
        "each retry follows a connection the agent reset: {} connections; {:?}",
        agent.connections(),
        run.stats
    );
}

#[test]
fn a_full_queue_drops_the_oldest_batch() {
    let _turn = one_at_a_time();
    // The first upload hangs for the whole run (20 s per attempt), so the
    // queue (5 batches) fills. Metrics only: a collection then takes
    // milliseconds even in a debug build, so 100 ms periods really are
    // 100 ms apart (with CPU and heap profiles, symbolizing in a debug
    // build takes seconds a period).
    let upload_timeout = Duration::from_secs(20);
    let agent = FakeAgent::start(Behaviour::NeverAnswer);
    let out = Scratch::new("full-queue");
    let run = run(
        builder(
            &agent.agent_addr(),
            upload_timeout,
            Duration::from_millis(100),
            out.path(),
        )
        .profile_types([ProfileType::Metrics]),
        Duration::from_millis(1500),
        |s| s.queue_full >= 1,
        Ending::AtOnce,
    );
    // At stop the hanging upload may go on until the stop deadline.
    assert_stop_bounded(&run, upload_timeout);
    assert!(
        run.stop_took < upload_timeout + STOP_SLACK,
        "stop() took {:?}",
        run.stop_took
    );
    assert_every_batch_written(out.path(), &run.stats, &["event.json", "metrics.json"]);
    assert_accounted(&run);
    assert!(run.stats.queue_full >= 1, "{:?}", run.stats);
    assert_eq!(run.stats.upload_success, 0, "{:?}", run.stats);
}

#[test]
fn a_working_agent_gets_every_batch_once() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::Accept);
    let out = Scratch::new("accept");
    // Uploads run on their own thread, so a collection (seconds, in a
    // debug build) never stalls one past its timeout.
    let run = run(
        builder(&agent.agent_addr(), UPLOAD_TIMEOUT, PERIOD, out.path()),
        RUN,
        |s| s.upload_success >= 1,
        Ending::AtOnce,
    );
    let stats = run.stats;
    assert!(
        run.after_collect < STOP_SLACK,
        "stop() took {:?} after the last collection, with an agent that answers at once",
        run.after_collect
    );
    assert_every_batch_written(out.path(), &stats, &BATCH_FILES);
    assert_accounted(&run);
    assert_eq!(stats.upload_success, stats.batches, "{stats:?}");
    assert_eq!(stats.upload_error, 0, "{stats:?}");
    assert_eq!(stats.upload_retry, 0, "{stats:?}");
    assert_eq!(stats.queue_full, 0, "{stats:?}");

    // The uploaded bytes are the profile files (not event.json) written.
    let written: u64 = fs::read_dir(out.path())
        .expect("the output folder")
        .flat_map(|folder| fs::read_dir(folder.expect("a folder").path()).expect("a batch"))
        .map(|file| file.expect("a file"))
        .filter(|file| file.file_name() != "event.json")
        .map(|file| file.metadata().expect("a file's metadata").len())
        .sum();
    assert_eq!(stats.uploaded_profile_bytes, written, "{stats:?}");

    let requests = agent.requests();
    assert_eq!(
        requests.len() as u64,
        stats.batches,
        "one request per batch"
    );
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path(), "/profiling/v1/input");
        let content_type = request.header("Content-Type").unwrap_or_default();
        assert!(
            content_type.starts_with("multipart/form-data; boundary="),
            "Content-Type: {content_type:?}"
        );
        let mut names: Vec<String> = request.parts().into_iter().map(|p| p.name).collect();
        names.sort();
        assert_eq!(
            names,
            ["cpu.pprof", "delta-heap.pprof", "event", "metrics.json"]
        );
    }
}

/// Regression: uploads shared the collecting thread, so an answer that
/// arrived during a collection was read only after reqwest's timeout had
/// expired; the batch counted as failed, was retried, and reached the
/// agent twice.
#[test]
fn an_answer_arriving_during_a_collection_counts_once() {
    let _turn = one_at_a_time();
    let agent = FakeAgent::start(Behaviour::AnswerAfter(Duration::from_millis(600)));
    let out = Scratch::new("answer-during-collection");
    let run = run(
        builder(&agent.agent_addr(), UPLOAD_TIMEOUT, PERIOD, out.path()),
        RUN,
        |s| s.upload_success >= 2,
        Ending::BetweenUploads,
    );
    let stats = run.stats;
    assert_eq!(stats.upload_retry, 0, "{stats:?}");
    assert_accounted(&run);
    let mut seqs: Vec<String> = agent
        .requests()
        .iter()
        .map(|r| {
            let parts = r.parts();
            let event = parts
                .iter()
                .find(|p| p.name == "event")
                .expect("an event part");
            let event: serde_json::Value = serde_json::from_slice(&event.body).expect("JSON");
            let tags = event["tags_profiler"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            tags.rsplit(',').next().unwrap_or_default().to_owned()
        })
        .collect();
    let sent = seqs.len();
    seqs.sort();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        sent,
        "a batch reached the agent twice: {seqs:?}"
    );
}
