//! Fixed-size, zero-initialised arrays of atomics for the tables.
//!
//! The tables are created from inside the global allocator, so their memory
//! comes straight from `mmap` (anonymous pages are zero, and an all-zero
//! atomic is a valid atomic): nothing is touched until it is used, and
//! nothing depends on the allocator being wrapped. Under loom the atomics
//! must be built by loom, so the storage is a `Vec` of constructed values.

use core::ops::Deref;

/// A value whose all-zero bit pattern is valid and means "empty".
///
/// # Safety
///
/// Implementors guarantee that all-zero bytes are a valid value of `Self`
/// equal to `Self::zeroed()`.
pub(crate) unsafe trait Zeroed: Sized {
    /// The empty value (only called under loom).
    #[allow(dead_code)]
    fn zeroed() -> Self;
}

/// A boxed slice of `T` allocated without the global allocator.
pub(crate) struct ZeroedSlice<T: Zeroed> {
    #[cfg(not(loom))]
    ptr: core::ptr::NonNull<T>,
    #[cfg(not(loom))]
    len: usize,
    #[cfg(loom)]
    items: Vec<T>,
}

// SAFETY: the slice owns its elements like a `Box<[T]>`; sending or sharing it
// is exactly as safe as sending or sharing the `T`s.
unsafe impl<T: Zeroed + Send> Send for ZeroedSlice<T> {}
// SAFETY: as above; shared access only hands out `&T`.
unsafe impl<T: Zeroed + Sync> Sync for ZeroedSlice<T> {}

impl<T: Zeroed> ZeroedSlice<T> {
    /// Maps `len` zeroed elements; `None` when the memory cannot be had.
    #[cfg(not(loom))]
    pub(crate) fn new(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(core::mem::size_of::<T>())?.max(1);
        let ptr = crate::sys::map_anonymous(bytes)?;
        Some(ZeroedSlice {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Builds `len` empty elements.
    #[cfg(loom)]
    pub(crate) fn new(len: usize) -> Option<Self> {
        Some(ZeroedSlice {
            items: (0..len).map(|_| T::zeroed()).collect(),
        })
    }

    /// Bytes of address space this slice occupies.
    pub(crate) fn footprint(&self) -> usize {
        core::mem::size_of_val::<[T]>(self)
    }
}

impl<T: Zeroed> Deref for ZeroedSlice<T> {
    type Target = [T];

    #[cfg(not(loom))]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` elements mapped by `new`, zero-filled
        // by the kernel, which `T: Zeroed` promises is a valid `T`; they stay
        // mapped until `drop`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    #[cfg(loom)]
    fn deref(&self) -> &[T] {
        &self.items
    }
}

#[cfg(not(loom))]
impl<T: Zeroed> Drop for ZeroedSlice<T> {
    fn drop(&mut self) {
        let bytes = (self.len * core::mem::size_of::<T>()).max(1);
        // SAFETY: this is the mapping `new` created, and `&mut self` proves no
        // reference into it is alive.
        unsafe { crate::sys::unmap(self.ptr.cast(), bytes) };
    }
}
