//! The `window` workload, shared by `benches/ferroprof/benches/alloc.rs` and
//! `examples/alloc_overhead.rs` so both measure the same thing: a ring of
//! [`RING`] live blocks whose sizes follow a fixed, service-like mix.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::OnceLock;

/// Live blocks in the `window` ring (a power of two).
pub const RING: usize = 4096;
/// Length of the precomputed size sequence (a power of two).
pub const SIZES: usize = 1 << 14;
/// Alignment of every benchmark block, as for a `Box<u64>` or `Vec<u64>`.
pub const ALIGN: usize = 8;

/// The layout of a benchmark block of `size` bytes.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("benchmark sizes are valid layouts")
}

/// The `window` size sequence: a fixed-seed draw from the mix, the same for
/// every run and both allocators.
pub fn sizes() -> &'static [u32] {
    static SEQ: OnceLock<Vec<u32>> = OnceLock::new();
    SEQ.get_or_init(|| {
        // xorshift64* (Vigna) with a fixed seed.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
        };
        (0..SIZES)
            .map(|_| {
                let (roll, r) = (next() % 1024, next() as u32);
                match roll {
                    0..=7 => 64 << 10,          // 1/128: 64 KiB
                    8..=519 => 8 + r % 57,      // 1/2: 8..=64
                    520..=839 => 65 + r % 192,  // 5/16: 65..=256
                    840..=975 => 257 + r % 768, // ~13%: 257..=1024
                    _ => 1025 + r % 3072,       // ~5%: 1025..=4096
                }
            })
            .collect()
    })
}

/// A ring of [`RING`] live blocks from `A`; each [`Window::step`] frees the
/// oldest and allocates the next size of [`sizes`] in its place.
pub struct Window<'a, A: GlobalAlloc> {
    alloc: &'a A,
    ring: Vec<(*mut u8, Layout)>,
    head: usize,
    sizes: &'static [u32],
    next: usize,
}

impl<'a, A: GlobalAlloc> Window<'a, A> {
    /// A full ring; `start` offsets this ring's walk through the sizes.
    pub fn new(alloc: &'a A, start: usize) -> Self {
        let sizes = sizes();
        let ring = (0..RING)
            .map(|i| {
                let layout = layout(sizes[(start + i) % SIZES] as usize);
                // SAFETY: a non-zero size; the block is freed by `step` or
                // `drop` with this layout.
                let p = unsafe { alloc.alloc(layout) };
                if p.is_null() {
                    handle_alloc_error(layout);
                }
                (p, layout)
            })
            .collect();
        Window {
            alloc,
            ring,
            head: 0,
            sizes,
            next: (start + RING) % SIZES,
        }
    }

    #[inline(always)]
    pub fn step(&mut self) {
        let slot = &mut self.ring[self.head];
        let layout = layout(self.sizes[self.next] as usize);
        // SAFETY: `slot` holds a live block of `self.alloc` and its layout,
        // replaced at once by a new live block; the new layout has a
        // non-zero size.
        unsafe {
            self.alloc.dealloc(slot.0, slot.1);
            let p = self.alloc.alloc(layout);
            if p.is_null() {
                handle_alloc_error(layout);
            }
            *slot = (black_box(p), layout);
        }
        self.head = (self.head + 1) & (RING - 1);
        self.next = (self.next + 1) & (SIZES - 1);
    }
}

impl<A: GlobalAlloc> Drop for Window<'_, A> {
    fn drop(&mut self) {
        for &(p, layout) in &self.ring {
            // SAFETY: every slot holds a live block of `self.alloc` with its
            // layout, freed once here.
            unsafe { self.alloc.dealloc(p, layout) };
        }
    }
}
