//! Replaying the outer frames of the last DWARF walk instead of unwinding
//! them again.
//!
//! Samples from one place share most of their stack: the allocating
//! function changes, `main`, the runtime's worker loop and the thread's
//! start do not. Unwinding each of those frames with framehop costs about
//! 175 instructions even when its rule is cached (the rule lookup, the
//! rule, our bank choice) and two cache lines gone cold between samples.
//!
//! One step of the walk is a function of its inputs: the frame's address
//! (and whether it is the first frame), the registers framehop unwinds with
//! (`sp`, `bp`/`fp` and `ip`/`lr`; framehop 0.16 reads no others on either
//! architecture: its rules use `sp` and `bp` only, and its DWARF evaluation
//! answers "unknown" for every other register), the module list (its rules)
//! and the stack words the step reads. So a slot remembers, for each step
//! of its last walk, those inputs, each word read (address and value), and
//! the outcome (the return address and the registers after). A step of the
//! next walk with the same address and registers whose words still hold
//! the same values has the same outcome: it is replayed without framehop,
//! and so are the steps after it, each starting where the one before
//! ended, for as long as their words are unchanged. Any difference and the
//! step is unwound as usual. Nothing is assumed about which thread or call
//! path the memory belongs to; the comparison alone decides.
//!
//! The frame pointer gets a closer look, because in code built without
//! frame pointers it is an ordinary register: at an allocation it holds
//! whatever the caller kept in it, and the frames that save it save a
//! different value at every sample. Most steps do not depend on it: their
//! rule moves `sp` by a constant and either leaves the frame pointer as it
//! was or restores it from a word they read. When a step is unwound with a
//! rule framehop had cached, it is unwound again with that rule on the
//! words it read ([`Recorder::finish`]): with the frame pointer changed,
//! then with each word equal to the frame pointer after it changed in turn
//! (to a larger value and to 0); framehop's rules either use a register's
//! value or a word's, or copy it, so an outcome those changes do not move
//! (but for the copy) does not depend on them. Such a step is replayed with any frame pointer, which it passes
//! on or takes from that word, read again. A step that uses the frame
//! pointer (a frame-pointer rule) is replayed only with the same one.
//!
//! A replayed frame costs a few compares and a load or two per word. Once
//! a walk has repeated the last one, a walk that starts where they did
//! checks the words of the steps chained from there (as far as the frame
//! pointer's flow through them is known) at once, in one loop without a
//! branch, and then replays those steps without checking each ([`Flat`]):
//! the stack words of outer frames are usually cold by the next sample,
//! and read step by step they wait on memory one after the other. When
//! those steps are the whole last walk, down to the frame it ended at (a
//! thread sampled again from the same place), the walk is that walk again,
//! and its return addresses are handed over from one array
//! ([`Memo::replay_whole`]), without reading a step: in
//! `alloc_overhead`'s window (12 frames, all replayed) a sample cost
//! 88 – 136 ns step by step and 55 – 83 ns so, in six processes each.
//!
//! The memory is fixed when the slot is made (no allocation here, so
//! signal handlers replay too; 3 × 20 KiB, 12 KiB and 4 KiB a slot in
//! pages, mapped apart from the program's heap, see [`Room`]): [`STEPS`]
//! steps for the last walk, as many for the steps the current walk
//! unwinds, as many again for laying out a walk that cannot be laid out in
//! place ([`Memo::end`]), and the last walk's flattened checks and return
//! addresses.
//! A step that read more than [`READS`] words, or failed a read, is not
//! remembered.

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use framehop::{FrameAddress, UnwindRegsNative};

use super::Stack;
use crate::sys;

/// Steps remembered per walk: the deepest stack that can be asked for
/// (128 frames) plus the frames a capture skips, with room to spare.
pub(super) const STEPS: usize = 136;
/// The most words a step may read and still be remembered (framehop's
/// rules read two: the return address and the saved frame pointer, or the
/// saved frame pointer and link register).
const READS: usize = 3;
/// The most words a [`Flat`] check holds: each word every step read, and
/// the frame pointer each compares.
const FLAT_WORDS: usize = STEPS * (READS + 1);
/// What the trials of [`Recorder::finish`] change a frame pointer or a
/// word by: a bit no stack address has, so that a rule that reads at the
/// changed frame pointer reads none of the remembered words, and fails.
const CHANGE: u64 = 1 << 62;

/// The registers a step is unwound from and to, as framehop uses them:
/// `[sp, bp, ip]` on x86_64, `[sp, fp, lr]` on aarch64.
type Key = [u64; 3];
/// Where the frame pointer is in a [`Key`].
const FP: usize = 1;

/// The registers of `regs` a step depends on.
pub(super) fn key(regs: &UnwindRegsNative) -> Key {
    #[cfg(target_arch = "x86_64")]
    let key = [regs.sp(), regs.bp(), regs.ip()];
    #[cfg(target_arch = "aarch64")]
    let key = [regs.sp(), regs.fp(), regs.lr()];
    key
}

/// Sets the registers of `regs` a step depends on, as [`key`] reads them.
fn set_key(regs: &mut UnwindRegsNative, [sp, fp, pc]: Key) {
    regs.set_sp(sp);
    #[cfg(target_arch = "x86_64")]
    {
        regs.set_bp(fp);
        regs.set_ip(pc);
    }
    #[cfg(target_arch = "aarch64")]
    {
        regs.set_fp(fp);
        regs.set_lr(pc);
    }
}

/// A stack word a step read: its address and value.
type Word = (u64, u64);

/// The value of `addr` among `words`, as a stack reader for framehop: an
/// address no word has cannot be read.
pub(super) fn lookup(words: &[Word], addr: u64) -> Result<u64, ()> {
    words.iter().find(|w| w.0 == addr).map(|w| w.1).ok_or(())
}

/// Where the frame pointer after a step comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FpAfter {
    /// The step leaves it as it was.
    Kept,
    /// The step's word `k`, which is copied rather than compared.
    Word(u8),
    /// The remembered one: the step's inputs all match.
    Same,
}

/// One remembered step.
#[derive(Clone, Copy)]
struct Step {
    frame: FrameAddress,
    before: Key,
    /// The outcome depends on the frame pointer: `before[FP]` must match.
    uses_fp: bool,
    fp_after: FpAfter,
    /// The words read, `nreads` of them.
    reads: [Word; READS],
    nreads: u8,
    /// The step follows from the one before it in the walk: its frame is
    /// that step's return address and its `sp` and `ip` (`lr`) are those
    /// that step left (its frame pointer is followed as the walk goes).
    chained: bool,
    /// The return address found; 0 when the walk ended at this frame.
    ret: u64,
    after: Key,
}

const NO_STEP: Step = Step {
    frame: FrameAddress::InstructionPointer(0),
    before: [0; 3],
    uses_fp: true,
    fp_after: FpAfter::Same,
    reads: [(0, 0); READS],
    nreads: 0,
    chained: false,
    ret: 0,
    after: [0; 3],
};

impl Step {
    /// Whether `self` starts where `prev` ended (but for the frame
    /// pointer, which a replay follows and compares where it is used).
    fn follows(&self, prev: &Step) -> bool {
        self.before[0] == prev.after[0]
            && self.before[2] == prev.after[2]
            && FrameAddress::from_return_address(prev.ret) == Some(self.frame)
    }

    /// The words a replay compares: all the step read but the one it
    /// copies the frame pointer from.
    fn compared(&self) -> impl Iterator<Item = Word> + '_ {
        let reads = self.reads[..self.nreads as usize].iter().enumerate();
        reads
            .filter(|&(k, _)| self.fp_after != FpAfter::Word(k as u8))
            .map(|(_, &word)| word)
    }

    /// The frame pointer after the step from `fp`, if the words it read
    /// still hold the same values (but the one it copies).
    fn check(&self, stack: &Stack, fp: u64) -> Option<u64> {
        let mut differ = 0;
        for (addr, value) in self.compared() {
            differ |= stack.read(addr).ok()? ^ value;
        }
        if differ != 0 {
            return None;
        }
        self.pass(stack, fp)
    }

    /// The frame pointer after the step from `fp`, its compared words known
    /// to match ([`Step::check`], or a [`Flat`] check that covered it).
    fn pass(&self, stack: &Stack, fp: u64) -> Option<u64> {
        match self.fp_after {
            FpAfter::Kept => Some(fp),
            FpAfter::Word(k) => stack.read(self.reads[k as usize].0).ok(),
            FpAfter::Same => Some(self.after[FP]),
        }
    }
}
/// Room for `N` values of `T` in a mapping of its own (or none, when the
/// mapping failed: then nothing is remembered).
///
/// Not from the global allocator: it would come from the allocator
/// ferroprof wraps, and long-lived blocks of ~17 KB (a large size class in
/// jemalloc) placed among the program's own large blocks change how
/// jemalloc splits and merges them. The `alloc_overhead` window (a ring
/// with 64 KiB blocks) measured 1.30 instead of 1.04 that way, with
/// sampling off, in one build and not in another.
struct Room<T: Copy, const N: usize>(Option<NonNull<T>>);

/// Bytes mapped by every [`Room`] alive, in 4 KiB pages, for
/// `Stats::unwind_cache_bytes`.
static MAPPED: AtomicU64 = AtomicU64::new(0);

/// Bytes mapped by every [`Room`] alive.
pub(super) fn mapped_bytes() -> u64 {
    // Relaxed: a statistic, read on its own.
    MAPPED.load(Ordering::Relaxed)
}

/// The steps of a walk.
type Steps = Room<Step, STEPS>;

/// The words of a walk's [`Flat`] check.
type Words = Room<Word, FLAT_WORDS>;

/// The return addresses of the steps a [`Flat`] check covers.
type Rets = Room<u64, STEPS>;

impl<T: Copy, const N: usize> Room<T, N> {
    /// The bytes of the mapping.
    const BYTES: usize = N * core::mem::size_of::<T>();

    /// [`Self::BYTES`] in whole 4 KiB pages, as the mapping takes them.
    const PAGES_BYTES: usize = Self::BYTES.next_multiple_of(4096);

    /// No room.
    const NONE: Self = Room(None);

    /// `N` copies of `fill`, or no room when the mapping fails.
    fn new(fill: T) -> Self {
        let Some(at) = sys::map_anonymous(Self::BYTES) else {
            return Self::NONE;
        };
        // Relaxed: see `mapped_bytes`.
        MAPPED.fetch_add(Self::PAGES_BYTES as u64, Ordering::Relaxed);
        let first = at.cast::<T>();
        for i in 0..N {
            // SAFETY: the mapping is fresh, writable and large enough for
            // `N` values, and page-aligned (so aligned for `T`: a `Step`
            // or a `Word`).
            unsafe { first.add(i).write(fill) };
        }
        Room(Some(first))
    }
}

impl<T: Copy, const N: usize> Deref for Room<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self.0 {
            // SAFETY: `N` initialised values, owned by `self` until drop.
            Some(first) => unsafe { core::slice::from_raw_parts(first.as_ptr(), N) },
            None => &[],
        }
    }
}

impl<T: Copy, const N: usize> DerefMut for Room<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self.0 {
            // SAFETY: as in `deref`, and `&mut self` is the only access.
            Some(first) => unsafe { core::slice::from_raw_parts_mut(first.as_ptr(), N) },
            None => &mut [],
        }
    }
}

impl<T: Copy, const N: usize> Drop for Room<T, N> {
    fn drop(&mut self) {
        if let Some(first) = self.0 {
            // SAFETY: the mapping was made by `Room::new` and nothing
            // borrows it past `self`.
            unsafe { sys::unmap(first.cast(), Self::BYTES) };
            MAPPED.fetch_sub(Self::PAGES_BYTES as u64, Ordering::Relaxed);
        }
    }
}

// SAFETY: `Room` owns its mapping like a `Box<[T]>` owns its memory, and
// holds only `Copy` plain data (steps and words: integers).
unsafe impl<T: Copy + Send, const N: usize> Send for Room<T, N> {}

/// The steps of one walk, in walk order (so with non-decreasing `sp`
/// after the first).
struct Walk {
    /// The module list ([`super::Modules::seq`]) the walk used; 0: none.
    list: u64,
    steps: Steps,
    len: usize,
}

impl Walk {
    fn new(steps: Steps) -> Walk {
        Walk {
            list: 0,
            steps,
            len: 0,
        }
    }

    /// Becomes the walk of `pieces`: steps of `staged` and of `from` (of
    /// itself when `None`: then no piece's new place may cover a replayed
    /// piece still to be moved), then the module list of `staged`.
    fn lay_out(&mut self, from: Option<&Walk>, staged: &Walk, pieces: &[Piece]) {
        self.len = 0;
        for piece in pieces {
            let start = self.len;
            let n = piece.len().min(self.steps.len() - start);
            match *piece {
                Piece::Unwound(s, _) => {
                    self.steps[start..start + n].copy_from_slice(&staged.steps[s..s + n]);
                    self.len += n;
                    for i in start..self.len {
                        self.link(i);
                    }
                }
                Piece::Replayed(j, _) => {
                    match from {
                        Some(from) => {
                            self.steps[start..start + n].copy_from_slice(&from.steps[j..j + n])
                        }
                        // A walk that replays the last one from its start
                        // (the usual case) moves nothing.
                        None if j == start => {}
                        None => self.steps.copy_within(j..j + n, start),
                    }
                    self.len += n;
                    // Chained inside already; the seam is linked here.
                    self.link(start);
                }
            }
        }
        self.list = staged.list;
    }

    /// Marks whether the step at `i` follows the one before it.
    fn link(&mut self, i: usize) {
        if i < self.len {
            self.steps[i].chained = i > 0 && self.steps[i].follows(&self.steps[i - 1]);
        }
    }
}

/// A run of the walk being recorded: steps unwound (in the staging walk)
/// or replayed (from the last walk).
#[derive(Clone, Copy)]
enum Piece {
    Unwound(usize, usize),
    Replayed(usize, usize),
}

impl Piece {
    fn len(&self) -> usize {
        match *self {
            Piece::Unwound(s, e) | Piece::Replayed(s, e) => e - s,
        }
    }
}

/// Where the frame pointer comes from, as [`Memo::flatten`] follows it
/// through a walk.
#[derive(Clone, Copy)]
enum FpFrom {
    /// The registers the walk starts with.
    Start,
    /// The stack word at this address (a step copied it).
    Word(u64),
    /// This value (a step whose frame pointer after it is always the
    /// same, [`FpAfter::Same`], set it).
    Value(u64),
}

/// The checks of the last walk's first steps, all at once.
///
/// Step by step, a replay reads each step's words and branches on them
/// before the next step. Samples are far apart, and by the next one the
/// outer frames' words have usually left the caches: the reads then wait
/// on memory nearly one after the other (about 90 of a window sample's
/// ~165 ns went there). Flattened, the checks of the steps chained from
/// the first are one list of stack words and the values they must hold,
/// read by one loop without a branch ([`Stack::holds`]), so the reads
/// overlap; the steps they cover then replay without checks
/// ([`Step::pass`]), or, when they are the whole last walk, without
/// reading a step ([`Flat::whole`]).
///
/// Flattening costs a few nanoseconds a step, so it is done only for a
/// walk that repeats: when a walk replayed the whole last walk and the
/// list is not that walk's yet ([`Memo::end`]). A walk that changed the
/// last one forgets the list; a program whose samples differ at every walk
/// never builds one.
///
/// A step's words are all in the list but the one it copies the frame
/// pointer from. A step that uses the frame pointer adds where that comes
/// from: the word an earlier step copied it from (with the value the step
/// needs), or the frame pointer the walk starts with ([`Flat::fp`]); one
/// set by an earlier step to another value than the step needs ends the
/// steps covered, as would a step not chained.
struct Flat {
    words: Words,
    len: usize,
    /// The steps covered: the last walk's first `steps`.
    steps: usize,
    /// Their return addresses, in order.
    rets: Rets,
    /// Set when the steps covered are the whole last walk and it ended at
    /// its last step: then a walk they all replay for is that walk again,
    /// and [`Memo::replay`] hands over `rets` without reading a step.
    whole: Option<Whole>,
    /// Times the list was built, so that a copy of it
    /// ([`Memo::whole_walk`]) is not made twice.
    built: u64,
    /// The frame pointer a walk must start with, if a covered step uses
    /// that one.
    fp: Option<u64>,
    /// The lowest address of a word, and the end of the highest.
    lo: u64,
    end: u64,
    /// Whether the list is not (yet) the last walk's: then it covers no
    /// step.
    stale: bool,
}

/// A last walk that its [`Flat`] check covers whole ([`Memo::whole_walk`]).
pub(super) struct WholeWalk<'a> {
    /// Which memo and which of its flat checks it is.
    pub(super) built: (usize, u64),
    /// The module list the walk used.
    pub(super) list: u64,
    /// Its first frame and the registers it was unwound from.
    pub(super) frame: FrameAddress,
    pub(super) start: [u64; 3],
    /// The frame pointer a walk must start with, if one is needed.
    pub(super) fp: Option<u64>,
    /// The flat check: its words and their bounds (see [`Flat`]).
    pub(super) bounds: (u64, u64),
    pub(super) words: &'a [(u64, u64)],
    /// The return addresses the walk gives (the last step gives none).
    pub(super) rets: &'a [u64],
    /// The frame it ended at.
    pub(super) end: FrameAddress,
}

/// How a walk that a [`Flat`] check covers whole ends.
#[derive(Clone, Copy)]
struct Whole {
    /// The frame it ends at.
    frame: FrameAddress,
    /// The registers after its last step, but for the frame pointer...
    after: Key,
    /// ...which comes from here.
    fp: FpFrom,
}

impl Flat {
    /// Covers no step until the last walk is flattened again.
    fn forget(&mut self) {
        (self.len, self.steps, self.fp, self.stale) = (0, 0, None, true);
        self.whole = None;
    }

    /// How many of the last walk's first steps replay without checks for a
    /// walk that starts at its first step (same frame, `sp` and `ip`/`lr`)
    /// with frame pointer `fp` on `stack`: all those covered if every word
    /// holds its value, else none.
    fn trusted(&self, stack: &Stack, fp: u64) -> usize {
        if self.steps == 0 || self.fp.is_some_and(|f| f != fp) {
            return 0;
        }
        // SAFETY: `Memo::flatten` took `lo` and `end` over these words,
        // each read by a step with `Stack::read`, which reads only
        // 8-aligned words.
        match unsafe { stack.holds(&self.words[..self.len], self.lo, self.end) } {
            Some(true) => self.steps,
            _ => 0,
        }
    }
}

/// Runs a walk is remembered in; a walk of more is remembered by its
/// unwound steps only.
const PIECES: usize = 4;

/// A slot's memory of its last walk.
///
/// A walk replays from `last` and unwinds into `staged`; at its end its
/// runs are combined into `last` (see [`Memo::end`]).
pub(super) struct Memo {
    last: Walk,
    staged: Walk,
    /// Where a walk is laid out when it cannot be in place (see
    /// [`Memo::end`]).
    spare: Walk,
    /// The runs of the walk being recorded, in order.
    pieces: [Piece; PIECES],
    npieces: usize,
    /// Where in the last walk the next search starts.
    cursor: usize,
    /// The last walk's checks, flattened.
    flat: Flat,
    /// Steps replayed and unwound since the slot was made (the slot
    /// publishes them to `Stats`).
    pub(super) replayed: u64,
    pub(super) unwound: u64,
    /// Of the steps replayed, those a flat check covered (not published).
    pub(super) trusted: u64,
    /// Walks replayed whole from the flat check's return addresses.
    #[cfg(test)]
    wholes: u64,
}

/// How a [`Memo::replay`] stopped.
pub(super) enum Replay {
    /// The last walk has no step with these inputs: unwind the frame.
    NoMatch,
    /// The walk ended at this frame (the end of the stack, or a frame it
    /// could not unwind).
    Ended(FrameAddress),
    /// `push` refused a return address.
    Full,
    /// A step could not be replayed: unwind it (the frame and registers
    /// are where the replayed steps left them).
    Diverged(FrameAddress),
}

impl Memo {
    /// Empty walks (their steps and checks mapped: 76 KiB of pages),
    /// never on the stack.
    pub(super) fn new() -> Box<Memo> {
        let steps = || Steps::new(NO_STEP);
        Memo::with(
            [steps(), steps(), steps()],
            Words::new((0, 0)),
            Rets::new(0),
        )
    }

    /// A memo with no room, for caches used for one walk only: it maps
    /// nothing and remembers nothing (as a memo whose mappings failed).
    pub(super) fn forgetful() -> Box<Memo> {
        Memo::with(
            [Steps::NONE, Steps::NONE, Steps::NONE],
            Words::NONE,
            Rets::NONE,
        )
    }

    fn with([last, staged, spare]: [Steps; 3], words: Words, rets: Rets) -> Box<Memo> {
        Box::new(Memo {
            last: Walk::new(last),
            staged: Walk::new(staged),
            spare: Walk::new(spare),
            pieces: [Piece::Unwound(0, 0); PIECES],
            npieces: 0,
            cursor: 0,
            flat: Flat {
                words,
                len: 0,
                steps: 0,
                rets,
                whole: None,
                built: 0,
                fp: None,
                lo: 0,
                end: 0,
                stale: true,
            },
            replayed: 0,
            unwound: 0,
            trusted: 0,
            #[cfg(test)]
            wholes: 0,
        })
    }

    /// Starts recording a walk with the module list numbered `list`.
    pub(super) fn begin(&mut self, list: u64) {
        self.staged.list = list;
        self.staged.len = 0;
        self.npieces = 0;
        self.cursor = 0;
    }

    /// Adds a run to the walk being recorded, merging it with the last
    /// one if they are of the same kind and adjoin.
    fn note(&mut self, piece: Piece) {
        let last = self
            .npieces
            .checked_sub(1)
            .and_then(|i| self.pieces.get_mut(i));
        if let Some(last) = last {
            match (last, piece) {
                (Piece::Unwound(_, end), Piece::Unwound(s, e))
                | (Piece::Replayed(_, end), Piece::Replayed(s, e))
                    if *end == s =>
                {
                    *end = e;
                    return;
                }
                _ => {}
            }
        }
        if self.npieces < PIECES {
            self.pieces[self.npieces] = piece;
        }
        self.npieces += 1;
    }

    /// Ends the walk begun last: it becomes the one replayed from.
    ///
    /// Its runs are laid out one after the other in `last`, in place when
    /// no run's new place covers a replayed run still to be moved (the
    /// usual case: the new place of each is at or before its old one),
    /// else in `spare`, which then takes `last`'s place.
    pub(super) fn end(&mut self) {
        let Some(pieces) = self.pieces.get(..self.npieces) else {
            // Too many runs to lay out: remember the unwound steps only.
            core::mem::swap(&mut self.last, &mut self.staged);
            for i in 0..self.last.len {
                self.last.link(i);
            }
            self.flat.forget();
            return;
        };
        if let [Piece::Replayed(0, n)] = *pieces {
            if n == self.last.len {
                // The whole last walk again: it stays, and a walk that
                // repeats is worth flattening (once).
                if self.flat.stale {
                    self.flatten();
                }
                return;
            }
        }
        let mut at = 0;
        let mut in_place = true;
        for (k, piece) in pieces.iter().enumerate() {
            let next_source = pieces[k + 1..].iter().find_map(|p| match *p {
                Piece::Replayed(j, _) => Some(j),
                Piece::Unwound(..) => None,
            });
            at += piece.len();
            in_place &= next_source.is_none_or(|j| at <= j);
        }
        let Memo {
            last,
            staged,
            spare,
            ..
        } = self;
        if in_place {
            last.lay_out(None, staged, pieces);
        } else {
            spare.lay_out(Some(last), staged, pieces);
            core::mem::swap(last, spare);
        }
        self.flat.forget();
    }

    /// Makes [`Memo::flat`] the checks of the last walk's steps chained
    /// from its first, for as many as it has room for (see [`Flat`]).
    fn flatten(&mut self) {
        let Memo { last, flat, .. } = self;
        flat.forget();
        flat.stale = false;
        flat.built += 1;
        (flat.lo, flat.end) = (u64::MAX, 0);
        let mut from = FpFrom::Start;
        for (i, step) in last.steps[..last.len].iter().enumerate() {
            if i > 0 && !step.chained {
                break;
            }
            let mut words = [(0, 0); READS + 1];
            let mut n = 0;
            let mut start_fp = flat.fp;
            if step.uses_fp {
                match from {
                    FpFrom::Start if flat.fp.is_none_or(|fp| fp == step.before[FP]) => {
                        start_fp = Some(step.before[FP])
                    }
                    FpFrom::Word(addr) => {
                        words[n] = (addr, step.before[FP]);
                        n += 1;
                    }
                    FpFrom::Value(fp) if fp == step.before[FP] => {}
                    // The replay would stop here.
                    _ => break,
                }
            }
            for word in step.compared() {
                words[n] = word;
                n += 1;
            }
            let next = match step.fp_after {
                FpAfter::Kept => from,
                FpAfter::Word(k) => FpFrom::Word(step.reads[k as usize].0),
                FpAfter::Same => FpFrom::Value(step.after[FP]),
            };
            let (Some(room), Some(ret)) = (
                flat.words.get_mut(flat.len..flat.len + n),
                flat.rets.get_mut(i),
            ) else {
                break;
            };
            room.copy_from_slice(&words[..n]);
            *ret = step.ret;
            // The word a step copies the frame pointer from is not
            // compared, but it is inside the bounds `Flat::trusted` checks,
            // so `Step::pass` cannot fail to read it for a covered step.
            let copied = match next {
                FpFrom::Word(addr) => Some(addr),
                _ => None,
            };
            for addr in words[..n].iter().map(|w| w.0).chain(copied) {
                flat.lo = flat.lo.min(addr);
                flat.end = flat.end.max(addr.saturating_add(8));
            }
            flat.len += n;
            flat.steps = i + 1;
            flat.fp = start_fp;
            from = next;
        }
        let ends = last.len.checked_sub(1).map(|i| &last.steps[i]);
        if let Some(step) = ends {
            if flat.steps == last.len && FrameAddress::from_return_address(step.ret).is_none() {
                flat.whole = Some(Whole {
                    frame: step.frame,
                    after: step.after,
                    fp: from,
                });
            }
        }
    }

    /// The last walk, if its flat check covers it whole ([`Flat::whole`]):
    /// all a thread needs to replay it without the memo (see
    /// `super::ThreadWalk`).
    pub(super) fn whole_walk(&self) -> Option<WholeWalk<'_>> {
        let flat = &self.flat;
        let whole = flat.whole?;
        let first = self.last.steps.first()?;
        Some(WholeWalk {
            built: (self as *const Memo as usize, flat.built),
            list: self.last.list,
            frame: first.frame,
            start: first.before,
            fp: flat.fp,
            bounds: (flat.lo, flat.end),
            words: &flat.words[..flat.len],
            rets: &flat.rets[..self.last.len - 1],
            end: whole.frame,
        })
    }

    /// Replays the last walk from the step at `frame` with `regs`, if it
    /// had one with these inputs, and on through the steps chained to it
    /// while their words still hold the same values: `regs` as the last
    /// replayed step left them, each return address given to `push` (which
    /// says whether to go on).
    pub(super) fn replay(
        &mut self,
        frame: FrameAddress,
        regs: &mut UnwindRegsNative,
        stack: &Stack,
        mut push: impl FnMut(u64) -> bool,
    ) -> Replay {
        let old = &self.last;
        if old.list != self.staged.list {
            return Replay::NoMatch;
        }
        let before = key(regs);
        let sp = before[0];
        let mut i = self.cursor;
        while i < old.len && old.steps[i].before[0] < sp {
            i += 1;
        }
        // Walks past the first frame never move `sp` down, so the search
        // resumes here next time; a first frame's may, then a match is
        // only missed.
        self.cursor = i;
        // (The frame pointer, where used, is compared below.)
        let Some(first) = (i..old.len)
            .take_while(|&j| old.steps[j].before[0] == sp)
            .find(|&j| old.steps[j].frame == frame && old.steps[j].before[2] == before[2])
        else {
            return Replay::NoMatch;
        };
        let (mut j, mut fp) = (first, before[FP]);
        let trusted = match first {
            0 => self.flat.trusted(stack, fp),
            _ => 0,
        };
        if trusted > 0 && trusted == old.len {
            if let Some(whole) = self.flat.whole {
                return self.replay_whole(whole, regs, stack, push);
            }
        }
        let stop = loop {
            let step = &old.steps[j];
            // A chained step starts where the one before ended but for the
            // frame pointer, compared here where it is used.
            let fp_after = if j < trusted {
                step.pass(stack, fp)
            } else if step.uses_fp && step.before[FP] != fp {
                None
            } else {
                step.check(stack, fp)
            };
            let Some(fp_after) = fp_after else {
                break Replay::Diverged(step.frame);
            };
            fp = fp_after;
            j += 1;
            let Some(next) = FrameAddress::from_return_address(step.ret) else {
                break Replay::Ended(step.frame);
            };
            if !push(step.ret) {
                break Replay::Full;
            }
            if j == old.len || !old.steps[j].chained {
                break Replay::Diverged(next);
            }
        };
        if j > first {
            let mut after = old.steps[j - 1].after;
            after[FP] = fp;
            set_key(regs, after);
            self.note(Piece::Replayed(first, j));
            self.replayed += (j - first) as u64;
            self.trusted += j.min(trusted) as u64;
        }
        self.cursor = j;
        stop
    }

    /// [`Memo::replay`] of the whole last walk, its flat check passed for
    /// frame pointer `regs`'s: its return addresses in order from
    /// [`Flat::rets`], with the same outcome as replaying step by step.
    fn replay_whole(
        &mut self,
        whole: Whole,
        regs: &mut UnwindRegsNative,
        stack: &Stack,
        mut push: impl FnMut(u64) -> bool,
    ) -> Replay {
        let n = self.last.len;
        // The last step ends the walk: it pushes nothing.
        let pushed = self.flat.rets[..n - 1].iter().position(|&ret| !push(ret));
        let start_fp = key(regs)[FP];
        let (j, stop, after) = match pushed {
            None => {
                let fp = match whole.fp {
                    FpFrom::Start => Some(start_fp),
                    FpFrom::Word(addr) => stack.read(addr).ok(),
                    FpFrom::Value(fp) => Some(fp),
                };
                let mut after = whole.after;
                after[FP] = copied(fp, start_fp);
                (n, Replay::Ended(whole.frame), after)
            }
            Some(k) => {
                // The caller took no more: replayed through step `k`,
                // whose frame pointer after is followed step by step.
                let steps = &self.last.steps[..=k];
                let fp = steps
                    .iter()
                    .try_fold(start_fp, |fp, step| step.pass(stack, fp));
                let mut after = steps[k].after;
                after[FP] = copied(fp, start_fp);
                (k + 1, Replay::Full, after)
            }
        };
        set_key(regs, after);
        self.note(Piece::Replayed(0, j));
        self.replayed += j as u64;
        self.trusted += j as u64;
        self.cursor = j;
        #[cfg(test)]
        {
            self.wholes += 1;
        }
        stop
    }

    /// A reader that remembers the words it reads, for the step at `frame`
    /// about to be unwound from `regs`; [`Recorder::finish`] remembers the
    /// step.
    pub(super) fn recorder<'a>(
        &'a mut self,
        stack: &'a Stack,
        frame: FrameAddress,
        regs: &UnwindRegsNative,
    ) -> Recorder<'a> {
        Recorder {
            memo: self,
            stack,
            frame,
            before: *regs,
            reads: [(0, 0); READS],
            nreads: 0,
            failed: false,
        }
    }
}

/// The frame pointer a covered step copied from a stack word. The word is
/// always readable: [`Memo::flatten`] puts it inside the bounds the flat
/// check found in the stack. Were it not, the walk has ended anyway (the
/// caller does not unwind on from a replay that ended or filled its
/// buffer), so the frame pointer the walk started with stands in.
fn copied(fp: Option<u64>, start_fp: u64) -> u64 {
    debug_assert!(
        fp.is_some(),
        "a covered step's copied word is outside the checked bounds"
    );
    fp.unwrap_or(start_fp)
}

/// Reads stack words for framehop and notes them (see
/// [`Memo::recorder`]).
pub(super) struct Recorder<'a> {
    memo: &'a mut Memo,
    stack: &'a Stack,
    frame: FrameAddress,
    before: UnwindRegsNative,
    /// The first [`READS`] words read; `nreads` counts them all.
    reads: [Word; READS],
    nreads: usize,
    failed: bool,
}

impl Recorder<'_> {
    /// Reads `addr`, noting it.
    pub(super) fn read(&mut self, addr: u64) -> Result<u64, ()> {
        let got = self.stack.read(addr);
        match got {
            Ok(value) => {
                if let Some(word) = self.reads.get_mut(self.nreads) {
                    *word = (addr, value);
                }
                self.nreads += 1;
            }
            Err(()) => self.failed = true,
        }
        got
    }

    /// Remembers the step, unwound to `result` and `regs`, unless a read
    /// failed or it read too many words.
    ///
    /// `trial` unwinds the same frame again from the registers it is given
    /// with the words it is given (framehop with the same rule, and a
    /// reader that finds only those words), or says `None` when it cannot:
    /// once with the frame pointer changed, to learn whether the step uses
    /// it, and then with each word equal to the frame pointer after it
    /// changed in turn, to learn whether it is copied from there. A step
    /// whose frame pointer use is not cleared that way is replayed only
    /// with the same frame pointer and words.
    pub(super) fn finish(
        self,
        result: Option<u64>,
        regs: &UnwindRegsNative,
        mut trial: impl FnMut(&mut UnwindRegsNative, &[Word]) -> Option<u64>,
    ) {
        let memo = self.memo;
        memo.unwound += 1;
        if self.failed || self.nreads > READS {
            return;
        }
        let reads = &self.reads[..self.nreads];
        let (before, after) = (key(&self.before), key(regs));
        // The same outcome as the step's, but for the frame pointer after
        // it, which is returned.
        let mut outcome_but_fp = |start: Key, words: &[Word]| {
            let mut tried = self.before;
            set_key(&mut tried, start);
            let got = trial(&mut tried, words)?;
            let end = key(&tried);
            (Some(got) == result && end[0] == after[0] && end[2] == after[2]).then_some(end[FP])
        };
        let (mut uses_fp, mut fp_after) = (true, FpAfter::Same);
        // Only a step that found a caller: a failed one may fail for
        // another frame pointer too, and tell nothing.
        if result.is_some() {
            let mut changed = before;
            changed[FP] ^= CHANGE;
            match outcome_but_fp(changed, reads) {
                // Passed on both times (the step left it as it was).
                Some(fp) if fp == changed[FP] && after[FP] == before[FP] => {
                    (uses_fp, fp_after) = (false, FpAfter::Kept)
                }
                Some(fp) if fp == after[FP] => uses_fp = false,
                _ => {}
            }
            if fp_after != FpAfter::Kept {
                // A word is where the frame pointer comes from if changing
                // it changes only the frame pointer, to the same value, for
                // a value larger and one smaller (0) than any address: a
                // rule that checks the value it reads (aarch64's
                // frame-pointer rules end the walk at 0 and refuse one that
                // moves down) is caught by one of them.
                let copied_from = (0..reads.len()).find(|&k| {
                    reads[k].1 == after[FP]
                        && [reads[k].1 ^ CHANGE, 0].into_iter().all(|value| {
                            let mut words = self.reads;
                            words[k].1 = value;
                            outcome_but_fp(before, &words[..reads.len()]) == Some(value)
                        })
                });
                if let Some(k) = copied_from {
                    fp_after = FpAfter::Word(k as u8);
                }
            }
        }
        let step = Step {
            frame: self.frame,
            before,
            uses_fp,
            fp_after,
            reads: self.reads,
            nreads: self.nreads as u8,
            chained: false,
            ret: result.unwrap_or(0),
            after,
        };
        let n = memo.staged.len;
        if n < memo.staged.steps.len() {
            memo.staged.steps[n] = step;
            memo.staged.len = n + 1;
            memo.note(Piece::Unwound(n, n + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    /// A stack made of `mem`, which outlives the reader in each test.
    fn stack_of(mem: &[u64]) -> Stack {
        let lo = mem.as_ptr() as usize;
        // SAFETY: `mem` is readable for as long as the test uses it.
        unsafe { Stack::new(lo, lo + 8 * mem.len()) }
    }

    fn at(mem: &[u64], i: usize) -> u64 {
        mem.as_ptr() as u64 + 8 * i as u64
    }

    /// Registers with these `sp`, frame pointer and `ip` (`lr`).
    fn regs(sp: u64, fp: u64, pc: u64) -> UnwindRegsNative {
        let mut regs = UnwindRegsNative::new(0, 0, 0);
        set_key(&mut regs, [sp, fp, pc]);
        regs
    }

    /// Rules shaped like framehop's, for steps unwound by hand.
    #[derive(Clone, Copy)]
    enum Rule {
        /// The return address at word `ret` from `sp`, which moves past
        /// it; the frame pointer kept.
        Sp { ret: u64 },
        /// The same, and the frame pointer restored from word `fp` from
        /// `sp`.
        SpRestoringFp { ret: u64, fp: u64 },
        /// A frame pointer's: the caller's frame pointer at it, the return
        /// address above, `sp` above both.
        Fp,
        /// Reads words 0 to 3 from `sp` and returns the last.
        FourWords,
        /// aarch64's frame-pointer rule: as `Fp`, but a caller's frame
        /// pointer of 0 ends the walk and one at or below this one fails.
        FpChecked,
        /// A return address at word `ret` from `sp`, which moves past it,
        /// and the frame pointer restored from where it points, or kept
        /// when that cannot be read (as framehop's DWARF evaluation passes
        /// over such a read).
        SpRestoringFpLeniently { ret: u64 },
        /// As `Sp`, having read word `word` from `sp` too (and done
        /// nothing with it).
        SpAndWord { ret: u64, word: u64 },
    }

    /// Unwinds one step by `rule`, as framehop would.
    fn exec(
        rule: Rule,
        regs: &mut UnwindRegsNative,
        read: &mut dyn FnMut(u64) -> Result<u64, ()>,
    ) -> Option<u64> {
        let [sp, fp, _] = key(regs);
        let (ret, sp_after, fp_after) = match rule {
            Rule::Sp { ret } => (read(sp + 8 * ret).ok()?, sp + 8 * (ret + 1), fp),
            Rule::SpRestoringFp { ret, fp: saved } => {
                let r = read(sp + 8 * ret).ok()?;
                (r, sp + 8 * (ret + 1), read(sp + 8 * saved).ok()?)
            }
            Rule::Fp => (
                read(fp.checked_add(8)?).ok()?,
                fp.checked_add(16)?,
                read(fp).ok()?,
            ),
            Rule::FourWords => {
                let mut last = 0;
                for k in 0..4 {
                    last = read(sp + 8 * k).ok()?;
                }
                (last, sp + 32, fp)
            }
            Rule::FpChecked => {
                let ret = read(fp.checked_add(8)?).ok()?;
                let caller = read(fp).ok()?;
                if caller == 0 || caller <= fp {
                    return None;
                }
                (ret, fp + 16, caller)
            }
            Rule::SpAndWord { ret, word } => {
                read(sp + 8 * word).ok()?;
                (read(sp + 8 * ret).ok()?, sp + 8 * (ret + 1), fp)
            }
            Rule::SpRestoringFpLeniently { ret } => {
                let r = read(sp + 8 * ret).ok()?;
                (r, sp + 8 * (ret + 1), read(fp).unwrap_or(fp))
            }
        };
        set_key(regs, [sp_after, fp_after, ret]);
        Some(ret)
    }

    /// Unwinds the step at `frame` from `regs` by `rule`, remembering it:
    /// the return address and the registers after. `trials`: whether the
    /// trials may unwind it again (as when framehop had its rule cached).
    fn unwind(
        memo: &mut Memo,
        stack: &Stack,
        frame: FrameAddress,
        regs: UnwindRegsNative,
        rule: Rule,
        trials: bool,
    ) -> (u64, UnwindRegsNative) {
        let mut recorder = memo.recorder(stack, frame, &regs);
        let mut after = regs;
        let ret = exec(rule, &mut after, &mut |a| recorder.read(a));
        recorder.finish(ret, &after, |tried, words| {
            trials.then(|| exec(rule, tried, &mut |a| lookup(words, a)))?
        });
        (ret.expect("the step unwinds"), after)
    }

    /// A memory of one walk of `rules` at [`FRAME`] on `mem`, from `sp` at
    /// its first word, frame pointer `fp` and `ip` (`lr`) [`FRAME`]'s.
    fn remembered(mem: &[u64], fp: u64, rules: &[Rule]) -> Box<Memo> {
        let mut memo = Memo::new();
        let stack = stack_of(mem);
        let (mut frame, mut regs) = (FRAME, regs(at(mem, 0), fp, 0x1000));
        memo.begin(1);
        for &rule in rules {
            let (ret, after) = unwind(&mut memo, &stack, frame, regs, rule, true);
            frame = FrameAddress::from_return_address(ret).expect("a return address");
            regs = after;
        }
        memo.end();
        memo
    }

    /// Replays at [`FRAME`] from `regs` on `mem`: the return addresses
    /// given, whether the walk must unwind at [`FRAME`] itself, and the
    /// registers after.
    fn replay(memo: &mut Memo, mem: &[u64], mut regs: UnwindRegsNative) -> (Vec<u64>, bool, Key) {
        let mut pushed = Vec::new();
        memo.begin(1);
        let unwind = match memo.replay(FRAME, &mut regs, &stack_of(mem), |ret| {
            pushed.push(ret);
            true
        }) {
            Replay::NoMatch => true,
            Replay::Diverged(at) => at == FRAME,
            Replay::Ended(_) | Replay::Full => false,
        };
        (pushed, unwind, key(&regs))
    }

    const FRAME: FrameAddress = FrameAddress::InstructionPointer(0x1000);

    #[test]
    fn a_step_is_replayed_only_from_the_same_registers_and_words() {
        let mut mem = [0u64, 20, 30, 0x2000, 0];
        let sp = at(&mem, 0);
        let mut memo = remembered(&mem, 7, &[Rule::Sp { ret: 3 }]);
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(sp, 7, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x2000], false));
        assert_eq!(after, [at(&mem, 4), 7, 0x2000]);
        memo.end();
        // The replayed step is remembered again, and replays again.
        assert_eq!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).0, [0x2000]);
        memo.end();
        // (The walks below are not ended: the last walk stays the one
        // above.) Another `sp`, another `ip`: unwound.
        assert!(replay(&mut memo, &mem, regs(sp + 8, 7, 0x1000)).1);
        assert!(replay(&mut memo, &mem, regs(sp, 7, 0x1008)).1);
        // Another module list: unwound.
        memo.begin(2);
        let mut r = regs(sp, 7, 0x1000);
        let found = memo.replay(FRAME, &mut r, &stack_of(&mem), |_| true);
        assert!(matches!(found, Replay::NoMatch));
        // A word it did not read may change; the one it read may not.
        mem[1] += 1;
        assert_eq!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).0, [0x2000]);
        mem[3] += 1;
        assert!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).1);
    }

    #[test]
    fn a_step_that_keeps_the_frame_pointer_replays_with_any() {
        let mem = [0u64, 0x2000, 0];
        let sp = at(&mem, 0);
        let mut memo = remembered(&mem, 7, &[Rule::Sp { ret: 1 }]);
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(sp, 99, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x2000], false));
        assert_eq!(after, [at(&mem, 2), 99, 0x2000]);
    }

    #[test]
    fn a_step_that_restores_the_frame_pointer_takes_it_from_the_stack() {
        let mut mem = [0u64, 55, 0x2000, 0];
        let sp = at(&mem, 0);
        let rule = Rule::SpRestoringFp { ret: 2, fp: 1 };
        let mut memo = remembered(&mem, 7, &[rule]);
        // Another frame pointer, another saved one: replayed, the saved one
        // taken.
        mem[1] = 66;
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(sp, 8, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x2000], false));
        assert_eq!(after, [at(&mem, 3), 66, 0x2000]);
        // Another return address: unwound.
        mem[2] = 0x3000;
        assert!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).1);
    }

    #[test]
    fn a_word_equal_to_the_frame_pointer_after_is_copied_only_if_it_is_its_source() {
        // The return address and the saved frame pointer are equal: the
        // return address (read first) is not where the frame pointer comes
        // from, and stays compared.
        let mut mem = [0u64, 0x2000, 0x2000, 0];
        let sp = at(&mem, 0);
        let rule = Rule::SpRestoringFp { ret: 2, fp: 1 };
        let mut memo = remembered(&mem, 7, &[rule]);
        assert_eq!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).0, [0x2000]);
        // The saved frame pointer is: copied.
        mem[1] = 0x2500;
        assert_eq!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).2[FP], 0x2500);
        mem[2] = 0x3000;
        assert!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).1);
    }

    #[test]
    fn a_step_that_uses_the_frame_pointer_replays_only_with_it() {
        // The frame pointer points at word 2: the caller's at 2, the
        // return address at 3.
        let mut mem = [0u64, 0, 77, 0x2000, 0, 77, 0x2000];
        let (sp, fp) = (at(&mem, 0), at(&mem, 2));
        let mut memo = remembered(&mem, fp, &[Rule::Fp]);
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(sp, fp, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x2000], false));
        assert_eq!(after, [at(&mem, 4), 77, 0x2000]);
        // Another frame pointer, even one at the same words: unwound.
        assert!(replay(&mut memo, &mem, regs(sp, at(&mem, 5), 0x1000)).1);
        // The caller's frame pointer it read changed: copied, not compared.
        mem[2] = 78;
        assert_eq!(replay(&mut memo, &mem, regs(sp, fp, 0x1000)).2[FP], 78);
    }

    #[test]
    fn a_frame_pointer_followed_through_the_walk_is_compared_where_used() {
        // Step 1 restores the frame pointer from word 1; step 2 uses it.
        let mut mem = [0u64, 0, 0x1500, 0, 0, 99, 0x2000, 0];
        mem[1] = at(&mem, 5);
        let sp = at(&mem, 0);
        let rules = [Rule::SpRestoringFp { ret: 2, fp: 1 }, Rule::Fp];
        let mut memo = remembered(&mem, 7, &rules);
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(sp, 8, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x1500, 0x2000], false));
        assert_eq!(after, [at(&mem, 7), 99, 0x2000]);
        // The saved frame pointer now points elsewhere: step 1 replays (it
        // copies it), step 2 does not (it uses it).
        mem[1] = at(&mem, 3);
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(sp, 8, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x1500], false));
        assert_eq!(after, [at(&mem, 3), at(&mem, 3), 0x1500]);
        // So does a frame pointer kept by step 1 and used by step 2.
        let rules = [Rule::Sp { ret: 2 }, Rule::Fp];
        mem[1] = 0;
        let mut memo = remembered(&mem, at(&mem, 5), &rules);
        let (pushed, _, _) = replay(&mut memo, &mem, regs(sp, at(&mem, 5), 0x1000));
        assert_eq!(pushed, [0x1500, 0x2000]);
        let (pushed, _, _) = replay(&mut memo, &mem, regs(sp, at(&mem, 4), 0x1000));
        assert_eq!(pushed, [0x1500]);
    }

    #[test]
    fn a_flat_check_follows_a_frame_pointer_copied_from_a_word() {
        // Step 1 restores the frame pointer from word 1; step 2 uses it.
        let mut mem = [0u64, 0, 0x1500, 0, 0, 99, 0x2000, 0];
        mem[1] = at(&mem, 5);
        let sp = at(&mem, 0);
        let rules = [Rule::SpRestoringFp { ret: 2, fp: 1 }, Rule::Fp];
        let mut memo = remembered(&mem, 7, &rules);
        memo.flatten();
        // Another frame pointer to start with: step 2 uses the one step 1
        // copied, so the flat check covers both steps all the same.
        let (pushed, _, _) = replay(&mut memo, &mem, regs(sp, 8, 0x1000));
        assert_eq!((pushed, memo.trusted), (vec![0x1500, 0x2000], 2));
    }

    #[test]
    fn a_frame_pointer_its_rule_checks_is_compared_not_copied() {
        // The frame pointer points at word 2: the caller's (word 5's
        // address) at 2, the return address at 3.
        let mut mem = [0u64, 0, 0, 0x2000, 0, 0, 0];
        mem[2] = at(&mem, 5);
        let fp = at(&mem, 2);
        let mut memo = remembered(&mem, fp, &[Rule::FpChecked]);
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(at(&mem, 0), fp, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x2000], false));
        assert_eq!(after[FP], at(&mem, 5));
        // A caller's frame pointer of 0, or one below: the rule would end
        // the walk or fail, so the step is unwound.
        for caller in [0, at(&mem, 1)] {
            mem[2] = caller;
            assert!(replay(&mut memo, &mem, regs(at(&mem, 0), fp, 0x1000)).1);
        }
    }

    #[test]
    fn a_frame_pointer_read_leniently_is_not_taken_as_kept() {
        // The frame pointer points at word 1 (55) or word 2 (66).
        let mem = [0u64, 55, 66, 0x2000, 0];
        let rule = Rule::SpRestoringFpLeniently { ret: 3 };
        let mut memo = remembered(&mem, at(&mem, 1), &[rule]);
        let (pushed, _, after) = replay(&mut memo, &mem, regs(at(&mem, 0), at(&mem, 1), 0x1000));
        assert_eq!((pushed, after[FP]), (vec![0x2000], 55));
        // Another frame pointer: the rule would read 66 there. (A frame
        // pointer it cannot read at made the trial keep it, which is not
        // what the step did.)
        assert!(replay(&mut memo, &mem, regs(at(&mem, 0), at(&mem, 2), 0x1000)).1);
    }

    #[test]
    fn a_step_without_trials_is_replayed_only_with_its_frame_pointer() {
        let mem = [0u64, 0x2000, 0];
        let mut memo = Memo::new();
        memo.begin(1);
        let before = regs(at(&mem, 0), 7, 0x1000);
        unwind(
            &mut memo,
            &stack_of(&mem),
            FRAME,
            before,
            Rule::Sp { ret: 1 },
            false,
        );
        memo.end();
        assert!(!replay(&mut memo, &mem, regs(at(&mem, 0), 7, 0x1000)).1);
        assert!(replay(&mut memo, &mem, regs(at(&mem, 0), 8, 0x1000)).1);
    }

    #[test]
    fn a_memo_without_room_remembers_nothing() {
        let mem = [0u64, 55, 0x2000, 0];
        let mut memo = Memo::forgetful();
        let stack = stack_of(&mem);
        let rules = [Rule::SpRestoringFp { ret: 2, fp: 1 }];
        for _ in 0..2 {
            memo.begin(1);
            let (ret, _) = unwind(
                &mut memo,
                &stack,
                FRAME,
                regs(at(&mem, 0), 7, 0x1000),
                rules[0],
                true,
            );
            assert_eq!(ret, 0x2000);
            memo.end();
            assert!(replay(&mut memo, &mem, regs(at(&mem, 0), 7, 0x1000)).1);
        }
        assert_eq!((memo.unwound, memo.replayed), (2, 0));
    }

    /// Walks from [`FRAME`] with `regs` on `mem` as a slot would: replays
    /// what it can, unwinds the rest by `rule`, and remembers the walk.
    fn walk(memo: &mut Memo, mem: &[u64], regs: UnwindRegsNative, rule: Rule) -> Vec<u64> {
        walk_with(memo, mem, &stack_of(mem), regs, &|_| rule, usize::MAX, true).0
    }

    /// [`walk`] on `stack`, each frame unwound by the rule `rule_of` picks
    /// for it, giving at most `limit` return addresses; without flat checks
    /// unless `flat`. The return addresses and the registers it ended with.
    fn walk_with(
        memo: &mut Memo,
        mem: &[u64],
        stack: &Stack,
        mut regs: UnwindRegsNative,
        rule_of: &dyn Fn(FrameAddress) -> Rule,
        limit: usize,
        flat: bool,
    ) -> (Vec<u64>, Key) {
        let mut pushed = Vec::new();
        let mut frame = FRAME;
        memo.begin(1);
        // Frame-pointer rules may move `sp` down: a cap, not the stack's
        // end, ends such a walk.
        for _ in 0..2 * mem.len() {
            if !flat {
                memo.flat.forget();
            }
            match memo.replay(frame, &mut regs, stack, |ret| {
                pushed.push(ret);
                pushed.len() <= limit
            }) {
                Replay::Ended(_) => break,
                Replay::Full => {
                    pushed.pop();
                    break;
                }
                Replay::Diverged(at) => frame = at,
                Replay::NoMatch => {}
            }
            // The stack's end is the end of the walk.
            if key(&regs)[0] >= at(mem, mem.len()) {
                break;
            }
            let rule = rule_of(frame);
            let mut recorder = memo.recorder(stack, frame, &regs);
            let mut after = regs;
            let ret = exec(rule, &mut after, &mut |a| recorder.read(a));
            recorder.finish(ret, &after, |tried, words| {
                exec(rule, tried, &mut |a| lookup(words, a))
            });
            let Some(next) = ret.and_then(FrameAddress::from_return_address) else {
                break;
            };
            if pushed.len() == limit {
                break;
            }
            pushed.push(next.address());
            (frame, regs) = (next, after);
        }
        memo.end();
        (pushed, key(&regs))
    }

    #[test]
    fn flat_checks_replay_what_step_by_step_checks_do() {
        const W: usize = 64;
        let rules = [
            Rule::Sp { ret: 1 },
            Rule::SpRestoringFp { ret: 2, fp: 1 },
            Rule::Fp,
            Rule::FpChecked,
            Rule::SpRestoringFpLeniently { ret: 1 },
            Rule::SpAndWord { ret: 1, word: 0 },
        ];
        let rule_of = |frame: FrameAddress| rules[(frame.address() >> 4) as usize % rules.len()];
        let mut rng = Rng(0xF1A7_C4EC);
        let mut mem = [0u64; W];
        let base = at(&mem, 0);
        // Return addresses (each picks a rule), addresses above in the
        // stack (saved frame pointers), small numbers.
        let word = |rng: &mut Rng, i: usize| match rng.below(5) {
            0 | 1 => 0x1001 + 0x10 * rng.below(12),
            2 | 3 => base + 8 * (i as u64 + 1 + rng.below(6)).min(W as u64 - 1),
            _ => rng.below(3),
        };
        // Two memories for the whole test: each makes four mappings, and
        // other tests (the region's reservations) probe the address space
        // meanwhile.
        let (mut flat, mut checked) = (Memo::new(), Memo::new());
        let mut walks = 0;
        for _ in 0..2_000 {
            for (i, w) in mem.iter_mut().enumerate() {
                *w = word(&mut rng, i);
            }
            let (mut sp, mut fp, mut limit, mut lo) = (at(&mem, 0), 7, usize::MAX, 0);
            for _ in 0..12 {
                // Half the walks repeat the one before. In the others a
                // few words change, and where the walk starts, its frame
                // pointer, its depth or its stack may.
                if rng.chance(50) {
                    for _ in 0..rng.below(3) {
                        let i = rng.below(W as u64) as usize;
                        mem[i] = word(&mut rng, i);
                    }
                    sp = at(&mem, rng.below(2) as usize);
                    fp = [7, at(&mem, 2), at(&mem, 4), word(&mut rng, 0)][rng.below(4) as usize];
                    limit = match rng.chance(20) {
                        true => rng.below(8) as usize,
                        false => usize::MAX,
                    };
                    lo = if rng.chance(10) { 2 } else { 0 };
                }
                let lo = at(&mem, lo) as usize;
                // SAFETY: inside `mem`, which outlives the reader.
                let stack = unsafe { Stack::new(lo, at(&mem, W) as usize) };
                let regs = regs(sp, fp, 0x1000);
                let a = walk_with(&mut flat, &mem, &stack, regs, &rule_of, limit, true);
                let b = walk_with(&mut checked, &mem, &stack, regs, &rule_of, limit, false);
                assert_eq!(a, b);
                assert_eq!(
                    (flat.replayed, flat.unwound),
                    (checked.replayed, checked.unwound)
                );
                walks += 1;
            }
        }
        assert_eq!((checked.trusted, checked.wholes), (0, 0));
        // Not vacuous: flat checks covered many of the steps replayed, and
        // some walks replayed whole.
        assert!(flat.wholes > 100, "{} whole replays", flat.wholes);
        let (trusted, replayed) = (flat.trusted, flat.replayed);
        assert!(
            trusted > replayed / 4,
            "{trusted} of {replayed} steps replayed on flat checks, {walks} walks"
        );
    }

    #[test]
    fn a_walk_replayed_whole_ends_as_one_replayed_step_by_step() {
        // Three frames, each restoring the frame pointer from the word
        // below its return address; the last return address ends the walk.
        let mut mem = [1u64, 0, 0x1500, 2, 0, 0x1600, 3, 0, 0];
        (mem[1], mem[4], mem[7]) = (at(&mem, 3), at(&mem, 6), 0x77);
        let sp = at(&mem, 0);
        let rule = |_| Rule::SpRestoringFp { ret: 2, fp: 1 };
        let (mut memo, mut checked) = (Memo::new(), Memo::new());
        let stack = stack_of(&mem);
        let mut both = |mem: &[u64], limit| {
            let regs = regs(sp, 7, 0x1000);
            let a = walk_with(&mut memo, mem, &stack, regs, &rule, limit, true);
            let b = walk_with(&mut checked, mem, &stack, regs, &rule, limit, false);
            assert_eq!(a, b);
            (a, memo.wholes)
        };
        let rets = vec![0x1500, 0x1600];
        // Unwound (ending before the last step), then replayed step by
        // step (through it), which flattens the walk.
        let third = [at(&mem, 6), at(&mem, 6), 0x1600];
        assert_eq!(both(&mem, usize::MAX), ((rets.clone(), third), 0));
        let end = [at(&mem, 9), 0x77, 0];
        assert_eq!(both(&mem, usize::MAX), ((rets.clone(), end), 0));
        // Whole, with the frame pointer copied from the last saved word.
        assert_eq!(both(&mem, usize::MAX), ((rets.clone(), end), 1));
        // That word is copied, not compared: changed, still whole, and the
        // frame pointer after is its new value.
        mem[7] = 0x88;
        let end = [at(&mem, 9), 0x88, 0];
        assert_eq!(both(&mem, usize::MAX), ((rets.clone(), end), 2));
        // A caller that takes one return address: whole again, full at the
        // second step, with that step's registers after.
        assert_eq!(both(&mem, 1), ((vec![0x1500], third), 3));
        // A compared word changes: step by step from there.
        mem[5] = 0x1700;
        let ((pushed, _), wholes) = both(&mem, usize::MAX);
        assert_eq!((pushed, wholes), (vec![0x1500, 0x1700], 3));
    }

    #[test]
    fn a_walk_that_repeats_is_checked_at_once_and_a_change_forgets_it() {
        // Two frames, each with its return address at `sp`.
        let mut mem = [0u64, 0x1500, 0, 0x2000];
        let sp = at(&mem, 0);
        let rule = Rule::Sp { ret: 1 };
        let mut memo = Memo::new();
        for _ in 0..2 {
            assert_eq!(
                walk(&mut memo, &mem, regs(sp, 7, 0x1000), rule),
                [0x1500, 0x2000]
            );
        }
        // Flattened when it repeated; covered from the third walk on.
        assert_eq!((memo.flat.steps, memo.trusted), (2, 0));
        assert_eq!(
            walk(&mut memo, &mem, regs(sp, 7, 0x1000), rule),
            [0x1500, 0x2000]
        );
        assert_eq!((memo.replayed, memo.unwound, memo.trusted), (4, 2, 2));
        // The outer return address changes: the walk replays the first
        // frame (checked) and unwinds the second.
        mem[3] = 0x3000;
        assert_eq!(
            walk(&mut memo, &mem, regs(sp, 7, 0x1000), rule),
            [0x1500, 0x3000]
        );
        assert_eq!((memo.replayed, memo.unwound, memo.trusted), (5, 3, 2));
        // And back: the last walk is that one, its words are checked.
        mem[3] = 0x2000;
        let (pushed, unwind, _) = replay(&mut memo, &mem, regs(sp, 7, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x1500], false));
    }

    #[test]
    fn a_walk_laid_out_from_its_unwound_steps_forgets_the_flat_check() {
        // Nine frames, each reading a word at `sp` and its return address
        // above it.
        let mut mem = [0u64; 18];
        for i in 0..9 {
            mem[2 * i] = 100 + i as u64;
            mem[2 * i + 1] = 0x1500 + 0x100 * i as u64;
        }
        let sp = at(&mem, 0);
        let rule = Rule::SpAndWord { ret: 1, word: 0 };
        let mut memo = Memo::new();
        for _ in 0..2 {
            walk(&mut memo, &mem, regs(sp, 7, 0x1000), rule);
        }
        assert_eq!(memo.flat.steps, 9);
        // Every other frame's word changes: runs of unwound and replayed
        // steps, more than a walk is laid out from, so only the unwound
        // steps are remembered.
        for i in (0..9).step_by(2) {
            mem[2 * i] += 1000;
        }
        assert_eq!(walk(&mut memo, &mem, regs(sp, 7, 0x1000), rule).len(), 9);
        assert_eq!(memo.last.len, 5);
        // The words of the walk before hold again; the step at the first
        // frame is now the one just unwound, whose word does not.
        for i in (0..9).step_by(2) {
            mem[2 * i] -= 1000;
        }
        let (pushed, unwind, _) = replay(&mut memo, &mem, regs(sp, 7, 0x1000));
        assert_eq!((pushed, unwind), (vec![], true));
    }

    #[test]
    fn a_flat_check_reads_only_inside_the_stack() {
        let mem = [0u64, 0x1500, 0, 0x2000];
        let sp = at(&mem, 0);
        let rule = Rule::Sp { ret: 1 };
        let mut memo = Memo::new();
        for _ in 0..2 {
            walk(&mut memo, &mem, regs(sp, 7, 0x1000), rule);
        }
        assert_eq!(memo.flat.steps, 2);
        // A stack that ends after the first frame's words: the second
        // frame's return address cannot be read, so it is not replayed.
        // SAFETY: `mem` outlives the reader.
        let stack = unsafe { Stack::new(sp as usize, at(&mem, 2) as usize) };
        let mut pushed = Vec::new();
        let mut regs = regs(sp, 7, 0x1000);
        memo.begin(1);
        let stop = memo.replay(FRAME, &mut regs, &stack, |ret| {
            pushed.push(ret);
            true
        });
        assert!(matches!(stop, Replay::Diverged(_)));
        assert_eq!(pushed, [0x1500]);
    }

    /// Two chained steps, each reading its return address at `sp`: the
    /// first leaves the frame pointer `after_first` and does not use it,
    /// the second needs `needed` and uses it.
    fn two_steps(mem: &[u64], after_first: u64, needed: u64) -> Box<Memo> {
        let mut memo = Memo::new();
        let step = |i: usize, fp: u64, uses_fp: bool, fp_after: u64| Step {
            frame: match i {
                0 => FRAME,
                _ => FrameAddress::from_return_address(mem[2 * i - 1]).unwrap(),
            },
            before: [at(mem, 2 * i), fp, [0x1000, mem[1]][i]],
            uses_fp,
            fp_after: FpAfter::Same,
            reads: [(at(mem, 2 * i + 1), mem[2 * i + 1]), (0, 0), (0, 0)],
            nreads: 1,
            chained: false,
            ret: mem[2 * i + 1],
            after: [at(mem, 2 * i + 2), fp_after, mem[2 * i + 1]],
        };
        memo.last.steps[0] = step(0, 7, false, after_first);
        memo.last.steps[1] = step(1, needed, true, 9);
        (memo.last.len, memo.last.list) = (2, 1);
        memo.last.link(1);
        assert!(memo.last.steps[1].chained);
        memo.flatten();
        memo
    }

    #[test]
    fn a_flat_check_covers_steps_only_as_far_as_the_frame_pointer_agrees() {
        let mem = [0u64, 0x1500, 0, 0x2000, 0];
        let sp = at(&mem, 0);
        let mut memo = two_steps(&mem, 50, 50);
        assert_eq!(memo.flat.steps, 2);
        assert_eq!(
            replay(&mut memo, &mem, regs(sp, 7, 0x1000)).0,
            [0x1500, 0x2000]
        );
        // The second step needs another frame pointer than the first
        // leaves: a replay stops there.
        let mut memo = two_steps(&mem, 50, 60);
        assert_eq!(memo.flat.steps, 1);
        let (pushed, unwind, after) = replay(&mut memo, &mem, regs(sp, 7, 0x1000));
        assert_eq!((pushed, unwind, after[FP]), (vec![0x1500], false, 50));
    }

    #[test]
    fn a_flat_check_covers_the_steps_chained_from_the_first() {
        // The middle frame reads four words: not remembered, so the third
        // does not follow the first.
        let mem = [0u64, 0x1500, 1, 2, 3, 0x1600, 0, 0x2000, 0];
        let sp = at(&mem, 0);
        let rules = [Rule::Sp { ret: 1 }, Rule::FourWords, Rule::Sp { ret: 1 }];
        let mut memo = remembered(&mem, 7, &rules);
        memo.flatten();
        assert_eq!((memo.last.len, memo.flat.steps), (2, 1));
        let (pushed, unwind, _) = replay(&mut memo, &mem, regs(sp, 7, 0x1000));
        assert_eq!((pushed, unwind), (vec![0x1500], false));
    }

    #[test]
    fn a_step_that_read_too_many_words_is_not_remembered() {
        let mem = [1u64, 2, 3, 0x2000, 0];
        let sp = at(&mem, 0);
        let mut memo = remembered(&mem, 7, &[Rule::FourWords]);
        assert_eq!(memo.unwound, 1);
        assert!(replay(&mut memo, &mem, regs(sp, 7, 0x1000)).1);
    }
}
