//! The heap profile: the sampling allocator's snapshot as pprof.
//!
//! Once per period the profiler takes [`ferroprof_alloc::snapshot`] (per
//! stack: return addresses and the unbiased estimates of objects and bytes
//! allocated since start and still in use), symbolizes the stacks, trims
//! the allocator's own frames, and builds a profile with Go's four sample
//! types: `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count`,
//! `inuse_space/bytes`, period type `space/bytes`, period the sampling
//! interval. [`HeapProfiler`] then turns the cumulative `alloc_*` values
//! into the change since its previous profile (the first is cumulative) and
//! encodes the result.
//!
//! What the stacks look like:
//!
//! - Frames are return addresses; each is looked up one byte earlier so it
//!   names the call, not the instruction after it, and the location keeps
//!   that address.
//! - The frames of ferroprof's allocator and of the `__rust_alloc` shims are
//!   cut, so the leaf is the code that asked for memory (`alloc::…` frames
//!   such as `RawVec` growth stay above the user's frame, as in Go).
//! - A stack cut at the frame limit ends in `[ferroprof: truncated stack]`;
//!   samples whose stack did not fit in the stack table are under the one
//!   stack `[ferroprof: stack table full]`; samples the sampler could not
//!   record at all are counted in the profile's comments.

use std::time::{Duration, SystemTime};

use ferroprof_alloc::HeapSnapshot;

use crate::pprof::fasthash::IntMap;
use crate::pprof::{self, Locations, Profile, ProfileBuilder, Symbolizer};

/// The heap profile's sample types, in order.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// The frame ending a stack that was cut at the frame limit.
pub const TRUNCATED_FRAME: &str = "[ferroprof: truncated stack]";
/// The stack of samples whose stack did not fit in the stack table.
pub const STACK_TABLE_FULL_FRAME: &str = "[ferroprof: stack table full]";

/// Builds heap profiles period after period, with deltas.
#[derive(Debug)]
pub struct HeapProfiler {
    delta: pprof::Delta,
    last: SystemTime,
}

impl Default for HeapProfiler {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapProfiler {
    /// A profiler whose first period starts now.
    pub fn new() -> Self {
        HeapProfiler {
            delta: pprof::Delta::new(&["alloc_objects", "alloc_space"]),
            last: SystemTime::now(),
        }
    }

    /// One period: snapshot, profile, delta. Returns the profile to send;
    /// [`pprof::encode`] turns it into bytes.
    pub fn collect(&mut self, symbolizer: &mut Symbolizer) -> Profile {
        let snapshot = ferroprof_alloc::snapshot();
        let now = SystemTime::now();
        let duration = now.duration_since(self.last).unwrap_or_default();
        self.last = now;
        self.delta_of(build(&snapshot, symbolizer, now, duration))
    }

    /// Applies the delta to a cumulative profile from [`build`].
    pub fn delta_of(&mut self, cumulative: Profile) -> Profile {
        self.delta.apply(cumulative)
    }

    /// The delta's counters.
    pub fn delta_stats(&self) -> pprof::DeltaStats {
        self.delta.stats()
    }
}

/// Builds the cumulative heap profile of `snapshot`, taken at `time` and
/// covering `duration`, and ends the symbolizer's batch.
pub fn build(
    snapshot: &HeapSnapshot,
    symbolizer: &mut Symbolizer,
    time: SystemTime,
    duration: Duration,
) -> Profile {
    let profile = build_in_batch(snapshot, symbolizer, time, duration);
    symbolizer.end_batch();
    profile
}

/// [`build`] without ending the symbolizer's batch: the profiler ends one
/// batch per period, after the CPU profile too, so that neither profile's
/// addresses count as unused when the cache is trimmed.
pub(crate) fn build_in_batch(
    snapshot: &HeapSnapshot,
    symbolizer: &mut Symbolizer,
    time: SystemTime,
    duration: Duration,
) -> Profile {
    let period = i64::try_from(snapshot.sample_interval).unwrap_or(i64::MAX);
    let mut b = ProfileBuilder::new(&SAMPLE_TYPES, ("space", "bytes"), period);
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    b.time(nanos(since_epoch), nanos(duration));
    let s = &snapshot.stats;
    b.comment(&format!(
        "ferroprof heap: {} samples; dropped {} (live table full {}, region {}, not ready {}); \
         {} samples under the stack-table-full stack; live blocks {} of {}; stacks {} of {}",
        s.samples,
        s.dropped,
        s.dropped_table_full,
        s.dropped_region,
        s.dropped_not_ready,
        s.stack_overflow_samples,
        s.live_blocks,
        s.live_capacity,
        s.stacks,
        s.stack_capacity,
    ));
    b.comment(&memory_comment(s));

    let mut stacks = StackBuilder::new(&mut b, symbolizer);
    stacks.resolve_all(&mut b, symbolizer, snapshot);
    for stack in &snapshot.stacks {
        let values = [
            round(stack.alloc_objects),
            saturate(stack.alloc_bytes),
            round(stack.inuse_objects),
            saturate(stack.inuse_bytes),
        ];
        if values == [0; 4] {
            continue;
        }
        let locations = if stack.overflow {
            vec![b.synthetic_location(STACK_TABLE_FULL_FRAME)]
        } else {
            let mut locations = stacks.locations(&mut b, symbolizer, &stack.frames);
            if stack.truncated {
                locations.push(b.synthetic_location(TRUNCATED_FRAME));
            }
            locations
        };
        b.sample_vec(locations, &values, &[]);
    }
    b.build()
}

/// Turns return-address stacks into trimmed location ids, remembering each
/// address's location for the rest of the profile.
struct StackBuilder {
    /// Return address -> its location id, and whether it is allocator
    /// machinery.
    seen: IntMap<u64, (u64, bool)>,
    locations: Locations,
}

impl StackBuilder {
    fn new(b: &mut ProfileBuilder, symbolizer: &mut Symbolizer) -> Self {
        StackBuilder {
            seen: IntMap::default(),
            locations: Locations::new(b, symbolizer),
        }
    }

    /// Resolves every distinct frame of the snapshot in address order:
    /// DWARF is then read unit after unit, which is faster and lets the
    /// symbolizer drop what it parsed as it goes (its memory bound).
    fn resolve_all(
        &mut self,
        b: &mut ProfileBuilder,
        symbolizer: &mut Symbolizer,
        snapshot: &HeapSnapshot,
    ) {
        let mut distinct = IntMap::<u64, ()>::default();
        for stack in &snapshot.stacks {
            for &ret in &stack.frames {
                distinct.insert(ret, ());
            }
        }
        let mut distinct: Vec<u64> = distinct.into_keys().collect();
        distinct.sort_unstable();
        self.seen.reserve(distinct.len());
        for ret in distinct {
            let seen = self.resolve(b, symbolizer, ret);
            self.seen.insert(ret, seen);
        }
    }

    fn locations(
        &mut self,
        b: &mut ProfileBuilder,
        symbolizer: &mut Symbolizer,
        frames: &[u64],
    ) -> Vec<u64> {
        let mut out = Vec::with_capacity(frames.len() + 1);
        for &ret in frames {
            let (id, machinery) = match self.seen.get(&ret) {
                Some(&seen) => seen,
                None => {
                    let seen = self.resolve(b, symbolizer, ret);
                    self.seen.insert(ret, seen);
                    seen
                }
            };
            // Machinery is cut only at the leaf end: the profiler's own
            // allocations keep their ferroprof frames above the leaf.
            if !(machinery && out.is_empty()) {
                out.push(id);
            }
        }
        out
    }

    /// The location of a return address, and whether it is the allocator's.
    fn resolve(
        &mut self,
        b: &mut ProfileBuilder,
        symbolizer: &mut Symbolizer,
        ret: u64,
    ) -> (u64, bool) {
        let (id, symbol) = self.locations.resolve(b, symbolizer, ret.saturating_sub(1));
        let machinery = symbol.frames.iter().any(|f| is_machinery(&f.function));
        (id, machinery)
    }
}

/// Frames of the allocator itself: ferroprof's code and the global
/// allocator shims rustc generates.
fn is_machinery(function: &str) -> bool {
    const SHIMS: [&str; 8] = [
        "__rust_alloc",
        "__rust_alloc_zeroed",
        "__rust_realloc",
        "__rust_dealloc",
        "__rg_alloc",
        "__rg_alloc_zeroed",
        "__rg_realloc",
        "__rg_dealloc",
    ];
    let path = function.strip_prefix('<').unwrap_or(function);
    path.starts_with("ferroprof_alloc::")
        || path.starts_with("ferroprof::")
        || SHIMS.contains(&function)
}

fn round(estimate: f64) -> i64 {
    // `as` saturates and maps NaN to 0.
    estimate.round() as i64
}

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What the heap profiler keeps of its own: the tables, the sampled blocks
/// (block sizes) and the region's committed memory, the stack walks'
/// caches and the unwind tables copied out of shared libraries.
fn memory_comment(s: &ferroprof_alloc::Stats) -> String {
    format!(
        "ferroprof memory: tables {} B, sampled blocks {} B (region committed {} B), \
         unwinder caches {} B, unwind table copies {} B",
        s.table_bytes, s.region_in_use, s.region_committed, s.unwind_cache_bytes, s.unwind_copies,
    )
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machinery_is_recognized_by_name() {
        for name in [
            "__rust_alloc",
            "__rg_realloc",
            "ferroprof_alloc::allocator::alloc_slow",
            "<ferroprof_alloc::SamplingAllocator<A> as core::alloc::global::GlobalAlloc>::alloc",
            "ferroprof::heap::build",
        ] {
            assert!(is_machinery(name), "{name}");
        }
        for name in [
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "my_service::handler",
            "<my_service::Cache as ferroprof_alloc::Fake>::insert",
            "__rust_alloc_error_handler",
        ] {
            assert!(!is_machinery(name), "{name}");
        }
    }

    #[test]
    fn the_profilers_own_memory_is_in_a_comment() {
        let mut stats = ferroprof_alloc::Stats::default();
        stats.table_bytes = 11;
        stats.region_in_use = 22;
        stats.region_committed = 33;
        stats.unwind_cache_bytes = 44;
        stats.unwind_copies = 55;
        let snapshot = HeapSnapshot {
            stacks: Vec::new(),
            stats,
            sample_interval: 512 << 10,
        };
        let mut symbolizer = Symbolizer::default();
        let p = build(
            &snapshot,
            &mut symbolizer,
            SystemTime::now(),
            Duration::from_secs(60),
        );
        let comments: Vec<&str> = p
            .comment
            .iter()
            .map(|&i| p.string_table[i as usize].as_str())
            .collect();
        assert!(
            comments.contains(
                &"ferroprof memory: tables 11 B, sampled blocks 22 B (region committed 33 B), \
                  unwinder caches 44 B, unwind table copies 55 B"
            ),
            "{comments:?}"
        );
    }

    #[test]
    fn estimates_round_and_saturate() {
        assert_eq!(round(2.5), 3);
        assert_eq!(round(f64::NAN), 0);
        assert_eq!(round(1e30), i64::MAX);
        assert_eq!(saturate(u64::MAX), i64::MAX);
    }
}
