//! `pthread_atfork` registration that survives `fork` itself.
//!
//! Every part of ferroprof that keeps process-wide state registers fork
//! handlers the first time it is used: the allocator's unwinder (so a fork
//! never copies the loader's lock held), the CPU profiler's signal handler
//! and the profiler runtime (so a child starts with no profiler running).
//! They all need "once per process", which `std::sync::Once` does not give
//! across `fork`; this type does, and lives here, in the crate every other
//! part depends on, so there is one copy of it.

use core::sync::atomic::{AtomicI32, Ordering};

/// Registers `pthread_atfork` handlers once per process, like a
/// `std::sync::Once`, but also right in a child of `fork`.
///
/// A `Once` copied by `fork` while another thread was inside it stays
/// "running" in the child forever (that thread does not exist there), so
/// the child's first start would wait forever. That happens when a thread
/// forks while another registers: `pthread_atfork` and `fork` exclude each
/// other (glibc and musl hold one lock over registration and over a fork's
/// prepare..child handlers), so the registration happened either wholly
/// before the fork, and then the child handler it registered runs in the
/// child and says so ([`registered_in_child`](Self::registered_in_child)),
/// or not at all in the child, which must then register itself.
///
/// The state: 0 (not registered), done (-1), or the pid of the
/// process in which a thread is registering. A child finds its parent's
/// pid there when the registration had not happened in its copy.
pub struct AtforkOnce(AtomicI32);

impl Default for AtforkOnce {
    fn default() -> AtforkOnce {
        AtforkOnce::new()
    }
}

impl AtforkOnce {
    const DONE: i32 = -1;

    /// Not registered in any process yet.
    pub const fn new() -> AtforkOnce {
        AtforkOnce(AtomicI32::new(0))
    }

    /// Runs `register` (which calls `pthread_atfork` with a child handler
    /// that calls [`registered_in_child`](Self::registered_in_child)) unless
    /// this process has done it; returns once it is done, by this thread or
    /// another.
    pub fn call_once(&self, register: impl FnOnce()) {
        // SAFETY: getpid has no preconditions and cannot fail.
        let me = unsafe { libc::getpid() };
        loop {
            // Acquire: pairs with the Release store of DONE below, so the
            // caller proceeds after the registration (which then covers
            // every fork that copies what the caller does next).
            let seen = self.0.load(Ordering::Acquire);
            if seen == Self::DONE {
                return;
            }
            if seen == me {
                // Another thread of this process is registering.
                std::thread::yield_now();
                continue;
            }
            // 0, or the pid of the parent that forked this process while
            // one of its threads was registering: not registered here.
            // Relaxed: winning only decides who registers.
            if self
                .0
                .compare_exchange(seen, me, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                register();
                // Release: pairs with the Acquire load above.
                self.0.store(Self::DONE, Ordering::Release);
                return;
            }
        }
    }

    /// From the registered child handler: its running proves the
    /// registration was copied into this child. Async-signal-safe.
    pub fn registered_in_child(&self) {
        // Relaxed: the child has a single thread here; threads it starts
        // later are ordered after this by their creation.
        self.0.store(Self::DONE, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;

    /// A pid other than this process's: what a child finds when its parent
    /// forked it while one of its threads was registering.
    fn parent_pid() -> i32 {
        // SAFETY: getpid has no preconditions and cannot fail. (Not
        // getppid: Miri does not provide it.)
        unsafe { libc::getpid() }.wrapping_add(1)
    }

    #[test]
    fn atfork_once_registers_once() {
        let once = AtforkOnce::new();
        let mut runs = 0;
        once.call_once(|| runs += 1);
        once.call_once(|| runs += 1);
        assert_eq!(runs, 1);
    }

    #[test]
    fn atfork_once_registers_in_a_child_that_copied_a_registration_under_way() {
        // A `std::sync::Once` copied in this state waits forever.
        let once = AtforkOnce(AtomicI32::new(parent_pid()));
        let mut runs = 0;
        once.call_once(|| runs += 1);
        once.call_once(|| runs += 1);
        assert_eq!(runs, 1);
    }

    #[test]
    fn atfork_once_copied_with_its_registration_is_not_registered_again() {
        // The registration happened before the fork, whose child handler
        // then ran in the child.
        let once = AtforkOnce(AtomicI32::new(parent_pid()));
        once.registered_in_child();
        let mut runs = 0;
        once.call_once(|| runs += 1);
        assert_eq!(runs, 0);
    }

    #[test]
    fn atfork_once_callers_return_after_the_registration() {
        static ONCE: AtforkOnce = AtforkOnce::new();
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        static DONE: AtomicBool = AtomicBool::new(false);
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    ONCE.call_once(|| {
                        // Relaxed (all three): the test reads them after
                        // `call_once`, whose Acquire/Release orders them.
                        RUNS.fetch_add(1, Ordering::Relaxed);
                        for _ in 0..100 {
                            std::thread::yield_now();
                        }
                        DONE.store(true, Ordering::Relaxed);
                    });
                    DONE.load(Ordering::Relaxed)
                })
            })
            .collect();
        for t in threads {
            assert!(
                t.join().unwrap(),
                "a caller returned before the registration"
            );
        }
        assert_eq!(RUNS.load(Ordering::Relaxed), 1);
    }
}
