//! pprof profiles: the model, building, encoding and decoding, symbols and
//! deltas.
//!
//! The profiler's pipeline each period is: raw stacks (return addresses) and
//! values from the samplers → [`Symbolizer`] (addresses to functions, files,
//! lines and mappings, cached across periods) → [`ProfileBuilder`] (interned
//! tables, deterministic output) → [`Delta`] (cumulative counters become the
//! change since the last period) → [`encode`] (gzip protobuf). [`decode`]
//! reads any pprof back, including Go's, for the viewer and the tests.

mod builder;
mod codec;
mod delta;
pub(crate) mod fasthash;
mod locations;
mod proto;
mod symbols;

pub use builder::{FrameLine, LabelValue, MappingInfo, ProfileBuilder};
pub use codec::{check, decode, decode_with_limit, encode, DecodeError, DEFAULT_DECODE_LIMIT};
pub use delta::{Delta, DeltaStats};
pub(crate) use locations::Locations;
pub use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
pub use symbols::{
    MappingSegment, Symbol, SymbolFrame, Symbolizer, SymbolizerStats, DEFAULT_CACHE_CAPACITY,
    REOPEN_AFTER,
};
