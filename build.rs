//! Records the version of the rustc building the crate (Datadog's
//! `runtime_version` tag) and decides, once, whether the CPU profiler is
//! built: `cfg(ferroprof_cpu)` when the `cpu` feature is on and the target
//! is Linux on x86_64 or aarch64.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        // "rustc 1.91.0 (f8297e351 2025-10-28)" -> "1.91.0"
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FERROPROF_RUSTC_VERSION={version}");
    println!("cargo:rustc-check-cfg=cfg(ferroprof_cpu)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if std::env::var_os("CARGO_FEATURE_CPU").is_some()
        && os == "linux"
        && matches!(arch.as_str(), "x86_64" | "aarch64")
    {
        println!("cargo:rustc-cfg=ferroprof_cpu");
    }
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
