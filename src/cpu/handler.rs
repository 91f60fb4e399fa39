//! The `SIGPROF` handler and its installation.
//!
//! The handler is async-signal-safe by construction: it saves and restores
//! `errno`, reads the interrupted registers from the `ucontext`, walks the
//! stack with [`ferroprof_alloc::signal::capture`] (no allocation, no lock,
//! no loader call, reads proven inside the stack) straight into a slot of
//! the pre-allocated [`Ring`], and counts what it could not store. It is
//! installed with `SA_RESTART` (interrupted system calls resume) and
//! `SA_SIGINFO` (for the context and the timer's overrun count).
//!
//! [`Installed`] is the capability token: it exists only while the handler
//! is installed, and dropping it puts back the disposition it replaced.
//!
//! # Fork
//!
//! A child of `fork` inherits the `SIGPROF` disposition (this handler),
//! this module's statics (installed, the ring published) and the ring in
//! whatever state the parent's threads left it: a slot claimed by a handler
//! that was running on another thread, or a drain under way, neither of
//! which will ever finish in the child, where only the forking thread
//! exists. It inherits no timer (POSIX and interval timers are not copied)
//! and no pending signal. A `pthread_atfork` child handler, registered at
//! the first install, therefore makes the child a process in which no CPU
//! profiler runs: it puts back the disposition the handler had replaced,
//! marks the ring stale and frees the slot, so the child can start a CPU
//! profiler of its own. The `Installed` token the child inherited (if it
//! can reach it at all) remembers the fork generation it was made in and
//! does nothing when dropped in another one.
//!
//! The stale ring is emptied ([`Ring::reset`]) by the child's first
//! install, not by the child handler: the reset writes to every page of the
//! ring (2 MiB), and a child of `fork` shares those pages with its parent
//! until it writes to them. Most children `exec` at once (`fork` + `exec`
//! is how many programs, `std::process::Command` among them, start
//! processes), and a reset in the handler would copy the whole ring into
//! each of them. Until that install nothing in the child reads or writes
//! the ring: the handler is not its disposition, and an inherited
//! `CpuProfiler` is inert (module `cpu`, "Fork").
//!
//! Install and restore run under [`ForkLock`], which the prepare handler
//! also takes, so a fork never copies one half-done (disposition changed,
//! the disposition it replaced not yet saved). The lock's holder blocks
//! every signal but `SIGPROF` while it holds it: a signal handler that
//! forks (a crash reporter, say) and interrupted the holder would otherwise
//! wait forever in the prepare handler for a lock its own thread holds.
//! (`SIGPROF` stays deliverable so that restoring still discards one that
//! arrives between the two `sigaction` calls, rather than leaving it
//! pending for the restored disposition, and ours does not fork.)

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use ferroprof_alloc::signal::{self, Registers};

use ferroprof_alloc::atfork::AtforkOnce;

use super::ring::{Ring, FLAG_NOT_WALKED, FLAG_TRUNCATED, MAX_FRAMES};
use super::timer::expirations;

/// The ring the handler writes to (null: count nothing).
static RING: AtomicPtr<Ring> = AtomicPtr::new(std::ptr::null_mut());
/// Deepest stack the handler walks.
static DEPTH: AtomicUsize = AtomicUsize::new(64);

/// [`STATE`]: no profiler owns the handler.
const FREE: u8 = 0;
/// [`STATE`]: an `install` owns it but has not changed the disposition yet.
const CLAIMED: u8 = 1;
/// [`STATE`]: the handler is the disposition; [`PREVIOUS`] holds the one it
/// replaced.
const ACTIVE: u8 = 2;
/// `FREE` -> `CLAIMED` (install's CAS) -> `ACTIVE` (under [`ForkLock`]) ->
/// `FREE` (drop, under the lock; or the fork child handler).
static STATE: AtomicU8 = AtomicU8::new(FREE);

/// The disposition the handler replaced: written by `install` and read by
/// the restore and the fork child handler, all under [`ForkLock`], and only
/// meaningful while [`STATE`] is `ACTIVE`.
struct Previous(UnsafeCell<libc::sigaction>);

// SAFETY: every access holds `ForkLock` (see `Previous`).
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(UnsafeCell::new(
    // SAFETY: `sigaction` is plain integers, a function address and a
    // signal set; all-zero bytes are a valid value (SIG_DFL, no flags).
    unsafe { std::mem::zeroed() },
));

/// Forks between the first process and this one, counted by the child
/// handler; an [`Installed`] made under another count was inherited.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The ring a fork left stale in this process (null: none): published
/// when this process was forked, emptied by the next install. Set only by
/// the child handler, taken only by `install` while it holds `CLAIMED`.
static STALE_RING: AtomicPtr<Ring> = AtomicPtr::new(std::ptr::null_mut());

/// The spin lock behind [`ForkLock`].
static FORK_LOCK: AtomicBool = AtomicBool::new(false);
static ATFORK: AtforkOnce = AtforkOnce::new();

/// Excludes a fork from an install or a restore, and those from each other.
///
/// A spin lock rather than a `Mutex`: the fork prepare handler takes it and
/// the parent and child handlers release it, across calls, and the child
/// releases a lock it copied held. Held for two `sigaction` calls at most,
/// and never by a signal handler: every signal but `SIGPROF` (whose
/// handler does not fork) is blocked on the holding thread meanwhile
/// (module docs, "Fork").
struct ForkLock {
    /// The thread's signal mask before `acquire`, put back by `drop`.
    mask: libc::sigset_t,
}

impl ForkLock {
    fn acquire() -> ForkLock {
        // SAFETY: all-zero bytes are a valid sigset_t, filled by sigfillset;
        // pthread_sigmask gets valid pointers. (glibc leaves its own
        // internal signals unblocked.)
        let mask = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigdelset(&mut all, libc::SIGPROF);
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut mask);
            mask
        };
        lock_raw();
        ForkLock { mask }
    }
}

impl Drop for ForkLock {
    fn drop(&mut self) {
        unlock_raw();
        // SAFETY: puts back the mask saved by `acquire`, a valid sigset_t.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.mask, std::ptr::null_mut()) };
    }
}

fn lock_raw() {
    // Acquire: pairs with the Release in `unlock_raw`, so the previous
    // holder's writes (`PREVIOUS`, `STATE`) are visible to the next.
    while FORK_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

fn unlock_raw() {
    // Release: pairs with the Acquire in `lock_raw`.
    FORK_LOCK.store(false, Ordering::Release);
}

/// Registers the fork handlers (once per process; a child inherits them).
fn register_fork_handlers() {
    ATFORK.call_once(|| {
        // SAFETY: three `extern "C"` functions that only take or release
        // the spin lock, call `sigaction` and load and store atomics (the
        // child one is async-signal-safe, as a child of a threaded process
        // requires).
        let rc = unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            )
        };
        if rc != 0 {
            log::warn!(
                "ferroprof: pthread_atfork failed ({}); a forked child cannot start \
                 a CPU profiler of its own",
                std::io::Error::from_raw_os_error(rc)
            );
        }
    });
}

extern "C" fn before_fork() {
    lock_raw();
}

extern "C" fn after_fork_in_parent() {
    unlock_raw();
}

/// In the child: no CPU profiler runs here (see the module docs, "Fork").
/// The child has one thread, this one, which holds the lock (copied from
/// the forking thread, which took it in `before_fork`). Writes no page of
/// the ring.
extern "C" fn after_fork_in_child() {
    ATFORK.registered_in_child();
    if STATE.load(Ordering::Relaxed) == ACTIVE {
        // SAFETY: the lock is held and STATE is ACTIVE, so PREVIOUS holds
        // the disposition the handler replaced; sigaction is
        // async-signal-safe. No SIGPROF is pending in a new child, and it
        // has no timer to send one.
        unsafe { libc::sigaction(libc::SIGPROF, PREVIOUS.0.get(), std::ptr::null_mut()) };
    }
    // The ring the handler wrote to, as the parent's threads left it, for
    // the child's first install to empty. (If this process was itself left
    // a stale ring, RING still names it: only an install publishes, and it
    // empties the stale ring first.)
    // Relaxed (the load): the forking thread took FORK_LOCK in
    // `before_fork` after every install whose handler could have written
    // to a ring had released it, so it sees that install's RING store.
    // Relaxed (the stores): the child is single-threaded here; threads it
    // starts later are ordered after this by their creation.
    let ring = RING.load(Ordering::Relaxed);
    if !ring.is_null() {
        STALE_RING.store(ring, Ordering::Relaxed);
    }
    STATE.store(FREE, Ordering::Relaxed);
    FORKS.fetch_add(1, Ordering::Relaxed);
    unlock_raw();
}

/// Why the handler could not be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// ferroprof's CPU profiler already runs in this process.
    AlreadyInstalled,
    /// `sigaction` failed with this errno.
    Sigaction(i32),
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::AlreadyInstalled => {
                f.write_str("the CPU profiler's SIGPROF handler is already installed")
            }
            HandlerError::Sigaction(errno) => write!(
                f,
                "sigaction(SIGPROF) failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for HandlerError {}

/// The handler, installed; dropping it restores the previous disposition.
pub struct Installed {
    /// [`FORKS`] when installed: another value means this token was
    /// inherited through `fork`, and the child handler has already undone
    /// the install in this process.
    forks: u64,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed").finish_non_exhaustive()
    }
}

impl Installed {
    /// Installs the handler, writing stacks of at most `depth` frames to
    /// `ring`. Prepares signal-context walks first (module list, caches).
    pub fn install(ring: &'static Ring, depth: usize) -> Result<Installed, HandlerError> {
        register_fork_handlers();
        // Acquire: pairs with the Release in `drop`: the previous owner's
        // restore happens-before this install.
        if STATE
            .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(HandlerError::AlreadyInstalled);
        }
        // Relaxed: set by the fork child handler before the child had a
        // second thread, and taken only here, by the one install under way.
        let stale = STALE_RING.swap(std::ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: a published ring is 'static. Since the fork that left it
        // stale, no handler of ours was this process's disposition (the
        // child handler restored the previous one and this is the first
        // install since), no drain ran (inherited `CpuProfiler`s drain
        // nothing, a new one only after its install) and no thread of the
        // parent is here: nothing uses the ring during the reset, and no
        // `Slot` or drain from before it is used after. Whoever uses it
        // next is ordered after the reset by the Release store of RING
        // below or by program order (this thread's drain).
        if let Some(stale) = unsafe { stale.as_ref() } {
            // SAFETY: as above.
            unsafe { stale.reset() };
        }
        signal::prepare();
        DEPTH.store(depth.clamp(1, MAX_FRAMES), Ordering::Relaxed);
        // Release: the ring's construction is visible to a handler's Acquire
        // load.
        RING.store(ring as *const Ring as *mut Ring, Ordering::Release);
        let _lock = ForkLock::acquire();
        // SAFETY: a zeroed sigaction is valid; the handler has the
        // SA_SIGINFO signature and is async-signal-safe (module docs);
        // PREVIOUS is only accessed under the lock, which is held.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigprof as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGPROF, &action, PREVIOUS.0.get()) != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                // Release: as in `drop`.
                STATE.store(FREE, Ordering::Release);
                return Err(HandlerError::Sigaction(errno));
            }
        }
        // Relaxed: read under the lock, or by the child handler, which also
        // holds it.
        STATE.store(ACTIVE, Ordering::Relaxed);
        Ok(Installed {
            forks: FORKS.load(Ordering::Relaxed),
        })
    }

    /// Whether this token was made in this process (false: inherited
    /// through `fork`, and no longer meaning anything).
    pub(crate) fn is_current(&self) -> bool {
        // Relaxed: FORKS only changes in a new child before it has a second
        // thread.
        FORKS.load(Ordering::Relaxed) == self.forks
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _lock = ForkLock::acquire();
        if !self.is_current() {
            // Inherited through fork: the child handler restored the
            // disposition and freed the slot; another profiler of this
            // process may own both now.
            return;
        }
        // SAFETY: setting SIG_IGN first discards every pending SIGPROF
        // (POSIX), so one still pending on some thread cannot reach a
        // default action that would end the process; then the disposition
        // `install` replaced (in PREVIOUS, read under the lock) is put back.
        unsafe {
            let mut ignore: libc::sigaction = std::mem::zeroed();
            ignore.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGPROF, &ignore, std::ptr::null_mut());
            libc::sigaction(libc::SIGPROF, PREVIOUS.0.get(), std::ptr::null_mut());
        }
        // The ring stays published: it is 'static, and a handler still
        // running on another thread may be writing to it.
        // Release: pairs with the Acquire in `install`.
        STATE.store(FREE, Ordering::Release);
    }
}

extern "C" fn on_sigprof(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: errno is thread-local; reading and writing it is safe here.
    let errno = unsafe { *libc::__errno_location() };
    // Acquire: pairs with the Release store in `install`.
    let ring = RING.load(Ordering::Acquire);
    // SAFETY: a published ring is 'static.
    if let Some(ring) = unsafe { ring.as_ref() } {
        // SAFETY: the kernel passes a valid siginfo (or null) to an
        // SA_SIGINFO handler.
        let weight = unsafe { info.as_ref() }.map_or(1, expirations);
        record(ring, context, weight);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Walks the interrupted stack into a slot of `ring`, or counts the
/// samples as dropped.
fn record(ring: &Ring, context: *mut libc::c_void, weight: u64) {
    let weight = u32::try_from(weight).unwrap_or(u32::MAX);
    // SAFETY: the context argument of an SA_SIGINFO handler.
    let regs = unsafe { Registers::from_ucontext(context) };
    let (Some(regs), Some(mut slot)) = (regs, ring.try_reserve()) else {
        // A failed reserve counted one sample; the rest of the weight too.
        ring.add_dropped(u64::from(weight.saturating_sub(1)));
        return;
    };
    let depth = DEPTH.load(Ordering::Relaxed);
    let frames = slot.frames_mut();
    let got = signal::capture(&regs, &mut frames[..depth]);
    let mut flags = 0;
    if got.truncated {
        flags |= FLAG_TRUNCATED;
    }
    if !got.walked {
        flags |= FLAG_NOT_WALKED;
    }
    // SAFETY: gettid has no preconditions and is async-signal-safe.
    let tid = unsafe { libc::gettid() };
    slot.commit(got.frames, tid, flags, weight);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI32;

    /// Set by the test while it holds the fork lock.
    static HOLDING: AtomicBool = AtomicBool::new(false);
    /// -1 until the handler runs; then whether `HOLDING` was set.
    static SAW_HOLDING: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_sigusr2(_: libc::c_int) {
        // Relaxed (both): the same thread as the test, which reads the
        // result after the handler returned.
        SAW_HOLDING.store(
            i32::from(HOLDING.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }

    #[test]
    fn no_signal_handler_runs_on_a_thread_holding_the_fork_lock() {
        // SAFETY: all-zero is a valid sigaction; the handler only stores an
        // atomic; the previous disposition is put back below.
        let old = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr2 as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, &mut old), 0);
            old
        };
        let lock = ForkLock::acquire();
        // Relaxed (all): this thread's own flags (see `on_sigusr2`).
        HOLDING.store(true, Ordering::Relaxed);
        // A signal handler that forks, arriving now, would wait forever in
        // `before_fork` for the lock this thread holds.
        // SAFETY: raises SIGUSR2 on this thread; its handler is set above.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        let during = SAW_HOLDING.load(Ordering::Relaxed);
        HOLDING.store(false, Ordering::Relaxed);
        drop(lock);
        let after = SAW_HOLDING.load(Ordering::Relaxed);
        // SAFETY: puts back the disposition saved above.
        unsafe { libc::sigaction(libc::SIGUSR2, &old, std::ptr::null_mut()) };
        assert_eq!(during, -1, "a signal handler ran while the lock was held");
        assert_eq!(after, 0, "the signal was not delivered after the release");
    }
}
