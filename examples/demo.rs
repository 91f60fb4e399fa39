//! ferroprof end to end: a small "service" that computes and allocates on a
//! few threads while the profiler writes a batch of real profiles
//! (`cpu.pprof`, `delta-heap.pprof`, `metrics.json`, `event.json`) every
//! period into a folder, and uploads them to a Datadog agent if one
//! listens (set `DD_AGENT_HOST` / `DD_TRACE_AGENT_URL`; without an agent
//! the uploads fail, are counted, and the folder still gets every batch).
//!
//! ```text
//! cargo run --release --example demo [-- SECONDS [FOLDER]]
//! go tool pprof -top profiles/<stamp>/cpu.pprof
//! ```
//!
//! Defaults: 12 seconds, a 4-second period, folder `profiles/`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ferroprof::SamplingAllocator =
    ferroprof::SamplingAllocator::new(ferroprof::Jemalloc);

/// Prints the profiler's log lines (info and above) to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// CPU: a naive prime count, so `cpu.pprof` has a clear hot spot.
#[inline(never)]
fn count_primes(limit: u64) -> u64 {
    (2..limit)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count() as u64
}

/// Heap: an index of words that keeps growing, so the in-use heap has a
/// clear owner, and short-lived strings, so allocations do too.
#[inline(never)]
fn index_words(index: &mut BTreeMap<String, Vec<u64>>, round: u64) {
    for i in 0..2_000u64 {
        let word = format!("word-{}", (i * 7919 + round) % 50_000);
        index.entry(word).or_default().push(round);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    log::set_logger(&StderrLogger).map_err(|e| e.to_string())?;
    log::set_max_level(log::LevelFilter::Info);
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(12);
    let folder = args.next().unwrap_or_else(|| "profiles".to_owned());

    let profiler = ferroprof::Profiler::builder()
        .service("ferroprof-demo")
        .env("demo")
        .version(env!("CARGO_PKG_VERSION"))
        .tags(["team:profiling"])
        .period(Duration::from_secs(4))
        .upload_timeout(Duration::from_secs(2))
        .output_dir(&folder)
        .start()?;

    let until = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..2)
        .map(|t| {
            std::thread::Builder::new()
                .name(format!("demo-worker-{t}"))
                .spawn(move || {
                    let mut index = BTreeMap::new();
                    let mut round = 0;
                    let mut primes = 0;
                    while Instant::now() < until {
                        primes += count_primes(20_000);
                        index_words(&mut index, round);
                        round += 1;
                    }
                    (primes, index.len())
                })
        })
        .collect::<Result<_, _>>()?;
    for w in workers {
        let (primes, words) = w.join().map_err(|_| "a worker panicked")?;
        eprintln!("worker: {primes} primes counted, {words} words indexed");
    }

    let stats = profiler.stop();
    eprintln!(
        "profiler: {} batches, {} uploaded, {} upload errors, {} retries, {} dropped (queue full)",
        stats.batches,
        stats.upload_success,
        stats.upload_error,
        stats.upload_retry,
        stats.queue_full
    );
    eprintln!("profiles written under {folder}/");
    Ok(())
}
