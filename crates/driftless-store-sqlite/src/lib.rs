//! SQLite tables as copies of a dataset.
//!
//! - [`SqliteStore::open`] opens a database file read-only through sqlx, which owns the
//!   connections; a missing file is an error, never a new empty database (that would read as
//!   "every row missing").
//! - The schema comes from `pragma_table_info`, queried with the table name bound, so no
//!   name from a config is ever spliced into SQL unchecked; names that do exist are then
//!   quoted as identifiers.
//! - Scans are `ORDER BY` the key columns with `COLLATE BINARY`, so SQLite and Rust agree on
//!   the order of every text key (see `driftless_core::key`), and range predicates are
//!   row-value comparisons, which work for composite keys.
//! - Rows are read in [`raw`]: on the raw handle of a sqlx connection, stepped on a blocking
//!   thread without a copy per value. sqlx's own row stream moves every row across threads
//!   and allocates every value, which made a million-row scan ten times slower.
//! - `decode` turns SQLite's dynamically typed values into the dataset's logical types:
//!   a number stored as text in one copy and as a number in another digests the same.

mod decode;
mod raw;
mod sql;
mod write;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use driftless_core::key::KeyBuilder;
use driftless_core::tree::LeafBuilder;
use driftless_core::{Boundaries, Key, KeyRange, RowHasher, Tree, Value};
use driftless_store::{
    Column, DigestBatch, DigestStream, Progress, Sample, Schema, Store, StoreError, WriteOp, WriteResult, redact_url,
};
use raw::{RawError, for_each_row};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::mpsc;

/// Rows a scan digests before handing a batch on.
const BATCH_ROWS: usize = 4096;
/// Batches a scan may read ahead of its consumer.
const BATCHES_AHEAD: usize = 4;
/// Connections per copy: enough for a full scan and a few range reads at once.
const POOL_CONNECTIONS: u32 = 4;
/// How long a write waits for another connection's lock on the database.
pub const BUSY_TIMEOUT_SECS: u64 = 30;

/// One SQLite table holding a copy of a dataset.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    location: Arc<str>,
    table: String,
    pool: SqlitePool,
    /// Opened with [`SqliteStore::open_writable`].
    writable: bool,
}

/// A column as `pragma_table_info` describes it.
#[derive(Debug)]
struct TableColumn {
    name: String,
    declared: String,
    /// Position in the primary key, 1-based; 0 when not part of it.
    pk: i64,
}

impl SqliteStore {
    /// Opens `table` in the SQLite database at `url` (`sqlite://path/to.db`,
    /// `sqlite:///abs/path.db`), read-only.
    pub async fn open(url: &str, table: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(url, table, false).await
    }

    /// Opens `table` for repair: like [`SqliteStore::open`], but writable. Writers wait up to
    /// [`BUSY_TIMEOUT_SECS`] for another process's write lock.
    pub async fn open_writable(url: &str, table: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(url, table, true).await
    }

    async fn open_with(url: &str, table: &str, writable: bool) -> Result<SqliteStore, StoreError> {
        let location = format!("{} table {table:?}", redact_url(url));
        let open_err = |reason: String| StoreError::Open {
            location: location.clone(),
            reason,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| open_err(format!("not a SQLite URL: {e}")))?
            .read_only(!writable)
            .busy_timeout(std::time::Duration::from_secs(BUSY_TIMEOUT_SECS))
            .create_if_missing(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| open_err(describe_open_error(&e)))?;
        Ok(SqliteStore {
            location: location.into(),
            table: table.to_owned(),
            pool,
            writable,
        })
    }

    async fn table_columns(&self) -> Result<Vec<TableColumn>, StoreError> {
        let read_err = |e: sqlx::Error| self.read_err(e.to_string());
        let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")
            .bind(&self.table)
            .fetch_all(&self.pool)
            .await
            .map_err(read_err)?;
        if rows.is_empty() {
            return Err(self.schema_err("table not found".into()));
        }
        rows.iter()
            .map(|r| {
                Ok(TableColumn {
                    name: r.try_get("name").map_err(read_err)?,
                    declared: r.try_get("type").map_err(read_err)?,
                    pk: r.try_get("pk").map_err(read_err)?,
                })
            })
            .collect()
    }

    fn read_err(&self, reason: String) -> StoreError {
        StoreError::Read {
            location: self.location.to_string(),
            reason,
        }
    }

    fn schema_err(&self, reason: String) -> StoreError {
        StoreError::Schema {
            location: self.location.to_string(),
            reason,
        }
    }

    fn find<'c>(&self, columns: &'c [TableColumn], name: &str, role: &str) -> Result<&'c TableColumn, StoreError> {
        columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| self.schema_err(format!("{role} column {name:?} not found")))
    }
}

/// Turns raw rows into keys and digests, checking key order as it goes.
struct RowReader {
    location: Arc<str>,
    schema: Schema,
    hasher: RowHasher,
    scratch: Vec<u8>,
    previous: Option<Key>,
}

impl RowReader {
    fn new(store: &SqliteStore, schema: &Schema, hasher: &RowHasher) -> RowReader {
        RowReader {
            location: store.location.clone(),
            schema: schema.clone(),
            hasher: hasher.clone(),
            scratch: Vec::with_capacity(256),
            previous: None,
        }
    }

    /// Digests a row whose first columns are the key and the rest the compared values,
    /// without checking order (point reads).
    fn digest_any(&mut self, row: &rusqlite::Row<'_>) -> Result<(Key, driftless_core::Digest), StoreError> {
        let key = read_key(&self.location, &self.schema, row)?;
        self.scratch.clear();
        self.scratch.extend_from_slice(key.as_bytes());
        let key_cols = self.schema.key.len();
        for (i, col) in self.schema.values.iter().enumerate() {
            decode::encode(raw_value(row, key_cols + i)?, col.ty, &mut self.scratch);
        }
        let digest = self.hasher.digest_encoded(&self.scratch, key.as_bytes().len());
        Ok((key, digest))
    }

    fn digest(&mut self, row: &rusqlite::Row<'_>) -> Result<(Key, driftless_core::Digest), StoreError> {
        let key = read_key(&self.location, &self.schema, row)?;
        if let Some(previous) = &self.previous
            && &key < previous
        {
            return Err(StoreError::Order {
                location: self.location.to_string(),
                previous: previous.to_string(),
                next: key.to_string(),
            });
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(key.as_bytes());
        let key_cols = self.schema.key.len();
        for (i, col) in self.schema.values.iter().enumerate() {
            decode::encode(raw_value(row, key_cols + i)?, col.ty, &mut self.scratch);
        }
        let digest = self.hasher.digest_encoded(&self.scratch, key.as_bytes().len());
        match &mut self.previous {
            Some(p) => p.clone_from(&key),
            None => self.previous = Some(key.clone()),
        }
        Ok((key, digest))
    }
}

fn raw_value<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<rusqlite::types::ValueRef<'r>, StoreError> {
    // The select list is built from the schema, so every index exists.
    row.get_ref(i).map_err(|e| StoreError::Read {
        location: String::new(),
        reason: e.to_string(),
    })
}

/// The key of a row whose first columns are the key columns.
fn read_key(location: &str, schema: &Schema, row: &rusqlite::Row<'_>) -> Result<Key, StoreError> {
    let mut key = KeyBuilder::default();
    for (i, col) in schema.key.iter().enumerate() {
        decode::push_key(&mut key, raw_value(row, i)?, col.ty).map_err(|reason| StoreError::Schema {
            location: location.to_owned(),
            reason: format!("key column {:?}: {reason}", col.name),
        })?;
    }
    Ok(key.finish())
}

fn describe_open_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("14") => "database file not found".into(),
        other => other.to_string(),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn location(&self) -> &str {
        &self.location
    }

    async fn schema(&self, key: &[String], columns: Option<&[String]>) -> Result<Schema, StoreError> {
        let table = self.table_columns().await?;
        let key_cols: Vec<&TableColumn> = if key.is_empty() {
            let mut pk: Vec<&TableColumn> = table.iter().filter(|c| c.pk > 0).collect();
            pk.sort_by_key(|c| c.pk);
            if pk.is_empty() {
                return Err(self.schema_err("table has no primary key; name the key columns with `key`".into()));
            }
            pk
        } else {
            key.iter()
                .map(|k| self.find(&table, k, "key"))
                .collect::<Result<_, _>>()?
        };
        let value_cols: Vec<&TableColumn> = match columns {
            Some(names) => names
                .iter()
                .map(|n| self.find(&table, n, "compared"))
                .collect::<Result<_, _>>()?,
            None => table
                .iter()
                .filter(|c| !key_cols.iter().any(|k| k.name == c.name))
                .collect(),
        };
        let column = |c: &TableColumn| Column {
            name: c.name.clone(),
            ty: decode::logical_type(&c.declared),
        };
        Ok(Schema {
            key: key_cols.into_iter().map(column).collect(),
            values: value_cols.into_iter().map(column).collect(),
        })
    }

    async fn check_schema(&self, schema: &Schema) -> Result<(), StoreError> {
        let table = self.table_columns().await?;
        for c in &schema.key {
            self.find(&table, &c.name, "key")?;
        }
        for c in &schema.values {
            self.find(&table, &c.name, "compared")?;
        }
        Ok(())
    }

    async fn sample_keys(&self, schema: &Schema, max: usize) -> Result<Sample, StoreError> {
        let count_sql = format!("SELECT count(*) FROM {}", sql::ident(&self.table));
        let rows: i64 = sqlx::query_scalar(&count_sql)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.read_err(e.to_string()))?;
        let rows = rows as u64;
        if max == 0 {
            return Ok(Sample { keys: Vec::new(), rows });
        }
        let keys = match self.rowid_sample(schema, max).await? {
            Some(keys) if rows > max as u64 && keys.len() >= max / 4 => keys,
            _ => self.stride_sample(schema, rows, max).await?,
        };
        Ok(Sample { keys, rows })
    }

    fn scan<'a>(
        &'a self,
        schema: &'a Schema,
        range: KeyRange,
        hasher: &'a RowHasher,
        progress: &'a Progress,
    ) -> DigestStream<'a> {
        Box::pin(async_stream::try_stream! {
            let (sql, binds) = sql::range_select(&self.table, schema, &range).map_err(|r| self.schema_err(r))?;
            let (tx, mut rx) = mpsc::channel::<DigestBatch>(BATCHES_AHEAD);
            let state = (RowReader::new(self, schema, hasher), Vec::with_capacity(BATCH_ROWS), tx, progress.clone());
            let store = self.clone();
            let reader = tokio::spawn(async move {
                let (_, batch, tx, progress) = store
                    .rows(sql, binds, state, |(reader, batch, tx, progress), row| {
                        batch.push(reader.digest(row)?);
                        if batch.len() == BATCH_ROWS {
                            progress.fetch_add(BATCH_ROWS as u64, Ordering::Relaxed);
                            let full = std::mem::replace(batch, Vec::with_capacity(BATCH_ROWS));
                            // The consumer went away: nobody wants the rest.
                            if tx.blocking_send(full).is_err() {
                                return Err(StoreError::Read { location: String::new(), reason: "scan abandoned".into() });
                            }
                        }
                        Ok(())
                    })
                    .await?;
                progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if !batch.is_empty() {
                    let _ = tx.send(batch).await;
                }
                Ok::<(), StoreError>(())
            });
            while let Some(batch) = rx.recv().await {
                yield batch;
            }
            reader.await.map_err(|e| self.read_err(format!("read task failed: {e}")))??;
        })
    }

    async fn tree(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        hasher: &RowHasher,
        progress: &Progress,
    ) -> Result<Tree, StoreError> {
        let (sql, binds) = sql::range_select(&self.table, schema, &KeyRange::all()).map_err(|r| self.schema_err(r))?;
        let state = (
            RowReader::new(self, schema, hasher),
            LeafBuilder::new(boundaries.clone()),
            0u64,
            progress.clone(),
        );
        let (_, leaves, rest, progress) = self
            .rows(sql, binds, state, |(reader, leaves, count, progress), row| {
                let (key, digest) = reader.digest(row)?;
                leaves.add(&key, digest);
                *count += 1;
                if *count % BATCH_ROWS as u64 == 0 {
                    progress.fetch_add(BATCH_ROWS as u64, Ordering::Relaxed);
                }
                Ok(())
            })
            .await?;
        progress.fetch_add(rest % BATCH_ROWS as u64, Ordering::Relaxed);
        Ok(leaves.finish())
    }

    async fn fetch(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError> {
        self.fetch_rows(schema, keys).await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn placeholder(&self, n: usize) -> Option<String> {
        Some(format!("?{n}"))
    }

    async fn apply(
        &self,
        check: &Schema,
        write: &Schema,
        hasher: &RowHasher,
        ops: &[WriteOp],
    ) -> Result<Vec<WriteResult>, StoreError> {
        self.apply_ops(check, write, hasher, ops).await
    }

    async fn digest_keys(&self, schema: &Schema, keys: &[Key], hasher: &RowHasher) -> Result<DigestBatch, StoreError> {
        self.digest_rows_of(schema, keys, hasher).await
    }

    async fn keys_since(&self, schema: &Schema, column: &str, since_us: i64) -> Result<Vec<Key>, StoreError> {
        self.keys_changed_since(schema, column, since_us).await
    }

    async fn duplicate_groups(&self, schema: &Schema, columns: &[String]) -> Result<Vec<Vec<Key>>, StoreError> {
        self.duplicate_key_groups(schema, columns).await
    }
}

impl SqliteStore {
    /// Systematic sampling over the rowid space: reads only the sampled rows. `None` for a
    /// WITHOUT ROWID table (the query fails) or an empty one; a sparse rowid space yields
    /// few keys, and the caller then falls back to a stride over a key-only scan.
    async fn rowid_sample(&self, schema: &Schema, max: usize) -> Result<Option<Vec<Key>>, StoreError> {
        let bounds = format!("SELECT min(rowid), max(rowid) FROM {}", sql::ident(&self.table));
        let Ok((Some(lo), Some(hi))) = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(&bounds)
            .fetch_one(&self.pool)
            .await
        else {
            return Ok(None);
        };
        let step = ((hi - lo) / max.max(1) as i64).max(1);
        let binds = vec![lo.into(), step.into(), hi.into()];
        self.collect_keys(sql::rowid_sample(&self.table, schema), binds, schema, 1)
            .await
            .map(Some)
    }

    /// Every `rows / max`-th key of a key-only scan in key order.
    async fn stride_sample(&self, schema: &Schema, rows: u64, max: usize) -> Result<Vec<Key>, StoreError> {
        let stride = (rows / max.max(1) as u64).max(1);
        self.collect_keys(sql::key_select(&self.table, schema), Vec::new(), schema, stride)
            .await
    }

    async fn collect_keys(
        &self,
        sql: String,
        binds: Vec<rusqlite::types::Value>,
        schema: &Schema,
        stride: u64,
    ) -> Result<Vec<Key>, StoreError> {
        let (location, schema) = (self.location.clone(), schema.clone());
        let (keys, _) = self
            .rows(sql, binds, (Vec::new(), 0u64), move |(keys, n), row| {
                if *n % stride == 0 {
                    keys.push(read_key(&location, &schema, row)?);
                }
                *n += 1;
                Ok(())
            })
            .await?;
        Ok(keys)
    }

    /// Runs a query on the raw path, turning failures into this store's errors.
    async fn rows<S, F>(
        &self,
        sql: String,
        binds: Vec<rusqlite::types::Value>,
        state: S,
        on_row: F,
    ) -> Result<S, StoreError>
    where
        S: Send + 'static,
        F: Fn(&mut S, &rusqlite::Row<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        for_each_row(&self.pool, sql, binds, state, on_row)
            .await
            .map_err(|e| match e {
                RawError::Sql(reason) => self.read_err(reason),
                RawError::Row(e) => e,
            })
    }
}
