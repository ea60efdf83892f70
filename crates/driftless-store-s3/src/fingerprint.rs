//! The fingerprint of one object, by the copy's compare mode, and reads by key.
//!
//! - `etag`: the listing's ETag, nothing more is read.
//! - `checksum`: a HEAD with checksum mode on; a full-object checksum when the object has
//!   one (a composite checksum of a multipart upload depends on the part sizes, so it is not
//!   used), else the ETag.
//! - `content`: the body, streamed through the dataset's content hash.
//!
//! Settling a key ([`driftless_store::Store::settle_keys`]) wants the MD5 of the bytes: a
//! single-part object's ETag is one, any other object's body is streamed through MD5.

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use driftless_core::Key;
use driftless_store::object::{BodyHasher, Fingerprint, ObjectColumn, ObjectMeta, hash_reader};
use driftless_store::{CompareMode, StoreError};
use futures::StreamExt;

use crate::{OBJECT_CONCURRENCY, S3Store, client};

impl S3Store {
    /// `meta` with the fingerprint the compare mode asks for, or `None` if the object has
    /// gone since it was listed.
    pub(crate) async fn fingerprinted(
        &self,
        meta: ObjectMeta,
        columns: &[ObjectColumn],
    ) -> Result<Option<ObjectMeta>, StoreError> {
        if !columns.contains(&ObjectColumn::Content) {
            return Ok(Some(meta));
        }
        match self.options.compare {
            CompareMode::Etag => Ok(Some(meta)),
            CompareMode::Checksum => self.head(&meta.key, true).await,
            CompareMode::Content => {
                let algorithm = self.options.hasher.as_ref().map(|h| h.algorithm()).unwrap_or_default();
                self.hash_body(&meta.key, BodyHasher::content(algorithm)).await
            }
        }
    }

    /// The objects with `keys` (any order, repeats allowed), fingerprinted, in key order;
    /// keys with no object are left out.
    pub(crate) async fn metas_of(
        &self,
        keys: &[Key],
        columns: &[ObjectColumn],
    ) -> Result<Vec<(Key, ObjectMeta)>, StoreError> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let found: Vec<Option<(Key, ObjectMeta)>> = futures::stream::iter(sorted)
            .map(|key| async move {
                let rel = driftless_store::object::key_path(&self.location, &key)?;
                let with_checksum = self.options.compare == CompareMode::Checksum;
                let Some(meta) = self.head(&rel, with_checksum).await? else {
                    return Ok(None);
                };
                let meta = match self.options.compare {
                    CompareMode::Content => self.fingerprinted(meta, columns).await?,
                    _ => Some(meta),
                };
                Ok::<_, StoreError>(meta.map(|m| (key, m)))
            })
            .buffered(OBJECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The object with `key` fingerprinted by the MD5 of its bytes, or `None`.
    pub(crate) async fn settled(&self, key: Key) -> Result<Option<(Key, ObjectMeta)>, StoreError> {
        let rel = driftless_store::object::key_path(&self.location, &key)?;
        let Some(meta) = self.head(&rel, false).await? else {
            return Ok(None);
        };
        if matches!(meta.fingerprint, Fingerprint::Md5(_)) {
            return Ok(Some((key, meta)));
        }
        Ok(self.hash_body(&rel, BodyHasher::md5()).await?.map(|m| (key, m)))
    }

    /// HEAD of one object: its size and ETag fingerprint, or its full-object checksum when
    /// `with_checksum` and it has one; `None` if there is no such object.
    pub(crate) async fn head(&self, rel: &str, with_checksum: bool) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self
            .head_raw(rel, with_checksum)
            .await?
            .map(|out| meta_of_head(rel, &out, with_checksum)))
    }

    /// The HEAD response of one object, `None` if there is no such object.
    pub(crate) async fn head_raw(
        &self,
        rel: &str,
        with_checksum: bool,
    ) -> Result<Option<HeadObjectOutput>, StoreError> {
        let mut req = self.client.head_object().bucket(&self.bucket).key(self.full_key(rel));
        if with_checksum {
            req = req.checksum_mode(ChecksumMode::Enabled);
        }
        match req.send().await {
            Ok(out) => Ok(Some(out)),
            Err(e) if client::status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.key_error(rel, &e)),
        }
    }

    /// The object's bytes streamed through `hasher`, or `None` if it has gone.
    async fn hash_body(&self, rel: &str, hasher: BodyHasher) -> Result<Option<ObjectMeta>, StoreError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(rel))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if client::status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.key_error(rel, &e)),
        };
        let mut body = out.body.into_async_read();
        let (size, fingerprint) = hash_reader(&mut body, hasher).await.map_err(|e| StoreError::Read {
            location: self.location.clone(),
            reason: format!("{rel}: reading the body: {e}"),
        })?;
        Ok(Some(ObjectMeta {
            key: rel.to_owned(),
            size,
            fingerprint,
        }))
    }

    pub(crate) fn key_error<E>(&self, rel: &str, e: &aws_sdk_s3::error::SdkError<E>) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::Read {
            location: self.location.clone(),
            reason: format!("{rel}: {}", client::describe(e, &self.bucket)),
        }
    }
}

/// The row a HEAD response describes.
pub(crate) fn meta_of_head(rel: &str, out: &HeadObjectOutput, with_checksum: bool) -> ObjectMeta {
    let etag = Fingerprint::from_etag(out.e_tag().unwrap_or_default());
    let fingerprint = match with_checksum.then(|| full_checksum(out, &etag)).flatten() {
        Some((alg, value)) => Fingerprint::Checksum(alg.to_owned(), value.to_owned()),
        None => etag,
    };
    ObjectMeta {
        key: rel.to_owned(),
        size: out.content_length().map_or(0, |n| u64::try_from(n).unwrap_or(0)),
        fingerprint,
    }
}

/// The full-object checksum a HEAD returned, as `(algorithm, base64 value)`. A checksum
/// whose type is not said is full-object for a single-part object only.
fn full_checksum<'a>(out: &'a HeadObjectOutput, etag: &Fingerprint) -> Option<(&'static str, &'a str)> {
    let full = match out.checksum_type() {
        Some(ChecksumType::FullObject) => true,
        Some(_) => false,
        None => matches!(etag, Fingerprint::Md5(_)),
    };
    if !full {
        return None;
    }
    [
        ("CRC64NVME", out.checksum_crc64_nvme()),
        ("CRC32C", out.checksum_crc32_c()),
        ("CRC32", out.checksum_crc32()),
        ("SHA256", out.checksum_sha256()),
        ("SHA1", out.checksum_sha1()),
    ]
    .into_iter()
    .find_map(|(alg, v)| v.map(|v| (alg, v)))
}
