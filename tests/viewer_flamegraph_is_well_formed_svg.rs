//! `ferroprof flamegraph` writes a well-formed SVG that names every
//! function of the profile, with the characters XML reserves (`<`, `&`,
//! common in Rust names such as `Vec<T>::push`) escaped, and it reads
//! profiles written by Go's pprof as well as ferroprof's own.
//!
//! Well-formed is checked by a small XML reader below ([`xml_texts`]):
//! every element closed in order, one root, attributes quoted and unique,
//! entities known, comments and CDATA closed. It is no validating parser,
//! but it is what a browser's XML parser refuses an SVG for.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferroprof::pprof::{encode, FrameLine, ProfileBuilder};
use ferroprof::view;
use support::scratch::Scratch;
use support::xml::xml_texts;

/// Runs `ferroprof` and asserts it succeeds.
fn ferroprof(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroprof"))
        .args(args)
        .output()
        .expect("running ferroprof");
    assert!(
        out.status.success(),
        "ferroprof {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ferroprof flamegraph <file> -o <file>.svg <extra>`; returns the SVG.
fn flamegraph(profile: &Path, extra: &[&str]) -> String {
    let svg = profile.with_extension("svg");
    let args = [
        &[
            "flamegraph",
            profile.to_str().unwrap(),
            "-o",
            svg.to_str().unwrap(),
        ],
        extra,
    ]
    .concat();
    ferroprof(&args);
    std::fs::read_to_string(&svg).unwrap_or_else(|e| panic!("reading {}: {e}", svg.display()))
}

#[test]
fn names_with_xml_characters_are_escaped() {
    let mut b = ProfileBuilder::new(&[("alloc_space", "bytes")], ("space", "bytes"), 1);
    let mut location = |function| {
        b.location(
            0,
            0,
            &[FrameLine {
                function,
                system_name: "",
                file: "src/main.rs",
                line: 1,
            }],
        )
    };
    let main = location("main");
    let push = location("Vec<T>::push");
    let and = location("a&b");
    let fmt = location("<[u8; 8] as Debug>::fmt");
    b.sample(&[push, main], &[1024], &[]);
    b.sample(&[and, main], &[512], &[]);
    b.sample(&[fmt, and, main], &[512], &[]);
    let dir = Scratch::new("viewer-flamegraph");
    let path = dir.path().join("escapes.pprof");
    std::fs::write(&path, encode(&b.build())).unwrap();

    let svg = flamegraph(&path, &["--title", "known <profile> & co"]);
    let texts = xml_texts(&svg).unwrap_or_else(|e| panic!("malformed SVG: {e}\n{svg}"));
    assert!(svg.contains("Vec&lt;T&gt;::push"), "escaped in the SVG");
    assert!(svg.contains("a&amp;b"), "escaped in the SVG");

    assert!(
        texts
            .iter()
            .any(|(element, text)| element == "text" && text == "known <profile> & co"),
        "the title: {texts:?}"
    );
    let titles: Vec<&str> = texts
        .iter()
        .filter(|(element, _)| element == "title")
        .map(|(_, text)| text.as_str())
        .collect();
    // `;` would split the frame in the folded stacks: it reads `:`.
    for name in ["main", "Vec<T>::push", "a&b", "<[u8: 8] as Debug>::fmt"] {
        assert!(
            titles.iter().any(|t| t.starts_with(&format!("{name} ("))),
            "no frame named {name:?} in {titles:?}"
        );
    }
    assert!(
        titles
            .iter()
            .any(|t| t.starts_with("main (2,048 bytes, 100")),
        "main is the whole profile, counted in bytes: {titles:?}"
    );
}

/// Where Debian's `golang-github-google-pprof-dev` puts pprof's test
/// profiles. Most of them are legacy text or binary formats, which ferroprof
/// does not read; the profile.proto ones among them are gzipped.
const GO_TESTDATA: &[&str] = &[
    "/usr/share/gocode/src/github.com/google/pprof/internal/driver/testdata",
    "/usr/share/gocode/src/github.com/google/pprof/profile/testdata",
];

/// The gzipped (so profile.proto, not legacy) profiles in [`GO_TESTDATA`].
fn go_profiles() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in GO_TESTDATA {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let gzipped = std::fs::read(&path).is_ok_and(|b| b.starts_with(&[0x1f, 0x8b]));
            if gzipped {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Go's profiles: `top` prints the flat and cum values Google's parser
/// finds (through `tests/pprof-check`, built with Go like the other pprof
/// tests), and `flamegraph` draws them. With no pprof test data installed
/// (`golang-github-google-pprof-dev`, which `./.ci/setup` installs) there
/// is nothing to read and the test says so.
#[test]
fn go_profiles_are_read() {
    let profiles = go_profiles();
    if profiles.is_empty() {
        eprintln!("skipped: no gzipped profile.proto test data in {GO_TESTDATA:?}");
        return;
    }
    let dir = Scratch::new("viewer-flamegraph");
    for path in profiles {
        let profile = view::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let index = view::sample_index(&profile, None).unwrap();
        let top = view::top(&profile, index);
        let report = support::pprof_tools::check(&path);
        assert_eq!(top.total, report.totals[index], "{}", path.display());
        // pprof-check names a location without lines by its address only;
        // ours adds its mapping's file name when it has one.
        let name = |function: &str| -> String {
            match function.split_once(" [") {
                Some((address, _)) if address.starts_with("0x") => address.to_owned(),
                _ => function.to_owned(),
            }
        };
        let ours: HashMap<String, (i64, i64)> = top
            .rows
            .iter()
            .map(|row| (name(&row.function), (row.flat, row.cum)))
            .collect();
        let theirs: HashMap<String, (i64, i64)> = report
            .cum
            .iter()
            .map(|(function, cum)| {
                let flat = report.flat.get(function).map_or(0, |flat| flat[index]);
                (function.clone(), (flat, cum[index]))
            })
            .filter(|&(_, (flat, cum))| flat != 0 || cum != 0)
            .collect();
        assert_eq!(ours, theirs, "{}", path.display());

        let table = String::from_utf8(ferroprof(&["top", path.to_str().unwrap()]).stdout).unwrap();
        assert!(
            table.contains(&top.rows[0].function),
            "{}:\n{table}",
            path.display()
        );

        let copy = dir.path().join(format!(
            "go-{}",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::copy(&path, &copy).unwrap();
        let svg = flamegraph(&copy, &[]);
        let texts = xml_texts(&svg).unwrap_or_else(|e| panic!("malformed SVG: {e}\n{svg}"));
        for row in &top.rows {
            assert!(
                texts.iter().any(|(element, text)| element == "title"
                    && text.starts_with(&format!("{} (", row.function))),
                "{}: no frame named {:?} in the flame graph",
                path.display(),
                row.function
            );
        }
    }
}

#[test]
fn the_xml_checker_refuses_what_is_not_well_formed() {
    let good = "<?xml version=\"1.0\"?><!-- c --><svg a=\"1\" b='x &amp; y'>\
                <g><title>Vec&lt;T&gt; &#x41;</title><rect/></g>\
                <script><![CDATA[ if (a < b) {} ]]></script></svg>\n";
    assert_eq!(
        xml_texts(good).unwrap(),
        [("title".to_owned(), "Vec<T> A".to_owned())]
    );
    for bad in [
        "<svg><g></svg></g>",
        "<svg><g></svg>",
        "<svg>",
        "<svg a=1></svg>",
        "<svg a=\"1\" a=\"2\"></svg>",
        "<svg a=\"<\"></svg>",
        "<svg>a & b</svg>",
        "<svg>&nbsp;</svg>",
        "<svg></svg><svg></svg>",
        "<svg><!-- a -- b --></svg>",
        "<svg><![CDATA[ x </svg>",
        "text<svg></svg>",
        "",
    ] {
        assert!(xml_texts(bad).is_err(), "accepted {bad:?}");
    }
}
