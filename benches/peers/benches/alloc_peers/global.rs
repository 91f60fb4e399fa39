//! The allocator of each process of the benchmark, chosen once per process.
//!
//! The realistic workload allocates through `#[global_allocator]`, so the
//! allocator under test has to be the global one. Every process of the
//! benchmark (the parent and one child per configuration) installs
//! [`Dispatch`], which reads [`MODE_VAR`] with `libc::getenv` at the first
//! allocation of the process (before `main`, and without allocating) and
//! forwards every call, for the life of the process, to the one allocator it
//! names. Because the environment is never modified by this program, every
//! read of the mode yields the same value: every block is freed, or
//! reallocated, by the allocator that allocated it.
//!
//! The pair and window workloads call the same statics ([`JEMALLOC`],
//! [`FERROPROF`], [`SYSTEM`], [`DHAT`]) directly, monomorphized, so that
//! their loops carry no dispatch branch.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

use ferroprof::{Jemalloc, SamplingAllocator};

/// The environment variable that names a child's configuration; unset in
/// the parent.
pub const MODE_VAR: &str = match MODE_VAR_C.to_str() {
    Ok(name) => name,
    Err(_) => panic!("the variable's name is ASCII"),
};
/// [`MODE_VAR`] for `getenv`.
const MODE_VAR_C: &CStr = c"ALLOC_PEERS_MODE";

/// One configuration under test: the allocator of one child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bare jemalloc (`prof:false`): the baseline of the jemalloc-based rows.
    Jemalloc,
    /// ferroprof's `SamplingAllocator<Jemalloc>`, default 512 KiB interval.
    Ferroprof,
    /// jemalloc with its own heap profiling on (`prof:true`,
    /// `lg_prof_sample:19`), set for this process through `_RJEM_MALLOC_CONF`.
    JemallocProf,
    /// The system allocator (glibc): dhat's baseline.
    System,
    /// `dhat::Alloc` over the system allocator, with a heap profiler running.
    Dhat,
}

impl Mode {
    /// Every configuration, in the order of the tables.
    pub const ALL: [Mode; 5] = [
        Mode::Jemalloc,
        Mode::Ferroprof,
        Mode::JemallocProf,
        Mode::System,
        Mode::Dhat,
    ];

    /// The value of [`MODE_VAR`] that selects this configuration.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Jemalloc => "jemalloc",
            Mode::Ferroprof => "ferroprof",
            Mode::JemallocProf => "jemalloc-prof",
            Mode::System => "system",
            Mode::Dhat => "dhat",
        }
    }

    /// The configuration named `name`, if any.
    pub fn from_name(name: &[u8]) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name().as_bytes() == name)
    }

    /// Position in [`Mode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The code kept in [`MODE`] (never [`UNREAD`] nor [`PARENT`]).
    const fn code(self) -> u8 {
        self as u8 + 1
    }
}

/// Bare jemalloc; also the allocator of the parent process.
pub static JEMALLOC: Jemalloc = Jemalloc;
/// ferroprof's sampling allocator over the same jemalloc.
pub static FERROPROF: SamplingAllocator<Jemalloc> = SamplingAllocator::new(Jemalloc);
/// The system allocator.
pub static SYSTEM: System = System;
/// dhat's allocator (the system allocator plus dhat's tracking).
pub static DHAT: dhat::Alloc = dhat::Alloc;

/// [`MODE`] before the first allocation has read the environment.
const UNREAD: u8 = 0;
/// [`MODE`] in the parent process ([`MODE_VAR`] unset or unknown).
const PARENT: u8 = u8::MAX;

/// The process's mode: [`UNREAD`], [`PARENT`] or a [`Mode::code`].
///
/// `Relaxed` everywhere: the value is a pure function of the environment,
/// which nothing changes, so a thread that reads [`UNREAD`] computes and
/// stores the same value any other thread does; nothing else is published
/// through it.
static MODE: AtomicU8 = AtomicU8::new(UNREAD);

/// The process's mode code, reading the environment on first use.
#[inline(always)]
fn code() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        UNREAD => read_mode(),
        code => code,
    }
}

/// Reads [`MODE_VAR`] without allocating and records it.
#[cold]
#[inline(never)]
fn read_mode() -> u8 {
    // SAFETY: `getenv` reads the environment, which this program never
    // modifies, so the returned pointer (null, or a NUL-terminated string)
    // stays valid while it is read below.
    let value = unsafe { libc::getenv(MODE_VAR_C.as_ptr()) };
    let code = if value.is_null() {
        PARENT
    } else {
        // SAFETY: non-null, NUL-terminated, valid (see above).
        let name = unsafe { CStr::from_ptr(value) };
        Mode::from_name(name.to_bytes()).map_or(PARENT, Mode::code)
    };
    MODE.store(code, Ordering::Relaxed);
    code
}

/// The configuration this process runs, `None` in the parent (which then
/// allocates from bare jemalloc).
pub fn process_mode() -> Option<Mode> {
    let code = code();
    Mode::ALL.into_iter().find(|m| m.code() == code)
}

/// Calls `$method` on the allocator of this process's mode.
macro_rules! forward {
    ($method:ident($($arg:expr),*)) => {{
        const FERROPROF_CODE: u8 = Mode::Ferroprof.code();
        const SYSTEM_CODE: u8 = Mode::System.code();
        const DHAT_CODE: u8 = Mode::Dhat.code();
        // SAFETY: the caller's guarantees, forwarded unchanged to the one
        // allocator this process uses for every call (the mode never
        // changes), so a block always goes back to the allocator that
        // handed it out.
        unsafe {
            match code() {
                FERROPROF_CODE => FERROPROF.$method($($arg),*),
                SYSTEM_CODE => SYSTEM.$method($($arg),*),
                DHAT_CODE => DHAT.$method($($arg),*),
                // Bare jemalloc, jemalloc with prof (configured for the
                // process through its environment), and the parent.
                _ => JEMALLOC.$method($($arg),*),
            }
        }
    }};
}

/// The global allocator of every process of the benchmark: forwards to the
/// allocator of the process's [`Mode`].
pub struct Dispatch;

// SAFETY: every method forwards to one allocator that honours the
// `GlobalAlloc` contract, the same one for the life of the process.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        forward!(alloc(layout))
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        forward!(alloc_zeroed(layout))
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        forward!(dealloc(ptr, layout))
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        forward!(realloc(ptr, layout, new_size))
    }
}
