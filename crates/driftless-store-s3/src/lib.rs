//! A [`Store`] for a copy that is the objects under an S3 prefix: [`S3Store`].
//!
//! # URL and options
//!
//! `s3://bucket/prefix/` (the prefix may be empty, and is read as a folder: `s3://b/data`
//! is `data/`, so `data2/` is not part of it). Per copy: `endpoint` (an S3-compatible
//! server, `http://` works), `region`, `path_style`, and credentials from the config or the
//! standard AWS chain ([`client`]).
//!
//! # Rows
//!
//! The shared object model ([`driftless_store::object`]): key = the path under the prefix,
//! columns `size` and `content`, fingerprinted by the copy's [`CompareMode`]. Scans list
//! ([`list`]); no body is read in `etag` mode, a HEAD per object is made in `checksum` mode
//! and every body streamed in `content` mode. Keys ending in `/` (folder markers) are not
//! rows. The first listing of the canonical copy (its key sample) also folds every object
//! into a bounded summary ([`summary`]), so its tree costs no second listing; other trees
//! are listed in parallel ranges cut at the leaf boundaries.
//!
//! # Writes
//!
//! Conditional, per object ([`write`]): copy from canonical (server-side within one
//! endpoint, streamed otherwise, multipart above a threshold) or delete, each only if the
//! object still is what detection saw: `If-Match` / `If-None-Match` where the endpoint
//! honours them (probed once, [`probe`]), a check just before the write where it does not.

mod client;
mod fingerprint;
mod layout;
mod list;
mod probe;
mod summary;
mod tree;
mod write;

use std::sync::Arc;

use async_trait::async_trait;
use driftless_core::{Boundaries, Key, KeyRange, RowHasher, Tree, Value};
use driftless_store::object::{
    self, ObjectColumn, ObjectReader, ObjectSource, S3Address, object_columns, object_digest, object_values,
};
use driftless_store::{
    CompareMode, DigestBatch, DigestStream, Progress, Sample, Schema, Store, StoreError, WriteOp, WriteResult,
};
use futures::StreamExt;
use tokio::sync::OnceCell;

use crate::list::Cursor;
use crate::summary::Summary;

/// How a copy's client is set up and how it fingerprints objects.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// An S3-compatible server's URL; `None` for AWS.
    pub endpoint: Option<String>,
    /// The region; `None` for the AWS chain's (then `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// How objects are fingerprinted.
    pub compare: CompareMode,
    /// An access key id from the config; `None` for the AWS chain.
    pub access_key_id: Option<String>,
    /// Its secret; never printed.
    pub secret_access_key: Option<String>,
    /// The dataset's row hasher, which the summary of the first listing digests with.
    pub hasher: Option<RowHasher>,
}

/// The objects under one S3 prefix.
pub struct S3Store {
    location: String,
    bucket: String,
    prefix: String,
    region: String,
    client: aws_sdk_s3::Client,
    options: S3Options,
    writable: bool,
    summary: OnceCell<Summary>,
    conditional: OnceCell<bool>,
    /// The copy's folders and top-level objects, listed on first use and forgotten after a
    /// write; `Some(None)` for a flat copy.
    layout: tokio::sync::Mutex<Option<Arc<Option<layout::Layout>>>>,
    /// The keys per leaf this copy's last tree counted, which size the pages of re-reads.
    counted: std::sync::Mutex<Option<(Boundaries, Vec<u64>)>>,
}

impl std::fmt::Debug for S3Store {
    // The options hold a secret; the client its credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location)
            .field("endpoint", &self.options.endpoint)
            .field("compare", &self.options.compare)
            .finish_non_exhaustive()
    }
}

/// Rows per leaf an S3 copy asks the engine for. A divergent leaf is read back by listing
/// it, which costs a request and then time per key returned: a leaf of a tenth of a page
/// keeps re-reads to a small share of the listing, while the tree stays small.
const LEAF_ROWS: u64 = 100;

/// Bodies and HEADs in flight per copy, in `content` and `checksum` modes and key reads.
pub(crate) const OBJECT_CONCURRENCY: usize = 16;

impl S3Store {
    /// Opens `s3://bucket/prefix/`; no request is made until the copy is first read.
    pub async fn open(url: &str, options: S3Options) -> Result<S3Store, StoreError> {
        let (bucket, prefix) = parse_url(url).map_err(|reason| StoreError::Open {
            location: driftless_store::redact_url(url),
            reason,
        })?;
        let (client, region) = client::build(&options).await;
        Ok(S3Store {
            location: format!("s3://{bucket}/{prefix}"),
            bucket,
            prefix,
            region,
            client,
            options,
            writable: false,
            summary: OnceCell::new(),
            conditional: OnceCell::new(),
            layout: tokio::sync::Mutex::default(),
            counted: std::sync::Mutex::default(),
        })
    }

    /// Remembers the keys per leaf of a tree of this copy.
    fn count(&self, boundaries: &Boundaries, tree: &Tree) {
        let counts = tree.leaves().iter().map(|leaf| leaf.count).collect();
        if let Ok(mut counted) = self.counted.lock() {
            *counted = Some((boundaries.clone(), counts));
        }
    }

    /// The keys this copy's last tree counted in `range`, when `range` is a span of its leaves.
    fn counted_in(&self, range: &KeyRange) -> Option<u64> {
        let counted = self.counted.lock().ok()?;
        let (boundaries, counts) = counted.as_ref()?;
        let (first, last) = boundaries.leaves_of(range)?;
        Some(counts[first..=last].iter().sum())
    }

    /// This copy, opened for repair writes.
    pub fn for_writing(mut self) -> S3Store {
        self.writable = true;
        self
    }

    /// The full object key of a relative key.
    fn full_key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn read_error<E>(&self, e: &aws_sdk_s3::error::SdkError<E>) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::Read {
            location: self.location.clone(),
            reason: client::describe(e, &self.bucket),
        }
    }

    fn columns(&self, schema: &Schema) -> Result<Vec<ObjectColumn>, StoreError> {
        object_columns(&self.location, "S3", schema)
    }

    /// Fails with [`StoreError::Open`] unless the bucket can be listed.
    async fn check_bucket(&self) -> Result<(), StoreError> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            // Delimited, so that a server need not consider every object of the copy.
            .delimiter("/")
            .max_keys(1)
            .send()
            .await
            .map(drop)
            .map_err(|e| StoreError::Open {
                location: self.location.clone(),
                reason: client::describe(&e, &self.bucket),
            })
    }

    /// The `(key, digest)` of every listed object of a page, in order, with the
    /// fingerprint the compare mode asks for.
    async fn digest_page(
        &self,
        page: Vec<object::ObjectMeta>,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
    ) -> Result<DigestBatch, StoreError> {
        let metas: Vec<object::ObjectMeta> = futures::stream::iter(page)
            .map(|meta| self.fingerprinted(meta, columns))
            .buffered(OBJECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter_map(Result::transpose)
            .collect::<Result<_, _>>()?;
        Ok(digests(
            metas.into_iter().map(|m| (Key::text(&m.key), m)),
            columns,
            hasher,
        ))
    }
}

/// The `(key, digest)` of each object, in the order given.
fn digests(
    metas: impl IntoIterator<Item = (Key, object::ObjectMeta)>,
    columns: &[ObjectColumn],
    hasher: &RowHasher,
) -> DigestBatch {
    let mut scratch = Vec::new();
    metas
        .into_iter()
        .map(|(key, m)| {
            let digest = object_digest(hasher, &key, m.size, &m.fingerprint, columns, &mut scratch);
            (key, digest)
        })
        .collect()
}

/// `s3://bucket/prefix` into the bucket and the prefix, `/`-terminated unless empty.
fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| "not an s3:// URL; an S3 copy is s3://bucket/prefix/".to_owned())?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("the URL names no bucket; an S3 copy is s3://bucket/prefix/".to_owned());
    }
    if rest.contains(['?', '#']) {
        return Err("an s3:// URL takes no query or fragment".to_owned());
    }
    let mut prefix = prefix.to_owned();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok((bucket.to_owned(), prefix))
}

#[async_trait]
impl Store for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn schema(&self, key: &[String], columns: Option<&[String]>) -> Result<Schema, StoreError> {
        self.check_bucket().await?;
        object::object_schema(&self.location, "S3", key, columns)
    }

    async fn check_schema(&self, schema: &Schema) -> Result<(), StoreError> {
        self.check_bucket().await?;
        self.columns(schema).map(drop)
    }

    async fn sample_keys(&self, schema: &Schema, max: usize) -> Result<Sample, StoreError> {
        let summary = self.summary(schema).await?;
        Ok(summary.sample(max))
    }

    fn scan<'a>(
        &'a self,
        schema: &'a Schema,
        range: KeyRange,
        hasher: &'a RowHasher,
        progress: &'a Progress,
    ) -> DigestStream<'a> {
        let columns = match self.columns(schema) {
            Ok(c) => c,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let expected = self.counted_in(&range);
        // The cursor is made on the first step: its pieces may need the copy's layout.
        futures::stream::try_unfold((None, range, columns), move |(cursor, range, columns)| async move {
            let mut cursor = match cursor {
                Some(c) => c,
                None => Cursor::new(range.clone(), self.pieces(&range, expected).await?, expected),
            };
            let Some(page) = self.next_page(&mut cursor).await? else {
                return Ok(None);
            };
            let batch = self.digest_page(page, &columns, hasher).await?;
            progress.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(Some((batch, (Some(cursor), range, columns))))
        })
        .boxed()
    }

    async fn tree(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        hasher: &RowHasher,
        progress: &Progress,
    ) -> Result<Tree, StoreError> {
        let columns = self.columns(schema)?;
        let tree = match self
            .summary
            .get()
            .and_then(|s| Some((s.rows(), s.tree(&columns, boundaries, hasher)?)))
        {
            Some((rows, tree)) => {
                progress.fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
                tree
            }
            None => self.list_tree(&columns, boundaries, hasher, progress).await?,
        };
        self.count(boundaries, &tree);
        Ok(tree)
    }

    fn leaf_rows(&self) -> Option<u64> {
        Some(LEAF_ROWS)
    }

    async fn fetch(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError> {
        let columns = self.columns(schema)?;
        let metas = self.metas_of(keys, &columns).await?;
        Ok(metas
            .into_iter()
            .map(|(key, m)| (key, object_values(m.size, &m.fingerprint, &columns)))
            .collect())
    }

    async fn digest_keys(&self, schema: &Schema, keys: &[Key], hasher: &RowHasher) -> Result<DigestBatch, StoreError> {
        let columns = self.columns(schema)?;
        let metas = self.metas_of(keys, &columns).await?;
        Ok(digests(metas, &columns, hasher))
    }

    fn settles(&self, schema: &Schema) -> bool {
        self.options.compare.settles() && schema.values.iter().any(|c| c.name == ObjectColumn::Content.name())
    }

    async fn settle_keys(&self, schema: &Schema, keys: &[Key], hasher: &RowHasher) -> Result<DigestBatch, StoreError> {
        let columns = self.columns(schema)?;
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let settled: Vec<Option<(Key, object::ObjectMeta)>> = futures::stream::iter(sorted)
            .map(|key| self.settled(key))
            .buffered(OBJECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(digests(settled.into_iter().flatten(), &columns, hasher))
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
        let columns = self.columns(check)?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(self.apply_one(&columns, hasher, op).await);
        }
        // A write may have made or emptied a top-level folder or object.
        self.forget_layout().await;
        Ok(results)
    }

    fn object_source(&self) -> Option<Arc<dyn ObjectSource>> {
        Some(Arc::new(Source {
            client: self.client.clone(),
            location: self.location.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            address: (self.options.endpoint.clone(), self.region.clone()),
        }))
    }
}

/// An S3 copy as the source of object repairs.
#[derive(Debug)]
struct Source {
    client: aws_sdk_s3::Client,
    location: String,
    bucket: String,
    prefix: String,
    address: (Option<String>, String),
}

#[async_trait]
impl ObjectSource for Source {
    async fn open_object(&self, key: &str) -> Result<Option<(u64, ObjectReader)>, StoreError> {
        let full = format!("{}{key}", self.prefix);
        match self.client.get_object().bucket(&self.bucket).key(&full).send().await {
            Ok(out) => {
                let size = out.content_length().map_or(0, |n| u64::try_from(n).unwrap_or(0));
                Ok(Some((size, Box::new(out.body.into_async_read()))))
            }
            Err(e) if client::status(&e) == Some(404) => Ok(None),
            Err(e) => Err(StoreError::Read {
                location: self.location.clone(),
                reason: format!("{key}: {}", client::describe(&e, &self.bucket)),
            }),
        }
    }

    fn s3_address(&self, key: &str) -> Option<S3Address> {
        Some(S3Address {
            endpoint: self.address.0.clone(),
            region: self.address.1.clone(),
            bucket: self.bucket.clone(),
            key: format!("{}{key}", self.prefix),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_folder_prefix() {
        assert_eq!(parse_url("s3://b/p/q/").unwrap(), ("b".into(), "p/q/".into()));
        assert_eq!(parse_url("s3://b/p").unwrap(), ("b".into(), "p/".into()));
        assert_eq!(parse_url("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse_url("s3://b/").unwrap(), ("b".into(), "".into()));
        assert!(parse_url("s3:///p").unwrap_err().contains("no bucket"));
        assert!(parse_url("file:///p").unwrap_err().contains("not an s3://"));
    }
}
