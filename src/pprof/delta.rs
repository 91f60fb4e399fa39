//! Delta profiles: cumulative counters turned into the change since the
//! previous profile, as Datadog's profilers send them.
//!
//! # What and why
//!
//! The heap profile's `alloc_objects` and `alloc_space` count everything a
//! stack has allocated since the process started: they only grow. A backend
//! that aggregates profiles over time (Datadog adds the profiles of a period
//! together) needs each profile to carry what happened *during* its period,
//! so before sending, [`Delta::apply`] replaces every value of a
//! *cumulative* sample type with its difference from the previous profile's
//! value for the same sample. Other sample types (`inuse_objects`,
//! `inuse_space`) are snapshots and pass through unchanged. A sample whose
//! values are then all zero carries nothing and is dropped; in a steady
//! heap profile that is most of them, which is where the bandwidth saving
//! comes from.
//!
//! The first profile (and the first after [`Delta::reset`]) has no
//! predecessor, so its values stay cumulative; everything else `apply` does
//! still happens to it: duplicate samples are merged, all-zero samples
//! dropped, negative cumulative values read as 0 and unused table entries
//! pruned. A Go heap profile, for instance, lists every mapping of the
//! process: the ones no remaining location uses vanish, so `mapping[0]`
//! (which pprof takes for the main binary) may become another mapping.
//!
//! # The matching key
//!
//! The profiles of consecutive periods come from different
//! [`ProfileBuilder`](super::ProfileBuilder)s (or from anywhere, decoded),
//! so their location ids and string indexes mean nothing across periods and
//! are never used as keys. A sample is identified by what it means:
//!
//! - its stack, leaf first, each location resolved to its instruction
//!   `address`; a synthetic location (address 0, e.g.
//!   `[ferroprof: truncated stack]`) by the names of the functions on its
//!   lines instead; a location id with no location (only in a profile that
//!   did not pass [`check`](super::check)) by the id itself;
//! - its labels, each resolved to strings (key, string value, number, unit)
//!   and sorted, so label order does not matter.
//!
//! The key is not stored. Its bytes (64-bit words and length-prefixed
//! strings) are written into a buffer reused for every sample of a call and
//! hashed once by each of two `std` SipHash-1-3 hashers, giving a 128-bit
//! fingerprint. The two [`RandomState`]s are made once per `Delta`, so
//! fingerprints compare across its calls, and their keys are random and
//! secret, so input cannot be crafted to collide. Two different keys collide
//! with probability about 2^-128 per pair, which is accepted: a collision
//! would merge two stacks' deltas, never panic or go negative. The bytes are
//! prefix-free (counts and lengths first, a zero word, which no address is,
//! before the rare non-address frame), so different keys never give the same
//! bytes. Where location ids are dense (always, from a builder or from Go)
//! an id becomes its address with one array load. Two samples of one
//! profile with the same key are merged first: values summed (the shorter
//! list first extended with zeros), the first one's locations and labels
//! kept.
//!
//! # State and pruning
//!
//! Between calls `Delta` keeps, for the keys of the *last* profile only, the
//! fingerprint and the cumulative values seen: a map from fingerprint to a
//! slot (a 16-byte key and an 8-byte slot, plus the table's control byte
//! and slack) and the slots' values in a flat `Vec<i64>` (8 bytes per
//! cumulative type). Each call builds a new map and value list for the
//! current profile and replaces the old ones, so keys absent from it are
//! forgotten and a huge profile's state goes with the next, smaller one.
//! That is about 60 bytes a stack for the heap profile (560 KiB for 10 000
//! stacks): memory follows the size of the last profile, not every stack
//! ever seen. Go's `fastdelta` (dd-trace-go, PR #1511, October 2022) keeps
//! the values of every sample hash it has ever seen in one map (`dm.m` in
//! `delta_map.go`) and never prunes it, so its state grows with every stack
//! the process has ever reported. (The out-of-memory kills of
//! dd-trace-go#1025 predate it: they came from the older delta method,
//! whose memory grew with the runtime's profiling bucket table.)
//!
//! The price: a stack that is absent from one profile and comes back later
//! is reported with its full cumulative value again, as if new. The heap
//! profile never does this, because the allocator's stack table keeps every
//! stack (with its counters) for the life of the process, so each heap
//! profile lists every stack that ever allocated.
//!
//! # Resets
//!
//! A sample with any cumulative value below its previous one had its
//! counters restarted (another process behind the same profiler, a counter
//! wrapped or cleared): its delta is then all of its current cumulative
//! values, the counts since the restart. `[7, 700]` then `[9, 650]` gives
//! `[9, 650]`, not `[2, 650]`, which would mix "since the last profile" with
//! "since the restart". Cumulative values are never negative: a negative one
//! (only in foreign input) is read as 0; snapshot values are left as they
//! are. A profile whose sample types (names and units, in order) differ
//! from the previous one's cannot be compared with it, so history is dropped
//! and it passes through cumulative. Each restarted sample and each such
//! profile counts one in [`DeltaStats::resets`].
//!
//! # Tables
//!
//! Samples are changed in place and dropped samples removed, keeping their
//! order. The tables are then pruned to what the remaining samples use:
//! locations no sample refers to, functions and mappings no remaining
//! location refers to, and strings nothing refers to are removed (ids are
//! kept, string indexes renumbered in order), so dropping zero samples
//! really shrinks the profile. A string index out of range (only in
//! unchecked input) becomes 0, `""`.
//!
//! # Cost
//!
//! `apply` is linear: one pass over the tables to index them by id, one
//! hash of every sample's frames and labels, one lookup in each of the two
//! maps per sample, then the pruning pass. It allocates nothing per sample;
//! its working buffers (a few dozen bytes per sample and per location) live
//! only for the call. 10 000 samples of 32 frames take a few milliseconds,
//! under half of it building and hashing keys (`benches/ferroprof/benches/pprof.rs`, row
//! `export/delta_10k_x32`).

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

use super::proto::{Profile, Sample};

/// Turns consecutive cumulative profiles into deltas; see the module docs.
pub struct Delta {
    /// Names of the sample types whose values are cumulative.
    cumulative: Vec<String>,
    /// The previous profile's sample types as `(type, unit)`; `None` when
    /// there is no history (new, or just [`reset`](Self::reset)).
    types: Option<Vec<(String, String)>>,
    /// Fingerprint → slot, for exactly the keys of the previous profile.
    prev: KeyMap,
    /// The previous profile's cumulative values: slot `s`'s value for the
    /// `i`th cumulative type of the profile is `prev_values[s * c + i]`,
    /// `c` the number of cumulative types.
    prev_values: Vec<i64>,
    /// The two hashers of every fingerprint, fixed for the `Delta`'s life.
    hashers: [RandomState; 2],
    /// Lifetime counters and the last call's drop count; `keys` is not kept
    /// here but read from `prev` by [`stats`](Self::stats).
    stats: DeltaStats,
}

/// What a [`Delta`] holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Keys (distinct stacks with labels) held between calls: those of the
    /// last profile.
    pub keys: usize,
    /// Samples dropped by the last [`Delta::apply`] because all their values
    /// were zero after the delta (merged duplicates are not counted).
    pub dropped_zero: u64,
    /// Resets seen since the `Delta` was made: samples with a cumulative
    /// value below the previous one (each counts once, however many of its
    /// values went down), plus profiles whose sample types differed from
    /// the previous profile's.
    pub resets: u64,
}

impl Delta {
    /// Values of the sample types named here are cumulative and get deltas.
    ///
    /// For the heap profile: `Delta::new(&["alloc_objects", "alloc_space"])`.
    /// Types are matched by name whatever their unit.
    pub fn new(cumulative_types: &[&str]) -> Self {
        Delta {
            cumulative: cumulative_types.iter().map(|&t| t.to_owned()).collect(),
            types: None,
            prev: KeyMap::default(),
            prev_values: Vec::new(),
            hashers: [RandomState::new(), RandomState::new()],
            stats: DeltaStats::default(),
        }
    }

    /// Turns a cumulative profile into the delta since the last call;
    /// returns the profile to send.
    ///
    /// Cumulative values become differences (never negative), samples with
    /// the same stack and labels are merged, all-zero samples are dropped
    /// and unused table entries pruned; everything else (times, period,
    /// comments) is kept. Never panics, even on a profile that would fail
    /// [`check`](super::check).
    pub fn apply(&mut self, mut profile: Profile) -> Profile {
        self.check_types(&profile);
        let cumulative_at: Vec<usize> = profile
            .sample_type
            .iter()
            .enumerate()
            .filter(|(_, vt)| {
                let name = string(&profile.string_table, vt.r#type);
                self.cumulative.iter().any(|c| c == name)
            })
            .map(|(t, _)| t)
            .collect();
        let tables = Tables::new(&profile);
        let Profile {
            sample: samples,
            string_table: strings,
            ..
        } = &mut profile;

        // Pass 1: the key of every sample. The first sample of each key owns
        // a slot and looks up the key's previous slot; later ones are summed
        // into it.
        let mut next = KeyMap::with_capacity_and_hasher(samples.len(), Default::default());
        let mut owners: Vec<(usize, Option<usize>)> = Vec::new();
        let (mut bytes, mut labels) = (Vec::new(), Vec::new());
        for i in 0..samples.len() {
            tables.key(&samples[i], strings, &mut bytes, &mut labels);
            let [a, b] = self.hashers.each_ref().map(|h| {
                let mut h = h.build_hasher();
                h.write(&bytes);
                h.finish()
            });
            match next.entry(Key(a, b)) {
                Entry::Vacant(e) => {
                    owners.push((i, self.prev.get(e.key()).copied()));
                    e.insert(owners.len() - 1);
                }
                Entry::Occupied(e) => {
                    // The owner came earlier: `owner < i`.
                    let (head, tail) = samples.split_at_mut(i);
                    let into = &mut head[owners[*e.get()].0].value;
                    let from = &tail[0].value;
                    if into.len() < from.len() {
                        into.resize(from.len(), 0);
                    }
                    for (a, b) in into.iter_mut().zip(from) {
                        *a = a.saturating_add(*b);
                    }
                }
            }
        }

        // Pass 2: per slot, the delta against the previous profile; the
        // current cumulative values become the next state.
        let c = cumulative_at.len();
        let mut values = Vec::with_capacity(owners.len() * c);
        let mut keep = vec![false; samples.len()];
        let mut dropped = 0;
        for (slot, &(i, before)) in owners.iter().enumerate() {
            let sample = &mut samples[i];
            let now = cumulative_at.iter().map(|&t| sample.value.get(t));
            values.extend(now.map(|v| v.map_or(0, |&v| v.max(0))));
            let now = &values[slot * c..];
            let then = before.and_then(|s| self.prev_values.get(s * c..(s + 1) * c));
            let then = match then {
                // A value went down: the counters restarted, the delta is
                // all of `now`.
                Some(then) if now.iter().zip(then).any(|(n, t)| n < t) => {
                    self.stats.resets += 1;
                    &[]
                }
                then => then.unwrap_or_default(),
            };
            for (k, &t) in cumulative_at.iter().enumerate() {
                if let Some(v) = sample.value.get_mut(t) {
                    *v = now[k] - then.get(k).unwrap_or(&0);
                }
            }
            keep[i] = sample.value.iter().any(|&v| v != 0);
            dropped += u64::from(!keep[i]);
        }
        retain(samples, &keep);
        self.stats.dropped_zero = dropped;

        tables.prune(&mut profile);
        self.prev = next;
        self.prev_values = values;
        profile
    }

    /// What the `Delta` holds and has done.
    pub fn stats(&self) -> DeltaStats {
        DeltaStats {
            keys: self.prev.len(),
            ..self.stats
        }
    }

    /// Forgets history: the next profile passes through cumulative. Keeps
    /// the counters of [`stats`](Self::stats) other than `keys`.
    pub fn reset(&mut self) {
        self.types = None;
        self.prev = KeyMap::default();
        self.prev_values = Vec::new();
    }

    /// Drops history if `profile`'s sample types are not the previous
    /// profile's, and remembers them.
    fn check_types(&mut self, profile: &Profile) {
        let text = |i| string(&profile.string_table, i).to_owned();
        let types: Vec<(String, String)> = profile
            .sample_type
            .iter()
            .map(|vt| (text(vt.r#type), text(vt.unit)))
            .collect();
        if self.types.as_ref().is_some_and(|old| *old != types) {
            self.reset();
            self.stats.resets += 1;
        }
        self.types = Some(types);
    }
}

impl fmt::Debug for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delta")
            .field("cumulative", &self.cumulative)
            .field("types", &self.types)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The string at index `i`, or `""` if there is none.
fn string(strings: &[String], i: i64) -> &str {
    usize::try_from(i)
        .ok()
        .and_then(|i| strings.get(i))
        .map_or("", String::as_str)
}

/// Keeps the items of `v` whose flag in `keep` is set.
fn retain<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut keep = keep.iter();
    v.retain(|_| keep.next() == Some(&true));
}

/// A key's 128-bit fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// Fingerprint → slot, hashed by [`PassThrough`].
///
/// A fingerprint is already the output of SipHash under secret random keys:
/// its first word is uniform and input cannot steer it (no crafted
/// collisions flooding one bucket), so hashing it again would buy nothing.
type KeyMap = HashMap<Key, usize, BuildHasherDefault<PassThrough>>;

/// A hasher for [`Key`], which is already a hash: it keeps the word given.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; folds anything else in reasonably.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Ids to positions in a table: a `Vec` indexed by id when the ids are
/// dense enough (they are in every profile a builder or Go writes), a map
/// otherwise, so a hostile id like `u64::MAX` costs nothing.
enum IdIndex {
    /// The position of id `i` at index `i`, [`IdIndex::NONE`] for none.
    Dense(Vec<usize>),
    Sparse(HashMap<u64, usize>),
}

impl IdIndex {
    const NONE: usize = usize::MAX;

    fn new(ids: impl Iterator<Item = u64> + Clone) -> Self {
        let (len, max) = ids
            .clone()
            .fold((0, 0), |(len, max), id| (len + 1, id.max(max)));
        if max > 2 * len + 64 {
            return IdIndex::Sparse(ids.enumerate().map(|(pos, id)| (id, pos)).collect());
        }
        let mut dense = vec![Self::NONE; max as usize + 1];
        for (pos, id) in ids.enumerate() {
            dense[id as usize] = pos;
        }
        IdIndex::Dense(dense)
    }

    fn get(&self, id: u64) -> Option<usize> {
        match self {
            IdIndex::Dense(dense) => {
                let pos = *dense.get(usize::try_from(id).ok()?)?;
                (pos != Self::NONE).then_some(pos)
            }
            IdIndex::Sparse(sparse) => sparse.get(&id).copied(),
        }
    }
}

/// A label resolved to its strings: key, string value, number, unit.
type LabelText<'s> = (&'s str, &'s str, i64, &'s str);

/// A profile's tables indexed for one `apply`.
struct Tables {
    locations: IdIndex,
    functions: IdIndex,
    mappings: IdIndex,
    /// What the location at position `p` adds to a key's bytes:
    /// `frames[frame_at[p]..frame_at[p + 1]]`.
    frames: Vec<u8>,
    frame_at: Vec<usize>,
    /// When location ids are dense: the address of location `id` at index
    /// `id`, 0 for none or a synthetic location. The fast path of
    /// [`key`](Self::key): one load per frame.
    addresses: Vec<u64>,
}

impl Tables {
    fn new(p: &Profile) -> Self {
        let locations = IdIndex::new(p.location.iter().map(|l| l.id));
        let functions = IdIndex::new(p.function.iter().map(|f| f.id));
        let mappings = IdIndex::new(p.mapping.iter().map(|m| m.id));
        let mut frames = Vec::with_capacity(8 * p.location.len());
        let mut frame_at = Vec::with_capacity(p.location.len() + 1);
        frame_at.push(0);
        for loc in &p.location {
            if loc.address != 0 {
                word(&mut frames, loc.address);
            } else {
                // A zero word, which no address is, then 1: a synthetic frame.
                for w in [0, 1, loc.line.len() as u64] {
                    word(&mut frames, w);
                }
                for line in &loc.line {
                    if let Some(f) = functions.get(line.function_id) {
                        word(&mut frames, 1);
                        text(&mut frames, string(&p.string_table, p.function[f].name));
                    } else {
                        word(&mut frames, 2);
                        word(&mut frames, line.function_id);
                    }
                }
            }
            frame_at.push(frames.len());
        }
        let addresses = match &locations {
            IdIndex::Dense(dense) => dense
                .iter()
                .map(|&pos| p.location.get(pos).map_or(0, |l| l.address))
                .collect(),
            IdIndex::Sparse(_) => Vec::new(),
        };
        Tables {
            locations,
            functions,
            mappings,
            frames,
            frame_at,
            addresses,
        }
    }

    /// Writes the bytes of `sample`'s key into `bytes`; `labels` is a buffer
    /// for sorting them.
    fn key<'s>(
        &self,
        sample: &Sample,
        strings: &'s [String],
        bytes: &mut Vec<u8>,
        labels: &mut Vec<LabelText<'s>>,
    ) {
        let ids = &sample.location_id;
        bytes.clear();
        bytes.resize(8 * (ids.len() + 1), 0);
        bytes[..8].copy_from_slice(&(ids.len() as u64).to_le_bytes());
        // The fast path: dense ids of real locations, one load and one
        // store a frame (no length updates). Any other frame redoes them all.
        let mut fast = true;
        for (to, &id) in bytes[8..].chunks_exact_mut(8).zip(ids) {
            let address = usize::try_from(id).ok().and_then(|i| self.addresses.get(i));
            let address = address.copied().unwrap_or(0);
            fast &= address != 0;
            to.copy_from_slice(&address.to_le_bytes());
        }
        if !fast {
            bytes.truncate(8);
            for &id in ids {
                if let Some(p) = self.locations.get(id) {
                    bytes.extend_from_slice(&self.frames[self.frame_at[p]..self.frame_at[p + 1]]);
                } else {
                    // A zero word, then 2: a location id with no location.
                    for w in [0, 2, id] {
                        word(bytes, w);
                    }
                }
            }
        }
        labels.clear();
        labels.extend(sample.label.iter().map(|l| {
            let s = |i| string(strings, i);
            (s(l.key), s(l.str), l.num, s(l.num_unit))
        }));
        labels.sort_unstable();
        word(bytes, labels.len() as u64);
        for &(key, value, num, unit) in labels.iter() {
            text(bytes, key);
            text(bytes, value);
            word(bytes, num as u64);
            text(bytes, unit);
        }
    }

    /// Removes the locations no sample uses, the functions and mappings no
    /// remaining location uses and the strings nothing uses, renumbering
    /// string indexes (ids are kept). An out-of-range string index (only in
    /// unchecked input) becomes 0, `""`.
    fn prune(&self, p: &mut Profile) {
        fn mark(used: &mut [bool], pos: Option<usize>) {
            if let Some(u) = pos.and_then(|pos| used.get_mut(pos)) {
                *u = true;
            }
        }
        let ids = p.sample.iter().flat_map(|s| &s.location_id);
        let mut used_locations = vec![false; p.location.len()];
        match &self.locations {
            IdIndex::Dense(dense) => {
                // Mark by id first, a store a frame with no load to wait
                // for, then translate to positions.
                let mut used_ids = vec![false; dense.len()];
                ids.for_each(|&id| mark(&mut used_ids, usize::try_from(id).ok()));
                for (&pos, _) in dense.iter().zip(&used_ids).filter(|x| *x.1) {
                    mark(&mut used_locations, Some(pos));
                }
            }
            IdIndex::Sparse(_) => {
                ids.for_each(|&id| mark(&mut used_locations, self.locations.get(id)))
            }
        }
        let mut used_functions = vec![false; p.function.len()];
        let mut used_mappings = vec![false; p.mapping.len()];
        for (loc, _) in p.location.iter().zip(&used_locations).filter(|x| *x.1) {
            if loc.mapping_id != 0 {
                mark(&mut used_mappings, self.mappings.get(loc.mapping_id));
            }
            for line in &loc.line {
                mark(&mut used_functions, self.functions.get(line.function_id));
            }
        }
        retain(&mut p.location, &used_locations);
        retain(&mut p.function, &used_functions);
        retain(&mut p.mapping, &used_mappings);

        // Strings: mark, renumber in order, rewrite every reference.
        let mut used = vec![false; p.string_table.len()];
        mark(&mut used, Some(0));
        for_each_string(p, |i| mark(&mut used, usize::try_from(*i).ok()));
        let renumber: Vec<i64> = used
            .iter()
            .scan(0, |next, &u| {
                *next += i64::from(u);
                Some(*next - 1)
            })
            .collect();
        for_each_string(p, |i| {
            let new = usize::try_from(*i).ok().and_then(|i| renumber.get(i));
            *i = new.copied().unwrap_or(0);
        });
        retain(&mut p.string_table, &used);
    }
}

/// Adds a 64-bit word to a key's bytes.
fn word(bytes: &mut Vec<u8>, w: u64) {
    bytes.extend_from_slice(&w.to_le_bytes());
}

/// Adds a string to a key's bytes: its length, then its bytes.
fn text(bytes: &mut Vec<u8>, s: &str) {
    word(bytes, s.len() as u64);
    bytes.extend_from_slice(s.as_bytes());
}

/// Calls `f` on every string index of `p`.
fn for_each_string(p: &mut Profile, mut f: impl FnMut(&mut i64)) {
    for vt in p.sample_type.iter_mut().chain(&mut p.period_type) {
        f(&mut vt.r#type);
        f(&mut vt.unit);
    }
    for s in &mut p.sample {
        for l in &mut s.label {
            f(&mut l.key);
            f(&mut l.str);
            f(&mut l.num_unit);
        }
    }
    for m in &mut p.mapping {
        f(&mut m.filename);
        f(&mut m.build_id);
    }
    for func in &mut p.function {
        f(&mut func.name);
        f(&mut func.system_name);
        f(&mut func.filename);
    }
    for c in &mut p.comment {
        f(c);
    }
    f(&mut p.drop_frames);
    f(&mut p.keep_frames);
    f(&mut p.default_sample_type);
}
#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::pprof::{
        check, decode, encode, FrameLine, Function, Label, LabelValue, Line, Location, Mapping,
        MappingInfo, ProfileBuilder, ValueType,
    };

    const TYPES: [(&str, &str); 4] = [
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ];
    const CUMULATIVE: [&str; 2] = ["alloc_objects", "alloc_space"];
    const TRUNCATED: &str = "[ferroprof: truncated stack]";

    /// A small deterministic PRNG (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }

        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i as u64 + 1) as usize);
            }
        }
    }

    /// A sample to build: frames leaf first (address 0 is the synthetic
    /// truncation frame), values, labels.
    #[derive(Clone, Debug)]
    struct Spec {
        frames: Vec<u64>,
        values: [i64; 4],
        labels: Vec<(&'static str, String)>,
    }

    fn spec(frames: &[u64], values: [i64; 4]) -> Spec {
        Spec {
            frames: frames.to_vec(),
            values,
            labels: Vec::new(),
        }
    }

    fn function_name(address: u64) -> String {
        format!("fn_{address:x}")
    }

    /// Builds a profile of `specs`. With `rng`, the locations are created
    /// and the samples added in a random order, so ids differ per call.
    fn build(specs: &[Spec], rng: Option<&mut Rng>) -> Profile {
        let mut b = ProfileBuilder::new(&TYPES, ("space", "bytes"), 524288);
        let mut addresses: Vec<u64> = specs.iter().flat_map(|s| s.frames.clone()).collect();
        addresses.sort_unstable();
        addresses.dedup();
        let mut order: Vec<usize> = (0..specs.len()).collect();
        if let Some(rng) = rng {
            rng.shuffle(&mut addresses);
            rng.shuffle(&mut order);
            // Strings in a different order too.
            for _ in 0..rng.below(4) {
                b.string(&format!("noise {}", rng.next()));
            }
        }
        let mut ids = HashMap::new();
        for &a in &addresses {
            let id = if a == 0 {
                b.synthetic_location(TRUNCATED)
            } else {
                let name = function_name(a);
                b.location(
                    0,
                    a,
                    &[FrameLine {
                        function: &name,
                        system_name: "",
                        file: "src/lib.rs",
                        line: 1,
                    }],
                )
            };
            ids.insert(a, id);
        }
        for &i in &order {
            let s = &specs[i];
            let locs: Vec<u64> = s.frames.iter().map(|a| ids[a]).collect();
            let labels: Vec<(&str, LabelValue<'_>)> = s
                .labels
                .iter()
                .map(|(k, v)| (*k, LabelValue::Str(v)))
                .collect();
            b.sample(&locs, &s.values, &labels);
        }
        b.build()
    }

    /// A sample's meaning, resolved naively: frames (addresses, or for
    /// address 0 the names of the functions on the lines, joined by `|`)
    /// and sorted labels.
    type Meaning = (Vec<String>, Vec<(String, String, i64, String)>);

    fn meaning(p: &Profile, s: &Sample) -> Meaning {
        let frames = s
            .location_id
            .iter()
            .map(|id| {
                let loc = p.location.iter().find(|l| l.id == *id).unwrap();
                if loc.address != 0 {
                    return format!("{:#x}", loc.address);
                }
                let names = loc.line.iter().map(|line| {
                    let f = p.function.iter().find(|f| f.id == line.function_id);
                    p.str(f.unwrap().name)
                });
                names.collect::<Vec<_>>().join("|")
            })
            .collect();
        let mut labels: Vec<_> = s
            .label
            .iter()
            .map(|l| {
                let st = |i| p.str(i).to_owned();
                (st(l.key), st(l.str), l.num, st(l.num_unit))
            })
            .collect();
        labels.sort();
        (frames, labels)
    }

    /// The profile's values by meaning (samples with the same meaning summed).
    fn by_meaning(p: &Profile) -> HashMap<Meaning, Vec<i64>> {
        let mut out: HashMap<Meaning, Vec<i64>> = HashMap::new();
        for s in &p.sample {
            let e = out
                .entry(meaning(p, s))
                .or_insert_with(|| vec![0; s.value.len()]);
            for (a, b) in e.iter_mut().zip(&s.value) {
                *a += b;
            }
        }
        out
    }

    /// The state's heap bytes, estimated from capacities: the map keeps a
    /// power of two of buckets at most 7/8 full, each an entry and a
    /// control byte.
    fn state_bytes(delta: &Delta) -> usize {
        let buckets = (delta.prev.capacity() * 8 / 7).next_power_of_two();
        buckets * (std::mem::size_of::<(Key, usize)>() + 1) + 8 * delta.prev_values.capacity()
    }

    fn total(p: &Profile) -> Vec<i64> {
        let mut t = vec![0; p.sample_type.len()];
        for s in &p.sample {
            for (a, b) in t.iter_mut().zip(&s.value) {
                *a += b;
            }
        }
        t
    }

    #[test]
    fn the_first_profile_passes_through_cumulative() {
        let specs = [
            spec(&[0x10, 0x20], [3, 300, 1, 100]),
            spec(&[0x30, 0x20, 0], [5, 500, 0, 0]),
        ];
        let p = build(&specs, None);
        let mut delta = Delta::new(&CUMULATIVE);
        let out = delta.apply(p.clone());
        assert_eq!(out, p, "nothing to subtract, nothing unused");
        assert_eq!(
            delta.stats(),
            DeltaStats {
                keys: 2,
                dropped_zero: 0,
                resets: 0
            }
        );
    }

    #[test]
    fn deltas_over_many_periods_sum_to_the_cumulative_totals() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // 60 stacks over 40 addresses, a few with the synthetic frame, some
        // with labels; two specs share a stack so they get merged.
        let mut specs: Vec<Spec> = (0..60)
            .map(|i| {
                let depth = 1 + rng.below(12) as usize;
                let mut frames: Vec<u64> =
                    (0..depth).map(|_| 0x1000 + 16 * rng.below(40)).collect();
                if i % 7 == 0 {
                    frames.push(0);
                }
                let mut s = spec(&frames, [0; 4]);
                if i % 3 == 0 {
                    s.labels.push(("thread", format!("t{}", i % 2)));
                    s.labels.push(("kind", "io".to_owned()));
                }
                s
            })
            .collect();
        specs.push(specs[5].clone());
        let mut delta = Delta::new(&CUMULATIVE);
        let mut sums: HashMap<Meaning, Vec<i64>> = HashMap::new();
        let mut last = Profile::default();
        for period in 0..50 {
            for s in specs.iter_mut() {
                // Monotone growth, often none; inuse moves both ways.
                if rng.below(3) == 0 {
                    let n = rng.below(5) as i64;
                    s.values[0] += n;
                    s.values[1] += n * rng.below(4096) as i64;
                }
                s.values[2] = rng.below(3) as i64;
                s.values[3] = s.values[2] * 64;
            }
            let p = build(&specs, Some(&mut rng));
            let out = delta.apply(p.clone());
            check(&out).unwrap();
            for (meaning, values) in by_meaning(&out) {
                assert!(values.iter().any(|&v| v != 0), "period {period}");
                let e = sums.entry(meaning).or_insert_with(|| vec![0; 4]);
                for k in 0..2 {
                    assert!(values[k] >= 0);
                    e[k] += values[k];
                }
            }
            last = p;
        }
        let want = by_meaning(&last);
        assert_eq!(want.len(), 60, "the merged pair is one meaning");
        for (meaning, values) in &want {
            let got = sums.get(meaning).map_or(&[0, 0][..], |v| &v[..2]);
            assert_eq!(got, &values[..2], "{meaning:?}");
        }
        let overall: Vec<i64> = (0..2).map(|k| sums.values().map(|v| v[k]).sum()).collect();
        assert_eq!(overall, total(&last)[..2]);
        assert_eq!(delta.stats().keys, 60);
        assert_eq!(delta.stats().resets, 0);
    }

    #[test]
    fn inuse_values_stay_the_snapshot() {
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(build(&[spec(&[0x10], [10, 1000, 4, 400])], None));
        let out = delta.apply(build(&[spec(&[0x10], [12, 1200, 3, 300])], None));
        assert_eq!(out.sample[0].value, [2, 200, 3, 300]);
        // No allocations this period, but live memory: kept.
        let out = delta.apply(build(&[spec(&[0x10], [12, 1200, 3, 300])], None));
        assert_eq!(out.sample[0].value, [0, 0, 3, 300]);
    }

    #[test]
    fn all_zero_samples_are_dropped_and_no_value_is_ever_negative() {
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(build(
            &[
                spec(&[0x10], [10, 1000, 0, 0]),
                spec(&[0x20], [5, 500, 0, 0]),
                spec(&[0x30], [7, 700, 1, 100]),
            ],
            None,
        ));
        let out = delta.apply(build(
            &[
                spec(&[0x10], [10, 1000, 0, 0]), // unchanged: dropped
                spec(&[0x20], [2, 200, 0, 0]),   // went down: reset
                spec(&[0x30], [9, 650, 1, 100]), // one value down: reset
            ],
            None,
        ));
        let got = by_meaning(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[&(vec!["0x20".into()], vec![])], [2, 200, 0, 0]);
        assert_eq!(got[&(vec!["0x30".into()], vec![])], [9, 650, 1, 100]);
        let stats = delta.stats();
        assert_eq!((stats.keys, stats.dropped_zero, stats.resets), (3, 1, 2));
        assert_eq!(
            out.location.len(),
            2,
            "the dropped sample's location is pruned"
        );
        check(&out).unwrap();
        // Negative cumulative input (foreign profiles) reads as 0, which is
        // below the previous 2: a reset.
        let out = delta.apply(build(&[spec(&[0x20], [-5, 300, -1, 0])], None));
        assert_eq!(out.sample[0].value, [0, 300, -1, 0]);
        assert_eq!(delta.stats().resets, 3);
    }

    #[test]
    fn a_restarted_sample_reports_all_its_counters_since_the_restart() {
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(build(&[spec(&[0x10], [7, 700, 0, 0])], None));
        // Bytes went down: the counters restarted; 9 objects since then.
        let out = delta.apply(build(&[spec(&[0x10], [9, 650, 0, 0])], None));
        assert_eq!(out.sample[0].value, [9, 650, 0, 0]);
        assert_eq!(delta.stats().resets, 1);
    }

    #[test]
    fn labels_distinguish_samples_but_their_order_does_not() {
        let with = |labels: &[(&'static str, &str)], values| Spec {
            labels: labels.iter().map(|&(k, v)| (k, v.to_owned())).collect(),
            ..spec(&[0x10, 0x20], values)
        };
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(build(
            &[
                with(&[("a", "1"), ("b", "2")], [1, 10, 0, 0]),
                with(&[("a", "2")], [1, 10, 0, 0]),
                with(&[], [1, 10, 0, 0]),
            ],
            None,
        ));
        assert_eq!(delta.stats().keys, 3);
        let out = delta.apply(build(
            &[
                with(&[("b", "2"), ("a", "1")], [3, 30, 0, 0]),
                with(&[("a", "2")], [1, 10, 0, 0]),
                with(&[], [4, 40, 0, 0]),
            ],
            None,
        ));
        let got = by_meaning(&out);
        assert_eq!(got.len(), 2);
        let ab = vec![
            ("a".into(), "1".into(), 0, String::new()),
            ("b".into(), "2".into(), 0, String::new()),
        ];
        let stack = vec!["0x10".to_owned(), "0x20".to_owned()];
        assert_eq!(got[&(stack.clone(), ab)], [2, 20, 0, 0]);
        assert_eq!(got[&(stack, vec![])], [3, 30, 0, 0]);
        assert_eq!(delta.stats().resets, 0);

        // Numeric labels: the number and the unit both count.
        let num = |n, unit| {
            let mut b = ProfileBuilder::new(&TYPES, ("space", "bytes"), 1);
            let l = b.location(0, 0x10, &[]);
            b.sample(&[l], &[1, 1, 0, 0], &[("size", LabelValue::Num(n, unit))]);
            b.build()
        };
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(num(1, "bytes"));
        assert_eq!(delta.apply(num(1, "bytes")).sample.len(), 0);
        assert_eq!(delta.apply(num(1, "")).sample.len(), 1);
        assert_eq!(delta.apply(num(2, "")).sample.len(), 1);
    }

    #[test]
    fn state_holds_only_the_last_profiles_keys_over_a_thousand_periods() {
        let mut delta = Delta::new(&CUMULATIVE);
        let mut bound = None;
        // Fewer under Miri, which runs this but slowly.
        let periods = if cfg!(miri) { 20 } else { 1000 };
        for period in 0..periods {
            // Stacks 10·period .. 10·period + 100: 10 new, 90 continuing.
            let specs: Vec<Spec> = (10 * period..10 * period + 100)
                .map(|s| spec(&[0x1000 + s, 0x10], [period as i64, 1, 0, 0]))
                .collect();
            let out = delta.apply(build(&specs, None));
            let stats = delta.stats();
            assert!(stats.keys <= 100, "period {period}: {stats:?}");
            if period > 0 {
                // The 10 new stacks come cumulative, the others with a delta of 1.
                assert_eq!(out.sample.len(), 100);
                assert_eq!(total(&out)[0], 10 * period as i64 + 90);
            }
            let capacity = (delta.prev.capacity(), delta.prev_values.capacity());
            match bound {
                None if period == 10 => bound = Some(capacity),
                Some(b) => assert_eq!(capacity, b, "period {period}: memory must stay flat"),
                None => {}
            }
        }
        let (map, values) = bound.unwrap();
        assert!(map <= 256 && values <= 512, "{bound:?}");
    }

    #[test]
    fn one_huge_profile_does_not_pin_the_scratch_buffers() {
        let profile = |n: u64| {
            let mut b = ProfileBuilder::new(&TYPES, ("space", "bytes"), 1);
            for s in 0..n {
                let name = format!("fn_{s}");
                let line = FrameLine {
                    function: &name,
                    system_name: "",
                    file: "",
                    line: 1,
                };
                let l = b.location(0, 0x10 + s, &[line]);
                b.sample(&[l], &[1, 1, 0, 0], &[]);
            }
            b.build()
        };
        let n = if cfg!(miri) { 1000 } else { 100_000 };
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(profile(n));
        assert!(state_bytes(&delta) > 40 * n as usize);
        delta.apply(profile(10));
        delta.apply(profile(10));
        assert_eq!(delta.stats().keys, 10);
        let bytes = state_bytes(&delta);
        assert!(bytes < 4096, "10 keys held in {bytes} bytes");
    }

    #[test]
    fn a_decoded_profile_gives_the_same_delta_as_the_original() {
        let mut rng = Rng(42);
        let mut original = Delta::new(&CUMULATIVE);
        let mut decoded = Delta::new(&CUMULATIVE);
        let mut specs: Vec<Spec> = (0..30)
            .map(|i| spec(&[0x100 + i % 7, 0x200 + i % 5, 0x300 + i], [0; 4]))
            .collect();
        specs[3].frames.push(0);
        specs[4].labels.push(("thread", "main".into()));
        for _ in 0..5 {
            for s in specs.iter_mut() {
                s.values[0] += rng.below(2) as i64;
                s.values[1] += rng.below(2) as i64 * 512;
            }
            let p = build(&specs, Some(&mut rng));
            let from_bytes = decode(&encode(&p)).unwrap();
            assert_eq!(original.apply(p), decoded.apply(from_bytes));
        }
        assert_eq!(original.stats(), decoded.stats());
    }

    #[test]
    fn synthetic_frames_match_by_function_name_across_builders() {
        // The synthetic location gets different location and function ids
        // in the two builds; the stack is the same.
        let first = build(&[spec(&[0x10, 0], [1, 1, 0, 0])], None);
        let mut b = ProfileBuilder::new(&TYPES, ("space", "bytes"), 1);
        b.function("unrelated", "", "");
        b.location(0, 0x99, &[]);
        let t = b.synthetic_location(TRUNCATED);
        let l = b.location(0, 0x10, &[]);
        b.sample(&[l, t], &[3, 3, 0, 0], &[]);
        let other = b.synthetic_location("[other]");
        b.sample(&[l, other], &[1, 1, 0, 0], &[]);
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(first);
        let out = delta.apply(b.build());
        let values: Vec<_> = out.sample.iter().map(|s| s.value.clone()).collect();
        assert_eq!(values, [[2, 2, 0, 0], [1, 1, 0, 0]]);
        assert_eq!(out.function.len(), 2, "the unused function is pruned");
        assert_eq!(out.location.len(), 3, "the unused location is pruned");
        check(&out).unwrap();
    }

    #[test]
    fn changed_sample_types_start_over_cumulative() {
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(build(&[spec(&[0x10], [5, 50, 0, 0])], None));
        let mut b = ProfileBuilder::new(&[("alloc_objects", "count")], ("space", "bytes"), 1);
        let l = b.location(0, 0x10, &[]);
        b.sample(&[l], &[7], &[]);
        let out = delta.apply(b.build());
        assert_eq!(out.sample[0].value, [7]);
        assert_eq!(delta.stats().resets, 1);
        let out = delta.apply(build(&[spec(&[0x10], [6, 60, 0, 0])], None));
        assert_eq!(out.sample[0].value, [6, 60, 0, 0]);
        assert_eq!(delta.stats().resets, 2);
    }

    #[test]
    fn reset_forgets_history() {
        let mut delta = Delta::new(&CUMULATIVE);
        let p = build(&[spec(&[0x10], [5, 50, 0, 0])], None);
        delta.apply(p.clone());
        delta.reset();
        assert_eq!(delta.stats().keys, 0);
        assert_eq!(delta.apply(p.clone()), p);
        assert_eq!(delta.apply(p).sample.len(), 0);
    }

    #[test]
    fn renumbered_strings_still_name_the_same_text() {
        let build = |grow: i64| {
            let mut b = ProfileBuilder::new(&TYPES, ("space", "bytes"), 1);
            b.comment("a comment");
            b.drop_frames("^drop");
            b.default_sample_type("alloc_space");
            let keep = b.string("^keep");
            let m = b.mapping(&MappingInfo {
                memory_start: 0x1000,
                memory_limit: 0x9000,
                file_offset: 0,
                filename: "/bin/app",
                build_id: "b1d",
                has_functions: true,
                has_lines: true,
                has_inline_frames: false,
            });
            // The dropped sample comes first and owns the lowest strings.
            let line = |function, file| FrameLine {
                function,
                system_name: "",
                file,
                line: 1,
            };
            let gone = b.location(m, 0x1100, &[line("gone", "gone.rs")]);
            let num = |n, unit| LabelValue::Num(n, unit);
            b.sample(&[gone], &[1, 1, 0, 0], &[("gone key", num(3, "gone unit"))]);
            let kept = b.location(m, 0x1200, &[line("kept", "kept.rs")]);
            let values = [1 + grow, 1 + grow, 0, 0];
            b.sample(&[kept], &values, &[("size", num(7, "bytes"))]);
            let mut p = b.build();
            p.keep_frames = keep;
            p
        };
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(build(0));
        let out = delta.apply(build(1));
        check(&out).unwrap();
        assert_eq!(out.sample.len(), 1);
        assert!(!out.string_table.iter().any(|s| s.starts_with("gone")));
        let s = |i| out.str(i);
        let comments: Vec<_> = out.comment.iter().map(|&c| s(c)).collect();
        assert_eq!(comments, ["a comment"]);
        assert_eq!((s(out.drop_frames), s(out.keep_frames)), ("^drop", "^keep"));
        assert_eq!(s(out.default_sample_type), "alloc_space");
        let pt = out.period_type.unwrap();
        assert_eq!((s(pt.r#type), s(pt.unit)), ("space", "bytes"));
        let m = &out.mapping[0];
        assert_eq!((s(m.filename), s(m.build_id)), ("/bin/app", "b1d"));
        let l = out.sample[0].label[0];
        assert_eq!((s(l.key), l.num, s(l.num_unit)), ("size", 7, "bytes"));
        assert_eq!(s(out.function[0].name), "kept");
    }

    #[test]
    fn an_out_of_range_string_index_becomes_0() {
        // Every string is used: nothing to prune, the index is still fixed.
        let mut b = ProfileBuilder::new(&[("alloc_objects", "count")], ("space", "bytes"), 1);
        let l = b.location(0, 0x10, &[]);
        b.sample(&[l], &[1], &[]);
        let mut p = b.build();
        p.sample[0].label.push(Label {
            key: 99,
            str: 0,
            num: 1,
            num_unit: 0,
        });
        let out = Delta::new(&["alloc_objects"]).apply(p);
        assert_eq!(out.sample[0].label[0].key, 0);
    }

    #[test]
    fn merging_keeps_a_longer_duplicates_values() {
        let mut b = ProfileBuilder::new(&TYPES, ("space", "bytes"), 1);
        let l = b.location(0, 0x10, &[]);
        b.sample(&[l], &[1, 100, 0, 0], &[]);
        b.sample(&[l], &[1, 100, 1, 64], &[]);
        let mut p = b.build();
        p.sample[0].value.truncate(1);
        let out = Delta::new(&CUMULATIVE).apply(p);
        assert_eq!(out.sample[0].value, [2, 100, 1, 64]);
    }

    /// A frame of [`random_profile`]'s samples.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    enum RandomFrame {
        Address(u64),
        /// A synthetic location with lines naming these functions.
        Names(Vec<String>),
    }

    /// A sample of [`random_profile`]: frames, labels (key, string value,
    /// number, unit), values.
    type RandomSample = (
        Vec<RandomFrame>,
        Vec<(String, String, i64, String)>,
        Vec<i64>,
    );

    /// A valid profile of `samples` with random ids (dense or sparse),
    /// table and string order, mappings, unused strings, inline lines, and
    /// some frames split over two locations of the same meaning.
    fn random_profile(rng: &mut Rng, types: &[(&str, &str)], samples: &[RandomSample]) -> Profile {
        let mut table = vec![String::new()];
        let mut index = HashMap::from([(String::new(), 0)]);
        let mut s = |text: &str| -> i64 {
            *index.entry(text.to_owned()).or_insert_with(|| {
                table.push(text.to_owned());
                table.len() as i64 - 1
            })
        };
        for _ in 0..rng.below(5) {
            s(&format!("noise {}", rng.next()));
        }
        let sparse = rng.chance(3);
        let id = |rng: &mut Rng, len: usize| match sparse {
            true => 1 + rng.below(u64::MAX - 1),
            false => len as u64 + 1,
        };
        let mut p = Profile::default();
        for i in 0..1 + rng.below(3) as usize {
            p.mapping.push(Mapping {
                id: id(rng, i),
                filename: s(&format!("/lib/m{i}.so")),
                build_id: s(&format!("bid{i}")),
                ..Default::default()
            });
        }
        let mut frames: Vec<&RandomFrame> = samples.iter().flat_map(|x| &x.0).collect();
        frames.sort();
        frames.dedup();
        rng.shuffle(&mut frames);
        let mut locations_of: HashMap<&RandomFrame, Vec<u64>> = HashMap::new();
        let mut functions: HashMap<String, u64> = HashMap::new();
        for &frame in &frames {
            for _ in 0..1 + u64::from(rng.chance(5)) {
                let names: Vec<String> = match frame {
                    RandomFrame::Address(a) => (0..1 + rng.below(3))
                        .map(|k| format!("fn_{a:x}_{k}"))
                        .collect(),
                    RandomFrame::Names(names) => names.clone(),
                };
                let mut line = Vec::new();
                for name in names {
                    let function_id = *functions.entry(name.clone()).or_insert_with(|| {
                        let f = Function {
                            id: id(rng, p.function.len()),
                            name: s(&name),
                            system_name: s(&format!("sys_{name}")),
                            filename: s(&format!("{name}.rs")),
                            start_line: 1,
                        };
                        p.function.push(f);
                        p.function.last().unwrap().id
                    });
                    let number = rng.below(100) as i64;
                    line.push(Line {
                        function_id,
                        line: number,
                        column: 0,
                    });
                }
                let mapping = p.mapping[rng.below(p.mapping.len() as u64) as usize].id;
                let location = Location {
                    id: id(rng, p.location.len()),
                    mapping_id: if rng.chance(4) { 0 } else { mapping },
                    address: match frame {
                        RandomFrame::Address(a) => *a,
                        RandomFrame::Names(_) => 0,
                    },
                    line,
                    is_folded: false,
                };
                locations_of.entry(frame).or_default().push(location.id);
                p.location.push(location);
            }
        }
        for (t, u) in types {
            p.sample_type.push(ValueType {
                r#type: s(t),
                unit: s(u),
            });
        }
        p.period_type = Some(ValueType {
            r#type: s("space"),
            unit: s("bytes"),
        });
        p.period = 524288;
        p.comment = vec![s("comment one"), s("comment two")];
        p.drop_frames = s("^drop");
        p.keep_frames = s("^keep");
        p.default_sample_type = s("alloc_space");
        for (frames, labels, values) in samples {
            let location_id = frames
                .iter()
                .map(|f| {
                    let ids = &locations_of[f];
                    ids[rng.below(ids.len() as u64) as usize]
                })
                .collect();
            let mut label: Vec<Label> = labels
                .iter()
                .map(|(key, value, num, unit)| Label {
                    key: s(key),
                    str: s(value),
                    num: *num,
                    num_unit: s(unit),
                })
                .collect();
            rng.shuffle(&mut label);
            let value = values.clone();
            p.sample.push(Sample {
                location_id,
                value,
                label,
            });
        }
        p.string_table = table;
        check(&p).unwrap();
        p
    }

    /// What a `Delta` should do, done the obvious way: keyed by [`Meaning`].
    #[derive(Default)]
    struct Model {
        types: Option<Vec<(String, String)>>,
        prev: HashMap<Meaning, Vec<i64>>,
        resets: u64,
    }

    impl Model {
        /// The delta's samples by meaning, and the number of samples dropped.
        fn apply(&mut self, p: &Profile) -> (HashMap<Meaning, Vec<i64>>, u64) {
            let types: Vec<(String, String)> = p
                .sample_type
                .iter()
                .map(|vt| (p.str(vt.r#type).to_owned(), p.str(vt.unit).to_owned()))
                .collect();
            if self.types.as_ref().is_some_and(|t| *t != types) {
                self.prev.clear();
                self.resets += 1;
            }
            let cumulative: Vec<usize> = (0..types.len())
                .filter(|&t| CUMULATIVE.contains(&types[t].0.as_str()))
                .collect();
            self.types = Some(types);
            let (mut out, mut next, mut dropped) = (HashMap::new(), HashMap::new(), 0);
            for (meaning, mut values) in by_meaning(p) {
                let now: Vec<i64> = cumulative.iter().map(|&t| values[t].max(0)).collect();
                let then = match self.prev.get(&meaning) {
                    Some(then) if now.iter().zip(then).all(|(n, t)| n >= t) => then.clone(),
                    restarted => {
                        self.resets += u64::from(restarted.is_some());
                        vec![0; now.len()]
                    }
                };
                for (k, &t) in cumulative.iter().enumerate() {
                    values[t] = now[k] - then[k];
                }
                next.insert(meaning.clone(), now);
                if values.iter().any(|&v| v != 0) {
                    out.insert(meaning, values);
                } else {
                    dropped += 1;
                }
            }
            self.prev = next;
            (out, dropped)
        }
    }

    /// Per sample, in order, the texts of each location's mapping and
    /// functions.
    fn details(p: &Profile) -> Vec<String> {
        let mut v = vec![];
        for id in p.sample.iter().flat_map(|s| &s.location_id) {
            let loc = p.location.iter().find(|l| l.id == *id).unwrap();
            if let Some(m) = p.mapping.iter().find(|m| m.id == loc.mapping_id) {
                v.push(format!("{id} {} {}", p.str(m.filename), p.str(m.build_id)));
            }
            for line in &loc.line {
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == line.function_id)
                    .unwrap();
                let [name, system, file] = [f.name, f.system_name, f.filename].map(|i| p.str(i));
                v.push(format!("{id} {name} {system} {file}"));
            }
        }
        v
    }

    /// Everything but the samples and tables, resolved to text.
    fn header(p: &Profile) -> Vec<&str> {
        let mut v = vec![];
        for vt in p.sample_type.iter().chain(&p.period_type) {
            v.extend([p.str(vt.r#type), p.str(vt.unit)]);
        }
        v.extend(p.comment.iter().map(|&c| p.str(c)));
        v.extend([p.drop_frames, p.keep_frames, p.default_sample_type].map(|i| p.str(i)));
        v
    }

    #[test]
    fn deltas_match_a_naive_model_on_random_profiles() {
        let four = [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ];
        let type_sets: [&[(&str, &str)]; 3] = [
            &four,
            &[("inuse_space", "bytes"), ("alloc_space", "bytes")],
            &four,
        ];
        let text = |prefix: &str, n: u64| format!("{prefix}{n}");
        for seed in 1..if cfg!(miri) { 3 } else { 200u64 } {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut delta = Delta::new(&CUMULATIVE);
            let mut model = Model::default();
            let synthetic = |i: u64| {
                (0..1 + i % 2)
                    .map(|k| format!("[synthetic {i} {k}]"))
                    .collect()
            };
            let mut universe: Vec<RandomSample> = (0..1 + rng.below(30))
                .map(|_| {
                    let frames = (0..rng.below(4))
                        .map(|_| match rng.chance(4) {
                            true => RandomFrame::Names(synthetic(rng.below(3))),
                            false => RandomFrame::Address(0x1000 + rng.below(4)),
                        })
                        .collect();
                    let labels = (0..rng.below(3))
                        .map(|_| {
                            let key = text("k", rng.below(3));
                            match rng.chance(2) {
                                true => (key, text("v", rng.below(3)), 0, String::new()),
                                false => {
                                    let unit = ["", "bytes"][rng.below(2) as usize];
                                    (key, String::new(), rng.below(3) as i64, unit.into())
                                }
                            }
                        })
                        .collect();
                    (frames, labels, vec![0; 4])
                })
                .collect();
            let mut types = type_sets[0];
            for period in 0..12 {
                if rng.chance(8) {
                    types = type_sets[rng.below(3) as usize];
                }
                for (_, _, v) in universe.iter_mut() {
                    if rng.chance(2) {
                        v[0] += rng.below(4) as i64;
                        v[1] += rng.below(4) as i64 * 100;
                    }
                    if rng.chance(15) {
                        v[0] = 0; // a restart
                    }
                    if rng.chance(20) {
                        v[1] = -(rng.below(5) as i64);
                    }
                    v[2] = rng.below(3) as i64 - 1;
                    v[3] = rng.below(3) as i64 * 64;
                }
                let samples: Vec<RandomSample> = universe
                    .iter()
                    .filter(|_| !rng.chance(5))
                    .map(|(f, l, v)| (f.clone(), l.clone(), v[..types.len()].to_vec()))
                    .collect();
                let p = random_profile(&mut rng, types, &samples);
                let at = format!("seed {seed} period {period}");
                let (want, dropped) = model.apply(&p);
                let out = delta.apply(p.clone());
                check(&out).unwrap_or_else(|e| panic!("{at}: {e}"));
                let got: HashMap<Meaning, Vec<i64>> = out
                    .sample
                    .iter()
                    .map(|s| (meaning(&out, s), s.value.clone()))
                    .collect();
                assert_eq!(got.len(), out.sample.len(), "{at}: duplicates left");
                assert_eq!(got, want, "{at}");
                let stats = delta.stats();
                assert_eq!(
                    (stats.keys, stats.dropped_zero),
                    (model.prev.len(), dropped)
                );
                assert_eq!(stats.resets, model.resets, "{at}");
                assert_eq!(header(&out), header(&p), "{at}");
                // The samples kept are the first of each meaning, their
                // tables unchanged in meaning.
                let mut seen = HashSet::new();
                let kept = p
                    .sample
                    .iter()
                    .filter(|s| seen.insert(meaning(&p, s)) && got.contains_key(&meaning(&p, s)));
                let sample = kept.cloned().collect();
                assert_eq!(details(&out), details(&Profile { sample, ..p }), "{at}");
                assert!(
                    !out.string_table.iter().any(|s| s.starts_with("noise")),
                    "{at}"
                );
            }
        }
    }

    #[test]
    fn random_garbage_profiles_do_not_panic() {
        let mut rng = Rng(12345);
        let mut delta = Delta::new(&CUMULATIVE);
        let number = |rng: &mut Rng| match rng.below(6) {
            0 => -1,
            1 => i64::MAX,
            2 => i64::MIN,
            _ => rng.below(8) as i64,
        };
        let id = |rng: &mut Rng| match rng.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << 40,
            _ => rng.below(8),
        };
        for _ in 0..if cfg!(miri) { 50 } else { 3000 } {
            let mut p = Profile::default();
            for _ in 0..rng.below(4) {
                let s = ["", "alloc_objects", "alloc_space", "x"][rng.below(4) as usize];
                p.string_table.push(s.into());
            }
            for _ in 0..rng.below(4) {
                p.sample_type.push(ValueType {
                    r#type: number(&mut rng),
                    unit: number(&mut rng),
                });
            }
            for _ in 0..rng.below(4) {
                p.mapping.push(Mapping {
                    id: id(&mut rng),
                    filename: number(&mut rng),
                    build_id: number(&mut rng),
                    ..Default::default()
                });
            }
            for _ in 0..rng.below(4) {
                p.function.push(Function {
                    id: id(&mut rng),
                    name: number(&mut rng),
                    system_name: number(&mut rng),
                    filename: number(&mut rng),
                    start_line: 0,
                });
            }
            for _ in 0..rng.below(6) {
                let line = (0..rng.below(3))
                    .map(|_| Line {
                        function_id: id(&mut rng),
                        line: 0,
                        column: 0,
                    })
                    .collect();
                p.location.push(Location {
                    id: id(&mut rng),
                    mapping_id: id(&mut rng),
                    address: if rng.chance(2) { 0 } else { id(&mut rng) },
                    line,
                    is_folded: false,
                });
            }
            for _ in 0..rng.below(6) {
                let label = (0..rng.below(3))
                    .map(|_| Label {
                        key: number(&mut rng),
                        str: number(&mut rng),
                        num: number(&mut rng),
                        num_unit: number(&mut rng),
                    })
                    .collect();
                p.sample.push(Sample {
                    location_id: (0..rng.below(4)).map(|_| id(&mut rng)).collect(),
                    value: (0..rng.below(5)).map(|_| number(&mut rng)).collect(),
                    label,
                });
            }
            p.comment = (0..rng.below(3)).map(|_| number(&mut rng)).collect();
            p.drop_frames = number(&mut rng);
            p.keep_frames = number(&mut rng);
            p.default_sample_type = number(&mut rng);
            if rng.chance(50) {
                delta.reset();
            }
            let cumulative: Vec<usize> = (0..p.sample_type.len())
                .filter(|&t| CUMULATIVE.contains(&string(&p.string_table, p.sample_type[t].r#type)))
                .collect();
            let mut out = delta.apply(p);
            for s in &out.sample {
                assert!(cumulative
                    .iter()
                    .all(|&t| s.value.get(t).is_none_or(|&v| v >= 0)));
            }
            let strings = out.string_table.len() as i64;
            for_each_string(&mut out, |&mut i| {
                assert!(i == 0 || (0..strings).contains(&i))
            });
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "too slow under Miri")]
    fn apply_handles_ten_thousand_samples_of_32_frames() {
        let mut rng = Rng(1);
        let mut specs: Vec<Spec> = (0..10_000)
            .map(|_| {
                let frames: Vec<u64> = (0..32).map(|_| 0x40_0000 + 8 * rng.below(4000)).collect();
                spec(&frames, [1, 64, 1, 64])
            })
            .collect();
        let first = build(&specs, None);
        for s in specs.iter_mut().step_by(3) {
            s.values[0] += 1;
            s.values[1] += 64;
        }
        let second = build(&specs, Some(&mut rng));
        let mut delta = Delta::new(&CUMULATIVE);
        assert_eq!(delta.apply(first).sample.len(), 10_000);
        let out = delta.apply(second);
        assert_eq!(out.sample.len(), 10_000);
        assert_eq!(total(&out)[..2], [3334, 3334 * 64]);
        assert_eq!(delta.stats().keys, 10_000);
    }
}
