//! The profiler's uploads, as Datadog's own APM test agent receives them:
//! one multipart request per period with the parts, file names and content
//! types of `docs/datadog-intake.md`, an `event.json` with every field, all
//! the tags with the configured values, `profile_seq` counting from 0, and
//! profiles that Google's pprof reads. The self metrics reach the user's
//! statsd client.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroprof::{Profiler, StatsdClient};
use support::scratch::Scratch;
use support::test_agent::{Request, TestAgent};

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

/// A statsd client that remembers what it was told.
#[derive(Clone, Default)]
struct Recorder {
    counts: Arc<Mutex<HashMap<String, i64>>>,
    timings: Arc<Mutex<HashMap<String, usize>>>,
}

impl StatsdClient for Recorder {
    fn count(&self, name: &str, value: i64, _tags: &[&str]) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default() += value;
    }
    fn timing(&self, name: &str, _value: Duration, _tags: &[&str]) {
        *self
            .timings
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default() += 1;
    }
}

/// Keeps a thread busy computing and allocating for `d`.
#[inline(never)]
fn work(d: Duration) -> usize {
    let until = Instant::now() + d;
    let mut kept = Vec::new();
    let mut n = 0usize;
    while Instant::now() < until {
        let v: Vec<u64> = (0..2048).map(|i| i * i).collect();
        n = n.wrapping_add(v.iter().sum::<u64>() as usize);
        if kept.len() < 512 {
            kept.push(v);
        }
    }
    n + kept.len()
}

#[test]
fn each_period_arrives_as_one_complete_upload() {
    let agent = TestAgent::start();
    let statsd = Recorder::default();
    let env: HashMap<&str, &str> = [("DD_TAGS", "region:eu,zone:b")].into();
    let profiler = Profiler::builder()
        .agent_addr(format!("127.0.0.1:{}", agent.port()))
        .service("upload-test")
        .env("test-env")
        .version("1.2.3")
        .hostname("test-host")
        .tags(["team:payments"])
        .period(Duration::from_millis(1000))
        .statsd(statsd.clone())
        .log_startup(false)
        .start_with_env(&|k| env.get(k).map(|v| v.to_string()))
        .expect("the profiler starts");
    std::hint::black_box(work(Duration::from_millis(2500)));
    let stats = profiler.stop();

    assert!(stats.batches >= 2, "{stats:?}");
    assert_eq!(stats.upload_success, stats.batches, "{stats:?}");
    assert_eq!((stats.upload_error, stats.queue_full), (0, 0), "{stats:?}");
    let requests = agent.wait_for_requests(stats.batches as usize, Duration::from_secs(10));
    assert_eq!(
        requests.len() as u64,
        stats.batches,
        "one request per batch"
    );

    // In `profile_seq` order: at `stop()` the last, partial period goes out
    // first when earlier batches are still queued (a slow machine).
    let mut events: Vec<serde_json::Value> = requests.iter().map(check_request).collect();
    events.sort_by_key(|event| {
        tags_of(event)
            .get("profile_seq")
            .cloned()
            .unwrap_or_default()
            .parse::<u64>()
            .ok()
    });
    let mut runtime_ids = Vec::new();
    let mut previous_end = None;
    for (seq, event) in events.iter().enumerate() {
        let tags = tags_of(event);
        for (key, value) in [
            ("service", "upload-test"),
            ("env", "test-env"),
            ("version", "1.2.3"),
            ("host", "test-host"),
            ("team", "payments"),
            ("region", "eu"),
            ("zone", "b"),
            ("profiler_version", env!("CARGO_PKG_VERSION")),
            ("language", "native"),
            ("runtime", "rust"),
            ("runtime_os", "linux"),
            ("runtime_arch", std::env::consts::ARCH),
        ] {
            assert_eq!(
                tags.get(key).map(String::as_str),
                Some(value),
                "tag {key}: {tags:?}"
            );
        }
        assert_eq!(tags["profile_seq"], seq.to_string());
        assert_eq!(tags["process_id"], std::process::id().to_string());
        let rustc = &tags["runtime_version"];
        assert!(
            rustc.split('.').count() >= 3
                && rustc
                    .split('.')
                    .all(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit())),
            "runtime_version {rustc}"
        );
        let id = &tags["runtime-id"];
        assert!(
            id.len() == 36 && id.as_bytes()[14] == b'4',
            "runtime-id {id}"
        );
        runtime_ids.push(id.clone());

        // Periods follow one another without gaps.
        let start = event["start"].as_str().unwrap().to_owned();
        let end = event["end"].as_str().unwrap().to_owned();
        assert!(start < end, "{start} < {end}");
        if let Some(previous) = previous_end.replace(end) {
            assert_eq!(start, previous, "period {seq} starts where the last ended");
        }
    }
    runtime_ids.dedup();
    assert_eq!(runtime_ids.len(), 1, "one runtime-id per process");

    // The self metrics reached the statsd client.
    let counts = statsd.counts.lock().unwrap().clone();
    assert_eq!(
        counts.get("ferroprof.upload_success"),
        Some(&(stats.batches as i64)),
        "{counts:?}"
    );
    assert_eq!(
        counts.get("ferroprof.uploaded_profile_bytes"),
        Some(&(stats.uploaded_profile_bytes as i64)),
        "{counts:?}"
    );
    assert!(!counts.contains_key("ferroprof.upload_error"), "{counts:?}");
    let timings = statsd.timings.lock().unwrap().clone();
    assert_eq!(
        timings.get("ferroprof.collect_time"),
        Some(&(stats.batches as usize)),
        "{timings:?}"
    );
    assert_eq!(
        timings.get("ferroprof.delta_time"),
        Some(&(stats.batches as usize)),
        "{timings:?}"
    );
}

/// Checks one request's headers and parts; returns its `event.json`.
fn check_request(request: &Request) -> serde_json::Value {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path(), "/profiling/v1/input");
    let content_type = request.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{content_type}"
    );
    assert_eq!(request.header("DD-EVP-ORIGIN"), Some("ferroprof"));
    assert_eq!(
        request.header("DD-EVP-ORIGIN-VERSION"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        request.header("User-Agent"),
        Some(concat!("ferroprof/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        request.header("DD-API-KEY"),
        None,
        "an agent never gets the key"
    );

    let parts = request.parts();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["event", "cpu.pprof", "delta-heap.pprof", "metrics.json"]
    );
    let event_part = &parts[0];
    assert_eq!(event_part.filename.as_deref(), Some("event.json"));
    assert_eq!(event_part.content_type.as_deref(), Some("application/json"));
    let event: serde_json::Value =
        serde_json::from_slice(&event_part.body).expect("event.json is JSON");
    assert_eq!(event["version"], "4");
    assert_eq!(event["family"], "native");
    assert_eq!(
        event["attachments"],
        serde_json::json!(["cpu.pprof", "delta-heap.pprof", "metrics.json"])
    );
    assert_eq!(
        event["internal"]["ferroprof_version"],
        env!("CARGO_PKG_VERSION")
    );
    for field in ["start", "end"] {
        let t = event[field].as_str().expect("a string");
        // 2026-11-25T20:12:20.123456789Z
        assert!(
            t.len() == 30 && t.ends_with('Z') && &t[10..11] == "T" && &t[19..20] == ".",
            "{field}: {t}"
        );
    }

    for part in &parts[1..] {
        assert_eq!(part.filename.as_deref(), Some(part.name.as_str()));
        assert_eq!(
            part.content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert!(!part.body.is_empty(), "{} is empty", part.name);
    }
    let scratch = Scratch::new("upload-test");
    let dir = scratch.path();
    for (name, types) in [
        ("cpu.pprof", &["samples/count", "cpu/nanoseconds"][..]),
        (
            "delta-heap.pprof",
            &[
                "alloc_objects/count",
                "alloc_space/bytes",
                "inuse_objects/count",
                "inuse_space/bytes",
            ][..],
        ),
    ] {
        let part = parts.iter().find(|p| p.name == name).unwrap();
        assert_eq!(&part.body[..2], &[0x1f, 0x8b], "{name} is gzip");
        let path = dir.join(name);
        std::fs::write(&path, &part.body).unwrap();
        let report = support::pprof_tools::check(&path);
        assert_eq!(report.sample_types, types, "{name}");
    }

    let metrics_part = parts.iter().find(|p| p.name == "metrics.json").unwrap();
    let metrics: Vec<(String, f64)> =
        serde_json::from_slice(&metrics_part.body).expect("metrics.json is [name, number] pairs");
    let allocated = metrics
        .iter()
        .find(|(n, _)| n == "jemalloc_allocated_bytes")
        .map(|(_, v)| *v);
    assert!(allocated.is_some_and(|v| v > 0.0), "{metrics:?}");
    event
}

/// `tags_profiler` as a map; each key must appear once.
fn tags_of(event: &serde_json::Value) -> HashMap<String, String> {
    let joined = event["tags_profiler"]
        .as_str()
        .expect("tags_profiler is a string");
    let mut tags = HashMap::new();
    for tag in joined.split(',') {
        let (k, v) = tag
            .split_once(':')
            .unwrap_or_else(|| panic!("tag {tag:?} is not key:value"));
        assert!(
            tags.insert(k.to_owned(), v.to_owned()).is_none(),
            "tag {k} twice in {joined}"
        );
    }
    tags
}
