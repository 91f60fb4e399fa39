//! Loom model checks of the CPU sample ring (`ferroprof`'s
//! `src/cpu/ring.rs`): every interleaving (up to a preemption bound) of a
//! two-cell ring raced by producers, abandoned slots and drains.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p ferroprof-alloc --test cpu_ring_loom --release
//! ```
//!
//! The ring belongs to the `ferroprof` crate, but its model checks live
//! here, next to the tables' (`tests/loom.rs`): the ring's source needs only
//! loom, and one loom build of this small crate serves both, where a test
//! of `ferroprof` would build all of its dependencies and dev-dependencies
//! under `--cfg loom` a second time.
//!
//! The preemption bound defaults to 3; `LOOM_MAX_PREEMPTIONS=n` searches
//! deeper. The ring module is crate-private, so this file compiles its
//! source directly; under `--cfg loom` it is built on loom's atomics and
//! loom's `UnsafeCell`, which also fails the run if the reader ever touches
//! a record while a producer still holds it.
//!
//! Loom cannot deliver a signal, but a handler that interrupts a push and
//! runs to completion is one of the interleavings of two producer threads,
//! which these models include.
//!
//! Records are built from one value `v` (frames, length, tid and weight all
//! derive from it) so that a record mixing two writes is caught.

#![cfg(loom)]

#[allow(dead_code)]
#[path = "../../src/cpu/ring.rs"]
mod ring;

use loom::sync::Arc;
use loom::thread;
use ring::{Record, Ring};

mod loom_model;
use loom_model::model;

fn frames_of(v: u32) -> Vec<u64> {
    (0..v % 3 + 1)
        .map(|k| u64::from(v) * 0x101 + k as u64)
        .collect()
}

/// Pushes the record built from `v`; false if the ring refused it.
fn push(ring: &Ring, v: u32) -> bool {
    let Some(mut slot) = ring.try_reserve() else {
        return false;
    };
    let frames = frames_of(v);
    slot.frames_mut()[..frames.len()].copy_from_slice(&frames);
    slot.commit(frames.len(), v as i32, v as u16, v);
    true
}

/// The value `r` was built from; panics if `r` is torn.
fn value_of(r: &Record) -> u32 {
    let v = r.weight();
    assert_eq!(r.tid(), v as i32, "torn record {r:?}");
    assert_eq!(r.flags(), v as u16, "torn record {r:?}");
    assert_eq!(r.frames(), frames_of(v), "torn record {r:?}");
    v
}

/// Drains once, checking each record, and returns the values in order.
fn drain(ring: &Ring) -> Vec<u32> {
    let mut seen = Vec::new();
    let n = ring.drain(|r| seen.push(value_of(r)));
    assert_eq!(n, seen.len());
    seen
}

/// Checks that `seen` holds each value of `pushed` once and nothing else,
/// and that `first` came before `then` if both were read.
fn assert_read_once(mut seen: Vec<u32>, mut pushed: Vec<u32>, order: Option<(u32, u32)>) {
    if let Some((first, then)) = order {
        let at = |v| seen.iter().position(|&s| s == v);
        if let (Some(a), Some(b)) = (at(first), at(then)) {
            assert!(a < b, "{then} read before {first}: {seen:?}");
        }
    }
    seen.sort_unstable();
    pushed.sort_unstable();
    assert_eq!(seen, pushed, "read set differs from committed set");
}

/// Two producers (one pushing twice) fill a two-cell ring while the
/// consumer drains: every committed record is read once, whole, in each
/// producer's order, and reads + drops == attempts.
#[test]
fn racing_pushes_and_a_drain_read_each_committed_record_once() {
    model(|| {
        let ring = Arc::new(Ring::new(2));
        let a = {
            let ring = ring.clone();
            thread::spawn(move || {
                [1, 2]
                    .into_iter()
                    .filter(|&v| push(&ring, v))
                    .collect::<Vec<u32>>()
            })
        };
        let b = {
            let ring = ring.clone();
            thread::spawn(move || {
                [3].into_iter()
                    .filter(|&v| push(&ring, v))
                    .collect::<Vec<u32>>()
            })
        };
        let mut seen = drain(&ring);
        let mut pushed: Vec<u32> = a.join().unwrap();
        pushed.extend(b.join().unwrap());
        seen.extend(drain(&ring));
        assert!(!pushed.is_empty(), "an empty ring refused a push");
        assert_eq!(ring.take_dropped(), 3 - pushed.len() as u64);
        assert_read_once(seen, pushed, Some((1, 2)));
        assert!(drain(&ring).is_empty());
    });
}

/// The consumer frees a cell of a full ring while a producer claims it:
/// the producer either is refused or writes the freed cell only after the
/// consumer has read it.
#[test]
fn a_push_into_a_cell_being_freed_never_tears_either_record() {
    model(|| {
        let ring = Arc::new(Ring::new(2));
        assert!(push(&ring, 1));
        assert!(push(&ring, 2));
        let producer = {
            let ring = ring.clone();
            thread::spawn(move || push(&ring, 3))
        };
        let mut seen = drain(&ring);
        let pushed_3 = producer.join().unwrap();
        seen.extend(drain(&ring));
        let mut pushed = vec![1, 2];
        if pushed_3 {
            pushed.push(3);
        }
        assert_eq!(ring.take_dropped(), u64::from(!pushed_3));
        assert_read_once(seen.clone(), pushed, None);
        assert_eq!(&seen[..2], [1, 2], "order lost");
    });
}

/// A slot dropped uncommitted races a push and a drain: the reader skips
/// it, the push behind it is read, the drop is counted.
#[test]
fn an_abandoned_slot_is_skipped_while_pushes_and_drains_race() {
    model(|| {
        let ring = Arc::new(Ring::new(2));
        let quitter = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut slot = ring.try_reserve().expect("room for two");
                slot.frames_mut()[0] = 0xbad;
                drop(slot);
            })
        };
        let pusher = {
            let ring = ring.clone();
            thread::spawn(move || assert!(push(&ring, 1), "room for two"))
        };
        let mut seen = drain(&ring);
        quitter.join().unwrap();
        pusher.join().unwrap();
        seen.extend(drain(&ring));
        assert_eq!(seen, [1]);
        assert_eq!(ring.take_dropped(), 1);
        // Both cells are free again.
        assert!(push(&ring, 2) && push(&ring, 3));
        assert_eq!(drain(&ring), [2, 3]);
    });
}

/// Two threads drain while a producer pushes twice: the drains never
/// visit one record twice, and between them miss none.
#[test]
fn concurrent_drains_never_visit_a_record_twice() {
    model(|| {
        let ring = Arc::new(Ring::new(2));
        let producer = {
            let ring = ring.clone();
            thread::spawn(move || {
                assert!(push(&ring, 1));
                push(&ring, 2)
            })
        };
        let other = {
            let ring = ring.clone();
            thread::spawn(move || drain(&ring))
        };
        let mut seen = drain(&ring);
        let pushed_2 = producer.join().unwrap();
        seen.extend(other.join().unwrap());
        seen.extend(drain(&ring));
        let pushed = if pushed_2 { vec![1, 2] } else { vec![1] };
        assert_eq!(ring.take_dropped(), u64::from(!pushed_2));
        assert_read_once(seen, pushed, None);
    });
}
