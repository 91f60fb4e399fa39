//! Linux on x86_64 and aarch64: registers by inline assembly, modules from
//! `dl_iterate_phdr`, frames by framehop or the frame-pointer chain.

use crate::atfork::AtforkOnce;
use core::ops::Deref;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::ffi::CStr;

use framehop::{
    CacheNative, ExplicitModuleSectionInfo, FrameAddress, Module, MustNotAllocateDuringUnwind,
    UnwindRegsNative, Unwinder, UnwinderNative,
};

use super::hazard::{Current, Hazard};
use super::UnwindMode;
use replay::{Memo, Replay};

mod replay;
pub mod signal;

/// Stack capture works here.
pub(crate) const SUPPORTED: bool = true;

/// Unwind section bytes of a module: where the main program maps them (it
/// is never unloaded), or a copy in [`KEPT`] (see [`module_of`]).
///
/// A raw slice because a copy is freed once no module list that names it
/// can be in use any more ([`reclaim`]): a `Mapped` is only ever read
/// through a module list a walk has pinned, and the bytes outlive every
/// such pin.
#[derive(Clone, Copy)]
pub(crate) struct Mapped {
    ptr: *const u8,
    len: usize,
}

impl Mapped {
    fn new(bytes: &[u8]) -> Mapped {
        Mapped {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

impl Default for Mapped {
    fn default() -> Mapped {
        Mapped::new(&[])
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the bytes are the main program's mapping (never unmapped)
        // or a copy that stays allocated while any module list naming it
        // may be in use, and this is only reached through such a list
        // during a pinned walk (see the type's docs).
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

type Native = UnwinderNative<Mapped, MustNotAllocateDuringUnwind>;
type Cache = CacheNative<MustNotAllocateDuringUnwind>;

struct Modules {
    unwinder: Native,
    /// Which list this is: lists built later have larger numbers (see
    /// [`Banks::hold_rules_of`]).
    seq: u64,
    /// `dlpi_adds` and `dlpi_subs` when the list was built.
    generation: (u64, u64),
    /// Code ranges of the modules, sorted by start.
    ranges: Vec<(u64, u64)>,
}

impl Modules {
    /// Whether `addr` lies in a known module's code.
    fn covers(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|&(start, _)| start <= addr);
        i > 0 && addr < self.ranges[i - 1].1
    }
}

/// The current module list, replaced whole when the loader's counters move.
///
/// A walk pins the list it uses in its cache slot's hazard (see [`hazard`]),
/// or, without a slot, counts itself as unslotted; a replaced list is kept
/// in [`KEPT`] until a rebuild finds no hazard naming it and no unslotted
/// walk ([`reclaim`]). Nothing waits, so signal handlers can walk with a
/// list while another thread replaces it. If walks keep lists pinned (a
/// thread that died mid-walk across a `fork`, say), at most [`MAX_RETIRED`]
/// replaced lists are kept, and then the list is no longer rebuilt.
static MODULES: Current<Modules> = Current::new();
/// The [`Modules::seq`] of the list in `MODULES` (0: none yet), for
/// [`ThreadWalk`]s, which replay only walks made with it.
static CURRENT_LIST: AtomicU64 = AtomicU64::new(0);
static REBUILDING: AtomicBool = AtomicBool::new(false);
/// Replaced lists kept at most, waiting for their walks to finish.
const MAX_RETIRED: usize = 256;
/// The next list's [`Modules::seq`] (0 is no list).
static NEXT_LIST: AtomicU64 = AtomicU64::new(1);

const POOL: usize = 8;
/// framehop caches per pool slot (see [`Banks`]).
const BANKS: usize = 8;
struct CacheSlot {
    busy: AtomicBool,
    cache: AtomicPtr<Banks>,
    /// The module list the slot's current walk uses.
    walking: Hazard<Modules>,
    /// Frames the slot's walks replayed and unwound so far, as its cache's
    /// memory counts them ([`CacheSlot::publish`]).
    frames: [AtomicU64; 2],
}
#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: CacheSlot = CacheSlot {
    busy: AtomicBool::new(false),
    cache: AtomicPtr::new(core::ptr::null_mut()),
    walking: Hazard::new(),
    frames: [AtomicU64::new(0), AtomicU64::new(0)],
};

impl CacheSlot {
    /// Publishes the frame counts of `banks`, this slot's cache, which the
    /// caller holds (`busy`). Async-signal-safe.
    fn publish(&self, banks: &Banks) {
        // Relaxed: statistics, read on their own; only the slot's holder
        // stores, so a load and a store add nothing to contend on.
        self.frames[0].store(banks.memo.replayed, Ordering::Relaxed);
        self.frames[1].store(banks.memo.unwound, Ordering::Relaxed);
    }
}

static CACHES: [CacheSlot; POOL] = [FREE_SLOT; POOL];
/// Frames unwound by walks with caches of their own (every pooled slot
/// busy), which remember nothing.
static UNPOOLED_FRAMES: AtomicU64 = AtomicU64::new(0);
static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);

/// The registers of the caller of this function, at the call.
#[inline(always)]
fn registers() -> (u64, u64, u64, u64) {
    let (pc, sp, fp, lr): (u64, u64, u64, u64);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads rip, rsp and rbp into registers; touches no memory.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags)
        );
        lr = 0;
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads pc, sp, x29 and x30 into registers; touches no memory.
    unsafe {
        core::arch::asm!(
            "adr {pc}, .",
            "mov {sp}, sp",
            "mov {fp}, x29",
            "mov {lr}, x30",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            lr = out(reg) lr,
            options(nomem, nostack, preserves_flags)
        );
    }
    (pc, sp, fp, lr)
}

/// Fills `buf` with the current stack minus its `skip` innermost frames
/// (frame 0 is this function). Returns the count and whether the stack was
/// deeper than `buf`.
#[inline(never)]
pub(crate) fn capture(buf: &mut [u64], skip: usize) -> (usize, bool) {
    let (pc, sp, fp, lr) = registers();
    let mut out = Out::new(buf, skip);
    let Some((lo, hi)) = readable_stack(sp as usize) else {
        // Only the frame we are in is known; callers are not safely readable.
        out.push(pc);
        return (out.n, out.truncated);
    };
    // SAFETY: `[lo, hi)` is this thread's stack between the current stack
    // pointer and its top, mapped and readable for as long as this
    // function runs, and `stack` does not outlive it.
    let stack = unsafe { Stack::new(lo, hi) };
    match super::mode() {
        UnwindMode::FramePointers => walk_frame_pointers(pc, fp, lr, |a| stack.read(a), &mut out),
        UnwindMode::Dwarf => {
            rebuild_if_stale();
            let list = CURRENT_LIST.load(Ordering::Relaxed);
            walk_dwarf_or_copy(list, pc, sp, fp, lr, &stack, &mut out);
        }
    }
    (out.n, out.truncated)
}

/// The allocator's DWARF walk: from this thread's copy of its last whole
/// walk if this is that walk again with module list `list`, else with a
/// cache slot ([`walk_dwarf`]), which the copy may then follow. Whether
/// the copy gave it.
fn walk_dwarf_or_copy(
    list: u64,
    pc: u64,
    sp: u64,
    fp: u64,
    lr: u64,
    stack: &Stack,
    out: &mut Out<'_>,
) -> bool {
    let copied = THREAD_WALK.with(|w| {
        // SAFETY: only here and in `walk_dwarf`, on this thread: from
        // `capture`, inside `record`, which holds the sampler's busy flag,
        // so no other use of it is running (a signal handler that
        // allocates meanwhile is served unsampled, and the CPU handler's
        // walks do not use it); and from tests, whose binary does not
        // sample.
        let w = unsafe { &mut *w.get() };
        let copied = w.replay(list, pc, &start_regs(pc, sp, fp, lr), stack, out);
        if !copied {
            w.flush();
        }
        copied
    });
    if !copied {
        walk_dwarf(pc, sp, fp, lr, stack, out);
    }
    copied
}

/// Return addresses a [`ThreadWalk`] holds: deeper walks are not copied.
const THREAD_RETS: usize = 32;
/// Words of a flat check a [`ThreadWalk`] holds.
const THREAD_WORDS: usize = 64;

/// A thread's copy of the last walk it repeated whole: what a walk from
/// the same place replays from without a cache slot.
///
/// A slot's memory of its last walk is shared by the threads that use the
/// slot and reached through the slot (a compare-and-swap to hold it, a
/// hazard pointer on the module list, then the memory's own pages). When
/// a thread samples again and again from one place (a loop that
/// allocates), its walk is the last one again, all of it replayed on one
/// flat check ([`replay::Memo::whole_walk`]). The thread copies that check
/// and the walk's return addresses here, in its own thread-local memory,
/// and its next walk that starts with the same registers, on a stack whose
/// checked words hold the same values, with the same module list, gives
/// those return addresses without taking a slot: no compare-and-swap, no
/// hazard pointer, no memory of a slot read (and one locked addition to a
/// statistic every [`THREAD_FLUSH_WALKS`] walks). Anything else, and the
/// walk takes a slot as before (and may copy its whole walk again). Walks
/// that end outside every known module are not copied.
///
/// About 1.4 KiB of every thread's static TLS; walks of more than
/// [`THREAD_RETS`] frames or [`THREAD_WORDS`] checked words are not copied.
#[derive(Clone, Copy)]
struct ThreadWalk {
    /// The memo and flat check copied ([`replay::WholeWalk::built`]);
    /// `(0, 0)` when nothing is.
    built: (usize, u64),
    list: u64,
    /// The first frame and the registers the walk starts from (as
    /// [`replay::WholeWalk`] has them).
    frame: FrameAddress,
    start: [u64; 3],
    fp: Option<u64>,
    bounds: (u64, u64),
    nwords: usize,
    words: [(u64, u64); THREAD_WORDS],
    nrets: usize,
    rets: [u64; THREAD_RETS],
    /// Frames replayed from copies not yet added to the process-wide
    /// count, and walks replayed (see [`ThreadWalk::flush`]).
    replayed: u64,
    walks: u64,
}

/// A thread adds the frames it replayed from its copy to the process-wide
/// count once every this many walks, and when a walk takes a slot: one
/// locked addition to a shared line in so many, not one a walk. A thread
/// that ends loses what it had not added (fewer than this many walks).
const THREAD_FLUSH_WALKS: u64 = 64;

impl ThreadWalk {
    const EMPTY: ThreadWalk = ThreadWalk {
        built: (0, 0),
        list: 0,
        frame: FrameAddress::InstructionPointer(0),
        start: [0; 3],
        fp: None,
        bounds: (0, 0),
        nwords: 0,
        words: [(0, 0); THREAD_WORDS],
        nrets: 0,
        rets: [0; THREAD_RETS],
        replayed: 0,
        walks: 0,
    };

    /// Becomes a copy of `walk`, unless it is one already or too large
    /// (then it copies nothing).
    fn remember(&mut self, walk: &replay::WholeWalk<'_>) {
        if self.built == walk.built {
            return;
        }
        let (nwords, nrets) = (walk.words.len(), walk.rets.len());
        if nwords > THREAD_WORDS || nrets > THREAD_RETS {
            self.built = (0, 0);
            return;
        }
        self.built = walk.built;
        self.list = walk.list;
        self.frame = walk.frame;
        self.start = walk.start;
        self.fp = walk.fp;
        self.bounds = walk.bounds;
        self.words[..nwords].copy_from_slice(walk.words);
        self.rets[..nrets].copy_from_slice(walk.rets);
        (self.nwords, self.nrets) = (nwords, nrets);
    }

    /// Gives `out` the walk from the frame at `pc` with `regs`
    /// ([`start_regs`]) and module list `list` on `stack` if it is this
    /// copy's walk again, as `walk_dwarf_with` would (the frame itself,
    /// then the return addresses); false, having given nothing, if not.
    fn replay(
        &mut self,
        list: u64,
        pc: u64,
        regs: &UnwindRegsNative,
        stack: &Stack,
        out: &mut Out<'_>,
    ) -> bool {
        let [sp, fp, ip] = replay::key(regs);
        let frame = FrameAddress::from_instruction_pointer(pc);
        if self.built == (0, 0)
            || self.list != list
            || (self.frame, self.start[0], self.start[2]) != (frame, sp, ip)
            || self.fp.is_some_and(|f| f != fp)
        {
            return false;
        }
        let (lo, end) = self.bounds;
        // SAFETY: the words were read by the walk copied, with
        // `Stack::read`, which reads only 8-aligned words, and `lo` and
        // `end` were taken over them (`Memo::flatten`).
        if unsafe { stack.holds(&self.words[..self.nwords], lo, end) } != Some(true) {
            return false;
        }
        if !out.push(pc) {
            // A walk through a slot gives the frame itself first, and
            // replays nothing when even that does not fit.
            return true;
        }
        let mut given = 0;
        for &ret in &self.rets[..self.nrets] {
            if !out.push(ret) {
                break;
            }
            given += 1;
        }
        // The steps replayed: one more than the return addresses given, as
        // a slot's replay counts the last.
        self.replayed += given as u64 + 1;
        self.walks += 1;
        if self.walks.is_multiple_of(THREAD_FLUSH_WALKS) {
            self.flush();
        }
        true
    }

    /// Adds the frames replayed from this copy since the last flush to
    /// the process-wide count (`Stats::unwind_frames_replayed`).
    fn flush(&mut self) {
        if self.replayed > 0 {
            // Relaxed: a statistic.
            THREAD_REPLAYED.fetch_add(self.replayed, Ordering::Relaxed);
            self.replayed = 0;
        }
    }
}

thread_local! {
    /// This thread's [`ThreadWalk`]: const-initialised and without a
    /// destructor, so usable for as long as the thread allocates.
    static THREAD_WALK: core::cell::UnsafeCell<ThreadWalk> =
        const { core::cell::UnsafeCell::new(ThreadWalk::EMPTY) };
}

/// Frames replayed from [`ThreadWalk`]s.
static THREAD_REPLAYED: AtomicU64 = AtomicU64::new(0);

/// Bytes of stack above the caller that [`warm_stack`] asks the caches for.
const WARM_BYTES: usize = 4096;

/// Starts loading the stack above the caller into the caches for the walk
/// a sample is about to make, so that the loads overlap the sample's other
/// work (deciding its weight, taking a cache slot) instead of following
/// it. The walk reads its frames' words one frame after the other; those
/// it replays were last read at the thread's last sample and, when the
/// program touched much memory since, are cold by then (a sample in
/// `alloc_overhead`'s window: 111 – 133 ns with this, 119 – 149 without,
/// in alternated runs of one code layout each; since walks that repeat are
/// replayed whole, 32 – 42 ns against 43 – 54, both ways alternated in
/// each of three processes).
///
/// Only the first [`WARM_BYTES`] above the caller, up to the thread's
/// stack top, once this thread's stack is known (after its first sample):
/// all of a shallow stack, the innermost frames of a deep one (whose outer
/// frames are not reached). Not when the crossing only looks at the
/// interval again (sampling off, see `sampler::armed`), but also on one
/// that then takes no sample (the thread already inside the sampler): 64
/// prefetches at most, once per crossing of the thread's countdown. A
/// prefetch neither faults nor changes what any read returns.
#[inline(always)]
pub(crate) fn warm_stack() {
    if !crate::sampler::armed() {
        return;
    }
    let Some((_, hi)) = crate::sampler::cached_stack_bounds() else {
        return;
    };
    let here = 0u8;
    let here = core::ptr::addr_of!(here) as usize;
    let end = hi.min(here.saturating_add(WARM_BYTES));
    let mut line = here & !63;
    while line < end {
        prefetch(line);
        line += 64;
    }
}

/// Asks for the cache line at `addr` to be loaded; never faults.
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: SSE, which `prefetcht0` needs, is part of x86_64; a prefetch
    // is a hint: it reads no memory the program can observe, writes none,
    // and does not fault on any address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    // SAFETY: `prfm` is a hint, as above.
    unsafe {
        core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) addr, options(nostack, preserves_flags, readonly));
    }
    #[cfg(miri)]
    let _ = addr;
}

/// Reads 8-byte words inside `[lo, hi)`; anything else (out of range,
/// misaligned) is an error, so a broken frame chain ends the walk instead
/// of reading wild memory.
#[derive(Clone, Copy)]
struct Stack {
    lo: usize,
    hi: usize,
}

impl Stack {
    /// # Safety
    ///
    /// `[lo, hi)` must be mapped and readable for as long as the reader is
    /// used: a stack above its pointer, whose code is the caller or is
    /// suspended (a signal handler's interrupted code).
    unsafe fn new(lo: usize, hi: usize) -> Stack {
        Stack { lo, hi }
    }

    /// The word at `addr`.
    #[inline(always)]
    fn read(&self, addr: u64) -> Result<u64, ()> {
        let a = addr as usize;
        if a < self.lo || self.hi.saturating_sub(a) < 8 || !a.is_multiple_of(8) {
            return Err(());
        }
        // SAFETY: the 8 bytes at `a` are 8-aligned and inside `[lo, hi)`,
        // readable while the reader is used (the contract of
        // `Stack::new`).
        Ok(unsafe { core::ptr::read_volatile(a as *const u64) })
    }

    /// Whether each word of `words` still holds its value; `None` if
    /// `[lo, end)`, which must cover them all (and may cover more, words a
    /// caller needs readable without comparing them), is not inside the
    /// stack, unless it is empty (`lo >= end`). One loop without a branch,
    /// so that reads of words gone cold overlap (see `replay::Flat`).
    ///
    /// # Safety
    ///
    /// Every address in `words` is 8-aligned and lies in `[lo, end - 8]`.
    unsafe fn holds(&self, words: &[(u64, u64)], lo: u64, end: u64) -> Option<bool> {
        if lo < end && ((lo as usize) < self.lo || end as usize > self.hi) {
            return None;
        }
        let mut differ = 0;
        for &(addr, value) in words {
            debug_assert!(addr >= lo && addr + 8 <= end && addr.is_multiple_of(8));
            // SAFETY: `addr` is 8-aligned and its 8 bytes are inside
            // `[lo, end)` (the caller's guarantee), so inside
            // `[self.lo, self.hi)` (checked above),
            // readable while the reader is used (`Stack::new`).
            differ |= unsafe { core::ptr::read_volatile(addr as *const u64) } ^ value;
        }
        Some(differ == 0)
    }
}

struct Out<'a> {
    buf: &'a mut [u64],
    skip: usize,
    n: usize,
    truncated: bool,
}

impl<'a> Out<'a> {
    /// An empty output into `buf` that drops the first `skip` frames.
    fn new(buf: &'a mut [u64], skip: usize) -> Out<'a> {
        Out {
            buf,
            skip,
            n: 0,
            truncated: false,
        }
    }

    /// Records one frame; false once the buffer is full.
    fn push(&mut self, addr: u64) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return true;
        }
        if self.n == self.buf.len() {
            self.truncated = true;
            return false;
        }
        self.buf[self.n] = addr;
        self.n += 1;
        true
    }
}

fn walk_frame_pointers(
    pc: u64,
    mut fp: u64,
    _lr: u64,
    read: impl Fn(u64) -> Result<u64, ()>,
    out: &mut Out<'_>,
) {
    if !out.push(pc) {
        return;
    }
    // Each frame record is [saved fp, return address] at fp (both arches).
    let mut last = 0;
    while fp > last {
        // `fp` may be anything (code without frame pointers uses the
        // register freely): no arithmetic on it may overflow.
        let Some(fp8) = fp.checked_add(8) else {
            return;
        };
        let (Ok(next), Ok(ret)) = (read(fp), read(fp8)) else {
            return;
        };
        if ret == 0 || !out.push(ret) {
            return;
        }
        last = fp;
        fp = next;
    }
}

/// The allocator's DWARF walk with a cache slot, which the thread then
/// keeps a copy of if it repeats whole (see [`ThreadWalk`]).
fn walk_dwarf(pc: u64, sp: u64, fp: u64, lr: u64, stack: &Stack, out: &mut Out<'_>) {
    with_cache(|caches, walking| {
        MODULES.with_pinned(walking, |modules| match modules {
            Some(modules) => {
                caches.hold_rules_of(modules.seq);
                walk_dwarf_with(modules, caches, pc, sp, fp, lr, stack, out);
                // A walk that ended outside every known module is not
                // copied: a replay from the copy would not raise the
                // suspicion that the list is stale, as the walk did.
                let walk = caches.memo.whole_walk();
                if let Some(walk) = walk.filter(|w| modules.covers(w.end.address_for_lookup())) {
                    // SAFETY: as in `capture`, whose walk this is.
                    THREAD_WALK.with(|w| unsafe { (*w.get()).remember(&walk) });
                }
            }
            None => {
                out.push(pc);
            }
        })
    });
}

/// The registers a DWARF walk from the frame at `pc` starts with: `pc`
/// itself on x86_64, the link register on aarch64 (where framehop takes
/// the return address from it), the stack and frame pointers.
fn start_regs(pc: u64, sp: u64, fp: u64, lr: u64) -> UnwindRegsNative {
    #[cfg(target_arch = "x86_64")]
    let regs = {
        let _ = lr;
        UnwindRegsNative::new(pc, sp, fp)
    };
    #[cfg(target_arch = "aarch64")]
    let regs = UnwindRegsNative::new(lr, sp, fp);
    regs
}

/// The DWARF walk proper, with a module list and caches in hand: no
/// allocation, no lock (shared with the signal-context walk).
#[allow(clippy::too_many_arguments)]
fn walk_dwarf_with(
    modules: &Modules,
    caches: &mut Banks,
    pc: u64,
    sp: u64,
    fp: u64,
    lr: u64,
    stack: &Stack,
    out: &mut Out<'_>,
) {
    let mut regs = start_regs(pc, sp, fp, lr);
    let mut frame = FrameAddress::from_instruction_pointer(pc);
    if !out.push(pc) {
        return;
    }
    let Banks { rules, memo, .. } = caches;
    memo.begin(modules.seq);
    let ended = loop {
        match memo.replay(frame, &mut regs, stack, |ret| out.push(ret)) {
            Replay::Ended(at) => {
                frame = at;
                break true;
            }
            Replay::Full => break false,
            Replay::Diverged(at) => frame = at,
            Replay::NoMatch => {}
        }
        let cache = rules.for_address(frame.address_for_lookup());
        let mut recorder = memo.recorder(stack, frame, &regs);
        let hits = cache.stats().hit_count;
        let ret = modules
            .unwinder
            .unwind_frame(frame, &mut regs, cache, &mut |a| recorder.read(a))
            .ok()
            .flatten();
        // Trials only with a rule the cache held: they then execute that
        // rule and nothing else. A frame framehop evaluates from DWARF each
        // time (it caches no rule for it) would be evaluated again, where a
        // failed read may be passed over rather than fail, and a trial that
        // failed would leave framehop's fallback rule in the cache for the
        // walks to come. A step unwound on a miss is remembered as using
        // the frame pointer; unwound again, on a hit, it is tried.
        let held = cache.stats().hit_count > hits;
        recorder.finish(ret, &regs, |tried, words| {
            if !held {
                return None;
            }
            let mut read = |a| replay::lookup(words, a);
            let found = modules
                .unwinder
                .unwind_frame(frame, tried, cache, &mut read);
            found.ok().flatten()
        });
        let Some(next) = ret.and_then(FrameAddress::from_return_address) else {
            break true;
        };
        if !out.push(next.address()) {
            break false;
        }
        frame = next;
    };
    memo.end();
    // The walk ended (not at the depth limit) in a frame no known module
    // covers: most likely a library loaded since the list was built, whose
    // frame framehop could only guess at. The next walk outside a signal
    // handler asks the loader.
    if ended && !modules.covers(frame.address_for_lookup()) {
        SUSPECT_STALE.store(true, Ordering::Relaxed);
    }
}

/// Entries of one framehop rule cache: direct-mapped, keyed by
/// `address % 509`.
const RULE_ENTRIES: usize = 509;

/// A pool slot's framehop caches, made two-way set-associative.
///
/// Two return addresses of one stack that share a framehop entry evict each
/// other at every sample, and each eviction re-parses `.eh_frame` (about a
/// microsecond). With `k` distinct addresses in hot stacks, a direct-mapped
/// cache of `n` entries has such a pair with probability about
/// `k² / 2n`: spreading addresses over 8 caches by `address / 509` (4 072
/// entries) still left a 46-frame benchmark stack with one such pair in
/// every build of a day (2.2–3.8 µs a sample instead of 0.8). So each
/// address may live in either of two banks ([`two_banks`]), and `tags`
/// records which address each entry was last filled for: a lookup uses the
/// bank whose tag matches, and a miss fills an empty entry of the two, else
/// one of them, alternately. The tags are only a hint (framehop checks
/// the address and the module list's generation itself), so a stale tag
/// costs a miss, never a wrong rule. The tags of one entry index in all
/// banks share a cache line, so a lookup reads one line of them (samples
/// are far apart, and the walk's lines are rarely still cached).
///
/// The caches hold the rules of one module list at a time
/// ([`Banks::hold_rules_of`]). A slot also remembers its last walk, to
/// replay its outer frames (see [`replay`]).
pub(crate) struct Banks {
    rules: Rules,
    memo: Box<Memo>,
    /// The [`Modules::seq`] of the list the caches hold rules of (0: none
    /// yet).
    list: u64,
}

/// The rule caches of [`Banks`] and their tags.
struct Rules {
    caches: [Cache; BANKS],
    /// `tags[e].0[b]`: the address entry `e` of bank `b` was last looked up
    /// for (0: none). [`RULE_ENTRIES`] long; on the heap, like framehop's
    /// entries, so that a `Banks` built on a busy thread's stack is small.
    tags: Box<[TagSet]>,
    /// Misses so far, to alternate the evicted bank.
    misses: u32,
}

/// One entry index's tags in every bank: one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TagSet([u64; BANKS]);

/// The two banks `address` may live in, always different: the first by
/// `address / 509` (as a plain spread would), the second offset from it
/// by 1 to 7 chosen from higher bits, so that two addresses that collide
/// in one rarely collide in the other.
fn two_banks(address: u64) -> (usize, usize) {
    let q = address / RULE_ENTRIES as u64;
    let first = (q % BANKS as u64) as usize;
    let step = 1 + ((q / BANKS as u64) % (BANKS as u64 - 1)) as usize;
    (first, (first + step) % BANKS)
}

impl Rules {
    /// The cache to unwind `address` with.
    fn for_address(&mut self, address: u64) -> &mut Cache {
        let bank = self.bank_for(address);
        &mut self.caches[bank]
    }

    /// Which bank [`Rules::for_address`] uses for `address`, updating the
    /// tags.
    fn bank_for(&mut self, address: u64) -> usize {
        let entry = (address % RULE_ENTRIES as u64) as usize;
        let (a, b) = two_banks(address);
        let tags = &mut self.tags[entry].0;
        if tags[a] == address {
            a
        } else if tags[b] == address {
            b
        } else {
            // A miss: an empty entry of the two, else either, alternately
            // (an address no longer used does not hold its entry forever).
            self.misses = self.misses.wrapping_add(1);
            let victim = if tags[a] == 0 {
                a
            } else if tags[b] == 0 || self.misses.is_multiple_of(2) {
                b
            } else {
                a
            };
            tags[victim] = address;
            victim
        }
    }
}

impl Banks {
    /// Makes the caches hold rules of the list numbered `list` only:
    /// if they hold another list's, they are emptied (which allocates:
    /// not for signal handlers).
    ///
    /// framehop keys its entries by a `u16` module generation that every
    /// module added to any list advances, so after 65 536 of them (a
    /// process that reloads plugins for weeks) an entry of an old list can
    /// match again and unwind a frame with the rule of code no longer
    /// there. Entries of another list never hit anyway (their generation
    /// differs), so emptying costs no hit.
    fn hold_rules_of(&mut self, list: u64) {
        if self.list == list {
            return;
        }
        if self.list != 0 {
            self.rules.caches = core::array::from_fn(|_| Cache::default());
            self.rules.tags.fill(TagSet([0; BANKS]));
        }
        self.list = list;
    }
}

/// This thread's own slot in a cache pool, where its walks start looking:
/// its rule cache stays warm and the slot's last walk is usually its own
/// (whose outer frames replay). Chosen once per thread; a thread-local read
/// after that, and async-signal-safe.
fn home_slot() -> usize {
    crate::sampler::cache_hint(|| NEXT_SLOT.fetch_add(1, Ordering::Relaxed) as u8) as usize
}

/// Runs `f` with unwinder caches from the pool and the slot's hazard
/// pointer, or with fresh caches and no slot if every pooled one is in use
/// (never waits).
fn with_cache(f: impl FnOnce(&mut Banks, Option<&Hazard<Modules>>)) {
    let start = home_slot();
    for k in 0..POOL {
        let slot = &CACHES[(start + k) % POOL];
        // Acquire: pairs with the Release store of `busy = false` below, so
        // the previous user's writes to the cache are visible.
        if slot
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let mut cache = slot.cache.load(Ordering::Relaxed);
        if cache.is_null() {
            cache = Box::into_raw(new_banks());
            slot.cache.store(cache, Ordering::Relaxed);
        }
        // SAFETY: `busy` gives this thread exclusive use of the cache until
        // it is cleared; the cache is never freed.
        let cache = unsafe { &mut *cache };
        f(cache, Some(&slot.walking));
        slot.publish(cache);
        // Release: see the Acquire above.
        slot.busy.store(false, Ordering::Release);
        return;
    }
    // Used for this walk only: nothing to remember it for.
    let mut cache = banks_with(Memo::forgetful);
    f(&mut cache, None);
    UNPOOLED_FRAMES.fetch_add(cache.memo.unwound, Ordering::Relaxed);
}

/// Frames the DWARF walks (the allocator's and the signal handler's)
/// replayed and unwound so far: `(replayed, unwound)`.
pub(crate) fn walked_frames() -> (u64, u64) {
    // Relaxed: see `CacheSlot::publish`.
    let count = |i: usize| -> u64 {
        let slots = CACHES.iter().chain(&signal::CACHES);
        slots.map(|s| s.frames[i].load(Ordering::Relaxed)).sum()
    };
    let thread = THREAD_REPLAYED.load(Ordering::Relaxed);
    (
        count(0) + thread,
        count(1) + UNPOOLED_FRAMES.load(Ordering::Relaxed),
    )
}

/// Empty caches for a pool slot, never on the stack: about 425 KB,
/// framehop's entries and the tags served as the profiler's own memory
/// (from the region, when the sampling allocator is the global one; see
/// `sampler::own_memory`), the remembered walks in mappings of their own
/// (see `replay::Room`).
fn new_banks() -> Box<Banks> {
    banks_with(Memo::new)
}

/// Bytes the slots' memories of their walks have mapped (see
/// `replay::Room`).
pub(crate) fn mapped_bytes() -> u64 {
    replay::mapped_bytes()
}

/// Empty caches with `memo()` for the slot's memory of its walks, all made
/// as the profiler's own memory (see `sampler::own_memory`).
fn banks_with(memo: fn() -> Box<Memo>) -> Box<Banks> {
    let _own = crate::sampler::own_memory();
    Box::new(Banks {
        rules: Rules {
            caches: core::array::from_fn(|_| Cache::default()),
            tags: vec![TagSet([0; BANKS]); RULE_ENTRIES].into_boxed_slice(),
            misses: 0,
        },
        memo: memo(),
        list: 0,
    })
}

/// Rebuilds the module list when there is none yet, or when a walk ended at
/// an address outside every known module and the loader's counters say
/// modules changed. Not checked on every sample: asking the loader takes
/// its lock, which every sampling thread would contend for; and a walk's
/// suspicion asks at most once per [`ASK_EVERY_NS`], since in a process
/// that runs JIT-compiled code (no module covers it) nearly every walk
/// ends outside the modules, and the answer is nearly always "no change".
/// Not for signal handlers (it takes the loader's lock and allocates).
fn rebuild_if_stale() {
    let suspect = MODULES.peek().is_null()
        || (SUSPECT_STALE.load(Ordering::Relaxed)
            && may_ask(&NEXT_ASK, coarse_now_ns())
            && SUSPECT_STALE.swap(false, Ordering::Relaxed));
    if suspect {
        rebuild_now();
    }
}

/// How often a walk that ended outside every module may ask the loader
/// whether modules changed: a library loaded since the last list is walked
/// into (framehop guessing at its frames) for at most this long.
const ASK_EVERY_NS: u64 = 100_000_000;

/// Times the loader was asked whether modules changed (`loader_generation`).
static LOADER_ASKS: AtomicU64 = AtomicU64::new(0);

/// Times the loader was asked whether modules changed, for `Stats`.
pub(crate) fn loader_asks() -> u64 {
    // Relaxed: a statistic, read on its own.
    LOADER_ASKS.load(Ordering::Relaxed)
}

/// The earliest [`coarse_now_ns`] at which a walk's suspicion may ask the
/// loader again.
static NEXT_ASK: AtomicU64 = AtomicU64::new(0);

/// Whether a walk's suspicion may ask the loader at `now`; if so, claims
/// the period, so that of the threads asking at once one does.
fn may_ask(next: &AtomicU64, now: u64) -> bool {
    // Relaxed: a rate limit; the CAS alone decides who asks.
    let due = next.load(Ordering::Relaxed);
    now >= due
        && next
            .compare_exchange(
                due,
                now.saturating_add(ASK_EVERY_NS),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: a read of the vDSO's clock
/// page, precise to the kernel's tick, which is all a rate limit needs.
fn coarse_now_ns() -> u64 {
    crate::sys::clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// Asks the loader and rebuilds the module list if its counters moved,
/// unless another thread is at it.
fn rebuild_now() {
    // Acquire: the rebuild flag is a try-lock; nobody waits on it.
    if REBUILDING
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let _ = with_loader(|| {
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        rebuild(&mut kept);
    });
    // Release: pairs with the Acquire CAS above.
    REBUILDING.store(false, Ordering::Release);
}

/// Builds and publishes a new list if the loader's counters moved, retires
/// the old one and frees what no walk can be using. Runs inside
/// `with_loader`, by the thread holding `REBUILDING`.
fn rebuild(kept: &mut Kept) {
    // First what walks have let go of since the last rebuild (when a walk,
    // not `prepare`, rebuilt, they may still have held the old list), so
    // that a rebuild with nothing new still frees it, and a full `KEPT`
    // makes room.
    reclaim(kept);
    let now = loader_generation();
    // SAFETY: only the `REBUILDING` holder replaces or frees lists, so the
    // current one stays allocated while we look at it.
    let current = unsafe { MODULES.peek().as_ref() };
    if current.is_some_and(|m| m.generation == now) || kept.retired.len() >= MAX_RETIRED {
        return;
    }
    let fresh = Box::new(load_modules(now, kept));
    let seq = fresh.seq;
    let old = MODULES.replace(Box::into_raw(fresh));
    // Relaxed: a thread that reads the older number for a while replays a
    // walk made with the list just replaced, as a walk that pinned it a
    // moment earlier would use it.
    CURRENT_LIST.store(seq, Ordering::Relaxed);
    if !old.is_null() {
        kept.retired.push(old as usize);
    }
    reclaim(kept);
}

/// Frees the replaced lists no walk holds, then, when none is left, the
/// copies the current list does not use. Never waits: what is still held
/// waits for the next rebuild.
fn reclaim(kept: &mut Kept) {
    MODULES.reclaim(
        &mut kept.retired,
        || {
            signal::CACHES
                .iter()
                .chain(&CACHES)
                .map(|slot| &slot.walking)
        },
        // SAFETY: a replaced list (never current again), created by
        // `Box::into_raw` in `rebuild`, that no walk holds; walks that
        // start from now on pin a newer one.
        |list| drop(unsafe { Box::from_raw(list) }),
    );
    if kept.retired.is_empty() {
        let mut freed = 0;
        kept.copies.retain(|c| {
            if !c.used {
                freed += c.hdr.len() + c.eh.len();
            }
            c.used
        });
        COPIED_BYTES.fetch_sub(freed, Ordering::Relaxed);
    }
    LISTS.store(
        kept.retired.len() + usize::from(!MODULES.peek().is_null()),
        Ordering::Relaxed,
    );
}

/// Publishes a fresh module list if the loader's counters moved since the
/// last one (from an ordinary thread: this takes the loader's lock). Not
/// rate-limited: it is asked for, not suspected.
fn refresh_modules() {
    rebuild_now();
}

/// Set when a walk ended at an address no known module covers.
static SUSPECT_STALE: AtomicBool = AtomicBool::new(false);

/// Threads currently inside `dl_iterate_phdr` on our behalf.
static IN_LOADER: AtomicUsize = AtomicUsize::new(0);
/// Set by the `fork` prepare handler while a fork is under way.
static FORKING: AtomicBool = AtomicBool::new(false);
/// Not a `std::sync::Once`: see [`AtforkOnce`].
static ATFORK: AtforkOnce = AtforkOnce::new();

/// Runs `f`, which calls into the loader, unless a `fork` is under way.
///
/// `dl_iterate_phdr` takes the loader's lock; a thread of the parent holding
/// it at the instant of `fork` would leave it locked forever in the child,
/// whose next sample would deadlock. The `fork` prepare handler therefore
/// raises `FORKING` and waits until no thread is inside; threads arriving
/// later back off. SeqCst on both sides (a Dekker handshake): either the
/// handler sees our increment, or we see its flag.
fn with_loader<R>(f: impl FnOnce() -> R) -> Option<R> {
    ATFORK.call_once(|| {
        // SAFETY: registering plain `extern "C"` handlers that only touch atomics.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_done), Some(fork_child)) };
    });
    IN_LOADER.fetch_add(1, Ordering::SeqCst);
    if FORKING.load(Ordering::SeqCst) {
        IN_LOADER.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let r = f();
    IN_LOADER.fetch_sub(1, Ordering::SeqCst);
    Some(r)
}

extern "C" fn fork_prepare() {
    FORKING.store(true, Ordering::SeqCst);
    while IN_LOADER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
}

extern "C" fn fork_done() {
    FORKING.store(false, Ordering::SeqCst);
}

extern "C" fn fork_child() {
    ATFORK.registered_in_child();
    // The child has one thread, and it is not inside the loader.
    IN_LOADER.store(0, Ordering::SeqCst);
    FORKING.store(false, Ordering::SeqCst);
    // Nor inside a rebuild of the module list: one under way on another
    // thread at the fork would otherwise keep the child from ever
    // rebuilding (its walks would then never see a library it loads).
    REBUILDING.store(false, Ordering::Release);
}

fn loader_generation() -> (u64, u64) {
    // Relaxed: a statistic.
    LOADER_ASKS.fetch_add(1, Ordering::Relaxed);
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info of `size` bytes; the adds
        // and subs fields exist when the size covers them (glibc >= 2.4).
        unsafe {
            let out = &mut *(data as *mut (u64, u64));
            let need = core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8;
            if size >= need {
                *out = ((*info).dlpi_adds, (*info).dlpi_subs);
            }
        }
        1
    }
    let mut generation = (0u64, 0u64);
    // SAFETY: the callback only writes through `data`, which points to
    // `generation` for the duration of the call.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut generation as *mut _ as *mut libc::c_void) };
    generation
}

/// What [`load_modules`] gathers from the loader's callbacks.
struct Gather<'a> {
    unwinder: Native,
    ranges: Vec<(u64, u64)>,
    /// Whether the loader has listed the main program yet (it comes first).
    main_seen: bool,
    copies: &'a mut Vec<Copied>,
}

/// Must be called inside `with_loader`, by the thread holding `REBUILDING`
/// (the only one to touch [`KEPT`], so never across a `fork`). Marks the
/// copies the new list uses.
fn load_modules(generation: (u64, u64), kept: &mut Kept) -> Modules {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info whose program headers and
        // mapped segments stay valid during the callback; `data` is the
        // `Gather` passed below.
        unsafe {
            let g = &mut *(data as *mut Gather<'_>);
            let main = !g.main_seen;
            g.main_seen = true;
            if let Some(module) = module_of(&*info, main, g.copies) {
                let r = module.avma_range();
                g.ranges.push((r.start, r.end));
                g.unwinder.add_module(module);
            }
        }
        0
    }
    for c in &mut kept.copies {
        c.used = false;
    }
    let mut g = Gather {
        unwinder: Native::new(),
        ranges: Vec::new(),
        main_seen: false,
        copies: &mut kept.copies,
    };
    // SAFETY: the callback writes only through `data`, our accumulator.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut g as *mut _ as *mut libc::c_void) };
    let Gather {
        unwinder,
        mut ranges,
        ..
    } = g;
    ranges.sort_unstable();
    Modules {
        unwinder,
        // Relaxed: a counter; only the list's number is needed from it.
        seq: NEXT_LIST.fetch_add(1, Ordering::Relaxed),
        generation,
        ranges,
    }
}

/// Unwind sections copied out of a library (see [`module_of`]).
struct Copied {
    /// The library's load address and where its sections were mapped.
    base: usize,
    hdr_at: usize,
    eh_at: usize,
    hdr: Box<[u8]>,
    eh: Box<[u8]>,
    /// The current module list uses it (set by [`load_modules`]).
    used: bool,
}

/// What the module lists own beyond the current one.
struct Kept {
    /// Every copy that a list in use may name, reused by later lists while
    /// the library stays where it was with the same bytes. Freed by
    /// [`reclaim`] once no list that names it can be in use.
    copies: Vec<Copied>,
    /// Replaced lists (addresses of `Box<Modules>`) that a walk may still
    /// be using.
    retired: Vec<usize>,
}

/// Touched only by the thread holding `REBUILDING`, so never contended; a
/// panic while it is held cannot leave it inconsistent (entries are only
/// pushed and removed whole).
static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(Kept {
    copies: Vec::new(),
    retired: Vec::new(),
});
/// Module lists allocated: the current one and the replaced ones in [`KEPT`].
static LISTS: AtomicUsize = AtomicUsize::new(0);
/// Bytes of the copies in [`KEPT`].
static COPIED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Times a library was left out of a module list because copying it would
/// have passed [`MAX_COPIED_BYTES`] (walks stop at its frames).
static UNCOPIED: AtomicUsize = AtomicUsize::new(0);
/// Bound on [`COPIED_BYTES`]: a process that loads and unloads libraries
/// forever must not grow forever.
const MAX_COPIED_BYTES: usize = 64 << 20;

/// What the unwinder holds, for `Stats`: bytes of unwind tables copied out
/// of libraries, how many times a library was left out of a module list
/// because the bound was reached, and the module lists allocated.
pub(crate) fn kept() -> (usize, usize, usize) {
    // Relaxed here and where they change: statistics, read on their own.
    // The copies themselves reach walkers inside a module list, published
    // and pinned through `MODULES` (see `hazard`).
    (
        COPIED_BYTES.load(Ordering::Relaxed),
        UNCOPIED.load(Ordering::Relaxed),
        LISTS.load(Ordering::Relaxed),
    )
}

/// Copies of a library's `.eh_frame_hdr` and `.eh_frame`, made now or
/// reused, marked used by the list being built.
fn copy_of(
    copies: &mut Vec<Copied>,
    base: usize,
    (hdr_at, hdr): (usize, &[u8]),
    (eh_at, eh): (usize, &[u8]),
) -> Option<(Mapped, Mapped)> {
    let same = |c: &&mut Copied| {
        (c.base, c.hdr_at, c.eh_at) == (base, hdr_at, eh_at) && *c.hdr == *hdr && *c.eh == *eh
    };
    if let Some(c) = copies.iter_mut().find(same) {
        c.used = true;
        return Some((Mapped::new(&c.hdr), Mapped::new(&c.eh)));
    }
    let bytes = hdr.len() + eh.len();
    if COPIED_BYTES.load(Ordering::Relaxed) + bytes > MAX_COPIED_BYTES {
        UNCOPIED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let c = Copied {
        base,
        hdr_at,
        eh_at,
        hdr: hdr.into(),
        eh: eh.into(),
        used: true,
    };
    // The boxes' bytes do not move when `copies` grows.
    let mapped = (Mapped::new(&c.hdr), Mapped::new(&c.eh));
    COPIED_BYTES.fetch_add(bytes, Ordering::Relaxed);
    copies.push(c);
    Some(mapped)
}

/// framehop's view of one loaded object, or `None` without unwind tables.
///
/// A library can be unloaded (`dlclose`) while a module list that names it
/// is still in use: lists are only rebuilt when a walk or [`signal::prepare`]
/// notices the loader's counters moved, and a signal handler can never
/// rebuild one. Reading its sections where they were mapped would then
/// fault, or read whatever was mapped there since. So only the main
/// program's sections (`main`: the first object the loader lists, never
/// unloaded) are used in place; every other object's `.eh_frame_hdr` and
/// `.eh_frame` are copied, once, while the loader guarantees they are
/// mapped. A stale entry then at worst unwinds a frame wrongly (the walk
/// stops or records a wrong caller), never touches unmapped memory. The
/// copies are small (glibc's are ~190 KB; a typical Rust service's shared
/// libraries ~250 KB in all), counted in `Stats::unwind_copies`, bounded
/// by [`MAX_COPIED_BYTES`], and freed with the last list that names them
/// ([`reclaim`]). Code bytes are not given to framehop: it reads
/// them only for Mach-O and PE.
///
/// # Safety
///
/// `info` must come from `dl_iterate_phdr`, inside its callback.
unsafe fn module_of(
    info: &libc::dl_phdr_info,
    main: bool,
    copies: &mut Vec<Copied>,
) -> Option<Module<Mapped>> {
    let base = info.dlpi_addr as usize;
    // SAFETY: the loader guarantees `dlpi_phnum` headers at `dlpi_phdr`.
    let phdrs = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let loads = || phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD);
    let hdr = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME)?;
    let hdr_svma = hdr.p_vaddr as usize..(hdr.p_vaddr + hdr.p_memsz) as usize;
    let segment_end = |svma: usize| {
        loads()
            .find(|p| (p.p_vaddr as usize..(p.p_vaddr + p.p_memsz) as usize).contains(&svma))
            .map(|p| (p.p_vaddr + p.p_memsz) as usize)
    };
    let mut text: Option<(usize, usize)> = None;
    for p in loads().filter(|p| p.p_flags & libc::PF_X != 0) {
        let (s, e) = (p.p_vaddr as usize, (p.p_vaddr + p.p_memsz) as usize);
        text = Some(text.map_or((s, e), |(ts, te)| (ts.min(s), te.max(e))));
    }
    let (text_lo, text_hi) = text?;
    // SAFETY: the header segment is mapped while the loader's callback runs
    // (and, for the main program, for the life of the process).
    let hdr_bytes: &'static [u8] = unsafe {
        core::slice::from_raw_parts((base + hdr_svma.start) as *const u8, hdr_svma.len())
    };
    let eh_frame = eh_frame_address(hdr_bytes, base + hdr_svma.start)? - base;
    let eh_seg_end = segment_end(eh_frame)?;
    // SAFETY: `.eh_frame` lies in a loaded segment that ends at
    // `eh_seg_end`, mapped as above.
    let eh_seg: &'static [u8] = unsafe {
        core::slice::from_raw_parts((base + eh_frame) as *const u8, eh_seg_end - eh_frame)
    };
    let eh_bytes = &eh_seg[..eh_frame_len(eh_seg)];
    let (hdr_bytes, eh_bytes) = if main {
        (Mapped::new(hdr_bytes), Mapped::new(eh_bytes))
    } else {
        copy_of(
            copies,
            base,
            (hdr_svma.start, hdr_bytes),
            (eh_frame, eh_bytes),
        )?
    };
    let eh_end = eh_frame + eh_bytes.len();
    let info_sections = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: Some(text_lo as u64..text_hi as u64),
        text: None,
        eh_frame_svma: Some(eh_frame as u64..eh_end as u64),
        eh_frame: Some(eh_bytes),
        eh_frame_hdr_svma: Some(hdr_svma.start as u64..hdr_svma.end as u64),
        eh_frame_hdr: Some(hdr_bytes),
        ..Default::default()
    };
    // SAFETY: `dlpi_name` is a NUL-terminated string or null.
    let name = unsafe { info.dlpi_name.as_ref() }
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(Module::new(
        name,
        (base + text_lo) as u64..(base + text_hi) as u64,
        base as u64,
        info_sections,
    ))
}

/// The length of the `.eh_frame` that starts `seg` (which runs to the end
/// of its segment): its CIEs and FDEs up to and including the zero
/// terminator, or all of `seg` when an entry's length runs past it or
/// there is no terminator.
fn eh_frame_len(seg: &[u8]) -> usize {
    let word = |at: usize| {
        seg.get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    };
    let mut pos = 0;
    while let Some(len) = word(pos) {
        let next = match len {
            0 => return pos + 4,
            // 64-bit DWARF: the length follows as 8 bytes.
            0xffff_ffff => seg
                .get(pos + 4..pos + 12)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
                .and_then(|l| usize::try_from(l).ok())
                .and_then(|l| (pos + 12).checked_add(l)),
            l => (pos + 4).checked_add(l as usize),
        };
        match next {
            Some(next) if next <= seg.len() => pos = next,
            _ => return seg.len(),
        }
    }
    seg.len()
}

/// Decodes `eh_frame_ptr` from an `.eh_frame_hdr` mapped at `at`.
fn eh_frame_address(hdr: &[u8], at: usize) -> Option<usize> {
    if hdr.len() < 8 || hdr[0] != 1 {
        return None;
    }
    let enc = hdr[1];
    let field = at + 4;
    let value: i64 = match enc & 0x0F {
        0x03 => u32::from_ne_bytes(hdr[4..8].try_into().ok()?) as i64,
        0x0B => i32::from_ne_bytes(hdr[4..8].try_into().ok()?) as i64,
        0x00 | 0x04 | 0x0C => i64::from_ne_bytes(hdr.get(4..12)?.try_into().ok()?),
        _ => return None,
    };
    match enc & 0x70 {
        0x00 => Some(value as usize),
        0x10 => Some((field as i64).wrapping_add(value) as usize),
        0x30 => Some((at as i64).wrapping_add(value) as usize),
        _ => None,
    }
}

/// The range `[sp, top)` of the stack `sp` is on: this thread's stack, or
/// the alternate signal stack when a handler runs on one. `None` when `sp`
/// is on neither (then nothing above `sp` is known to be mapped).
fn readable_stack(sp: usize) -> Option<(usize, usize)> {
    if let Some((lo, hi)) = crate::sampler::stack_bounds() {
        if (lo..hi).contains(&sp) {
            return Some((sp, hi));
        }
    }
    on_alt_stack(sp)
}

/// `[sp, top)` of the alternate signal stack, when a handler runs on it and
/// `sp` is inside. Async-signal-safe (`sigaltstack` is a plain syscall).
fn on_alt_stack(sp: usize) -> Option<(usize, usize)> {
    // SAFETY: sigaltstack with a null new stack only reads the current one
    // into a valid out-pointer.
    let alt = unsafe {
        let mut ss: libc::stack_t = core::mem::zeroed();
        (libc::sigaltstack(core::ptr::null(), &mut ss) == 0).then_some(ss)
    }?;
    let (lo, hi) = (alt.ss_sp as usize, alt.ss_sp as usize + alt.ss_size);
    (alt.ss_flags & libc::SS_ONSTACK != 0 && (lo..hi).contains(&sp)).then_some((sp, hi))
}

/// This thread's stack as `(lowest, highest)` address.
pub(crate) fn thread_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: `attr` is initialised by pthread_getattr_np before use and
    // destroyed after; the out-pointers are valid.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses that share framehop's entry and the first bank: they
    /// differ by a multiple of `509 × 8`.
    const CLASH: u64 = (RULE_ENTRIES * BANKS) as u64;

    /// Walks the stack from here with `modules` and `banks` as an
    /// allocator's walk does, every frame through framehop (the last walk
    /// is forgotten, so nothing is replayed); returns the lookups'
    /// statistics so far.
    #[inline(never)]
    fn walk_here(modules: &Modules, banks: &mut Banks) -> (usize, framehop::CacheStats) {
        banks.memo = Memo::new();
        let frames = walk_remembering(modules, banks).len();
        let mut total = framehop::CacheStats::new();
        for c in &banks.rules.caches {
            let s = c.stats();
            total.hit_count += s.hit_count;
            total.miss_empty_slot_count += s.miss_empty_slot_count;
            total.miss_wrong_modules_count += s.miss_wrong_modules_count;
            total.miss_wrong_address_count += s.miss_wrong_address_count;
        }
        (frames, total)
    }

    #[test]
    fn caches_hold_the_rules_of_one_list_at_a_time() {
        // Two lists of the same modules, as after a loader change; the
        // copies they name live in `kept` until the end of the test.
        let mut kept = Kept {
            copies: Vec::new(),
            retired: Vec::new(),
        };
        let old = load_modules(loader_generation(), &mut kept);
        let new = load_modules(loader_generation(), &mut kept);
        assert!(new.seq > old.seq);
        let mut banks = new_banks();
        // One call site, so that the three walks see the same stack.
        let walks: Vec<_> = [&old, &old, &new]
            .into_iter()
            .map(|modules| walk_here(modules, &mut banks))
            .collect();
        let [(frames, first), (again, warm), (walked, after)] = walks[..] else {
            unreachable!()
        };
        assert!(frames > 3, "a real stack: {frames} frames");
        // Every frame's rule missed (the hits are the trials that follow
        // each unwound step, one with its frame pointer changed and at most
        // one per word it read, three: see `replay::Recorder::finish`).
        assert!(first.misses() as usize + 1 >= frames, "{first:?}");
        assert!(first.hits() <= 4 * first.misses(), "{first:?}");
        // The same list again: every rule is found.
        assert_eq!(again, frames);
        assert_eq!(warm.misses(), first.misses(), "{warm:?}");
        assert!(warm.hits() >= frames as u64 - 1, "{warm:?}");
        // Another list: its walk finds the caches empty, not filled with
        // rules of the old list under an old generation (which framehop
        // would take for the new one's once its u16 generation wraps).
        assert_eq!(walked, frames);
        let fresh = |s: framehop::CacheStats| (s.hit_count, s.miss_wrong_modules_count);
        assert_eq!(fresh(after), (first.hits(), 0), "{after:?}");
        assert_eq!(after.misses(), first.misses(), "{after:?}");
        assert_eq!(banks.list, new.seq);
        // The copies were counted as the process's (`Stats::unwind_copies`);
        // they go with `kept`.
        drop((old, new));
        let bytes: usize = kept.copies.iter().map(|c| c.hdr.len() + c.eh.len()).sum();
        COPIED_BYTES.fetch_sub(bytes, Ordering::Relaxed);
    }

    #[test]
    fn an_address_has_two_different_banks() {
        for address in (0x40_0000u64..).step_by(97).take(100_000) {
            let (a, b) = two_banks(address);
            assert!(a < BANKS && b < BANKS && a != b, "{address:#x}: {a}, {b}");
        }
    }

    #[test]
    fn three_addresses_that_clash_in_one_bank_all_stay_cached() {
        let mut banks = new_banks();
        let base = 0x5555_5555_1234u64;
        let clashing = [base, base + CLASH, base + 2 * CLASH];
        let (first, _) = two_banks(base);
        assert!(clashing.iter().all(|&x| two_banks(x).0 == first));
        let placed: Vec<usize> = clashing.iter().map(|&x| banks.rules.bank_for(x)).collect();
        let mut distinct = placed.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "each in its own bank: {placed:?}");
        // Every later lookup finds each where it was put: no evictions.
        let misses = banks.rules.misses;
        for _ in 0..100 {
            for (&x, &bank) in clashing.iter().zip(&placed) {
                assert_eq!(banks.rules.bank_for(x), bank);
            }
        }
        assert_eq!(
            banks.rules.misses, misses,
            "no miss after the first lookups"
        );
    }

    #[test]
    fn an_address_no_longer_used_does_not_hold_its_entry() {
        let mut banks = new_banks();
        let base = 0x7f00_0000_0040u64;
        // Two addresses that share both banks fill them; a third one that
        // shares both too must eventually get one of them and keep it while
        // only it and one of the first two are used.
        let same_pair = |x: u64| two_banks(x) == two_banks(base);
        let mut sharing = (1..)
            .map(|m| base + m * CLASH * 7)
            .filter(|&x| same_pair(x));
        let (old, kept) = (base, sharing.next().unwrap());
        let new = sharing.next().unwrap();
        banks.rules.bank_for(old);
        banks.rules.bank_for(kept);
        for _ in 0..10 {
            banks.rules.bank_for(kept);
            banks.rules.bank_for(new);
        }
        let misses = banks.rules.misses;
        for _ in 0..10 {
            banks.rules.bank_for(kept);
            banks.rules.bank_for(new);
        }
        assert_eq!(banks.rules.misses, misses, "`new` and `kept` settled");
    }

    /// Walks the stack from here with `banks`, whose memory of earlier
    /// walks is kept (so the walk may replay), as an allocator's walk does.
    #[inline(never)]
    fn walk_remembering(modules: &Modules, banks: &mut Banks) -> Vec<u64> {
        let (pc, sp, fp, lr) = registers();
        let (lo, hi) = readable_stack(sp as usize).expect("this thread's stack");
        // SAFETY: this thread's stack above its pointer, while this runs.
        let stack = unsafe { Stack::new(lo, hi) };
        let mut buf = [0u64; crate::MAX_FRAMES_LIMIT];
        let mut out = Out::new(&mut buf, 0);
        banks.hold_rules_of(modules.seq);
        walk_dwarf_with(modules, banks, pc, sp, fp, lr, &stack, &mut out);
        let n = out.n;
        buf[..n].to_vec()
    }

    /// The stack from one call site, walked with `kept` (remembering) and
    /// with `fresh` (its memory forgotten first, so every frame is
    /// unwound): `(remembered, unwound)`.
    #[inline(never)]
    fn both_walks(modules: &Modules, kept: &mut Banks, fresh: &mut Banks) -> (Vec<u64>, Vec<u64>) {
        let mut walks = Vec::with_capacity(2);
        // One call site for both, so both see the same stack: a loop of a
        // length the compiler cannot see, so it is not unrolled.
        let order: &[bool] = core::hint::black_box(&[false, true]);
        for &forget in order {
            let banks = if forget {
                fresh.memo = Memo::new();
                &mut *fresh
            } else {
                &mut *kept
            };
            walks.push(walk_remembering(modules, banks));
        }
        let unwound = walks.pop().unwrap();
        (walks.pop().unwrap(), unwound)
    }

    /// Runs `f` at the end of a chain of calls through three functions
    /// with frames of different sizes, chosen by `path`.
    #[inline(never)]
    fn hop(path: &[u8], f: &mut dyn FnMut()) {
        match path.split_first() {
            None => f(),
            Some((0, rest)) => hop_small(rest, f),
            Some((1, rest)) => hop_medium(rest, f),
            Some((_, rest)) => hop_large(rest, f),
        }
    }

    macro_rules! hop_with_frame {
        ($name:ident, $words:expr, $salt:expr) => {
            #[inline(never)]
            fn $name(path: &[u8], f: &mut dyn FnMut()) {
                let local = core::hint::black_box([path.len() as u64 ^ $salt; $words]);
                hop(path, f);
                // Used after the call: no tail call, and the frame stays.
                core::hint::black_box(&local);
            }
        };
    }
    hop_with_frame!(hop_small, 1, 0);
    hop_with_frame!(hop_medium, 5, 0);
    hop_with_frame!(hop_large, 19, 0);
    // Two functions alike in all but a constant (so that they are not
    // merged into one) and their address.
    hop_with_frame!(twin_a, 3, 1);
    hop_with_frame!(twin_b, 3, 2);

    fn with_current_modules<R>(f: impl FnOnce(&Modules) -> R) -> R {
        refresh_modules();
        MODULES
            .with_pinned(None, |modules| modules.map(f))
            .expect("a module list")
    }

    #[test]
    fn a_walks_suspicion_asks_the_loader_at_most_once_a_period() {
        let t0 = 5 * ASK_EVERY_NS;
        let next = AtomicU64::new(0);
        assert!(may_ask(&next, t0));
        assert!(!may_ask(&next, t0), "asked already at this instant");
        assert!(!may_ask(&next, t0 + ASK_EVERY_NS - 1));
        assert!(may_ask(&next, t0 + ASK_EVERY_NS));
        // Threads suspecting at once: one of them asks.
        let next = AtomicU64::new(0);
        let asked: u32 = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4).map(|_| s.spawn(|| may_ask(&next, t0))).collect();
            threads.into_iter().map(|t| t.join().unwrap() as u32).sum()
        });
        assert_eq!(asked, 1);
        // Wired in: while the period runs, a suspicion is kept, not
        // consumed, so the first sample after it asks.
        refresh_modules();
        NEXT_ASK.store(u64::MAX, Ordering::Relaxed);
        SUSPECT_STALE.store(true, Ordering::Relaxed);
        rebuild_if_stale();
        let kept = SUSPECT_STALE.load(Ordering::Relaxed);
        NEXT_ASK.store(0, Ordering::Relaxed);
        assert!(kept, "a suspicion consumed within the period");
    }

    #[test]
    fn replayed_walks_equal_unwound_ones_on_random_paths() {
        with_current_modules(|modules| {
            let (mut kept, mut fresh) = (new_banks(), new_banks());
            // A fixed seed: the same paths every run.
            let mut rng = crate::testing::Rng(0x9E37_79B9_7F4A_7C15);
            let mut next = move || rng.next();
            let mut differ = 0;
            for round in 0..400 {
                // Short paths vary at every depth; long ones reach past the
                // depth limit (then the walks stop at the same place).
                let depth = (next() % if round % 8 == 0 { 150 } else { 24 }) as usize;
                let path: Vec<u8> = (0..depth).map(|_| (next() % 3) as u8).collect();
                // One round in four walks its path three times: the second
                // walk repeats the first (its checks are flattened), the
                // third replays on flat checks.
                for _ in 0..if round % 4 == 0 { 3 } else { 1 } {
                    let mut walks = None;
                    hop(&path, &mut || {
                        walks = Some(both_walks(modules, &mut kept, &mut fresh))
                    });
                    let (remembered, unwound) = walks.unwrap();
                    assert!(
                        unwound.len() > path.len().min(100),
                        "{} frames",
                        unwound.len()
                    );
                    assert_eq!(remembered, unwound, "path {path:?}");
                    differ += (remembered.len() != unwound.len()) as usize;
                }
            }
            assert_eq!(differ, 0);
            // Not vacuous: many frames were replayed, and many unwound (each
            // path differs from the last at some depth).
            let memo = &kept.memo;
            assert!(
                memo.replayed > 2_000,
                "{} replayed, {} unwound",
                memo.replayed,
                memo.unwound
            );
            assert!(memo.unwound > 4_000, "{} unwound", memo.unwound);
            assert!(memo.trusted > 1_000, "{} on flat checks", memo.trusted);
        });
    }

    /// A walk from here as `capture` makes it (this thread's copy of its
    /// last whole walk, else a pool slot, which the copy then follows),
    /// or, with `fresh`, unwound with those caches after forgetting their
    /// last walk: `(frames, whether the copy gave them)`. With `other_list`
    /// the copy is offered another module list than the current one.
    #[inline(never)]
    fn capture_or_unwind(
        modules: &Modules,
        fresh: Option<&mut Banks>,
        other_list: bool,
    ) -> (Vec<u64>, bool) {
        let (pc, sp, fp, lr) = registers();
        let (lo, hi) = readable_stack(sp as usize).expect("this thread's stack");
        // SAFETY: this thread's stack above its pointer, while this runs.
        let stack = unsafe { Stack::new(lo, hi) };
        let mut buf = [0u64; crate::MAX_FRAMES_LIMIT];
        let mut out = Out::new(&mut buf, 0);
        let copied = match fresh {
            None => {
                let list = CURRENT_LIST.load(Ordering::Relaxed) + other_list as u64;
                walk_dwarf_or_copy(list, pc, sp, fp, lr, &stack, &mut out)
            }
            Some(banks) => {
                banks.memo = Memo::new();
                banks.hold_rules_of(modules.seq);
                walk_dwarf_with(modules, banks, pc, sp, fp, lr, &stack, &mut out);
                false
            }
        };
        let n = out.n;
        (buf[..n].to_vec(), copied)
    }

    #[test]
    fn a_threads_copy_of_its_whole_walk_gives_what_unwinding_does() {
        with_current_modules(|modules| {
            let mut fresh = new_banks();
            let mut rng = crate::testing::Rng(0x5EED_7A1C_0FFE_E001);
            let mut next = move || rng.next();
            let (mut copied, mut walks, mut refused) = (0, 0, 0);
            for round in 0..300 {
                let depth = (next() % if round % 8 == 0 { 40 } else { 16 }) as usize;
                let path: Vec<u8> = (0..depth).map(|_| (next() % 3) as u8).collect();
                // Each path five times: unwound, replayed step by step,
                // then whole (and copied), then from the copy; the last
                // time with another module list, which the copy refuses.
                for time in 0..5 {
                    let mut got = Vec::with_capacity(2);
                    hop(&path, &mut || {
                        // One call site for both walks (see `both_walks`).
                        let order: &[bool] = core::hint::black_box(&[false, true]);
                        for &unwind in order {
                            let banks = if unwind { Some(&mut *fresh) } else { None };
                            got.push(capture_or_unwind(modules, banks, time == 4));
                        }
                    });
                    let ((captured, from_copy), (unwound, _)) = (&got[0], &got[1]);
                    assert_eq!(captured, unwound, "path {path:?}");
                    if time == 4 {
                        assert!(!from_copy, "a copy used with another module list");
                        refused += 1;
                    }
                    copied += *from_copy as usize;
                    walks += 1;
                }
            }
            // Not vacuous: most paths' fourth walks came from the copy (the
            // deepest are too deep to be copied).
            assert!(
                copied > refused / 2,
                "{copied} of {walks} walks from the copy"
            );
        });
    }

    #[test]
    fn a_caller_at_the_same_depth_but_another_address_is_unwound() {
        with_current_modules(|modules| {
            let (mut kept, mut fresh) = (new_banks(), new_banks());
            let mut walks = Vec::new();
            type Hop = fn(&[u8], &mut dyn FnMut());
            // One call site for all three (a loop of a length the compiler
            // cannot see is not unrolled).
            let twins: &[Hop] = core::hint::black_box(&[twin_a, twin_b, twin_a]);
            for twin in twins {
                let replayed = kept.memo.replayed;
                let mut both = None;
                twin(&[], &mut || {
                    both = Some(both_walks(modules, &mut kept, &mut fresh))
                });
                let (remembered, unwound) = both.unwrap();
                assert_eq!(remembered, unwound);
                walks.push((remembered, kept.memo.replayed - replayed));
            }
            let [(a, _), (b, replayed_b), (again, replayed_again)] = &walks[..] else {
                unreachable!()
            };
            // The twins' frames are alike (size, saved registers): only the
            // return address into each tells them apart, and it does.
            assert_eq!(a.len(), b.len());
            let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            assert_eq!(differ.len(), 1, "{a:x?}\n{b:x?}");
            assert_eq!(a, again);
            // After the twin's frame, the walk joins the remembered one
            // again: the frames above are replayed.
            let above = a.len() - differ[0];
            assert!(*replayed_b as usize >= above - 1, "{replayed_b} of {above}");
            assert!(*replayed_again as usize >= above - 1);
        });
    }
}
