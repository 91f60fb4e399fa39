//! Helpers shared by the integration tests. A test file takes them with
//! `mod support;` and uses, say, `support::pprof_tools::check`; a new helper
//! goes in its own file here, declared below.

use std::path::{Path, PathBuf};

pub mod clocks;
pub mod fake_agent;
pub mod pprof_tools;
pub mod scratch;
pub mod stats;
pub mod test_agent;
pub mod xml;

/// Cargo's target directory: the parent of this test's
/// `CARGO_TARGET_TMPDIR` (`<target>/tmp`), or, where Cargo did not set that,
/// the directory above `<target>/<profile>/deps/<test binary>`.
pub fn target_dir() -> PathBuf {
    if let Some(tmp) = option_env!("CARGO_TARGET_TMPDIR") {
        if let Some(parent) = Path::new(tmp).parent() {
            return parent.to_path_buf();
        }
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()))
        .to_path_buf()
}
