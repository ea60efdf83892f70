//! The interface between the engine and the places copies live.
//!
//! A [`Store`] is one copy of one dataset: a table in a database, the objects under a
//! prefix, the files under a directory. The engine only ever talks to this trait; the binary
//! picks the implementation from the copy's URL. A new kind of store is a new crate that
//! implements it, never a new branch in the engine.
//!
//! Reading is what scanning needs:
//! - [`Store::schema`] resolves the key and compared columns and their logical types
//!   (the canonical copy's types decide how every copy's values are normalised);
//! - [`Store::sample_keys`] returns a sample of keys for quantile boundaries;
//! - [`Store::scan`] streams the `(key, row digest)` pairs of a key range in key order;
//! - [`Store::tree`] digests a whole copy into leaves; the default folds [`Store::scan`],
//!   and a store that can aggregate where the data lives (SQL push-down) overrides it;
//! - [`Store::fetch`] reads whole rows by key, for reports and for repair.
//!
//! Writing is what repair needs ([`write`]): [`Store::apply`] takes conditional writes, each
//! carrying what the key held when the divergence was detected, applied only while the key
//! still holds that, in one transaction with the check. Scoped runs and the duplicate-commit
//! check read by key: [`Store::digest_keys`], [`Store::keys_since`],
//! [`Store::duplicate_groups`].
//!
//! Object stores share one row model ([`object`]): `(key, size, content fingerprint)`.
//! Their listing fingerprints can differ for equal bytes, so the engine asks both copies to
//! [settle](Store::settle_keys) a changed key before reporting it.

pub mod object;
pub mod reach;
pub mod write;

pub use object::{CompareMode, ObjectSource, SourceRef};
pub use write::{WriteAction, WriteOp, WriteResult};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use driftless_core::tree::LeafBuilder;
use driftless_core::{Aggregate, Boundaries, Digest, Key, KeyRange, LogicalType, RowHasher, Tree, Value};
use futures::StreamExt;
use futures::stream::BoxStream;

/// A column of a copy, with the logical type its values are normalised to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// The column's name as the copy spells it.
    pub name: String,
    /// The logical type every copy's values are converted to before hashing.
    pub ty: LogicalType,
}

/// The key and compared columns of a dataset, as resolved against the canonical copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    /// Key columns, in key order.
    pub key: Vec<Column>,
    /// Compared (non-key) columns, in digest order.
    pub values: Vec<Column>,
}

impl Schema {
    /// The key column names, for reports.
    pub fn key_names(&self) -> Vec<String> {
        self.key.iter().map(|c| c.name.clone()).collect()
    }
}

/// A sample of a copy's keys and its row count.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Sampled keys in any order.
    pub keys: Vec<Key>,
    /// Rows in the copy (exact or estimated).
    pub rows: u64,
}

/// A batch of `(key, row digest)` pairs in key order.
pub type DigestBatch = Vec<(Key, Digest)>;

/// A stream of digest batches; batches amortise the cost of crossing task boundaries.
pub type DigestStream<'a> = BoxStream<'a, Result<DigestBatch, StoreError>>;

/// Counts rows as stores digest them, for progress bars and metrics. Shared, so a store can
/// count from the blocking thread that reads.
pub type Progress = Arc<AtomicU64>;

/// What can go wrong in a store. Every variant names the copy by a location that is safe to
/// print (no password, no secret query parameters).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The copy could not be opened or reached.
    #[error("cannot open {location}: {reason}")]
    Open {
        /// Where the copy lives, redacted.
        location: String,
        /// Why.
        reason: String,
    },
    /// The copy's shape does not fit the dataset (missing table, column, key).
    #[error("{location}: {reason}")]
    Schema {
        /// Where the copy lives, redacted.
        location: String,
        /// What does not fit.
        reason: String,
    },
    /// Reading failed part way.
    #[error("{location}: read failed: {reason}")]
    Read {
        /// Where the copy lives, redacted.
        location: String,
        /// Why.
        reason: String,
    },
    /// The copy returned keys out of order, so its ordering disagrees with bytewise order.
    #[error(
        "{location}: keys out of order ({previous} before {next}); key columns must sort \
         bytewise (integers numerically, text with a binary collation)"
    )]
    Order {
        /// Where the copy lives, redacted.
        location: String,
        /// The key read first.
        previous: String,
        /// The smaller key read after it.
        next: String,
    },
}

/// One copy of a dataset.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Where the copy lives, safe to print: passwords and secret parameters removed.
    fn location(&self) -> &str;

    /// Resolves the dataset's columns against this copy. `key` names the key columns (empty:
    /// the store's own key, such as the primary key or the object key); `columns` the
    /// compared columns (`None`: every non-key column). On the canonical copy this decides
    /// the logical types; other copies are then checked with [`Store::check_schema`].
    async fn schema(&self, key: &[String], columns: Option<&[String]>) -> Result<Schema, StoreError>;

    /// Checks that this copy has every column of `schema` (resolved on canonical).
    async fn check_schema(&self, schema: &Schema) -> Result<(), StoreError>;

    /// About `max` keys sampled across the whole copy, and its row count. With `max == 0`
    /// only the row count is wanted, and a store should not read keys at all.
    async fn sample_keys(&self, schema: &Schema, max: usize) -> Result<Sample, StoreError>;

    /// The `(key, digest)` pairs of `range`, in key order. A store verifies its order and
    /// fails with [`StoreError::Order`] rather than return keys out of order.
    fn scan<'a>(
        &'a self,
        schema: &'a Schema,
        range: KeyRange,
        hasher: &'a RowHasher,
        progress: &'a Progress,
    ) -> DigestStream<'a>;

    /// The whole copy digested into leaves over `boundaries`.
    async fn tree(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        hasher: &RowHasher,
        progress: &Progress,
    ) -> Result<Tree, StoreError> {
        let mut leaves = LeafBuilder::new(boundaries);
        let mut stream = self.scan(schema, KeyRange::all(), hasher, progress);
        while let Some(batch) = stream.next().await {
            for (key, digest) in batch? {
                leaves.add(&key, digest);
            }
        }
        Ok(leaves.finish())
    }

    /// The kind of leaf digest this store computes where the data lives (push-down), if it
    /// can for `schema`. Two copies' push-down trees are comparable only when both report
    /// the same kind; otherwise the engine digests rows itself ([`Store::tree`]).
    fn pushdown_kind(&self, schema: &Schema) -> Option<&'static str> {
        let _ = schema;
        None
    }

    /// Leaf aggregates over `boundaries` computed where the data lives, in one pass. Their
    /// sums are not row digests: compare them only with a tree of the same
    /// [`Store::pushdown_kind`], and re-read divergent ranges with [`Store::scan`].
    async fn pushdown_tree(&self, schema: &Schema, boundaries: &Boundaries) -> Result<Tree, StoreError> {
        let _ = (schema, boundaries);
        Err(StoreError::Schema {
            location: self.location().to_owned(),
            reason: "this store cannot digest leaves where the data lives".into(),
        })
    }

    /// The push-down aggregates of leaves `first..=last` of `boundaries` only (a segment of
    /// the fleet). By default the whole tree is computed and cut; a store that can limit
    /// the rows it reads to the span does so.
    async fn pushdown_span(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        first: usize,
        last: usize,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let tree = self.pushdown_tree(schema, boundaries).await?;
        Ok(tree.leaves()[first..=last.min(tree.leaves().len() - 1)].to_vec())
    }

    /// All of `range`, collected; divergent ranges are small enough to hold.
    async fn scan_collect(
        &self,
        schema: &Schema,
        range: KeyRange,
        hasher: &RowHasher,
        progress: &Progress,
    ) -> Result<DigestBatch, StoreError> {
        let mut out = Vec::new();
        let mut stream = self.scan(schema, range, hasher, progress);
        while let Some(batch) = stream.next().await {
            out.extend(batch?);
        }
        Ok(out)
    }

    /// The compared values of the rows with the given keys; keys not present are left out.
    async fn fetch(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError>;

    /// What kind of store this is (`sqlite`, `postgres`, `directory`). Repairs between two
    /// copies of the same kind carry values in the store's own representation.
    fn kind(&self) -> &'static str;

    /// Whether the copy was opened for writing ([`Store::apply`]).
    fn writable(&self) -> bool {
        false
    }

    /// The `n`-th (1-based) bind placeholder of this store's SQL, for compensating
    /// statements; `None` for a store that runs no SQL.
    fn placeholder(&self, n: usize) -> Option<String> {
        let _ = n;
        None
    }

    /// Applies conditional writes, in one transaction with their checks: each op is made
    /// only if the rows with its key, digested over `check` (the dataset's compared schema,
    /// exactly as [`Store::scan`] digests them), still aggregate to [`WriteOp::seen`].
    /// `write` names the columns `Put` values are for. One result per op, in order.
    async fn apply(
        &self,
        check: &Schema,
        write: &Schema,
        hasher: &RowHasher,
        ops: &[WriteOp],
    ) -> Result<Vec<WriteResult>, StoreError> {
        let _ = (check, write, hasher, ops);
        Err(self.unsupported("cannot be written (repair it with mode = \"report\")"))
    }

    /// The `(key, digest)` of every row with one of `keys`, in key order (a key held twice
    /// appears twice). The default reads [`Store::fetch`] and digests the values.
    async fn digest_keys(&self, schema: &Schema, keys: &[Key], hasher: &RowHasher) -> Result<DigestBatch, StoreError> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut scratch = Vec::new();
        let rows = self.fetch(schema, &sorted).await?;
        Ok(rows
            .into_iter()
            .map(|(key, values)| {
                let digest = hasher.digest_row(key.as_bytes(), &values, &mut scratch);
                (key, digest)
            })
            .collect())
    }

    /// Keys of the rows whose `column` holds a time at or after `since_us` (UTC
    /// microseconds), for repairs scoped to what changed since a rollback.
    async fn keys_since(&self, schema: &Schema, column: &str, since_us: i64) -> Result<Vec<Key>, StoreError> {
        let _ = (schema, column, since_us);
        Err(self.unsupported("cannot select rows by change time"))
    }

    /// For every value of the `columns` (a dedupe key: a commit id) that more than one row
    /// holds, the keys of those rows, sorted. Groups come in no particular order.
    async fn duplicate_groups(&self, schema: &Schema, columns: &[String]) -> Result<Vec<Vec<Key>>, StoreError> {
        let _ = (schema, columns);
        Err(self.unsupported("cannot group rows by a dedupe key"))
    }

    /// Rows per leaf this copy prefers when it is smaller than the scan's default: a copy
    /// read back by listing, where a re-read of a divergent leaf returns every key in it,
    /// gains from small leaves. `None` for no preference.
    fn leaf_rows(&self) -> Option<u64> {
        None
    }

    /// Whether this copy's scan digests can differ from another copy's while the content
    /// is equal (an object store fingerprinting by ETag or checksum), so that a changed key
    /// must be settled with [`Store::settle_keys`] on both copies before it is reported.
    fn settles(&self, schema: &Schema) -> bool {
        let _ = schema;
        false
    }

    /// Digests of `keys` by what they hold, comparable across every copy whose
    /// [`Store::settles`] is true or whose digests are by content: for object stores, size
    /// and the MD5 of the bytes (read only where no listing gives it). Keys not present are
    /// left out. The default is [`Store::digest_keys`].
    async fn settle_keys(&self, schema: &Schema, keys: &[Key], hasher: &RowHasher) -> Result<DigestBatch, StoreError> {
        self.digest_keys(schema, keys, hasher).await
    }

    /// This copy as the source of object repairs, for an object store.
    fn object_source(&self) -> Option<Arc<dyn ObjectSource>> {
        None
    }

    /// The error for an operation this kind of store does not offer.
    fn unsupported(&self, what: &str) -> StoreError {
        StoreError::Schema {
            location: self.location().to_owned(),
            reason: format!("a {} copy {what}", self.kind()),
        }
    }
}

/// Checks that keys arrive in strictly increasing order (equal keys are allowed and become
/// duplicates downstream). Stores call it on every key they emit.
#[derive(Debug, Default)]
pub struct OrderCheck {
    last: Option<Key>,
}

impl OrderCheck {
    /// Records `key`, failing if it sorts before the previous one.
    pub fn check(&mut self, location: &str, key: &Key) -> Result<(), StoreError> {
        if let Some(last) = &self.last
            && key < last
        {
            return Err(StoreError::Order {
                location: location.to_owned(),
                previous: last.to_string(),
                next: key.to_string(),
            });
        }
        match &mut self.last {
            Some(last) => last.clone_from(key),
            None => self.last = Some(key.clone()),
        }
        Ok(())
    }
}

/// A URL with its password and query string removed, for messages and logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                // Setting a password only fails for URLs that cannot have one.
                let _ = u.set_password(Some("***"));
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_and_queries() {
        let r = redact_url("postgres://app:hunter2@db.example:5432/billing?sslpassword=x");
        assert!(!r.contains("hunter2") && !r.contains("sslpassword=x"), "{r}");
        assert!(r.contains("app:***@db.example"), "{r}");
        assert_eq!(redact_url("sqlite://stage.db"), "sqlite://stage.db");
    }

    #[test]
    fn order_check_allows_ties_and_rejects_descents() {
        let mut c = OrderCheck::default();
        c.check("x", &Key::text("a")).unwrap();
        c.check("x", &Key::text("a")).unwrap();
        c.check("x", &Key::text("b")).unwrap();
        assert!(matches!(c.check("x", &Key::text("a")), Err(StoreError::Order { .. })));
    }
}
