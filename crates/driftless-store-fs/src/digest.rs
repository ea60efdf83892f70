//! Digesting rows: reading each file's size and content hash and folding them into row
//! digests, in parallel on the rayon pool.
//!
//! A row's values are `size` (its length in bytes, a number) and `content` (a hash of its
//! bytes: xxh3-128 with seed 0, big-endian as `xxhsum -H2` prints it, when the dataset
//! digests with xxh3; BLAKE3's 32 bytes when it digests with BLAKE3). Hashing the content
//! first keeps a row's encoding small whatever the file's size, and it is what lets a file be
//! read as a stream instead of whole.
//!
//! The hot path does one `open` and one `read` per small file (a short read of a regular
//! file is its end) and no allocation beyond the key each scanned row hands out: the path,
//! the read buffer, the values and the encoding buffer are reused across a rayon task's files.

use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use driftless_core::tree::LeafBuilder;
use driftless_core::{Boundaries, Digest, DigestAlgorithm, Key, RowHasher, Tree, Value};
use driftless_store::object::{BodyHasher, Fingerprint, ObjectColumn};
use driftless_store::{CompareMode, DigestBatch, StoreError};
use rayon::prelude::*;

use crate::listing::{Entry, Kind, Listing};

/// Files per rayon task, and per batch a scan emits.
pub(crate) const CHUNK_FILES: usize = 2048;

/// The reused read buffer. A file that fits is hashed in one call; a larger one is streamed
/// through it, so memory stays flat however large the files are.
const READ_BUF: usize = 256 * 1024;

/// A compared column of a directory copy: the shared object model's.
pub(crate) type Col = ObjectColumn;

/// What the `content` column hashes a file's bytes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContentHash {
    /// The dataset's row algorithm, bare (`content` mode).
    Row(DigestAlgorithm),
    /// MD5, tagged as the object model's MD5 fingerprint (`etag` and `checksum` modes, and
    /// settling): what a single-part S3 upload of the same bytes has as its ETag.
    Md5,
}

impl ContentHash {
    /// The hash a copy compared by `compare` uses, for a dataset digesting with `algorithm`.
    pub(crate) fn of(compare: CompareMode, algorithm: DigestAlgorithm) -> ContentHash {
        match compare {
            CompareMode::Content => ContentHash::Row(algorithm),
            CompareMode::Etag | CompareMode::Checksum => ContentHash::Md5,
        }
    }
}

/// Everything a window of work needs; cheap to clone into a blocking task.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub location: Arc<str>,
    pub root: Arc<Path>,
    pub listing: Arc<Listing>,
    pub hasher: RowHasher,
    /// The compared columns, in schema (and so digest) order.
    pub columns: Arc<[Col]>,
    /// What `content` hashes the bytes with.
    pub content: ContentHash,
}

/// Buffers reused across the files of one rayon task.
struct Scratch {
    path: PathBuf,
    buf: Vec<u8>,
    hash: Vec<u8>,
    values: Vec<Value>,
    encoded: Vec<u8>,
}

impl Job {
    fn scratch(&self) -> Scratch {
        let values = self
            .columns
            .iter()
            .map(|c| match c {
                Col::Size => Value::Int(0),
                Col::Content => Value::Bytes(Vec::with_capacity(32)),
            })
            .collect();
        Scratch {
            path: PathBuf::with_capacity(self.root.as_os_str().len() + 256),
            // Only a task that reads file content needs the read buffer.
            buf: if self.columns.contains(&Col::Content) {
                vec![0; READ_BUF]
            } else {
                Vec::new()
            },
            hash: Vec::with_capacity(32),
            values,
            encoded: Vec::with_capacity(256),
        }
    }

    fn read_error(&self, entry: &Entry, e: &io::Error) -> StoreError {
        StoreError::Read {
            location: self.location.to_string(),
            reason: format!("{}: {e}", entry.path),
        }
    }

    /// The key and digest of one row.
    fn keyed(&self, entry: &Entry, s: &mut Scratch) -> Result<(Key, Digest), StoreError> {
        let key = entry.key();
        let digest = self.digest(entry, &key, s)?;
        Ok((key, digest))
    }

    /// The digest of one row with `key`.
    fn digest(&self, entry: &Entry, key: &Key, s: &mut Scratch) -> Result<Digest, StoreError> {
        let size = self.read_row(entry, s).map_err(|e| self.read_error(entry, &e))?;
        for (col, value) in self.columns.iter().zip(&mut s.values) {
            match (col, value) {
                (Col::Size, v) => *v = Value::Int(size),
                // Swapped, not copied: the old bytes become the next row's hash buffer.
                (Col::Content, Value::Bytes(b)) => std::mem::swap(b, &mut s.hash),
                (Col::Content, v) => *v = Value::Bytes(s.hash.clone()),
            }
        }
        Ok(self.hasher.digest_row(key.as_bytes(), &s.values, &mut s.encoded))
    }

    /// Reads what the selected columns need of one row: returns its size and leaves the
    /// content hash in `s.hash` (when content is compared). No column, no I/O.
    fn read_row(&self, entry: &Entry, s: &mut Scratch) -> io::Result<i64> {
        let want_size = self.columns.contains(&Col::Size);
        let want_content = self.columns.contains(&Col::Content);
        if !want_size && !want_content {
            return Ok(0);
        }
        s.path.clear();
        s.path.push(&*self.root);
        s.path.push(&*entry.path);
        let algorithm = self.content;
        s.hash.clear();
        let size = match entry.kind {
            Kind::Symlink => {
                let target = fs::read_link(&s.path)?;
                let bytes = target.as_os_str().as_encoded_bytes();
                if want_content {
                    hash_once(algorithm, bytes, &mut s.hash);
                }
                bytes.len() as u64
            }
            Kind::File if want_content => hash_file(
                &mut File::open(&s.path)?,
                End::ShortRead,
                algorithm,
                &mut s.buf,
                &mut s.hash,
            )?,
            // Size alone: one stat, and the content is never opened.
            Kind::File => fs::symlink_metadata(&s.path)?.len(),
        };
        // No file reaches 2^63 bytes; saturate rather than wrap if one ever claims to.
        Ok(i64::try_from(size).unwrap_or(i64::MAX))
    }

    /// The `(key, digest)` pairs of `range` of the listing, one batch per rayon task, in key
    /// order, counting rows into `progress` as they are digested. Blocking: run it off the
    /// runtime.
    pub(crate) fn digest_window(
        &self,
        range: Range<usize>,
        progress: &AtomicU64,
    ) -> Result<Vec<DigestBatch>, StoreError> {
        self.listing[range]
            .par_chunks(CHUNK_FILES)
            .map_init(
                || self.scratch(),
                |s, chunk| {
                    let batch = chunk.iter().map(|e| self.keyed(e, s)).collect();
                    progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    batch
                },
            )
            .collect()
    }

    /// The `(key, digest)` of each entry, in the order given. Blocking.
    pub(crate) fn digest_entries(&self, entries: &[Entry]) -> Result<DigestBatch, StoreError> {
        let mut s = self.scratch();
        entries.iter().map(|e| self.keyed(e, &mut s)).collect()
    }

    /// `range` of the listing folded into leaves over `boundaries`, or `None` for an empty
    /// range, counting rows into `progress`. Blocking: run it off the runtime.
    pub(crate) fn tree_window(
        &self,
        boundaries: &Boundaries,
        range: Range<usize>,
        progress: &AtomicU64,
    ) -> Result<Option<Tree>, StoreError> {
        self.listing[range]
            .par_chunks(CHUNK_FILES)
            .map_init(
                || self.scratch(),
                |s, chunk| {
                    let mut leaves = LeafBuilder::new(boundaries);
                    for e in chunk {
                        let (key, digest) = self.keyed(e, s)?;
                        leaves.add(&key, digest);
                    }
                    progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    Ok(leaves.finish())
                },
            )
            .try_reduce_with(|mut a, b| {
                a.merge(&b);
                Ok(a)
            })
            .transpose()
    }

    /// The whole values of one row, or `None` if it has vanished since the listing.
    /// Blocking: run it off the runtime.
    pub(crate) fn fetch(&self, entry: &Entry) -> Result<Option<Vec<Value>>, StoreError> {
        let path = self.root.join(&*entry.path);
        let content = match entry.kind {
            Kind::File => fs::read(&path),
            Kind::Symlink => fs::read_link(&path).map(|t| t.into_os_string().into_encoded_bytes()),
        };
        let content = match content {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.read_error(entry, &e)),
        };
        let size = i64::try_from(content.len()).unwrap_or(i64::MAX);
        let mut content = Some(content);
        let values = self
            .columns
            .iter()
            .map(|c| match c {
                Col::Size => Value::Int(size),
                // A schema lists a column once (checked when it is resolved), so the content
                // is taken at most once; the fallback only guards against a hand-built schema.
                Col::Content => Value::Bytes(content.take().unwrap_or_default()),
            })
            .collect();
        Ok(Some(values))
    }
}

/// How many files one blocking task digests: enough rayon tasks to keep every thread busy,
/// few enough that a scan reports progress and hands out batches steadily.
pub(crate) fn window_files() -> usize {
    CHUNK_FILES * (4 * rayon::current_num_threads()).max(8)
}

/// Hashes `bytes` in one call, appending the hash to `out`.
fn hash_once(algorithm: ContentHash, bytes: &[u8], out: &mut Vec<u8>) {
    match algorithm {
        ContentHash::Row(DigestAlgorithm::Xxh3) => {
            out.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(bytes).to_be_bytes());
        }
        ContentHash::Row(DigestAlgorithm::Blake3) => out.extend_from_slice(blake3::hash(bytes).as_bytes()),
        ContentHash::Md5 => {
            let mut h = BodyHasher::md5();
            h.update(bytes);
            push_fingerprint(h.finish(), out);
        }
    }
}

/// Appends the bytes the `content` column holds for `fingerprint`.
fn push_fingerprint(fingerprint: Fingerprint, out: &mut Vec<u8>) {
    if let driftless_core::Value::Bytes(b) = fingerprint.to_value() {
        out.extend_from_slice(&b);
    }
}

/// How a reader shows the end of its content.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Only a read of zero bytes is the end (pipes, sockets, any `Read`). The store reads only
    /// regular files, so only the tests, which stream through a trickling reader, use it.
    #[cfg_attr(not(test), expect(dead_code))]
    ZeroRead,
    /// A read of fewer bytes than asked is the end too. POSIX promises this for regular
    /// files (short of a signal, which does not interrupt a read from the page cache), and
    /// it saves the extra `read` per file that probing for the end would cost.
    ShortRead,
}

/// Reads `reader` to its end through `buf`, appending the content hash to `out`; returns the
/// number of bytes read. Content that fits `buf` is hashed in one call, larger content is
/// streamed; both give the same hash.
fn hash_file(
    reader: &mut impl Read,
    end: End,
    algorithm: ContentHash,
    buf: &mut [u8],
    out: &mut Vec<u8>,
) -> io::Result<u64> {
    let (first, at_end) = fill(reader, end, buf)?;
    if at_end {
        hash_once(algorithm, &buf[..first], out);
        return Ok(first as u64);
    }
    match algorithm {
        ContentHash::Row(DigestAlgorithm::Xxh3) => {
            let mut h = xxhash_rust::xxh3::Xxh3Default::new();
            let total = stream(reader, end, buf, first, |b| h.update(b))?;
            out.extend_from_slice(&h.digest128().to_be_bytes());
            Ok(total)
        }
        ContentHash::Row(DigestAlgorithm::Blake3) => {
            let mut h = blake3::Hasher::new();
            let total = stream(reader, end, buf, first, |b| {
                h.update(b);
            })?;
            out.extend_from_slice(h.finalize().as_bytes());
            Ok(total)
        }
        ContentHash::Md5 => {
            let mut h = BodyHasher::md5();
            let total = stream(reader, end, buf, first, |b| h.update(b))?;
            push_fingerprint(h.finish(), out);
            Ok(total)
        }
    }
}

/// Feeds the `first` bytes already in `buf`, then the rest of `reader`, to `update`.
fn stream(
    reader: &mut impl Read,
    end: End,
    buf: &mut [u8],
    first: usize,
    mut update: impl FnMut(&[u8]),
) -> io::Result<u64> {
    update(&buf[..first]);
    let mut total = first as u64;
    loop {
        let (n, at_end) = fill(reader, end, buf)?;
        update(&buf[..n]);
        total += n as u64;
        if at_end {
            return Ok(total);
        }
    }
}

/// Reads until `buf` is full or the reader is at its end; returns the bytes read and
/// whether the end was seen.
fn fill(reader: &mut impl Read, end: End, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(n) => {
                filled += n;
                if matches!(end, End::ShortRead) && filled < buf.len() {
                    return Ok((filled, true));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, false))
}

/// The content hash of `bytes` as a row holds it, for tests.
#[cfg(test)]
pub(crate) fn content_hash(algorithm: ContentHash, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    hash_once(algorithm, bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_and_one_shot_hashes_agree() {
        // Sizes around the buffer size: under, exactly, just over, several buffers.
        for len in [0, 1, 1000, READ_BUF - 1, READ_BUF, READ_BUF + 1, 3 * READ_BUF + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for algorithm in [
                ContentHash::Row(DigestAlgorithm::Xxh3),
                ContentHash::Row(DigestAlgorithm::Blake3),
                ContentHash::Md5,
            ] {
                let mut buf = vec![0; READ_BUF];
                let want = content_hash(algorithm, &data);
                // A reader that returns short reads, as pipes and some file systems do.
                let mut out = Vec::new();
                let n = hash_file(&mut Trickle(&data[..]), End::ZeroRead, algorithm, &mut buf, &mut out).unwrap();
                assert_eq!((n, &out), (len as u64, &want), "trickle, len {len} {algorithm:?}");
                // A reader that fills every read it can, as a regular file does.
                let mut out = Vec::new();
                let n = hash_file(&mut &data[..], End::ShortRead, algorithm, &mut buf, &mut out).unwrap();
                assert_eq!((n, &out), (len as u64, &want), "slice, len {len} {algorithm:?}");
            }
        }
        assert_eq!(content_hash(ContentHash::Row(DigestAlgorithm::Xxh3), b"x").len(), 16);
        assert_eq!(content_hash(ContentHash::Row(DigestAlgorithm::Blake3), b"x").len(), 32);
        // The MD5 a single-part upload of "x" has as its ETag, tagged as the model tags it.
        let md5 = content_hash(ContentHash::Md5, b"x");
        assert_eq!(&md5[..4], b"md5:");
        assert_eq!(
            md5[4..].iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "9dd4e461268c8034f5c8564e155c67a6"
        );
    }

    struct Trickle<'d>(&'d [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(40_000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
}
