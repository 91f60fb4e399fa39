//! Sequences of profiles through one [`Delta`] made for the heap profile
//! (`Delta::new(&["alloc_objects", "alloc_space"])`).
//!
//! Input: the first byte chooses the form of the rest. Odd: two profiles
//! as bytes, `rest[0..2]` (little endian) the length of the first, the
//! second what follows (the seeds hold real consecutive heap profiles
//! this way). Even: up to [`MAX_STEPS`] [`Step`]s made by `arbitrary`,
//! each a profile built with `ProfileBuilder` from a small structured
//! [`Spec`] (stacks from a few addresses and synthetic frames, labels,
//! values up to the extremes), a profile as bytes, or a `reset`. Bytes
//! that pass [`decode_with_limit`] are a *checked* profile; bytes that only
//! parse as protobuf ([`decode_unchecked`]) are an *unchecked* one, with
//! dangling references.
//!
//! What `Delta` guarantees (its module docs), and so what is asserted:
//!
//! - `apply` never panics, even on an unchecked profile.
//! - Cumulative values are never negative in its output, whatever the
//!   input (a negative input value is read as 0, a decrease is a reset).
//!   Snapshot values pass through, merged duplicates summed (saturating),
//!   so an input with no negative value gives an output with none: "no
//!   negative values are ever sent" (`docs/datadog-intake.md`).
//! - No output sample is all zeros, none is added, and the header (sample
//!   types, period, times, comments, frame regexps) is kept.
//! - Every string index of the output is in range; a checked input gives
//!   an output that passes [`check`].
//! - For checked inputs, the output equals that of a naive model keyed by
//!   what a sample means (stack by address, or by function names for
//!   synthetic frames; labels as sorted strings): duplicates merged,
//!   deltas against the previous profile's cumulative values, restarts and
//!   sample type changes reset, all-zero samples dropped; and
//!   [`DeltaStats`](ferroprof::pprof::DeltaStats) counts what the model
//!   counts. After an unchecked profile the model is off until a reset.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use ferroprof::fuzzing::decode_unchecked;
use ferroprof::pprof::{
    check, decode_with_limit, Delta, FrameLine, LabelValue, MappingInfo, Profile, ProfileBuilder,
};

use crate::pprof_util::{header, string, string_indexes};

/// The cumulative sample types, as the profiler's heap profile has them.
pub const CUMULATIVE: [&str; 2] = ["alloc_objects", "alloc_space"];

/// At most this many steps are run.
pub const MAX_STEPS: usize = 4;

/// The decompressed size limit of profiles given as bytes.
pub const LIMIT: u64 = 1 << 20;

/// Sample types a [`Spec`] picks from: the heap profile's, a CPU one, and
/// a cumulative name with another unit (types match by name).
const TYPES: [(&str, &str); 6] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
    ("samples", "count"),
    ("alloc_space", "kilobytes"),
];

/// Function names: synthetic frames, and two that share system names and
/// files with them.
const NAMES: [&str; 4] = [
    "[ferroprof: truncated stack]",
    "[ferroprof: dropped samples]",
    "main",
    "alloc::alloc::alloc",
];

const LABEL_KEYS: [&str; 3] = ["thread id", "thread name", "k"];
const LABEL_VALUES: [&str; 3] = ["main", "worker-1", ""];

/// One thing to do with the `Delta`.
#[derive(Arbitrary, Debug)]
pub enum Step {
    /// Apply a profile built from a spec.
    Built(Spec),
    /// Apply a profile decoded from bytes, checked if it passes.
    Bytes(Vec<u8>),
    /// Forget history.
    Reset,
}

/// A profile to build.
#[derive(Arbitrary, Debug)]
pub struct Spec {
    /// Sample types, each an index into a fixed list (at most 6).
    types: Vec<u8>,
    /// Samples (at most 64).
    samples: Vec<SampleSpec>,
    /// Add a comment and a `drop_frames`.
    comment: bool,
}

/// A sample to build.
#[derive(Arbitrary, Debug)]
struct SampleSpec {
    /// Leaf first, at most 8.
    frames: Vec<FrameSpec>,
    labels: Vec<LabelSpec>,
    /// One per sample type: missing ones are 0, extra ones ignored.
    values: Vec<Value>,
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    /// Code at one of 16 addresses, in no mapping or one of two.
    Code { mapping: u8, address: u8 },
    /// A location with address 0 and these lines: (name, variant of
    /// system name, file and line).
    Synthetic { mapping: u8, lines: Vec<(u8, u8)> },
}

#[derive(Arbitrary, Debug)]
enum LabelSpec {
    Str(u8, u8),
    Num(u8, i8, bool),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Small(u8),
    Negative(u8),
    Max,
    Min,
    Any(i64),
}

impl Value {
    fn get(self) -> i64 {
        match self {
            Value::Small(v) => i64::from(v % 8),
            Value::Negative(v) => -i64::from(v % 8),
            Value::Max => i64::MAX,
            Value::Min => i64::MIN,
            Value::Any(v) => v,
        }
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let steps = match data.split_first() {
        None => return,
        Some((mode, rest)) if mode & 1 == 1 => {
            let first = match rest {
                [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
                _ => 0,
            };
            let rest = rest.get(2..).unwrap_or_default();
            let (a, b) = rest.split_at(first.min(rest.len()));
            vec![Step::Bytes(a.to_vec()), Step::Bytes(b.to_vec())]
        }
        Some((_, rest)) => match Vec::<Step>::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(steps) => steps,
            Err(_) => return,
        },
    };
    run_steps(steps);
}

/// Applies `steps` to a new `Delta`, checking every output.
pub fn run_steps(steps: Vec<Step>) {
    let mut delta = Delta::new(&CUMULATIVE);
    let mut model = Some(Model::default());
    for (n, step) in steps.into_iter().take(MAX_STEPS).enumerate() {
        let (profile, checked) = match step {
            Step::Built(spec) => (build(&spec), true),
            Step::Bytes(bytes) => match decode_with_limit(&bytes, LIMIT) {
                Ok(p) => (p, true),
                Err(_) => match decode_unchecked(&bytes, LIMIT) {
                    Some(p) => (p, false),
                    None => continue,
                },
            },
            Step::Reset => {
                delta.reset();
                model = Some(Model {
                    resets: delta.stats().resets,
                    ..Model::default()
                });
                continue;
            }
        };
        let input = profile.clone();
        let out = delta.apply(profile);
        let _ = format!("{delta:?}");
        let at = format!(
            "step {n} ({})",
            if checked { "checked" } else { "unchecked" }
        );
        check_output(&input, &out, checked, &at);
        if !checked {
            model = None;
        }
        if let Some(model) = &mut model {
            let (want, dropped) = model.apply(&input);
            let got = by_meaning(&out);
            assert_eq!(
                got.len(),
                out.sample.len(),
                "{at}: two samples with one key"
            );
            assert_eq!(got, want, "{at}: the delta differs from the model's");
            let stats = delta.stats();
            assert_eq!(stats.dropped_zero, dropped, "{at}: dropped_zero");
            assert_eq!(stats.resets, model.resets, "{at}: resets");
            assert_eq!(stats.keys, model.prev.len(), "{at}: keys");
        }
    }
}

/// The properties of any output.
fn check_output(input: &Profile, out: &Profile, checked: bool, at: &str) {
    let cumulative: Vec<usize> = (input.sample_type.iter().enumerate())
        .filter(|(_, vt)| CUMULATIVE.contains(&string(input, vt.r#type)))
        .map(|(t, _)| t)
        .collect();
    let no_negative_input = input.sample.iter().all(|s| s.value.iter().all(|&v| v >= 0));
    for (i, s) in out.sample.iter().enumerate() {
        for &t in &cumulative {
            if let Some(&v) = s.value.get(t) {
                assert!(
                    v >= 0,
                    "{at}: sample {i} has cumulative value {v} for type {t}"
                );
            }
        }
        if no_negative_input {
            assert!(
                s.value.iter().all(|&v| v >= 0),
                "{at}: sample {i} has a negative value {:?}, from inputs with none",
                s.value
            );
        }
        assert!(
            s.value.iter().any(|&v| v != 0),
            "{at}: sample {i} is all zeros"
        );
    }
    assert!(
        out.sample.len() <= input.sample.len(),
        "{at}: samples added"
    );
    let strings = out.string_table.len() as i64;
    for i in string_indexes(out) {
        assert!(
            i == 0 || (0..strings).contains(&i),
            "{at}: string index {i} of {strings}"
        );
    }
    assert_eq!(out.sample_type.len(), input.sample_type.len(), "{at}");
    if input.string_table.first().is_none_or(String::is_empty) {
        // (A dangling index becomes 0, which is "" only then.)
        assert_eq!(header(out), header(input), "{at}: the header changed");
    }
    if checked {
        if let Err(e) = check(out) {
            panic!("{at}: the output of a checked profile fails check: {e}");
        }
    }
}

/// Builds the profile `spec` describes.
fn build(spec: &Spec) -> Profile {
    let types: Vec<(&str, &str)> = (spec.types.iter().take(6))
        .map(|&t| TYPES[usize::from(t) % TYPES.len()])
        .collect();
    let mut b = ProfileBuilder::new(&types, ("space", "bytes"), 524_288);
    b.time(1_700_000_000_000_000_000, 60_000_000_000);
    if spec.comment {
        b.comment("fuzz");
        b.drop_frames("^std::");
    }
    for s in spec.samples.iter().take(64) {
        let locations: Vec<u64> = (s.frames.iter().take(8))
            .map(|f| location(&mut b, f))
            .collect();
        let values: Vec<i64> = (0..types.len())
            .map(|t| s.values.get(t).map_or(0, |v| v.get()))
            .collect();
        let labels: Vec<(&str, LabelValue<'_>)> = (s.labels.iter().take(4))
            .map(|l| match *l {
                LabelSpec::Str(k, v) => (
                    LABEL_KEYS[usize::from(k) % 3],
                    LabelValue::Str(LABEL_VALUES[usize::from(v) % 3]),
                ),
                LabelSpec::Num(k, n, unit) => (
                    LABEL_KEYS[usize::from(k) % 3],
                    LabelValue::Num(i64::from(n), if unit { "bytes" } else { "" }),
                ),
            })
            .collect();
        b.sample(&locations, &values, &labels);
    }
    b.build()
}

fn mapping(b: &mut ProfileBuilder, m: u8) -> u64 {
    let k = u64::from(m % 3);
    if k == 0 {
        return 0;
    }
    b.mapping(&MappingInfo {
        memory_start: 0x1000_0000 * k,
        memory_limit: 0x1000_0000 * (k + 1),
        file_offset: 0,
        filename: ["/usr/bin/service", "/lib/libc.so.6"][k as usize - 1],
        build_id: "",
        has_functions: true,
        has_lines: true,
        has_inline_frames: false,
    })
}

fn location(b: &mut ProfileBuilder, f: &FrameSpec) -> u64 {
    match f {
        FrameSpec::Code {
            mapping: m,
            address,
        } => {
            let m = mapping(b, *m);
            let address = 0x1000 + 8 * u64::from(address % 16);
            let name = format!("fn_{address:x}");
            let line = FrameLine {
                function: &name,
                system_name: "",
                file: "src/lib.rs",
                line: 1,
            };
            b.location(m, address, &[line])
        }
        FrameSpec::Synthetic { mapping: m, lines } => {
            let m = mapping(b, *m);
            let lines: Vec<FrameLine<'_>> = (lines.iter().take(3))
                .map(|&(name, variant)| FrameLine {
                    function: NAMES[usize::from(name) % NAMES.len()],
                    system_name: ["", "_Z1x"][usize::from(variant & 1)],
                    file: ["", "src/main.rs"][usize::from(variant >> 1 & 1)],
                    line: i64::from(variant >> 2 & 3),
                })
                .collect();
            b.location(m, 0, &lines)
        }
    }
}

/// A frame by what it means to `Delta`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Frame {
    Address(u64),
    Names(Vec<String>),
}

/// A sample's stack and sorted labels (key, string, number, unit).
type Meaning = (Vec<Frame>, Vec<(String, String, i64, String)>);

/// The meaning of every sample of a checked profile, in order.
fn meanings(p: &Profile) -> Vec<Meaning> {
    let locations: HashMap<u64, _> = p.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, _> = p.function.iter().map(|f| (f.id, f)).collect();
    let frame = |id: &u64| {
        let l = locations[id];
        match l.address {
            0 => Frame::Names(
                (l.line.iter())
                    .map(|line| p.str(functions[&line.function_id].name).to_owned())
                    .collect(),
            ),
            a => Frame::Address(a),
        }
    };
    (p.sample.iter())
        .map(|s| {
            let mut labels: Vec<_> = (s.label.iter())
                .map(|l| {
                    let st = |i| p.str(i).to_owned();
                    (st(l.key), st(l.str), l.num, st(l.num_unit))
                })
                .collect();
            labels.sort();
            (s.location_id.iter().map(frame).collect(), labels)
        })
        .collect()
}

/// A checked output's values by meaning.
fn by_meaning(p: &Profile) -> HashMap<Meaning, Vec<i64>> {
    let values = p.sample.iter().map(|s| s.value.clone());
    meanings(p).into_iter().zip(values).collect()
}

/// What `Delta` should do, done the obvious way.
#[derive(Default)]
struct Model {
    types: Option<Vec<(String, String)>>,
    prev: HashMap<Meaning, Vec<i64>>,
    resets: u64,
}

impl Model {
    /// The delta's samples by meaning, and the number dropped.
    fn apply(&mut self, p: &Profile) -> (HashMap<Meaning, Vec<i64>>, u64) {
        let types: Vec<(String, String)> = (p.sample_type.iter())
            .map(|vt| (p.str(vt.r#type).to_owned(), p.str(vt.unit).to_owned()))
            .collect();
        if self.types.as_ref().is_some_and(|t| *t != types) {
            self.prev.clear();
            self.resets += 1;
        }
        let cumulative: Vec<usize> = (0..types.len())
            .filter(|&t| CUMULATIVE.contains(&types[t].0.as_str()))
            .collect();
        self.types = Some(types);
        // Merge samples with one meaning, in order, the first one's place.
        let mut merged: Vec<(Meaning, Vec<i64>)> = Vec::new();
        let mut slot: HashMap<Meaning, usize> = HashMap::new();
        for (meaning, s) in meanings(p).into_iter().zip(&p.sample) {
            match slot.get(&meaning) {
                Some(&i) => {
                    for (a, b) in merged[i].1.iter_mut().zip(&s.value) {
                        *a = a.saturating_add(*b);
                    }
                }
                None => {
                    slot.insert(meaning.clone(), merged.len());
                    merged.push((meaning, s.value.clone()));
                }
            }
        }
        let (mut out, mut next, mut dropped) = (HashMap::new(), HashMap::new(), 0);
        for (meaning, mut values) in merged {
            let now: Vec<i64> = cumulative.iter().map(|&t| values[t].max(0)).collect();
            let then = match self.prev.get(&meaning) {
                Some(then) if now.iter().zip(then).all(|(n, t)| n >= t) => then.clone(),
                restarted => {
                    self.resets += u64::from(restarted.is_some());
                    vec![0; now.len()]
                }
            };
            for (k, &t) in cumulative.iter().enumerate() {
                values[t] = now[k] - then[k];
            }
            next.insert(meaning.clone(), now);
            if values.iter().any(|&v| v != 0) {
                out.insert(meaning, values);
            } else {
                dropped += 1;
            }
        }
        self.prev = next;
        (out, dropped)
    }
}
