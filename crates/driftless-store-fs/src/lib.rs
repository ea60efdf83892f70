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
mod tasks;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use driftless_core::tree::LeafBuilder;
use driftless_core::{Boundaries, Key, KeyRange, LogicalType, RowHasher, Tree, Value};
use driftless_store::{Column, DigestBatch, DigestStream, Progress, Sample, Schema, Store, StoreError, redact_url};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::digest::{Col, Job};
use crate::listing::Listing;
use crate::tasks::{Windows, blocking};

/// The name of the one key column: the file's relative path.
pub const KEY_COLUMN: &str = "key";

/// A local directory copy. Cheap to open (no I/O until first used); the directory is walked
/// once, on first use, and its sorted listing kept for the store's lifetime.
pub struct FsStore {
    location: Arc<str>,
    root: Arc<Path>,
    listing: OnceCell<Arc<Listing>>,
}

impl fmt::Debug for FsStore {
    // The derived form would print every file of the listing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStore")
            .field("location", &self.location)
            .field("root", &self.root)
            .field("listed", &self.listing.get().map(|l| l.len()))
            .finish()
    }
}

impl FsStore {
    /// Opens the directory named by a `file:` URL (see the crate docs for the forms).
    /// Only the URL is checked here; a missing directory is reported by the first call that
    /// reads it ([`Store::schema`], [`Store::check_schema`] or a scan) as
    /// [`StoreError::Open`].
    pub fn open(url: &str) -> Result<FsStore, StoreError> {
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
            listing: OnceCell::new(),
        })
    }

    /// The directory this store reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sorted listing, walked on first use.
    async fn listing(&self) -> Result<Arc<Listing>, StoreError> {
        let listing = self
            .listing
            .get_or_try_init(|| {
                let (location, root) = (self.location.clone(), self.root.clone());
                blocking(&self.location, move || listing::list(&location, &root).map(Arc::new))
            })
            .await?;
        Ok(listing.clone())
    }

    /// Fails with [`StoreError::Open`] unless the root is a directory.
    async fn check_root(&self) -> Result<(), StoreError> {
        let (location, root) = (self.location.clone(), self.root.clone());
        blocking(&self.location, move || listing::check_root(&location, &root)).await
    }

    fn schema_error(&self, reason: String) -> StoreError {
        StoreError::Schema {
            location: self.location.to_string(),
            reason,
        }
    }

    /// The compared columns of a resolved schema, checking its key too.
    fn columns_of(&self, schema: &Schema) -> Result<Arc<[Col]>, StoreError> {
        let key: Vec<String> = schema.key_names();
        self.check_key(&key, false)?;
        let names: Vec<String> = schema.values.iter().map(|c| c.name.clone()).collect();
        self.resolve_columns(&names)
    }

    /// Checks key column names; `allow_empty` accepts no names (the store's own key).
    fn check_key(&self, key: &[String], allow_empty: bool) -> Result<(), StoreError> {
        if (allow_empty && key.is_empty()) || key == [KEY_COLUMN] {
            return Ok(());
        }
        let reason = match key.iter().find(|k| *k != KEY_COLUMN) {
            Some(name) => format!(
                "no key column {name:?}: a directory copy has one key column, {KEY_COLUMN:?}, \
                 the file's relative path"
            ),
            None if key.is_empty() => format!("no key column given; it must be {KEY_COLUMN:?}"),
            None => format!("key column {KEY_COLUMN:?} is listed {} times", key.len()),
        };
        Err(self.schema_error(reason))
    }

    /// Resolves compared column names, in the order given.
    fn resolve_columns(&self, names: &[String]) -> Result<Arc<[Col]>, StoreError> {
        let mut cols = Vec::with_capacity(names.len());
        for name in names {
            let col = Col::from_name(name).ok_or_else(|| {
                self.schema_error(format!(
                    "no column {name:?}: a directory copy's columns are \"size\" and \"content\""
                ))
            })?;
            if cols.contains(&col) {
                return Err(self.schema_error(format!("column {name:?} is listed twice")));
            }
            cols.push(col);
        }
        Ok(cols.into())
    }

    fn job(&self, listing: Arc<Listing>, hasher: &RowHasher, columns: Arc<[Col]>) -> Job {
        Job {
            location: self.location.clone(),
            root: self.root.clone(),
            listing,
            hasher: hasher.clone(),
            columns,
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
        self.check_key(key, true)?;
        let cols = match columns {
            Some(names) => self.resolve_columns(names)?,
            None => Col::ALL.into(),
        };
        Ok(Schema {
            key: vec![Column {
                name: KEY_COLUMN.to_owned(),
                ty: LogicalType::Text,
            }],
            values: cols
                .iter()
                .map(|c| Column {
                    name: c.name().to_owned(),
                    ty: c.ty(),
                })
                .collect(),
        })
    }

    async fn check_schema(&self, schema: &Schema) -> Result<(), StoreError> {
        self.check_root().await?;
        self.columns_of(schema).map(drop)
    }

    async fn sample_keys(&self, _schema: &Schema, max: usize) -> Result<Sample, StoreError> {
        let listing = self.listing().await?;
        let n = listing.len();
        let keys = if max >= n {
            listing.iter().map(|e| e.key.clone()).collect()
        } else {
            // Evenly spaced: the listing is sorted, so these are its quantiles.
            (0..max).map(|i| listing[i * n / max].key.clone()).collect()
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
