//! Stack walks from a signal handler (the CPU profiler's SIGPROF).
//!
//! The allocator's walk may take the loader's lock (to rebuild the module
//! list) and allocate (a fresh unwinder cache when the pool is busy): both
//! are fine inside `malloc`, and both can deadlock or corrupt the heap
//! inside a signal handler, which may have interrupted the loader or the
//! allocator themselves. This walk does neither:
//!
//! - **Modules** are the list the allocator's walk or [`prepare`] last
//!   published; the handler only pins it in its cache slot (a hazard
//!   pointer: a replaced list is freed by the thread that replaced it, once
//!   no slot names it).
//!   [`prepare`], called from an ordinary thread (the profiler's, every
//!   period), rebuilds it when the loader's counters moved.
//! - **Unwinder caches** come from a pool of their own, allocated by
//!   [`prepare`] before any timer is armed, taken with a try-lock. A handler
//!   that finds none free records the interrupted instruction alone
//!   ([`SignalCapture::walked`] is false).
//! - **Memory reads** stay inside `[sp, top)` of the stack the thread was
//!   interrupted on. Its bounds come from the thread's cache (shared with
//!   the allocator's walk), the alternate signal stack, or, the first time,
//!   the line of `/proc/self/maps` that contains `sp`, read with `open` and
//!   `read` into a buffer on the stack (both async-signal-safe) and cached
//!   in the thread's state.
//!
//! Everything here is async-signal-safe: atomics, a const thread local
//! without destructor, and the `open`/`read`/`close`/`sigaltstack`
//! syscalls.

use core::sync::atomic::{AtomicU64, Ordering};

use super::{
    home_slot, on_alt_stack, walk_dwarf_with, walk_frame_pointers, CacheSlot, Out, Stack,
    FREE_SLOT, MODULES, POOL,
};
use crate::unwind::UnwindMode;

/// The registers a walk starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// The interrupted instruction.
    pub pc: u64,
    /// The stack pointer.
    pub sp: u64,
    /// The frame pointer (`rbp` / `x29`).
    pub fp: u64,
    /// The link register (`x30`; 0 on x86_64).
    pub lr: u64,
}

impl Registers {
    /// The registers saved in a signal handler's `ucontext_t`.
    ///
    /// # Safety
    ///
    /// `context` is the third argument of an `SA_SIGINFO` handler (a valid
    /// `ucontext_t`) or null.
    pub unsafe fn from_ucontext(context: *const libc::c_void) -> Option<Registers> {
        // SAFETY: per the contract, a valid ucontext_t or null.
        let uc = unsafe { context.cast::<libc::ucontext_t>().as_ref() }?;
        #[cfg(target_arch = "x86_64")]
        let regs = {
            let g = &uc.uc_mcontext.gregs;
            Registers {
                pc: g[libc::REG_RIP as usize] as u64,
                sp: g[libc::REG_RSP as usize] as u64,
                fp: g[libc::REG_RBP as usize] as u64,
                lr: 0,
            }
        };
        #[cfg(target_arch = "aarch64")]
        let regs = Registers {
            pc: uc.uc_mcontext.pc,
            sp: uc.uc_mcontext.sp,
            fp: uc.uc_mcontext.regs[29],
            lr: uc.uc_mcontext.regs[30],
        };
        Some(regs)
    }
}

/// What [`capture`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalCapture {
    /// Frames written, innermost first: the interrupted instruction, then
    /// return addresses.
    pub frames: usize,
    /// The stack was deeper than the buffer.
    pub truncated: bool,
    /// The stack was walked. False when only the interrupted instruction
    /// could be recorded: stack bounds unknown, no module list or no free
    /// unwinder cache (see [`signal_stats`]).
    pub walked: bool,
}

/// The signal pool: slots like the allocator's, never lazily filled here.
pub(super) static CACHES: [CacheSlot; POOL] = [FREE_SLOT; POOL];

static NO_BOUNDS: AtomicU64 = AtomicU64::new(0);
static NO_CACHE: AtomicU64 = AtomicU64::new(0);
static NO_MODULES: AtomicU64 = AtomicU64::new(0);
static MAPS_SCANS: AtomicU64 = AtomicU64::new(0);

/// Why signal-context walks fell short, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// The stack pointer was on no stack whose bounds could be found.
    pub no_bounds: u64,
    /// Every unwinder cache of the signal pool was in use.
    pub no_cache: u64,
    /// No module list had been published yet, or it was being replaced at
    /// every try (DWARF mode).
    pub no_modules: u64,
    /// Reads of `/proc/self/maps` to learn a thread's stack bounds.
    pub maps_scans: u64,
}

/// The counters.
pub fn signal_stats() -> SignalStats {
    SignalStats {
        no_bounds: NO_BOUNDS.load(Ordering::Relaxed),
        no_cache: NO_CACHE.load(Ordering::Relaxed),
        no_modules: NO_MODULES.load(Ordering::Relaxed),
        maps_scans: MAPS_SCANS.load(Ordering::Relaxed),
    }
}

/// Makes signal-context walks possible and current: publishes a fresh
/// module list if modules were loaded or unloaded since the last one, and
/// allocates the signal pool's unwinder caches. Call it from an ordinary
/// thread before arming timers, and then periodically (not from a handler).
pub fn prepare() {
    super::refresh_modules();
    for slot in &CACHES {
        // Acquire: pairs with the Release below and in `capture`, so the
        // cache's previous user is done with it.
        if slot
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            let mut cache = slot.cache.load(Ordering::Relaxed);
            if cache.is_null() {
                cache = Box::into_raw(super::new_banks());
                slot.cache.store(cache, Ordering::Relaxed);
            }
            // A handler cannot empty caches (that allocates), so it is done
            // here for the list just published: a handler's walk then finds
            // rules of an older list only if a list was built since this
            // call, which matters only after 65 536 framehop generations
            // (see `Banks::hold_rules_of`).
            MODULES.with_pinned(Some(&slot.walking), |modules| {
                if let Some(modules) = modules {
                    // SAFETY: `busy` gives this thread exclusive use of the
                    // cache; it is never freed.
                    unsafe { &mut *cache }.hold_rules_of(modules.seq);
                }
            });
            // Release: publishes the cache to the next Acquire of `busy`.
            slot.busy.store(false, Ordering::Release);
        }
    }
}

/// Walks the interrupted stack described by `regs` into `buf`.
/// Async-signal-safe; see the module docs.
pub fn capture(regs: &Registers, buf: &mut [u64]) -> SignalCapture {
    let mut out = Out::new(buf, 0);
    let bounds = stack_bounds(regs.sp as usize);
    let walked = match bounds {
        None => {
            NO_BOUNDS.fetch_add(1, Ordering::Relaxed);
            out.push(regs.pc);
            false
        }
        Some((lo, hi)) => {
            // SAFETY: the interrupted stack above its stack pointer: mapped
            // and readable, its code suspended while the handler runs, and
            // `stack` does not outlive this call.
            let stack = unsafe { Stack::new(lo, hi) };
            match crate::unwind::mode() {
                UnwindMode::FramePointers => {
                    walk_frame_pointers(regs.pc, regs.fp, regs.lr, |a| stack.read(a), &mut out);
                    true
                }
                UnwindMode::Dwarf => walk_dwarf_in_signal(regs, &stack, &mut out),
            }
        }
    };
    SignalCapture {
        frames: out.n,
        truncated: out.truncated,
        walked,
    }
}

fn walk_dwarf_in_signal(regs: &Registers, stack: &Stack, out: &mut Out<'_>) -> bool {
    let start = home_slot();
    for k in 0..POOL {
        let slot = &CACHES[(start + k) % POOL];
        // Acquire: pairs with the Release store of `busy = false`, so the
        // previous user's writes to the cache are visible.
        if slot
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // SAFETY: `busy` gives this handler exclusive use of the cache; it
        // is never freed. Null when `prepare` has not run: then skip it.
        let Some(cache) = (unsafe { slot.cache.load(Ordering::Relaxed).as_mut() }) else {
            // Release: see the Acquire above.
            slot.busy.store(false, Ordering::Release);
            continue;
        };
        let walked = MODULES.with_pinned(Some(&slot.walking), |modules| {
            modules
                .map(|modules| {
                    walk_dwarf_with(
                        modules, cache, regs.pc, regs.sp, regs.fp, regs.lr, stack, out,
                    )
                })
                .is_some()
        });
        slot.publish(cache);
        // Release: see the Acquire above.
        slot.busy.store(false, Ordering::Release);
        if !walked {
            NO_MODULES.fetch_add(1, Ordering::Relaxed);
            out.push(regs.pc);
        }
        return walked;
    }
    NO_CACHE.fetch_add(1, Ordering::Relaxed);
    out.push(regs.pc);
    false
}

/// `[sp, top)` of the stack `sp` is on, from the thread's cache, the
/// alternate signal stack, or `/proc/self/maps` (then cached).
fn stack_bounds(sp: usize) -> Option<(usize, usize)> {
    if let Some((lo, hi)) = crate::sampler::cached_stack_bounds() {
        if (lo..hi).contains(&sp) {
            return Some((sp, hi));
        }
    }
    if let Some(bounds) = on_alt_stack(sp) {
        return Some(bounds);
    }
    let vma = mapping_containing(sp).filter(|v| v.rw)?;
    // Cache it only when it is surely this thread's stack: the main
    // thread's `[stack]`, or the mapping glibc put this thread's descriptor
    // at the top of. A fiber's or coroutine's stack is used for this sample
    // only.
    // SAFETY: pthread_self reads the thread pointer; async-signal-safe.
    let me = unsafe { libc::pthread_self() } as usize;
    if vma.main_stack || vma.contains(me) {
        crate::sampler::cache_stack_bounds(vma.start, vma.end);
    }
    Some((sp, vma.end))
}

/// A mapping of `/proc/self/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vma {
    start: usize,
    end: usize,
    /// Readable and writable.
    rw: bool,
    /// Named `[stack]` (the main thread's stack).
    main_stack: bool,
}

/// The line of `/proc/self/maps` whose range contains `addr`, read without
/// allocating, through a small buffer (this runs on the interrupted
/// thread's stack, which may be nearly full).
fn mapping_containing(addr: usize) -> Option<Vma> {
    MAPS_SCANS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: a NUL-terminated path; open is async-signal-safe.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 512];
    let mut filled = 0;
    // Inside a line longer than the buffer, already judged by its start.
    let mut skipping = false;
    let mut found = None;
    'read: loop {
        // SAFETY: reading into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled) };
        if n <= 0 {
            break;
        }
        filled += n as usize;
        let mut start = 0;
        while let Some(len) = buf[start..filled].iter().position(|&b| b == b'\n') {
            if !skipping {
                if let Some(vma) = parse_line(&buf[start..start + len]).filter(|v| v.contains(addr))
                {
                    found = Some(vma);
                    break 'read;
                }
            }
            skipping = false;
            start += len + 1;
        }
        if start == 0 && filled == buf.len() {
            // A line longer than the buffer (a long path): its range and
            // permissions are at its start, in the buffer; skip the rest.
            if !skipping {
                if let Some(vma) = parse_line(&buf[..filled]).filter(|v| v.contains(addr)) {
                    found = Some(vma);
                    break;
                }
            }
            skipping = true;
            filled = 0;
            continue;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    found
}

impl Vma {
    fn contains(&self, addr: usize) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// `start-end perms ... [name]` -> the mapping.
fn parse_line(line: &[u8]) -> Option<Vma> {
    let dash = line.iter().position(|&b| b == b'-')?;
    let space = dash + 1 + line[dash + 1..].iter().position(|&b| b == b' ')?;
    let start = hex(&line[..dash])?;
    let end = hex(&line[dash + 1..space])?;
    let perms = line.get(space + 1..space + 3)?;
    Some(Vma {
        start,
        end,
        rw: perms == b"rw",
        main_stack: line.ends_with(b"[stack]"),
    })
}

fn hex(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | v as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_frame_pointers_end_the_walk_without_overflow() {
        let local = [0u64; 4];
        let (lo, hi) = (local.as_ptr() as usize, local.as_ptr() as usize + 32);
        // SAFETY: `[lo, hi)` is `local`, which outlives every use of `stack`.
        let stack = unsafe { Stack::new(lo, hi) };
        for fp in [u64::MAX, u64::MAX - 3, u64::MAX - 7, 1, 0] {
            let mut buf = [0u64; 8];
            let mut out = Out::new(&mut buf, 0);
            walk_frame_pointers(0x1234, fp, 0, |a| stack.read(a), &mut out);
            assert_eq!(out.n, 1, "only the pc for fp {fp:#x}");
        }
    }

    #[test]
    fn maps_lines_parse() {
        assert_eq!(
            parse_line(b"7ffd1c9e5000-7ffd1ca06000 rw-p 00000000 00:00 0   [stack]"),
            Some(Vma {
                start: 0x7ffd1c9e5000,
                end: 0x7ffd1ca06000,
                rw: true,
                main_stack: true
            })
        );
        assert_eq!(
            parse_line(b"55d0c0a00000-55d0c0a01000 r-xp 00001000 08:01 42 /bin/x"),
            Some(Vma {
                start: 0x55d0c0a00000,
                end: 0x55d0c0a01000,
                rw: false,
                main_stack: false
            })
        );
        assert_eq!(parse_line(b"garbage"), None);
        assert_eq!(parse_line(b"12-34"), None);
    }

    #[test]
    fn the_mapping_of_a_local_is_this_stack() {
        let local = 0u64;
        let at = &local as *const u64 as usize;
        let vma = mapping_containing(at).expect("the stack is in /proc/self/maps");
        let (lo, hi) = (vma.start, vma.end);
        assert!(vma.rw && lo <= at && at < hi);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        assert!(
            vma.contains(me),
            "the thread descriptor tops the stack mapping"
        );
        let (plo, phi) = crate::unwind::thread_stack_bounds().unwrap();
        // The mapping holds pthread's stack (and, above it, the thread's
        // descriptor).
        assert!(
            lo <= plo.max(lo) && phi <= hi,
            "{lo:x}-{hi:x} vs {plo:x}-{phi:x}"
        );
    }
}
