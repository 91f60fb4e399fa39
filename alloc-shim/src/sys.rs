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

/// The time of `clock` in nanoseconds (0 if the clock cannot be read).
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; on failure it stays zero.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
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
        /// Reserves `bytes` of address space with no access and no commit
        /// charge, at `hint` if that range is free (a hint only, never
        /// `MAP_FIXED`: the kernel places it elsewhere otherwise).
        fn reserve(hint: *mut libc::c_void, bytes: usize) -> Option<NonNull<u8>> {
            // SAFETY: as in `map_anonymous`: without MAP_FIXED the kernel
            // never places a mapping over an existing one, whatever the
            // hint; PROT_NONE pages cannot be touched.
            let ptr = unsafe {
                libc::mmap(
                    hint,
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
        /// a pointer derived from the mapping.
        ///
        /// First it asks for exactly `size` bytes at an aligned address next
        /// to where the kernel places mappings now (that range is usually
        /// free); if the kernel puts it elsewhere, that mapping is given
        /// back and it reserves twice the size and gives back the unaligned
        /// ends. The first way maps a third of the address space the second
        /// maps and unmaps, which is what an emulator like qemu-user pays
        /// for page by page (about 30 s for the second way under qemu 7.2);
        /// for the kernel both are a few system calls.
        pub(crate) fn reserve_aligned(size: usize) -> Option<NonNull<u8>> {
            reserve_near_mappings(size).or_else(|| reserve_twice_and_trim(size))
        }

        /// [`reserve_aligned`]'s first way: `size` bytes at a hint, the
        /// aligned range just below where the kernel places a small mapping
        /// now (mappings grow down from there), else the one just above it
        /// (where they grow up: the legacy layout, qemu-user's guests).
        fn reserve_near_mappings(size: usize) -> Option<NonNull<u8>> {
            let probe = reserve(core::ptr::null_mut(), 1)?;
            let at = probe.as_ptr().addr();
            // SAFETY: the probe was just made and nothing references it.
            unsafe { unmap(probe, 1) };
            let below = (at & !(size - 1)).checked_sub(size).filter(|&hint| hint > 0);
            let above = (at | (size - 1)).checked_add(1);
            for hint in [below, above].into_iter().flatten() {
                // An address only, never dereferenced: pointers come from
                // the mapping returned.
                let ptr = reserve(core::ptr::without_provenance_mut(hint), size)?;
                if ptr.as_ptr().addr() == hint {
                    return Some(ptr);
                }
                // SAFETY: the mapping was just made and nothing references it.
                unsafe { unmap(ptr, size) };
            }
            None
        }

        /// [`reserve_aligned`]'s second way: twice the size, then trimmed.
        fn reserve_twice_and_trim(size: usize) -> Option<NonNull<u8>> {
            let twice = size.checked_mul(2)?;
            let start = reserve(core::ptr::null_mut(), twice)?;
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

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    fn assert_aligned_and_unmap(ptr: NonNull<u8>, size: usize) {
        assert_eq!(
            ptr.as_ptr().addr() % size,
            0,
            "{ptr:p} is not aligned to {size:#x}"
        );
        // SAFETY: a reservation made by the test, referenced by nothing.
        unsafe { unmap(ptr, size) };
    }

    #[test]
    fn both_ways_of_reserving_give_aligned_ranges() {
        // Tests running alongside map and unmap: the GiB next to the
        // mappings may be taken between the probe and the reservation (seen
        // under qemu-user), so a few tries.
        let near = (0..8)
            .find_map(|_| reserve_near_mappings(GIB))
            .expect("a free GiB next to the mappings");
        let twice = reserve_twice_and_trim(GIB).expect("two GiB of address space");
        assert_ne!(near, twice);
        assert_aligned_and_unmap(near, GIB);
        assert_aligned_and_unmap(twice, GIB);
    }

    #[test]
    fn reservations_are_disjoint_and_usable_once_committed() {
        let a = reserve_aligned(GIB).expect("a reservation");
        let b = reserve_aligned(GIB).expect("a second reservation");
        let (lo, hi) = (
            a.as_ptr().addr().min(b.as_ptr().addr()),
            a.as_ptr().addr().max(b.as_ptr().addr()),
        );
        assert!(hi - lo >= GIB, "{a:p} and {b:p} overlap");
        for ptr in [a, b] {
            // SAFETY: the first page of a reservation of ours, nothing else
            // uses it; after the commit it is read-write and zeroed.
            unsafe {
                assert!(commit(ptr.as_ptr(), 4096));
                assert_eq!(ptr.as_ptr().read(), 0);
                ptr.as_ptr().write(7);
                assert_eq!(ptr.as_ptr().read(), 7);
            }
            assert_aligned_and_unmap(ptr, GIB);
        }
    }
}
