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
//! comes from. The first profile (and the first after [`Delta::reset`]) has
//! no predecessor and passes through cumulative.
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
//! The key is not stored: it is streamed, word by word, into two
//! SipHash-1-3 hashers (Aumasson and Bernstein's SipHash with one
//! compression and three finalization rounds, as in `std`) with different
//! fixed keys, giving a 128-bit fingerprint. The hasher here takes whole
//! 64-bit words (no byte buffering) and runs the two lanes side by side;
//! each lane computes exactly SipHash-1-3 of the words' bytes, and the
//! result is the same in every process and build. Where location ids are
//! dense (always, from a builder or from Go) an id is turned into its
//! address with one array load. Two different keys collide with probability
//! about 2^-128 per pair, which is accepted: a collision would merge two
//! stacks' deltas, never panic or go negative. Building a key allocates
//! nothing; the stream is prefix-free (counts and lengths first, a marker
//! word before the rare non-address frame), so different keys never produce
//! the same stream. Two samples of one profile with the same key are merged
//! first (values summed, the first one's locations and labels kept).
//!
//! # State and pruning
//!
//! Between calls `Delta` keeps, for the keys of the *last* profile only, the
//! fingerprint and the cumulative values seen: a map from fingerprint to a
//! slot (a 16-byte key and an 8-byte slot, plus the table's control byte
//! and slack) and the slot's values in a flat `Vec<i64>` (8 bytes per
//! cumulative type). Each call fills a second, cleared map and value buffer
//! with the current profile's keys and then swaps the two pairs, so keys
//! absent from the current profile are forgotten and every allocation is
//! reused. With both pairs counted this is about 130 bytes a stack for the
//! heap profile (1.3 MiB for 10 000 stacks). Memory therefore follows the
//! size of the last profile, not every stack ever seen (Go's `fastdelta`
//! keeps every key forever and users hit out-of-memory kills,
//! dd-trace-go#1025); a map left much larger than needed by one huge profile
//! is shrunk.
//!
//! The price: a stack that is absent from one profile and comes back later
//! is reported with its full cumulative value again, as if new. The heap
//! profile never does this, because the allocator's stack table keeps every
//! stack (with its counters) for the life of the process, so each heap
//! profile lists every stack that ever allocated.
//!
//! # Resets
//!
//! A cumulative value below its previous value means the counter restarted
//! (another process behind the same profiler, a counter wrapped or
//! cleared): the current value, the count since the restart, is taken as
//! the delta. Cumulative values are never negative: a negative one (only
//! in foreign input) is read as 0; snapshot values are left as they are.
//! A profile whose sample types (names and
//! units, in order) differ from the previous one's cannot be compared with
//! it, so history is dropped and it passes through cumulative. Both count
//! in [`DeltaStats::resets`].
//!
//! # Tables
//!
//! Samples are changed in place and dropped samples removed, keeping their
//! order. The tables are then pruned to what the remaining samples use:
//! locations no sample refers to, functions and mappings no remaining
//! location refers to, and strings nothing refers to are removed (ids are
//! kept, string indexes renumbered in order), so dropping zero samples
//! really shrinks the profile. This is linear in the size of the profile.
//!
//! # Cost
//!
//! `apply` is linear: one pass over the location and function tables to
//! index them by id, one hash of every sample's frames and labels, one map
//! lookup in each of the two maps per sample, then the pruning pass. It does
//! no allocation per sample; its scratch buffers (a few dozen bytes per
//! sample and per location) keep their capacity between calls, so they
//! follow the largest profile seen. 10 000 samples of 32 frames take a few
//! milliseconds, about a third of it hashing (see the test
//! `apply_handles_ten_thousand_samples_of_32_frames`, which prints timings
//! under `--nocapture`).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

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
    /// Being filled for the current profile during `apply`, empty (with its
    /// capacity kept) between calls; swapped with `prev` at the end.
    next: KeyMap,
    /// The values of `next`'s slots, laid out as `prev_values`.
    next_values: Vec<i64>,
    /// Lifetime counters and the last call's drop count; `keys` is not kept
    /// here but read from `prev` by [`stats`](Self::stats).
    stats: DeltaStats,
    /// Buffers reused by every call; meaningless between calls.
    scratch: Scratch,
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
            next: KeyMap::default(),
            next_values: Vec::new(),
            stats: DeltaStats::default(),
            scratch: Scratch::default(),
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
        let scratch = &mut self.scratch;
        scratch.cumulative_at.clear();
        for (t, vt) in profile.sample_type.iter().enumerate() {
            let name = string(&profile.string_table, vt.r#type);
            if self.cumulative.iter().any(|c| c == name) {
                scratch.cumulative_at.push(t);
            }
        }
        scratch.index(&profile);

        // Pass 1: the key of every sample; the first sample of each key owns
        // a slot, later ones are summed into it.
        let Profile {
            sample: samples,
            string_table: strings,
            ..
        } = &mut profile;
        debug_assert!(self.next.is_empty() && self.next_values.is_empty());
        scratch.owner.clear();
        scratch.keys.clear();
        scratch.alive.clear();
        scratch.alive.resize(samples.len(), false);
        let mut labels: Vec<(&str, &str, i64, &str)> = Vec::new();
        for i in 0..samples.len() {
            let key = scratch.key(&samples[i], strings, &mut labels);
            let slot = *self.next.entry(key).or_insert(scratch.owner.len());
            if slot == scratch.owner.len() {
                scratch.owner.push(i);
                scratch.keys.push(key);
            } else {
                // The owner came earlier: `owner < i`.
                let (head, tail) = samples.split_at_mut(i);
                let (into, from) = (&mut head[scratch.owner[slot]], &tail[0]);
                for (a, b) in into.value.iter_mut().zip(&from.value) {
                    *a = a.saturating_add(*b);
                }
            }
        }

        // Pass 2: per slot, the delta against the previous profile; the
        // current cumulative values become the next state.
        let c = scratch.cumulative_at.len();
        let mut dropped = 0;
        for (&i, key) in scratch.owner.iter().zip(&scratch.keys) {
            let sample = &mut samples[i];
            let before = self
                .prev
                .get(key)
                .and_then(|&s| self.prev_values.get(s * c..(s + 1) * c));
            let mut went_down = false;
            for (k, &t) in scratch.cumulative_at.iter().enumerate() {
                let Some(v) = sample.value.get_mut(t) else {
                    self.next_values.push(0);
                    continue;
                };
                let now = (*v).max(0);
                self.next_values.push(now);
                let then = before.map_or(0, |b| b[k]);
                *v = if now >= then {
                    now - then
                } else {
                    went_down = true;
                    now
                };
            }
            self.stats.resets += u64::from(went_down);
            if sample.value.iter().all(|&v| v == 0) {
                dropped += 1;
            } else {
                scratch.alive[i] = true;
            }
        }
        let mut alive = scratch.alive.iter();
        samples.retain(|_| alive.next().copied().unwrap_or(false));
        self.stats.dropped_zero = dropped;

        scratch.prune(&mut profile);

        std::mem::swap(&mut self.prev, &mut self.next);
        std::mem::swap(&mut self.prev_values, &mut self.next_values);
        self.next.clear();
        self.next_values.clear();
        self.trim();
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
        self.prev.clear();
        self.prev_values.clear();
        self.types = None;
    }

    /// Drops history if `profile`'s sample types are not the previous
    /// profile's, and remembers them.
    fn check_types(&mut self, profile: &Profile) {
        let strings = &profile.string_table;
        let same = self.types.as_ref().is_some_and(|types| {
            types.len() == profile.sample_type.len()
                && types.iter().zip(&profile.sample_type).all(|((t, u), vt)| {
                    t == string(strings, vt.r#type) && u == string(strings, vt.unit)
                })
        });
        if same {
            return;
        }
        if self.types.is_some() {
            self.stats.resets += 1;
        }
        self.prev.clear();
        self.prev_values.clear();
        self.types = Some(
            profile
                .sample_type
                .iter()
                .map(|vt| {
                    (
                        string(strings, vt.r#type).to_owned(),
                        string(strings, vt.unit).to_owned(),
                    )
                })
                .collect(),
        );
    }

    /// Gives back memory one unusually large profile left behind: a map or
    /// value buffer more than four times (and 1 024 entries) larger than
    /// the current state is shrunk to twice the state.
    fn trim(&mut self) {
        let keys = self.prev.len();
        let values = self.prev_values.len();
        for map in [&mut self.prev, &mut self.next] {
            if map.capacity() > 1024 && map.capacity() / 4 > keys {
                map.shrink_to(keys * 2);
            }
        }
        for v in [&mut self.prev_values, &mut self.next_values] {
            if v.capacity() > 1024 && v.capacity() / 4 > values {
                v.shrink_to(values * 2);
            }
        }
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

/// A key's 128-bit fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a SipHash output: any 64 bits of it are uniform.
        state.write_u64(self.0);
    }
}

/// Fingerprint → slot, hashed by [`PassThrough`].
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

/// SipHash-1-3 (Aumasson and Bernstein; one compression round per word,
/// three finalization rounds) over a stream of 64-bit words, in two lanes
/// with different fixed keys: a 128-bit fingerprint.
///
/// A lane's result is SipHash-1-3 of the words' little-endian bytes. Taking
/// whole words skips the byte buffering of a general `Hasher`, and running
/// the two lanes in one loop lets the CPU overlap them.
#[derive(Clone, Copy)]
struct KeyHasher {
    a: [u64; 4],
    b: [u64; 4],
    words: u64,
}

impl KeyHasher {
    /// The lanes' keys: arbitrary, fixed, different.
    const KEYS: [(u64, u64); 2] = [
        (0x6665_7272_6f70_726f, 0x6620_6465_6c74_6161),
        (0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f),
    ];

    fn new() -> Self {
        let lane = |(k0, k1): (u64, u64)| {
            [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ]
        };
        KeyHasher {
            a: lane(Self::KEYS[0]),
            b: lane(Self::KEYS[1]),
            words: 0,
        }
    }

    #[inline(always)]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    /// Adds one word, different in each lane.
    #[inline]
    fn lanes(&mut self, a: u64, b: u64) {
        self.a[3] ^= a;
        self.b[3] ^= b;
        Self::round(&mut self.a);
        Self::round(&mut self.b);
        self.a[0] ^= a;
        self.b[0] ^= b;
        self.words += 1;
    }

    /// Adds one word to both lanes.
    #[inline]
    fn word(&mut self, m: u64) {
        self.lanes(m, m);
    }

    /// Adds a string: its length, then its bytes, zero-padded to words.
    fn str(&mut self, s: &str) {
        self.word(s.len() as u64);
        let mut chunks = s.as_bytes().chunks_exact(8);
        for chunk in &mut chunks {
            let mut w = [0; 8];
            w.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }

    fn finish(mut self) -> Key {
        // SipHash's last block: the byte length mod 256 in the top byte.
        let last = self.words.wrapping_mul(8) << 56;
        self.lanes(last, last);
        let lane = |mut v: [u64; 4]| {
            v[2] ^= 0xff;
            for _ in 0..3 {
                Self::round(&mut v);
            }
            v[0] ^ v[1] ^ v[2] ^ v[3]
        };
        Key(lane(self.a), lane(self.b))
    }
}

/// What a location contributes to a key.
#[derive(Clone, Copy)]
enum Frame {
    /// A real location: its instruction address (nonzero).
    Address(u64),
    /// A synthetic location: a 128-bit hash of its function names, one
    /// half for each lane of the [`KeyHasher`].
    Names([u64; 2]),
}

/// Ids to positions in a table: a `Vec` indexed by id when the ids are
/// dense enough (they are in every profile a builder or Go writes), a map
/// otherwise, so a hostile id like `u64::MAX` costs nothing.
#[derive(Default)]
struct IdIndex {
    /// Dense mode: the position of id `i` at index `i`, [`Self::NONE`] for
    /// none. Empty in sparse mode (never empty in dense mode).
    dense: Vec<usize>,
    /// Sparse mode: id → position. Empty in dense mode.
    sparse: HashMap<u64, usize>,
}

impl IdIndex {
    const NONE: usize = usize::MAX;

    fn rebuild(&mut self, ids: impl Iterator<Item = u64> + Clone) {
        self.dense.clear();
        self.sparse.clear();
        let (mut len, mut max) = (0usize, 0u64);
        for id in ids.clone() {
            len += 1;
            max = max.max(id);
        }
        if max <= 2 * len as u64 + 64 {
            self.dense.resize(max as usize + 1, Self::NONE);
            for (pos, id) in ids.enumerate() {
                self.dense[id as usize] = pos;
            }
        } else {
            self.sparse
                .extend(ids.enumerate().map(|(pos, id)| (id, pos)));
        }
    }

    fn get(&self, id: u64) -> Option<usize> {
        if self.sparse.is_empty() {
            let pos = *self.dense.get(usize::try_from(id).ok()?)?;
            (pos != Self::NONE).then_some(pos)
        } else {
            self.sparse.get(&id).copied()
        }
    }
}

/// Buffers for one `apply`, kept to reuse their allocations.
#[derive(Default)]
struct Scratch {
    /// Indexes of the profile's cumulative sample types.
    cumulative_at: Vec<usize>,
    locations: IdIndex,
    functions: IdIndex,
    mappings: IdIndex,
    /// Per location (by position), what it adds to a key.
    frames: Vec<Frame>,
    /// When location ids are dense: the address of location `id` at index
    /// `id`, 0 for none or a synthetic location. The fast path of [`key`](Self::key):
    /// one load per frame.
    addresses: Vec<u64>,
    /// Per slot: the index of the sample that owns it, and its key.
    owner: Vec<usize>,
    keys: Vec<Key>,
    /// Per sample: kept in the output.
    alive: Vec<bool>,
    /// Per location id, when ids are dense: used by the output.
    used_ids: Vec<bool>,
    /// Per table entry (by position): used by the output.
    used_locations: Vec<bool>,
    used_functions: Vec<bool>,
    used_mappings: Vec<bool>,
    used_strings: Vec<bool>,
    /// Old string index → new one.
    renumber: Vec<i64>,
}

impl Scratch {
    /// Indexes the tables by id and computes every location's [`Frame`].
    fn index(&mut self, p: &Profile) {
        self.locations.rebuild(p.location.iter().map(|l| l.id));
        self.functions.rebuild(p.function.iter().map(|f| f.id));
        self.mappings.rebuild(p.mapping.iter().map(|m| m.id));
        self.frames.clear();
        for loc in &p.location {
            if loc.address != 0 {
                self.frames.push(Frame::Address(loc.address));
                continue;
            }
            let mut h = KeyHasher::new();
            h.word(loc.line.len() as u64);
            for line in &loc.line {
                match self.functions.get(line.function_id) {
                    Some(f) => {
                        h.word(1);
                        h.str(string(&p.string_table, p.function[f].name));
                    }
                    None => {
                        h.word(2);
                        h.word(line.function_id);
                    }
                }
            }
            let Key(a, b) = h.finish();
            self.frames.push(Frame::Names([a, b]));
        }
        self.addresses.clear();
        if !self.locations.dense.is_empty() {
            self.addresses.resize(self.locations.dense.len(), 0);
            for (&pos, a) in self.locations.dense.iter().zip(&mut self.addresses) {
                if let Some(&Frame::Address(address)) = self.frames.get(pos) {
                    *a = address;
                }
            }
        }
    }

    /// The fingerprint of `sample`'s stack and labels. `labels` is a buffer
    /// for sorting them.
    fn key<'s>(
        &self,
        sample: &Sample,
        strings: &'s [String],
        labels: &mut Vec<(&'s str, &'s str, i64, &'s str)>,
    ) -> Key {
        let mut h = KeyHasher::new();
        h.word(sample.location_id.len() as u64);
        for &id in &sample.location_id {
            let fast = usize::try_from(id).ok().and_then(|i| self.addresses.get(i));
            if let Some(&address) = fast.filter(|&&a| a != 0) {
                h.word(address);
                continue;
            }
            match self.locations.get(id).and_then(|l| self.frames.get(l)) {
                Some(&Frame::Address(address)) => h.word(address),
                // Address 0 never starts a real frame, so these cannot be
                // confused with one.
                Some(&Frame::Names([a, b])) => {
                    h.word(0);
                    h.word(1);
                    h.lanes(a, b);
                }
                None => {
                    h.word(0);
                    h.word(2);
                    h.word(id);
                }
            }
        }
        labels.clear();
        labels.extend(sample.label.iter().map(|l| {
            (
                string(strings, l.key),
                string(strings, l.str),
                l.num,
                string(strings, l.num_unit),
            )
        }));
        labels.sort_unstable();
        h.word(labels.len() as u64);
        for &(key, value, num, unit) in labels.iter() {
            h.str(key);
            h.str(value);
            h.word(num as u64);
            h.str(unit);
        }
        h.finish()
    }

    /// Removes the locations no sample uses, the functions and mappings no
    /// remaining location uses and the strings nothing uses, renumbering
    /// string indexes (ids are kept). An out-of-range string index (only in
    /// unchecked input) becomes 0, `""`.
    fn prune(&mut self, p: &mut Profile) {
        fn mark(used: &mut [bool], pos: Option<usize>) {
            if let Some(u) = pos.and_then(|pos| used.get_mut(pos)) {
                *u = true;
            }
        }
        fn fill(v: &mut Vec<bool>, len: usize) {
            v.clear();
            v.resize(len, false);
        }
        fill(&mut self.used_locations, p.location.len());
        fill(&mut self.used_functions, p.function.len());
        fill(&mut self.used_mappings, p.mapping.len());
        if self.locations.dense.is_empty() {
            for s in &p.sample {
                for &id in &s.location_id {
                    mark(&mut self.used_locations, self.locations.get(id));
                }
            }
        } else {
            // Dense ids: mark by id first, a store per frame with no load
            // to wait for, then translate to positions.
            fill(&mut self.used_ids, self.locations.dense.len());
            for s in &p.sample {
                for &id in &s.location_id {
                    mark(&mut self.used_ids, usize::try_from(id).ok());
                }
            }
            for (loc, used) in p.location.iter().zip(&mut self.used_locations) {
                *used = usize::try_from(loc.id)
                    .ok()
                    .and_then(|id| self.used_ids.get(id))
                    .is_some_and(|&u| u);
            }
        }
        for (loc, _) in p.location.iter().zip(&self.used_locations).filter(|x| *x.1) {
            if loc.mapping_id != 0 {
                mark(&mut self.used_mappings, self.mappings.get(loc.mapping_id));
            }
            for line in &loc.line {
                mark(
                    &mut self.used_functions,
                    self.functions.get(line.function_id),
                );
            }
        }
        let mut used = self.used_locations.iter();
        p.location.retain(|_| used.next().copied().unwrap_or(false));
        let mut used = self.used_functions.iter();
        p.function.retain(|_| used.next().copied().unwrap_or(false));
        let mut used = self.used_mappings.iter();
        p.mapping.retain(|_| used.next().copied().unwrap_or(false));

        // Strings: mark, renumber in order, rewrite every reference.
        let len = p.string_table.len();
        fill(&mut self.used_strings, len);
        if let Some(first) = self.used_strings.first_mut() {
            *first = true;
        }
        let strings_used_by = |used: &mut Vec<bool>, p: &mut Profile| {
            for_each_string(p, |i| {
                if let Some(u) = usize::try_from(*i).ok().and_then(|i| used.get_mut(i)) {
                    *u = true;
                }
            });
        };
        strings_used_by(&mut self.used_strings, p);
        self.renumber.clear();
        let mut next = 0;
        for &u in &self.used_strings {
            self.renumber.push(if u { next } else { 0 });
            next += i64::from(u);
        }
        if next as usize == len {
            return; // every string is used
        }
        let renumber = &self.renumber;
        for_each_string(p, |i| {
            *i = usize::try_from(*i)
                .ok()
                .and_then(|i| renumber.get(i))
                .copied()
                .unwrap_or(0);
        });
        let mut used = self.used_strings.iter();
        p.string_table
            .retain(|_| used.next().copied().unwrap_or(false));
    }
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
    use std::collections::HashMap;

    use super::*;
    use crate::pprof::{check, decode, encode, FrameLine, LabelValue, ProfileBuilder};

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

    /// A sample's meaning: frames (addresses, or names for address 0) and
    /// sorted labels, resolved naively.
    type Meaning = (Vec<String>, Vec<(String, String, i64, String)>);

    /// The profile's values by meaning (samples with the same meaning summed).
    fn by_meaning(p: &Profile) -> HashMap<Meaning, Vec<i64>> {
        let mut out: HashMap<Meaning, Vec<i64>> = HashMap::new();
        for s in &p.sample {
            let frames = s
                .location_id
                .iter()
                .map(|id| {
                    let loc = p.location.iter().find(|l| l.id == *id).unwrap();
                    if loc.address != 0 {
                        format!("{:#x}", loc.address)
                    } else {
                        let f = p.function.iter().find(|f| f.id == loc.line[0].function_id);
                        p.str(f.unwrap().name).to_owned()
                    }
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
            let e = out
                .entry((frames, labels))
                .or_insert_with(|| vec![0; s.value.len()]);
            for (a, b) in e.iter_mut().zip(&s.value) {
                *a += b;
            }
        }
        out
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
                spec(&[0x30], [9, 650, 1, 100]), // one value down
            ],
            None,
        ));
        let got = by_meaning(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[&(vec!["0x20".into()], vec![])], [2, 200, 0, 0]);
        assert_eq!(got[&(vec!["0x30".into()], vec![])], [2, 650, 1, 100]);
        let stats = delta.stats();
        assert_eq!((stats.keys, stats.dropped_zero, stats.resets), (3, 1, 2));
        assert_eq!(
            out.location.len(),
            2,
            "the dropped sample's location is pruned"
        );
        check(&out).unwrap();
        // Negative cumulative input (foreign profiles) reads as 0.
        let out = delta.apply(build(&[spec(&[0x20], [-5, 300, -1, 0])], None));
        assert_eq!(out.sample[0].value, [0, 100, -1, 0]);
        for p in [&out] {
            for s in &p.sample {
                assert!(s.value[..2].iter().all(|&v| v >= 0));
            }
        }
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
            let capacity = (
                delta.prev.capacity(),
                delta.next.capacity(),
                delta.prev_values.capacity(),
                delta.next_values.capacity(),
            );
            match bound {
                None if period == 10 => bound = Some(capacity),
                Some(b) => assert_eq!(capacity, b, "period {period}: memory must stay flat"),
                None => {}
            }
        }
        let (maps, _, values, _) = bound.unwrap();
        assert!(maps <= 256 && values <= 512, "{bound:?}");
    }

    #[test]
    fn one_huge_profile_does_not_pin_its_memory() {
        let stacks =
            |n: u64| -> Vec<Spec> { (0..n).map(|s| spec(&[0x10 + s], [1, 1, 0, 0])).collect() };
        let mut delta = Delta::new(&CUMULATIVE);
        delta.apply(build(&stacks(20_000), None));
        assert!(delta.prev.capacity() >= 20_000);
        delta.apply(build(&stacks(10), None));
        delta.apply(build(&stacks(10), None));
        assert_eq!(delta.stats().keys, 10);
        for capacity in [delta.prev.capacity(), delta.next.capacity()] {
            assert!(capacity < 64, "{capacity}");
        }
        assert!(delta.prev_values.capacity() < 64 && delta.next_values.capacity() < 64);
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
    fn unchecked_profiles_do_not_panic() {
        let good = build(
            &[
                spec(&[0x10, 0, 0x20], [5, 50, 1, 1]),
                spec(&[0x20], [1, 1, 1, 1]),
            ],
            None,
        );
        let mut rng = Rng(7);
        let mut delta = Delta::new(&CUMULATIVE);
        for round in 0..if cfg!(miri) { 40 } else { 500 } {
            let mut p = good.clone();
            match round % 8 {
                0 => p.sample[0].location_id.push(u64::MAX),
                1 => p.sample[1].value.truncate(1),
                2 => p.sample[0].value.push(9),
                3 => p.location[1].line[0].function_id = 77,
                4 => p.sample_type[0].r#type = 1 << 40,
                5 => p.location[0].id = 1 << 50,
                6 => p.string_table.clear(),
                _ => p.sample[0].label.push(crate::pprof::Label {
                    key: -3,
                    str: 1 << 33,
                    num: 1,
                    num_unit: i64::MAX,
                }),
            }
            if rng.below(2) == 0 {
                p.sample[1].location_id = p.sample[0].location_id.clone();
            }
            let out = delta.apply(p);
            for s in &out.sample {
                for &t in &delta.scratch.cumulative_at {
                    assert!(s.value.get(t).is_none_or(|&v| v >= 0));
                }
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "a timing, meaningless under Miri")]
    fn apply_handles_ten_thousand_samples_of_32_frames() {
        let mut rng = Rng(1);
        let mut specs: Vec<Spec> = (0..10_000)
            .map(|_| {
                let frames: Vec<u64> = (0..32).map(|_| 0x40_0000 + 8 * rng.below(4000)).collect();
                spec(&frames, [1, 64, 1, 64])
            })
            .collect();
        let first = build(&specs, None);
        assert_eq!(first.sample.len(), 10_000);
        for s in specs.iter_mut().step_by(3) {
            s.values[0] += 1;
            s.values[1] += 64;
        }
        let second = build(&specs, Some(&mut rng));
        let mut delta = Delta::new(&CUMULATIVE);
        let (mut firsts, mut deltas) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            let (a, b) = (first.clone(), second.clone());
            delta.reset();
            let t = std::time::Instant::now();
            let out_a = delta.apply(a);
            firsts.push(t.elapsed());
            let t = std::time::Instant::now();
            let out_b = delta.apply(b);
            deltas.push(t.elapsed());
            assert_eq!((out_a.sample.len(), out_b.sample.len()), (10_000, 10_000));
            assert_eq!(total(&out_b)[..2], [3334, 3334 * 64]);
        }
        firsts.sort();
        deltas.sort();
        // Hash table slots are 24 bytes and a control byte, at most 7/8 full.
        let table = |cap: usize| (cap * 8 / 7).next_power_of_two() * 25;
        let state = table(delta.prev.capacity())
            + table(delta.next.capacity())
            + 8 * (delta.prev_values.capacity() + delta.next_values.capacity());
        eprintln!(
            "apply, 10 000 samples × 32 frames: first (cumulative) median {:?}, \
             with history median {:?} (min {:?}); {} keys, state ≈ {} KiB",
            firsts[3],
            deltas[3],
            deltas[0],
            delta.stats().keys,
            state / 1024,
        );
    }
}
