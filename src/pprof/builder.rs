//! Building a [`Profile`] from samples, with every table deduplicated.
//!
//! The builder owns the string table and the function, location and mapping
//! tables, and hands out their ids. Each table is a `Vec` in first-use order
//! plus a `HashMap` used only for lookups, so output never depends on hash
//! iteration order: the same calls in the same order give a byte-identical
//! profile.

use std::collections::HashMap;

use super::fasthash::IntMap;

use super::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// A label to attach to a sample: a key with a string or numeric value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelValue<'a> {
    /// A string value.
    Str(&'a str),
    /// A number and its unit (`""` for none), e.g. `(42, "")` or `(512, "bytes")`.
    Num(i64, &'a str),
}

/// One line of a location's inline chain, by name rather than by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameLine<'a> {
    /// The demangled function name.
    pub function: &'a str,
    /// The linker's name for it (mangled), or `""`.
    pub system_name: &'a str,
    /// The source file, or `""`.
    pub file: &'a str,
    /// The line, or 0.
    pub line: i64,
}

/// A mapping to declare, by name rather than by string index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingInfo<'a> {
    /// Start of the mapped range.
    pub memory_start: u64,
    /// End (exclusive) of the mapped range.
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    pub file_offset: u64,
    /// The file's path.
    pub filename: &'a str,
    /// The build id, lowercase hex, or `""`.
    pub build_id: &'a str,
    /// Locations in it carry function names.
    pub has_functions: bool,
    /// Locations in it carry file names and line numbers.
    pub has_lines: bool,
    /// Locations in it carry inline chains.
    pub has_inline_frames: bool,
}

/// Builds one [`Profile`]; see the module docs.
#[derive(Debug)]
pub struct ProfileBuilder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: IntMap<(i64, i64, i64), u64>,
    mappings: IntMap<(u64, u64, u64, i64), u64>,
    by_address: IntMap<(u64, u64), u64>,
    synthetic: HashMap<Vec<Line>, u64>,
    label_buf: Vec<Label>,
}

impl ProfileBuilder {
    /// A builder for samples with these `(type, unit)` values and this
    /// period, e.g. `[("samples", "count"), ("cpu", "nanoseconds")]`,
    /// `("cpu", "nanoseconds")`, `10_000_000`.
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64) -> Self {
        let mut builder = ProfileBuilder {
            profile: Profile::default(),
            strings: HashMap::new(),
            functions: IntMap::default(),
            mappings: IntMap::default(),
            by_address: IntMap::default(),
            synthetic: HashMap::new(),
            label_buf: Vec::new(),
        };
        builder.string("");
        for &(ty, unit) in sample_types {
            let vt = builder.value_type(ty, unit);
            builder.profile.sample_type.push(vt);
        }
        builder.profile.period_type = Some(builder.value_type(period_type.0, period_type.1));
        builder.profile.period = period;
        builder
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    /// The string table index of `s`, adding it if new.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    /// Sets when the profile was taken and how long it covers, in nanoseconds.
    pub fn time(&mut self, time_nanos: i64, duration_nanos: i64) {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
    }

    /// Adds a comment line.
    pub fn comment(&mut self, text: &str) {
        let i = self.string(text);
        self.profile.comment.push(i);
    }

    /// Sets the `drop_frames` regular expression.
    pub fn drop_frames(&mut self, regex: &str) {
        self.profile.drop_frames = self.string(regex);
    }

    /// Sets the sample type viewers show first.
    pub fn default_sample_type(&mut self, ty: &str) {
        self.profile.default_sample_type = self.string(ty);
    }

    /// The id of a mapping, adding it if new (keyed by range, offset and file).
    pub fn mapping(&mut self, m: &MappingInfo<'_>) -> u64 {
        let filename = self.string(m.filename);
        let key = (m.memory_start, m.memory_limit, m.file_offset, filename);
        if let Some(&id) = self.mappings.get(&key) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let build_id = self.string(m.build_id);
        self.profile.mapping.push(Mapping {
            id,
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename,
            build_id,
            has_functions: m.has_functions,
            has_filenames: m.has_lines,
            has_line_numbers: m.has_lines,
            has_inline_frames: m.has_inline_frames,
        });
        self.mappings.insert(key, id);
        id
    }

    /// The id of a function, adding it if new.
    pub fn function(&mut self, name: &str, system_name: &str, file: &str) -> u64 {
        let key = (
            self.string(name),
            self.string(system_name),
            self.string(file),
        );
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: key.0,
            system_name: key.1,
            filename: key.2,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// The id of the location for `address` in mapping `mapping_id`, if it
    /// was already added with [`location`](Self::location).
    pub fn known_location(&self, mapping_id: u64, address: u64) -> Option<u64> {
        self.by_address.get(&(mapping_id, address)).copied()
    }

    /// The id of a location with this address and inline chain (innermost
    /// first). Locations with a nonzero address are keyed by address and
    /// mapping: the first call for an address decides its lines. Synthetic
    /// locations (address 0) are keyed by their lines.
    pub fn location(&mut self, mapping_id: u64, address: u64, lines: &[FrameLine<'_>]) -> u64 {
        if address != 0 {
            if let Some(id) = self.known_location(mapping_id, address) {
                return id;
            }
        }
        let lines: Vec<(u64, i64)> = lines
            .iter()
            .map(|l| (self.function(l.function, l.system_name, l.file), l.line))
            .collect();
        if address != 0 {
            return self.location_with_functions(mapping_id, address, lines);
        }
        let line = to_lines(lines);
        if let Some(&id) = self.synthetic.get(&line) {
            return id;
        }
        let id = self.push_location(mapping_id, address, line.clone());
        self.synthetic.insert(line, id);
        id
    }

    /// Like [`location`](Self::location), with lines whose functions were
    /// already added with [`function`](Self::function): `(function id, line)`,
    /// innermost first. For callers that cache function ids themselves.
    pub fn location_with_functions(
        &mut self,
        mapping_id: u64,
        address: u64,
        lines: impl IntoIterator<Item = (u64, i64)>,
    ) -> u64 {
        if let Some(id) = self.known_location(mapping_id, address) {
            return id;
        }
        let id = self.push_location(mapping_id, address, to_lines(lines));
        self.by_address.insert((mapping_id, address), id);
        id
    }

    fn push_location(&mut self, mapping_id: u64, address: u64, line: Vec<Line>) -> u64 {
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        id
    }

    /// A location for a frame that is not code: one line naming `what`, e.g.
    /// `[ferroprof: truncated stack]`.
    pub fn synthetic_location(&mut self, what: &str) -> u64 {
        self.location(
            0,
            0,
            &[FrameLine {
                function: what,
                system_name: what,
                file: "",
                line: 0,
            }],
        )
    }

    /// Adds a sample: location ids leaf first, one value per sample type,
    /// and labels.
    ///
    /// # Panics
    ///
    /// If `values` does not have one value per sample type: that is a bug in
    /// the caller, not bad input.
    pub fn sample(&mut self, locations: &[u64], values: &[i64], labels: &[(&str, LabelValue<'_>)]) {
        self.sample_vec(locations.to_vec(), values, labels);
    }

    /// [`sample`](Self::sample) taking the location ids by value (no copy).
    ///
    /// # Panics
    ///
    /// As [`sample`](Self::sample).
    pub fn sample_vec(
        &mut self,
        locations: Vec<u64>,
        values: &[i64],
        labels: &[(&str, LabelValue<'_>)],
    ) {
        assert_eq!(
            values.len(),
            self.profile.sample_type.len(),
            "one value per sample type"
        );
        let mut label_buf = std::mem::take(&mut self.label_buf);
        label_buf.clear();
        for &(key, value) in labels {
            let key = self.string(key);
            label_buf.push(match value {
                LabelValue::Str(s) => Label {
                    key,
                    str: self.string(s),
                    num: 0,
                    num_unit: 0,
                },
                LabelValue::Num(num, unit) => Label {
                    key,
                    str: 0,
                    num,
                    num_unit: if unit.is_empty() {
                        0
                    } else {
                        self.string(unit)
                    },
                },
            });
        }
        self.profile.sample.push(Sample {
            location_id: locations,
            value: values.to_vec(),
            label: label_buf.clone(),
        });
        self.label_buf = label_buf;
    }

    /// The number of samples added so far.
    pub fn len(&self) -> usize {
        self.profile.sample.len()
    }

    /// No samples were added.
    pub fn is_empty(&self) -> bool {
        self.profile.sample.is_empty()
    }

    /// The finished profile.
    pub fn build(self) -> Profile {
        self.profile
    }
}

/// `(function id, line)` pairs as pprof lines.
fn to_lines(lines: impl IntoIterator<Item = (u64, i64)>) -> Vec<Line> {
    lines
        .into_iter()
        .map(|(function_id, line)| Line {
            function_id,
            line,
            column: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str) -> FrameLine<'_> {
        FrameLine {
            function,
            system_name: "",
            file: "src/lib.rs",
            line: 7,
        }
    }

    #[test]
    fn tables_are_deduplicated_and_ids_start_at_one() {
        let mut b = ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 10);
        let m = b.mapping(&MappingInfo {
            memory_start: 0x1000,
            memory_limit: 0x2000,
            file_offset: 0,
            filename: "/bin/x",
            build_id: "abcd",
            has_functions: true,
            has_lines: true,
            has_inline_frames: true,
        });
        let a = b.location(m, 0x1010, &[frame("inner"), frame("outer")]);
        let again = b.location(m, 0x1010, &[frame("ignored")]);
        let c = b.location(m, 0x1020, &[frame("outer")]);
        let t1 = b.synthetic_location("[ferroprof: truncated stack]");
        let t2 = b.synthetic_location("[ferroprof: truncated stack]");
        b.sample(&[a, c, t1], &[3], &[("thread id", LabelValue::Num(5, ""))]);
        let p = b.build();
        assert_eq!((m, a, again, c, t1, t2), (1, 1, 1, 2, 3, 3));
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.function.len(), 3, "inner, outer, the synthetic frame");
        assert_eq!(p.location[0].line.len(), 2);
        assert_eq!(
            p.location[1].line[0].function_id,
            p.location[0].line[1].function_id
        );
        let unique: std::collections::HashSet<_> = p.string_table.iter().collect();
        assert_eq!(unique.len(), p.string_table.len(), "strings are interned");
        assert_eq!(p.sample[0].label[0].num, 5);
    }

    #[test]
    fn labels_keep_their_units() {
        let mut b = ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 10);
        let l = b.synthetic_location("x");
        b.sample(
            &[l],
            &[1],
            &[
                ("thread name", LabelValue::Str("worker-1")),
                ("bytes", LabelValue::Num(512, "bytes")),
            ],
        );
        let p = b.build();
        let [name, bytes] = &p.sample[0].label[..] else {
            panic!("two labels expected, got {:?}", p.sample[0].label)
        };
        assert_eq!(p.string_table[name.str as usize], "worker-1");
        assert_eq!(p.string_table[bytes.num_unit as usize], "bytes");
        assert_eq!(bytes.num, 512);
    }
}
