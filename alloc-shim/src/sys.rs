//! The few system calls the allocator makes itself, with return codes checked.
//!
//! Everything here is called from inside the global allocator, so it must not
//! allocate through it: these are thin wrappers over `libc`. Pointers into
//! mappings are derived from the pointer `mmap` returned, never made from
//! integers, so the region passes Miri's strict-provenance checks.
//!
//! Under Miri the region's reservation, commit and discard are replaced by an
//! ordinary allocation that behaves the same way for the code above it (see
//! the `cfg_if` below); `map_anonymous` and `unmap` are Miri's own `mmap`.

use core::ptr::NonNull;

/// Maps `bytes` of fresh, zeroed, read-write anonymous memory.
pub(crate) fn map_anonymous(bytes: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing cannot alias any existing memory.
    let ptr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(ptr.cast())
    }
}

cfg_if::cfg_if! {
    if #[cfg(miri)] {
        // Miri cannot reserve address space without memory (PROT_NONE,
        // MAP_NORESERVE, mprotect, madvise), so under it the region's window
        // is an ordinary zeroed allocation, already readable and writable,
        // of the (smaller, see `region`) window size. The region's logic on
        // top of these three calls is unchanged.

        /// Allocates `size` zeroed bytes aligned to `size` from the system
        /// allocator (never the wrapped global one); returns the start.
        pub(crate) fn reserve_aligned(size: usize) -> Option<NonNull<u8>> {
            use std::alloc::{GlobalAlloc, Layout, System};
            let layout = Layout::from_size_align(size, size).ok()?;
            // SAFETY: `layout` has a non-zero size (the window).
            NonNull::new(unsafe { System.alloc_zeroed(layout) })
        }

        /// The allocation is read-write from the start: nothing to do.
        ///
        /// # Safety
        ///
        /// As for the native `commit`: the range lies inside the window.
        pub(crate) unsafe fn commit(_addr: *mut u8, _bytes: usize) -> bool {
            true
        }

        /// Zeroes the range, which is what `MADV_DONTNEED` makes it read as.
        ///
        /// # Safety
        ///
        /// As for the native `discard`: committed memory of ours that nobody
        /// uses any more.
        pub(crate) unsafe fn discard(addr: *mut u8, bytes: usize) {
            // SAFETY: the caller guarantees the range is ours and unused.
            unsafe { addr.write_bytes(0, bytes) };
        }
    } else {
        /// Reserves `bytes` of address space with no access and no commit charge.
        fn reserve(bytes: usize) -> Option<NonNull<u8>> {
            // SAFETY: as in `map_anonymous`; PROT_NONE pages cannot be touched.
            let ptr = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    bytes,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                None
            } else {
                NonNull::new(ptr.cast())
            }
        }

        /// Reserves `size` bytes of address space aligned to `size` (a power
        /// of two), with no access and no commit charge; returns the start,
        /// a pointer derived from the mapping. Reserves twice the size and
        /// gives back the unaligned ends.
        pub(crate) fn reserve_aligned(size: usize) -> Option<NonNull<u8>> {
            let twice = size.checked_mul(2)?;
            let start = reserve(twice)?;
            let head = start.as_ptr().addr().wrapping_neg() & (size - 1);
            let tail = twice - head - size;
            // `head < size`, so both stay inside the mapping of `twice` bytes.
            let aligned = start.as_ptr().wrapping_add(head);
            for (at, bytes) in [(start.as_ptr(), head), (aligned.wrapping_add(size), tail)] {
                if let Some(ptr) = NonNull::new(at).filter(|_| bytes > 0) {
                    // SAFETY: a part of the mapping just made, not referenced.
                    unsafe { unmap(ptr, bytes) };
                }
            }
            NonNull::new(aligned)
        }

        /// Makes `[addr, addr + bytes)` of a reservation readable and writable.
        ///
        /// # Safety
        ///
        /// The range must lie inside a mapping made by [`reserve_aligned`].
        pub(crate) unsafe fn commit(addr: *mut u8, bytes: usize) -> bool {
            // SAFETY: the caller guarantees the range is ours; changing
            // protection from none to read-write cannot invalidate any reference.
            unsafe {
                libc::mprotect(addr.cast(), bytes, libc::PROT_READ | libc::PROT_WRITE) == 0
            }
        }

        /// Gives the physical pages of `[addr, addr + bytes)` back; they read
        /// as zero afterwards.
        ///
        /// # Safety
        ///
        /// The range must be committed memory of ours that nobody uses any more.
        pub(crate) unsafe fn discard(addr: *mut u8, bytes: usize) {
            // SAFETY: the caller guarantees nobody relies on the contents.
            unsafe { libc::madvise(addr.cast(), bytes, libc::MADV_DONTNEED) };
        }
    }
}

/// Unmaps `[ptr, ptr + bytes)`, all or part of a mapping made here.
///
/// # Safety
///
/// The range must belong to a mapping of ours that nothing references.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, bytes: usize) {
    // SAFETY: the caller guarantees the mapping is ours and unused.
    unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
}
