//! The profile viewer: what a pprof profile says, as a `pprof -top` table
//! or a flame graph, without Go.
//!
//! ferroprof writes profiles for Datadog and for `go tool pprof`, but the
//! places they are looked at first (a service host, a CI log, a Rust-only
//! toolchain) rarely have Go. This module reads any pprof profile,
//! ferroprof's or another producer's (Go's included), and answers the first
//! question asked of one: where did the time or the memory go. The
//! `ferroprof` command (`src/bin/ferroprof.rs`) is a thin shell over it,
//! and the tests and examples use it to check what a profile says.
//!
//! The pipeline is [`load`] (read and [`decode`](crate::pprof::decode)) →
//! [`sample_index`] (which of the sample's values to show, by pprof's rule)
//! → [`top`] (flat and cum per function, rendered by [`Top::render`]) or
//! [`folded`] (one line per distinct stack, Brendan Gregg's folded format)
//! → [`flamegraph`] (an SVG drawn by `inferno` from the folded lines).
//!
//! # Frames and names
//!
//! A sample's locations are leaf first, and a location's lines are its
//! inline chain, innermost first, so a stack read leaf to root is every
//! location's lines in order. A frame is named by its function's name, or
//! its system name when that is empty. A location without lines (an
//! unsymbolized address) is named by its address in hex, followed by the
//! basename of its mapping's file when it has one, as pprof does:
//! `0x7f3a1c2d [libc.so.6]`. Frames are grouped by name, so the same
//! function from two locations is one row (pprof's `functions`
//! granularity).
//!
//! The functions here take any [`Profile`]; one from [`decode`] has every
//! reference checked. A hand-built profile with a dangling location id
//! shows a frame named `[unknown location N]`, and a sample type index out
//! of range reads as zero values: bad input never panics.
//!
//! [`decode`]: crate::pprof::decode

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::pprof::{self, DecodeError, Location, Profile, Sample};

/// Reads and decodes the profile at `path` (gzip-compressed or not).
pub fn load(path: &Path) -> Result<Profile, ViewError> {
    let bytes = std::fs::read(path).map_err(|source| ViewError::Read {
        path: path.to_owned(),
        source,
    })?;
    pprof::decode(&bytes).map_err(|source| ViewError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// The index of the sample type to show: the one called `name`
/// (`"inuse_space"`, `"cpu"`, `"alloc_objects"`, or a number, its index),
/// or by default the profile's `default_sample_type`, else its last sample
/// type (pprof's rule: `samples, cpu` shows `cpu`).
pub fn sample_index(profile: &Profile, name: Option<&str>) -> Result<usize, ViewError> {
    let count = profile.sample_type.len();
    if count == 0 {
        return Err(ViewError::NoSampleTypes);
    }
    let Some(name) = name else {
        let default = profile.str(profile.default_sample_type);
        let by_default = (!default.is_empty())
            .then(|| profile.sample_type_index(default))
            .flatten();
        return Ok(by_default.unwrap_or(count - 1));
    };
    if let Some(i) = profile.sample_type_index(name) {
        return Ok(i);
    }
    match name.parse::<usize>() {
        Ok(i) if i < count => Ok(i),
        _ => Err(ViewError::UnknownSampleType {
            name: name.to_owned(),
            available: profile
                .sample_type
                .iter()
                .map(|vt| profile.str(vt.r#type).to_owned())
                .collect(),
        }),
    }
}

/// The `pprof -top` table of one sample type: see [`top`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Top {
    /// One row per function with a nonzero flat or cum value, by flat
    /// value (largest first), then cum value (largest first), then name.
    pub rows: Vec<TopRow>,
    /// The sum of the absolute values of all samples, as pprof computes
    /// it, so that the frees of a delta profile do not cancel its
    /// allocations out of the percentages.
    pub total: i64,
    /// The unit of the values, e.g. `nanoseconds`, `bytes`, `count`.
    pub unit: String,
    /// The sample type, e.g. `cpu`, `inuse_space`.
    pub sample_type: String,
}

/// One function of a [`Top`] table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopRow {
    /// The function's name (see the module docs for frames without one).
    pub function: String,
    /// The value of the samples whose leaf frame is this function: what it
    /// did itself.
    pub flat: i64,
    /// The value of the samples with this function anywhere in the stack,
    /// each sample counted once however often the function recurses.
    pub cum: i64,
}

/// Flat and cum values per function for sample type `index` (from
/// [`sample_index`]).
///
/// A sample's leaf frame is the first line of its first location (the
/// innermost inline frame). Samples without locations count in the total
/// only.
pub fn top(profile: &Profile, index: usize) -> Top {
    let frames = Frames::new(profile);
    let functions = frames.names.len();
    let mut flat = vec![0i64; functions];
    let mut cum = vec![0i64; functions];
    // The last sample added to each function's cum: a function recursing
    // in a stack is counted once.
    let mut counted_in = vec![usize::MAX; functions];
    let mut total = 0i64;
    for (i, sample) in profile.sample.iter().enumerate() {
        let value = value_of(sample, index);
        if value == 0 {
            continue;
        }
        total = total.saturating_add(value.saturating_abs());
        let mut stack = frames.leaf_first(sample);
        if let Some(leaf) = stack.next() {
            flat[leaf] = flat[leaf].saturating_add(value);
            counted_in[leaf] = i;
            cum[leaf] = cum[leaf].saturating_add(value);
        }
        for f in stack {
            if counted_in[f] != i {
                counted_in[f] = i;
                cum[f] = cum[f].saturating_add(value);
            }
        }
    }

    let mut rows: Vec<TopRow> = frames
        .names
        .into_iter()
        .zip(flat.into_iter().zip(cum))
        .filter(|&(_, (flat, cum))| flat != 0 || cum != 0)
        .map(|(function, (flat, cum))| TopRow {
            function,
            flat,
            cum,
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.flat, b.cum)
            .cmp(&(a.flat, a.cum))
            .then_with(|| a.function.cmp(&b.function))
    });
    let (sample_type, unit) = sample_type_of(profile, index);
    Top {
        rows,
        total,
        unit: unit.to_owned(),
        sample_type: sample_type.to_owned(),
    }
}

impl Top {
    /// The table of the first `n` rows, as `pprof -top` prints it: a header
    /// with the sample type, unit and total, then flat, flat%, sum% (the
    /// flat% of this row and the rows above), cum, cum% and the function.
    /// Values are in the unit's scale: `ms` and `s` for nanoseconds, `kB`
    /// (1024 bytes, as pprof) and up for bytes, plain numbers otherwise
    /// (see [`format_value`]).
    ///
    /// ```text
    /// Type: cpu (nanoseconds), total 100ms
    /// Showing 3 of 3 functions, accounting for 100ms (100%)
    ///       flat  flat%   sum%        cum   cum%  function
    ///       50ms 50.00% 50.00%       50ms 50.00%  c
    ///       30ms 30.00% 80.00%       80ms 80.00%  b
    ///       20ms 20.00%   100%      100ms   100%  a
    /// ```
    pub fn render(&self, n: usize) -> String {
        let shown = &self.rows[..n.min(self.rows.len())];
        let shown_flat = shown
            .iter()
            .fold(0i64, |sum, row| sum.saturating_add(row.flat));
        let value = |v| format_value(v, &self.unit);
        let mut out = String::new();
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.unit)
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "Type: {}{unit}, total {}",
            self.sample_type,
            value(self.total)
        );
        let _ = writeln!(
            out,
            "Showing {} of {} functions, accounting for {} ({})",
            shown.len(),
            self.rows.len(),
            value(shown_flat),
            percent(shown_flat, self.total)
        );
        let _ = writeln!(
            out,
            "{:>10} {:>6} {:>6} {:>10} {:>6}  function",
            "flat", "flat%", "sum%", "cum", "cum%"
        );
        let mut sum = 0i64;
        for row in shown {
            sum = sum.saturating_add(row.flat);
            let _ = writeln!(
                out,
                "{:>10} {:>6} {:>6} {:>10} {:>6}  {}",
                value(row.flat),
                percent(row.flat, self.total),
                percent(sum, self.total),
                value(row.cum),
                percent(row.cum, self.total),
                row.function
            );
        }
        out
    }
}

/// `value` in `unit`, scaled as pprof scales it: time units (`nanoseconds`,
/// `microseconds`, `milliseconds`, `seconds`) as `ns`, `us`, `ms` or `s`,
/// and `bytes` as `B`, `kB`, `MB`, `GB`, `TB` (powers of 1024), each with
/// two decimals unless they are zeros (`1.50s`, `10ms`, `512B`); any other
/// unit (`count`, `objects`...) as the plain number.
pub fn format_value(value: i64, unit: &str) -> String {
    const TIME: &[(&str, f64)] = &[("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9)];
    const BYTES: &[(&str, f64)] = &[
        ("B", 1.0),
        ("kB", 1024.0),
        ("MB", 1048576.0),
        ("GB", 1073741824.0),
        ("TB", 1099511627776.0),
    ];
    let (scales, in_base) = match unit {
        "nanoseconds" | "nanosecond" | "ns" => (TIME, 1.0),
        "microseconds" | "microsecond" | "us" => (TIME, 1e3),
        "milliseconds" | "millisecond" | "ms" => (TIME, 1e6),
        "seconds" | "second" | "s" => (TIME, 1e9),
        "bytes" | "byte" | "B" => (BYTES, 1.0),
        _ => return value.to_string(),
    };
    if value == 0 {
        return "0".to_owned();
    }
    let base = value as f64 * in_base;
    let (suffix, scale) = scales
        .iter()
        .rev()
        .find(|&&(_, scale)| base.abs() >= scale)
        .unwrap_or(&scales[0]);
    let text = format!("{:.2}", base / scale);
    format!("{}{suffix}", text.strip_suffix(".00").unwrap_or(&text))
}

/// `value` as a percentage of `total`, as pprof prints it: `100%` within
/// 0.05 of it, two decimals from 1%, two significant digits below.
fn percent(value: i64, total: i64) -> String {
    let ratio = if total == 0 {
        0.0
    } else {
        value as f64 / total as f64 * 100.0
    };
    let sign = if ratio < 0.0 { "-" } else { "" };
    let ratio = ratio.abs();
    if (99.95..=100.05).contains(&ratio) {
        format!("{sign}100%")
    } else if ratio >= 1.0 {
        format!("{sign}{ratio:.2}%")
    } else if ratio == 0.0 {
        "0%".to_owned()
    } else {
        // Two significant digits, trailing zeros dropped, like Go's `%.2g`.
        let decimals = (1 - ratio.log10().floor() as i32).clamp(0, 12) as usize;
        let text = format!("{ratio:.decimals$}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{sign}{text}%")
    }
}

/// The profile's stacks in the folded format flame graph tools read: one
/// line per distinct stack, `root;caller;...;leaf value`, for sample type
/// `index`.
///
/// Stacks are written root first: the sample's locations in reverse and
/// each location's inline chain outermost first. Samples with the same
/// stack are merged; stacks whose value is then zero or negative are left
/// out (a flame graph can only draw positive weights), as are samples
/// without locations. `;` in a function name (`[u8; 8]`) becomes `:` and a
/// line break a space, so names cannot break the format. The lines are
/// sorted by stack.
pub fn folded(profile: &Profile, index: usize) -> Vec<String> {
    let frames = Frames::new(profile);
    let names: Vec<String> = frames
        .names
        .iter()
        .map(|name| name.replace(';', ":").replace(['\n', '\r'], " "))
        .collect();
    let mut stacks: BTreeMap<String, i64> = BTreeMap::new();
    let mut stack = Vec::new();
    let mut line = String::new();
    for sample in &profile.sample {
        let value = value_of(sample, index);
        if value == 0 {
            continue;
        }
        stack.clear();
        stack.extend(frames.leaf_first(sample));
        if stack.is_empty() {
            continue;
        }
        line.clear();
        for (i, &f) in stack.iter().rev().enumerate() {
            if i > 0 {
                line.push(';');
            }
            line.push_str(&names[f]);
        }
        let sum = match stacks.get_mut(line.as_str()) {
            Some(sum) => sum,
            None => stacks.entry(line.clone()).or_default(),
        };
        *sum = sum.saturating_add(value);
    }
    stacks
        .into_iter()
        .filter(|&(_, value)| value > 0)
        .map(|(stack, value)| format!("{stack} {value}"))
        .collect()
}

/// Draws the flame graph of sample type `index` as an SVG into `out`, with
/// `inferno` from the [`folded`] stacks: `title` on top, and frame widths
/// counted in the sample type's unit. Colours are chosen from the function
/// names, so the same profile gives the same SVG.
///
/// A profile with nothing to draw (no stack with a positive value) is
/// [`ViewError::NothingToDraw`], and nothing is written.
pub fn flamegraph(
    profile: &Profile,
    index: usize,
    title: &str,
    out: &mut impl Write,
) -> Result<(), ViewError> {
    let (sample_type, unit) = sample_type_of(profile, index);
    let lines = folded(profile, index);
    if lines.is_empty() {
        return Err(ViewError::NothingToDraw {
            sample_type: sample_type.to_owned(),
        });
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = if unit.is_empty() { "samples" } else { unit }.to_owned();
    options.deterministic = true;
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out).map_err(
        |source| ViewError::Flamegraph {
            sample_type: sample_type.to_owned(),
            source,
        },
    )
}

/// Why a profile could not be viewed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ViewError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not a pprof profile.
    Decode {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// The profile declares no sample types, so it has no values to show.
    NoSampleTypes,
    /// [`sample_index`] was asked for a sample type the profile does not
    /// have.
    UnknownSampleType {
        /// The name asked for.
        name: String,
        /// The profile's sample types, in order.
        available: Vec<String>,
    },
    /// [`flamegraph`] found no stack with a positive value.
    NothingToDraw {
        /// The sample type drawn.
        sample_type: String,
    },
    /// `inferno` failed to draw the flame graph or to write it.
    Flamegraph {
        /// The sample type drawn.
        sample_type: String,
        /// Why.
        source: io::Error,
    },
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ViewError::Decode { path, source } => {
                write!(f, "cannot decode {}: {source}", path.display())
            }
            ViewError::NoSampleTypes => f.write_str("the profile has no sample types"),
            ViewError::UnknownSampleType { name, available } => write!(
                f,
                "the profile has no sample type {name:?}; it has: {}",
                available.join(", ")
            ),
            ViewError::NothingToDraw { sample_type } => write!(
                f,
                "no stack has a positive {sample_type} value: there is nothing to draw"
            ),
            ViewError::Flamegraph {
                sample_type,
                source,
            } => write!(f, "drawing the {sample_type} flame graph: {source}"),
        }
    }
}

impl std::error::Error for ViewError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ViewError::Read { source, .. } | ViewError::Flamegraph { source, .. } => Some(source),
            ViewError::Decode { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The sample's value of sample type `index`, 0 if it has none.
fn value_of(sample: &Sample, index: usize) -> i64 {
    sample.value.get(index).copied().unwrap_or(0)
}

/// The name and unit of sample type `index`, `""` if there is none.
fn sample_type_of(profile: &Profile, index: usize) -> (&str, &str) {
    profile.sample_type.get(index).map_or(("", ""), |vt| {
        (profile.str(vt.r#type), profile.str(vt.unit))
    })
}

/// Every frame name of a profile, interned, and each location's frames as
/// indexes into them, innermost first.
struct Frames {
    /// Distinct frame names, in first-seen order.
    names: Vec<String>,
    /// Location id -> its frames (indexes into `names`), innermost first.
    /// Ids the samples refer to but no location has are here too, with
    /// one frame `[unknown location N]`.
    by_location: HashMap<u64, Vec<usize>>,
}

impl Frames {
    fn new(profile: &Profile) -> Self {
        let functions: HashMap<u64, &str> = profile
            .function
            .iter()
            .map(|f| {
                let name = profile.str(f.name);
                let name = if name.is_empty() {
                    profile.str(f.system_name)
                } else {
                    name
                };
                (f.id, name)
            })
            .collect();
        let mut frames = Frames {
            names: Vec::new(),
            by_location: HashMap::with_capacity(profile.location.len()),
        };
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut intern = |names: &mut Vec<String>, name: &str| -> usize {
            if let Some(&i) = ids.get(name) {
                return i;
            }
            names.push(name.to_owned());
            ids.insert(name.to_owned(), names.len() - 1);
            names.len() - 1
        };
        for location in &profile.location {
            let mut line_names = location
                .line
                .iter()
                .map(|line| functions.get(&line.function_id).copied().unwrap_or(""))
                .peekable();
            let indexes = if line_names.peek().is_none() {
                vec![intern(&mut frames.names, &address_name(profile, location))]
            } else {
                line_names
                    .map(|name| {
                        if name.is_empty() {
                            intern(&mut frames.names, &address_name(profile, location))
                        } else {
                            intern(&mut frames.names, name)
                        }
                    })
                    .collect()
            };
            frames.by_location.insert(location.id, indexes);
        }
        for sample in &profile.sample {
            for &id in &sample.location_id {
                if !frames.by_location.contains_key(&id) {
                    let unknown = intern(&mut frames.names, &format!("[unknown location {id}]"));
                    frames.by_location.insert(id, vec![unknown]);
                }
            }
        }
        frames
    }

    /// The frames of `sample`, leaf first (each location's inline chain
    /// innermost first).
    fn leaf_first<'a>(&'a self, sample: &'a Sample) -> impl Iterator<Item = usize> + 'a {
        sample
            .location_id
            .iter()
            .flat_map(|id| self.by_location.get(id).map_or(&[][..], Vec::as_slice))
            .copied()
    }
}

/// The name of a frame with no function: its address, and its mapping's
/// file name if it has one (`0x7f3a1c2d [libc.so.6]`).
fn address_name(profile: &Profile, location: &Location) -> String {
    let file = profile
        .mapping
        .iter()
        .find(|m| m.id == location.mapping_id && location.mapping_id != 0)
        .map(|m| profile.str(m.filename))
        .filter(|file| !file.is_empty());
    match file {
        Some(file) => {
            let base = file.rsplit('/').next().unwrap_or(file);
            format!("{:#x} [{base}]", location.address)
        }
        None => format!("{:#x}", location.address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pprof::{FrameLine, MappingInfo, ProfileBuilder};

    /// A location (inline chain innermost first) for each entry of a stack.
    type Stack<'a> = &'a [&'a [&'a str]];

    /// A CPU profile (`samples/count`, `cpu/nanoseconds`) of these stacks,
    /// leaf first, each with `(samples, nanoseconds)`.
    fn cpu_profile(samples: &[(Stack<'_>, [i64; 2])]) -> Profile {
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            10_000_000,
        );
        for (stack, values) in samples {
            let locations: Vec<u64> = stack
                .iter()
                .map(|chain| {
                    let lines: Vec<FrameLine<'_>> = chain
                        .iter()
                        .map(|&function| FrameLine {
                            function,
                            system_name: "",
                            file: "src/lib.rs",
                            line: 1,
                        })
                        .collect();
                    b.location(0, 0, &lines)
                })
                .collect();
            b.sample(&locations, values, &[]);
        }
        b.build()
    }

    fn row(function: &str, flat: i64, cum: i64) -> TopRow {
        TopRow {
            function: function.to_owned(),
            flat,
            cum,
        }
    }

    const MS: i64 = 1_000_000;

    /// `a` calls `b` calls `c`: 5, 3 and 2 samples of 10 ms.
    fn abc() -> Profile {
        cpu_profile(&[
            (&[&["c"], &["b"], &["a"]], [5, 50 * MS]),
            (&[&["b"], &["a"]], [3, 30 * MS]),
            (&[&["a"]], [2, 20 * MS]),
        ])
    }

    #[test]
    fn flat_is_the_leaf_and_cum_the_whole_stack() {
        let top = top(&abc(), 1);
        assert_eq!(
            top.rows,
            [
                row("c", 50 * MS, 50 * MS),
                row("b", 30 * MS, 80 * MS),
                row("a", 20 * MS, 100 * MS)
            ]
        );
        assert_eq!((top.total, top.unit.as_str()), (100 * MS, "nanoseconds"));
        assert_eq!(top.sample_type, "cpu");

        let counts = super::top(&abc(), 0);
        assert_eq!(
            counts.rows,
            [row("c", 5, 5), row("b", 3, 8), row("a", 2, 10)]
        );
        assert_eq!((counts.total, counts.unit.as_str()), (10, "count"));
    }

    #[test]
    fn recursion_counts_once_in_cum() {
        let p = cpu_profile(&[
            (&[&["f"], &["g"], &["f"], &["f"], &["main"]], [1, 7]),
            (&[&["g"], &["f"], &["main"]], [1, 3]),
        ]);
        let top = top(&p, 1);
        assert_eq!(
            top.rows,
            [row("f", 7, 10), row("g", 3, 10), row("main", 0, 10)]
        );
        assert_eq!(top.total, 10);
    }

    #[test]
    fn the_innermost_inline_frame_is_the_leaf() {
        // One address holding `inner` inlined into `outer`, called by `main`.
        let p = cpu_profile(&[
            (&[&["inner", "outer"], &["main"]], [1, 4]),
            (&[&["outer"], &["main"]], [1, 1]),
        ]);
        let top = top(&p, 1);
        assert_eq!(
            top.rows,
            [row("inner", 4, 4), row("outer", 1, 5), row("main", 0, 5)]
        );
        assert_eq!(
            folded(&p, 1),
            ["main;outer 1", "main;outer;inner 4"],
            "root first, inline chains outermost first"
        );
    }

    #[test]
    fn rows_tie_break_on_cum_then_name() {
        let p = cpu_profile(&[
            (&[&["z"], &["y"]], [1, 5]),
            (&[&["x"]], [1, 5]),
            (&[&["w"]], [1, 5]),
        ]);
        let names: Vec<String> = top(&p, 1).rows.into_iter().map(|r| r.function).collect();
        assert_eq!(names, ["w", "x", "z", "y"]);
    }

    #[test]
    fn folded_merges_stacks_and_skips_nothing_to_draw() {
        let p = cpu_profile(&[
            (&[&["c"], &["b"], &["a"]], [1, 10]),
            (&[&["b"], &["a"]], [1, 0]),
            (&[&["c"], &["b"], &["a"]], [1, 5]),
            (&[&["Vec<T>::push"], &["<[u8; 8] as Debug>::fmt"]], [1, 2]),
            (&[&["freed"]], [1, -3]),
            (&[], [1, 9]),
        ]);
        assert_eq!(
            folded(&p, 1),
            ["<[u8: 8] as Debug>::fmt;Vec<T>::push 2", "a;b;c 15"]
        );
        assert_eq!(
            folded(&p, 0),
            [
                "<[u8: 8] as Debug>::fmt;Vec<T>::push 1",
                "a;b 1",
                "a;b;c 2",
                "freed 1"
            ]
        );
        assert!(folded(&p, 7).is_empty(), "a sample type out of range");
    }

    #[test]
    fn unsymbolized_locations_are_named_by_address_and_file() {
        let mut b = ProfileBuilder::new(&[("alloc_space", "bytes")], ("space", "bytes"), 1);
        let libc = b.mapping(&MappingInfo {
            memory_start: 0x7f00_0000,
            memory_limit: 0x7f10_0000,
            file_offset: 0,
            filename: "/lib/x86_64-linux-gnu/libc.so.6",
            build_id: "",
            has_functions: false,
            has_lines: false,
            has_inline_frames: false,
        });
        let in_libc = b.location(libc, 0x7f00_1234, &[]);
        let nowhere = b.location(0, 0x5678, &[]);
        b.sample(&[in_libc, nowhere], &[1536], &[]);
        let p = b.build();
        assert_eq!(
            top(&p, 0).rows,
            [
                row("0x7f001234 [libc.so.6]", 1536, 1536),
                row("0x5678", 0, 1536)
            ]
        );
        assert_eq!(folded(&p, 0), ["0x5678;0x7f001234 [libc.so.6] 1536"]);
    }

    #[test]
    fn dangling_references_do_not_panic() {
        let mut p = abc();
        p.sample[0].location_id.push(99);
        p.location[0].line[0].function_id = 1000;
        p.sample[1].value.clear();
        let top = top(&p, 1);
        assert!(top
            .rows
            .iter()
            .any(|r| r.function == "[unknown location 99]"));
        assert!(top.rows.iter().any(|r| r.function == "0x0"), "{top:?}");
        assert_eq!(top.total, 70 * MS, "the sample without values reads as 0");
        let _ = top.render(10);
        let _ = folded(&p, 1);
    }

    #[test]
    fn render_prints_a_pprof_table() {
        let table = top(&abc(), 1).render(20);
        assert_eq!(
            table,
            "Type: cpu (nanoseconds), total 100ms\n\
             Showing 3 of 3 functions, accounting for 100ms (100%)\n      \
             flat  flat%   sum%        cum   cum%  function\n      \
             50ms 50.00% 50.00%       50ms 50.00%  c\n      \
             30ms 30.00% 80.00%       80ms 80.00%  b\n      \
             20ms 20.00%   100%      100ms   100%  a\n"
        );
        let two = top(&abc(), 0).render(2);
        assert_eq!(
            two.lines().nth(1),
            Some("Showing 2 of 3 functions, accounting for 8 (80.00%)")
        );
        assert_eq!(two.lines().count(), 5);
        assert!(two.starts_with("Type: samples (count), total 10\n"));
    }

    #[test]
    fn deltas_take_percentages_of_the_absolute_total() {
        let p = cpu_profile(&[(&[&["alloc"]], [1, 30]), (&[&["free"]], [1, -10])]);
        let top = top(&p, 1);
        assert_eq!(top.total, 40);
        assert_eq!(top.rows, [row("alloc", 30, 30), row("free", -10, -10)]);
        let table = top.render(5);
        assert!(
            table.contains("   -10ns -25.00% 50.00%      -10ns -25.00%  free\n"),
            "{table}"
        );
    }

    #[test]
    fn values_are_scaled_to_their_unit() {
        let cases = [
            (0, "nanoseconds", "0"),
            (999, "nanoseconds", "999ns"),
            (1_500, "nanoseconds", "1.50us"),
            (10_000_000, "nanoseconds", "10ms"),
            (1_234_567_890, "nanoseconds", "1.23s"),
            (7_200_000_000_000, "nanoseconds", "7200s"),
            (-20_000_000, "nanoseconds", "-20ms"),
            (250, "milliseconds", "250ms"),
            (3, "seconds", "3s"),
            (512, "bytes", "512B"),
            (1536, "bytes", "1.50kB"),
            (64 << 20, "bytes", "64MB"),
            (5 << 30, "bytes", "5GB"),
            (3 << 40, "bytes", "3TB"),
            (123_456, "count", "123456"),
            (42, "", "42"),
            (42, "objects", "42"),
        ];
        for (value, unit, expected) in cases {
            assert_eq!(format_value(value, unit), expected, "{value} {unit}");
        }
    }

    #[test]
    fn percentages_read_like_pprof() {
        let cases = [
            (1, 1, "100%"),
            (9_999, 10_000, "100%"),
            (1, 3, "33.33%"),
            (1, 100, "1.00%"),
            (1, 300, "0.33%"),
            (1, 2_000, "0.05%"),
            (1, 30_000, "0.0033%"),
            (0, 7, "0%"),
            (5, 0, "0%"),
            (-1, 4, "-25.00%"),
        ];
        for (value, total, expected) in cases {
            assert_eq!(percent(value, total), expected, "{value}/{total}");
        }
    }

    #[test]
    fn sample_index_follows_pprofs_rule() {
        let mut p = abc();
        assert_eq!(sample_index(&p, None).unwrap(), 1, "the last type");
        assert_eq!(sample_index(&p, Some("samples")).unwrap(), 0);
        assert_eq!(sample_index(&p, Some("cpu")).unwrap(), 1);
        assert_eq!(sample_index(&p, Some("0")).unwrap(), 0, "an index");
        let err = sample_index(&p, Some("inuse_space")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the profile has no sample type \"inuse_space\"; it has: samples, cpu"
        );
        assert!(sample_index(&p, Some("2")).is_err());

        p.default_sample_type = 1; // the string "samples"
        assert_eq!(p.str(1), "samples");
        assert_eq!(sample_index(&p, None).unwrap(), 0, "default_sample_type");

        p.sample_type.clear();
        assert!(matches!(
            sample_index(&p, None),
            Err(ViewError::NoSampleTypes)
        ));
    }

    #[test]
    fn load_names_the_file_and_the_cause() {
        let dir = std::env::temp_dir().join(format!("ferroprof-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.pprof");
        std::fs::write(&good, pprof::encode(&abc())).unwrap();
        assert_eq!(load(&good).unwrap(), abc());

        let bad = dir.join("bad.pprof");
        std::fs::write(&bad, [0x1f, 0x8b, 0, 1, 2]).unwrap();
        let err = load(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot decode {}: ", bad.display())),
            "{err}"
        );

        let missing = dir.join("missing.pprof");
        let err = load(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flamegraph_draws_the_stacks_or_refuses_an_empty_profile() {
        let mut svg = Vec::new();
        flamegraph(&abc(), 1, "abc", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains(">abc<"), "the title");
        assert!(svg.contains("nanoseconds"), "the unit");

        let mut again = Vec::new();
        flamegraph(&abc(), 1, "abc", &mut again).unwrap();
        assert_eq!(svg.as_bytes(), again, "deterministic");

        let empty = cpu_profile(&[(&[&["a"]], [1, 0])]);
        let mut out = Vec::new();
        let err = flamegraph(&empty, 1, "empty", &mut out).unwrap_err();
        assert!(matches!(err, ViewError::NothingToDraw { .. }), "{err}");
        assert!(out.is_empty());
    }
}
