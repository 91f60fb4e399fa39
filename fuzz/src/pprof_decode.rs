//! Arbitrary bytes as a pprof file, gzip-compressed or not.
//!
//! - [`decode_with_limit`] never panics, whatever the bytes, and neither
//!   does showing its error.
//! - A profile it returns passes [`check`] (decoding promises that every
//!   index and id it hands out is safe to use).
//! - [`encode`] then [`decode`] gives back an equal profile: the model has
//!   no field that does not survive the wire (unknown fields, packed or
//!   unpacked numbers, repeated scalar fields and overlong varints are all
//!   normalized by the first decode already), and encoding is
//!   deterministic, byte for byte.
//!
//! The re-encoded profile is decoded with the default limit: re-encoding
//! is canonical, so it is no larger than the input's protobuf, but the
//! input may have been under [`LIMIT`] only once trimmed by the first
//! decode.

use ferroprof::pprof::{check, decode, decode_with_limit, encode};

/// The decompressed size limit: small, so a gzip bomb costs little, yet
/// above every seed.
pub const LIMIT: u64 = 1 << 20;

/// The target.
pub fn run(data: &[u8]) {
    let profile = match decode_with_limit(data, LIMIT) {
        Ok(profile) => profile,
        Err(e) => {
            let _ = (e.to_string(), format!("{e:?}"));
            return;
        }
    };
    if let Err(e) = check(&profile) {
        panic!("a decoded profile fails check: {e}");
    }
    let bytes = encode(&profile);
    let again = decode(&bytes).unwrap_or_else(|e| panic!("a re-encoded profile fails: {e}"));
    assert!(again == profile, "decode(encode(p)) differs from p");
    assert!(encode(&again) == bytes, "encode is not deterministic");
}
