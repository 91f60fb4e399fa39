//! The demo, the repository's main job, run for a few seconds: every batch
//! it writes is read by Google's pprof, its flame graphs are well-formed
//! SVG naming the demo's own hot functions, and it prints the paths it
//! wrote.
//!
//! The test builds the demo with the profile it was built with (into the
//! same target folder) and runs it.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::scratch::Scratch;
use support::xml::xml_texts;

/// `target/<profile>/examples/demo`, beside this test's `deps/` folder,
/// built first: `cargo test` builds the examples only when it runs every
/// target, and a stale demo would test old code.
///
/// The build must find everything `cargo test --workspace` (the suite's
/// command) just built, or it rebuilds much of the tree for this test and
/// the next `cargo test` rebuilds it back (70 s of CI each time). So it
/// resolves features over the whole workspace, as that command does (for
/// the package alone Cargo unifies them differently), and it does not pass
/// on the variables Cargo sets for a test (`CARGO_MANIFEST_DIR`, …): a
/// build script that watches one of them (ring's does) would run again.
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "--workspace",
        "--example",
        "demo",
    ]);
    if release {
        build.arg("--release");
    }
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "OUT_DIR"
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_CRATE_")
            || name.starts_with("CARGO_BIN_")
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
        {
            build.env_remove(&*name);
        }
    }
    if let Some(target) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example demo failed");
    let demo = profile_dir.join("examples").join("demo");
    assert!(demo.is_file(), "{} is missing", demo.display());
    demo
}

#[test]
fn the_demo_writes_profiles_pprof_reads_and_flame_graphs() {
    let scratch = Scratch::new("demo-test");
    // Not made yet: the demo makes it.
    let out = scratch.path().join("out");
    let output = Command::new(demo_binary())
        .args(["--seconds", "4", "--period", "2", "--out"])
        .arg(&out)
        // No agent: the demo only writes.
        .env_remove("DD_TRACE_AGENT_URL")
        .env_remove("DD_AGENT_HOST")
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stderr}\n{stdout}");

    let mut batches: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    batches.sort();
    assert!(batches.len() >= 2, "{batches:?}");
    for batch in &batches {
        assert!(
            stdout.contains(&format!("{}/", batch.display())),
            "{stdout}"
        );
        for file in [
            "cpu.pprof",
            "delta-heap.pprof",
            "metrics.json",
            "event.json",
        ] {
            assert!(batch.join(file).is_file(), "{}: no {file}", batch.display());
        }
        let cpu = support::pprof_tools::check(&batch.join("cpu.pprof"));
        assert_eq!(cpu.sample_types, ["samples/count", "cpu/nanoseconds"]);
        let heap = support::pprof_tools::check(&batch.join("delta-heap.pprof"));
        assert_eq!(heap.sample_types.len(), 4);
    }

    for (svg, function) in [
        ("cpu.svg", "demo::count_primes"),
        ("heap-inuse.svg", "demo::cache_value"),
    ] {
        let path = out.join(svg);
        assert!(stdout.contains(&path.display().to_string()), "{stdout}");
        let text = std::fs::read_to_string(&path).unwrap();
        let texts = xml_texts(&text).unwrap_or_else(|e| panic!("{svg} is not well-formed: {e}"));
        assert!(
            texts
                .iter()
                .any(|(element, t)| element == "title" && t.starts_with(function)),
            "{svg} has no frame {function}"
        );
    }
    // Both top tables are printed (which functions lead them depends on
    // inlining, so a debug build differs from a release one).
    assert!(stdout.contains("== top 10, CPU"), "{stdout}");
    assert!(stdout.contains("== top 10, in-use heap"), "{stdout}");
}
