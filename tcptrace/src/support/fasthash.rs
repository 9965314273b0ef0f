//! A fast hasher for the daemon's own hash maps.
//!
//! The standard `SipHash` protects maps whose keys an outsider chooses. These
//! keys are socket cookies the kernel hands out and label tuples from closed
//! sets, so a multiply-rotate hash is safe, and `SipHash` was the largest
//! single cost of the daemon under churn (about 28% of its CPU).

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

/// `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// `HashSet` with [`FastHasher`].
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// Folds each written word into the state with a rotate, xor and multiply
/// by an odd 64-bit constant (its low bits then depend on every input bit).
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15; // 2^64 / golden ratio, odd

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let (words, rest) = bytes.as_chunks::<8>();
        for &word in words {
            self.add(u64::from_le_bytes(word));
        }
        for &byte in rest {
            self.add(u64::from(byte));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u16(&mut self, value: u16) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn write_isize(&mut self, value: isize) {
        self.add(value.cast_unsigned() as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn sequential_cookies_spread_over_buckets() {
        // hashbrown picks buckets from the low bits and tags from the top 7.
        let build = BuildHasherDefault::<FastHasher>::default();
        let low: FastSet<u64> = (0..4096u64).map(|c| build.hash_one(c) & 0xfff).collect();
        let top: FastSet<u64> = (0..4096u64).map(|c| build.hash_one(c) >> 57).collect();
        assert!(low.len() > 2500, "{} of 4096 low-bit values", low.len());
        assert_eq!(top.len(), 128, "every tag value used");
    }

    #[test]
    fn maps_work() {
        let mut map: FastMap<(u8, u16), u64> = FastMap::default();
        for i in 0..1000u16 {
            *map.entry((u8::try_from(i % 7).expect("small"), i))
                .or_default() += 1;
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map[&(3, 10)], 1);
    }
}
