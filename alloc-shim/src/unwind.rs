//! Stack capture at a sampled allocation: raw return addresses, no symbols.
//!
//! Two walkers, chosen by [`crate::UnwindMode`]:
//!
//! - **DWARF** (the default): [framehop] evaluates each frame's unwind rule
//!   from the module's `.eh_frame`, so stacks are right whether or not the
//!   user's code keeps frame pointers. Modules are found with
//!   `dl_iterate_phdr`; the main program's unwind sections are used in
//!   place, every shared library's are copied once (a library can be
//!   unloaded while a list naming it is still in use); the module list is
//!   rebuilt when the loader's add/remove counters move, and a replaced
//!   list, with the copies only it named, is freed once no walk holds it
//!   (hazard pointers, see `hazard`). framehop's rule
//!   cache makes repeated frames cheap, and the frames a walk shares with
//!   the slot's last walk (its outer frames, usually) are replayed from
//!   that walk when their registers and stack words are unchanged, without
//!   unwinding them again (`linux::replay`). Caches come from a small pool
//!   taken with a try-lock, so no thread ever waits for another.
//! - **Frame pointers**: follows the `rbp`/`x29` chain; faster, and right
//!   only when everything is built with `-C force-frame-pointers=yes`.
//!
//! Both read only memory proven inside the current thread's stack
//! (`[sp, stack top)`), so a broken chain ends the walk, never the process.
//! This runs inside the allocator but not in a signal handler: allocation
//! here is re-entrant (served unsampled) and the loader lock is fine. The
//! CPU profiler's handler uses [`signal`] instead (Linux), which shares the
//! walkers but neither allocates nor touches the loader.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Deepest stack kept by default.
pub const DEFAULT_MAX_FRAMES: usize = 64;
/// Deepest stack that can be asked for.
pub const MAX_FRAMES_LIMIT: usize = 128;

static MAX_FRAMES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_FRAMES);
static MODE: AtomicU8 = AtomicU8::new(0);

/// How stacks are walked at a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnwindMode {
    /// DWARF CFI from `.eh_frame`: correct with or without frame pointers.
    #[default]
    Dwarf,
    /// The frame-pointer chain: faster; correct only when every crate is
    /// built with `-C force-frame-pointers=yes`.
    FramePointers,
}

pub(crate) fn set_mode(mode: UnwindMode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

pub(crate) fn mode() -> UnwindMode {
    match MODE.load(Ordering::Relaxed) {
        1 => UnwindMode::FramePointers,
        _ => UnwindMode::Dwarf,
    }
}

pub(crate) fn set_max_frames(n: usize) -> usize {
    let n = n.clamp(1, MAX_FRAMES_LIMIT);
    MAX_FRAMES.store(n, Ordering::Relaxed);
    n
}

pub(crate) fn max_frames() -> usize {
    MAX_FRAMES.load(Ordering::Relaxed)
}

cfg_if::cfg_if! {
    if #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))] {
        mod hazard;
        mod linux;
        pub(crate) use linux::{
            capture, kept, loader_asks, mapped_bytes, thread_stack_bounds, walked_frames,
            warm_stack, SUPPORTED,
        };
        pub use linux::signal;
    } else {
        /// Stack capture is not implemented on this platform.
        pub(crate) const SUPPORTED: bool = false;

        pub(crate) fn capture(_buf: &mut [u64], _skip: usize) -> (usize, bool) {
            (0, false)
        }

        pub(crate) fn thread_stack_bounds() -> Option<(usize, usize)> {
            None
        }

        pub(crate) fn kept() -> (usize, usize, usize) {
            (0, 0, 0)
        }

        pub(crate) fn walked_frames() -> (u64, u64) {
            (0, 0)
        }

        pub(crate) fn warm_stack() {}

        pub(crate) fn mapped_bytes() -> u64 {
            0
        }

        pub(crate) fn loader_asks() -> u64 {
            0
        }
    }
}
