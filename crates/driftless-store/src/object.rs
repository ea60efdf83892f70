//! The object model shared by every object store (S3 prefixes, local directories).
//!
//! A row of an object copy is `(key, size, content)`: the key is the object's path under
//! the copy's prefix with `/` separators, so an S3 prefix and a directory holding the same
//! bytes under the same names compare equal. `size` is the byte length; `content` is a
//! fingerprint of the bytes, whose form depends on the [`CompareMode`]:
//!
//! - `content`: a hash of the bytes themselves (xxh3-128 or BLAKE3, as the dataset digests);
//!   every body is read.
//! - `etag`: the MD5 of the bytes where the copy knows it without reading them (a single-part
//!   S3 object's ETag) or can compute it (a local file), else the multipart ETag as it is;
//! - `checksum`: a full-object `x-amz-checksum-*` value where the object has one, else the
//!   `etag` fingerprint.
//!
//! Two fingerprints of different forms can differ while the bytes are equal (a multipart
//! upload and a single-part copy of the same file), so a key whose listing digests differ
//! is only called `changed` once both copies [settle](crate::Store::settle_keys) it: by the
//! MD5 of the bytes, read only where no listing gives it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use driftless_core::{Digest, DigestAlgorithm, LogicalType, RowHasher, Value};

use crate::{Column, Schema, StoreError};

/// The one key column of an object copy: the object's path under the copy's root.
pub const KEY_COLUMN: &str = "key";

/// How an object copy fingerprints its objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareMode {
    /// Size and ETag (the MD5 of a single-part object); bodies read only to settle keys.
    #[default]
    Etag,
    /// Size and a full-object checksum where both copies have one of the same algorithm.
    Checksum,
    /// Size and a hash of the streamed bytes.
    Content,
}

impl CompareMode {
    /// Parses the config's spelling.
    pub fn parse(s: &str) -> Option<CompareMode> {
        match s {
            "etag" => Some(CompareMode::Etag),
            "checksum" => Some(CompareMode::Checksum),
            "content" => Some(CompareMode::Content),
            _ => None,
        }
    }

    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareMode::Etag => "etag",
            CompareMode::Checksum => "checksum",
            CompareMode::Content => "content",
        }
    }

    /// Whether two copies' fingerprints may differ for equal bytes, so that a changed key
    /// must be settled by content before it is reported.
    pub fn settles(self) -> bool {
        self != CompareMode::Content
    }
}

/// A compared column of an object copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectColumn {
    /// The object's length in bytes.
    Size,
    /// The object's fingerprint (see the module docs).
    Content,
}

impl ObjectColumn {
    /// Every column, in the order a schema without an explicit column list gets them.
    pub const ALL: [ObjectColumn; 2] = [ObjectColumn::Size, ObjectColumn::Content];

    /// The column's name in configs and schemas.
    pub fn name(self) -> &'static str {
        match self {
            ObjectColumn::Size => "size",
            ObjectColumn::Content => "content",
        }
    }

    /// Its logical type.
    pub fn ty(self) -> LogicalType {
        match self {
            ObjectColumn::Size => LogicalType::Number,
            ObjectColumn::Content => LogicalType::Bytes,
        }
    }

    /// The column with this name.
    pub fn from_name(name: &str) -> Option<ObjectColumn> {
        ObjectColumn::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Resolves an object copy's schema: the key must be [`KEY_COLUMN`] (or left out), the
/// columns a subset of `size` and `content` (default both). `kind` names the copy in errors.
pub fn object_schema(
    location: &str,
    kind: &str,
    key: &[String],
    columns: Option<&[String]>,
) -> Result<Schema, StoreError> {
    check_key(location, kind, key, true)?;
    let cols = match columns {
        Some(names) => resolve_columns(location, kind, names)?,
        None => ObjectColumn::ALL.to_vec(),
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

/// The compared columns of a resolved schema, checking its key too.
pub fn object_columns(location: &str, kind: &str, schema: &Schema) -> Result<Vec<ObjectColumn>, StoreError> {
    check_key(location, kind, &schema.key_names(), false)?;
    let names: Vec<String> = schema.values.iter().map(|c| c.name.clone()).collect();
    resolve_columns(location, kind, &names)
}

fn schema_error(location: &str, reason: String) -> StoreError {
    StoreError::Schema {
        location: location.to_owned(),
        reason,
    }
}

/// Checks key column names; `allow_empty` accepts no names (the store's own key).
fn check_key(location: &str, kind: &str, key: &[String], allow_empty: bool) -> Result<(), StoreError> {
    if (allow_empty && key.is_empty()) || key == [KEY_COLUMN] {
        return Ok(());
    }
    let reason = match key.iter().find(|k| *k != KEY_COLUMN) {
        Some(name) => format!(
            "no key column {name:?}: a {kind} copy has one key column, {KEY_COLUMN:?}, the \
             object's relative path"
        ),
        None if key.is_empty() => format!("no key column given; it must be {KEY_COLUMN:?}"),
        None => format!("key column {KEY_COLUMN:?} is listed {} times", key.len()),
    };
    Err(schema_error(location, reason))
}

/// Resolves compared column names, in the order given.
fn resolve_columns(location: &str, kind: &str, names: &[String]) -> Result<Vec<ObjectColumn>, StoreError> {
    let mut cols = Vec::with_capacity(names.len());
    for name in names {
        let col = ObjectColumn::from_name(name).ok_or_else(|| {
            schema_error(
                location,
                format!("no column {name:?}: a {kind} copy's columns are \"size\" and \"content\""),
            )
        })?;
        if cols.contains(&col) {
            return Err(schema_error(location, format!("column {name:?} is listed twice")));
        }
        cols.push(col);
    }
    Ok(cols)
}

/// The relative path an object copy's key holds (its one text part).
pub fn key_path(location: &str, key: &driftless_core::Key) -> Result<String, StoreError> {
    match key.parts().ok().as_deref() {
        Some([driftless_core::KeyPart::Text(s)]) => Ok(s.clone()),
        _ => Err(StoreError::Read {
            location: location.to_owned(),
            reason: format!("key {key} is not an object key (one text part)"),
        }),
    }
}

/// What an object's listing (or a stat, or its streamed bytes) says of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fingerprint {
    /// The MD5 of the bytes: a single-part ETag, or computed from a local file or a body.
    Md5([u8; 16]),
    /// A multipart upload's ETag (`<hex>-<parts>`), which is not the MD5 of the bytes.
    Multipart(String),
    /// A full-object checksum: its algorithm (`CRC32`, `SHA256`, ...) and base64 value.
    Checksum(String, String),
    /// A hash of the bytes with the dataset's row digest algorithm (`content` mode).
    Content(Vec<u8>),
}

impl Fingerprint {
    /// The fingerprint an ETag names: a plain 32-digit hex ETag is the MD5 of the bytes,
    /// anything else (`...-N`, or an ETag a server made otherwise) is kept as it is.
    pub fn from_etag(etag: &str) -> Fingerprint {
        let bare = etag.trim_matches('"');
        if bare.len() == 32
            && let Some(md5) = parse_hex16(bare)
        {
            return Fingerprint::Md5(md5);
        }
        Fingerprint::Multipart(bare.to_owned())
    }

    /// The bytes the `content` column holds. Content hashes are kept bare, exactly as
    /// directory copies digested them before the other forms existed; the other forms carry
    /// a tag, so fingerprints of different forms never collide.
    pub fn to_value(&self) -> Value {
        let tagged = |tag: &[u8], body: &[u8]| {
            let mut v = Vec::with_capacity(tag.len() + body.len());
            v.extend_from_slice(tag);
            v.extend_from_slice(body);
            Value::Bytes(v)
        };
        match self {
            Fingerprint::Content(hash) => Value::Bytes(hash.clone()),
            Fingerprint::Md5(md5) => tagged(b"md5:", md5),
            Fingerprint::Multipart(etag) => tagged(b"mpu:", etag.as_bytes()),
            Fingerprint::Checksum(alg, value) => tagged(format!("{alg}:").as_bytes(), value.as_bytes()),
        }
    }
}

/// Parses 32 hex digits.
fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One object as a listing or a stat describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The path under the copy's root, `/`-separated.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// What is known of its content.
    pub fingerprint: Fingerprint,
}

/// The row digest of an object over `columns` (in schema order).
pub fn object_digest(
    hasher: &RowHasher,
    key: &driftless_core::Key,
    size: u64,
    fingerprint: &Fingerprint,
    columns: &[ObjectColumn],
    scratch: &mut Vec<u8>,
) -> Digest {
    let values = object_values(size, fingerprint, columns);
    hasher.digest_row(key.as_bytes(), &values, scratch)
}

/// An object's values over `columns` (in schema order).
pub fn object_values(size: u64, fingerprint: &Fingerprint, columns: &[ObjectColumn]) -> Vec<Value> {
    columns
        .iter()
        .map(|c| match c {
            // No object reaches 2^63 bytes; saturate rather than wrap if one ever claims to.
            ObjectColumn::Size => Value::Int(i64::try_from(size).unwrap_or(i64::MAX)),
            ObjectColumn::Content => fingerprint.to_value(),
        })
        .collect()
}

/// Hashes an object's bytes as they stream past, into the fingerprint a mode asks for.
#[derive(Clone)]
pub enum BodyHasher {
    /// xxh3-128, seed 0, big-endian (as `xxhsum -H2` prints it): `content` with xxh3.
    Xxh3(Box<xxhash_rust::xxh3::Xxh3Default>),
    /// BLAKE3's 32 bytes: `content` with BLAKE3.
    Blake3(Box<blake3::Hasher>),
    /// MD5: what a single-part ETag holds, for `etag` mode and settling.
    Md5(md5::Md5),
}

impl fmt::Debug for BodyHasher {
    // The hash states have no useful (or, for xxh3, any) debug form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyHasher::Xxh3(_) => "BodyHasher::Xxh3",
            BodyHasher::Blake3(_) => "BodyHasher::Blake3",
            BodyHasher::Md5(_) => "BodyHasher::Md5",
        })
    }
}

impl BodyHasher {
    /// The `content` mode hasher for a dataset digesting with `algorithm`.
    pub fn content(algorithm: DigestAlgorithm) -> BodyHasher {
        match algorithm {
            DigestAlgorithm::Xxh3 => BodyHasher::Xxh3(Box::default()),
            DigestAlgorithm::Blake3 => BodyHasher::Blake3(Box::default()),
        }
    }

    /// The MD5 hasher.
    pub fn md5() -> BodyHasher {
        BodyHasher::Md5(md5::Md5::default())
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        use md5::Digest as _;
        match self {
            BodyHasher::Xxh3(h) => h.update(bytes),
            BodyHasher::Blake3(h) => {
                h.update(bytes);
            }
            BodyHasher::Md5(h) => h.update(bytes),
        }
    }

    /// The fingerprint of everything fed.
    pub fn finish(self) -> Fingerprint {
        use md5::Digest as _;
        match self {
            BodyHasher::Xxh3(h) => Fingerprint::Content(h.digest128().to_be_bytes().to_vec()),
            BodyHasher::Blake3(h) => Fingerprint::Content(h.finalize().as_bytes().to_vec()),
            BodyHasher::Md5(h) => Fingerprint::Md5(h.finalize().into()),
        }
    }
}

/// Reads `reader` to its end through `hasher`; returns the bytes read and the fingerprint.
pub async fn hash_reader(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    mut hasher: BodyHasher,
) -> std::io::Result<(u64, Fingerprint)> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; HASH_BUF_BYTES];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hasher.finish()));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// The buffer bodies are hashed through: memory per body in flight, whatever its size.
const HASH_BUF_BYTES: usize = 256 * 1024;

/// A readable stream of an object's bytes.
pub type ObjectReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Where an S3 object lives, so that a stage on the same endpoint can copy it server-side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Address {
    /// The endpoint URL as configured (`None`: AWS's own), with the region.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// The object's full key in the bucket.
    pub key: String,
}

/// The canonical side of an object repair: the bytes a stage is overwritten with.
#[async_trait]
pub trait ObjectSource: Send + Sync + fmt::Debug {
    /// The object's bytes and size, or `None` if it has gone since detection.
    async fn open_object(&self, key: &str) -> Result<Option<(u64, ObjectReader)>, StoreError>;

    /// Where the object lives, when it is an S3 object a server can copy from.
    fn s3_address(&self, key: &str) -> Option<S3Address> {
        let _ = key;
        None
    }
}

/// An object write's source, comparable by identity so write ops stay `PartialEq`.
#[derive(Clone)]
pub struct SourceRef(pub Arc<dyn ObjectSource>);

impl fmt::Debug for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for SourceRef {
    fn eq(&self, other: &SourceRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_name_md5_only_when_they_are_one() {
        let md5 = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        assert!(matches!(Fingerprint::from_etag(md5), Fingerprint::Md5(b) if b[0] == 0x9e && b[15] == 0xd6));
        assert_eq!(
            Fingerprint::from_etag("\"9e107d9d372bb6826bd81d3542a419d6-2\""),
            Fingerprint::Multipart("9e107d9d372bb6826bd81d3542a419d6-2".into())
        );
        assert!(matches!(
            Fingerprint::from_etag("zz107d9d372bb6826bd81d3542a419d6"),
            Fingerprint::Multipart(_)
        ));
    }

    #[test]
    fn fingerprint_forms_never_collide() {
        let forms = [
            Fingerprint::Md5([1; 16]),
            Fingerprint::Multipart("01010101010101010101010101010101-2".into()),
            Fingerprint::Checksum("CRC32".into(), "AQEBAQ==".into()),
            Fingerprint::Content(vec![1; 16]),
        ];
        for (i, a) in forms.iter().enumerate() {
            for b in &forms[i + 1..] {
                assert_ne!(a.to_value(), b.to_value(), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn schemas_take_only_the_object_columns() {
        let s = object_schema("x", "S3", &[], None).unwrap();
        assert_eq!(s.key_names(), ["key"]);
        assert_eq!(object_columns("x", "S3", &s).unwrap(), ObjectColumn::ALL);
        let err = object_schema("x", "S3", &["id".into()], None).unwrap_err().to_string();
        assert!(err.contains("no key column \"id\""), "{err}");
        let err = object_schema("x", "S3", &[], Some(&["mtime".into()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"size\" and \"content\""), "{err}");
    }
}
