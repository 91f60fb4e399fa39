//! The profiler a user starts: the builder, the background thread and its
//! period loop.
//!
//! `start()` resolves the configuration (builder over environment over
//! defaults), applies the heap sampler's settings, starts the CPU profiler
//! on the caller's thread (so its errors are `start()`'s), and spawns the
//! thread `ferroprof`. That thread owns a current-thread tokio runtime, so
//! it works the same whether the application runs tokio or not, and never
//! touches the application's runtime. On it:
//!
//! - the **period loop** polls the CPU profiler every [`POLL_INTERVAL`]
//!   (drains its ring, arms timers for new threads), and at the end of each
//!   period collects `cpu.pprof`, the heap profile (with its delta) and
//!   `metrics.json` into one batch, writes it to the output folder and
//!   queues it; a profile type that fails is logged and counted, the others
//!   still go;
//! - the **uploader** posts queued batches (see `export::http`) on a thread
//!   of its own, `ferroprof-upload`, with its own current-thread runtime:
//!   collection is synchronous work, and an answer arriving while it runs
//!   must not wait behind it (reqwest would then see its timeout expire
//!   first, and the batch would be sent twice).
//!
//! `stop()` (or dropping the [`Profiler`]) ends the loop: the last, partial
//! period is collected, written and queued, the uploader gets the upload
//! timeout to send what is queued, and the thread exits. `stop()` returns
//! within about that bound even when the agent never answers.
//!
//! # Fork
//!
//! A child of `fork` has only the thread that forked: not `ferroprof` nor
//! `ferroprof-upload`, yet it inherits the memory that says a profiler
//! runs (the one-per-process claim) and, if the forking thread owned it,
//! the [`Profiler`] value, whose thread handle names a thread the child
//! does not have. A `pthread_atfork` child handler (registered at the first
//! `start`) makes the child a process in which no profiler runs: it frees
//! the claim and, as `stop()` would, turns heap sampling off (nothing in
//! the child reads the samples), so the child may start a profiler of its
//! own, which writes and uploads its own batches. The CPU profiler resets
//! its own state the same way (`cpu` module docs). An inherited `Profiler`
//! is inert: `is_running` is false, and stopping or dropping it neither
//! signals nor joins the absent thread (which would wait forever), nor
//! touches the sampling settings or the claim of the child's own profiler.
//! Its batches in progress at the fork belong to the parent; the child
//! never writes or sends them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{self, Config, Options, Resolved};
use crate::export::{self, dir, event, http, queue::Queue, Batch};
use crate::metrics::{self, Counter, Counters, RuntimeMetrics, SelfStats, StatsdClient};
use crate::pprof::{self, Symbolizer};
use crate::{heap, Error, ProfileType};
use ferroprof_alloc::atfork::AtforkOnce;

/// How often the CPU profiler's ring is drained and new threads get timers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// One profiler per process: set while one runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Forks between the first process and this one, counted by the child
/// handler: a [`RunningClaim`] made under another count was inherited.
static FORKS: AtomicU64 = AtomicU64::new(0);
static ATFORK: AtforkOnce = AtforkOnce::new();

/// Releases [`RUNNING`] when dropped (start failed, or the profiler ended).
struct RunningClaim {
    /// [`FORKS`] when the claim was taken.
    forks: u64,
}

impl RunningClaim {
    fn take() -> Result<RunningClaim, Error> {
        ATFORK.call_once(|| {
            // SAFETY: registers a plain `extern "C"` child handler that only
            // stores atomics (async-signal-safe, as a child of a threaded
            // process requires).
            let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
            if rc != 0 {
                log::warn!(
                    "ferroprof: pthread_atfork failed ({}); a forked child cannot start \
                     a profiler of its own",
                    std::io::Error::from_raw_os_error(rc)
                );
            }
        });
        // AcqRel/Acquire: the claim orders the previous profiler's teardown
        // (its Release store below) before this one's setup.
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| RunningClaim {
                // Relaxed: FORKS only changes in a new child before it has
                // a second thread.
                forks: FORKS.load(Ordering::Relaxed),
            })
            .map_err(|_| Error::AlreadyRunning)
    }

    /// Whether the claim was taken in this process (false: inherited
    /// through `fork`; the child handler has released it here).
    fn is_current(&self) -> bool {
        // Relaxed: as in `take`.
        FORKS.load(Ordering::Relaxed) == self.forks
    }
}

impl Drop for RunningClaim {
    fn drop(&mut self) {
        if self.is_current() {
            // Release: pairs with the Acquire of the next `take`.
            RUNNING.store(false, Ordering::Release);
        }
    }
}

/// In a new child of `fork` (module docs, "Fork"): no profiler runs here.
extern "C" fn after_fork_in_child() {
    ATFORK.registered_in_child();
    // Relaxed (all): the child has a single thread here; threads it starts
    // later are ordered after this by their creation.
    if RUNNING.swap(false, Ordering::Relaxed) {
        // As `stop()` does: nothing in this process reads the samples until
        // a profiler starts here (an atomic store, and this thread's own
        // countdown; no allocation).
        ferroprof_alloc::set_sample_interval(0);
    }
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Configures and starts a [`Profiler`]. Every option has an environment
/// variable (read at [`start`](Self::start)) and a default; an option set
/// here wins over its variable.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until start() is called"]
pub struct ProfilerBuilder {
    options: Options,
}

impl ProfilerBuilder {
    /// The Datadog API key, needed for agentless uploads (sent as
    /// `DD-API-KEY`, never logged). Env: `DD_API_KEY`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.options.api_key = Some(key.into());
        self
    }

    /// The agent's `host:port`. Env: `DD_AGENT_HOST`, `DD_TRACE_AGENT_PORT`
    /// (or `DD_TRACE_AGENT_URL`); default `localhost:8126`.
    pub fn agent_addr(mut self, addr: impl Into<String>) -> Self {
        self.options.agent_addr = Some(addr.into());
        self
    }

    /// Upload straight to Datadog's intake instead of through an agent
    /// (needs [`api_key`](Self::api_key)). Env: `DD_PROFILING_AGENTLESS`;
    /// default false.
    pub fn agentless(mut self, agentless: bool) -> Self {
        self.options.agentless = Some(agentless);
        self
    }

    /// The Datadog site for agentless uploads. Env: `DD_SITE`; default
    /// `datadoghq.com`.
    pub fn site(mut self, site: impl Into<String>) -> Self {
        self.options.site = Some(site.into());
        self
    }

    /// Post to exactly this URL, whatever else is configured. Env:
    /// `DD_PROFILING_URL`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.options.url = Some(url.into());
        self
    }

    /// Reach the agent through this Unix socket. Env: `DD_TRACE_AGENT_URL`
    /// as `unix:///path/to.sock`.
    pub fn uds(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.uds = Some(path.into());
        self
    }

    /// The HTTP client to upload with (proxies, TLS roots...). Not used
    /// for a Unix socket, which needs a client of its own. Default: one
    /// with rustls and the platform's certificates.
    ///
    /// Build one for ferroprof alone rather than cloning the application's:
    /// a pooled connection belongs to the runtime that opened it, and
    /// ferroprof's upload thread runs its own runtime, which ends at
    /// `stop()`.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.options.http_client = Some(client);
        self
    }

    /// Send allocation counts as the change since the last upload
    /// (`delta-heap.pprof`) rather than since start (`heap.pprof`). Env:
    /// `DD_PROFILING_DELTA`; default true.
    pub fn delta_profiles(mut self, delta: bool) -> Self {
        self.options.delta_profiles = Some(delta);
        self
    }

    /// The service name. Env: `DD_SERVICE`; default the executable's name.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.options.service = Some(service.into());
        self
    }

    /// The environment (`env:` tag). Env: `DD_ENV`.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.options.env = Some(env.into());
        self
    }

    /// The application's version (`version:` tag). Env: `DD_VERSION`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.options.version = Some(version.into());
        self
    }

    /// More `key:value` tags, added to those of `DD_TAGS` (comma- or
    /// space-separated). A tag whose key ferroprof sets itself (`service`,
    /// `host`, `runtime-id`...) is ignored with a warning at start.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.options.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// The `host:` tag. Default: the machine's host name.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.options.hostname = Some(hostname.into());
        self
    }

    /// Log one line describing the configuration at start. Env:
    /// `DD_TRACE_STARTUP_LOGS`; default true.
    pub fn log_startup(mut self, log: bool) -> Self {
        self.options.log_startup = Some(log);
        self
    }

    /// Time between uploads (at least 100 ms). Default 60 s.
    pub fn period(mut self, period: Duration) -> Self {
        self.options.period = Some(period);
        self
    }

    /// The profiles to collect. Default all: CPU, heap and metrics
    /// (metrics are always collected).
    pub fn profile_types(mut self, types: impl IntoIterator<Item = ProfileType>) -> Self {
        self.options.profile_types = Some(types.into_iter().collect());
        self
    }

    /// CPU samples per second of each thread's CPU time (1 to 10 000).
    /// Default 100.
    pub fn cpu_profile_rate(mut self, hz: u32) -> Self {
        self.options.cpu_profile_rate = Some(hz);
        self
    }

    /// How much of each period the CPU profiler samples, from its start
    /// (at most the period). Default: the whole period.
    pub fn cpu_duration(mut self, duration: Duration) -> Self {
        self.options.cpu_duration = Some(duration);
        self
    }

    /// Time limit of one upload attempt, and of the last uploads at
    /// `stop()`. Env: `DD_PROFILING_UPLOAD_TIMEOUT` (a Go duration such as
    /// `10s`); default 10 s.
    pub fn upload_timeout(mut self, timeout: Duration) -> Self {
        self.options.upload_timeout = Some(timeout);
        self
    }

    /// Where the profiler's own metrics go (`ferroprof.upload_success`,
    /// ...). Default: nowhere (read them with [`Profiler::stats`]).
    pub fn statsd(mut self, client: impl StatsdClient + 'static) -> Self {
        self.options.statsd = Some(Arc::new(client));
        self
    }

    /// Also write every batch to `<dir>/<end, UTC, 20060102T150405Z>/<file>`,
    /// whether or not uploads work. Env: `DD_PROFILING_OUTPUT_DIR`.
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.output_dir = Some(dir.into());
        self
    }

    /// Mean bytes allocated between heap samples; 0 turns heap sampling
    /// off. Env: `DD_PROFILING_HEAP_SAMPLE_SIZE`; default 524288 (512 KiB).
    pub fn heap_sample_size(mut self, bytes: u64) -> Self {
        self.options.heap_sample_size = Some(bytes);
        self
    }

    /// The deepest stack kept (1 to 128). Env: `DD_PROFILING_MAX_FRAMES`;
    /// default 64.
    pub fn max_frames(mut self, frames: usize) -> Self {
        self.options.max_frames = Some(frames);
        self
    }

    /// Upload batches (default true). False: only the output folder gets
    /// them (see [`output_dir`](Self::output_dir)), and no HTTP client is
    /// built. Builder only; Datadog's profilers have no such variable.
    pub fn upload(mut self, upload: bool) -> Self {
        self.options.upload = Some(upload);
        self
    }

    /// Turns profiling on or off, over `DD_PROFILING_ENABLED` (default
    /// true). Off, `start()` returns a profiler that does nothing.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.options.enabled = Some(enabled);
        self
    }

    /// Starts profiling. Errors: a malformed option or environment value
    /// (named, with the value; never the API key), another profiler
    /// running in this process, or something that could not be set up.
    pub fn start(self) -> Result<Profiler, Error> {
        self.start_with_env(&|name| std::env::var(name).ok())
    }

    /// [`start`](Self::start) reading the environment through `lookup`
    /// (for tests and for applications that keep settings elsewhere).
    pub fn start_with_env(
        self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Profiler, Error> {
        match config::resolve(self.options, lookup)? {
            Resolved::Disabled => {
                static SAID: Once = Once::new();
                SAID.call_once(|| {
                    log::info!("ferroprof: profiling is disabled (DD_PROFILING_ENABLED=false)");
                });
                // Nothing will read the allocator's samples: stop taking them.
                ferroprof_alloc::set_sample_interval(0);
                Ok(Profiler { running: None })
            }
            Resolved::Enabled(config) => Profiler::start(*config),
        }
    }
}

/// A running profiler. [`stop`](Self::stop) or drop it to send the last,
/// partial period and end profiling.
#[derive(Debug)]
pub struct Profiler {
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    claim: RunningClaim,
}

impl std::fmt::Debug for RunningClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunningClaim")
    }
}

impl Profiler {
    /// A builder with every option unset (environment, then defaults).
    pub fn builder() -> ProfilerBuilder {
        ProfilerBuilder::default()
    }

    /// Whether this profiler runs (false when disabled by
    /// `DD_PROFILING_ENABLED=false`, after `stop`, and in a child of `fork`
    /// for the profiler the parent started).
    pub fn is_running(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.claim.is_current())
    }

    /// The profiler's counters so far (all zero when disabled).
    pub fn stats(&self) -> SelfStats {
        self.running
            .as_ref()
            .map(|r| r.counters.snapshot())
            .unwrap_or_default()
    }

    /// Sends the last, partial period (bounded by the upload timeout) and
    /// stops profiling; returns the final counters.
    ///
    /// It blocks while a collection under way finishes, the last period is
    /// collected, the CPU profiler stops (up to 50 ms) and the uploads get
    /// at most the upload timeout; from async code, call it (or drop the
    /// profiler) in `spawn_blocking`. Afterwards the allocator stops
    /// sampling until a profiler starts again.
    pub fn stop(mut self) -> SelfStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> SelfStats {
        let Some(mut running) = self.running.take() else {
            return SelfStats::default();
        };
        if !running.claim.is_current() {
            // Inherited through fork (module docs): its thread is not in
            // this process, and its channel may have been copied locked.
            // Nothing here is this process's to stop; leak it untouched.
            let stats = running.counters.snapshot();
            std::mem::forget(running);
            return stats;
        }
        let _ = running.stop.send(true);
        if let Some(thread) = running.thread.take() {
            if thread.join().is_err() {
                log::error!("ferroprof: the profiler thread panicked");
            }
        }
        // Nothing reads the allocator's samples until a profiler starts
        // again (which sets the interval anew).
        ferroprof_alloc::set_sample_interval(0);
        running.counters.snapshot()
    }

    fn start(config: Config) -> Result<Profiler, Error> {
        let claim = RunningClaim::take()?;
        for warning in &config.warnings {
            log::warn!("ferroprof: {warning}");
        }
        ferroprof_alloc::set_max_frames(config.max_frames);
        ferroprof_alloc::set_sample_interval(if config.heap {
            config.heap_sample_size
        } else {
            0
        });
        let start_error = |what: &'static str| move |e| Error::Start { what, source: e };
        let client = match config.upload {
            true => Some(
                http::client(&config.endpoint, config.http_client.clone())
                    .map_err(start_error("HTTP client"))?,
            ),
            false => None,
        };
        if let Some(dir) = &config.output_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::Start {
                what: "output folder",
                source: format!("{}: {e}", dir.display()).into(),
            })?;
        }
        let cpu = if config.cpu {
            cpu_source::start(config.cpu_profile_rate, config.max_frames).map_err(|e| {
                Error::Start {
                    what: "CPU profiler",
                    source: e,
                }
            })?
        } else {
            None
        };
        let counters = Arc::new(Counters::new(config.statsd.clone()));
        let runtime_id = event::uuid_v4();
        let base_tags: Arc<str> = event::base_tags(&config, &runtime_id).into();
        if config.log_startup {
            log::info!("ferroprof: startup: {}", startup_line(&config, &base_tags));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel();
        let uploader = client.map(|client| {
            http::Uploader::new(
                client,
                config.endpoint.clone(),
                config.upload_timeout,
                config.period,
                base_tags.clone(),
                counters.clone(),
            )
        });
        let worker = Worker {
            queue: Arc::new(Queue::new(export::QUEUE_CAPACITY)),
            cpu,
            heap: heap::HeapProfiler::new(),
            metrics: RuntimeMetrics::new(),
            symbolizer: Symbolizer::default(),
            counters: counters.clone(),
            base_tags,
            seq: 0,
            period_start: SystemTime::now(),
            heap_dropped: ferroprof_alloc::stats().dropped,
            cpu_dropped: 0,
            config,
        };
        let thread = std::thread::Builder::new()
            .name("ferroprof".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(()));
                        rt.block_on(worker.run(uploader, stop_rx));
                        // Blocking tasks (none expected here) are not waited for.
                        rt.shutdown_background();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::Start {
                what: "profiler thread",
                source: e.into(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(Error::Start {
                    what: "tokio runtime",
                    source: e.into(),
                });
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Start {
                    what: "profiler thread",
                    source: "it exited at once".into(),
                });
            }
        }
        Ok(Profiler {
            running: Some(Running {
                stop: stop_tx,
                thread: Some(thread),
                counters,
                claim,
            }),
        })
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The startup line: the configuration as one JSON object, no API key.
fn startup_line(config: &Config, tags: &str) -> String {
    let mut types = Vec::new();
    if config.cpu {
        types.push("cpu");
    }
    if config.heap {
        types.push("heap");
    }
    types.push("metrics");
    serde_json::json!({
        "date": event::rfc3339(SystemTime::now()),
        "os_name": std::env::consts::OS,
        "os_version": os_version(),
        "profiler_version": event::VERSION,
        "lang": "rust",
        "lang_version": event::RUSTC_VERSION,
        "hostname": config.hostname,
        "service": config.service,
        "env": config.env.as_deref().unwrap_or(""),
        "version": config.version.as_deref().unwrap_or(""),
        "target_url": if config.upload { config.endpoint.describe() } else { "none (uploads off)".to_owned() },
        "agentless": config.endpoint.agentless,
        "tags": tags,
        "delta_profiles": config.delta,
        "period": format!("{:?}", config.period),
        "enabled_profiles": types,
        "cpu_profile_rate": config.cpu_profile_rate,
        "cpu_duration": format!("{:?}", config.cpu_duration),
        "heap_sample_size": config.heap_sample_size,
        "max_frames": config.max_frames,
        "upload_timeout": format!("{:?}", config.upload_timeout),
        "output_dir": config.output_dir.as_ref().map(|d| d.display().to_string()),
    })
    .to_string()
}

/// The kernel release, from `uname`.
fn os_version() -> String {
    // SAFETY: utsname is plain bytes; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is valid for writes; uname fills it.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates `release` within the array.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The CPU profiler where it exists; elsewhere asking for it says so.
#[cfg(ferroprof_cpu)]
mod cpu_source {
    pub(super) use crate::cpu::CpuProfiler as Cpu;

    type StartError = Box<dyn std::error::Error + Send + Sync>;

    pub(super) fn start(hz: u32, depth: usize) -> Result<Option<Cpu>, StartError> {
        Ok(Some(Cpu::start(hz, depth)?))
    }
}

#[cfg(not(ferroprof_cpu))]
mod cpu_source {
    use crate::pprof::{Profile, Symbolizer};

    type StartError = Box<dyn std::error::Error + Send + Sync>;

    /// Never built: the CPU profiler needs Linux on x86_64 or aarch64 and
    /// the `cpu` feature.
    #[derive(Debug)]
    pub(super) enum Cpu {}

    impl Cpu {
        pub fn poll(&mut self) -> Result<(), StartError> {
            match *self {}
        }
        pub fn collect_in_batch(&mut self, _: &mut Symbolizer) -> Profile {
            match *self {}
        }
        pub fn dropped_samples(&self) -> u64 {
            match *self {}
        }
        pub fn stop(self) -> Result<(), StartError> {
            match self {}
        }
    }

    pub(super) fn start(_hz: u32, _depth: usize) -> Result<Option<Cpu>, StartError> {
        log::warn!(
            "ferroprof: no CPU profiles: the CPU profiler needs Linux on x86_64 or aarch64 \
             and ferroprof's `cpu` feature"
        );
        Ok(None)
    }
}

use cpu_source::Cpu;

/// Everything the profiler thread owns.
struct Worker {
    config: Config,
    queue: Arc<Queue>,
    cpu: Option<Cpu>,
    heap: heap::HeapProfiler,
    metrics: RuntimeMetrics,
    symbolizer: Symbolizer,
    counters: Arc<Counters>,
    base_tags: Arc<str>,
    seq: u64,
    period_start: SystemTime,
    /// The sampler's dropped-sample count at the last collection.
    heap_dropped: u64,
    /// The CPU profiler's dropped-sample count at the last collection.
    cpu_dropped: u64,
}

impl Worker {
    async fn run(mut self, uploader: Option<http::Uploader>, mut stop: watch::Receiver<bool>) {
        let (deadline_tx, deadline_rx) = watch::channel(None);
        // The uploader gets a thread and runtime of its own: collection is
        // synchronous work on this one, and an upload waiting behind it
        // would see its answer only after its own timeout had expired.
        let upload_thread =
            match uploader.map(|u| spawn_uploader(u, self.queue.clone(), deadline_rx)) {
                Some(Ok(thread)) => Some(thread),
                Some(Err(e)) => {
                    log::error!("ferroprof: no uploads: could not start the upload thread: {e}");
                    self.config.upload = false;
                    None
                }
                None => None,
            };

        let period = self.config.period;
        let mut next_period = Instant::now() + period;
        // With a CPU duration shorter than the period the CPU profiler
        // samples only the first `cpu_duration` of each period.
        let cpu_window = self.config.cpu_duration < period;
        let mut cpu_stop_at = cpu_window.then(|| Instant::now() + self.config.cpu_duration);
        let mut cpu_pending: Option<pprof::Profile> = None;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_period) => {
                    self.period(&mut cpu_pending);
                    next_period += period;
                    // A late wake-up (a stopped process) skips to the next
                    // boundary rather than collecting several empty periods.
                    let now = Instant::now();
                    if next_period <= now {
                        next_period = now + period;
                    }
                    if cpu_window {
                        self.restart_cpu();
                        cpu_stop_at = Some(now + self.config.cpu_duration);
                    }
                }
                _ = sleep_until_some(cpu_stop_at) => {
                    cpu_stop_at = None;
                    if let Some(mut cpu) = self.cpu.take() {
                        cpu_pending = self.guarded("cpu", |w| cpu.collect_in_batch(&mut w.symbolizer));
                        self.note_cpu_dropped(&cpu);
                        if let Err(e) = cpu.stop() {
                            log::warn!("ferroprof: stopping the CPU profiler: {e}");
                        }
                    }
                }
                _ = poll.tick() => self.poll(),
            }
        }
        // The last, partial period, then the uploads' deadline.
        self.period(&mut cpu_pending);
        if let Some(cpu) = self.cpu.take() {
            if let Err(e) = cpu.stop() {
                log::warn!("ferroprof: stopping the CPU profiler: {e}");
            }
        }
        let _ = deadline_tx.send(Some(Instant::now() + self.config.upload_timeout));
        if let Some(thread) = upload_thread {
            if thread.join().is_err() {
                log::error!("ferroprof: the upload thread panicked");
            }
        }
    }

    fn poll(&mut self) {
        if let Some(cpu) = self.cpu.as_mut() {
            if let Err(e) = cpu.poll() {
                static SAID: Once = Once::new();
                SAID.call_once(|| log::warn!("ferroprof: CPU profiler: {e}"));
            }
        }
    }

    fn restart_cpu(&mut self) {
        if self.cpu.is_some() {
            return;
        }
        match cpu_source::start(self.config.cpu_profile_rate, self.config.max_frames) {
            Ok(cpu) => {
                self.cpu = cpu;
                self.cpu_dropped = 0;
            }
            Err(e) => {
                self.counters
                    .add(Counter::CollectError, 1, &["profile_type:cpu"]);
                log::warn!("ferroprof: could not restart the CPU profiler: {e}");
            }
        }
    }

    fn note_cpu_dropped(&mut self, cpu: &Cpu) {
        let total = cpu.dropped_samples();
        self.counters.add(
            Counter::CpuSamplesDropped,
            total.saturating_sub(self.cpu_dropped),
            &[],
        );
        self.cpu_dropped = total;
    }

    /// Collects one period's batch, writes it and queues it.
    fn period(&mut self, cpu_pending: &mut Option<pprof::Profile>) {
        let began = std::time::Instant::now();
        let end = SystemTime::now();
        let mut files: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(3);

        if self.config.cpu {
            let profile = match (cpu_pending.take(), self.cpu.take()) {
                (Some(p), cpu) => {
                    self.cpu = cpu;
                    Some(p)
                }
                (None, Some(mut cpu)) => {
                    let p = self.guarded("cpu", |w| cpu.collect_in_batch(&mut w.symbolizer));
                    self.note_cpu_dropped(&cpu);
                    self.cpu = Some(cpu);
                    p
                }
                (None, None) => None,
            };
            if let Some(p) = profile {
                files.push(("cpu.pprof", pprof::encode(&p)));
            }
        }
        if self.config.heap {
            if let Some(bytes) = self.guarded("heap", |w| w.heap_profile(end)) {
                files.push((
                    if self.config.delta {
                        "delta-heap.pprof"
                    } else {
                        "heap.pprof"
                    },
                    bytes,
                ));
            }
        }
        match self.metrics.collect() {
            Ok(pairs) => files.push(("metrics.json", metrics::to_json(&pairs))),
            Err(e) => {
                self.counters
                    .add(Counter::CollectError, 1, &["profile_type:metrics"]);
                static SAID: Once = Once::new();
                SAID.call_once(|| log::warn!("ferroprof: no metrics.json: {e}"));
            }
        }
        // One symbolizer batch per period: the cache keeps what either
        // profile used, and the DWARF readers are dropped once.
        self.symbolizer.end_batch();
        self.counters
            .timing("ferroprof.collect_time", began.elapsed(), &[]);

        let batch = Batch {
            seq: self.seq,
            start: self.period_start,
            end,
            files,
        };
        self.seq += 1;
        self.period_start = end;
        self.counters.add(Counter::Batches, 1, &[]);
        if let Some(dir) = &self.config.output_dir {
            let event = event::event_json(&batch, &self.base_tags);
            if let Err(e) = dir::write(dir, &batch, &event) {
                self.counters
                    .add(Counter::CollectError, 1, &["profile_type:output_dir"]);
                log::warn!(
                    "ferroprof: could not write profiles under {}: {e}",
                    dir.display()
                );
            }
        }
        if !self.config.upload {
            return;
        }
        if let Some(dropped) = self.queue.push(batch) {
            self.counters.add(Counter::QueueFull, 1, &[]);
            log::warn!(
                "ferroprof: upload queue full ({} batches); dropped batch {}",
                export::QUEUE_CAPACITY,
                dropped.seq
            );
        }
    }

    /// The heap profile's bytes: snapshot, build, delta (timed), encode.
    fn heap_profile(&mut self, end: SystemTime) -> Vec<u8> {
        let snapshot = ferroprof_alloc::snapshot();
        let dropped = snapshot.stats.dropped;
        self.counters.add(
            Counter::HeapSamplesDropped,
            dropped.saturating_sub(self.heap_dropped),
            &[],
        );
        self.heap_dropped = dropped;
        let duration = end.duration_since(self.period_start).unwrap_or_default();
        let cumulative = heap::build_in_batch(&snapshot, &mut self.symbolizer, end, duration);
        let profile = if self.config.delta {
            let began = std::time::Instant::now();
            let delta = self.heap.delta_of(cumulative);
            self.counters
                .timing("ferroprof.delta_time", began.elapsed(), &[]);
            delta
        } else {
            cumulative
        };
        pprof::encode(&profile)
    }

    /// Runs one profile type's collection; a panic in it is logged and
    /// counted, and the other types still go.
    fn guarded<T>(&mut self, what: &'static str, f: impl FnOnce(&mut Worker) -> T) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(v) => Some(v),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let tag = format!("profile_type:{what}");
                self.counters.add(Counter::CollectError, 1, &[&tag]);
                log::error!("ferroprof: collecting the {what} profile failed: {message}");
                None
            }
        }
    }
}

/// Starts the thread `ferroprof-upload`, which posts queued batches until
/// `deadline` carries the stop deadline.
fn spawn_uploader(
    uploader: http::Uploader,
    queue: Arc<Queue>,
    deadline: watch::Receiver<Option<Instant>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ferroprof-upload".to_owned())
        .spawn(move || {
            // Built (and dropped) on this thread: a runtime must not be
            // dropped inside another one's async context.
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    runtime.block_on(uploader.run(queue, deadline));
                    // A name lookup still running (getaddrinfo, on a blocking
                    // thread, cannot be cancelled) must not hold stop(): the
                    // runtime goes without waiting for it.
                    runtime.shutdown_background();
                }
                Err(e) => {
                    log::error!("ferroprof: no uploads: no runtime for the upload thread: {e}")
                }
            }
        })
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
