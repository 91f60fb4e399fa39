//! A fast hasher for maps keyed by integers the process made itself:
//! addresses, ids and string indexes.
//!
//! std's default SipHash resists keys chosen by an attacker, and costs
//! ~20 ns per lookup for it. Building a profile looks up a few hundred
//! thousand addresses and ids per period, none of which an outsider
//! chooses, so these maps use a folded multiply per word instead (the
//! mixing step of wyhash and foldhash): the full 128-bit product of the word
//! and an odd constant, high half xored into low, so every input bit reaches
//! the low bits hashbrown picks buckets with and the high bits it picks
//! control bytes with. Never use it for strings or data from outside.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by integers, hashed with [`WordHasher`].
pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// See the module docs.
#[derive(Clone, Copy, Default)]
pub(crate) struct WordHasher(u64);

impl WordHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let product = u128::from(self.0 ^ word) * u128::from(K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    /// Bytes (for keys that are not integers) go in 8 at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    #[inline]
    fn write_i64(&mut self, n: i64) {
        self.mix(n as u64);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    #[test]
    fn nearby_addresses_spread_over_low_and_high_bits() {
        let build = BuildHasherDefault::<WordHasher>::default();
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for a in (0x5555_5555_0000u64..).step_by(16).take(4096) {
            let h = build.hash_one(a);
            low.insert(h & 0xfff);
            high.insert(h >> 57);
        }
        // 4096 keys into 4096 low buckets: a good hash fills ~63 % of them.
        assert!(low.len() > 2300, "{} distinct low 12 bits", low.len());
        assert_eq!(high.len(), 128, "every top-7-bit value appears");
    }

    #[test]
    fn tuples_differ_by_order() {
        let build = BuildHasherDefault::<WordHasher>::default();
        assert_ne!(build.hash_one((1u64, 2u64)), build.hash_one((2u64, 1u64)));
    }
}
