//! Numbers about the process and about the profiler itself.
//!
//! Two things live here because both are counters read once per period:
//!
//! - **`metrics.json`**, the runtime metrics profile: jemalloc's statistics
//!   (allocated, active, resident, mapped, retained and metadata bytes) and
//!   the allocation rate over the period, as the JSON array of
//!   `[name, number]` pairs Datadog reads. The rate comes from jemalloc's
//!   per-size-class request counters (`stats.arenas.<all>.bins.<j>.nrequests`
//!   and `lextents.<j>.nrequests`) times the size class, so it counts usable
//!   bytes, not requested ones; requests served from a thread cache reach
//!   those counters when the cache is flushed, so a period's rate can lag by
//!   a thread cache's worth. The numbers are jemalloc's: when
//!   `SamplingAllocator` wraps another allocator they describe an idle
//!   jemalloc.
//! - **Self metrics**: what the profiler did and what it had to drop
//!   (uploads, retries, full queue, failed collections, dropped samples),
//!   counted in [`SelfStats`] (read with `Profiler::stats`) and sent to the
//!   user's [`StatsdClient`] under the names of `docs/datadog-intake.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_jemalloc_ctl::{epoch, raw, stats};

/// Where the profiler's self metrics go: implement it over your statsd
/// client (the shape of Datadog's Go profiler's `StatsdClient`).
///
/// Called from the profiler's threads; keep it quick and non-blocking. A
/// panic in it is caught and ignored.
pub trait StatsdClient: Send + Sync {
    /// Adds `value` to the counter `name` (e.g. `ferroprof.upload_success`).
    fn count(&self, name: &str, value: i64, tags: &[&str]);
    /// Records one duration under `name` (e.g. `ferroprof.collect_time`).
    fn timing(&self, name: &str, value: Duration, tags: &[&str]);
}

/// The profiler's counters since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SelfStats {
    /// Batches collected (one per period, and the last partial one).
    pub batches: u64,
    /// Batches an endpoint accepted.
    pub upload_success: u64,
    /// Batches given up on: final errors (4xx, or a second failure), and
    /// batches still unsent when `stop()`'s time ran out.
    pub upload_error: u64,
    /// Second attempts after a transport error or a 5xx.
    pub upload_retry: u64,
    /// Bytes of profile files in accepted uploads.
    pub uploaded_profile_bytes: u64,
    /// Batches dropped, oldest first, because the upload queue was full.
    pub queue_full: u64,
    /// Profiles that could not be collected or written (each also logged).
    pub collect_error: u64,
    /// Heap samples the sampler could not keep (live table full and the
    /// like), as reported in the heap profile's comment.
    pub heap_samples_dropped: u64,
    /// CPU samples dropped because the sample ring was full.
    pub cpu_samples_dropped: u64,
}

/// The live counters behind [`SelfStats`], shared by the period loop and
/// the uploader, forwarding to the statsd client as they change.
pub(crate) struct Counters {
    statsd: Option<Arc<dyn StatsdClient>>,
    batches: AtomicU64,
    upload_success: AtomicU64,
    upload_error: AtomicU64,
    upload_retry: AtomicU64,
    uploaded_profile_bytes: AtomicU64,
    queue_full: AtomicU64,
    collect_error: AtomicU64,
    heap_samples_dropped: AtomicU64,
    cpu_samples_dropped: AtomicU64,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// A counter: its field and its statsd name.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Batches,
    UploadSuccess,
    UploadError,
    UploadRetry,
    UploadedProfileBytes,
    QueueFull,
    CollectError,
    HeapSamplesDropped,
    CpuSamplesDropped,
}

impl Counters {
    pub fn new(statsd: Option<Arc<dyn StatsdClient>>) -> Self {
        Counters {
            statsd,
            batches: AtomicU64::new(0),
            upload_success: AtomicU64::new(0),
            upload_error: AtomicU64::new(0),
            upload_retry: AtomicU64::new(0),
            uploaded_profile_bytes: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            collect_error: AtomicU64::new(0),
            heap_samples_dropped: AtomicU64::new(0),
            cpu_samples_dropped: AtomicU64::new(0),
        }
    }

    fn cell(&self, c: Counter) -> (&AtomicU64, Option<&'static str>) {
        match c {
            Counter::Batches => (&self.batches, None),
            Counter::UploadSuccess => (&self.upload_success, Some("ferroprof.upload_success")),
            Counter::UploadError => (&self.upload_error, Some("ferroprof.upload_error")),
            Counter::UploadRetry => (&self.upload_retry, Some("ferroprof.upload_retry")),
            Counter::UploadedProfileBytes => (
                &self.uploaded_profile_bytes,
                Some("ferroprof.uploaded_profile_bytes"),
            ),
            Counter::QueueFull => (&self.queue_full, Some("ferroprof.queue_full")),
            Counter::CollectError => (&self.collect_error, Some("ferroprof.collect_error")),
            Counter::HeapSamplesDropped => (
                &self.heap_samples_dropped,
                Some("ferroprof.heap_samples_dropped"),
            ),
            Counter::CpuSamplesDropped => (
                &self.cpu_samples_dropped,
                Some("ferroprof.cpu_samples_dropped"),
            ),
        }
    }

    /// Adds `n` to a counter and tells the statsd client (zero is not sent).
    pub fn add(&self, c: Counter, n: u64, tags: &[&str]) {
        if n == 0 {
            return;
        }
        let (cell, name) = self.cell(c);
        // Relaxed: each counter is independent; readers want a recent value,
        // not an order with other memory.
        cell.fetch_add(n, Ordering::Relaxed);
        if let (Some(statsd), Some(name)) = (&self.statsd, name) {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            // The user's client must not take the profiler's threads down.
            let _ = catch_unwind(AssertUnwindSafe(|| statsd.count(name, n, tags)));
        }
    }

    /// Sends a timing (`ferroprof.collect_time`, `ferroprof.delta_time`).
    pub fn timing(&self, name: &str, d: Duration, tags: &[&str]) {
        if let Some(statsd) = &self.statsd {
            let _ = catch_unwind(AssertUnwindSafe(|| statsd.timing(name, d, tags)));
        }
    }

    pub fn snapshot(&self) -> SelfStats {
        let get = |c| self.cell(c).0.load(Ordering::Relaxed);
        SelfStats {
            batches: get(Counter::Batches),
            upload_success: get(Counter::UploadSuccess),
            upload_error: get(Counter::UploadError),
            upload_retry: get(Counter::UploadRetry),
            uploaded_profile_bytes: get(Counter::UploadedProfileBytes),
            queue_full: get(Counter::QueueFull),
            collect_error: get(Counter::CollectError),
            heap_samples_dropped: get(Counter::HeapSamplesDropped),
            cpu_samples_dropped: get(Counter::CpuSamplesDropped),
        }
    }
}

/// `MALLCTL_ARENAS_ALL`: the pseudo-arena index that merges every arena.
const ARENAS_ALL: usize = 4096;

/// Reads jemalloc's statistics period after period.
#[derive(Debug)]
pub struct RuntimeMetrics {
    /// Size of each small class then each large class, read once.
    classes: Option<Vec<(String, u64)>>,
    last: Option<(Instant, Totals)>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    bytes: u64,
    allocs: u64,
    frees: u64,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeMetrics {
    /// Starts the rate's first period now.
    pub fn new() -> Self {
        let mut m = RuntimeMetrics {
            classes: size_classes(),
            last: None,
        };
        m.last = m.totals().map(|t| (Instant::now(), t));
        m
    }

    /// This period's `metrics.json` pairs. An error (jemalloc built without
    /// statistics) names what failed.
    pub fn collect(&mut self) -> Result<Vec<(&'static str, f64)>, String> {
        epoch::advance().map_err(|e| format!("jemalloc epoch: {e}"))?;
        let read = |what: &'static str, r: tikv_jemalloc_ctl::Result<usize>| {
            r.map(|v| (what, v as f64))
                .map_err(|e| format!("jemalloc {what}: {e} (is jemalloc built with statistics?)"))
        };
        let mut out = vec![
            read("jemalloc_allocated_bytes", stats::allocated::read())?,
            read("jemalloc_active_bytes", stats::active::read())?,
            read("jemalloc_resident_bytes", stats::resident::read())?,
            read("jemalloc_mapped_bytes", stats::mapped::read())?,
            read("jemalloc_retained_bytes", stats::retained::read())?,
            read("jemalloc_metadata_bytes", stats::metadata::read())?,
        ];
        let now = Instant::now();
        if let Some(t) = self.totals() {
            if let Some((then, before)) = self.last {
                let secs = now.duration_since(then).as_secs_f64().max(1e-3);
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                out.push(("jemalloc_alloc_bytes_per_sec", rate(t.bytes, before.bytes)));
                out.push(("jemalloc_allocs_per_sec", rate(t.allocs, before.allocs)));
                out.push(("jemalloc_frees_per_sec", rate(t.frees, before.frees)));
            }
            self.last = Some((now, t));
        }
        Ok(out)
    }

    /// Cumulative requests and bytes over every size class (after an epoch
    /// advance).
    fn totals(&self) -> Option<Totals> {
        let classes = self.classes.as_ref()?;
        let mut t = Totals::default();
        for (prefix, size) in classes {
            let requests = read_u64(&format!("{prefix}.nrequests"))?;
            let frees = read_u64(&format!("{prefix}.ndalloc"))?;
            t.bytes = t.bytes.wrapping_add(requests.wrapping_mul(*size));
            t.allocs = t.allocs.wrapping_add(requests);
            t.frees = t.frees.wrapping_add(frees);
        }
        Some(t)
    }
}

/// The statistics prefix and size of every size class.
fn size_classes() -> Option<Vec<(String, u64)>> {
    let nbins = read_u32("arenas.nbins")?;
    let nlextents = read_u32("arenas.nlextents")?;
    let mut classes = Vec::with_capacity((nbins + nlextents) as usize);
    for j in 0..nbins {
        let size = read_usize(&format!("arenas.bin.{j}.size"))?;
        classes.push((format!("stats.arenas.{ARENAS_ALL}.bins.{j}"), size as u64));
    }
    for j in 0..nlextents {
        let size = read_usize(&format!("arenas.lextent.{j}.size"))?;
        classes.push((
            format!("stats.arenas.{ARENAS_ALL}.lextents.{j}"),
            size as u64,
        ));
    }
    // The counters exist only with statistics compiled in.
    read_u64(&format!("{}.nrequests", classes.first()?.0))?;
    Some(classes)
}

fn read_u64(name: &str) -> Option<u64> {
    let name = format!("{name}\0");
    // SAFETY: every name read through this function is a jemalloc 5
    // statistic of type uint64_t; the name is NUL-terminated.
    unsafe { raw::read::<u64>(name.as_bytes()) }.ok()
}

fn read_usize(name: &str) -> Option<usize> {
    let name = format!("{name}\0");
    // SAFETY: `arenas.bin.<j>.size` and `arenas.lextent.<j>.size` are
    // size_t; the name is NUL-terminated.
    unsafe { raw::read::<usize>(name.as_bytes()) }.ok()
}

fn read_u32(name: &str) -> Option<u32> {
    let name = format!("{name}\0");
    // SAFETY: `arenas.nbins` and `arenas.nlextents` are unsigned (32-bit);
    // the name is NUL-terminated.
    unsafe { raw::read::<u32>(name.as_bytes()) }.ok()
}

/// `metrics.json`: a JSON array of `[name, number]` pairs.
pub(crate) fn to_json(pairs: &[(&str, f64)]) -> Vec<u8> {
    let array: Vec<serde_json::Value> = pairs
        .iter()
        .map(|(name, value)| {
            let number = serde_json::Number::from_f64(*value).unwrap_or_else(|| 0.into());
            serde_json::json!([name, number])
        })
        .collect();
    serde_json::to_vec(&array).expect("a JSON array of strings and numbers serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_json_is_pairs() {
        let json = to_json(&[("a", 1.0), ("b", 2.5)]);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"[["a",1.0],["b",2.5]]"#
        );
    }
}
