//! The messages of pprof's `profile.proto`, written out as prost types.
//!
//! They are derived by hand from
//! `github.com/google/pprof/proto/profile.proto` (field numbers and types
//! match it one for one) and checked in, so building ferroprof needs no
//! `protoc`. Every string field is an index into
//! [`Profile::string_table`], whose entry 0 is always `""`; every `*_id` is
//! the `id` of a message in the matching list, and 0 means "none".
//!
//! Repeated numbers are packed, as proto3 encodes them by default.

/// A profile: its sample types, samples and the tables they point into.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each of a sample's values measures, in order.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// The loaded binaries the addresses belong to.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Code locations (an address and its inline chain of lines).
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions the lines name.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// All strings of the profile; entry 0 must be `""`.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// A regular expression: frames matching it and above are dropped by viewers.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// A regular expression: frames matching it are kept despite `drop_frames`.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// When the profile was collected (nanoseconds since the Unix epoch).
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// How long the profile covers, in nanoseconds.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// The kind of event between samples.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The number of events between sampled occurrences.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form text (indexes into the string table).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The sample type viewers show by default (index into the string table).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// A type and unit of a value, e.g. `inuse_space` in `bytes`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct ValueType {
    /// The type (string table index).
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// The unit (string table index).
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// One stack with its values and labels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels attached to this sample.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A key with either a string or a numeric value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Label {
    /// The key (string table index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// A string value (string table index), or 0.
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// A numeric value, when `str` is 0.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// The unit of `num` (string table index), or 0.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// A binary mapped into the process.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Mapping {
    /// Unique nonzero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Start of the mapped range in the process.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// End (exclusive) of the mapped range.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// Offset in the file that `memory_start` maps.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// The file's path (string table index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// The file's build id, hex (string table index).
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Its locations have function names.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Its locations have file names.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Its locations have line numbers.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Its locations have inline chains.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// An address and what it symbolizes to.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Location {
    /// Unique nonzero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The mapping containing `address`, or 0.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// The instruction address in the process, or 0 for synthetic frames.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// The inline chain: `line[0]` is the innermost (inlined) function and
    /// the last line is the function the address really belongs to.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Several call sites were folded into this location.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// A function and a line in it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Line {
    /// The function's id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// The line number, or 0 when unknown.
    #[prost(int64, tag = "2")]
    pub line: i64,
    /// The column, or 0 when unknown.
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// A function.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Function {
    /// Unique nonzero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Human-readable (demangled) name (string table index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// The name as the linker knows it, e.g. mangled (string table index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file (string table index).
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// The line the function starts at, or 0.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}
