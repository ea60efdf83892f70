//! Support for the driftless benchmarks.
//!
//! The criterion benchmark (`benches/digest.rs`) measures the digest engine in memory; the
//! end-to-end harness (`src/bin/e2e/`, binary `driftless-e2e-bench`) builds copies on disk
//! and times the release `driftless` binary against them. This library holds what the
//! harness needs and what the two share:
//!
//! - [`rng`]: a small deterministic generator, so every run builds the same data.
//! - [`measure`]: runs a child process, timing its wall clock and reading its peak RSS
//!   through `/usr/bin/time`, and sums up repeated runs.
//! - [`report`]: reads the divergences out of a `driftless scan --report json` report, and
//!   the count out of `rclone check`'s summary.
//! - [`sqlite_data`]: the SQLite copies of the `sqlite-*` scenarios.
//! - [`files_data`]: the directory trees of the `files-100k` scenario.
//! - [`pg_data`]: the PostgreSQL databases of the `postgres-*` scenarios.
//! - [`s3_data`]: the buckets and the directory of the S3 benchmark (`driftless-s3-bench`),
//!   and the bare listing loop its floor times.

pub mod files_data;
pub mod measure;
pub mod pg_data;
pub mod report;
pub mod rng;
pub mod s3_data;
pub mod sqlite_data;

/// A divergence the harness expects or found: the key as compact JSON text (for example
/// `{"id":42}`) and its kind (`changed`, `missing` or `extra`).
pub type Divergence = (String, String);
