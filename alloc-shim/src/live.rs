//! The live table: one record per sampled block that has not been freed.
//!
//! Because every sampled block lives in the region and carries its slot
//! number in its header, the table never searches: insert takes a free slot,
//! remove gives that slot back, both O(1) and lock-free. The table is a
//! fixed array of slots chosen at first use, plus a Treiber stack of free
//! slot indices (head = `tag << 32 | index + 1`, the tag defeating ABA) and a
//! high-water mark for slots never used yet. When no slot is free, `insert`
//! fails at once; the caller counts the drop (design rule 3) and nothing
//! grows.
//!
//! Each slot is guarded by a sequence word, in the manner of a seqlock:
//!
//! ```text
//!   state = generation; odd = live, even = free or being written
//!   insert:  (slot free, even g)  write fields, store g+1  (Release)
//!   update:  (live, odd g)        store g+1, fence, write, store g+2
//!   remove:  (live, odd g)        store g+1, then push the index
//! ```
//!
//! Only the thread that owns the block writes its slot; the snapshot reads
//! `state`, the fields, then `state` again, and keeps the record only if both
//! reads agree on the same odd generation. Fields are atomics so that a torn
//! read is merely discarded, never undefined behaviour.

use crate::primitive::{fence, AtomicU32, AtomicU64, Ordering};
use crate::storage::{Zeroed, ZeroedSlice};

/// What the table keeps about one live sampled block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LiveRecord {
    /// The user pointer of the block.
    pub addr: u64,
    /// The size the user asked for.
    pub size: u64,
    /// The stack that allocated it (an id in the stack table).
    pub stack: u32,
    /// Estimated bytes this sample stands for.
    pub weight_bytes: u64,
    /// Estimated objects this sample stands for, in 2^-20 units.
    pub weight_objects: u64,
}

#[derive(Default)]
struct Slot {
    state: AtomicU64,
    addr: AtomicU64,
    size: AtomicU64,
    weight_bytes: AtomicU64,
    weight_objects: AtomicU64,
    stack: AtomicU32,
    /// Next free slot + 1 while this slot is on the free stack.
    next: AtomicU32,
}

// SAFETY: a `Slot` is only atomics; all-zero atomics are valid zero values.
unsafe impl Zeroed for Slot {
    fn zeroed() -> Self {
        Slot::default()
    }
}

/// A fixed-capacity, lock-free table of live sampled blocks.
pub struct LiveTable {
    slots: ZeroedSlice<Slot>,
    /// Slots `[0, high)` have been handed out at least once.
    high: AtomicU32,
    free: AtomicU64,
}

impl LiveTable {
    /// A table with room for `capacity` live records; `None` if its memory
    /// cannot be mapped.
    pub fn new(capacity: u32) -> Option<LiveTable> {
        Some(LiveTable {
            slots: ZeroedSlice::new(capacity as usize)?,
            high: AtomicU32::new(0),
            free: AtomicU64::new(0),
        })
    }

    /// Slots in the table.
    pub fn capacity(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Records currently live: the slots below the high-water mark whose
    /// generation is odd. Counted by reading them, not kept in a counter,
    /// so that `insert` and `remove` (once per sample each) share no
    /// read-modify-write beyond the free stack's; a call reads one word
    /// per slot ever used at once. Records inserted or removed meanwhile
    /// may or may not be counted.
    pub fn len(&self) -> u32 {
        // Acquire: as in `for_each`, slots below `high` are initialised.
        let high = self.high.load(Ordering::Acquire) as usize;
        let slots = &self.slots[..high.min(self.slots.len())];
        // Relaxed: a count, nothing is read through it.
        let live = slots
            .iter()
            .filter(|s| s.state.load(Ordering::Relaxed) % 2 == 1);
        live.count() as u32
    }

    /// Whether no record is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the table occupies.
    pub fn footprint(&self) -> usize {
        self.slots.footprint()
    }

    /// Stores `rec` and returns its slot, or `None` when the table is full.
    pub fn insert(&self, rec: LiveRecord) -> Option<u32> {
        let index = self.take_slot()?;
        let slot = &self.slots[index as usize];
        let g = slot.state.load(Ordering::Relaxed);
        debug_assert!(g.is_multiple_of(2), "free slot must be even");
        // Release fence: a snapshot that reads any field written below
        // synchronises with it and then sees `state` at least at the even
        // generation set when this slot was last freed, so it cannot take a
        // half-written record for the previous one.
        fence(Ordering::Release);
        write_fields(slot, &rec);
        // Release: a snapshot that Acquire-loads this odd generation sees
        // every field written above.
        slot.state.store(g + 1, Ordering::Release);
        Some(index)
    }

    /// Reads the record in `index`; only for the owner of the block.
    pub fn get(&self, index: u32) -> LiveRecord {
        read_fields(&self.slots[index as usize])
    }

    /// Replaces the record in live slot `index` (the owner moved or resized
    /// the block).
    pub fn update(&self, index: u32, rec: LiveRecord) {
        let slot = &self.slots[index as usize];
        let g = slot.state.load(Ordering::Relaxed);
        debug_assert!(g % 2 == 1, "updating a slot that is not live");
        slot.state.store(g + 1, Ordering::Relaxed);
        // Release fence: orders the even generation above before the field
        // writes, as in `insert`.
        fence(Ordering::Release);
        write_fields(slot, &rec);
        // Release: publishes the new fields with the new odd generation.
        slot.state.store(g + 2, Ordering::Release);
    }

    /// Frees live slot `index` and returns what it held.
    pub fn remove(&self, index: u32) -> LiveRecord {
        let slot = &self.slots[index as usize];
        let rec = read_fields(slot);
        let g = slot.state.load(Ordering::Relaxed);
        debug_assert!(g % 2 == 1, "removing a slot that is not live");
        slot.state.store(g + 1, Ordering::Relaxed);
        self.put_slot(index);
        rec
    }

    /// Calls `f` with every record that was live and stable while it was read.
    /// Records written concurrently may be skipped; none is ever torn.
    pub fn for_each(&self, mut f: impl FnMut(LiveRecord)) {
        let high = self.high.load(Ordering::Acquire) as usize;
        for slot in &self.slots[..high.min(self.slots.len())] {
            for _attempt in 0..4 {
                // Acquire: pairs with the Release store of the odd generation.
                let before = slot.state.load(Ordering::Acquire);
                if before % 2 == 0 {
                    break;
                }
                let rec = read_fields(slot);
                // Acquire fence: if any field read above came from a later
                // writer, the load below sees that writer's generation.
                fence(Ordering::Acquire);
                if slot.state.load(Ordering::Relaxed) == before {
                    f(rec);
                    break;
                }
            }
        }
    }

    fn take_slot(&self) -> Option<u32> {
        // Acquire: pairs with the Release push in `put_slot`, so the `next`
        // link and the slot's even generation are visible.
        let mut head = self.free.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == 0 {
                break;
            }
            let next = self.slots[(top - 1) as usize].next.load(Ordering::Relaxed);
            let tagged = ((head >> 32).wrapping_add(1) << 32) | next as u64;
            match self.free.compare_exchange_weak(
                head,
                tagged,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(top - 1),
                Err(seen) => head = seen,
            }
        }
        let mut high = self.high.load(Ordering::Relaxed);
        loop {
            if high as usize >= self.slots.len() {
                return None;
            }
            // Release: `for_each` Acquire-loads `high` and then reads slots
            // below it; their zeroed state is trivially visible, and this
            // keeps the count monotonic.
            match self.high.compare_exchange_weak(
                high,
                high + 1,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(high),
                Err(seen) => high = seen,
            }
        }
    }

    fn put_slot(&self, index: u32) {
        let mut head = self.free.load(Ordering::Relaxed);
        loop {
            self.slots[index as usize]
                .next
                .store(head as u32, Ordering::Relaxed);
            let tagged = ((head >> 32).wrapping_add(1) << 32) | (index + 1) as u64;
            // Release: the `next` link and the even generation stored by
            // `remove` are visible to whoever pops this slot.
            match self.free.compare_exchange_weak(
                head,
                tagged,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => head = seen,
            }
        }
    }
}

fn write_fields(slot: &Slot, rec: &LiveRecord) {
    slot.addr.store(rec.addr, Ordering::Relaxed);
    slot.size.store(rec.size, Ordering::Relaxed);
    slot.stack.store(rec.stack, Ordering::Relaxed);
    slot.weight_bytes.store(rec.weight_bytes, Ordering::Relaxed);
    slot.weight_objects
        .store(rec.weight_objects, Ordering::Relaxed);
}

fn read_fields(slot: &Slot) -> LiveRecord {
    LiveRecord {
        addr: slot.addr.load(Ordering::Relaxed),
        size: slot.size.load(Ordering::Relaxed),
        stack: slot.stack.load(Ordering::Relaxed),
        weight_bytes: slot.weight_bytes.load(Ordering::Relaxed),
        weight_objects: slot.weight_objects.load(Ordering::Relaxed),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! Small enough for Miri, whose data-race detector and weak-memory
    //! emulation then check the seqlock and the free stack on every run.

    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;

    const OPS: u64 = if cfg!(miri) { 60 } else { 20_000 };
    const WRITERS: u32 = 2;
    const CAPACITY: u32 = 5;

    /// A record whose every field derives from `(owner, seq)`: a torn read
    /// fails to decode.
    fn encode(owner: u32, seq: u64) -> LiveRecord {
        let key = u64::from(owner) << 40 | seq;
        let mix = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        LiveRecord {
            addr: key,
            size: mix >> 7,
            stack: owner ^ mix as u32,
            weight_bytes: mix.rotate_left(17),
            weight_objects: !mix,
        }
    }

    fn decodes(r: &LiveRecord) -> bool {
        encode((r.addr >> 40) as u32, r.addr & ((1 << 40) - 1)) == *r
    }

    #[test]
    fn writers_and_a_snapshot_reader_never_see_a_torn_or_lost_record() {
        let table = LiveTable::new(CAPACITY).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut snapshots = 0u64;
                loop {
                    // Acquire: pairs with the Release store below, so the
                    // last snapshot starts after every writer finished.
                    let last = done.load(std::sync::atomic::Ordering::Acquire);
                    let mut seen = 0;
                    table.for_each(|r| {
                        assert!(decodes(&r), "torn record {r:?}");
                        seen += 1;
                    });
                    assert!(seen <= CAPACITY);
                    snapshots += 1;
                    if last {
                        assert_eq!(seen, 0, "records left after every remove");
                        return snapshots;
                    }
                    std::thread::yield_now();
                }
            });
            let writers: Vec<_> = (0..WRITERS)
                .map(|owner| {
                    let table = &table;
                    s.spawn(move || {
                        // The slots this writer holds and what it put there.
                        let mut held: Vec<(u32, LiveRecord)> = Vec::new();
                        for seq in 1..=OPS {
                            let rec = encode(owner, seq);
                            match seq % 4 {
                                0 | 1 => {
                                    // None: full; the next removes make room.
                                    if let Some(slot) = table.insert(rec) {
                                        held.push((slot, rec));
                                    }
                                }
                                2 if !held.is_empty() => {
                                    let i = seq as usize % held.len();
                                    let (slot, old) = &mut held[i];
                                    assert_eq!(table.get(*slot), *old);
                                    table.update(*slot, rec);
                                    *old = rec;
                                }
                                _ if !held.is_empty() => {
                                    let (slot, old) = held.swap_remove(0);
                                    assert_eq!(table.remove(slot), old, "slot {slot}");
                                }
                                _ => {}
                            }
                        }
                        for (slot, old) in held {
                            assert_eq!(table.remove(slot), old, "slot {slot}");
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            // Release: see the Acquire load in the reader.
            done.store(true, std::sync::atomic::Ordering::Release);
            assert!(reader.join().unwrap() >= 1);
        });
        assert!(table.is_empty(), "len {} after every remove", table.len());
        // No slot was lost or handed out twice by the free stack.
        let slots: HashSet<u32> = (0..CAPACITY)
            .map(|i| table.insert(encode(9, u64::from(i))).expect("a free slot"))
            .collect();
        assert_eq!(slots.len(), CAPACITY as usize);
        assert!(slots.iter().all(|&s| s < CAPACITY));
        assert_eq!(table.insert(encode(9, 99)), None, "over-full");
    }
}
