//! `ferroprof top` prints exactly the flat and cum values, percentages and
//! order of a profile whose values are known, and the same rows as Google's
//! `pprof -top` prints for it. A file that is not a profile is an error
//! naming the file (exit status 1); a wrong command line is a usage error
//! (exit status 2).
//!
//! The profile: `a` calls `b` calls `c`, plus a stack where `a` recurses
//! (`a → b → a → c`), which must count once in `a`'s cum.
//!
//! | stack (root first) | samples | cpu   |
//! |--------------------|---------|-------|
//! | a;b;c              | 8       | 80ms  |
//! | a;b                | 4       | 40ms  |
//! | a                  | 2       | 20ms  |
//! | a;b;a;c            | 6       | 60ms  |
//!
//! so flat is c 140ms (70%), b 40ms (20%), a 20ms (10%), and cum is
//! a 200ms (100%, not 260ms), b 180ms (90%), c 140ms (70%).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferroprof::pprof::{encode, FrameLine, ProfileBuilder};
use support::scratch::Scratch;

const MS: i64 = 1_000_000;

/// The profile of the module docs, encoded (gzip).
fn known_profile() -> Vec<u8> {
    let mut b = ProfileBuilder::new(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"),
        10 * MS,
    );
    let mut location = |function| {
        b.location(
            0,
            0,
            &[FrameLine {
                function,
                system_name: "",
                file: "src/lib.rs",
                line: 1,
            }],
        )
    };
    let (a, bb, c) = (location("a"), location("b"), location("c"));
    b.sample(&[c, bb, a], &[8, 80 * MS], &[]);
    b.sample(&[bb, a], &[4, 40 * MS], &[]);
    b.sample(&[a], &[2, 20 * MS], &[]);
    b.sample(&[c, a, bb, a], &[6, 60 * MS], &[]);
    encode(&b.build())
}

/// The known profile written to `name` in `dir`.
fn known_profile_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, known_profile())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Runs the `ferroprof` command.
fn ferroprof(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroprof"))
        .args(args)
        .output()
        .expect("running ferroprof")
}

/// Runs `ferroprof top`, asserts success, and returns stdout.
fn top(args: &[&str]) -> String {
    let out = ferroprof(&[&["top"], args].concat());
    assert!(
        out.status.success(),
        "ferroprof top {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The rows of a `-top` table (ours or pprof's), each as its
/// whitespace-separated columns: flat, flat%, sum%, cum, cum%, function.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn row(columns: [&str; 6]) -> Vec<String> {
    columns.map(str::to_owned).to_vec()
}

#[test]
fn top_prints_the_known_values() {
    let dir = Scratch::new("viewer-top");
    let path = known_profile_file(dir.path(), "top_known.pprof");
    let file = path.to_str().unwrap();

    // cpu is the last sample type, so the default.
    let table = top(&[file]);
    let mut lines = table.lines();
    assert_eq!(lines.next(), Some("Type: cpu (nanoseconds), total 200ms"));
    assert_eq!(
        lines.next(),
        Some("Showing 3 of 3 functions, accounting for 200ms (100%)")
    );
    assert_eq!(
        rows(&table),
        [
            row(["140ms", "70.00%", "70.00%", "140ms", "70.00%", "c"]),
            row(["40ms", "20.00%", "90.00%", "180ms", "90.00%", "b"]),
            row(["20ms", "10.00%", "100%", "200ms", "100%", "a"]),
        ],
        "{table}"
    );

    let table = top(&[file, "--sample-index", "samples"]);
    assert!(
        table.starts_with("Type: samples (count), total 20\n"),
        "{table}"
    );
    assert_eq!(
        rows(&table),
        [
            row(["14", "70.00%", "70.00%", "14", "70.00%", "c"]),
            row(["4", "20.00%", "90.00%", "18", "90.00%", "b"]),
            row(["2", "10.00%", "100%", "20", "100%", "a"]),
        ],
        "{table}"
    );

    let table = top(&[file, "-n", "2"]);
    assert!(
        table.contains("\nShowing 2 of 3 functions, accounting for 180ms (90.00%)\n"),
        "{table}"
    );
    assert_eq!(rows(&table).len(), 2, "{table}");
}

/// Our rows are pprof's rows, column for column. Needs Go and pprof's
/// sources (`./.ci/setup`), as the other pprof tests do.
#[test]
fn top_prints_what_pprof_prints() {
    let dir = Scratch::new("viewer-top");
    let path = known_profile_file(dir.path(), "top_vs_pprof.pprof");
    for sample_index in ["cpu", "samples"] {
        let ours = top(&[path.to_str().unwrap(), "--sample-index", sample_index]);
        let pprofs = support::pprof_tools::pprof_top(&path, sample_index);
        assert_eq!(rows(&ours).len(), 3, "{ours}");
        assert_eq!(
            rows(&ours),
            rows(&pprofs),
            "ours:\n{ours}\npprof:\n{pprofs}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_profile_exits_1_naming_it() {
    let dir = Scratch::new("viewer-top");
    let path = dir.path().join("malformed.pprof");
    std::fs::write(&path, b"this is not a profile\n").unwrap();
    let file = path.to_str().unwrap();
    let out = ferroprof(&["top", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("ferroprof: cannot decode {file}: ")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    // Cut short: a gzip stream that ends early.
    let cut = known_profile();
    std::fs::write(&path, &cut[..cut.len() / 2]).unwrap();
    let out = ferroprof(&["top", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(file), "{stderr}");

    let missing = dir.path().join("missing.pprof");
    let missing = missing.to_str().unwrap();
    let out = ferroprof(&["top", missing]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("ferroprof: cannot read {missing}: ")),
        "{stderr}"
    );
}

#[test]
fn an_unknown_sample_type_exits_1_listing_the_known_ones() {
    let dir = Scratch::new("viewer-top");
    let path = known_profile_file(dir.path(), "unknown_type.pprof");
    let out = ferroprof(&[
        "top",
        path.to_str().unwrap(),
        "--sample-index",
        "inuse_space",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no sample type \"inuse_space\"; it has: samples, cpu"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = Scratch::new("viewer-top");
    let path = known_profile_file(dir.path(), "usage.pprof");
    let file = path.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&[], "no command given"),
        (&["top"], "top needs a profile FILE"),
        (&["show", file], "unknown command \"show\""),
        (&["top", file, "-n", "many"], "-n \"many\" is not a number"),
        (
            &["top", file, "--color"],
            "unknown option \"--color\" for top",
        ),
        (&["flamegraph", file], "flamegraph needs -o OUT.svg"),
    ];
    for (args, message) in cases {
        let out = ferroprof(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("ferroprof: {message}")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("usage: ferroprof top FILE"), "{stderr}");
    }

    let help = ferroprof(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("ferroprof flamegraph FILE -o OUT.svg"),
        "{help}"
    );
}
