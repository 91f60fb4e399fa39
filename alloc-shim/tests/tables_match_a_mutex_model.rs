//! The lock-free tables behave like a naive `Mutex<HashMap>` model of them,
//! over long pseudo-random operation sequences, alone and under threads.
//!
//! Sequences come from a seeded xorshift; every assertion message carries
//! the seed. `FERROPROF_SEED=0x...` replays one seed (the threaded tests
//! also depend on the interleaving, so they may need a few runs).

#![cfg(not(loom))]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;

use ferroprof_alloc::live::{LiveRecord, LiveTable};
use ferroprof_alloc::stacks::{StackTable, OVERFLOW};

/// Operations per single-threaded run, and per worker thread.
const OPS: usize = if cfg!(miri) { 2_000 } else { 200_000 };
const THREAD_OPS: usize = if cfg!(miri) { 500 } else { 50_000 };
const WORKERS: u32 = 4;

/// xorshift64* (Vigna): small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Spread the seed so that nearby seeds give unrelated streams.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seeds to run: `FERROPROF_SEED` alone if set, else a fixed set.
fn seeds() -> Vec<u64> {
    match std::env::var("FERROPROF_SEED") {
        Ok(s) => {
            let s = s.trim();
            let seed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            vec![seed.unwrap_or_else(|e| panic!("FERROPROF_SEED={s:?}: {e}"))]
        }
        Err(_) => vec![0x5EED, 0xF3AA_0F11, 0x0123_4567_89AB_CDEF],
    }
}

/// A record whose every field derives from `(owner, seq)`, so that a torn
/// read, or a record nobody wrote, fails to decode.
fn encode(owner: u32, seq: u64) -> LiveRecord {
    let key = (u64::from(owner) << 40) | seq;
    let mix = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555;
    LiveRecord {
        addr: key,
        size: mix >> 20,
        stack: owner ^ (mix as u32),
        weight_bytes: mix.rotate_left(17),
        weight_objects: !mix,
    }
}

/// The `(owner, seq)` that `r` was encoded from, or `None` if it is torn.
fn decode(r: &LiveRecord) -> Option<(u32, u64)> {
    let (owner, seq) = ((r.addr >> 40) as u32, r.addr & ((1 << 40) - 1));
    (encode(owner, seq) == *r).then_some((owner, seq))
}

/// A sortable key for comparing collections of records.
fn key(r: &LiveRecord) -> (u64, u64, u32, u64, u64) {
    (r.addr, r.size, r.stack, r.weight_bytes, r.weight_objects)
}

fn sorted(mut records: Vec<LiveRecord>) -> Vec<LiveRecord> {
    records.sort_unstable_by_key(key);
    records
}

fn snapshot(table: &LiveTable) -> Vec<LiveRecord> {
    let mut out = Vec::new();
    table.for_each(|r| out.push(r));
    sorted(out)
}

/// Removes everything in `held`, then checks that exactly `capacity` inserts
/// succeed into distinct slots (none was lost or duplicated).
fn assert_all_slots_come_back(table: &LiveTable, held: impl IntoIterator<Item = u32>, ctx: &str) {
    for s in held {
        table.remove(s);
    }
    assert!(
        table.is_empty(),
        "{ctx}: len {} after removing all",
        table.len()
    );
    let cap = table.capacity();
    let mut slots = HashSet::new();
    for i in 0..cap {
        let s = table
            .insert(encode(9, u64::from(i)))
            .unwrap_or_else(|| panic!("{ctx}: insert {i} of {cap} into an empty table failed"));
        assert!(s < cap, "{ctx}: slot {s} out of range");
        assert!(slots.insert(s), "{ctx}: slot {s} handed out twice");
    }
    assert_eq!(table.insert(encode(9, 999)), None, "{ctx}: table over-full");
    assert_eq!(snapshot(table).len() as u32, cap, "{ctx}");
}

// ---------------------------------------------------------------- live table

/// Single-threaded: every operation's result, `len` and `for_each` agree with
/// a map from slot to record.
#[test]
fn live_table_matches_the_model_single_threaded() {
    for seed in seeds() {
        for cap in [1, 3, 64] {
            live_single(seed, cap);
        }
    }
}

fn live_single(seed: u64, cap: u32) {
    let ctx = format!("seed {seed:#x}, capacity {cap}");
    let mut rng = Rng::new(seed ^ u64::from(cap));
    let table = LiveTable::new(cap).unwrap();
    let model: Mutex<HashMap<u32, LiveRecord>> = Mutex::new(HashMap::new());
    let mut model = model.lock().unwrap();
    let mut seq = 0;
    let mut insert_percent = 50;
    let mut fulls = 0;

    for step in 0..OPS {
        let ctx = format!("{ctx}, step {step}");
        if step % 1000 == 0 {
            // Phases that fill, drain or churn the table.
            insert_percent = [20, 50, 80][rng.below(3) as usize];
        }
        // Sorted: the map's order is random, the run must follow the seed.
        let mut slots: Vec<u32> = model.keys().copied().collect();
        slots.sort_unstable();
        let roll = rng.below(100);
        if slots.is_empty() || roll < insert_percent {
            seq += 1;
            let rec = encode(0, seq);
            match table.insert(rec) {
                Some(s) => {
                    assert!(s < cap, "{ctx}: slot {s} out of range");
                    assert!(
                        model.len() < cap as usize,
                        "{ctx}: insert into a full table"
                    );
                    let old = model.insert(s, rec);
                    assert_eq!(old, None, "{ctx}: slot {s} was live");
                }
                None => {
                    assert_eq!(model.len(), cap as usize, "{ctx}: insert failed, not full");
                    fulls += 1;
                }
            }
        } else {
            let s = slots[rng.below(slots.len() as u64) as usize];
            assert_eq!(table.get(s), model[&s], "{ctx}: get({s})");
            if rng.chance(40) {
                seq += 1;
                let rec = encode(0, seq);
                table.update(s, rec);
                model.insert(s, rec);
            } else {
                let old = model.remove(&s).unwrap();
                assert_eq!(table.remove(s), old, "{ctx}: remove({s})");
            }
        }
        assert_eq!(table.len() as usize, model.len(), "{ctx}: len");
        if rng.chance(2) {
            let expected = sorted(model.values().copied().collect());
            assert_eq!(snapshot(&table), expected, "{ctx}: for_each");
        }
    }
    let expected = sorted(model.values().copied().collect());
    assert_eq!(snapshot(&table), expected, "{ctx}: final for_each");
    assert!(fulls > 0, "{ctx}: the table never filled up");
    assert_all_slots_come_back(&table, model.keys().copied(), &ctx);
}

/// When a record of the threaded model started and stopped existing, in
/// ticks of the model's clock.
#[derive(Clone, Copy)]
struct Lifetime {
    born: u64,
    died: Option<u64>,
}

/// The reference for the threaded test: which records may be live and who
/// owns each slot, all under one lock (so its clock is a real-time order).
#[derive(Default)]
struct LiveModel {
    clock: u64,
    lives: HashMap<(u32, u64), Lifetime>,
    owners: HashMap<u32, u32>,
}

impl LiveModel {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Before the table call that writes `(owner, seq)`.
    fn born(&mut self, owner: u32, seq: u64) {
        let born = self.tick();
        let old = self
            .lives
            .insert((owner, seq), Lifetime { born, died: None });
        assert!(old.is_none(), "record ({owner}, {seq}) born twice");
    }

    /// After the table call that ended `(owner, seq)` returned.
    fn died(&mut self, owner: u32, seq: u64) {
        let now = self.tick();
        let life = self.lives.get_mut(&(owner, seq)).unwrap();
        assert_eq!(life.died, None, "record ({owner}, {seq}) died twice");
        life.died = Some(now);
    }
}

/// Four threads insert, update and remove their own records while a fifth
/// snapshots: each snapshot holds only whole records that the model says
/// were live at some time during it, no slot is ever owned twice, and at the
/// end `for_each` is exactly the model.
#[test]
fn live_table_matches_the_model_under_threads() {
    for seed in seeds() {
        // 64 slots for up to 4 x 32 wanted: the table is often full.
        live_threaded(seed, 64);
        live_threaded(seed, 1024);
    }
}

fn live_threaded(seed: u64, cap: u32) {
    let ctx = format!("seed {seed:#x}, capacity {cap}");
    let table = LiveTable::new(cap).unwrap();
    let model = Mutex::new(LiveModel::default());
    let done = AtomicBool::new(false);

    let (snapshots, records_seen) = thread::scope(|scope| {
        let workers: Vec<_> = (1..=WORKERS)
            .map(|owner| {
                let (table, model, ctx) = (&table, &model, &ctx);
                scope.spawn(move || live_worker(seed, owner, table, model, ctx))
            })
            .collect();
        let snapshotter = scope.spawn(|| {
            let (mut snapshots, mut records_seen) = (0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                let t0 = model.lock().unwrap().clock;
                let mut seen = Vec::new();
                table.for_each(|r| seen.push(r));
                let model = model.lock().unwrap();
                let t1 = model.clock;
                let mut unique = HashSet::new();
                for r in &seen {
                    let Some(id) = decode(r) else {
                        panic!("{ctx}: snapshot {snapshots} saw a torn record {r:?}");
                    };
                    assert!(unique.insert(id), "{ctx}: snapshot saw {id:?} twice");
                    let life = model
                        .lives
                        .get(&id)
                        .unwrap_or_else(|| panic!("{ctx}: snapshot saw {id:?}, never written"));
                    assert!(
                        life.born <= t1 && life.died.is_none_or(|d| d >= t0),
                        "{ctx}: snapshot during [{t0}, {t1}] saw {id:?}, live [{}, {:?}]",
                        life.born,
                        life.died,
                    );
                }
                snapshots += 1;
                records_seen += seen.len() as u64;
            }
            (snapshots, records_seen)
        });
        let held: Vec<Vec<(u32, u64)>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        let counts = snapshotter.join().unwrap();

        // Quiescent: the table is now exactly the model.
        let model = model.lock().unwrap();
        let live: Vec<LiveRecord> = model
            .lives
            .iter()
            .filter(|(_, l)| l.died.is_none())
            .map(|(&(o, s), _)| encode(o, s))
            .collect();
        assert_eq!(snapshot(&table), sorted(live), "{ctx}: final for_each");
        let slots: Vec<u32> = held.iter().flatten().map(|&(s, _)| s).collect();
        assert_eq!(table.len() as usize, slots.len(), "{ctx}: final len");
        for (owner, mine) in (1..).zip(&held) {
            for &(s, seq) in mine {
                assert_eq!(model.owners.get(&s), Some(&owner), "{ctx}: owner of {s}");
                assert_eq!(table.get(s), encode(owner, seq), "{ctx}: get({s})");
            }
        }
        assert_all_slots_come_back(&table, slots, &ctx);
        counts
    });
    assert!(
        snapshots > 0 && records_seen > 0,
        "{ctx}: snapshots saw nothing"
    );
}

/// One owner's life: returns the `(slot, seq)` it still holds.
fn live_worker(
    seed: u64,
    owner: u32,
    table: &LiveTable,
    model: &Mutex<LiveModel>,
    ctx: &str,
) -> Vec<(u32, u64)> {
    let mut rng = Rng::new(seed ^ (u64::from(owner) << 56));
    let mut mine: Vec<(u32, u64)> = Vec::new();
    let mut seq = 0;
    let (mut insert_percent, mut update_percent) = (50, 40);
    for step in 0..THREAD_OPS {
        if step % 500 == 0 {
            insert_percent = [20, 50, 80][rng.below(3) as usize];
            // Update-heavy phases rewrite slots under the snapshot's feet.
            update_percent = [40, 95][rng.below(2) as usize];
        }
        if mine.is_empty() || (mine.len() < 32 && rng.below(100) < insert_percent) {
            seq += 1;
            model.lock().unwrap().born(owner, seq);
            match table.insert(encode(owner, seq)) {
                Some(s) => {
                    let prev = model.lock().unwrap().owners.insert(s, owner);
                    assert_eq!(
                        prev, None,
                        "{ctx}: owner {owner} got slot {s}, already owned"
                    );
                    mine.push((s, seq));
                }
                // Full (perhaps only as this thread saw it): never existed.
                None => model.lock().unwrap().died(owner, seq),
            }
        } else {
            let i = rng.below(mine.len() as u64) as usize;
            let (s, old) = mine[i];
            assert_eq!(
                table.get(s),
                encode(owner, old),
                "{ctx}: owner {owner} get({s})"
            );
            if rng.chance(update_percent) {
                seq += 1;
                model.lock().unwrap().born(owner, seq);
                table.update(s, encode(owner, seq));
                model.lock().unwrap().died(owner, old);
                mine[i].1 = seq;
            } else {
                // Disown before the slot can be handed out again.
                let prev = model.lock().unwrap().owners.remove(&s);
                assert_eq!(prev, Some(owner), "{ctx}: owner {owner} freeing slot {s}");
                let rec = table.remove(s);
                assert_eq!(rec, encode(owner, old), "{ctx}: owner {owner} remove({s})");
                model.lock().unwrap().died(owner, old);
                mine.swap_remove(i);
            }
        }
    }
    mine
}

/// A full table refuses inserts, and keeps working.
#[test]
fn full_live_table_refuses_inserts_and_keeps_working() {
    let table = LiveTable::new(8).unwrap();
    let slots: Vec<u32> = (0..8)
        .map(|i| table.insert(encode(1, i)).expect("room"))
        .collect();
    for i in 0..100 {
        assert_eq!(table.insert(encode(2, i)), None);
    }
    assert_eq!(table.len(), 8);
    assert_eq!(
        snapshot(&table),
        sorted((0..8).map(|i| encode(1, i)).collect())
    );

    assert_eq!(table.remove(slots[3]), encode(1, 3));
    let s = table.insert(encode(3, 0)).expect("one slot free");
    assert_eq!(s, slots[3], "the only free slot");
    assert_eq!(table.insert(encode(3, 1)), None);
    table.update(slots[0], encode(3, 2));
    assert_eq!(table.get(slots[0]), encode(3, 2));
    assert_eq!(snapshot(&table).len(), 8);
    assert_all_slots_come_back(&table, slots, "full table");
}

// --------------------------------------------------------------- stack table

type Stack = (Vec<u64>, bool);

/// `n` random stacks over a small alphabet (some repeat, some are empty,
/// some are marked truncated).
fn stack_pool(rng: &mut Rng, n: usize) -> Vec<Stack> {
    (0..n)
        .map(|_| {
            let depth = rng.below(7) as usize;
            let frames = (0..depth).map(|_| 0x1000 + 0x10 * rng.below(6)).collect();
            (frames, rng.chance(12))
        })
        .collect()
}

/// Single-threaded: same stack -> same id, different stacks -> different
/// ids, `OVERFLOW` exactly once every entry is taken, totals add up.
#[test]
fn stack_table_matches_the_model_single_threaded() {
    for seed in seeds() {
        // Fewer distinct stacks than entries, then more (it fills up).
        stacks_single(seed, 64, 40);
        stacks_single(seed, 64, 200);
    }
}

fn stacks_single(seed: u64, cap: u32, pool: usize) {
    let ctx = format!("seed {seed:#x}, capacity {cap}, pool {pool}");
    let mut rng = Rng::new(seed ^ (u64::from(cap) << 32) ^ pool as u64);
    let stacks = stack_pool(&mut rng, pool);
    // Room in the arena for every entry at the deepest stack.
    let table = StackTable::new(cap, cap as usize * 6).unwrap();
    assert_eq!(table.capacity(), cap);
    let model: Mutex<HashMap<Stack, u32>> = Mutex::new(HashMap::new());
    let mut model = model.lock().unwrap();
    let mut totals: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut overflowed = 0;

    for step in 0..OPS {
        let ctx = format!("{ctx}, step {step}");
        let stack = &stacks[rng.below(pool as u64) as usize];
        let id = table.intern(&stack.0, stack.1);
        match model.get(stack) {
            Some(&known) => assert_eq!(id, known, "{ctx}: {stack:?} changed id"),
            None if model.len() == cap as usize => {
                assert_eq!(id, OVERFLOW, "{ctx}: {stack:?} stored in a full table")
            }
            None => {
                assert!(id < cap, "{ctx}: {stack:?} got id {id}");
                assert!(!totals.contains_key(&id), "{ctx}: id {id} reused");
                model.insert(stack.clone(), id);
            }
        }
        let (bytes, objects) = (rng.below(1 << 20), rng.below(1 << 24));
        table.add(id, bytes, objects);
        let t = totals.entry(id).or_default();
        t.0 += bytes;
        t.1 += objects;
        overflowed += u64::from(id == OVERFLOW);

        if rng.chance(1) {
            check_stacks(&table, &model, &totals, overflowed, &ctx);
        }
    }
    check_stacks(&table, &model, &totals, overflowed, &ctx);
    if pool > 3 * cap as usize {
        assert!(overflowed > 0, "{ctx}: the table never filled up");
    }
}

/// `table` holds exactly the stacks of `model`, with `totals`.
fn check_stacks(
    table: &StackTable,
    model: &HashMap<Stack, u32>,
    totals: &HashMap<u32, (u64, u64)>,
    overflowed: u64,
    ctx: &str,
) {
    assert_eq!(table.len() as usize, model.len(), "{ctx}: len");
    let ids: Vec<u32> = table.ids().collect();
    let mut expected: Vec<u32> = model.values().copied().collect();
    expected.sort_unstable();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{ctx}: ids() out of slot order"
    );
    assert_eq!(ids, expected, "{ctx}: ids()");
    for (stack, &id) in model {
        let view = table
            .get(id)
            .unwrap_or_else(|| panic!("{ctx}: get({id}) is None"));
        assert_eq!(
            (&view.frames, view.truncated),
            (&stack.0, stack.1),
            "{ctx}: get({id})"
        );
        let t = totals.get(&id).copied().unwrap_or_default();
        assert_eq!(
            (view.alloc_bytes, view.alloc_objects),
            t,
            "{ctx}: totals of {id}"
        );
    }
    let over = table.get(OVERFLOW).unwrap();
    let t = totals.get(&OVERFLOW).copied().unwrap_or_default();
    assert!(over.frames.is_empty(), "{ctx}: OVERFLOW has frames");
    assert_eq!(
        (over.alloc_bytes, over.alloc_objects),
        t,
        "{ctx}: OVERFLOW totals"
    );
    assert_eq!(table.overflowed(), overflowed, "{ctx}: overflowed()");
}

/// What the threads of `stacks_threaded` agree on, under one lock.
#[derive(Default)]
struct StackModel {
    /// The stack each id names: a different stack must never get it.
    stack_of: HashMap<u32, Stack>,
    /// Ids each stack was given (more than one only by the documented
    /// give-up-waiting fallback).
    ids_of: HashMap<Stack, HashSet<u32>>,
    totals: HashMap<u32, (u64, u64)>,
    overflowed: u64,
}

/// Four threads intern and add from one pool of stacks at once.
#[test]
fn stack_table_matches_the_model_under_threads() {
    for seed in seeds() {
        stacks_threaded(seed, 256, 150);
        stacks_threaded(seed, 32, 150);
    }
}

fn stacks_threaded(seed: u64, cap: u32, pool: usize) {
    let ctx = format!("seed {seed:#x}, capacity {cap}, pool {pool}");
    let stacks = stack_pool(&mut Rng::new(seed ^ 0xC0FFEE), pool);
    let distinct = stacks.iter().collect::<HashSet<_>>().len();
    let table = StackTable::new(cap, cap as usize * 6).unwrap();
    let model = Mutex::new(StackModel::default());

    thread::scope(|scope| {
        for worker in 0..WORKERS {
            let (table, model, stacks, ctx) = (&table, &model, &stacks, &ctx);
            scope.spawn(move || {
                let mut rng = Rng::new(seed ^ (u64::from(worker) << 48));
                for step in 0..THREAD_OPS {
                    let stack = &stacks[rng.below(pool as u64) as usize];
                    let id = table.intern(&stack.0, stack.1);
                    let (bytes, objects) = (rng.below(1 << 20), rng.below(1 << 24));
                    table.add(id, bytes, objects);

                    let mut m = model.lock().unwrap();
                    let t = m.totals.entry(id).or_default();
                    t.0 += bytes;
                    t.1 += objects;
                    if id == OVERFLOW {
                        m.overflowed += 1;
                        continue;
                    }
                    let named = m.stack_of.entry(id).or_insert_with(|| stack.clone());
                    assert_eq!(
                        named, stack,
                        "{ctx}: worker {worker} step {step}: id {id} names two stacks"
                    );
                    m.ids_of.entry(stack.clone()).or_default().insert(id);
                }
            });
        }
    });

    let m = model.into_inner().unwrap();
    let fallbacks: usize = m.ids_of.values().map(|ids| ids.len() - 1).sum();
    if fallbacks > 0 {
        eprintln!("{ctx}: {fallbacks} stacks interned twice (documented fallback)");
    }
    if m.overflowed > 0 {
        assert_eq!(
            table.len(),
            cap,
            "{ctx}: OVERFLOW but the table is not full"
        );
    } else {
        assert_eq!(m.ids_of.len(), distinct, "{ctx}: a stack never interned");
    }
    // Every id handed out names its stack and holds exactly its totals.
    assert_eq!(table.len() as usize, m.stack_of.len(), "{ctx}: len");
    for (&id, stack) in &m.stack_of {
        let view = table.get(id).unwrap();
        assert_eq!(
            (&view.frames, view.truncated),
            (&stack.0, stack.1),
            "{ctx}: get({id})"
        );
        let t = m.totals.get(&id).copied().unwrap_or_default();
        assert_eq!(
            (view.alloc_bytes, view.alloc_objects),
            t,
            "{ctx}: totals of {id}"
        );
    }
    if fallbacks == 0 {
        // One id per stack: the table is exactly the single-threaded model.
        let by_stack: HashMap<Stack, u32> = m
            .ids_of
            .iter()
            .map(|(s, ids)| (s.clone(), *ids.iter().next().unwrap()))
            .collect();
        check_stacks(&table, &by_stack, &m.totals, m.overflowed, &ctx);
    }
    assert_eq!(table.overflowed(), m.overflowed, "{ctx}: overflowed()");
}

/// A full stack table answers `OVERFLOW` for new stacks, still finds the
/// old ones, and counts what is added to `OVERFLOW`.
#[test]
fn full_stack_table_overflows_and_accounts_overflow() {
    let table = StackTable::new(4, 64).unwrap();
    let ids: Vec<u32> = (0..4u64)
        .map(|i| table.intern(&[i, i + 1], false))
        .collect();
    assert!(ids.iter().all(|&id| id != OVERFLOW));
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 4);
    assert_eq!(table.len(), 4);

    for i in 10..20u64 {
        assert_eq!(
            table.intern(&[i], false),
            OVERFLOW,
            "stack {i} in a full table"
        );
    }
    for (i, &id) in (0..4u64).zip(&ids) {
        assert_eq!(table.intern(&[i, i + 1], false), id, "known stack {i}");
    }
    table.add(OVERFLOW, 100, 3);
    table.add(OVERFLOW, 50, 2);
    table.add(ids[0], 7, 1);
    let over = table.get(OVERFLOW).unwrap();
    assert_eq!((over.alloc_bytes, over.alloc_objects), (150, 5));
    assert_eq!(table.overflowed(), 2);
    assert_eq!(table.get(ids[0]).unwrap().alloc_bytes, 7);
    assert_eq!(table.ids().count(), 4);
}

/// A stack that does not fit in the frame arena overflows too.
#[test]
fn full_stack_arena_overflows_and_accounts_overflow() {
    let table = StackTable::new(16, 8).unwrap();
    let small = table.intern(&[1, 2, 3], false);
    assert_ne!(small, OVERFLOW);
    assert_eq!(
        table.intern(&[9; 6], true),
        OVERFLOW,
        "6 frames in 5 free words"
    );
    assert_eq!(table.intern(&[1, 2, 3], false), small);
    table.add(OVERFLOW, 64, 1);
    assert_eq!(table.get(OVERFLOW).unwrap().alloc_bytes, 64);
    assert_eq!(table.overflowed(), 1);
    assert_eq!(table.ids().collect::<Vec<_>>(), vec![small]);
    assert_eq!(table.get(small).unwrap().frames, vec![1, 2, 3]);
}
