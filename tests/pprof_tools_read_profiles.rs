//! The pprof tooling of `tests/support` reads profiles as Google's pprof
//! does. A profile encoded by hand here, field by field, comes back with
//! exactly the totals, flat and cum values, stacks, labels, mapping and
//! comment put in, gzipped or not; pprof itself prints it; and a corrupt
//! file or an invalid profile is rejected. Nothing here uses the crate's own
//! encoder, so a bug there cannot hide a bug in the checker.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::pprof_tools::{check, pprof_raw, pprof_top, tools, MappingReport, Stack};
use support::scratch::Scratch;

/// One protobuf message, encoded as fields are added.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(mut self, field: u64, value: u64) -> Self {
        put_varint(&mut self.0, field << 3);
        put_varint(&mut self.0, value);
        self
    }

    fn bytes(mut self, field: u64, bytes: &[u8]) -> Self {
        put_varint(&mut self.0, (field << 3) | 2);
        put_varint(&mut self.0, bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }

    fn message(self, field: u64, message: Message) -> Self {
        self.bytes(field, &message.0)
    }

    /// A packed repeated varint field.
    fn packed(self, field: u64, values: &[u64]) -> Self {
        let mut packed = Vec::new();
        for &value in values {
            put_varint(&mut packed, value);
        }
        self.bytes(field, &packed)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A string table; index 0 is `""`, as profile.proto requires.
struct Strings(Vec<String>);

impl Strings {
    fn new() -> Self {
        Strings(vec![String::new()])
    }

    fn index(&mut self, s: &str) -> u64 {
        let position = self.0.iter().position(|t| t == s).unwrap_or_else(|| {
            self.0.push(s.to_string());
            self.0.len() - 1
        });
        position as u64
    }
}

const COMMENT: &str = "made by\thand\\, in\na test";

/// A heap profile with two sample types, one mapping, two functions and
/// two samples. Location 1 is `alloc_buffer` inlined into `main_loop`;
/// location 2 is `main_loop` itself.
///
/// - sample A, stack [1, 2]: values [2, 1024], labels
///   `thread name = "worker"` and `request size = 512 bytes`;
///   `main_loop` appears twice in it (inline caller, then caller).
/// - sample B, stack [2]: values [3, 300], label `thread id = 7`.
///
/// `values_of_b` replaces sample B's values, to build an invalid profile.
fn hand_made_profile(values_of_b: &[u64]) -> Vec<u8> {
    let mut s = Strings::new();
    let value_type = |s: &mut Strings, t: &str, unit: &str| {
        Message::default()
            .varint(1, s.index(t))
            .varint(2, s.index(unit))
    };
    let line = |function: u64, line: u64| Message::default().varint(1, function).varint(2, line);
    let alloc_buffer = s.index("app::alloc_buffer");
    let main_loop = s.index("app::main_loop");
    let source = s.index("src/app.rs");
    let mut profile = Message::default()
        .message(1, value_type(&mut s, "alloc_objects", "count"))
        .message(1, value_type(&mut s, "alloc_space", "bytes"));
    let labels_of_a = [
        Message::default()
            .varint(1, s.index("thread name"))
            .varint(2, s.index("worker")),
        Message::default()
            .varint(1, s.index("request size"))
            .varint(3, 512)
            .varint(4, s.index("bytes")),
    ];
    let mut sample_a = Message::default().packed(1, &[1, 2]).packed(2, &[2, 1024]);
    for label in labels_of_a {
        sample_a = sample_a.message(3, label);
    }
    let label_of_b = Message::default()
        .varint(1, s.index("thread id"))
        .varint(3, 7);
    let sample_b = Message::default()
        .packed(1, &[2])
        .packed(2, values_of_b)
        .message(3, label_of_b);
    let mapping = Message::default()
        .varint(1, 1)
        .varint(2, 0x1000)
        .varint(3, 0x2000)
        .varint(4, 0)
        .varint(5, s.index("/usr/bin/app"))
        .varint(6, s.index("abc123"))
        .varint(7, 1);
    let inlined = Message::default()
        .varint(1, 1)
        .varint(2, 1)
        .varint(3, 0x1010)
        .message(4, line(1, 10))
        .message(4, line(2, 20));
    let plain = Message::default()
        .varint(1, 2)
        .varint(2, 1)
        .varint(3, 0x1020)
        .message(4, line(2, 30));
    let function = |id: u64, name: u64| {
        Message::default()
            .varint(1, id)
            .varint(2, name)
            .varint(3, name)
            .varint(4, source)
    };
    profile = profile
        .message(2, sample_a)
        .message(2, sample_b)
        .message(3, mapping)
        .message(4, inlined)
        .message(4, plain)
        .message(5, function(1, alloc_buffer))
        .message(5, function(2, main_loop))
        .varint(9, 1_700_000_000_000_000_000)
        .varint(10, 10_000_000_000)
        .message(11, value_type(&mut s, "space", "bytes"))
        .varint(12, 524_288)
        .varint(13, s.index(COMMENT));
    for string in &s.0 {
        profile = profile.bytes(6, string.as_bytes());
    }
    profile.0
}

/// Writes `bytes` to `name` in `dir`.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

#[test]
fn the_checker_reports_what_was_encoded() {
    let dir = Scratch::new("pprof-tools-read-profiles");
    let path = write(dir.path(), "hand-made.pb", &hand_made_profile(&[3, 300]));
    let report = check(&path);

    assert_eq!(
        report.sample_types,
        ["alloc_objects/count", "alloc_space/bytes"]
    );
    assert_eq!(report.period_type, "space/bytes");
    assert_eq!(report.period, 524_288);
    assert_eq!(report.time_nanos, 1_700_000_000_000_000_000);
    assert_eq!(report.duration_nanos, 10_000_000_000);
    assert_eq!(report.samples, 2);
    assert_eq!(report.totals, [5, 1324]);
    assert_eq!(report.total("alloc_space"), 1324);

    // Flat: sample A's leaf is the inlined alloc_buffer, B's is main_loop.
    assert_eq!(report.flat.len(), 2);
    assert_eq!(report.flat["app::alloc_buffer"], [2, 1024]);
    assert_eq!(report.flat["app::main_loop"], [3, 300]);
    // Cum: main_loop holds both samples, A once although it appears twice.
    assert_eq!(report.cum.len(), 2);
    assert_eq!(report.cum["app::alloc_buffer"], [2, 1024]);
    assert_eq!(report.cum["app::main_loop"], [5, 1324]);

    assert_eq!(report.value("alloc_space/bytes"), 1);
    assert_eq!(report.value("alloc_objects"), 0);
    assert_eq!(report.flat_of("app::", "alloc_space"), 1324);
    assert_eq!(report.cum_of("app::", "alloc_space"), 1324);
    assert_eq!(report.cum_of("alloc_buffer", "alloc_objects"), 2);
    assert_eq!(report.cum_of("no_such_function", "alloc_objects"), 0);

    assert_eq!(
        report.stacks,
        [
            Stack {
                values: vec![2, 1024],
                frames: ["app::alloc_buffer", "app::main_loop", "app::main_loop"]
                    .map(String::from)
                    .to_vec(),
            },
            Stack {
                values: vec![3, 300],
                frames: vec!["app::main_loop".to_string()]
            },
        ]
    );
    assert_eq!(
        report.mappings,
        [MappingReport {
            file: "/usr/bin/app".to_string(),
            start: 0x1000,
            limit: 0x2000,
            offset: 0,
            build_id: "abc123".to_string(),
            has_functions: true,
        }]
    );
    assert_eq!(report.labels.len(), 3);
    assert_eq!(report.labels["thread name"], ["worker"]);
    assert_eq!(report.labels["request size"], ["512 bytes"]);
    assert_eq!(report.labels["thread id"], ["7"]);
    assert_eq!(report.comments, [COMMENT]);
}

#[test]
fn a_gzipped_profile_reads_the_same() {
    let dir = Scratch::new("pprof-tools-read-profiles");
    let raw = hand_made_profile(&[3, 300]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let gzipped = write(dir.path(), "hand-made.pb.gz", &gz.finish().unwrap());
    let plain = write(dir.path(), "hand-made-for-gzip.pb", &raw);

    let (a, b) = (check(&gzipped), check(&plain));
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.flat, b.flat);
    assert_eq!(a.cum, b.cum);
    assert_eq!(a.stacks, b.stacks);
}

#[test]
fn google_pprof_prints_the_profile() {
    let dir = Scratch::new("pprof-tools-read-profiles");
    let path = write(
        dir.path(),
        "hand-made-for-pprof.pb",
        &hand_made_profile(&[3, 300]),
    );

    let raw = pprof_raw(&path);
    for expected in [
        "app::alloc_buffer",
        "app::main_loop",
        "/usr/bin/app",
        "1024",
    ] {
        assert!(
            raw.contains(expected),
            "no {expected:?} in pprof -raw:\n{raw}"
        );
    }

    let top = pprof_top(&path, "alloc_objects");
    let main_loop = top
        .lines()
        .find(|l| l.ends_with("app::main_loop"))
        .unwrap_or_else(|| panic!("no app::main_loop in pprof -top:\n{top}"));
    // flat flat% sum% cum cum% name: flat 3 of 5, cum 5 of 5.
    let columns: Vec<&str> = main_loop.split_whitespace().collect();
    assert_eq!(columns[0], "3", "{top}");
    assert_eq!(columns[3], "5", "{top}");
}

/// Runs the checker on `path` and returns its stderr, asserting it failed.
fn checker_rejects(path: &std::path::Path) -> String {
    let output = Command::new(&tools().checker).arg(path).output().unwrap();
    assert!(
        !output.status.success(),
        "the checker accepted {}",
        path.display()
    );
    assert!(output.stdout.is_empty());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_corrupt_file_is_rejected() {
    let dir = Scratch::new("pprof-tools-read-profiles");
    let mut bytes = hand_made_profile(&[3, 300]);
    bytes.truncate(bytes.len() / 2);
    let stderr = checker_rejects(&write(dir.path(), "truncated.pb", &bytes));
    assert!(stderr.contains("parsing profile"), "{stderr}");

    let stderr = checker_rejects(&write(dir.path(), "empty.pb", &[]));
    assert!(stderr.contains("parsing profile"), "{stderr}");
}

#[test]
fn an_invalid_profile_is_rejected() {
    let dir = Scratch::new("pprof-tools-read-profiles");
    // One value in sample B for two sample types: decodes, fails CheckValid.
    let stderr = checker_rejects(&write(dir.path(), "one-value.pb", &hand_made_profile(&[3])));
    assert!(stderr.contains("malformed profile"), "{stderr}");
    assert!(
        stderr.contains("sample has 1 values vs. 2 types"),
        "{stderr}"
    );
}
