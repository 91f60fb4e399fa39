//! Hazard pointers for the stack walks' module list: how a list replaced
//! while walks (signal handlers among them) may still use it is freed,
//! never too early and without anyone waiting.
//!
//! One [`Current`] holds the list in use. A walk publishes the list it is
//! about to use in its own [`Hazard`] (one per unwinder cache slot) and
//! checks that it is still current ([`Current::pin`]); a walk without a
//! slot counts itself instead ([`Current::enter_unslotted`]). The one
//! thread that replaces lists ([`Current::replace`]) keeps the replaced
//! ones and frees those no hazard names, provided no unslotted walk runs
//! ([`Current::reclaim`]). Readers never wait and never free; the replacer
//! never waits either: what is still held waits for its next call.
//!
//! Why it is safe: the walk's store to its hazard and the replacer's store
//! to the current pointer are each followed by a `SeqCst` fence before the
//! other side's location is read. Fences are totally ordered, so either the
//! replacer's reads of the hazards come after the walk's store (it sees the
//! hazard and keeps the list), or the walk's re-read of the current pointer
//! comes after the replacement (it sees a different list and pins again).
//! The same holds for the unslotted count. The walk's `Release` stores to
//! its hazard (and decrement), read with `Acquire` by the replacer, order
//! the walk's reads of a list before its free, even when the replacer
//! reads the hazard that the walk's next pin stored.
//!
//! The file is self-contained: under `--cfg loom` its atomics come from
//! loom, and `tests/hazard_loom.rs` compiles it directly and model-checks
//! every interleaving of walks against replacements, so the code checked is
//! the code that ships, but for one instruction: on x86_64 the walk's fence
//! is a locked no-op read-modify-write, which the processor orders as it
//! does the fence and which costs less ([`primitive::full_fence`]).
//! (Fences, not `SeqCst` accesses, carry the argument because loom models
//! `SeqCst` accesses only as acquire/release.)

use self::primitive::{fence, AtomicPtr, AtomicUsize, Ordering};

/// The current value of type `T`, replaced whole, read under hazards.
pub(crate) struct Current<T> {
    ptr: AtomicPtr<T>,
    /// Readers that hold a value without a [`Hazard`].
    unslotted: AtomicUsize,
}

/// The value one reader is using (null: none).
pub(crate) struct Hazard<T> {
    ptr: AtomicPtr<T>,
}

impl<T> Hazard<T> {
    /// No value held.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Hazard<T> {
        Hazard {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// No value held.
    #[cfg(loom)]
    pub(crate) fn new() -> Hazard<T> {
        Hazard {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

impl<T> Current<T> {
    /// No value yet.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Current<T> {
        Current {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            unslotted: AtomicUsize::new(0),
        }
    }

    /// No value yet.
    #[cfg(loom)]
    pub(crate) fn new() -> Current<T> {
        Current {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
            unslotted: AtomicUsize::new(0),
        }
    }

    /// The current value, to compare or, by the replacing thread, to read
    /// (only it frees values). Acquire: pairs with the Release of
    /// [`Current::replace`], so the value's contents are visible.
    pub(crate) fn peek(&self) -> *const T {
        self.ptr.load(Ordering::Acquire)
    }

    /// Runs `f` with the current value pinned: in `hazard`, or, without
    /// one, as an unslotted reader. `f` gets `None` when there is no value
    /// or pinning gave up. Async-signal-safe when `f` is.
    pub(crate) fn with_pinned<R>(
        &self,
        hazard: Option<&Hazard<T>>,
        f: impl FnOnce(Option<&T>) -> R,
    ) -> R {
        let value = match hazard {
            Some(hazard) => self.pin(hazard),
            None => self.enter_unslotted(),
        };
        // SAFETY: pinned: `reclaim` frees no value a hazard names, nor any
        // while an unslotted reader runs, and both end only below.
        let r = f(unsafe { value.as_ref() });
        match hazard {
            Some(hazard) => Self::unpin(hazard),
            None => self.leave_unslotted(),
        }
        r
    }

    /// Publishes the current value in `hazard` and returns it; it stays
    /// allocated until [`Current::unpin`]. Null when there is no value, or
    /// when it was replaced at every one of a few tries (then `hazard` is
    /// clear and the caller goes without). Async-signal-safe.
    fn pin(&self, hazard: &Hazard<T>) -> *const T {
        // Acquire: see `peek`.
        let mut cur = self.ptr.load(Ordering::Acquire);
        for _ in 0..8 {
            // The fence orders this store before the re-read. Release, too:
            // a reclaimer that reads it must also see this thread's uses of
            // the value it pinned last time, whose `unpin` is an earlier
            // store to this hazard, and a later store carries that release
            // only if it is a release itself (loom found this).
            hazard.ptr.store(cur, Ordering::Release);
            primitive::full_fence();
            let now = self.ptr.load(Ordering::Acquire);
            if now == cur {
                return cur;
            }
            cur = now;
        }
        Self::unpin(hazard);
        core::ptr::null()
    }

    /// Ends the use [`Current::pin`] started. Release: the reader's uses of
    /// the value happen before a `reclaim` that sees the hazard clear.
    fn unpin(hazard: &Hazard<T>) {
        hazard.ptr.store(core::ptr::null_mut(), Ordering::Release);
    }

    /// [`Current::pin`] for a reader without a hazard: the current value,
    /// allocated until [`Current::leave_unslotted`]. While any such reader
    /// runs, [`Current::reclaim`] frees nothing.
    fn enter_unslotted(&self) -> *const T {
        // Relaxed: the fence orders it (see the module docs); as a
        // read-modify-write it continues the release sequence of an earlier
        // `leave_unslotted`, so it needs no Release of its own.
        self.unslotted.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.ptr.load(Ordering::Acquire)
    }

    /// Ends [`Current::enter_unslotted`]. Release: as in `unpin`.
    fn leave_unslotted(&self) {
        self.unslotted.fetch_sub(1, Ordering::Release);
    }

    /// Makes `fresh` current and returns the value it replaces (null if
    /// none), which the caller keeps for [`Current::reclaim`]. One thread at
    /// a time. Release: publishes `fresh`'s contents to readers.
    pub(crate) fn replace(&self, fresh: *mut T) -> *mut T {
        self.ptr.swap(fresh, Ordering::AcqRel)
    }

    /// Calls `free` on every value of `retired` (addresses of replaced
    /// values) that no hazard of `hazards` names, and drops it from
    /// `retired`; frees nothing while an unslotted reader runs. Only by the
    /// thread that replaces, after `replace`.
    pub(crate) fn reclaim<'a, I>(
        &self,
        retired: &mut Vec<usize>,
        hazards: impl Fn() -> I,
        mut free: impl FnMut(*mut T),
    ) where
        T: 'a,
        I: Iterator<Item = &'a Hazard<T>>,
    {
        if retired.is_empty() {
            return;
        }
        fence(Ordering::SeqCst);
        // Acquire (both): pairs with the Release of `leave_unslotted` and
        // `unpin`, so a reader's uses happen before the free.
        if self.unslotted.load(Ordering::Acquire) != 0 {
            return;
        }
        retired.retain(|&value| {
            let held = hazards().any(|h| h.ptr.load(Ordering::Acquire) as usize == value);
            if !held {
                free(value as *mut T);
            }
            held
        });
    }
}

/// Atomics from loom under `--cfg loom`, from `core` otherwise.
mod primitive {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};

    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};

    /// `fence(SeqCst)` for [`Current::pin`](super::Current::pin), the one
    /// on every walk.
    ///
    /// On x86_64 a `SeqCst` fence is `mfence`, which on the AMD EPYC this
    /// was measured on cost 9 – 18 ns more a heap sample than a locked
    /// read-modify-write that changes nothing (`lock or` of 0 into the
    /// word at the stack pointer; four processes of `alloc_overhead`'s
    /// window, both ways alternated in each). For ordinary memory a locked
    /// instruction orders as `mfence` does: loads and stores are not
    /// reordered with it, and locked instructions have one total order
    /// (Intel SDM vol. 3, 8.2.2; Linux's `smp_mb` is a locked add of 0 to
    /// a word below the stack pointer for that reason). Elsewhere, and
    /// under loom and Miri, the fence.
    #[inline(always)]
    pub(crate) fn full_fence() {
        #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
        // SAFETY: atomically ORs 0 into the 8 bytes at the stack pointer,
        // which belong to this thread's current frame, so their value does
        // not change; no other memory is touched, no register but the
        // flags. Without `nomem` the compiler also orders every memory
        // access around it, as it would around a fence.
        unsafe {
            core::arch::asm!("lock or qword ptr [rsp], 0", options(nostack));
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
        fence(Ordering::SeqCst);
    }
}
