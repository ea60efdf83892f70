//! Row digests and the additive aggregate a tree node holds.
//!
//! A row digest hashes the encoded key followed by the encoded compared values. The default
//! hash is xxh3-128 with a seed (fast: the engine must digest tens of millions of rows a
//! second per core); `blake3` is a keyed cryptographic option for tamper-evident use, where a
//! writer must not be able to craft a row that digests like another.
//!
//! An [`Aggregate`] is `(count, sum of row digests mod 2^128)`. Addition is commutative and
//! associative, so a node's aggregate does not depend on row order or on how the range was
//! chunked, and it can be subtracted from. Plain XOR is avoided on purpose: with XOR two
//! copies of the same row cancel out, and a duplicated row would be invisible.

use serde::{Deserialize, Serialize};

use crate::value::{RowBuf, Sink as _, Value};

/// A 128-bit row digest.
pub type Digest = u128;

/// Which hash digests rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlgorithm {
    /// Seeded xxh3-128: fast, not collision-resistant against an adversary.
    #[default]
    Xxh3,
    /// Keyed BLAKE3, truncated to 128 bits: slower, tamper-evident.
    Blake3,
}

/// Digests rows. Cheap to clone; every copy of one dataset must use equal hashers.
#[derive(Clone, Debug)]
pub struct RowHasher {
    algorithm: DigestAlgorithm,
    seed: u64,
    blake3_key: [u8; 32],
}

impl RowHasher {
    /// A hasher for `algorithm`, seeded with `seed`.
    pub fn new(algorithm: DigestAlgorithm, seed: u64) -> RowHasher {
        let mut blake3_key = [0u8; 32];
        blake3_key[..8].copy_from_slice(&seed.to_le_bytes());
        RowHasher {
            algorithm,
            seed,
            blake3_key,
        }
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// Digests one already-encoded row: `encoded` is the key's bytes followed by the values'
    /// canonical encodings. `key_len` separates the two so that no key can run into a value.
    #[inline]
    pub fn digest_encoded(&self, encoded: &[u8], key_len: usize) -> Digest {
        match self.algorithm {
            DigestAlgorithm::Xxh3 => xxhash_rust::xxh3::xxh3_128_with_seed(encoded, self.seed ^ key_len as u64),
            DigestAlgorithm::Blake3 => {
                let mut h = blake3::Hasher::new_keyed(&self.blake3_key);
                h.update(&(key_len as u64).to_le_bytes());
                h.update(encoded);
                let out = h.finalize();
                // Taking the first 16 bytes of a BLAKE3 output is as strong as a 128-bit hash.
                u128::from_le_bytes(out.as_bytes()[..16].try_into().unwrap())
            }
        }
    }

    /// Digests a row from its key bytes and values. Rows encode into a fixed buffer on the
    /// stack; one too long for it is encoded again into `scratch`.
    #[inline]
    pub fn digest_row(&self, key: &[u8], values: &[Value], scratch: &mut Vec<u8>) -> Digest {
        let mut row = RowBuf::new();
        row.put(key);
        for v in values {
            v.encode(&mut row);
        }
        if let Some(encoded) = row.as_bytes() {
            return self.digest_encoded(encoded, key.len());
        }
        scratch.clear();
        scratch.extend_from_slice(key);
        for v in values {
            v.encode(scratch);
        }
        self.digest_encoded(scratch, key.len())
    }
}

/// The aggregate of a range: how many rows, and the sum of their digests mod 2^128.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Aggregate {
    /// Number of rows in the range.
    pub count: u64,
    /// Sum of the row digests, wrapping at 2^128.
    pub sum: u128,
}

impl Aggregate {
    /// Adds one row.
    #[inline]
    pub fn add(&mut self, digest: Digest) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(digest);
    }

    /// Removes one row previously added.
    #[inline]
    pub fn remove(&mut self, digest: Digest) {
        self.count -= 1;
        self.sum = self.sum.wrapping_sub(digest);
    }

    /// Adds another aggregate into this one.
    #[inline]
    pub fn merge(&mut self, other: &Aggregate) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_is_order_independent_and_subtractable() {
        let digests = [u128::MAX, 7, 1 << 100, 3];
        let mut a = Aggregate::default();
        digests.iter().for_each(|d| a.add(*d));
        let mut b = Aggregate::default();
        digests.iter().rev().for_each(|d| b.add(*d));
        assert_eq!(a, b);
        b.remove(7);
        assert_ne!(a, b);
        b.add(7);
        assert_eq!(a, b);
    }

    #[test]
    fn duplicates_do_not_cancel() {
        let mut once = Aggregate::default();
        once.add(99);
        let mut twice = once;
        twice.add(99);
        twice.add(99);
        assert_ne!(once, twice);
        assert_ne!(once.sum, twice.sum);
    }

    #[test]
    fn key_boundary_is_part_of_the_digest() {
        let h = RowHasher::new(DigestAlgorithm::Xxh3, 1);
        assert_ne!(h.digest_encoded(b"abc", 1), h.digest_encoded(b"abc", 2));
        let b = RowHasher::new(DigestAlgorithm::Blake3, 1);
        assert_ne!(b.digest_encoded(b"abc", 1), b.digest_encoded(b"abc", 2));
        assert_ne!(h.digest_encoded(b"abc", 1), b.digest_encoded(b"abc", 1));
    }

    #[test]
    fn long_rows_digest_as_short_ones_would() {
        // Rows past the fixed buffer take the Vec path: same bytes, same digest.
        let h = RowHasher::new(DigestAlgorithm::Xxh3, 9);
        for len in [
            0,
            1,
            200,
            crate::value::ROW_BUF_BYTES - 14,
            crate::value::ROW_BUF_BYTES,
            5000,
        ] {
            let values = [Value::Int(7), Value::Text("x".repeat(len))];
            let mut encoded = b"key".to_vec();
            values.iter().for_each(|v| v.encode(&mut encoded));
            let mut scratch = Vec::new();
            assert_eq!(
                h.digest_row(b"key", &values, &mut scratch),
                h.digest_encoded(&encoded, 3),
                "len {len}"
            );
        }
    }

    #[test]
    fn seeds_change_digests() {
        let a = RowHasher::new(DigestAlgorithm::Xxh3, 1).digest_encoded(b"row", 1);
        let b = RowHasher::new(DigestAlgorithm::Xxh3, 2).digest_encoded(b"row", 1);
        assert_ne!(a, b);
    }
}
