//! The digest-and-compare core of driftless. It does no I/O: stores feed it keys and
//! normalised values, and it answers which ranges and which keys differ.
//!
//! # Layout
//!
//! - [`key`]: typed key parts and their order-preserving byte encoding. Every key in the
//!   system is compared as these bytes, so text orders bytewise everywhere.
//! - [`value`]: logical column types and the one canonical encoding of a value, so the same
//!   logical row digests the same whichever database held it.
//! - [`digest`]: row digests (seeded xxh3-128 by default, keyed BLAKE3 on request) and the
//!   additive leaf aggregate `(count, sum mod 2^128)`.
//! - [`tree`]: range boundaries from key quantiles, and the range Merkle tree over them,
//!   built sequentially or in parallel chunks and compared top-down.
//! - [`diff`]: the merge-join of two key-sorted `(key, digest)` streams into divergences.

pub mod diff;
pub mod digest;
pub mod key;
pub mod tree;
pub mod value;

pub use diff::{Divergence, DivergenceKind, KeyDivergence, by_key, merge_join};
pub use digest::{Aggregate, Digest, DigestAlgorithm, RowHasher};
pub use key::{Key, KeyError, KeyPart};
pub use tree::{Boundaries, KeyRange, Tree};
pub use value::{LogicalType, Value};
