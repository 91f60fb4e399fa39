//! The CPU sample ring: where the SIGPROF handler leaves stacks for the
//! profiler thread.
//!
//! # The problem
//!
//! The handler runs on whichever thread the timer interrupted, at any
//! instruction, possibly in the middle of another push on the same thread
//! (a second signal arriving while the first handler still runs). Design
//! rule 2 forbids it to allocate, to take a lock the interrupted code could
//! hold, or to wait for anything: a handler that waits for the code it
//! interrupted waits forever. Design rule 3 forbids it to lose a sample
//! without counting it. Once per period the profiler thread takes what the
//! handlers left and aggregates it, off the hot path.
//!
//! # The algorithm
//!
//! A bounded multi-producer, single-consumer ring following Dmitry
//! Vyukov's bounded MPMC queue ("Bounded MPMC queue", 1024cores.net; also
//! the basis of crossbeam's `ArrayQueue`), restricted to one consumer. The
//! ring is an array of `capacity` cells (a power of two) allocated once by
//! [`Ring::new`]. Positions count pushes and never go back (they wrap at
//! `usize::MAX`, and every comparison is a wrapping one); position `p` lives
//! in cell `p & mask`. Each cell carries a sequence word `seq` saying which
//! position it is ready for and whether that position's record is written:
//!
//! ```text
//!   seq == p              free for position p (after `capacity` earlier
//!                         positions were read out of it, or initially)
//!     try_reserve:        CAS tail p -> p+1        (seq unchanged)
//!   seq == p, tail > p    claimed: the producer that won the CAS owns the
//!                         record and writes frames straight into it
//!     Slot::commit / drop: store seq = p+1        (Release)
//!   seq == p+1            published: committed (`live`) or abandoned
//!     drain, at head == p: read if live, clear live, store seq = p+cap
//!   seq == p+cap          free for position p+cap
//! ```
//!
//! A producer loads `tail`, then the cell's `seq`. If `seq == tail` the cell
//! is free and one CAS on `tail` claims it; if `seq < tail` the cell still
//! holds (or is still being given) the record from one lap ago, so the ring
//! is full; if `seq > tail`
//! the producer's `tail` is stale and it reloads. Losing the CAS means
//! another producer (possibly a signal handler nested in this very push)
//! claimed the position, and the loser retries at the next one.
//!
//! The consumer keeps `head`, the next position to read. It never spins: if
//! the cell at `head` is not published (`seq == head`), that position is
//! either not yet claimed (the ring is empty) or claimed by a producer that
//! has not finished, possibly one that the draining thread's own signal
//! handler is running or that is suspended mid-handler. The two are
//! indistinguishable from `seq` alone and the consumer treats both alike: it
//! stops this drain and tries again next period. Records behind an
//! unfinished one wait with it (order is kept), and if that lasts until the
//! ring fills, new samples are dropped and counted, never waited for.
//!
//! # Guarantees
//!
//! - **Async-signal-safe pushes.** [`Ring::try_reserve`], the [`Slot`]
//!   methods and dropping a `Slot` only touch atomics and the pre-allocated
//!   cell; they never allocate, lock or panic (no slice index can be out of
//!   range, lengths are clamped).
//! - **Bounded work.** A reserve makes at most [`RESERVE_ATTEMPTS`] tries;
//!   each try that fails does so because another push claimed a position
//!   (the system made progress), so a push is lock-free and finishes in a
//!   bounded number of steps, succeeding or counting a drop. A
//!   `fetch_add` on `tail` would make claiming wait-free, but a producer
//!   that then found its cell full could neither take it nor give its
//!   position back, leaving a hole the consumer would have to wait on.
//! - **Re-entrancy.** A push interrupted anywhere by a signal handler that
//!   pushes again on the same thread is just another producer: the nested
//!   push takes the next position (or fails and is counted) and returns; the
//!   interrupted push then retries its CAS or finishes its record. Nothing
//!   waits for anything, so nothing deadlocks. The profiler thread itself
//!   may take a sample in the middle of a drain: the cell being read is not
//!   free until the drain is done with it, so the handler claims another
//!   cell or counts a drop. (Loom cannot model signals, but a handler that
//!   runs to completion at some point of a push or drain is one of the
//!   interleavings of two threads, which it does check.)
//! - **Nothing lost silently.** Every [`Ring::try_reserve`] call ends in
//!   exactly one of: a record that a later [`Ring::drain`] visits exactly
//!   once, or one increment of the dropped counter (ring full, too much
//!   contention, or a [`Slot`] dropped without commit).
//! - **Order.** Records are visited in position order, so one thread's
//!   records come out in the order it pushed them.
//!
//! A slot that is never published (a [`Slot`] passed to `mem::forget`, or a
//! thread stopped forever inside its handler) holds the consumer at that
//! position for good; the ring then fills and every later sample is counted
//! as dropped. That is the price of never waiting, and it is visible.
//!
//! # Memory
//!
//! A cell is its sequence word (8 bytes) and a [`Record`]: `MAX_FRAMES` =
//! 128 frames of 8 bytes, `tid` (4), `len` (2), `flags` (2), `weight` (4), a
//! `live` byte and padding: 1,040 bytes, so 1,048 bytes per cell on 64-bit
//! targets. The default [`DEFAULT_CAPACITY`] of 2,048 records is 2,146,304
//! bytes (about 2.05 MiB), allocated and touched once on the profiler
//! thread, before the handler is installed, so the handler never faults a
//! page in. `tail` and `head` sit on separate cache lines so producers and
//! the consumer do not contend.
//!
//! The ring holds `capacity / (hz × threads on CPU)` seconds of samples:
//! at 100 Hz, 2,048 records are 20 s of one busy thread but 1 s of twenty.
//! So the profiler thread drains it often (every 100 ms to 1 s) and
//! aggregates what it reads, rather than once per 60 s upload.
//!
//! # Fields and their invariants
//!
//! - `cells`: `capacity` cells, `capacity` a power of two and at least 2 (so
//!   that "published `p`", `p + 1`, differs from "free for `p + capacity`").
//!   Position `p` is served by `cells[p & mask]`, whose `seq` is `p`,
//!   `p + 1` or `p + capacity` for the position `p` it serves now.
//! - `mask`: `capacity - 1`.
//! - `tail`: the next position to claim. Moves only by a successful CAS from
//!   `p` to `p + 1` made after seeing `seq == p`, so `head <= tail <= head +
//!   capacity` (wrapping).
//! - `head`: the next position to read. Written only by the drain that holds
//!   `draining`.
//! - `draining`: true while a drain runs; makes the consumer unique.
//! - `dropped`: samples lost since the last [`Ring::take_dropped`].
//! - `Record::live` of a cell: false whenever the cell is free (the consumer
//!   clears it before freeing the cell); set only by [`Slot::commit`].
//!
//! Ownership of a cell's record follows `seq`: a producer owns it from its
//! winning CAS until it publishes (no other producer can win the CAS for the
//! same position, and the consumer waits for `seq == p + 1`); the consumer
//! owns it from seeing `seq == p + 1` until it stores `p + capacity`.
//!
//! Under `--cfg loom` the atomics and the cell come from
//! [loom](https://docs.rs/loom) (see `alloc-shim/tests/cpu_ring_loom.rs`), so the
//! model-checked code is the code that ships; loom's cell also checks that
//! the consumer never reads a record a producer still holds, nor the
//! reverse.

use self::primitive::{AtomicBool, AtomicU64, AtomicUsize, MutPtr, Ordering, UnsafeCell};
use core::fmt;

/// The most frames one record holds.
pub const MAX_FRAMES: usize = 128;

/// Records in a ring made by [`Ring::default`]: about 2 MiB.
pub const DEFAULT_CAPACITY: usize = 2048;

/// The largest capacity [`Ring::new`] accepts: about 65.5 MiB.
pub const MAX_CAPACITY: usize = 1 << 16;

/// How many times [`Ring::try_reserve`] tries before it counts a drop.
///
/// Each failed try means another push claimed a position meanwhile. At
/// 100 Hz per thread, even thousands of threads rarely collide more than
/// once; a push that loses this many races in a row is counted as dropped
/// rather than spinning on.
pub const RESERVE_ATTEMPTS: usize = 16;

/// The `flags` bit saying the stack had more frames than the record kept.
pub const FLAG_TRUNCATED: u16 = 1 << 0;

/// The `flags` bit saying the stack could not be walked: the record holds
/// only the interrupted instruction.
pub const FLAG_NOT_WALKED: u16 = 1 << 1;

/// One sample as the handler wrote it: a stack of raw return addresses,
/// innermost first, and what it was sampled on.
pub struct Record {
    tid: i32,
    len: u16,
    flags: u16,
    weight: u32,
    /// Committed (true) or abandoned (false); false whenever the cell is
    /// free.
    live: bool,
    frames: [u64; MAX_FRAMES],
}

impl Record {
    fn empty() -> Record {
        Record {
            tid: 0,
            len: 0,
            flags: 0,
            weight: 0,
            live: false,
            frames: [0; MAX_FRAMES],
        }
    }

    /// The frames the handler committed, innermost first.
    pub fn frames(&self) -> &[u64] {
        // `commit` clamps `len` to MAX_FRAMES, so this never panics.
        &self.frames[..usize::from(self.len)]
    }

    /// The thread the sample was taken on (its kernel thread id).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The handler's flags ([`FLAG_TRUNCATED`], [`FLAG_NOT_WALKED`]; the
    /// other bits are free for the handler, the ring interprets none of
    /// them).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Whether the stack had more frames than the record kept.
    pub fn is_truncated(&self) -> bool {
        self.flags & FLAG_TRUNCATED != 0
    }

    /// Whether the handler walked the stack (else [`Record::frames`] is
    /// only the interrupted instruction).
    pub fn is_walked(&self) -> bool {
        self.flags & FLAG_NOT_WALKED == 0
    }

    /// How many timer expirations this sample stands for (1 plus the
    /// overruns the handler saw); usually 1.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("tid", &self.tid)
            .field("flags", &self.flags)
            .field("weight", &self.weight)
            .field("frames", &self.frames())
            .finish()
    }
}

struct Cell {
    /// Which position the cell is ready for; see the module docs.
    seq: AtomicUsize,
    record: UnsafeCell<Record>,
}

/// Keeps `T` on cache lines of its own (128 bytes covers the adjacent-line
/// prefetcher of x86 and the line size of Apple's arm64 cores).
#[repr(align(128))]
struct Padded<T>(T);

/// A bounded, lock-free, pre-allocated ring of CPU samples: many producers
/// (signal handlers on any thread), one consumer (the profiler thread).
///
/// ```ignore
/// // (The module is crate-private; this runs as the unit test
/// // `the_documented_example_runs`.)
/// let ring = Ring::new(4);
/// // In the signal handler:
/// if let Some(mut slot) = ring.try_reserve() {
///     let frames = slot.frames_mut();
///     frames[0] = 0x1234;
///     frames[1] = 0x5678;
///     slot.commit(2, 42, 0, 1);
/// }
/// // On the profiler thread, once per period:
/// let mut stacks = Vec::new();
/// let read = ring.drain(|r| stacks.push(r.frames().to_vec()));
/// assert_eq!((read, ring.take_dropped()), (1, 0));
/// assert_eq!(stacks, [vec![0x1234, 0x5678]]);
/// ```
pub struct Ring {
    cells: Box<[Cell]>,
    mask: usize,
    tail: Padded<AtomicUsize>,
    head: Padded<AtomicUsize>,
    draining: AtomicBool,
    dropped: AtomicU64,
}

// SAFETY: the records in the cells are the only non-`Sync` state, and the
// `seq` protocol (module docs, "Ownership of a cell's record") gives each
// record to one thread at a time; the hand-overs are Release stores read by
// Acquire loads.
unsafe impl Sync for Ring {}

impl Default for Ring {
    /// A ring of [`DEFAULT_CAPACITY`] records.
    fn default() -> Ring {
        Ring::new(DEFAULT_CAPACITY)
    }
}

impl Ring {
    /// A ring with room for `capacity` records, rounded up to a power of
    /// two (and to at least 2). Allocates (and writes) all of its memory
    /// now; call it before installing the handler.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 or above [`MAX_CAPACITY`] (the configuration
    /// validates it first).
    pub fn new(capacity: usize) -> Ring {
        Ring::starting_at(capacity, 0)
    }

    /// A ring whose first position is `start` rather than 0, so tests can
    /// watch positions wrap past `usize::MAX`.
    fn starting_at(capacity: usize, start: usize) -> Ring {
        assert!(
            capacity > 0 && capacity <= MAX_CAPACITY,
            "sample ring capacity {capacity} is not in 1..={MAX_CAPACITY}"
        );
        // At least 2: with one cell, "published p" (p + 1) and "free for
        // p + capacity" would be the same `seq`.
        let capacity = capacity.next_power_of_two().max(2);
        let mask = capacity - 1;
        // Position `p` in `start..start + capacity` is served by cell
        // `p & mask`, which is therefore free for `p`.
        let mut seqs = vec![0usize; capacity];
        for k in 0..capacity {
            let p = start.wrapping_add(k);
            seqs[p & mask] = p;
        }
        let cells = seqs
            .into_iter()
            .map(|p| Cell {
                seq: AtomicUsize::new(p),
                record: UnsafeCell::new(Record::empty()),
            })
            .collect();
        Ring {
            cells,
            mask,
            tail: Padded(AtomicUsize::new(start)),
            head: Padded(AtomicUsize::new(start)),
            draining: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records the ring holds (a power of two).
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// Bytes of memory the ring occupies.
    pub fn footprint(&self) -> usize {
        core::mem::size_of::<Ring>() + core::mem::size_of_val::<[Cell]>(&self.cells)
    }

    /// Empties the ring and forgets every claim, drain and drop count, as
    /// if it had just been made (positions restart at 0).
    ///
    /// For a `fork` child, which inherits the ring as the parent's threads
    /// left it, possibly with a cell claimed by a handler or a drain under
    /// way on a thread the child does not have: either would otherwise hold
    /// the consumer (or every drain) for good. The child's first install
    /// calls it (not the fork child handler: it writes to every page).
    /// Async-signal-safe: stores only.
    ///
    /// # Safety
    ///
    /// Nothing else uses the ring during the call (no other thread, no
    /// signal handler that could write to it), and no [`Slot`] or drain
    /// begun before the call is used after it.
    pub(crate) unsafe fn reset(&self) {
        for (k, cell) in self.cells.iter().enumerate() {
            // SAFETY: the caller guarantees exclusive use of the ring.
            unsafe { cell.record.get_mut().deref() }.live = false;
            // Relaxed (all stores here): the caller guarantees that nothing
            // runs concurrently; whoever uses the ring next is ordered
            // after this call by however it got to run (thread creation,
            // handler install), as for a new ring. Position `k` is served
            // by cell `k` and is free.
            cell.seq.store(k, Ordering::Relaxed);
        }
        self.tail.0.store(0, Ordering::Relaxed);
        self.head.0.store(0, Ordering::Relaxed);
        self.draining.store(false, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
    }

    /// Claims the next free cell for a sample; async-signal-safe.
    ///
    /// Returns `None`, and counts a drop, when the ring is full or the push
    /// lost [`RESERVE_ATTEMPTS`] races in a row. The returned [`Slot`] must
    /// be committed; dropping it instead publishes nothing and counts a
    /// drop.
    pub fn try_reserve(&self) -> Option<Slot<'_>> {
        let mut pos = self.tail.0.load(Ordering::Relaxed);
        for _ in 0..RESERVE_ATTEMPTS {
            let cell = &self.cells[pos & self.mask];
            // Acquire: pairs with the Release store of `seq` in `drain` that
            // freed this cell for `pos`, so the consumer's reads of the
            // previous record (and its clearing of `live`) happen before
            // this producer writes the record.
            let seq = cell.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                // Relaxed: the CAS only decides who owns `pos`; the record
                // is ordered by the Acquire above and the Release publish.
                match self.tail.0.compare_exchange(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return Some(Slot {
                            record: cell.record.get_mut(),
                            claim: Claim {
                                ring: self,
                                seq: &cell.seq,
                                pos,
                                committed: false,
                            },
                        })
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                // The cell still holds position `pos - capacity`, unread:
                // the ring is full (it was, at the load above).
                break;
            } else {
                // Another producer claimed `pos` since we read `tail`.
                pos = self.tail.0.load(Ordering::Relaxed);
            }
        }
        self.add_dropped(1);
        None
    }

    /// Counts `n` samples lost before they reached the ring (e.g. the
    /// extra weight of a sample `try_reserve` could not place);
    /// async-signal-safe.
    pub fn add_dropped(&self, n: u64) {
        // Relaxed: a statistic; nothing is published with it.
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Samples dropped since the last call (ring full, contention, or
    /// abandoned slots, plus [`Ring::add_dropped`]), resetting the count.
    pub fn take_dropped(&self) -> u64 {
        // Relaxed: a statistic; every increment lands in exactly one
        // `take_dropped`, whichever it is.
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Visits, in push order, the committed records pushed before the call,
    /// freeing their cells; skips (and frees) abandoned ones. Returns how
    /// many records it visited.
    ///
    /// Stops early, without waiting, at a record a producer is still
    /// writing; the next drain resumes there. Only one drain runs at a
    /// time: a drain called while another runs (from another thread, or
    /// from inside `f`) visits nothing and returns 0. If `f` panics, the
    /// record it was given is visited again by the next drain.
    pub fn drain(&self, mut f: impl FnMut(&Record)) -> usize {
        // Acquire: pairs with the Release in `DrainGuard::drop` of the
        // previous drain, so this one starts from the `head` it left and
        // after its accesses to the records. (A CAS rather than `swap`:
        // same effect, and loom models it faithfully; loom issue #254.)
        if self
            .draining
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return 0;
        }
        let _guard = DrainGuard(&self.draining);
        let mut head = self.head.0.load(Ordering::Relaxed);
        // Relaxed: only a bound, so that producers faster than `f` cannot
        // keep one drain going forever; each cell's `seq` decides whether
        // its record is ready.
        let end = self.tail.0.load(Ordering::Relaxed);
        let mut visited = 0;
        while head != end {
            let cell = &self.cells[head & self.mask];
            // Acquire: pairs with the Release publish in `Claim::drop`, so
            // the record the producer wrote is visible below.
            if cell.seq.load(Ordering::Acquire) != head.wrapping_add(1) {
                // Empty or still being written: try again next drain.
                break;
            }
            {
                // Under loom, `ptr` tells loom this thread is using the
                // record; it must end (with this block) before the publish.
                let ptr = cell.record.get_mut();
                // SAFETY: `seq == head + 1` means the producer of `head` has
                // published and given up the record, and no producer can
                // claim the cell again until we store `head + capacity`
                // below; this is the only drain running (`draining`). So the
                // record is ours.
                let record = unsafe { ptr.deref() };
                if record.live {
                    f(record);
                    visited += 1;
                }
                record.live = false;
            }
            // Release: pairs with the Acquire load of `seq` in
            // `try_reserve`, so our reads of this record and the clearing of
            // `live` happen before the next producer writes the cell.
            cell.seq
                .store(head.wrapping_add(self.capacity()), Ordering::Release);
            head = head.wrapping_add(1);
            self.head.0.store(head, Ordering::Relaxed);
        }
        visited
    }
}

/// Ends a drain, also when its callback panics.
struct DrainGuard<'a>(&'a AtomicBool);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        // Release: pairs with the Acquire CAS at the start of the next
        // drain, handing it `head` and this drain's record accesses.
        self.0.store(false, Ordering::Release);
    }
}

/// A claimed cell the handler writes one sample into; see
/// [`Ring::try_reserve`].
///
/// Commit it with [`Slot::commit`]. Dropping it uncommitted (the handler
/// gave up mid-walk) releases the cell as an abandoned record, which the
/// reader skips, and counts a drop. Forgetting it (`mem::forget`) holds the
/// reader at this position for good; don't.
#[must_use = "dropping a Slot abandons it and counts a dropped sample"]
pub struct Slot<'a> {
    // Field order matters: `record` (under loom, the guard that tells loom
    // this thread is writing the record) is dropped before `claim`, whose
    // drop publishes the cell to the consumer.
    record: MutPtr<Record>,
    claim: Claim<'a>,
}

impl Slot<'_> {
    /// The frames of the record, for the handler to write its stack into
    /// (innermost first); only the first `len` given to
    /// [`Slot::commit`] are kept. Holds whatever an earlier sample left.
    pub fn frames_mut(&mut self) -> &mut [u64; MAX_FRAMES] {
        // SAFETY: this slot won the CAS for its position, so it owns the
        // record until `claim` publishes it (module docs, "Ownership of a
        // cell's record");
        // `&mut self` keeps this borrow unique and shorter than that.
        unsafe { &mut self.record.deref().frames }
    }

    /// Publishes the record: its first `len` frames, the thread id, flags
    /// ([`FLAG_TRUNCATED`], [`FLAG_NOT_WALKED`]) and weight (expirations it
    /// stands for). A `len` above [`MAX_FRAMES`] keeps `MAX_FRAMES` frames
    /// and sets [`FLAG_TRUNCATED`].
    pub fn commit(mut self, len: usize, tid: i32, flags: u16, weight: u32) {
        let (len, flags) = if len > MAX_FRAMES {
            (MAX_FRAMES, flags | FLAG_TRUNCATED)
        } else {
            (len, flags)
        };
        // SAFETY: as in `frames_mut`: the slot owns the record until
        // `claim` publishes it when `self` is dropped at the end.
        let record = unsafe { self.record.deref() };
        // MAX_FRAMES fits in u16.
        record.len = len as u16;
        record.tid = tid;
        record.flags = flags;
        record.weight = weight;
        record.live = true;
        self.claim.committed = true;
    }
}

impl fmt::Debug for Slot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("pos", &self.claim.pos)
            .finish_non_exhaustive()
    }
}

/// The claim on position `pos`; dropping it publishes the cell.
struct Claim<'a> {
    ring: &'a Ring,
    seq: &'a AtomicUsize,
    pos: usize,
    committed: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.committed {
            // `live` is still false (cleared when the cell was freed), so
            // the reader will skip this position.
            self.ring.add_dropped(1);
        }
        // Release: pairs with the Acquire load of `seq` in `drain`, so the
        // record written through the slot is visible to the reader that
        // sees `pos + 1`.
        self.seq.store(self.pos.wrapping_add(1), Ordering::Release);
    }
}

/// Atomics and the record cell, from loom under `--cfg loom` (model
/// checked by `alloc-shim/tests/cpu_ring_loom.rs`) and from `core` otherwise; the ring
/// uses nothing else, crossbeam's `primitive` pattern.
mod primitive {
    #[cfg(loom)]
    pub(super) use loom::cell::{MutPtr, UnsafeCell};
    #[cfg(loom)]
    pub(super) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    #[cfg(not(loom))]
    pub(super) use self::cell::{MutPtr, UnsafeCell};
    #[cfg(not(loom))]
    pub(super) use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    /// loom's `UnsafeCell` API (`get_mut` returning a `MutPtr`) over
    /// `core`'s, with nothing tracked.
    #[cfg(not(loom))]
    mod cell {
        pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

        impl<T> UnsafeCell<T> {
            pub(crate) fn new(value: T) -> UnsafeCell<T> {
                UnsafeCell(core::cell::UnsafeCell::new(value))
            }

            #[inline]
            pub(crate) fn get_mut(&self) -> MutPtr<T> {
                MutPtr(self.0.get())
            }
        }

        /// A pointer to the contents of an [`UnsafeCell`].
        pub(crate) struct MutPtr<T>(*mut T);

        impl<T> MutPtr<T> {
            /// # Safety
            ///
            /// As for `&mut *ptr`: the cell is alive and nothing else
            /// accesses its contents while the reference is used.
            #[inline]
            #[allow(clippy::mut_from_ref)]
            pub(crate) unsafe fn deref(&self) -> &mut T {
                // SAFETY: the caller's contract.
                unsafe { &mut *self.0 }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool as StdAtomicBool;
    use std::sync::{Arc, Barrier};

    /// A frame value that depends on every input, to catch torn or mixed
    /// records.
    fn frame(tid: i32, seq: u32, k: usize) -> u64 {
        let x = (tid as u64) << 40 ^ u64::from(seq) << 8 ^ k as u64;
        x.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
    }

    /// How many frames the `seq`th sample of a thread has (0..=MAX_FRAMES).
    fn len_of(seq: u32) -> usize {
        seq as usize % (MAX_FRAMES + 1)
    }

    /// Pushes sample `seq` of thread `tid`, writing frames in place.
    fn push(ring: &Ring, tid: i32, seq: u32) -> bool {
        let Some(mut slot) = ring.try_reserve() else {
            return false;
        };
        let len = len_of(seq);
        for (k, f) in slot.frames_mut()[..len].iter_mut().enumerate() {
            *f = frame(tid, seq, k);
        }
        slot.commit(len, tid, (seq % 7) as u16, seq);
        true
    }

    /// Checks that `r` is whole and returns `(tid, seq)`.
    fn check(r: &Record) -> (i32, u32) {
        let (tid, seq) = (r.tid(), r.weight());
        assert_eq!(r.frames().len(), len_of(seq), "{r:?}");
        assert_eq!(r.flags(), (seq % 7) as u16, "{r:?}");
        for (k, &f) in r.frames().iter().enumerate() {
            assert_eq!(f, frame(tid, seq, k), "frame {k} of {r:?}");
        }
        (tid, seq)
    }

    fn drain_all(ring: &Ring) -> Vec<(i32, u32)> {
        let mut seen = Vec::new();
        let n = ring.drain(|r| seen.push(check(r)));
        assert_eq!(n, seen.len());
        seen
    }

    #[test]
    fn the_documented_example_runs() {
        let ring = Ring::new(4);
        // In the signal handler:
        if let Some(mut slot) = ring.try_reserve() {
            let frames = slot.frames_mut();
            frames[0] = 0x1234;
            frames[1] = 0x5678;
            slot.commit(2, 42, 0, 1);
        }
        // On the profiler thread, once per period:
        let mut stacks = Vec::new();
        let read = ring.drain(|r| stacks.push(r.frames().to_vec()));
        assert_eq!((read, ring.take_dropped()), (1, 0));
        assert_eq!(stacks, [vec![0x1234, 0x5678]]);
    }

    #[test]
    fn a_reset_ring_is_empty_and_whole_whatever_a_fork_left_in_it() {
        let ring = Ring::new(4);
        // What a fork child may inherit: a cell claimed by a handler on a
        // thread the child does not have (never published), a record
        // behind it, drops not yet taken, and a drain that never ended.
        std::mem::forget(ring.try_reserve().expect("a free cell"));
        assert!(push(&ring, 1, 1));
        ring.add_dropped(3);
        assert!(drain_all(&ring).is_empty(), "held at the unpublished cell");
        ring.draining.store(true, Ordering::Relaxed);

        // SAFETY: this thread is the ring's only user, and the forgotten
        // slot is never used.
        unsafe { ring.reset() };
        assert_eq!(ring.take_dropped(), 0);
        for seq in 0..10 {
            assert!(push(&ring, 2, seq));
            assert_eq!(drain_all(&ring), [(2, seq)]);
        }
        // The whole capacity again, and still counted when full.
        for seq in 0..4 {
            assert!(push(&ring, 3, seq));
        }
        assert!(!push(&ring, 3, 4));
        assert_eq!(ring.take_dropped(), 1);
        assert_eq!(drain_all(&ring), [(3, 0), (3, 1), (3, 2), (3, 3)]);
    }

    #[test]
    fn the_cell_size_matches_the_documented_memory_math() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(core::mem::size_of::<Record>(), 1040);
            assert_eq!(core::mem::size_of::<Cell>(), 1048);
            let ring = Ring::default();
            assert_eq!(ring.capacity(), 2048);
            let cells = ring.footprint() - core::mem::size_of::<Ring>();
            assert_eq!(cells, 2_146_304);
        }
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two() {
        assert_eq!(Ring::new(1).capacity(), 2);
        assert_eq!(Ring::new(3).capacity(), 4);
        assert_eq!(Ring::new(64).capacity(), 64);
    }

    #[test]
    #[should_panic(expected = "sample ring capacity 0")]
    fn a_ring_of_capacity_zero_is_refused() {
        let _ = Ring::new(0);
    }

    #[test]
    fn single_thread_pushes_drain_in_push_order() {
        let ring = Ring::new(8);
        for round in 0..3u32 {
            for seq in 0..5 {
                assert!(push(&ring, 7, round * 5 + seq));
            }
            let seen = drain_all(&ring);
            let expected: Vec<_> = (0..5).map(|s| (7, round * 5 + s)).collect();
            assert_eq!(seen, expected);
            assert!(drain_all(&ring).is_empty());
        }
        assert_eq!(ring.take_dropped(), 0);
    }

    #[test]
    fn a_full_ring_counts_drops_and_loses_nothing_committed() {
        let ring = Ring::new(4);
        let pushed: Vec<bool> = (0..10).map(|seq| push(&ring, 1, seq)).collect();
        assert_eq!(
            pushed,
            [true, true, true, true, false, false, false, false, false, false]
        );
        assert_eq!(ring.take_dropped(), 6);
        assert_eq!(ring.take_dropped(), 0, "take_dropped resets");
        assert_eq!(drain_all(&ring), [(1, 0), (1, 1), (1, 2), (1, 3)]);
        // Freed cells take pushes again.
        assert!(push(&ring, 1, 10));
        assert_eq!(drain_all(&ring), [(1, 10)]);
        assert_eq!(ring.take_dropped(), 0);
    }

    #[test]
    fn an_abandoned_slot_is_skipped_counted_and_does_not_wedge_the_ring() {
        let ring = Ring::new(2);
        for lap in 0..4u32 {
            // Alternate so that cells that held a committed record get
            // abandoned too.
            let abandon = || {
                let mut slot = ring.try_reserve().unwrap();
                slot.frames_mut()[0] = 0xdead; // the walk gave up half way
                drop(slot);
            };
            if lap % 2 == 0 {
                assert!(push(&ring, 1, 2 * lap));
                abandon();
            } else {
                abandon();
                assert!(push(&ring, 1, 2 * lap));
            }
            // The ring is full: one committed record, one abandoned.
            assert!(!push(&ring, 1, 99));
            assert_eq!(drain_all(&ring), [(1, 2 * lap)]);
            assert_eq!(ring.take_dropped(), 2, "abandoned + full");
        }
        assert!(push(&ring, 1, 100));
        assert!(push(&ring, 1, 101));
        assert_eq!(drain_all(&ring), [(1, 100), (1, 101)]);
    }

    #[test]
    fn a_drain_stops_at_a_slot_in_progress_and_resumes_next_time() {
        let ring = Ring::new(4);
        assert!(push(&ring, 1, 0));
        let mut slow = ring.try_reserve().unwrap();
        assert!(push(&ring, 1, 2));
        // Visits what precedes the unfinished slot, then stops at once.
        assert_eq!(drain_all(&ring), [(1, 0)]);
        assert_eq!(drain_all(&ring), []);
        for (k, f) in slow.frames_mut()[..len_of(1)].iter_mut().enumerate() {
            *f = frame(1, 1, k);
        }
        slow.commit(len_of(1), 1, 1, 1);
        assert_eq!(drain_all(&ring), [(1, 1), (1, 2)]);
        assert_eq!(ring.take_dropped(), 0);
    }

    #[test]
    fn a_drain_nested_in_a_drain_visits_nothing() {
        let ring = Ring::new(4);
        assert!(push(&ring, 1, 0));
        assert!(push(&ring, 1, 1));
        let mut inner = Vec::new();
        let outer = ring.drain(|r| {
            check(r);
            inner.push(ring.drain(|_| panic!("nested drain visited a record")));
        });
        assert_eq!((outer, inner), (2, vec![0, 0]));
    }

    #[test]
    fn a_record_whose_visit_panicked_is_visited_again() {
        let ring = Ring::new(4);
        assert!(push(&ring, 1, 0));
        assert!(push(&ring, 1, 1));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ring.drain(|r| {
                if check(r).1 == 1 {
                    panic!("callback failed");
                }
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(drain_all(&ring), [(1, 1)]);
    }

    #[test]
    fn commit_clamps_an_oversized_length_and_reports_the_flags() {
        let ring = Ring::new(2);
        let mut slot = ring.try_reserve().unwrap();
        slot.frames_mut().fill(5);
        slot.commit(1000, 3, 0, 1);
        let mut got = None;
        ring.drain(|r| got = Some((r.frames().len(), r.is_truncated(), r.is_walked(), r.tid())));
        assert_eq!(got, Some((MAX_FRAMES, true, true, 3)));
        let slot = ring.try_reserve().unwrap();
        slot.commit(1, 3, FLAG_NOT_WALKED, 1);
        ring.drain(|r| got = Some((r.frames().len(), r.is_truncated(), r.is_walked(), r.tid())));
        assert_eq!(got, Some((1, false, false, 3)));
    }

    #[test]
    fn positions_wrap_past_usize_max() {
        let ring = Ring::starting_at(4, usize::MAX - 5);
        let mut seq = 0;
        for _ in 0..6 {
            for _ in 0..3 {
                assert!(push(&ring, 2, seq));
                seq += 1;
            }
            let seen = drain_all(&ring);
            let expected: Vec<_> = (seq - 3..seq).map(|s| (2, s)).collect();
            assert_eq!(seen, expected);
        }
        for extra in 0..4 {
            assert!(push(&ring, 2, seq + extra));
        }
        assert!(!push(&ring, 2, 0), "full across the wrap");
        assert_eq!(ring.take_dropped(), 1);
        assert_eq!(drain_all(&ring).len(), 4);
    }

    /// A tiny deterministic PRNG (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    /// What a position holds in the model.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Model {
        Writing,
        Committed(u32),
        Abandoned,
    }

    #[test]
    fn random_single_thread_interleavings_match_a_queue_model() {
        let steps = if cfg!(miri) { 300 } else { 200_000 };
        for (capacity, seed) in [(1, 1), (2, 2), (4, 3), (8, 4)] {
            let ring = Ring::starting_at(capacity, usize::MAX - 3);
            let mut rng = Rng(0x1234_5678 + seed);
            // Positions pushed and not yet read, oldest first.
            let mut model: VecDeque<Model> = VecDeque::new();
            // Open slots, as (index into `model` counted from its back end
            // at claim time = absolute push number, slot).
            let mut open: Vec<(u64, Slot<'_>)> = Vec::new();
            let mut pushed = 0u64; // absolute number of the next claim
            let mut read_base = 0u64; // absolute number of model[0]
            let (mut dropped, mut next_seq) = (0u64, 0u32);
            for _ in 0..steps {
                match rng.below(6) {
                    // Claim (nested in whatever is open, as a signal would).
                    0 | 1 => match ring.try_reserve() {
                        Some(slot) => {
                            assert!(model.len() < ring.capacity(), "claimed with no room");
                            model.push_back(Model::Writing);
                            open.push((pushed, slot));
                            pushed += 1;
                        }
                        None => {
                            assert_eq!(model.len(), ring.capacity(), "refused with room");
                            dropped += 1;
                        }
                    },
                    // Commit or abandon any open slot.
                    2..=4 if !open.is_empty() => {
                        let i = rng.below(open.len() as u64) as usize;
                        let (at, mut slot) = open.swap_remove(i);
                        let entry = &mut model[(at - read_base) as usize];
                        if rng.below(5) == 0 {
                            drop(slot);
                            *entry = Model::Abandoned;
                            dropped += 1;
                        } else {
                            let seq = next_seq;
                            next_seq += 1;
                            for (k, f) in slot.frames_mut()[..len_of(seq)].iter_mut().enumerate() {
                                *f = frame(9, seq, k);
                            }
                            slot.commit(len_of(seq), 9, (seq % 7) as u16, seq);
                            *entry = Model::Committed(seq);
                        }
                    }
                    _ => {
                        let mut expected = Vec::new();
                        while let Some(&front) = model.front() {
                            match front {
                                Model::Writing => break,
                                Model::Committed(seq) => expected.push((9, seq)),
                                Model::Abandoned => {}
                            }
                            model.pop_front();
                            read_base += 1;
                        }
                        assert_eq!(drain_all(&ring), expected);
                        assert_eq!(ring.take_dropped(), dropped);
                        dropped = 0;
                    }
                }
            }
        }
    }

    #[test]
    fn many_producers_and_one_consumer_read_every_committed_record_exactly_once() {
        let (threads, pushes, capacity) = if cfg!(miri) {
            (3, 40, 4)
        } else {
            (8, 20_000, 64)
        };
        let ring = Arc::new(Ring::new(capacity));
        let start = Arc::new(Barrier::new(threads + 1));
        let producers: Vec<_> = (0..threads)
            .map(|t| {
                let (ring, start) = (ring.clone(), start.clone());
                std::thread::spawn(move || {
                    let tid = t as i32;
                    start.wait();
                    // Which of this thread's samples were committed.
                    let mut committed = vec![false; pushes];
                    for seq in 0..pushes as u32 {
                        if seq % 11 == 5 {
                            // A handler that gives up mid-walk.
                            if let Some(mut slot) = ring.try_reserve() {
                                slot.frames_mut()[0] = 0xbad;
                            }
                        } else {
                            committed[seq as usize] = push(&ring, tid, seq);
                        }
                        // Let the consumer in now and then, so the ring
                        // both fills (drops) and drains (reuse).
                        if seq % 32 == 31 {
                            std::thread::yield_now();
                        }
                    }
                    committed
                })
            })
            .collect();
        let done = Arc::new(StdAtomicBool::new(false));
        let mut seen = vec![vec![false; pushes]; threads];
        let mut last: Vec<Option<u32>> = vec![None; threads];
        let mut dropped = 0;
        let mut visit = |r: &Record| {
            let (tid, seq) = check(r);
            let t = tid as usize;
            assert!(!seen[t][seq as usize], "record ({tid}, {seq}) read twice");
            seen[t][seq as usize] = true;
            assert!(
                last[t] < Some(seq),
                "thread {tid}: {seq} after {:?}",
                last[t]
            );
            last[t] = Some(seq);
        };
        start.wait();
        let mut reads = 0;
        let waiter = {
            let done = done.clone();
            let producers = producers;
            std::thread::spawn(move || {
                let c: Vec<Vec<bool>> = producers.into_iter().map(|p| p.join().unwrap()).collect();
                done.store(true, std::sync::atomic::Ordering::Release);
                c
            })
        };
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            reads += ring.drain(&mut visit);
            dropped += ring.take_dropped();
        }
        reads += ring.drain(&mut visit);
        dropped += ring.take_dropped();
        let committed = waiter.join().unwrap();
        assert_eq!(seen, committed, "read set differs from committed set");
        let commits: usize = committed.iter().flatten().filter(|&&c| c).count();
        assert_eq!(reads, commits);
        assert_eq!(reads as u64 + dropped, (threads * pushes) as u64);
        assert!(reads > 0);
    }

    /// Signal-handler tests share SIGUSR1 and the static below, so they run
    /// one at a time.
    mod signals {
        use super::*;
        use std::sync::atomic::{AtomicI32, AtomicPtr};
        use std::sync::Mutex;

        static SERIAL: Mutex<()> = Mutex::new(());
        /// The ring the handler pushes into (null: do nothing).
        static RING: AtomicPtr<Ring> = AtomicPtr::new(core::ptr::null_mut());
        /// What the nested push did: 0 not run, 1 pushed, 2 refused.
        static OUTCOME: AtomicI32 = AtomicI32::new(0);

        const NESTED_TID: i32 = 77;

        extern "C" fn push_from_handler(_signal: libc::c_int) {
            let ring = RING.load(std::sync::atomic::Ordering::Acquire);
            // SAFETY: the test stores a pointer to a ring that outlives the
            // `raise` that runs this handler, and clears it afterwards.
            let Some(ring) = (unsafe { ring.as_ref() }) else {
                return;
            };
            // Only what a SIGPROF handler may do: atomics, the
            // pre-allocated cell, no allocation, no lock.
            let outcome = match ring.try_reserve() {
                Some(mut slot) => {
                    let frames = slot.frames_mut();
                    for (k, f) in frames[..3].iter_mut().enumerate() {
                        *f = 0x7700 + k as u64;
                    }
                    slot.commit(3, NESTED_TID, 0, 1);
                    1
                }
                None => 2,
            };
            OUTCOME.store(outcome, std::sync::atomic::Ordering::Relaxed);
        }

        /// Installs the handler, runs `f` with `ring` visible to it, and
        /// restores the previous disposition; returns what the handler did.
        fn with_handler(ring: &Ring, f: impl FnOnce()) -> i32 {
            let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
            OUTCOME.store(0, std::sync::atomic::Ordering::Relaxed);
            RING.store(
                ring as *const Ring as *mut Ring,
                std::sync::atomic::Ordering::Release,
            );
            // SAFETY: a zeroed `sigaction` is a valid starting value; the
            // handler only touches atomics and the ring (async-signal-safe),
            // and the old disposition is put back below.
            let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
            // SAFETY: as above.
            unsafe {
                let mut sa: libc::sigaction = core::mem::zeroed();
                sa.sa_sigaction = push_from_handler as extern "C" fn(libc::c_int) as usize;
                assert_eq!(libc::sigemptyset(&mut sa.sa_mask), 0);
                assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, &mut old), 0);
            }
            f();
            // SAFETY: restores the disposition saved above.
            unsafe {
                assert_eq!(
                    libc::sigaction(libc::SIGUSR1, &old, core::ptr::null_mut()),
                    0
                );
            }
            RING.store(core::ptr::null_mut(), std::sync::atomic::Ordering::Release);
            OUTCOME.load(std::sync::atomic::Ordering::Relaxed)
        }

        fn raise_here() {
            // SAFETY: raises SIGUSR1 on this thread; its handler is
            // installed and returns before `raise` does.
            assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
        }

        #[test]
        #[cfg_attr(miri, ignore = "Miri does not support signal handlers")]
        fn a_push_from_a_signal_handler_nested_in_a_push_on_the_same_thread_succeeds() {
            let ring = Ring::new(4);
            let outcome = with_handler(&ring, || {
                let mut slot = ring.try_reserve().unwrap();
                slot.frames_mut()[..2].copy_from_slice(&[0x10, 0x20]);
                // The timer fires again while this handler is mid-sample.
                raise_here();
                // The reader meets the interrupted push and does not wait.
                assert_eq!(ring.drain(|r| panic!("visited {r:?} past an open slot")), 0);
                slot.commit(2, 1, 0, 1);
            });
            assert_eq!(outcome, 1, "nested push refused");
            let mut seen = Vec::new();
            assert_eq!(ring.drain(|r| seen.push((r.tid(), r.frames().to_vec()))), 2);
            // Position order: the interrupted push claimed first.
            assert_eq!(
                seen,
                [
                    (1, vec![0x10, 0x20]),
                    (NESTED_TID, vec![0x7700, 0x7701, 0x7702])
                ]
            );
            assert_eq!(ring.take_dropped(), 0);
        }

        #[test]
        #[cfg_attr(miri, ignore = "Miri does not support signal handlers")]
        fn a_nested_push_into_a_full_ring_is_counted_not_deadlocked() {
            let ring = Ring::new(2);
            let outcome = with_handler(&ring, || {
                assert!(push(&ring, 1, 0));
                // The interrupted push holds the last free cell.
                let slot = ring.try_reserve().unwrap();
                raise_here();
                slot.commit(0, 1, 0, 1);
            });
            assert_eq!(outcome, 2, "nested push into a full ring succeeded");
            assert_eq!(ring.take_dropped(), 1);
            assert_eq!(ring.drain(|r| assert_eq!(r.tid(), 1)), 2);
        }

        #[test]
        #[cfg_attr(miri, ignore = "Miri does not support signal handlers")]
        fn a_push_from_a_signal_handler_during_a_drain_never_takes_the_cell_being_read() {
            let ring = Ring::new(2);
            assert!(push(&ring, 1, 0));
            assert!(push(&ring, 1, 1));
            let mut outcomes = Vec::new();
            let mut visited = 0;
            with_handler(&ring, || {
                // The profiler thread is sampled while it reads each record.
                visited = ring.drain(|r| {
                    check(r);
                    raise_here();
                    outcomes.push(OUTCOME.load(std::sync::atomic::Ordering::Relaxed));
                });
            });
            // Reading the first record: the ring is full and that cell is
            // not free yet. Reading the second: the first cell is free.
            assert_eq!(outcomes, [2, 1]);
            assert_eq!(visited, 2, "the drain visits what was pushed before it");
            assert_eq!(ring.take_dropped(), 1);
            let mut tids = Vec::new();
            assert_eq!(ring.drain(|r| tids.push(r.tid())), 1);
            assert_eq!(tids, [NESTED_TID]);
        }
    }
}
