//! The CPU profile: the period's samples, aggregated by thread and stack,
//! as pprof.
//!
//! The signal handler stores raw records (thread id, the interrupted
//! instruction and return addresses, flags, weight); once per period the
//! profiler thread folds them here into counts per `(thread, stack)` and
//! builds `cpu.pprof` with Go's sample types `samples/count` and
//! `cpu/nanoseconds`, period type `cpu/nanoseconds`, period `1e9 / hz`, and
//! the labels `thread id` (numeric) and `thread name` (from
//! `/proc/self/task/<tid>/comm`, read while the thread is alive).
//!
//! Frame 0 of a record is the interrupted instruction itself and is looked
//! up as is; the others are return addresses, looked up one byte earlier so
//! they name the call. Synthetic frames say what the handler could not do:
//! `[ferroprof: truncated stack]` at the root of a stack cut at the frame
//! limit, `[ferroprof: stack not walked]` above a lone instruction when the
//! walk was impossible, and one sample `[ferroprof: dropped samples]`
//! carrying the samples the ring had no room for.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::pprof::fasthash::IntMap;
use crate::pprof::{LabelValue, Locations, Profile, ProfileBuilder, Symbolizer};

/// The CPU profile's sample types, in order.
pub const SAMPLE_TYPES: [(&str, &str); 2] = [("samples", "count"), ("cpu", "nanoseconds")];
/// The root frame of a stack cut at the frame limit.
pub const TRUNCATED_FRAME: &str = "[ferroprof: truncated stack]";
/// The frame above a sample whose stack could not be walked.
pub const NOT_WALKED_FRAME: &str = "[ferroprof: stack not walked]";
/// The frame of the sample counting what the buffer dropped.
pub const DROPPED_FRAME: &str = "[ferroprof: dropped samples]";

/// Sample counts of one period, by thread and stack.
#[derive(Debug, Default)]
pub struct Aggregator {
    stacks: HashMap<StackKey, u64>,
    names: IntMap<i32, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StackKey {
    tid: i32,
    frames: Box<[u64]>,
    truncated: bool,
    walked: bool,
}

impl Aggregator {
    /// Counts one record of `weight` samples.
    pub fn add(&mut self, tid: i32, frames: &[u64], truncated: bool, walked: bool, weight: u64) {
        let key = StackKey {
            tid,
            frames: frames.into(),
            truncated,
            walked,
        };
        *self.stacks.entry(key).or_insert(0) += weight;
        self.names
            .entry(tid)
            .or_insert_with(|| thread_name(tid).unwrap_or_default());
    }

    /// Distinct `(thread, stack)` pairs so far.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    /// Nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// Builds the period's profile and starts the next period empty.
    /// `dropped` samples are reported under [`DROPPED_FRAME`]. Ends the
    /// symbolizer's batch.
    pub fn build(
        &mut self,
        symbolizer: &mut Symbolizer,
        hz: u32,
        dropped: u64,
        time: SystemTime,
        duration: Duration,
    ) -> Profile {
        let profile = self.build_in_batch(symbolizer, hz, dropped, time, duration);
        symbolizer.end_batch();
        profile
    }

    /// [`build`](Self::build) without ending the symbolizer's batch (the
    /// profiler ends one batch per period, after the heap profile too).
    pub(crate) fn build_in_batch(
        &mut self,
        symbolizer: &mut Symbolizer,
        hz: u32,
        dropped: u64,
        time: SystemTime,
        duration: Duration,
    ) -> Profile {
        let period = 1_000_000_000 / i64::from(hz.max(1));
        let mut b = ProfileBuilder::new(&SAMPLE_TYPES, ("cpu", "nanoseconds"), period);
        let since_epoch = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        b.time(nanos(since_epoch), nanos(duration));
        // Deterministic output: samples in a sorted order.
        let mut stacks: Vec<(StackKey, u64)> = self.stacks.drain().collect();
        stacks.sort_unstable_by(|a, b| {
            a.0.tid
                .cmp(&b.0.tid)
                .then_with(|| a.0.frames.cmp(&b.0.frames))
        });
        let mut locations: IntMap<u64, u64> = IntMap::default();
        let mut declared = Locations::new(&mut b, symbolizer);
        for (key, count) in &stacks {
            let mut ids = Vec::with_capacity(key.frames.len() + 2);
            for (i, &frame) in key.frames.iter().enumerate() {
                let address = if i == 0 {
                    frame
                } else {
                    frame.saturating_sub(1)
                };
                let id = match locations.get(&address) {
                    Some(&id) => id,
                    None => {
                        let (id, _) = declared.resolve(&mut b, symbolizer, address);
                        locations.insert(address, id);
                        id
                    }
                };
                ids.push(id);
            }
            if !key.walked {
                ids.push(b.synthetic_location(NOT_WALKED_FRAME));
            }
            if key.truncated {
                ids.push(b.synthetic_location(TRUNCATED_FRAME));
            }
            let count = i64::try_from(*count).unwrap_or(i64::MAX);
            let name = self.names.get(&key.tid).map_or("", String::as_str);
            let mut labels = vec![("thread id", LabelValue::Num(i64::from(key.tid), ""))];
            if !name.is_empty() {
                labels.push(("thread name", LabelValue::Str(name)));
            }
            b.sample_vec(ids, &[count, count.saturating_mul(period)], &labels);
        }
        if dropped > 0 {
            let dropped = i64::try_from(dropped).unwrap_or(i64::MAX);
            let id = b.synthetic_location(DROPPED_FRAME);
            b.sample(&[id], &[dropped, dropped.saturating_mul(period)], &[]);
        }
        self.names.clear();
        b.build()
    }
}

/// A live thread's name, from `/proc/self/task/<tid>/comm`.
fn thread_name(tid: i32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
    Some(name.trim_end_matches('\n').to_owned())
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_cpu_bound_function() -> u64 {
        std::hint::black_box(7)
    }

    fn tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    #[test]
    fn samples_aggregate_by_thread_and_stack_with_labels() {
        let leaf = a_cpu_bound_function as *const () as u64 + 1;
        let caller = samples_aggregate_by_thread_and_stack_with_labels as *const () as u64 + 8;
        let mut agg = Aggregator::default();
        let me = tid();
        agg.add(me, &[leaf, caller], false, true, 1);
        agg.add(me, &[leaf, caller], false, true, 2);
        agg.add(me, &[leaf], true, true, 1);
        agg.add(me, &[leaf], false, false, 1);
        assert_eq!(agg.len(), 3);
        let p = agg.build(
            &mut Symbolizer::default(),
            100,
            5,
            SystemTime::now(),
            Duration::from_secs(1),
        );
        assert!(agg.is_empty(), "the next period starts empty");
        assert_eq!(p.period, 10_000_000);
        let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 3 + 1 + 1 + 5);
        let cpu: i64 = p.sample.iter().map(|s| s.value[1]).sum();
        assert_eq!(cpu, total * 10_000_000);
        let function_of = |loc: u64| {
            let l = &p.location[loc as usize - 1];
            let f = &p.function[l.line.last().unwrap().function_id as usize - 1];
            p.str(f.name).to_owned()
        };
        let leaf_sample = p.sample.iter().find(|s| s.value[0] == 3).unwrap();
        assert!(function_of(leaf_sample.location_id[0]).ends_with("a_cpu_bound_function"));
        let label = |s: &crate::pprof::Sample, key: &str| {
            s.label.iter().find(|l| p.str(l.key) == key).copied()
        };
        assert_eq!(label(leaf_sample, "thread id").unwrap().num, i64::from(me));
        assert!(label(leaf_sample, "thread name").is_some());
        let roots: Vec<String> = p
            .sample
            .iter()
            .map(|s| function_of(*s.location_id.last().unwrap()))
            .collect();
        for synthetic in [TRUNCATED_FRAME, NOT_WALKED_FRAME, DROPPED_FRAME] {
            assert!(
                roots.iter().any(|r| r == synthetic),
                "{synthetic} in {roots:?}"
            );
        }
        crate::pprof::check(&p).unwrap();
    }
}
