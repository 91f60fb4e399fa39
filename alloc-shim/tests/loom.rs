//! Loom model checks of the two lock-free tables: every interleaving (up to
//! a preemption bound) of tiny tables raced by two or three threads.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p ferroprof-alloc --test loom --release
//! ```
//!
//! The preemption bound defaults to 3 (the whole file then runs in well
//! under a minute); `LOOM_MAX_PREEMPTIONS=n` searches deeper.
//!
//! Live records are built from one value `v` (`addr = v`, `size = 2v`, ...)
//! so that a record mixing the fields of two writes is detected. Each value
//! is announced in `Life::begun` before the write that creates it and in
//! `Life::gone` after the call that ends it, which lets the snapshot check
//! that what it yields was live at some point during the call.

#![cfg(loom)]

use ferroprof_alloc::live::{LiveRecord, LiveTable};
use ferroprof_alloc::stacks::{StackTable, OVERFLOW};
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;

mod loom_model;
use loom_model::model;

/// A record whose every field derives from `v`.
fn rec(v: u64) -> LiveRecord {
    LiveRecord {
        addr: v,
        size: v * 2,
        stack: v as u32 * 5,
        weight_bytes: v * 3,
        weight_objects: v * 7,
    }
}

/// The value `r` was built from; panics if `r` is torn.
fn value_of(r: &LiveRecord) -> u64 {
    assert_eq!(*r, rec(r.addr), "torn record {r:?}");
    r.addr
}

fn bit(v: u64) -> u32 {
    1 << v
}

/// Which record values have started to exist and which have stopped.
struct Life {
    begun: AtomicU32,
    gone: AtomicU32,
}

impl Life {
    fn new() -> Life {
        Life {
            begun: AtomicU32::new(0),
            gone: AtomicU32::new(0),
        }
    }

    /// Called before the insert or update that writes `rec(v)`.
    fn begin(&self, v: u64) {
        // Release: a snapshot that sees `rec(v)` synchronises with the
        // table's Release store that published it, which comes after this.
        self.begun.fetch_or(bit(v), Ordering::Release);
    }

    /// Called after the update or remove that ended `rec(v)` returned.
    fn end(&self, v: u64) {
        // Release: pairs with the Acquire load in `gone`, so a snapshot that
        // sees this bit also sees the table's write that ended `rec(v)`.
        self.gone.fetch_or(bit(v), Ordering::Release);
    }

    fn begun(&self) -> u32 {
        // Acquire: pairs with `begin`.
        self.begun.load(Ordering::Acquire)
    }

    fn gone(&self) -> u32 {
        // Acquire: pairs with `end`.
        self.gone.load(Ordering::Acquire)
    }
}

/// Runs `for_each` and checks each record is whole and was live at some
/// point during the call.
fn checked_snapshot(table: &LiveTable, life: &Life) -> Vec<u64> {
    let gone_before = life.gone();
    let mut seen = Vec::new();
    table.for_each(|r| seen.push(value_of(&r)));
    let begun_after = life.begun();
    for &v in &seen {
        assert_ne!(
            begun_after & bit(v),
            0,
            "rec({v}) seen before it was written"
        );
        assert_eq!(gone_before & bit(v), 0, "rec({v}) seen after it was gone");
    }
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a record seen twice: {seen:?}");
    seen
}

/// Removes every live record, then checks that exactly `capacity` inserts
/// succeed, into distinct slots, and the next one fails.
fn assert_all_slots_come_back(table: &LiveTable, held: &[u32]) {
    for &s in held {
        table.remove(s);
    }
    assert!(table.is_empty());
    let mut slots: Vec<u32> = (0..table.capacity())
        .map(|i| {
            table
                .insert(rec(10 + u64::from(i)))
                .unwrap_or_else(|| panic!("insert {i} of {} failed", table.capacity()))
        })
        .collect();
    assert_eq!(table.insert(rec(20)), None, "table over-full");
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(
        slots.len() as u32,
        table.capacity(),
        "slot handed out twice"
    );
    let mut n = 0;
    table.for_each(|r| {
        value_of(&r);
        n += 1;
    });
    assert_eq!(n, table.capacity());
}

/// (a) Two owners insert and remove while a third thread snapshots.
#[test]
fn snapshot_yields_only_whole_records_that_were_live() {
    model(|| {
        let table = Arc::new(LiveTable::new(2).unwrap());
        let life = Arc::new(Life::new());

        let owner = |v: u64| {
            let (table, life) = (table.clone(), life.clone());
            thread::spawn(move || {
                life.begin(v);
                let s = table.insert(rec(v)).expect("room for two");
                assert_eq!(table.remove(s), rec(v));
                life.end(v);
            })
        };
        let a = owner(1);
        let b = owner(2);

        checked_snapshot(&table, &life);
        a.join().unwrap();
        b.join().unwrap();

        assert!(table.is_empty());
        assert_eq!(checked_snapshot(&table, &life), Vec::<u64>::new());
    });
}

/// (a) An owner inserts, updates and removes while another thread
/// snapshots: the snapshot sees the first record, the second, or neither,
/// never a mix.
#[test]
fn snapshot_of_an_updated_record_is_never_torn() {
    model(|| {
        let table = Arc::new(LiveTable::new(2).unwrap());
        let life = Arc::new(Life::new());

        let owner = {
            let (table, life) = (table.clone(), life.clone());
            thread::spawn(move || {
                life.begin(1);
                let s = table.insert(rec(1)).expect("room");
                life.begin(2);
                table.update(s, rec(2));
                life.end(1);
                assert_eq!(table.get(s), rec(2));
                assert_eq!(table.remove(s), rec(2));
                life.end(2);
            })
        };

        let seen = checked_snapshot(&table, &life);
        assert!(seen.len() <= 1, "{seen:?}");
        owner.join().unwrap();
        assert!(checked_snapshot(&table, &life).is_empty());
    });
}

/// (a) The one slot of the table is freed by one thread and taken by the
/// other while the snapshot reads it: it must never mix the two records.
#[test]
fn snapshot_of_a_reused_slot_is_never_torn() {
    model(|| {
        let table = Arc::new(LiveTable::new(1).unwrap());
        let life = Arc::new(Life::new());

        let owner = |v: u64| {
            let (table, life) = (table.clone(), life.clone());
            thread::spawn(move || {
                life.begin(v);
                let Some(s) = table.insert(rec(v)) else {
                    return false;
                };
                assert_eq!(s, 0);
                assert_eq!(table.remove(s), rec(v));
                life.end(v);
                true
            })
        };
        let a = owner(1);
        let b = owner(2);

        checked_snapshot(&table, &life);
        let (ok_a, ok_b) = (a.join().unwrap(), b.join().unwrap());
        assert!(ok_a || ok_b, "both inserts into an empty table failed");

        assert!(checked_snapshot(&table, &life).is_empty());
        assert_all_slots_come_back(&table, &[]);
    });
}

/// (b) ABA on the free list: while one thread pops, the other pops twice
/// and pushes one back. No slot may be lost or held by two threads.
#[test]
fn freed_slots_are_neither_lost_nor_shared() {
    model(|| {
        let table = Arc::new(LiveTable::new(2).unwrap());
        // Both slots on the free list: [second, first].
        let first = table.insert(rec(1)).unwrap();
        let second = table.insert(rec(2)).unwrap();
        table.remove(first);
        table.remove(second);

        let a = {
            let table = table.clone();
            thread::spawn(move || table.insert(rec(3)))
        };
        let b = {
            let table = table.clone();
            thread::spawn(move || {
                let x = table.insert(rec(4));
                let y = table.insert(rec(5));
                if let (Some(x), Some(y)) = (x, y) {
                    assert_ne!(x, y, "one slot handed out twice");
                }
                if let Some(x) = x {
                    assert_eq!(table.remove(x), rec(4));
                }
                y
            })
        };
        let held_a = a.join().unwrap();
        let held_b = b.join().unwrap();

        // (slot, value) of the records still live.
        let held: Vec<(u32, u64)> = held_a
            .map(|s| (s, 3))
            .into_iter()
            .chain(held_b.map(|s| (s, 5)))
            .collect();
        if let [(x, _), (y, _)] = held[..] {
            assert_ne!(x, y, "one slot held by two threads");
        }
        assert_eq!(table.len() as usize, held.len());
        for &(s, v) in &held {
            assert_eq!(table.get(s), rec(v));
        }
        let mut seen: Vec<u64> = Vec::new();
        table.for_each(|r| seen.push(value_of(&r)));
        seen.sort_unstable();
        let expected: Vec<u64> = held.iter().map(|&(_, v)| v).collect();
        assert_eq!(seen, expected);
        let slots: Vec<u32> = held.iter().map(|&(s, _)| s).collect();
        assert_all_slots_come_back(&table, &slots);
    });
}

/// (b) Two frees race each other and an insert on a full table.
#[test]
fn racing_frees_and_insert_keep_every_slot() {
    model(|| {
        let table = Arc::new(LiveTable::new(2).unwrap());
        let first = table.insert(rec(1)).unwrap();
        let second = table.insert(rec(2)).unwrap();

        let free = |s: u32, v: u64| {
            let table = table.clone();
            thread::spawn(move || assert_eq!(table.remove(s), rec(v)))
        };
        let a = free(first, 1);
        let b = free(second, 2);
        let taken = table.insert(rec(3));
        a.join().unwrap();
        b.join().unwrap();

        let held: Vec<u32> = taken.into_iter().collect();
        assert_eq!(table.len() as usize, held.len());
        if let Some(s) = taken {
            assert_eq!(table.get(s), rec(3));
        }
        assert_all_slots_come_back(&table, &held);
    });
}

/// The id a stack gets in an empty `StackTable::new(4, 16)`: its home slot.
fn home_slot(frames: &[u64]) -> u32 {
    let out = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
    let (o, frames) = (out.clone(), frames.to_vec());
    loom::model(move || {
        let table = StackTable::new(4, 16).unwrap();
        o.store(
            table.intern(&frames, false),
            std::sync::atomic::Ordering::Relaxed,
        );
    });
    out.load(std::sync::atomic::Ordering::Relaxed)
}

/// (c) Two threads intern the same stack while a third interns a different
/// one that hashes to the same home slot; each adds a weight to its id.
#[test]
fn racing_interns_agree_on_ids_and_totals() {
    const SAME: [u64; 3] = [0x1000, 0x2000, 0x3000];
    let home = home_slot(&SAME);
    // A second stack whose probe sequence starts at the same slot, so the
    // race also covers a claimed-but-unfilled entry with a different hash.
    let other: Vec<u64> = (1u64..)
        .map(|k| vec![0x5000 + k, 0x6000])
        .find(|f| home_slot(f) == home)
        .unwrap();

    model(move || {
        let table = Arc::new(StackTable::new(4, 16).unwrap());
        let intern = |frames: Vec<u64>, bytes: u64| {
            let table = table.clone();
            thread::spawn(move || {
                let id = table.intern(&frames, false);
                assert_ne!(id, OVERFLOW, "room for every stack");
                assert_eq!(table.get(id).expect("ready after intern").frames, frames);
                table.add(id, bytes, 1);
                id
            })
        };
        let a = intern(SAME.to_vec(), 10);
        let b = intern(SAME.to_vec(), 20);

        let c = table.intern(&other, false);
        assert_ne!(c, OVERFLOW);
        table.add(c, 5, 1);
        let (a, b) = (a.join().unwrap(), b.join().unwrap());

        assert_ne!(a, c, "different stacks share an id");
        assert_ne!(b, c, "different stacks share an id");
        let view = |id| table.get(id).unwrap();
        assert_eq!(view(c).frames, other);
        assert_eq!((view(c).alloc_bytes, view(c).alloc_objects), (5, 1));
        // Same frames, same id. The documented fallback (a waiter gives up
        // on an unfinished entry after WAIT_SPINS spins and interns the
        // frames again) cannot happen under loom: a thread that yields is
        // not rescheduled before another thread has run, and no longer
        // reads a store it saw before yielding, so the filler always
        // finishes first. Two ids here mean the waiter gave up early.
        assert_eq!(a, b, "one stack, two ids: {:?}, {:?}", view(a), view(b));
        assert_eq!((view(a).alloc_bytes, view(a).alloc_objects), (30, 2));
        assert_eq!(table.len(), 2);
        let ids: Vec<u32> = table.ids().collect();
        let mut expected = vec![a, c];
        expected.sort_unstable();
        assert_eq!(ids, expected);
        assert_eq!(table.get(OVERFLOW).unwrap().alloc_bytes, 0);
    });
}

/// (c) Three different stacks race for a table with two entries: one of
/// them overflows, and no weight is lost.
#[test]
fn racing_interns_into_a_full_table_account_every_sample() {
    model(|| {
        let table = Arc::new(StackTable::new(2, 16).unwrap());
        let intern = |frames: Vec<u64>, bytes: u64| {
            let table = table.clone();
            thread::spawn(move || {
                let id = table.intern(&frames, false);
                if id != OVERFLOW {
                    assert_eq!(table.get(id).unwrap().frames, frames);
                }
                table.add(id, bytes, 1);
                (id, frames, bytes)
            })
        };
        let a = intern(vec![1, 2], 1);
        let b = intern(vec![3], 10);
        let c = intern(vec![4, 5, 6], 100);
        let results = [a.join().unwrap(), b.join().unwrap(), c.join().unwrap()];

        let stored: Vec<u32> = results
            .iter()
            .map(|r| r.0)
            .filter(|&id| id != OVERFLOW)
            .collect();
        assert_eq!(stored.len(), 2, "exactly one overflows: {results:?}");
        assert_ne!(stored[0], stored[1], "different stacks share an id");
        for (id, frames, bytes) in &results {
            let v = table.get(*id).unwrap();
            assert_eq!(v.alloc_bytes, *bytes);
            assert_eq!(v.alloc_objects, 1);
            if *id != OVERFLOW {
                assert_eq!(&v.frames, frames);
            }
        }
        assert_eq!(table.overflowed(), 1);
        assert_eq!(table.len(), 2);
    });
}
