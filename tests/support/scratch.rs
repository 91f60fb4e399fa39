//! Scratch folders: a test that writes files (profiles to check, output
//! folders for the profiler, a library to build, a Unix socket) takes a
//! [`Scratch`], which is fresh and empty, its own, and gone again when the
//! test passes.
//!
//! ```ignore
//! let dir = Scratch::new("heap-sites");
//! let path = dir.path().join("heap.pprof");
//! // ... write and check `path`; on drop the folder is removed, or kept
//! // (and its path printed) if the test panicked.
//! ```
//!
//! - Where: `<std::env::temp_dir()>/ferroprof-<name>-<pid>-<n>`, `n`
//!   counting the scratch folders of this process, so tests running at the
//!   same time, in one process or in several, never share one. The root is
//!   the system's temporary folder and not Cargo's `CARGO_TARGET_TMPDIR`
//!   (which every user here, an integration test, could also have) because
//!   a Unix socket's path must fit in 108 bytes (`sun_path`), and
//!   `uploads_go_through_a_unix_socket` puts one in its folder: a target
//!   directory can be nested arbitrarily deep, `/tmp` is short. A test
//!   that runs or `dlopen`s what it builds there
//!   (`symbols_read_dwarf_inline_chains`) uses [`Scratch::in_target`]
//!   instead, since the temporary folder may be mounted `noexec`.
//! - Fresh: a folder left at that path by an earlier process with the same
//!   pid (one that panicked, say) is removed first.
//! - Dropping a [`Scratch`] removes the folder, unless the thread is
//!   panicking: a failed test keeps its files for diagnosis and prints where
//!   they are (on stderr, which the test harness shows with the failure).
//!   Only the process that made it removes it: a child forked while a
//!   [`Scratch`] is alive (`fork_while_profiling`) leaves the parent's
//!   folder alone even if it drops its copy.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh, empty folder of this test's own; see the module docs for where
/// it is and when it is removed.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    /// The process that made the folder, the only one to remove it.
    owner: u32,
}

impl Scratch {
    /// Makes a fresh, empty folder whose name starts with
    /// `ferroprof-<name>-`; `name` says which test it is for, to whoever
    /// finds it kept after a failure. Panics if it cannot be made.
    pub fn new(name: &str) -> Scratch {
        Scratch::under(&std::env::temp_dir(), name)
    }

    /// As [`Scratch::new`], under Cargo's `CARGO_TARGET_TMPDIR` (inside the
    /// target directory, where built code surely may run) instead of the
    /// system's temporary folder.
    pub fn in_target(name: &str) -> Scratch {
        Scratch::under(Path::new(env!("CARGO_TARGET_TMPDIR")), name)
    }

    fn under(root: &Path, name: &str) -> Scratch {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let owner = std::process::id();
        let path = root.join(format!("ferroprof-{name}-{owner}-{n}"));
        // Left by an earlier process with this pid; a failure to remove it
        // shows as `create_dir` failing below.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Scratch { path, owner }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
        if std::thread::panicking() {
            eprintln!("kept for diagnosis: {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("removing {}: {e}", self.path.display());
        }
    }
}
