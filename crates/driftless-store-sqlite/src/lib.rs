//! SQLite tables as copies of a dataset, read through sqlx.
//!
//! - [`SqliteStore::open`] opens a database file read-only; a missing file is an error, never
//!   a new empty database (that would read as "every row missing").
//! - The schema comes from `pragma_table_info`, queried with the table name bound, so no
//!   name from a config is ever spliced into SQL unchecked; names that do exist are then
//!   quoted as identifiers.
//! - Scans are `ORDER BY` the key columns with `COLLATE BINARY`, so SQLite and Rust agree on
//!   the order of every text key (see `driftless_core::key`), and range predicates are
//!   row-value comparisons, which work for composite keys.
//! - [`decode`] turns SQLite's dynamically typed values into the dataset's logical types:
//!   a number stored as text in one copy and as a number in another digests the same.

mod decode;
mod sql;

use std::str::FromStr;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use driftless_core::key::KeyBuilder;
use driftless_core::{Key, KeyRange, LogicalType, RowHasher, Value};
use driftless_store::{
    Column, DigestBatch, DigestStream, Progress, Sample, Schema, Store, StoreError, redact_url,
};
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::Row;

/// Rows a scan digests before handing a batch on.
const BATCH_ROWS: usize = 4096;
/// Connections per copy: enough for a full scan and a few range reads at once.
const POOL_CONNECTIONS: u32 = 4;

/// One SQLite table holding a copy of a dataset.
#[derive(Debug)]
pub struct SqliteStore {
    location: String,
    table: String,
    pool: SqlitePool,
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
        let location = format!("{} table {table:?}", redact_url(url));
        let open_err = |reason: String| StoreError::Open { location: location.clone(), reason };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| open_err(format!("not a SQLite URL: {e}")))?
            .read_only(true)
            .create_if_missing(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| open_err(describe_open_error(&e)))?;
        Ok(SqliteStore { location, table: table.to_owned(), pool })
    }

    async fn table_columns(&self) -> Result<Vec<TableColumn>, StoreError> {
        let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")
            .bind(&self.table)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.read_err(e))?;
        if rows.is_empty() {
            return Err(self.schema_err("table not found".into()));
        }
        rows.iter()
            .map(|r| {
                Ok(TableColumn {
                    name: r.try_get("name").map_err(|e| self.read_err(e))?,
                    declared: r.try_get("type").map_err(|e| self.read_err(e))?,
                    pk: r.try_get("pk").map_err(|e| self.read_err(e))?,
                })
            })
            .collect()
    }

    fn read_err(&self, e: sqlx::Error) -> StoreError {
        StoreError::Read { location: self.location.clone(), reason: e.to_string() }
    }

    fn schema_err(&self, reason: String) -> StoreError {
        StoreError::Schema { location: self.location.clone(), reason }
    }

    fn find<'c>(&self, columns: &'c [TableColumn], name: &str, role: &str) -> Result<&'c TableColumn, StoreError> {
        columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| self.schema_err(format!("{role} column {name:?} not found")))
    }

    /// Reads one row's key, checking key columns hold keyable values.
    fn read_key(&self, schema: &Schema, row: &SqliteRow) -> Result<Key, StoreError> {
        let mut key = KeyBuilder::default();
        for (i, col) in schema.key.iter().enumerate() {
            decode::push_key(&mut key, row, i, col.ty)
                .map_err(|reason| self.schema_err(format!("key column {:?}: {reason}", col.name)))?;
        }
        Ok(key.finish())
    }
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
            key.iter().map(|k| self.find(&table, k, "key")).collect::<Result<_, _>>()?
        };
        let value_cols: Vec<&TableColumn> = match columns {
            Some(names) => names.iter().map(|n| self.find(&table, n, "compared")).collect::<Result<_, _>>()?,
            None => table.iter().filter(|c| !key_cols.iter().any(|k| k.name == c.name)).collect(),
        };
        let column = |c: &TableColumn| Column { name: c.name.clone(), ty: decode::logical_type(&c.declared) };
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
        let rows: i64 = sqlx::query_scalar(&count_sql).fetch_one(&self.pool).await.map_err(|e| self.read_err(e))?;
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
            let (text, binds) = sql::range_select(&self.table, schema, &range, true)
                .map_err(|reason| self.schema_err(reason))?;
            let mut query = sqlx::query(&text);
            for b in binds {
                query = sql::bind(query, b);
            }
            let mut rows = query.fetch(&self.pool);
            let mut batch: DigestBatch = Vec::with_capacity(BATCH_ROWS);
            let mut previous: Option<Key> = None;
            let mut scratch = Vec::with_capacity(256);
            let mut value_buf = Vec::with_capacity(schema.values.len());
            let key_cols = schema.key.len();
            while let Some(row) = rows.try_next().await.map_err(|e| self.read_err(e))? {
                let key = self.read_key(schema, &row)?;
                if let Some(prev) = batch.last().map(|(k, _)| k).or(previous.as_ref())
                    && &key < prev
                {
                    Err(StoreError::Order {
                        location: self.location.clone(),
                        previous: prev.to_string(),
                        next: key.to_string(),
                    })?;
                }
                value_buf.clear();
                for (i, col) in schema.values.iter().enumerate() {
                    value_buf.push(decode::value(&row, key_cols + i, col.ty));
                }
                let digest = hasher.digest_row(key.as_bytes(), &value_buf, &mut scratch);
                batch.push((key, digest));
                if batch.len() == BATCH_ROWS {
                    progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    previous = batch.last().map(|(k, _)| k.clone());
                    yield std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                }
            }
            progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if !batch.is_empty() {
                yield batch;
            }
        })
    }

    async fn fetch(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        let text = sql::point_select(&self.table, schema);
        let key_cols = schema.key.len();
        for key in keys {
            let mut query = sqlx::query(&text);
            for b in sql::key_binds(key).map_err(|reason| self.schema_err(reason))? {
                query = sql::bind(query, b);
            }
            if let Some(row) = query.fetch_optional(&self.pool).await.map_err(|e| self.read_err(e))? {
                let values = schema.values.iter().enumerate().map(|(i, c)| decode::value(&row, key_cols + i, c.ty));
                out.push((key.clone(), values.collect()));
            }
        }
        Ok(out)
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
        let text = sql::rowid_sample(&self.table, schema);
        let Ok(rows) = sqlx::query(&text).bind(lo).bind(step).bind(hi).fetch_all(&self.pool).await else {
            return Ok(None);
        };
        rows.iter().map(|r| self.read_key(schema, r)).collect::<Result<_, _>>().map(Some)
    }

    /// Every `rows / max`-th key of a key-only scan in key order.
    async fn stride_sample(&self, schema: &Schema, rows: u64, max: usize) -> Result<Vec<Key>, StoreError> {
        let stride = (rows / max.max(1) as u64).max(1);
        let text = sql::key_select(&self.table, schema);
        let mut stream = sqlx::query(&text).fetch(&self.pool);
        let mut keys = Vec::new();
        let mut n = 0u64;
        while let Some(row) = stream.try_next().await.map_err(|e| self.read_err(e))? {
            if n % stride == 0 {
                keys.push(self.read_key(schema, &row)?);
            }
            n += 1;
        }
        Ok(keys)
    }
}

/// The logical type of a declared column type, exposed for tests and tools.
pub fn logical_type(declared: &str) -> LogicalType {
    decode::logical_type(declared)
}
