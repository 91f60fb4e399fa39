//! The symbolizer reads DWARF: a C library built with `-g -O2` and loaded
//! with `dlopen` after the symbolizer first listed the modules. An address
//! inside a function inlined into another resolves to both, innermost
//! first, with their files and lines, in a mapping that names the library
//! and its build id.

mod support;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use ferroprof::pprof::Symbolizer;
use support::scratch::Scratch;

const SOURCE: &str = r#"typedef void (*callback)(void);

static inline __attribute__((always_inline)) void inlined_helper(callback cb) {
    cb(); /* line 4 */
}

__attribute__((noinline)) void outer_function(callback cb) {
    inlined_helper(cb); /* line 8 */
    __asm__ volatile("" ::: "memory");
}
"#;

/// The stack `callback` was called with; one of its return addresses is
/// inside `inlined_helper`, inlined into `outer_function`.
static STACK: Mutex<Vec<u64>> = Mutex::new(Vec::new());

extern "C" fn callback() {
    let mut stack = Vec::new();
    backtrace::trace(|frame| {
        stack.push(frame.ip() as u64);
        stack.len() < 16
    });
    *STACK.lock().unwrap() = stack;
}

/// Builds [`SOURCE`] into `libinl.so` in `dir`; returns its path.
fn build_library(dir: &Path) -> PathBuf {
    let source = dir.join("inl.c");
    let library = dir.join("libinl.so");
    std::fs::write(&source, SOURCE).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-g", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("a C compiler (`cc`; ./.ci/setup installs build-essential)");
    assert!(status.success(), "cc failed");
    library
}

#[test]
fn symbols_read_dwarf_inline_chains() {
    let dir = Scratch::in_target("inline-chain");
    let library = build_library(dir.path());
    let mut symbolizer = Symbolizer::default();
    // The module list is read now, before the library is loaded.
    let here = symbols_read_dwarf_inline_chains as *const () as u64;
    assert!(symbolizer.resolve(here).mapping.is_some());
    symbolizer.end_batch();

    let path = CString::new(library.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; the library has no constructors.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!handle.is_null(), "dlopen {}", library.display());
    // SAFETY: a handle from dlopen and a NUL-terminated name.
    let outer = unsafe { libc::dlsym(handle, c"outer_function".as_ptr()) };
    assert!(!outer.is_null());
    // SAFETY: `outer_function` has this signature (see SOURCE).
    let outer: extern "C" fn(extern "C" fn()) = unsafe { std::mem::transmute(outer) };
    outer(callback);
    let stack = STACK.lock().unwrap().clone();
    // The return address into the library (the frames above and below it
    // are this test's).
    let in_library = |s: &mut Symbolizer, ret: u64| {
        s.resolve(ret - 1)
            .mapping
            .as_ref()
            .is_some_and(|m| *m.path == *library.to_str().unwrap())
    };
    let ret = *stack
        .iter()
        .find(|&&ret| in_library(&mut symbolizer, ret))
        .unwrap_or_else(|| panic!("no frame of the stack {stack:x?} is in the library"));

    let symbol = symbolizer.resolve(ret - 1).clone();
    let mapping = symbol.mapping.as_ref().unwrap();
    assert!(mapping.has_lines);
    assert!(!mapping.build_id.is_empty(), "{mapping:?}");
    assert!((mapping.start..mapping.limit).contains(&(ret - 1)));
    let chain: Vec<(&str, &str, u32)> = symbol
        .frames
        .iter()
        .map(|f| (&*f.function, &*f.file, f.line))
        .collect();
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!((chain[0].0, chain[0].2), ("inlined_helper", 4), "{chain:?}");
    assert_eq!((chain[1].0, chain[1].2), ("outer_function", 8), "{chain:?}");
    assert!(
        chain.iter().all(|(_, file, _)| file.ends_with("inl.c")),
        "{chain:?}"
    );
    assert!(symbolizer.stats().module_scans >= 2);
}
