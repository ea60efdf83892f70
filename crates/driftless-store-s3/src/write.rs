//! Conditional object writes: one op at a time, each only while the object is what
//! detection saw.
//!
//! The object's current state is read (a HEAD, fingerprinted as scans do) and compared with
//! [`WriteOp::seen`]; a mismatch writes nothing and reports what is there now. Once the
//! bytes are ready, the object is checked again just before the request that makes the
//! write visible (PutObject, CopyObject, CompleteMultipartUpload, DeleteObject). Where the
//! endpoint honours conditional writes (probed once), that request also carries
//! `If-Match: <etag seen>` or `If-None-Match: *`, so a write racing another is refused by
//! the server (412) and reported as changed; where it does not, the window left is the
//! round trip between the check and the write. The check is made either way because
//! servers honour the headers unevenly: moto, for one, ignores them on CopyObject and
//! ignores `If-Match` on CompleteMultipartUpload.
//!
//! Bytes come from canonical: a server-side CopyObject when canonical is on the same
//! endpoint and region, otherwise a streamed GET and PUT, as a multipart upload above
//! [`MULTIPART_THRESHOLD_BYTES`]. Deletes check, then delete.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use driftless_core::{Aggregate, Key, RowHasher};
use driftless_store::object::{ObjectColumn, ObjectReader, SourceRef, object_digest};
use driftless_store::{CompareMode, StoreError, WriteAction, WriteOp, WriteResult};
use tokio::io::AsyncReadExt;

use crate::fingerprint::meta_of_head;
use crate::{S3Store, client};

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes per uploaded part (S3's minimum for all but the last is 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// What the stage holds for a key now: its aggregate and the raw ETag, for `If-Match`.
struct Current {
    seen: Aggregate,
    etag: Option<String>,
}

/// The precondition a write's final request carries, on top of the check before it.
enum Precondition {
    /// The object must still have this ETag.
    IfMatch(String),
    /// There must still be no object.
    IfNoneMatch,
    /// The endpoint ignores conditional headers: the check alone guards the write.
    None,
}

/// `req` with the precondition's header, for any request builder that takes them.
macro_rules! conditional {
    ($req:expr, $precondition:expr) => {
        match $precondition {
            Precondition::IfMatch(etag) => $req.if_match(etag),
            Precondition::IfNoneMatch => $req.if_none_match("*"),
            Precondition::None => $req,
        }
    };
}

/// How one attempt at a write ended, before it becomes a [`WriteResult`].
enum Outcome {
    Written,
    /// The server refused a precondition, or the recheck found another object.
    Raced,
}

impl S3Store {
    /// One conditional op.
    pub(crate) async fn apply_one(&self, columns: &[ObjectColumn], hasher: &RowHasher, op: &WriteOp) -> WriteResult {
        match self.try_apply(columns, hasher, op).await {
            Ok(result) => result,
            Err(e) => WriteResult::Failed(e.to_string()),
        }
    }

    async fn try_apply(
        &self,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
        op: &WriteOp,
    ) -> Result<WriteResult, StoreError> {
        let rel = driftless_store::object::key_path(&self.location, &op.key)?;
        let now = self.current(&rel, &op.key, columns, hasher).await?;
        if now.seen != op.seen {
            return Ok(WriteResult::Changed(now.seen));
        }
        let precondition = if self.conditional_writes().await {
            match now.etag {
                Some(etag) => Precondition::IfMatch(etag),
                None => Precondition::IfNoneMatch,
            }
        } else {
            Precondition::None
        };
        let outcome = match &op.action {
            WriteAction::PutObject(source) => self.put(&rel, source, &precondition, op, columns, hasher).await?,
            WriteAction::Delete => {
                let mut req = self
                    .client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(self.full_key(&rel));
                if let Precondition::IfMatch(etag) = &precondition {
                    req = req.if_match(etag);
                }
                self.finished(&rel, req.send().await)?
            }
            WriteAction::Put(_) | WriteAction::Statement { .. } => {
                return Ok(WriteResult::Failed(
                    "an S3 copy takes object writes only: its canonical copy must be an object copy".into(),
                ));
            }
        };
        Ok(match outcome {
            Outcome::Written => WriteResult::Applied,
            Outcome::Raced => WriteResult::Changed(self.current(&rel, &op.key, columns, hasher).await?.seen),
        })
    }

    /// The key's aggregate (over `columns`, as a scan digests it) and ETag now.
    async fn current(
        &self,
        rel: &str,
        key: &Key,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
    ) -> Result<Current, StoreError> {
        let with_checksum = self.options.compare == CompareMode::Checksum;
        let Some(out) = self.head_raw(rel, with_checksum).await? else {
            return Ok(Current {
                seen: Aggregate::default(),
                etag: None,
            });
        };
        let etag = out.e_tag().map(str::to_owned);
        let mut meta = meta_of_head(rel, &out, with_checksum);
        if self.options.compare == CompareMode::Content {
            match self.fingerprinted(meta, columns).await? {
                Some(m) => meta = m,
                None => {
                    return Ok(Current {
                        seen: Aggregate::default(),
                        etag: None,
                    });
                }
            }
        }
        let mut seen = Aggregate::default();
        seen.add(object_digest(
            hasher,
            key,
            meta.size,
            &meta.fingerprint,
            columns,
            &mut Vec::new(),
        ));
        Ok(Current { seen, etag })
    }

    /// Makes `rel` hold canonical's bytes.
    async fn put(
        &self,
        rel: &str,
        source: &SourceRef,
        precondition: &Precondition,
        op: &WriteOp,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
    ) -> Result<Outcome, StoreError> {
        if let Some(address) = source.0.s3_address(rel)
            && address.endpoint == self.options.endpoint
            && address.region == self.region
        {
            if self.current(rel, &op.key, columns, hasher).await?.seen != op.seen {
                return Ok(Outcome::Raced);
            }
            let req = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(self.full_key(rel))
                .copy_source(format!("{}/{}", address.bucket, encode_key(&address.key)));
            return self.finished(rel, conditional!(req, precondition).send().await);
        }
        let Some((size, reader)) = source.0.open_object(rel).await? else {
            return Err(StoreError::Read {
                location: self.location.clone(),
                reason: format!("{rel}: the canonical copy no longer holds it; the next attempt deletes it"),
            });
        };
        if size > MULTIPART_THRESHOLD_BYTES {
            return self.put_multipart(rel, reader, precondition, op, columns, hasher).await;
        }
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut reader = reader;
        reader
            .read_to_end(&mut body)
            .await
            .map_err(|e| self.body_error(rel, &e))?;
        if self.current(rel, &op.key, columns, hasher).await?.seen != op.seen {
            return Ok(Outcome::Raced);
        }
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(rel))
            .content_length(i64::try_from(body.len()).unwrap_or(i64::MAX))
            .body(ByteStream::from(body));
        self.finished(rel, conditional!(req, precondition).send().await)
    }

    /// A streamed multipart upload: one part in memory at a time. An upload that fails is
    /// aborted, so no parts are left behind.
    async fn put_multipart(
        &self,
        rel: &str,
        mut reader: ObjectReader,
        precondition: &Precondition,
        op: &WriteOp,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
    ) -> Result<Outcome, StoreError> {
        let key = self.full_key(rel);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.key_error(rel, &e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = self
            .upload_parts(rel, &key, &upload_id, &mut reader, precondition, op, columns, hasher)
            .await;
        if !matches!(result, Ok(Outcome::Written)) {
            // Best effort: a failed abort leaves parts that a bucket lifecycle rule removes.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_parts(
        &self,
        rel: &str,
        key: &str,
        upload_id: &str,
        reader: &mut ObjectReader,
        precondition: &Precondition,
        op: &WriteOp,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
    ) -> Result<Outcome, StoreError> {
        let mut parts = Vec::new();
        loop {
            let mut part = Vec::with_capacity(PART_BYTES);
            let n = (&mut *reader)
                .take(PART_BYTES as u64)
                .read_to_end(&mut part)
                .await
                .map_err(|e| self.body_error(rel, &e))?;
            if n == 0 && !parts.is_empty() {
                break;
            }
            let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(n as i64)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| self.key_error(rel, &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .build(),
            );
            if n < PART_BYTES {
                break;
            }
        }
        if self.current(rel, &op.key, columns, hasher).await?.seen != op.seen {
            return Ok(Outcome::Raced);
        }
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        self.finished(rel, conditional!(req, precondition).send().await)
    }

    /// What the final request of a write says: written, refused by its precondition (412),
    /// or failed.
    fn finished<T, E>(&self, rel: &str, sent: Result<T, SdkError<E>>) -> Result<Outcome, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match sent {
            Ok(_) => Ok(Outcome::Written),
            Err(e) if client::status(&e) == Some(412) => Ok(Outcome::Raced),
            Err(e) => Err(self.key_error(rel, &e)),
        }
    }

    fn body_error(&self, rel: &str, e: &std::io::Error) -> StoreError {
        StoreError::Read {
            location: self.location.clone(),
            reason: format!("{rel}: reading canonical's bytes: {e}"),
        }
    }
}

/// A key as CopyObject's `x-amz-copy-source` wants it: percent-encoded but for `/` and
/// the unreserved characters.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_are_percent_encoded() {
        assert_eq!(encode_key("a/b c+d%é?#="), "a/b%20c%2Bd%25%C3%A9%3F%23%3D");
    }
}
