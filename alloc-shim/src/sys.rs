//! The few system calls the allocator makes itself, with return codes checked.
//!
//! Everything here is called from inside the global allocator, so it must not
//! allocate through it: these are thin wrappers over `libc`.

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

/// Reserves `bytes` of address space with no access and no commit charge.
pub(crate) fn reserve(bytes: usize) -> Option<NonNull<u8>> {
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

/// Reserves `size` bytes of address space aligned to `size` (a power of
/// two), with no access and no commit charge; returns the start. Reserves
/// twice the size and gives back the unaligned ends.
pub(crate) fn reserve_aligned(size: usize) -> Option<usize> {
    let twice = size.checked_mul(2)?;
    let start = reserve(twice)?.as_ptr() as usize;
    let aligned = (start + size - 1) & !(size - 1);
    let head = aligned - start;
    let tail = twice - head - size;
    for (at, bytes) in [(start, head), (aligned + size, tail)] {
        if let Some(ptr) = NonNull::new(at as *mut u8).filter(|_| bytes > 0) {
            // SAFETY: a part of the mapping just made, not referenced.
            unsafe { unmap(ptr, bytes) };
        }
    }
    Some(aligned)
}

/// Makes `[addr, addr + bytes)` of a reservation readable and writable.
///
/// # Safety
///
/// The range must lie inside a mapping made by [`reserve`].
pub(crate) unsafe fn commit(addr: usize, bytes: usize) -> bool {
    // SAFETY: the caller guarantees the range is ours; changing protection
    // from none to read-write cannot invalidate any reference.
    unsafe {
        libc::mprotect(
            addr as *mut libc::c_void,
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
        ) == 0
    }
}

/// Gives the physical pages of `[addr, addr + bytes)` back; they read as zero
/// afterwards.
///
/// # Safety
///
/// The range must be committed memory of ours that nobody uses any more.
pub(crate) unsafe fn discard(addr: usize, bytes: usize) {
    // SAFETY: the caller guarantees nobody relies on the contents.
    unsafe { libc::madvise(addr as *mut libc::c_void, bytes, libc::MADV_DONTNEED) };
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
