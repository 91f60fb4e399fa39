//! The stack table: interns each distinct stack once and keeps its
//! cumulative allocation totals.
//!
//! A fixed-capacity open-addressing hash table (linear probing) keyed by a
//! 64-bit hash of the return addresses; the id of a stack is its slot index,
//! so the live table stores 4 bytes per block instead of a stack. Frames live
//! in a fixed arena of words bumped by `fetch_add`. Entries are never removed:
//! the profiler's delta keeps its own bounded state, and this table only has
//! to name every stack that has ever been sampled, up to its capacity.
//!
//! Insert protocol for one entry:
//!
//! ```text
//!   hash == 0                      empty
//!   CAS hash 0 -> h                claimed by one inserter (others probe on
//!                                  or wait for it if they carry the same h)
//!   write frames, offset, length
//!   ready = READY (Release)        readable by everyone (Acquire)
//!   ready = DEAD                   the arena was full: skipped forever
//! ```
//!
//! A lookup whose hash matches a claimed but not yet ready entry spins for a
//! bounded time, then probes on: in the rare worst case the same stack gets
//! two ids, which costs a little memory and nothing in accuracy. When the
//! table or the arena is full the caller gets [`OVERFLOW`], a stack id that
//! is counted like any other and that the profile names
//! `[ferroprof: stack table full]` (design rule 3).

use crate::primitive::{spin_hint, AtomicU32, AtomicU64, Ordering};
use crate::storage::{Zeroed, ZeroedSlice};

/// The id of the synthetic stack that stands for samples whose stack could
/// not be stored.
pub const OVERFLOW: u32 = u32::MAX;

const READY: u32 = 1;
const DEAD: u32 = 2;
const TRUNCATED: u32 = 1 << 31;
const MAX_PROBES: usize = 512;
const WAIT_SPINS: usize = 1 << 12;

#[derive(Default)]
struct Entry {
    hash: AtomicU64,
    ready: AtomicU32,
    /// Frame count, with `TRUNCATED` set if the stack was cut at max depth.
    len: AtomicU32,
    offset: AtomicU64,
    alloc_bytes: AtomicU64,
    alloc_objects: AtomicU64,
}

// SAFETY: only atomics; zero is a valid, empty entry.
unsafe impl Zeroed for Entry {
    fn zeroed() -> Self {
        Entry::default()
    }
}

#[derive(Default)]
struct Word(AtomicU64);

// SAFETY: an atomic; zero is valid.
unsafe impl Zeroed for Word {
    fn zeroed() -> Self {
        Word::default()
    }
}

/// One stack as the snapshot sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackView {
    /// Return addresses, innermost first.
    pub frames: Vec<u64>,
    /// The stack was deeper than the maximum and was cut.
    pub truncated: bool,
    /// Cumulative estimated bytes allocated here.
    pub alloc_bytes: u64,
    /// Cumulative estimated objects, in 2^-20 units.
    pub alloc_objects: u64,
}

/// A fixed-capacity, lock-free interning table of stacks.
pub struct StackTable {
    entries: ZeroedSlice<Entry>,
    arena: ZeroedSlice<Word>,
    arena_used: AtomicU64,
    count: AtomicU32,
    overflow_bytes: AtomicU64,
    overflow_objects: AtomicU64,
    overflow_samples: AtomicU64,
}

impl StackTable {
    /// A table for `capacity` stacks (rounded up to a power of two) with
    /// `arena_words` words for their frames.
    pub fn new(capacity: u32, arena_words: usize) -> Option<StackTable> {
        let capacity = capacity.max(2).checked_next_power_of_two()?;
        Some(StackTable {
            entries: ZeroedSlice::new(capacity as usize)?,
            arena: ZeroedSlice::new(arena_words)?,
            arena_used: AtomicU64::new(0),
            count: AtomicU32::new(0),
            overflow_bytes: AtomicU64::new(0),
            overflow_objects: AtomicU64::new(0),
            overflow_samples: AtomicU64::new(0),
        })
    }

    /// Number of entry slots.
    pub fn capacity(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Distinct stacks stored.
    pub fn len(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no stack is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples that landed on [`OVERFLOW`].
    pub fn overflowed(&self) -> u64 {
        self.overflow_samples.load(Ordering::Relaxed)
    }

    /// Bytes of memory the table occupies.
    pub fn footprint(&self) -> usize {
        self.entries.footprint() + self.arena.footprint()
    }

    /// Returns the id of `frames` (interning it if new), or [`OVERFLOW`].
    pub fn intern(&self, frames: &[u64], truncated: bool) -> u32 {
        let hash = hash_frames(frames, truncated);
        let mask = self.entries.len() - 1;
        let mut i = hash as usize & mask;
        for _ in 0..MAX_PROBES.min(self.entries.len()) {
            let e = &self.entries[i];
            // Acquire: pairs with the claiming CAS (AcqRel) below.
            let mut seen = e.hash.load(Ordering::Acquire);
            if seen == 0 {
                match e
                    .hash
                    .compare_exchange(0, hash, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return self.fill(i, e, frames, truncated),
                    Err(other) => seen = other,
                }
            }
            if seen == hash && self.matches(e, frames, truncated) {
                return i as u32;
            }
            i = (i + 1) & mask;
        }
        OVERFLOW
    }

    fn fill(&self, i: usize, e: &Entry, frames: &[u64], truncated: bool) -> u32 {
        let n = frames.len() as u64;
        let offset = self.arena_used.fetch_add(n, Ordering::Relaxed);
        if offset + n > self.arena.len() as u64 {
            // Release: lookups that see DEAD skip this entry.
            e.ready.store(DEAD, Ordering::Release);
            return OVERFLOW;
        }
        for (k, &f) in frames.iter().enumerate() {
            self.arena[offset as usize + k]
                .0
                .store(f, Ordering::Relaxed);
        }
        e.offset.store(offset, Ordering::Relaxed);
        e.len.store(
            n as u32 | if truncated { TRUNCATED } else { 0 },
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
        // Release: whoever Acquire-loads READY sees frames, offset and length.
        e.ready.store(READY, Ordering::Release);
        i as u32
    }

    fn matches(&self, e: &Entry, frames: &[u64], truncated: bool) -> bool {
        let mut spins = 0;
        loop {
            // Acquire: pairs with the Release store of READY in `fill`.
            match e.ready.load(Ordering::Acquire) {
                READY => break,
                DEAD => return false,
                _ if spins < WAIT_SPINS => {
                    spins += 1;
                    spin_hint();
                }
                _ => return false,
            }
        }
        let len = e.len.load(Ordering::Relaxed);
        if (len & TRUNCATED != 0) != truncated || (len & !TRUNCATED) as usize != frames.len() {
            return false;
        }
        let offset = e.offset.load(Ordering::Relaxed) as usize;
        frames
            .iter()
            .enumerate()
            .all(|(k, &f)| self.arena[offset + k].0.load(Ordering::Relaxed) == f)
    }

    /// Adds a sample's weight to stack `id`'s cumulative totals.
    pub fn add(&self, id: u32, bytes: u64, objects: u64) {
        let (b, o) = if id == OVERFLOW {
            self.overflow_samples.fetch_add(1, Ordering::Relaxed);
            (&self.overflow_bytes, &self.overflow_objects)
        } else {
            let e = &self.entries[id as usize];
            (&e.alloc_bytes, &e.alloc_objects)
        };
        b.fetch_add(bytes, Ordering::Relaxed);
        o.fetch_add(objects, Ordering::Relaxed);
    }

    /// The stack `id`, if it is a ready entry.
    pub fn get(&self, id: u32) -> Option<StackView> {
        if id == OVERFLOW {
            return Some(StackView {
                frames: Vec::new(),
                truncated: false,
                alloc_bytes: self.overflow_bytes.load(Ordering::Relaxed),
                alloc_objects: self.overflow_objects.load(Ordering::Relaxed),
            });
        }
        let e = self.entries.get(id as usize)?;
        // Acquire: pairs with the Release store of READY in `fill`.
        if e.ready.load(Ordering::Acquire) != READY {
            return None;
        }
        let len = e.len.load(Ordering::Relaxed);
        let offset = e.offset.load(Ordering::Relaxed) as usize;
        let n = (len & !TRUNCATED) as usize;
        Some(StackView {
            frames: (0..n)
                .map(|k| self.arena[offset + k].0.load(Ordering::Relaxed))
                .collect(),
            truncated: len & TRUNCATED != 0,
            alloc_bytes: e.alloc_bytes.load(Ordering::Relaxed),
            alloc_objects: e.alloc_objects.load(Ordering::Relaxed),
        })
    }

    /// Ids of every ready entry, in slot order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries
            .iter()
            .enumerate()
            // Acquire: as in `get`.
            .filter(|(_, e)| e.ready.load(Ordering::Acquire) == READY)
            .map(|(i, _)| i as u32)
    }
}

/// Two interleaved multiply-xorshift lanes over the addresses (so the
/// multiplications of consecutive frames do not wait on each other), folded
/// and finished; never 0.
fn hash_frames(frames: &[u64], truncated: bool) -> u64 {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut a: u64 = 0xcbf2_9ce4_8422_2325 ^ truncated as u64;
    let mut b: u64 = frames.len() as u64;
    let mut pairs = frames.chunks_exact(2);
    for p in &mut pairs {
        a = (a ^ p[0]).wrapping_mul(K1).rotate_left(29);
        b = (b ^ p[1]).wrapping_mul(K2).rotate_left(31);
    }
    if let [last] = pairs.remainder() {
        a = (a ^ last).wrapping_mul(K1).rotate_left(29);
    }
    let mut h = a ^ b.rotate_left(17);
    h = (h ^ (h >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^= h >> 32;
    h.max(1)
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! Small enough for Miri, whose data-race detector and weak-memory
    //! emulation then check the claim-then-publish protocol on every run.

    use super::*;
    use std::collections::HashMap;

    const ROUNDS: u64 = if cfg!(miri) { 20 } else { 20_000 };
    const THREADS: u64 = 3;

    /// Stacks the threads share, one of them truncated. The table has 16
    /// entries: room for every stack even if each were stored by all three
    /// threads (a waiter that gives up stores its own copy), and few
    /// enough that several stacks probe past each other.
    fn pool() -> Vec<(Vec<u64>, bool)> {
        vec![
            (vec![0x1000, 0x2000, 0x3000], false),
            (vec![0x1000, 0x2000, 0x3000], true),
            (vec![0x1008], false),
            (vec![0x1008, 0x1010, 0x1018, 0x1020, 0x1028], false),
            (vec![], false),
        ]
    }

    #[test]
    fn threads_interning_the_same_stacks_agree_on_frames_and_totals() {
        let table = StackTable::new(16, 64).unwrap();
        let pool = pool();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (table, pool) = (&table, &pool);
                s.spawn(move || {
                    for round in 0..ROUNDS {
                        let k = ((round + t) % pool.len() as u64) as usize;
                        let (frames, truncated) = &pool[k];
                        let id = table.intern(frames, *truncated);
                        assert_ne!(id, OVERFLOW, "room for every stack");
                        let view = table.get(id).expect("an interned id is ready");
                        assert_eq!((&view.frames, view.truncated), (frames, *truncated));
                        table.add(id, k as u64 + 1, 1);
                    }
                });
            }
        });
        // Per distinct stack: the samples and bytes added under all its ids
        // (a stack may rarely get two ids; their totals still add up).
        let mut totals: HashMap<(Vec<u64>, bool), (u64, u64)> = HashMap::new();
        let mut ids = 0;
        for id in table.ids() {
            let v = table.get(id).unwrap();
            let t = totals.entry((v.frames, v.truncated)).or_default();
            t.0 += v.alloc_objects;
            t.1 += v.alloc_bytes;
            ids += 1;
        }
        assert_eq!(ids, table.len());
        assert_eq!(totals.len(), pool.len(), "every stack is stored");
        for (k, stack) in pool.into_iter().enumerate() {
            // Thread t interns stack k in the rounds where (round + t) % n == k.
            let samples: u64 = (0..THREADS)
                .map(|t| {
                    (0..ROUNDS)
                        .filter(|r| ((r + t) % totals.len() as u64) as usize == k)
                        .count() as u64
                })
                .sum();
            assert_eq!(
                totals[&stack],
                (samples, samples * (k as u64 + 1)),
                "{stack:?}"
            );
        }
        assert_eq!(table.overflowed(), 0);
    }
}
