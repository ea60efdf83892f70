//! A [`Store`] for a copy that is a local directory: [`FsStore`].
//!
//! # URL
//!
//! `file:///abs/path/to/dir` (a standard file URL, percent-escapes decoded), or
//! `file:relative/dir` / `file:./dir` for a path relative to the current directory at the
//! time the store is opened (taken literally). `file://name/...` is rejected because it names
//! a host. See the `root` module for the details.
//!
//! # Rows
//!
//! - A row is a regular file or a symlink below the root. Its key is its relative path with
//!   `/` separators, a single text column named `key`. Directories are not rows, so empty
//!   directories are invisible; sockets, FIFOs and devices are skipped.
//! - Symlinks are not followed: a symlink's content is the bytes of its target path, so a
//!   link pointed elsewhere is drift. (The root itself may be a symlink to a directory.)
//! - The compared columns are `size` (number of bytes) and `content` (a hash of the bytes,
//!   see the `digest` module). A row digests as
//!   `digest_row(key, [Int(size), Bytes(content hash)])`, with only the selected columns, in
//!   schema order.
//! - Keys sort bytewise over the whole path, so `a.txt` comes before `a/b`. The directory is
//!   walked once per store and the sorted listing is cached for the rest of the run: files
//!   created after the first listing are not seen, files deleted after it fail the scan.
//! - A file name that is not UTF-8 fails the listing, naming the path; a file that cannot be
//!   read fails the scan with [`StoreError::Read`] naming the relative path.

mod digest;
mod listing;
mod root;
mod source;
mod tasks;
mod write;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use driftless_core::tree::LeafBuilder;
use driftless_core::{Boundaries, Key, KeyRange, RowHasher, Tree, Value};
use driftless_store::object::{self, ObjectSource};
use driftless_store::{
    CompareMode, DigestBatch, DigestStream, Progress, Sample, Schema, Store, StoreError, WriteOp, WriteResult,
    redact_url,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::digest::{Col, ContentHash, Job};
use crate::listing::{Entry, Listing};
use crate::tasks::{Windows, blocking};

/// The name of the one key column: the file's relative path.
pub const KEY_COLUMN: &str = object::KEY_COLUMN;

/// A local directory copy. Cheap to open (no I/O until first used); the directory is walked
/// once, on first use, and its sorted listing kept until this store writes to it.
pub struct FsStore {
    location: Arc<str>,
    root: Arc<Path>,
    compare: CompareMode,
    writable: bool,
    listing: tokio::sync::Mutex<Option<Arc<Listing>>>,
}

impl fmt::Debug for FsStore {
    // The derived form would print every file of the listing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStore")
            .field("location", &self.location)
            .field("root", &self.root)
            .field("compare", &self.compare)
            .finish()
    }
}

impl FsStore {
    /// Opens the directory named by a `file:` URL (see the crate docs for the forms).
    /// Only the URL is checked here; a missing directory is reported by the first call that
    /// reads it ([`Store::schema`], [`Store::check_schema`] or a scan) as
    /// [`StoreError::Open`].
    pub fn open(url: &str) -> Result<FsStore, StoreError> {
        FsStore::open_with(url, CompareMode::Content)
    }

    /// Opens the directory, fingerprinting files as `compare` says: `content` hashes them
    /// with the dataset's algorithm, `etag` and `checksum` with MD5 (what a single-part S3
    /// upload of the same bytes has as its ETag, so a directory compares with a bucket).
    pub fn open_with(url: &str, compare: CompareMode) -> Result<FsStore, StoreError> {
        let root = root::parse(url).map_err(|reason| StoreError::Open {
            // Whatever was passed may be another store's URL with a password in it.
            location: if url.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("file:")) {
                url.to_owned()
            } else {
                redact_url(url)
            },
            reason,
        })?;
        Ok(FsStore {
            location: url.into(),
            root: root.into(),
            compare,
            writable: false,
            listing: tokio::sync::Mutex::new(None),
        })
    }

    /// This copy, opened for repair writes.
    pub fn for_writing(mut self) -> FsStore {
        self.writable = true;
        self
    }

    /// The directory this store reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sorted listing, walked on first use and again after this store has written.
    async fn listing(&self) -> Result<Arc<Listing>, StoreError> {
        let mut cached = self.listing.lock().await;
        if let Some(listing) = &*cached {
            return Ok(listing.clone());
        }
        let (location, root) = (self.location.clone(), self.root.clone());
        let listing = blocking(&self.location, move || listing::list(&location, &root).map(Arc::new)).await?;
        *cached = Some(listing.clone());
        Ok(listing)
    }

    /// Fails with [`StoreError::Open`] unless the root is a directory.
    async fn check_root(&self) -> Result<(), StoreError> {
        let (location, root) = (self.location.clone(), self.root.clone());
        blocking(&self.location, move || listing::check_root(&location, &root)).await
    }

    /// The compared columns of a resolved schema, checking its key too.
    fn columns_of(&self, schema: &Schema) -> Result<Arc<[Col]>, StoreError> {
        object::object_columns(&self.location, "directory", schema).map(Into::into)
    }

    /// Digests of the rows with `keys` as they are on disk now (not in the cached listing),
    /// in key order.
    async fn digest_from_disk(&self, job: Job, keys: &[Key]) -> Result<DigestBatch, StoreError> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let location = self.location.clone();
        blocking(&self.location, move || {
            let mut entries = Vec::with_capacity(keys.len());
            for key in &keys {
                let rel = object::key_path(&location, key)?;
                let entry = listing::entry_at(&job.root, key, &rel).map_err(|e| StoreError::Read {
                    location: location.to_string(),
                    reason: format!("{rel}: {e}"),
                })?;
                entries.extend(entry);
            }
            job.digest_entries(&entries)
        })
        .await
    }

    fn job(&self, listing: Arc<Listing>, hasher: &RowHasher, columns: Arc<[Col]>) -> Job {
        Job {
            location: self.location.clone(),
            root: self.root.clone(),
            listing,
            hasher: hasher.clone(),
            columns,
            content: ContentHash::of(self.compare, hasher.algorithm()),
        }
    }
}

#[async_trait]
impl Store for FsStore {
    fn kind(&self) -> &'static str {
        "directory"
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn schema(&self, key: &[String], columns: Option<&[String]>) -> Result<Schema, StoreError> {
        self.check_root().await?;
        object::object_schema(&self.location, "directory", key, columns)
    }

    async fn check_schema(&self, schema: &Schema) -> Result<(), StoreError> {
        self.check_root().await?;
        self.columns_of(schema).map(drop)
    }

    async fn sample_keys(&self, _schema: &Schema, max: usize) -> Result<Sample, StoreError> {
        let listing = self.listing().await?;
        let n = listing.len();
        let keys = if max >= n {
            listing.iter().map(Entry::key).collect()
        } else {
            // Evenly spaced: the listing is sorted, so these are its quantiles.
            (0..max).map(|i| listing[i * n / max].key()).collect()
        };
        Ok(Sample { keys, rows: n as u64 })
    }

    fn scan<'a>(
        &'a self,
        schema: &'a Schema,
        range: KeyRange,
        hasher: &'a RowHasher,
        progress: &'a Progress,
    ) -> DigestStream<'a> {
        let start = async move {
            let columns = self.columns_of(schema)?;
            let listing = self.listing().await?;
            let (from, end) = listing::slice_bounds(&listing, range.lo.as_ref(), range.hi.as_ref());
            let job = self.job(listing, hasher, columns);
            let progress = progress.clone();
            Ok::<_, StoreError>(Windows::new(self.location.clone(), from, end, move |r| {
                job.digest_window(r, &progress)
            }))
        };
        // The listing is sorted by key and paths are unique, so the order needs no check.
        stream::once(start)
            .map_ok(move |windows| {
                stream::try_unfold(windows, move |mut windows| async move {
                    let Some(next) = windows.next().await else {
                        return Ok(None);
                    };
                    let batches = next?;
                    Ok(Some((
                        stream::iter(batches.into_iter().map(Ok::<DigestBatch, StoreError>)),
                        windows,
                    )))
                })
                .try_flatten()
            })
            .try_flatten()
            .boxed()
    }

    /// Digests in parallel straight into leaves: no `(key, digest)` pair is materialised and no
    /// key cloned, which the default (folding [`Store::scan`]) would do for every file.
    async fn tree(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        hasher: &RowHasher,
        progress: &Progress,
    ) -> Result<Tree, StoreError> {
        let columns = self.columns_of(schema)?;
        let listing = self.listing().await?;
        let end = listing.len();
        let job = self.job(listing, hasher, columns);
        let shared = Arc::new(boundaries.clone());
        let progress = progress.clone();
        let mut windows = Windows::new(self.location.clone(), 0, end, move |r| {
            job.tree_window(&shared, r, &progress)
        });
        let mut tree = LeafBuilder::new(boundaries).finish();
        while let Some(part) = windows.next().await {
            if let Some(part) = part? {
                tree.merge(&part);
            }
        }
        Ok(tree)
    }

    async fn digest_keys(&self, schema: &Schema, keys: &[Key], hasher: &RowHasher) -> Result<DigestBatch, StoreError> {
        let job = self.job(Arc::default(), hasher, self.columns_of(schema)?);
        self.digest_from_disk(job, keys).await
    }

    fn settles(&self, schema: &Schema) -> bool {
        self.compare.settles() && schema.values.iter().any(|c| c.name == Col::Content.name())
    }

    async fn settle_keys(&self, schema: &Schema, keys: &[Key], hasher: &RowHasher) -> Result<DigestBatch, StoreError> {
        let mut job = self.job(Arc::default(), hasher, self.columns_of(schema)?);
        job.content = ContentHash::Md5;
        self.digest_from_disk(job, keys).await
    }

    fn writable(&self) -> bool {
        self.writable
    }

    async fn apply(
        &self,
        check: &Schema,
        _write: &Schema,
        hasher: &RowHasher,
        ops: &[WriteOp],
    ) -> Result<Vec<WriteResult>, StoreError> {
        if !self.writable {
            return Err(self.unsupported("was opened read-only"));
        }
        let job = self.job(Arc::default(), hasher, self.columns_of(check)?);
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(write::apply_one(&job, op).await);
        }
        // The cached listing no longer says what the directory holds.
        *self.listing.lock().await = None;
        Ok(results)
    }

    fn object_source(&self) -> Option<Arc<dyn ObjectSource>> {
        Some(Arc::new(source::FsSource::new(
            self.location.clone(),
            self.root.clone(),
        )))
    }

    async fn fetch(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError> {
        let columns = self.columns_of(schema)?;
        let listing = self.listing().await?;
        let keys = keys.to_vec();
        // Fetching reads values and never digests them, so any hasher will do.
        let job = self.job(listing, &RowHasher::new(Default::default(), 0), columns);
        blocking(&self.location, move || {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(entry) = listing::find(&job.listing, &key)
                    && let Some(values) = job.fetch(entry)?
                {
                    out.push((key, values));
                }
            }
            Ok(out)
        })
        .await
    }
}
