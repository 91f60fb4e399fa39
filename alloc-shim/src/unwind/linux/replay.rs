//! Replaying the outer frames of the last DWARF walk instead of unwinding
//! them again.
//!
//! Samples from one place share most of their stack: the allocating
//! function changes, `main`, the runtime's worker loop and the thread's
//! start do not. Unwinding each of those frames with framehop costs about
//! 175 instructions even when its rule is cached (the rule lookup, the
//! rule, our bank choice); in a 12-frame allocator sample that is about
//! three quarters of the sample's instructions.
//!
//! One step of the walk is a function of its inputs: the frame's address
//! (and whether it is the first frame), the registers framehop unwinds with
//! (`sp`, `bp`/`fp` and `ip`/`lr`; framehop 0.16 reads no others on either
//! architecture: its rules use `sp` and `bp` only, and its DWARF evaluation
//! answers "unknown" for every other register), the module list (its rules)
//! and the stack words the step reads. So a slot remembers, for each step
//! of its last walk, those inputs, the stack words from the lowest to the
//! highest one it read, and the outcome (the return address and the
//! registers after). A step of the next walk whose address and registers
//! equal a remembered step's, and whose words still hold the same values
//! (compared inside the same bounds the walk reads within), has the same
//! outcome: it is replayed without framehop, and so are the steps after
//! it, each starting where the one before ended, for as long as their
//! words are unchanged. Any difference, in a register or in one word, and
//! the step is unwound as usual. Nothing is assumed about which thread or
//! call path the memory belongs to; the comparison alone decides.
//!
//! The words are a frame's saved registers and return address, one to
//! eight in a row, so a replayed frame costs a bounds check and a few
//! loads and compares: about 90 instructions instead of 175 (callgrind, the
//! window benchmark's samples); 46-frame samples 0.67-0.73 µs -> 0.33-0.41.
//!
//! The memory is fixed when the slot is made (no allocation here, so signal
//! handlers replay too, about 55 KB a slot): [`STEPS`] steps for the last
//! walk, as many for the steps the current walk unwinds, as many again for
//! laying out a walk that cannot be laid out in place ([`Memo::end`]), and
//! a ring of [`RING`] words that the steps point into, so that replayed
//! steps are kept without copying their words. A step whose words the ring
//! has since overwritten is unwound again (and its words written again). A
//! step that read more than [`STEP_WORDS`] words' span, or failed a read,
//! is not remembered.

use framehop::{FrameAddress, UnwindRegsNative};

use super::Stack;

/// Steps remembered per walk: the deepest stack that can be asked for
/// (128 frames) plus the frames a capture skips, with room to spare.
pub(super) const STEPS: usize = 136;
/// Words in a slot's ring (about 400 frames' worth).
pub(super) const RING: usize = 2048;
/// The widest span of words one step may read and still be remembered.
const STEP_WORDS: usize = 16;

/// The registers a step is unwound from and to, as framehop uses them:
/// `[sp, bp, ip]` on x86_64, `[sp, fp, lr]` on aarch64.
type Key = [u64; 3];

/// The registers of `regs` a step depends on.
fn key(regs: &UnwindRegsNative) -> Key {
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

/// One remembered step.
#[derive(Clone, Copy)]
struct Step {
    frame: FrameAddress,
    before: Key,
    /// The stack words from `span` on that the step read (and those
    /// between): `count` of them, at ring position `pos` (positions count
    /// up forever; the ring holds the last [`RING`]).
    span: u64,
    pos: u64,
    count: u32,
    /// The step follows from the one before it in the walk: its frame is
    /// that step's return address and its registers that step's after.
    /// A replay runs on through chained steps without comparing states.
    chained: bool,
    /// The return address found; 0 when the walk ended at this frame.
    ret: u64,
    after: Key,
}

const NO_STEP: Step = Step {
    frame: FrameAddress::InstructionPointer(0),
    before: [0; 3],
    span: 0,
    pos: 0,
    count: 0,
    chained: false,
    ret: 0,
    after: [0; 3],
};

impl Step {
    /// Whether `self` starts where `prev` ended.
    fn follows(&self, prev: &Step) -> bool {
        self.before == prev.after && FrameAddress::from_return_address(prev.ret) == Some(self.frame)
    }
}

/// The steps of one walk, in walk order (so with non-decreasing `sp`
/// after the first).
struct Walk {
    /// The module list ([`super::Modules::seq`]) the walk used; 0: none.
    list: u64,
    steps: Box<[Step]>,
    len: usize,
}

impl Walk {
    fn new() -> Walk {
        Walk {
            list: 0,
            steps: vec![NO_STEP; STEPS].into_boxed_slice(),
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
            let n = piece.len().min(STEPS - start);
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
    ring: Box<[u64]>,
    /// The ring position the next word goes to.
    head: u64,
    /// Steps replayed and unwound since the slot was made (for tests).
    pub(super) replayed: u64,
    pub(super) unwound: u64,
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
    /// Empty walks and ring, on the heap (about 55 KB), never on the
    /// stack.
    pub(super) fn new() -> Box<Memo> {
        Box::new(Memo {
            last: Walk::new(),
            staged: Walk::new(),
            spare: Walk::new(),
            pieces: [Piece::Unwound(0, 0); PIECES],
            npieces: 0,
            cursor: 0,
            ring: vec![0; RING].into_boxed_slice(),
            head: 0,
            replayed: 0,
            unwound: 0,
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
            return;
        };
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
        let Some(first) = (i..old.len)
            .take_while(|&j| old.steps[j].before[0] == sp)
            .find(|&j| old.steps[j].frame == frame && old.steps[j].before == before)
        else {
            return Replay::NoMatch;
        };
        let mut j = first;
        let stop = loop {
            let step = &old.steps[j];
            // The step's words, if the ring still has them.
            let kept = self.head - step.pos <= RING as u64;
            let at = (step.pos % RING as u64) as usize;
            let words = &self.ring[at..at + step.count as usize];
            if !kept || !stack.holds(step.span, words) {
                break Replay::Diverged(step.frame);
            }
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
            set_key(regs, old.steps[j - 1].after);
            self.note(Piece::Replayed(first, j));
            self.replayed += (j - first) as u64;
        }
        self.cursor = j;
        stop
    }

    /// A reader that remembers the span it reads, for the step at `frame`
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
            before: key(regs),
            lo: u64::MAX,
            hi: 0,
            failed: false,
        }
    }
}

/// Reads stack words for framehop and notes their span (see
/// [`Memo::recorder`]).
pub(super) struct Recorder<'a> {
    memo: &'a mut Memo,
    stack: &'a Stack,
    frame: FrameAddress,
    before: Key,
    /// The span read so far: `[lo, hi)`.
    lo: u64,
    hi: u64,
    failed: bool,
}

impl Recorder<'_> {
    /// Reads `addr`, noting it.
    pub(super) fn read(&mut self, addr: u64) -> Result<u64, ()> {
        let got = self.stack.read(addr);
        match got {
            Ok(_) => {
                self.lo = self.lo.min(addr);
                self.hi = self.hi.max(addr + 8);
            }
            Err(()) => self.failed = true,
        }
        got
    }

    /// Remembers the step, unwound to `result` and `regs`: its words, read
    /// again into the ring, unless a read failed or they span too much.
    pub(super) fn finish(self, result: Option<u64>, regs: &UnwindRegsNative) {
        let memo = self.memo;
        memo.unwound += 1;
        let (span, count) = if self.hi == 0 {
            (0, 0)
        } else {
            (self.lo, ((self.hi - self.lo) / 8) as usize)
        };
        if self.failed || count > STEP_WORDS {
            return;
        }
        // Words never wrap around the ring's end.
        let mut pos = memo.head;
        if (pos % RING as u64) as usize + count > RING {
            pos = pos.next_multiple_of(RING as u64);
        }
        // Advanced first: the words about to be written replace the
        // oldest ones, whose steps must no longer count them as kept.
        memo.head = pos + count as u64;
        let at = (pos % RING as u64) as usize;
        for (k, word) in memo.ring[at..at + count].iter_mut().enumerate() {
            // Inside the span read: every address in it was read (or lies
            // between two that were).
            let Ok(value) = self.stack.read(span + 8 * k as u64) else {
                return;
            };
            *word = value;
        }
        let step = Step {
            frame: self.frame,
            before: self.before,
            span,
            pos,
            count: count as u32,
            chained: false,
            ret: result.unwrap_or(0),
            after: key(regs),
        };
        let n = memo.staged.len;
        if n < STEPS {
            memo.staged.steps[n] = step;
            memo.staged.len = n + 1;
            memo.note(Piece::Unwound(n, n + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stack made of `mem`, which outlives the reader in each test.
    fn stack_of(mem: &[u64]) -> Stack {
        let lo = mem.as_ptr() as usize;
        // SAFETY: `mem` is readable for as long as the test uses it.
        unsafe { Stack::new(lo, lo + 8 * mem.len()) }
    }

    fn at(mem: &[u64], i: usize) -> u64 {
        mem.as_ptr() as u64 + 8 * i as u64
    }

    /// Unwinds (by hand) a step at `frame` from `regs` that reads `words`
    /// and finds `ret`, with `after` as its registers then.
    fn unwind(
        memo: &mut Memo,
        stack: &Stack,
        frame: FrameAddress,
        regs: UnwindRegsNative,
        words: &[u64],
        ret: u64,
        after: UnwindRegsNative,
    ) {
        let mut recorder = memo.recorder(stack, frame, &regs);
        for &w in words {
            recorder.read(w).expect("inside the stack");
        }
        recorder.finish(Some(ret), &after);
    }

    /// Replays at `frame` from `regs`: the return addresses given and
    /// whether it said to unwind the frame itself.
    fn replay(
        memo: &mut Memo,
        stack: &Stack,
        frame: FrameAddress,
        mut regs: UnwindRegsNative,
    ) -> (Vec<u64>, bool) {
        let mut pushed = Vec::new();
        let unwind = match memo.replay(frame, &mut regs, stack, |ret| {
            pushed.push(ret);
            true
        }) {
            Replay::NoMatch => true,
            Replay::Diverged(at) => at == frame,
            Replay::Ended(_) | Replay::Full => false,
        };
        (pushed, unwind)
    }

    const FRAME: FrameAddress = FrameAddress::InstructionPointer(0x1000);

    /// A memo of one walk: a step at [`FRAME`] from `sp` = `mem[0]`'s
    /// address (and bp 7) that reads words 1 and 3 of `mem` and finds
    /// 0x2000, with `sp` then at `mem`'s last word; and the registers it
    /// started from and ended with.
    fn remembered(mem: &[u64]) -> (Box<Memo>, UnwindRegsNative, UnwindRegsNative) {
        let regs = UnwindRegsNative::new(0x1000, at(mem, 0), 7);
        let after = UnwindRegsNative::new(0x2000, at(mem, mem.len() - 1), 9);
        let words = [at(mem, 1), at(mem, 3)];
        let mut memo = Memo::new();
        memo.begin(1);
        unwind(
            &mut memo,
            &stack_of(mem),
            FRAME,
            regs,
            &words,
            0x2000,
            after,
        );
        memo.end();
        (memo, regs, after)
    }

    #[test]
    fn a_step_is_replayed_only_from_the_same_registers_and_words() {
        let mem = [0u64, 20, 30, 40, 0];
        let stack = stack_of(&mem);
        let (mut memo, regs, _) = remembered(&mem);
        memo.begin(1);
        assert_eq!(
            replay(&mut memo, &stack, FRAME, regs),
            (vec![0x2000], false)
        );
        memo.end();
        // The replayed step is remembered again, and replays again.
        memo.begin(1);
        assert_eq!(
            replay(&mut memo, &stack, FRAME, regs),
            (vec![0x2000], false)
        );
        memo.end();
        // Another frame pointer: unwound (it may be what the rule uses).
        // (These walks are not ended: the last walk stays the one above.)
        memo.begin(1);
        let mut other_bp = regs;
        let [sp, fp, pc] = key(&regs);
        set_key(&mut other_bp, [sp, fp + 8, pc]);
        assert_eq!(replay(&mut memo, &stack, FRAME, other_bp), (vec![], true));
        // Another module list: unwound.
        memo.begin(2);
        assert_eq!(replay(&mut memo, &stack, FRAME, regs), (vec![], true));
        // And the same again: replayed.
        memo.begin(1);
        assert_eq!(
            replay(&mut memo, &stack, FRAME, regs),
            (vec![0x2000], false)
        );
    }

    #[test]
    fn a_step_whose_words_changed_is_unwound() {
        let mut mem = [0u64, 20, 30, 40, 0];
        let (mut memo, regs, _) = remembered(&mem);
        // A word between the two read counts too (the span is compared).
        for i in 1..=3 {
            mem[i] += 1;
            memo.begin(1);
            assert_eq!(
                replay(&mut memo, &stack_of(&mem), FRAME, regs),
                (vec![], true),
                "word {i}"
            );
            mem[i] -= 1;
        }
    }

    #[test]
    fn a_step_whose_words_left_the_ring_is_unwound() {
        let mut mem = [0u64; 20];
        mem[1..4].copy_from_slice(&[20, 30, 40]);
        let (mut memo, regs, after) = remembered(&mem);
        // The stack changes, and steps of the next walk fill the ring
        // until the changed words land where the first step's were: the
        // ring then holds exactly what the stack holds, but the first
        // step's words are gone, so it must not be replayed.
        mem[1..4].copy_from_slice(&[21, 31, 41]);
        let stack = stack_of(&mem);
        memo.begin(1);
        let filler = FrameAddress::InstructionPointer(0x3000);
        let span = [at(&mem, 1), at(&mem, 16)];
        while memo.head < RING as u64 + 16 {
            unwind(&mut memo, &stack, filler, regs, &span, 0x4000, after);
        }
        assert_eq!(&memo.ring[..3], &[21, 31, 41]);
        assert_eq!(replay(&mut memo, &stack, FRAME, regs), (vec![], true));
    }
}
