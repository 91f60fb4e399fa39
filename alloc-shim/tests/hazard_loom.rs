//! Loom model checks of the hazard pointers that free the stack walks'
//! replaced module lists (`src/unwind/hazard.rs`): every interleaving (up
//! to a preemption bound) of readers pinning the current value against the
//! one thread that replaces values and frees the replaced ones.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p ferroprof-alloc --test hazard_loom --release
//! ```
//!
//! The module is crate-private, so this file compiles its source directly;
//! under `--cfg loom` it is built on loom's atomics and fences. Each value
//! holds a loom `UnsafeCell` that readers read while pinned and the freeing
//! side overwrites (poisons) before dropping it: loom fails the run if a
//! free is not ordered after every read of a reader that pinned the value,
//! and the readers also check that they never see the poison.
//!
//! Loom cannot deliver a signal, but a handler that pins, walks and unpins
//! while the thread it interrupted replaces is one of the interleavings of
//! a reader thread and the replacing thread, which these models include.

#![cfg(loom)]

#[allow(dead_code)]
#[path = "../src/unwind/hazard.rs"]
mod hazard;

use hazard::{Current, Hazard};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

mod loom_model;
use loom_model::model;

/// What a freed value's cell holds.
const POISON: u64 = u64::MAX;

struct Value {
    cell: UnsafeCell<u64>,
}

fn value(v: u64) -> *mut Value {
    Box::into_raw(Box::new(Value {
        cell: UnsafeCell::new(v),
    }))
}

/// Poisons and drops a value: the "free" loom checks against the reads.
fn free(p: *mut Value) {
    // SAFETY: `p` came from `value` and is freed once, by the replacer,
    // which the model checks is ordered after every read of it.
    unsafe {
        (*p).cell.with_mut(|c| *c = POISON);
        drop(Box::from_raw(p));
    }
}

/// Reads a value; it must be pinned.
fn read(value: &Value) -> u64 {
    let v = value.cell.with(|c| {
        // SAFETY: the value is pinned, so not freed (what the model checks).
        unsafe { *c }
    });
    assert_ne!(v, POISON, "a pinned value was freed");
    v
}

struct Shared {
    current: Current<Value>,
    hazards: [Hazard<Value>; 2],
}

impl Shared {
    fn new(first: u64) -> Arc<Shared> {
        let s = Shared {
            current: Current::new(),
            hazards: [Hazard::new(), Hazard::new()],
        };
        s.current.replace(value(first));
        Arc::new(s)
    }

    /// One walk through hazard `i`: pin, read, unpin. Returns what it read
    /// (None: it went without, as a walk does when pinning gives up).
    fn walk(&self, i: usize) -> Option<u64> {
        self.current
            .with_pinned(Some(&self.hazards[i]), |v| v.map(read))
    }

    /// One walk without a hazard.
    fn walk_unslotted(&self) -> Option<u64> {
        self.current.with_pinned(None, |v| v.map(read))
    }

    /// Replaces the value with `v`, keeps the old one, frees what is free.
    fn replace(&self, v: u64, retired: &mut Vec<usize>) {
        let old = self.current.replace(value(v));
        retired.push(old as usize);
        self.reclaim(retired);
    }

    fn reclaim(&self, retired: &mut Vec<usize>) {
        self.current.reclaim(retired, || self.hazards.iter(), free);
    }

    /// After every reader is gone: everything retired can be freed.
    fn finish(&self, mut retired: Vec<usize>) {
        self.reclaim(&mut retired);
        assert!(retired.is_empty(), "{} values stayed held", retired.len());
        free(self.current.replace(core::ptr::null_mut()));
    }
}

/// Runs `reader` on `readers` threads (each given its index) while this
/// thread replaces the value with each of `values` in turn, freeing what it
/// may; then, with the readers gone, checks that everything can be freed.
fn race<F>(readers: usize, reader: F, values: &[u64])
where
    F: Fn(&Shared, usize) + Clone + Send + 'static,
{
    let s = Shared::new(1);
    let handles: Vec<_> = (0..readers)
        .map(|i| {
            let (s, reader) = (s.clone(), reader.clone());
            thread::spawn(move || reader(&s, i))
        })
        .collect();
    let mut retired = Vec::new();
    for &v in values {
        s.replace(v, &mut retired);
    }
    for h in handles {
        h.join().unwrap();
    }
    s.finish(retired);
}

/// A reader walking twice while the replacer replaces twice and frees.
#[test]
fn a_pinned_value_is_never_freed() {
    model(|| {
        race(
            1,
            |s, i| {
                let a = s.walk(i);
                let b = s.walk(i);
                // Values only move forward.
                if let (Some(a), Some(b)) = (a, b) {
                    assert!(a <= b, "read {a} then {b}");
                }
            },
            &[2, 3],
        )
    });
}

/// Two readers on their own hazards against one replacement.
#[test]
fn two_readers_and_a_replacement() {
    model(|| {
        race(
            2,
            |s, i| {
                s.walk(i);
            },
            &[2],
        )
    });
}

/// A reader without a hazard (its slot pool was busy) against
/// replacements: nothing is freed while it runs.
#[test]
fn an_unslotted_reader_holds_every_value() {
    model(|| {
        race(
            1,
            |s, _| {
                s.walk_unslotted();
            },
            &[2, 3],
        )
    });
}

/// A reader that pins, is preempted, and reads again: the value it pinned
/// survives the replacement and reclaim that may run meanwhile.
#[test]
fn a_value_stays_while_pinned_across_a_replacement() {
    model(|| {
        race(
            1,
            |s, i| {
                s.current.with_pinned(Some(&s.hazards[i]), |value| {
                    let value = value.expect("a value is current");
                    let v = read(value);
                    thread::yield_now();
                    assert_eq!(read(value), v, "a pinned value changed");
                })
            },
            &[2],
        )
    });
}

/// A replaced value no reader holds is freed at once (the replacer does not
/// keep everything).
#[test]
fn a_value_no_reader_holds_is_freed_at_once() {
    model(|| {
        let s = Shared::new(1);
        let mut retired = Vec::new();
        s.replace(2, &mut retired);
        assert!(retired.is_empty(), "no reader: freed at once");
        s.finish(retired);
    });
}
