//! Uploads reach an agent listening on a Unix socket, chosen with the
//! builder's `uds(path)` or with `DD_TRACE_AGENT_URL=unix:///path`: every
//! batch arrives once, as `POST /profiling/v1/input` with `Host: localhost`
//! and the multipart parts `event` (`event.json`), `cpu.pprof`,
//! `delta-heap.pprof` and `metrics.json`.
//!
//! The agent is `tests/support/fake_agent.rs` on a `UnixListener` in a
//! fresh scratch folder (`tests/support/scratch.rs`, whose root is short
//! enough for a socket's path). One profiler per process: the tests take
//! turns.

mod support;

use std::hint::black_box;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferroprof::{Profiler, ProfilerBuilder, SelfStats};
use support::fake_agent::{Behaviour, FakeAgent, Request};
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
/// Long: an upload in flight when a collection starts stalls until the
/// collection ends (they share the profiler's thread), and in a debug build
/// a collection can take seconds; a shorter timeout could expire meanwhile
/// and turn an accepted upload into a retry.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the profiler runs at least.
const RUN: Duration = Duration::from_secs(1);
/// How long a run may wait, past [`RUN`], for the first upload.
const PATIENCE: Duration = Duration::from_secs(15);

/// Allocates and computes for a moment, so the profiles have something.
fn work(round: u64) {
    let strings: Vec<String> = (0..2_000)
        .map(|i| format!("round {round}, item {i}"))
        .collect();
    black_box(&strings);
    black_box(support::clocks::spin(200_000, round));
}

/// Starts `builder` (over the environment `env`), works for at least
/// [`RUN`] and until one upload succeeded, and stops.
fn run(builder: ProfilerBuilder, env: &dyn Fn(&str) -> Option<String>) -> SelfStats {
    let profiler = builder
        .period(PERIOD)
        .upload_timeout(UPLOAD_TIMEOUT)
        .service("ferroprof-uds-test")
        .log_startup(false)
        .start_with_env(env)
        .expect("the profiler starts");
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < RUN
        || (profiler.stats().upload_success == 0 && started.elapsed() < RUN + PATIENCE)
    {
        work(round);
        round += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let stop_began = Instant::now();
    let stats = profiler.stop();
    eprintln!("stop() took {:?}; {stats:?}", stop_began.elapsed());
    stats
}

/// Every batch arrived once, as an agent upload over the socket.
fn assert_every_batch_arrived(stats: &SelfStats, requests: &[Request]) {
    assert!(stats.batches >= 2, "a full period and the last: {stats:?}");
    assert_eq!(stats.upload_success, stats.batches, "{stats:?}");
    assert_eq!(stats.upload_error, 0, "{stats:?}");
    assert_eq!(stats.upload_retry, 0, "{stats:?}");
    assert_eq!(
        requests.len() as u64,
        stats.batches,
        "one request per batch: {stats:?}"
    );
    for request in requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path(), "/profiling/v1/input");
        assert_eq!(
            request.header("Host"),
            Some("localhost"),
            "{:?}",
            request.headers
        );
        let parts = request.parts();
        let mut names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["cpu.pprof", "delta-heap.pprof", "event", "metrics.json"]
        );
        for part in &parts {
            let filename = if part.name == "event" {
                "event.json"
            } else {
                &part.name
            };
            assert_eq!(
                part.filename.as_deref(),
                Some(filename),
                "part {}",
                part.name
            );
            assert!(!part.body.is_empty(), "part {} is empty", part.name);
        }
    }
}

#[test]
fn uploads_go_through_the_builders_socket() {
    let _turn = one_at_a_time();
    let dir = Scratch::new("uds");
    let agent = FakeAgent::start_unix(dir.path().join("apm.sock"), Behaviour::Accept);
    let stats = run(Profiler::builder().uds(agent.socket_path()), &|_: &str| {
        None
    });
    assert_every_batch_arrived(&stats, &agent.requests());
}

#[test]
fn uploads_go_through_the_socket_of_dd_trace_agent_url() {
    let _turn = one_at_a_time();
    let dir = Scratch::new("uds-env");
    let agent = FakeAgent::start_unix(dir.path().join("apm.sock"), Behaviour::Accept);
    let url = format!("unix://{}", agent.socket_path().display());
    assert!(url.starts_with("unix:///"), "{url}");
    let stats = run(Profiler::builder(), &|name: &str| {
        (name == "DD_TRACE_AGENT_URL").then(|| url.clone())
    });
    assert_every_batch_arrived(&stats, &agent.requests());
}
