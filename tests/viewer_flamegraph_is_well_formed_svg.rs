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

/// A file in this test's temporary folder, named after the process so
/// that concurrent runs do not collide.
fn temp_file(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("viewer-flamegraph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir.join(name)
}

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
    let path = temp_file("escapes.pprof");
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

        let copy = temp_file(&format!(
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

/// Checks that `xml` is a well-formed XML document and returns the text
/// of every element that has some, entities decoded, as `(element, text)`
/// in document order; or says what is wrong and where.
fn xml_texts(xml: &str) -> Result<Vec<(String, String)>, String> {
    let mut rest = xml;
    let mut open: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut texts = Vec::new();
    let at = |rest: &str| xml.len() - rest.len();
    let until = |rest: &'_ str, end: &str| -> Result<usize, String> {
        rest.find(end)
            .ok_or_else(|| format!("{end:?} missing after byte {}", xml.len() - rest.len()))
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<?") {
            let end = until(r, "?>")?;
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix("<!--") {
            let end = until(r, "-->")?;
            if r[..end].contains("--") {
                return Err(format!("\"--\" inside the comment at byte {}", at(rest)));
            }
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<![CDATA[") {
            if open.is_empty() {
                return Err(format!("CDATA outside the root at byte {}", at(rest)));
            }
            let end = until(r, "]]>")?;
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<!DOCTYPE") {
            if roots > 0 {
                return Err(format!("DOCTYPE after the root at byte {}", at(rest)));
            }
            let end = until(r, ">")?;
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = until(r, ">")?;
            let name = r[..end].trim_end();
            match open.pop() {
                Some(expected) if expected == name => {}
                other => return Err(format!("</{name}> at byte {} closes {other:?}", at(rest))),
            }
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('<') {
            if open.is_empty() {
                roots += 1;
                if roots > 1 {
                    return Err(format!("a second root element at byte {}", at(rest)));
                }
            }
            let (name, r) = xml_name(r).ok_or_else(|| format!("bad tag at byte {}", at(rest)))?;
            let mut r = r;
            let mut attributes = Vec::new();
            loop {
                let trimmed = r.trim_start();
                let spaced = trimmed.len() < r.len();
                r = trimmed;
                if let Some(after) = r.strip_prefix("/>") {
                    r = after;
                    break;
                }
                if let Some(after) = r.strip_prefix('>') {
                    open.push(name);
                    r = after;
                    break;
                }
                if !spaced {
                    return Err(format!(
                        "no space before an attribute of <{name}> near byte {}",
                        at(r)
                    ));
                }
                let (attribute, after) = xml_name(r)
                    .ok_or_else(|| format!("bad attribute in <{name}> at byte {}", at(r)))?;
                if attributes.contains(&attribute) {
                    return Err(format!("<{name}> has {attribute} twice"));
                }
                attributes.push(attribute);
                let after = after.trim_start().strip_prefix('=').ok_or_else(|| {
                    format!("{attribute} of <{name}> has no value at byte {}", at(after))
                })?;
                let after = after.trim_start();
                let quote = after
                    .chars()
                    .next()
                    .filter(|&c| c == '"' || c == '\'')
                    .ok_or_else(|| format!("{attribute} of <{name}> is not quoted"))?;
                let value_len = until(&after[1..], &quote.to_string())?;
                let value = &after[1..1 + value_len];
                if value.contains('<') {
                    return Err(format!("'<' in {attribute} of <{name}>: {value:?}"));
                }
                decode_entities(value).map_err(|e| format!("{attribute} of <{name}>: {e}"))?;
                r = &after[1 + value_len + 1..];
            }
            rest = r;
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            match open.last() {
                None if text.trim().is_empty() => {}
                None => return Err(format!("text outside the root at byte {}", at(rest))),
                Some(element) => {
                    if text.contains("]]>") {
                        return Err(format!("\"]]>\" in text at byte {}", at(rest)));
                    }
                    let decoded =
                        decode_entities(text).map_err(|e| format!("at byte {}: {e}", at(rest)))?;
                    if !decoded.trim().is_empty() {
                        texts.push((element.to_string(), decoded));
                    }
                }
            }
            rest = &rest[end..];
        }
    }
    if let Some(element) = open.last() {
        return Err(format!("<{element}> is never closed"));
    }
    if roots != 1 {
        return Err("no root element".to_owned());
    }
    Ok(texts)
}

/// An XML name at the start of `s` (letters, digits, `_:.-`, not starting
/// with a digit, `.` or `-`), and what follows it.
fn xml_name(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || "_:.-".contains(c)))
        .unwrap_or(s.len());
    let name = &s[..end];
    let first = name.chars().next()?;
    if first.is_ascii_digit() || first == '.' || first == '-' {
        return None;
    }
    Some((name, &s[end..]))
}

/// `text` with its entities decoded, or the first one that is not XML's.
fn decode_entities(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("a bare '&' in {text:?}"))?;
        let entity = &after[..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = entity.strip_prefix('#') {
                    decimal.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{entity}; in {text:?}"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
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
