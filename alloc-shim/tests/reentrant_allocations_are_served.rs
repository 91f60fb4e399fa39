//! The allocator keeps working where allocators usually break: in
//! thread-local destructors (including after the sampler's own thread state
//! would have been torn down), and in signal handlers that allocate while
//! the interrupted thread is itself inside the sampler.
//!
//! The inner allocator here is a lock-free bump allocator, so any deadlock
//! or crash in the signal test is ferroprof's, not the inner allocator's
//! (glibc's malloc is not async-signal-safe).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ferroprof_alloc::SamplingAllocator;

/// Never frees; hands out memory from one big static arena with a CAS.
struct Bump;

const ARENA: usize = 1 << 30;
static NEXT: AtomicUsize = AtomicUsize::new(0);
static BASE: AtomicUsize = AtomicUsize::new(0);

fn base() -> usize {
    let b = BASE.load(Ordering::Acquire);
    if b != 0 {
        return b;
    }
    // SAFETY: a fresh anonymous mapping, never unmapped.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ARENA,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    match BASE.compare_exchange(0, p as usize, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => p as usize,
        Err(other) => {
            // SAFETY: our own unused mapping.
            unsafe { libc::munmap(p, ARENA) };
            other
        }
    }
}

// SAFETY: returns distinct, suitably aligned ranges of a live mapping, or null.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = base();
        let mut cur = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base + cur + layout.align() - 1) & !(layout.align() - 1);
            let end = start + layout.size().max(1);
            if end > base + ARENA {
                return std::ptr::null_mut();
            }
            match NEXT.compare_exchange_weak(cur, end - base, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return start as *mut u8,
                Err(seen) => cur = seen,
            }
        }
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static GLOBAL: SamplingAllocator<Bump> = SamplingAllocator::new(Bump);

struct AllocatesOnDrop(Vec<u8>);

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        // Allocate and free during thread-local destruction.
        let v: Vec<u8> = vec![1; 4096 + self.0.len()];
        DROPPED.fetch_add(v.len(), Ordering::Relaxed);
    }
}

static DROPPED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LATE: RefCell<Option<AllocatesOnDrop>> = const { RefCell::new(None) };
}

#[test]
fn thread_local_destructors_can_allocate() {
    ferroprof_alloc::set_sample_interval(1);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                ferroprof_alloc::set_sample_interval(1);
                LATE.with(|l| *l.borrow_mut() = Some(AllocatesOnDrop(vec![0; i])));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(DROPPED.load(Ordering::Relaxed) >= 8 * 4096);
}

static HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn allocating_handler(_: libc::c_int) {
    let v: Vec<u64> = (0..64).collect();
    HANDLED.fetch_add(v.len() / 64, Ordering::Relaxed);
}

#[test]
fn signal_handlers_that_allocate_do_not_deadlock() {
    // SAFETY: installs a handler for SIGUSR1, which nothing else here uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = allocating_handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let done = done.clone();
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            // Every allocation sampled: the thread is inside the sampler
            // much of the time when the signal lands.
            ferroprof_alloc::set_sample_interval(1);
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) {
                let v = vec![n as u8; 1 + n % 3000];
                n = n.wrapping_add(v.len());
            }
            n
        })
    };
    let target = rx.recv().unwrap();
    for _ in 0..2000 {
        // SAFETY: the worker is alive until `done` is set below.
        unsafe { libc::pthread_kill(target, libc::SIGUSR1) };
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    done.store(true, Ordering::Relaxed);
    assert!(worker.join().unwrap() > 0);
    assert!(
        HANDLED.load(Ordering::Relaxed) > 100,
        "handlers ran: {}",
        HANDLED.load(Ordering::Relaxed)
    );
}

static ON_ALT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn allocating_altstack_handler(_: libc::c_int) {
    let v: Vec<u8> = vec![3; 10_000];
    ON_ALT.fetch_add(v.len(), Ordering::Relaxed);
}

#[test]
fn handlers_on_an_alternate_stack_are_sampled_safely() {
    // A handler on its own alternate stack: the sampler must bound its stack
    // reads by that stack, not by the thread's.
    std::thread::spawn(|| {
        const SIZE: usize = 256 << 10;
        let alt: &'static mut [u8] = Vec::leak(vec![0u8; SIZE]);
        // SAFETY: a leaked buffer becomes this thread's alternate signal
        // stack, and SIGUSR2 (unused elsewhere) gets a handler that runs on it.
        unsafe {
            let ss = libc::stack_t {
                ss_sp: alt.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: SIZE,
            };
            assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = allocating_altstack_handler as *const () as usize;
            sa.sa_flags = libc::SA_ONSTACK;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        }
        ferroprof_alloc::set_sample_interval(1);
        for _ in 0..100 {
            // SAFETY: raising a signal whose handler we installed.
            unsafe { libc::raise(libc::SIGUSR2) };
        }
        ferroprof_alloc::set_sample_interval(0);
    })
    .join()
    .unwrap();
    assert_eq!(ON_ALT.load(Ordering::Relaxed), 100 * 10_000);
}
