//! A `fork()`ed child of a process that is sampling on several threads can
//! allocate, free, sample and snapshot, and exits 0; the parent keeps going.

use std::alloc::System;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferroprof_alloc::SamplingAllocator;

#[global_allocator]
static GLOBAL: SamplingAllocator<System> = SamplingAllocator::new(System);

fn churn(rounds: usize) -> usize {
    let mut live: Vec<Vec<u8>> = Vec::new();
    let mut sum = 0;
    for i in 0..rounds {
        live.push(vec![i as u8; 1 + (i * 37) % 5000]);
        if live.len() > 64 {
            let v = live.swap_remove(i % 64);
            sum += v.len();
        }
    }
    sum
}

#[test]
fn child_allocates_and_exits_zero() {
    ferroprof_alloc::set_sample_interval(64);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                ferroprof_alloc::set_sample_interval(64);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(churn(1000));
                }
            })
        })
        .collect();
    for _ in 0..20 {
        // SAFETY: the child only allocates, frees, snapshots and `_exit`s; it
        // never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| {
                ferroprof_alloc::set_sample_interval(1);
                let n = churn(20_000);
                let snap = ferroprof_alloc::snapshot();
                n > 0 && !snap.stacks.is_empty()
            });
            // SAFETY: terminating the child without running the parent's
            // atexit handlers or test harness.
            unsafe { libc::_exit(if matches!(ok, Ok(true)) { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "child failed");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(churn(1000) > 0, "parent still allocates");
}
