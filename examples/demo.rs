//! ferroprof end to end on a small but real service.
//!
//! An HTTP server (axum on tokio) with endpoints that spend CPU and memory in
//! recognizably different ways — `/catalog/{n}` builds and encodes JSON,
//! `/compress/{kb}` gzips generated text, `/remember/{key}` grows a cache,
//! `/primes/{limit}` counts primes — and a built-in load generator calling it
//! over real TCP connections. The process swaps in ferroprof's
//! `SamplingAllocator` and starts the profiler, which writes every batch
//! (`cpu.pprof`, `delta-heap.pprof`, `metrics.json`, `event.json`) under
//! `profiles/<UTC time>/`. If `DD_TRACE_AGENT_URL` or `DD_AGENT_HOST` is set it
//! uploads them to that Datadog agent as well.
//!
//! At the end it renders flamegraphs of the CPU profile and of the in-use
//! heap into the folder, prints a top-10 table of each, and the paths.
//!
//! ```text
//! cargo run --release --example demo [-- --seconds 60 --period 10 --out profiles]
//! ```
//!
//! With `--stats` it also prints, once per period, a `stats:` line to
//! stderr with the profiler's counters and memory (the sampler's tables
//! and region, jemalloc's totals); `.ci/soak` reads them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use axum::Router;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

/// Remembers how long each collection took (the profiler's
/// `ferroprof.collect_time`), to print at the end.
#[derive(Clone, Default)]
struct CollectTimes(Arc<Mutex<Vec<Duration>>>);

impl ferroprof::StatsdClient for CollectTimes {
    fn count(&self, _name: &str, _value: i64, _tags: &[&str]) {}
    fn timing(&self, name: &str, value: Duration, _tags: &[&str]) {
        if name == "ferroprof.collect_time" {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(value);
        }
    }
}

/// The command line.
#[derive(Debug)]
struct Args {
    seconds: u64,
    period: u64,
    out: PathBuf,
    stats: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        period: 10,
        out: PathBuf::from("profiles"),
        stats: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--period" => args.period = value()?.parse().map_err(|e| format!("--period: {e}"))?,
            "--out" => args.out = PathBuf::from(value()?),
            "--stats" => args.stats = true,
            "-h" | "--help" => return Err(
                "usage: demo [--seconds N (60)] [--period SECONDS (10)] [--out DIR (profiles)] \
                     [--stats]"
                    .into(),
            ),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.period == 0 || args.seconds == 0 {
        return Err("--seconds and --period must be positive".into());
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    log::set_logger(&StderrLogger).map_err(|e| e.to_string())?;
    log::set_max_level(log::LevelFilter::Info);
    let args = parse_args()?;
    let upload = ["DD_TRACE_AGENT_URL", "DD_AGENT_HOST"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());

    let collect_times = CollectTimes::default();
    let profiler = ferroprof::Profiler::builder()
        .service("ferroprof-demo")
        .env("demo")
        .version(env!("CARGO_PKG_VERSION"))
        .tags(["team:profiling"])
        .period(Duration::from_secs(args.period))
        .output_dir(&args.out)
        .upload(upload)
        .statsd(collect_times.clone())
        .start()?;
    let started = Instant::now();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("demo-server")
        .enable_all()
        .build()?;
    // The cache outlives the server until the profiler has stopped, so the
    // last batch's in-use heap still shows it.
    let cache = Arc::new(Cache::default());
    let done = AtomicBool::new(false);
    let served = std::thread::scope(|scope| {
        if args.stats {
            scope.spawn(|| print_stats(&profiler, args.period, started, &done));
        }
        let served = runtime.block_on(serve_and_load(
            cache.clone(),
            Duration::from_secs(args.seconds),
        ));
        done.store(true, Ordering::Relaxed);
        served
    })?;
    drop(runtime);
    let stats = profiler.stop();
    drop(cache);

    let times = collect_times
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    let max = times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "\nserved {} requests in {:.1} s; profiler: {} batches (collection {:.1} ms mean, \
         {:.1} ms max), {} uploaded, {} upload errors",
        served,
        started.elapsed().as_secs_f64(),
        stats.batches,
        mean.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        stats.upload_success,
        stats.upload_error
    );
    report(&args.out)?;
    Ok(())
}

/// `--stats`: every `period` seconds until `done`, one line of the
/// profiler's counters and memory.
fn print_stats(profiler: &ferroprof::Profiler, period: u64, started: Instant, done: &AtomicBool) {
    let mut next = started + Duration::from_secs(period);
    while !done.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next += Duration::from_secs(period);
        let s = profiler.stats();
        let a = ferroprof::alloc::stats();
        let _ = tikv_jemalloc_ctl::epoch::advance();
        let allocated = tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0);
        let resident = tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0);
        eprintln!(
            "stats: t={:.1} batches={} collect_error={} heap_dropped={} cpu_dropped={} \
             heap_samples={} live_blocks={} stacks={} table_bytes={} region_committed={} \
             region_in_use={} jemalloc_allocated={allocated} jemalloc_resident={resident}",
            started.elapsed().as_secs_f64(),
            s.batches,
            s.collect_error,
            s.heap_samples_dropped,
            s.cpu_samples_dropped,
            a.samples,
            a.live_blocks,
            a.stacks,
            a.table_bytes,
            a.region_committed,
            a.region_in_use,
        );
    }
}

/// The service's state: a cache that only grows (up to 5 000 keys of 8 KiB).
#[derive(Default)]
struct Cache {
    entries: Mutex<HashMap<u64, Vec<u8>>>,
}

/// `/catalog/{n}`: builds a JSON catalog of `n` products and encodes it.
async fn catalog(UrlPath(n): UrlPath<u32>) -> String {
    encode_catalog(n.min(5_000))
}

/// `/compress/{kb}`: gzips `kb` KiB of generated text.
async fn compress(UrlPath(kb): UrlPath<usize>) -> String {
    gzip_text(kb.min(4096))
}

/// `/remember/{key}`: keeps 8 KiB under `key` (the in-use heap grows).
async fn remember(State(cache): State<Arc<Cache>>, UrlPath(key): UrlPath<u64>) -> String {
    cache_value(&cache, key)
}

/// `/primes/{limit}`: counts primes below `limit`, naively.
async fn primes(UrlPath(limit): UrlPath<u64>) -> String {
    count_primes(limit.min(200_000)).to_string()
}

// The work of each endpoint is a plain function, never inlined, so the
// profiles name it rather than axum's handler closure.

#[inline(never)]
fn encode_catalog(n: u32) -> String {
    let products: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "name": format!("product-{i}"),
                "price_cents": 100 + (i * 37) % 10_000,
                "tags": ["demo", if i % 2 == 0 { "even" } else { "odd" }],
                "stock": { "warehouse": i % 7, "count": (i * 13) % 500 },
            })
        })
        .collect();
    serde_json::to_string(&products).unwrap_or_default()
}

#[inline(never)]
fn gzip_text(kb: usize) -> String {
    use std::io::Write;
    let text: String = (0..kb * 16)
        .map(|i| format!("line {i:08} of some rather repetitive text\n"))
        .collect::<String>();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = gz.write_all(text.as_bytes());
    let compressed = gz.finish().unwrap_or_default();
    format!("{} -> {} bytes", text.len(), compressed.len())
}

#[inline(never)]
fn cache_value(cache: &Cache, key: u64) -> String {
    let value = vec![(key % 251) as u8; 8 * 1024];
    let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
    entries.insert(key % 5_000, value);
    format!("{} entries", entries.len())
}

#[inline(never)]
fn count_primes(limit: u64) -> usize {
    (2..limit)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count()
}

/// Serves on a loopback port while four clients call it for `run`;
/// returns the number of requests answered.
async fn serve_and_load(
    cache: Arc<Cache>,
    run: Duration,
) -> Result<u64, Box<dyn std::error::Error>> {
    let app = Router::new()
        .route("/catalog/{n}", get(catalog))
        .route("/compress/{kb}", get(compress))
        .route("/remember/{key}", post(remember))
        .route("/primes/{limit}", get(primes))
        .with_state(cache);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = done_rx.await;
            })
            .await
    });
    eprintln!(
        "demo service on http://{addr}; load for {} s",
        run.as_secs()
    );

    let until = Instant::now() + run;
    let clients: Vec<_> = (0..4u64)
        .map(|c| tokio::spawn(client(addr, c, until)))
        .collect();
    let mut served = 0;
    for c in clients {
        served += c.await??;
    }
    let _ = done_tx.send(());
    server.await??;
    Ok(served)
}

/// One keep-alive connection sending a mix of requests until `until`.
async fn client(addr: std::net::SocketAddr, seed: u64, until: Instant) -> std::io::Result<u64> {
    let stream = TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut n = 0u64;
    while Instant::now() < until {
        let i = n.wrapping_mul(7919).wrapping_add(seed * 104_729);
        let (method, path) = match n % 4 {
            0 => ("GET", format!("/catalog/{}", 200 + i % 800)),
            1 => ("GET", format!("/compress/{}", 16 + i % 48)),
            2 => ("POST", format!("/remember/{}", i % 100_000)),
            _ => ("GET", format!("/primes/{}", 20_000 + i % 30_000)),
        };
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: demo\r\nContent-Length: 0\r\n\r\n");
        write.write_all(request.as_bytes()).await?;
        // Status line and headers, then exactly Content-Length bytes.
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("the server closed the connection"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await?;
        n += 1;
    }
    Ok(n)
}

/// Flamegraphs and top-10 tables: of the CPU profile of the busiest
/// period, and of the in-use heap at the end (the last batch, collected
/// while the cache was still alive).
fn report(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use ferroprof::view;
    let mut folders: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("event.json").is_file())
        .collect();
    folders.sort();
    let Some(last) = folders.last() else {
        return Err(format!("no batch was written under {}", out.display()).into());
    };

    let mut busiest = None;
    for folder in &folders {
        let path = folder.join("cpu.pprof");
        if let Ok(profile) = view::load(&path) {
            let index = view::sample_index(&profile, Some("cpu"))?;
            let total = view::top(&profile, index).total;
            if busiest.as_ref().is_none_or(|(t, _, _)| total > *t) {
                busiest = Some((total, path, profile));
            }
        }
    }
    let heap_path = last.join("delta-heap.pprof");
    let heap = view::load(&heap_path)?;

    let mut written = Vec::new();
    let mut sections = Vec::new();
    if let Some((_, path, profile)) = &busiest {
        let index = view::sample_index(profile, Some("cpu"))?;
        let svg = out.join("cpu.svg");
        let title = format!("CPU: {}", path.display());
        view::flamegraph(profile, index, &title, &mut std::fs::File::create(&svg)?)?;
        sections.push((
            format!("CPU, {}", path.display()),
            view::top(profile, index).render(10),
        ));
        written.push(svg);
    }
    let index = view::sample_index(&heap, Some("inuse_space"))?;
    let svg = out.join("heap-inuse.svg");
    let title = format!("In-use heap: {}", heap_path.display());
    view::flamegraph(&heap, index, &title, &mut std::fs::File::create(&svg)?)?;
    sections.push((
        format!("in-use heap, {}", heap_path.display()),
        view::top(&heap, index).render(10),
    ));
    written.push(svg);

    for (what, table) in &sections {
        println!("\n== top 10, {what}\n{table}");
    }
    println!("\n{} batches:", folders.len());
    for folder in &folders {
        println!("  {}/", folder.display());
    }
    println!("flame graphs:");
    for svg in &written {
        println!("  {}", svg.display());
    }
    Ok(())
}
