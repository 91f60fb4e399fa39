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

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use ferroprof_alloc::signal::{self, Registers};

use super::ring::{Ring, FLAG_NOT_WALKED, FLAG_TRUNCATED, MAX_FRAMES};
use super::timer::expirations;

/// The ring the handler writes to (null: count nothing).
static RING: AtomicPtr<Ring> = AtomicPtr::new(std::ptr::null_mut());
/// Deepest stack the handler walks.
static DEPTH: AtomicUsize = AtomicUsize::new(64);
static INSTALLED: AtomicBool = AtomicBool::new(false);

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
    previous: libc::sigaction,
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
        // Acquire: pairs with the Release in `drop`: the previous owner's
        // restore happens-before this install.
        if INSTALLED
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(HandlerError::AlreadyInstalled);
        }
        signal::prepare();
        DEPTH.store(depth.clamp(1, MAX_FRAMES), Ordering::Relaxed);
        // Release: the ring's construction is visible to a handler's Acquire
        // load.
        RING.store(ring as *const Ring as *mut Ring, Ordering::Release);
        // SAFETY: a zeroed sigaction is valid; the handler has the
        // SA_SIGINFO signature and is async-signal-safe (module docs);
        // `previous` is a valid out-pointer.
        let previous = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigprof as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGPROF, &action, &mut previous) != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                INSTALLED.store(false, Ordering::Release);
                return Err(HandlerError::Sigaction(errno));
            }
            previous
        };
        Ok(Installed { previous })
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // SAFETY: setting SIG_IGN first discards every pending SIGPROF
        // (POSIX), so one still pending on some thread cannot reach a
        // default action that would end the process; then the disposition
        // `install` replaced is put back.
        unsafe {
            let mut ignore: libc::sigaction = std::mem::zeroed();
            ignore.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGPROF, &ignore, std::ptr::null_mut());
            libc::sigaction(libc::SIGPROF, &self.previous, std::ptr::null_mut());
        }
        // The ring stays published: it is 'static, and a handler still
        // running on another thread may be writing to it.
        // Release: pairs with the Acquire in `install`.
        INSTALLED.store(false, Ordering::Release);
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
