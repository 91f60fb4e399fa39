//! Encoding profiles to the gzip-compressed protobuf that pprof and Datadog
//! read, and decoding them back with every reference checked.
//!
//! Decoding takes bytes from outside (files, fuzzers, other profilers), so
//! it never panics: gzip or protobuf damage, a decompressed size over the
//! limit and dangling references are each a [`DecodeError`] saying what is
//! wrong. A profile that decodes is safe to index: every string index, id
//! and value count has been checked, so the delta, the viewer and the tests
//! can use `[]` on it.

use std::collections::HashSet;
use std::fmt;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::proto::Profile;

/// The largest decompressed profile [`decode`] accepts: 256 MiB.
pub const DEFAULT_DECODE_LIMIT: u64 = 256 << 20;

/// Encodes `profile` as gzip-compressed protobuf.
///
/// Compression is gzip's fastest level: profiles are mostly small varints
/// and repeated strings, where higher levels buy a few percent for several
/// times the time.
pub fn encode(profile: &Profile) -> Vec<u8> {
    let raw = profile.encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), Compression::fast());
    // Writing to a Vec cannot fail.
    gz.write_all(&raw).expect("writing to a Vec");
    let mut out = gz.finish().expect("writing to a Vec");
    // The buffer grew by doubling to about the protobuf's size, ~60 % more
    // than the gzip output; the bytes wait in the upload queue (up to five
    // batches), so give the slack back now at the price of one copy.
    out.shrink_to_fit();
    out
}

/// Decodes a profile, gzip-compressed or not, of at most
/// [`DEFAULT_DECODE_LIMIT`] bytes once decompressed, and checks it.
pub fn decode(bytes: &[u8]) -> Result<Profile, DecodeError> {
    decode_with_limit(bytes, DEFAULT_DECODE_LIMIT)
}

/// [`decode`] with a different limit on the decompressed size.
pub fn decode_with_limit(bytes: &[u8], limit: u64) -> Result<Profile, DecodeError> {
    let inflated;
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(DecodeError::Gzip)?;
        inflated = out;
        &inflated[..]
    } else {
        bytes
    };
    if raw.len() as u64 > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    let profile = Profile::decode(raw).map_err(DecodeError::Protobuf)?;
    check(&profile).map_err(DecodeError::Invalid)?;
    Ok(profile)
}

/// Why bytes are not a profile.
#[derive(Debug)]
pub enum DecodeError {
    /// The gzip stream is damaged.
    Gzip(std::io::Error),
    /// Decompressed, it exceeds the limit.
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The protobuf is damaged.
    Protobuf(prost::DecodeError),
    /// It decodes but breaks a rule of the format (the message says which).
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Gzip(e) => write!(f, "profile is not valid gzip: {e}"),
            DecodeError::TooLarge { limit } => {
                write!(f, "profile is larger than {limit} bytes decompressed")
            }
            DecodeError::Protobuf(e) => write!(f, "profile is not a valid protobuf: {e}"),
            DecodeError::Invalid(what) => write!(f, "invalid profile: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Gzip(e) => Some(e),
            DecodeError::Protobuf(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks the rules pprof's `CheckValid` checks, plus string indexes.
pub fn check(p: &Profile) -> Result<(), String> {
    let strings = p.string_table.len() as i64;
    if p.string_table.first().is_some_and(|s| !s.is_empty()) {
        return Err("string table entry 0 is not empty".into());
    }
    let string = |what: &str, i: i64| -> Result<(), String> {
        if i == 0 || (0..strings).contains(&i) {
            Ok(())
        } else {
            Err(format!("{what} refers to string {i} of {strings}"))
        }
    };
    for vt in p.sample_type.iter().chain(&p.period_type) {
        string("value type", vt.r#type)?;
        string("value type unit", vt.unit)?;
    }
    for &c in &p.comment {
        string("comment", c)?;
    }
    string("drop_frames", p.drop_frames)?;
    string("keep_frames", p.keep_frames)?;
    string("default_sample_type", p.default_sample_type)?;

    let ids = |what: &str, ids: &mut dyn Iterator<Item = u64>| -> Result<HashSet<u64>, String> {
        let mut seen = HashSet::new();
        for id in ids {
            if id == 0 {
                return Err(format!("a {what} has id 0"));
            }
            if !seen.insert(id) {
                return Err(format!("two {what}s have id {id}"));
            }
        }
        Ok(seen)
    };
    let mappings = ids("mapping", &mut p.mapping.iter().map(|m| m.id))?;
    let functions = ids("function", &mut p.function.iter().map(|f| f.id))?;
    let locations = ids("location", &mut p.location.iter().map(|l| l.id))?;

    for m in &p.mapping {
        string("mapping filename", m.filename)?;
        string("mapping build id", m.build_id)?;
    }
    for f in &p.function {
        string("function name", f.name)?;
        string("function system name", f.system_name)?;
        string("function filename", f.filename)?;
    }
    for l in &p.location {
        if l.mapping_id != 0 && !mappings.contains(&l.mapping_id) {
            return Err(format!(
                "location {} refers to mapping {}",
                l.id, l.mapping_id
            ));
        }
        for line in &l.line {
            if !functions.contains(&line.function_id) {
                return Err(format!(
                    "location {} refers to function {}",
                    l.id, line.function_id
                ));
            }
        }
    }
    let values = p.sample_type.len();
    for (i, s) in p.sample.iter().enumerate() {
        if s.value.len() != values {
            return Err(format!(
                "sample {i} has {} values for {values} sample types",
                s.value.len()
            ));
        }
        if let Some(id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return Err(format!("sample {i} refers to location {id}"));
        }
        for l in &s.label {
            string("label key", l.key)?;
            string("label value", l.str)?;
            string("label unit", l.num_unit)?;
        }
    }
    Ok(())
}

impl Profile {
    /// The string at index `i` (decoded profiles have every index checked).
    pub fn str(&self, i: i64) -> &str {
        self.string_table.get(i as usize).map_or("", String::as_str)
    }

    /// The index of the sample type named `ty`, if there is one.
    pub fn sample_type_index(&self, ty: &str) -> Option<usize> {
        self.sample_type
            .iter()
            .position(|vt| self.str(vt.r#type) == ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pprof::builder::{FrameLine, LabelValue, MappingInfo, ProfileBuilder};

    fn sample_profile() -> Profile {
        let mut b = ProfileBuilder::new(
            &[("alloc_objects", "count"), ("alloc_space", "bytes")],
            ("space", "bytes"),
            524288,
        );
        b.time(1_700_000_000_000_000_000, 60_000_000_000);
        b.comment("made by a test");
        b.drop_frames("^ferroprof");
        let m = b.mapping(&MappingInfo {
            memory_start: 0x40_0000,
            memory_limit: 0x50_0000,
            file_offset: 0x1000,
            filename: "/usr/bin/service",
            build_id: "00112233",
            has_functions: true,
            has_lines: true,
            has_inline_frames: false,
        });
        let line = |function| FrameLine {
            function,
            system_name: "_ZN3foo",
            file: "src/main.rs",
            line: 42,
        };
        let a = b.location(m, 0x40_1234, &[line("foo"), line("bar")]);
        let c = b.location(m, 0x40_2000, &[line("main")]);
        b.sample(
            &[a, c],
            &[3, 1536],
            &[("thread name", LabelValue::Str("main"))],
        );
        b.sample(&[c], &[1, -7], &[("thread id", LabelValue::Num(9, ""))]);
        b.build()
    }

    #[test]
    fn round_trip_gives_the_same_profile() {
        let p = sample_profile();
        let bytes = encode(&p);
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        assert_eq!(decode(&bytes).unwrap(), p);
        assert_eq!(decode(&p.encode_to_vec()).unwrap(), p, "uncompressed input");
    }

    #[test]
    fn encoded_bytes_hold_no_slack() {
        // They wait in the upload queue: capacity beyond the bytes is
        // memory held for nothing (it was ~60 % before shrinking).
        let mut p = sample_profile();
        for i in 0..2_000 {
            p.comment.push(p.string_table.len() as i64);
            p.string_table.push(format!("comment {i} {}", i * 7919));
        }
        let bytes = encode(&p);
        assert!(bytes.len() > 4_096, "{}", bytes.len());
        assert!(
            bytes.capacity() <= bytes.len() + bytes.len() / 16,
            "{} bytes in a buffer of {}",
            bytes.len(),
            bytes.capacity()
        );
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(encode(&sample_profile()), encode(&sample_profile()));
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let good = encode(&sample_profile());
        let raw = sample_profile().encode_to_vec();
        // Truncations of the gzip stream and of the protobuf.
        for cut in [1, 2, 10, good.len() / 2, good.len() - 1] {
            assert!(decode(&good[..cut]).is_err(), "gzip cut at {cut}");
        }
        for cut in [1, 3, raw.len() / 3, raw.len() - 1] {
            // A cut can land on a message boundary and decode; it must then
            // still pass the reference checks or be rejected, never panic.
            let _ = decode(&raw[..cut]);
        }
        assert!(matches!(decode(&[0xff; 16]), Err(DecodeError::Protobuf(_))));
        // Flipping every byte of the raw message one at a time never panics
        // (every 7th under Miri, which interprets each decode slowly).
        for i in (0..raw.len()).step_by(if cfg!(miri) { 7 } else { 1 }) {
            let mut bad = raw.clone();
            bad[i] ^= 0xa5;
            let _ = decode(&bad);
        }
        // A gzip bomb is cut off at the limit (a smaller bomb and limit
        // under Miri, where compressing a mebibyte takes minutes).
        let (bomb, limit) = if cfg!(miri) {
            (1 << 14, 1 << 12)
        } else {
            (1 << 20, 1 << 16)
        };
        let zeros = {
            encode(&Profile {
                string_table: vec![String::new(), "x".repeat(bomb)],
                ..Profile::default()
            })
        };
        assert!(matches!(
            decode_with_limit(&zeros, limit),
            Err(DecodeError::TooLarge { limit: l }) if l == limit
        ));
    }

    #[test]
    fn dangling_references_are_invalid() {
        let mut p = sample_profile();
        p.sample[0].location_id.push(99);
        let err = decode(&p.encode_to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid profile: sample 0 refers to location 99"
        );

        let mut p = sample_profile();
        p.function[0].name = 1000;
        assert!(decode(&p.encode_to_vec()).is_err());

        let mut p = sample_profile();
        p.sample[1].value.pop();
        assert!(decode(&p.encode_to_vec()).is_err());

        let mut p = sample_profile();
        p.location[1].id = p.location[0].id;
        assert!(decode(&p.encode_to_vec()).is_err());

        let mut p = sample_profile();
        p.string_table[0] = "x".into();
        assert!(decode(&p.encode_to_vec()).is_err());
    }
}
