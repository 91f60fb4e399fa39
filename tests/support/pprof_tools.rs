//! Google's pprof as the reader of every profile the tests produce.
//!
//! Two Go programs, built from the sources Debian ships, so no network is
//! needed (`golang-go`, `golang-github-google-pprof-dev`; `./.ci/setup`
//! installs both):
//!
//! - the checker, `tests/pprof-check/main.go`: parses a profile with
//!   `github.com/google/pprof/profile`, runs its `CheckValid`, and prints
//!   totals, flat and cum sums by function, stacks, mappings, labels and
//!   comments as tab-separated lines, which [`check`] turns into a [`Report`];
//! - `pprof` itself (`github.com/google/pprof`), for [`pprof_raw`],
//!   [`pprof_top`] and any other command line through [`pprof`].
//!
//! [`tools`] builds both once per test process, in GOPATH mode
//! (`GO111MODULE=off GOPATH=/usr/share/gocode`), into
//! `<cargo target dir>/pprof-tools/`, with the Go build cache beside them in
//! `pprof-tools/gocache` (Go needs a writable cache, and `HOME` may be unset
//! in CI). A binary already there is reused: the checker while it is newer
//! than `main.go`, pprof always. Each build writes a name of its own and
//! renames it into place, so test binaries running at the same time never
//! see half a binary.
//!
//! A profile is "read by pprof" when [`check`] returns: it runs the checker
//! and `pprof -raw` on the file and panics, with pprof's error, if either
//! fails.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where Debian's Go packages put their sources, pprof's among them.
const GOPATH: &str = "/usr/share/gocode";

/// What to do when a Go tool is missing or does not build.
const SETUP_HINT: &str = "run ./.ci/setup (installs golang-go and golang-github-google-pprof-dev)";

/// The two binaries [`tools`] builds.
#[derive(Debug)]
pub struct Tools {
    /// `tests/pprof-check/main.go`: `checker PROFILE` prints the records
    /// [`check`] parses, or exits 1 with the error on stderr.
    pub checker: PathBuf,
    /// Google's `pprof` command.
    pub pprof: PathBuf,
}

/// The checker and pprof, built on first use in this process (see the
/// module docs for where and when). Panics with [`SETUP_HINT`]'s advice
/// when Go or pprof's sources are missing.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = super::target_dir().join("pprof-tools");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let main_go = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pprof-check/main.go");
        Tools {
            checker: go_build(&dir, "pprof-check", main_go.as_os_str(), Some(&main_go)),
            pprof: go_build(&dir, "pprof", OsStr::new("github.com/google/pprof"), None),
        }
    })
}

/// `go build -o <dir>/<name> <what>`, unless `<dir>/<name>` exists and is
/// newer than `source` (when given).
fn go_build(dir: &Path, name: &str, what: &OsStr, source: Option<&Path>) -> PathBuf {
    let out = dir.join(name);
    let built = fs::metadata(&out).and_then(|m| m.modified()).ok();
    let fresh = match (built, source) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(built), Some(source)) => fs::metadata(source)
            .and_then(|m| m.modified())
            .map(|changed| built >= changed)
            .unwrap_or_else(|e| panic!("reading {}: {e}", source.display())),
    };
    if fresh {
        return out;
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let output = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&tmp)
        .arg(what)
        .current_dir(dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("gocache"))
        // No user config file (it lives under HOME, which may be unset).
        .env("GOENV", "off")
        // A static binary: no C toolchain needed.
        .env("CGO_ENABLED", "0")
        .env_remove("GOFLAGS")
        .env_remove("GOOS")
        .env_remove("GOARCH")
        .output()
        .unwrap_or_else(|e| match e.kind() {
            ErrorKind::NotFound => panic!("Go is missing: {SETUP_HINT}"),
            _ => panic!("running go build: {e}"),
        });
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "go build {} failed ({}); if a package cannot be found, {SETUP_HINT}:\n{}",
            what.to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&tmp, &out)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), out.display()));
    out
}

/// Runs `command`, panics with its stderr unless it exits 0, and returns
/// its stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{command:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)
        .unwrap_or_else(|e| panic!("{command:?} printed invalid UTF-8: {e}"))
}

/// Reads the profile at `path` (gzipped or not) with Google's parser and
/// `CheckValid`, and with `pprof -raw`; panics with the error if either
/// rejects it. Returns what the checker found in it.
pub fn check(path: &Path) -> Report {
    let records = run(Command::new(&tools().checker).arg(path));
    pprof_raw(path);
    Report::parse(&records)
}

/// `pprof <args> <path>`, asserting that it exits 0; returns its stdout.
pub fn pprof(args: &[&str], path: &Path) -> String {
    run(Command::new(&tools().pprof).args(args).arg(path))
}

/// `pprof -raw -symbolize=none <path>`: the real tool reading the whole
/// file and printing it back (samples with their location ids, locations
/// with their function names, mappings). `-symbolize=none` keeps pprof to
/// what the file says instead of looking for binaries to symbolize with.
pub fn pprof_raw(path: &Path) -> String {
    pprof(&["-raw", "-symbolize=none"], path)
}

/// `pprof -top -symbolize=none -sample_index=<sample_index> <path>`;
/// `sample_index` is a sample type such as `"alloc_space"` or its index.
pub fn pprof_top(path: &Path, sample_index: &str) -> String {
    pprof(
        &[
            "-top",
            "-symbolize=none",
            &format!("-sample_index={sample_index}"),
        ],
        path,
    )
}

/// What the checker found in a valid profile. Function names are
/// `Function.name`; a location without lines counts as a function named by
/// its address in hex (`"0x1f00"`).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `"type/unit"` of each sample value, in order: `"alloc_space/bytes"`.
    pub sample_types: Vec<String>,
    /// `"type/unit"` of the period: `"cpu/nanoseconds"`.
    pub period_type: String,
    /// The period, in `period_type`'s unit.
    pub period: i64,
    /// When the profile starts, in nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// How long the profile covers, in nanoseconds.
    pub duration_nanos: i64,
    /// How many samples the profile has.
    pub samples: usize,
    /// The sum of each sample type's values, indexed like `sample_types`.
    pub totals: Vec<i64>,
    /// Function name -> the values of the samples whose leaf frame (the
    /// innermost inline frame of the first location) it is, one sum per
    /// sample type. Each sample counts for exactly one function.
    pub flat: HashMap<String, Vec<i64>>,
    /// Function name -> the values of the samples with that function
    /// anywhere in the stack, inline frames included, each sample counted
    /// once per function however often it appears (recursion).
    pub cum: HashMap<String, Vec<i64>>,
    /// Every sample, in the profile's order.
    pub stacks: Vec<Stack>,
    /// The mappings, in the profile's order.
    pub mappings: Vec<MappingReport>,
    /// Label key -> its distinct values over all samples, sorted as
    /// strings; a numeric value is printed with its unit if it has one
    /// (`"512 bytes"`), bare otherwise (`"7"`).
    pub labels: HashMap<String, Vec<String>>,
    /// The profile's comments, in order.
    pub comments: Vec<String>,
}

/// One sample of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    /// One value per sample type.
    pub values: Vec<i64>,
    /// Function names, leaf first; the frames of one location innermost
    /// inline frame first.
    pub frames: Vec<String>,
}

/// One mapping of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingReport {
    /// The object file's path.
    pub file: String,
    /// Where the mapping starts in memory.
    pub start: u64,
    /// Where it ends (exclusive).
    pub limit: u64,
    /// The file offset mapped at `start`.
    pub offset: u64,
    /// The object file's build id, `""` if none.
    pub build_id: String,
    /// Whether the locations in it have function names.
    pub has_functions: bool,
}

impl Report {
    /// The index of a sample type, given as `"type"` or `"type/unit"`
    /// (`"alloc_space"`, `"alloc_space/bytes"`); panics, listing the
    /// profile's types, if it has no such type.
    pub fn value(&self, sample_type: &str) -> usize {
        self.sample_types
            .iter()
            .position(|t| t == sample_type || t.split('/').next() == Some(sample_type))
            .unwrap_or_else(|| panic!("no sample type {sample_type:?} in {:?}", self.sample_types))
    }

    /// The sum of all values of `sample_type` (see [`Report::value`]).
    pub fn total(&self, sample_type: &str) -> i64 {
        self.totals[self.value(sample_type)]
    }

    /// The flat value of `sample_type` summed over the functions whose
    /// name contains `function_substring`: what those functions did
    /// themselves. No sample counts twice, since each has one leaf.
    pub fn flat_of(&self, function_substring: &str, sample_type: &str) -> i64 {
        let i = self.value(sample_type);
        self.flat
            .iter()
            .filter(|(name, _)| name.contains(function_substring))
            .map(|(_, values)| values[i])
            .sum()
    }

    /// The largest cum value of `sample_type` among the functions whose
    /// name contains `function_substring`, 0 if none does. The largest,
    /// not the sum: samples under a caller are also under its callees, so
    /// summing several functions' cum would count them twice. Make the
    /// substring name one function to get exactly that function's cum.
    pub fn cum_of(&self, function_substring: &str, sample_type: &str) -> i64 {
        let i = self.value(sample_type);
        self.cum
            .iter()
            .filter(|(name, _)| name.contains(function_substring))
            .map(|(_, values)| values[i])
            .max()
            .unwrap_or(0)
    }

    /// Parses the checker's records (the format is in
    /// `tests/pprof-check/main.go`).
    fn parse(records: &str) -> Report {
        let mut report = Report::default();
        for line in records.lines() {
            let fields: Vec<String> = line.split('\t').map(unescape).collect();
            let num = |s: &str| s.parse::<i128>().unwrap_or_else(|_| bad_record(line));
            match (fields[0].as_str(), &fields[1..]) {
                ("meta", [key, value]) => match key.as_str() {
                    "period_type" => report.period_type = value.clone(),
                    "period" => report.period = num(value) as i64,
                    "time_nanos" => report.time_nanos = num(value) as i64,
                    "duration_nanos" => report.duration_nanos = num(value) as i64,
                    "samples" => report.samples = num(value) as usize,
                    _ => bad_record(line),
                },
                ("sample_type", [sample_type]) => report.sample_types.push(sample_type.clone()),
                ("total", [_, value]) => report.totals.push(num(value) as i64),
                ("flat", [name, values @ ..]) => {
                    let values = values.iter().map(|v| num(v) as i64).collect();
                    report.flat.insert(name.clone(), values);
                }
                ("cum", [name, values @ ..]) => {
                    let values = values.iter().map(|v| num(v) as i64).collect();
                    report.cum.insert(name.clone(), values);
                }
                ("stack", [values, frames @ ..]) => report.stacks.push(Stack {
                    values: values.split(',').map(|v| num(v) as i64).collect(),
                    frames: frames.to_vec(),
                }),
                ("mapping", [file, start, limit, offset, build_id, has_functions]) => {
                    report.mappings.push(MappingReport {
                        file: file.clone(),
                        start: num(start) as u64,
                        limit: num(limit) as u64,
                        offset: num(offset) as u64,
                        build_id: build_id.clone(),
                        has_functions: has_functions == "true",
                    })
                }
                ("label", [key, value]) => {
                    report
                        .labels
                        .entry(key.clone())
                        .or_default()
                        .push(value.clone());
                }
                ("comment", [comment]) => report.comments.push(comment.clone()),
                _ => bad_record(line),
            }
        }
        assert_eq!(report.stacks.len(), report.samples, "{records}");
        report
    }
}

/// Panics on a line the checker should not have printed.
fn bad_record(line: &str) -> ! {
    panic!("unexpected record from pprof-check: {line:?}")
}

/// Undoes the checker's escaping of `\`, tab, newline and carriage return.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            other => panic!("bad escape \\{other:?} in {field:?}"),
        }
    }
    out
}
