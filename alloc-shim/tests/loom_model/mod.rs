//! The loom model runner shared by the model checks of this crate's tests
//! (`loom.rs`, `cpu_ring_loom.rs`).

/// Runs `f` under every interleaving with at most 3 preemptions per
/// execution, unless `LOOM_MAX_PREEMPTIONS` says otherwise, and reports how
/// many executions that took (`--nocapture` shows it).
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    let start = std::time::Instant::now();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "{} executions in {:.1?} (preemption bound {:?})",
        runs.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed(),
        builder.preemption_bound,
    );
}
