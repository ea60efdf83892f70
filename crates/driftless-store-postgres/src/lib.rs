//! PostgreSQL tables as copies of a dataset, read through sqlx (pull mode).
//!
//! - The table name from the config is only ever a bound value: `to_regclass($1)` resolves it
//!   and PostgreSQL's own `regclass::text` quotes it, so a config cannot inject SQL.
//! - Every session runs with `TimeZone = UTC`, ISO dates, shortest round-trip floats and hex
//!   bytea, and every compared value is read as its text form: [`Value::from_text`] then
//!   normalises it exactly as the SQLite store normalises SQLite's values, so a PostgreSQL
//!   copy and a SQLite copy of the same rows digest the same.
//! - Keys are read typed (integers as `int8`, text and uuids as text, bytea as bytes); text
//!   keys are ordered and compared `COLLATE "C"`, bytewise, whatever the database's locale.
//!
//! - Push-down: when canonical and a stage are both PostgreSQL, [`Store::pushdown_tree`]
//!   computes every leaf's aggregate inside the server in one grouped query per copy
//!   (`width_bucket` over the encoded boundary keys, md5 of each row's text form); only the
//!   rows of divergent leaves then travel, digested in pull mode.

mod sql;
mod write;

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use driftless_core::key::{KeyBuilder, parse_uuid};
use driftless_core::{Aggregate, Boundaries, Key, KeyRange, LogicalType, RowHasher, Tree, Value};
use driftless_store::{
    Column, DigestBatch, DigestStream, Progress, Sample, Schema, Store, StoreError, WriteOp, WriteResult, redact_url,
};
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};

use crate::sql::KeyKind;

/// The push-down digest: md5 of the row's text form, summed per leaf in two 64-bit halves.
const PUSHDOWN_KIND: &str = "postgres-md5-rowtext-v1";
/// Rows a scan digests before handing a batch on.
const BATCH_ROWS: usize = 4096;
/// Connections per copy: a full scan and a few range reads at once.
const POOL_CONNECTIONS: u32 = 4;
/// How long opening a copy may wait for a connection.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Session settings that make the text form of every value canonical enough to normalise.
const SESSION_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET extra_float_digits = 1; SET bytea_output = 'hex'; SET IntervalStyle = 'iso_8601'";

/// One PostgreSQL table holding a copy of a dataset.
#[derive(Debug, Clone)]
pub struct PgStore {
    location: String,
    /// The table as given in the config (`name` or `schema.name`).
    table: String,
    pool: PgPool,
    /// Repairs may write ([`PgStore::for_writing`]).
    writable: bool,
}

/// A column as the catalog describes it.
#[derive(Debug)]
struct TableColumn {
    name: String,
    ty: String,
    /// Position in the primary key, 1-based; 0 when not part of it.
    pk: i32,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`) for the
    /// table `table` (`name` or `schema.name`). Fails now, naming the copy without its
    /// password, when the server is unreachable or refuses the login.
    pub async fn open(url: &str, table: &str) -> Result<PgStore, StoreError> {
        let location = format!("{} table {table:?}", redact_url(url));
        let open_err = |reason: String| StoreError::Open {
            location: location.clone(),
            reason,
        };
        let options = PgConnectOptions::from_str(url).map_err(|_| open_err("not a PostgreSQL URL".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SESSION_SETTINGS).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| open_err(describe_error(&e)))?;
        Ok(PgStore {
            location,
            table: table.to_owned(),
            pool,
            writable: false,
        })
    }

    /// The same copy, which repairs may write. A store opened by [`PgStore::open`] refuses
    /// writes, so a scan can never write by mistake.
    pub fn for_writing(mut self) -> PgStore {
        self.writable = true;
        self
    }

    fn read_err(&self, e: &sqlx::Error) -> StoreError {
        StoreError::Read {
            location: self.location.clone(),
            reason: describe_error(e),
        }
    }

    fn schema_err(&self, reason: String) -> StoreError {
        StoreError::Schema {
            location: self.location.clone(),
            reason,
        }
    }

    /// The table's columns and its quoted, qualified name as PostgreSQL prints it.
    async fn table_columns(&self) -> Result<(String, Vec<TableColumn>), StoreError> {
        let quoted: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&self.table)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.read_err(&e))?;
        let Some(quoted) = quoted else {
            return Err(self.schema_err("table not found".into()));
        };
        let rows = sqlx::query(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty, \
                    coalesce((SELECT k.n FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                              WHERE k.attnum = a.attnum), 0)::int4 AS pk \
             FROM pg_attribute a \
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
        )
        .bind(&self.table)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_err(&e))?;
        let columns = rows
            .iter()
            .map(|r| TableColumn {
                name: r.get("name"),
                ty: r.get("ty"),
                pk: r.get("pk"),
            })
            .collect();
        Ok((quoted, columns))
    }

    fn find<'c>(&self, columns: &'c [TableColumn], name: &str, role: &str) -> Result<&'c TableColumn, StoreError> {
        columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| self.schema_err(format!("{role} column {name:?} not found")))
    }

    fn read_key(&self, schema: &Schema, row: &PgRow) -> Result<Key, StoreError> {
        let mut key = KeyBuilder::default();
        for (i, col) in schema.key.iter().enumerate() {
            let fail = |reason: String| self.schema_err(format!("key column {:?}: {reason}", col.name));
            match KeyKind::of(col.ty).ok_or_else(|| fail("unsupported key type".into()))? {
                KeyKind::Int => key.push_int(row.try_get::<i64, _>(i).map_err(|e| fail(e.to_string()))?),
                KeyKind::Text => key.push_text(row.try_get::<&str, _>(i).map_err(|e| fail(e.to_string()))?.as_bytes()),
                KeyKind::Uuid => {
                    let text: &str = row.try_get(i).map_err(|e| fail(e.to_string()))?;
                    key.push_uuid(&parse_uuid(text).ok_or_else(|| fail(format!("{text:?} is not a uuid")))?);
                }
                KeyKind::Bytes => key.push_bytes(row.try_get::<&[u8], _>(i).map_err(|e| fail(e.to_string()))?),
            }
        }
        Ok(key.finish())
    }

    fn read_values(&self, schema: &Schema, row: &PgRow) -> Result<Vec<Value>, StoreError> {
        let key_cols = schema.key.len();
        schema
            .values
            .iter()
            .enumerate()
            .map(|(i, col)| {
                let text: Option<&str> = row.try_get(key_cols + i).map_err(|e| self.read_err(&e))?;
                Ok(text.map_or(Value::Null, |t| Value::from_text(t, col.ty)))
            })
            .collect()
    }
}

/// A sqlx error as a message that never carries the connection URL.
fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Configuration(_) => "bad connection settings".to_owned(),
        other => other.to_string(),
    }
}

/// Whether a column of this type can be a key: integers, text, uuid, bytea. Numeric and
/// float keys are refused, since reading them as integers would round.
fn is_keyable(pg_type: &str) -> bool {
    matches!(pg_type, "bigint" | "integer" | "smallint")
        || !matches!(logical_type(pg_type), LogicalType::Number) && KeyKind::of(logical_type(pg_type)).is_some()
}

/// The logical type of a PostgreSQL type as `format_type` prints it.
pub fn logical_type(pg_type: &str) -> LogicalType {
    let t = pg_type.to_ascii_lowercase();
    match t.as_str() {
        "bigint" | "integer" | "smallint" | "real" | "double precision" | "oid" => LogicalType::Number,
        "boolean" => LogicalType::Bool,
        "date" => LogicalType::Date,
        "uuid" => LogicalType::Uuid,
        "json" | "jsonb" => LogicalType::Json,
        "bytea" => LogicalType::Bytes,
        _ if t.starts_with("numeric") => LogicalType::Number,
        _ if t.starts_with("timestamp") => LogicalType::Timestamp,
        _ => LogicalType::Text,
    }
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn schema(&self, key: &[String], columns: Option<&[String]>) -> Result<Schema, StoreError> {
        let (_, table) = self.table_columns().await?;
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
        for k in &key_cols {
            if !is_keyable(&k.ty) {
                return Err(self.schema_err(format!(
                    "key column {:?} has type {}; keys must be integers, text, uuid or bytea",
                    k.name, k.ty
                )));
            }
        }
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
        Ok(Schema {
            key: key_cols
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    ty: logical_type(&c.ty),
                })
                .collect(),
            values: value_cols
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    ty: logical_type(&c.ty),
                })
                .collect(),
        })
    }

    async fn check_schema(&self, schema: &Schema) -> Result<(), StoreError> {
        let (_, table) = self.table_columns().await?;
        for c in &schema.key {
            let col = self.find(&table, &c.name, "key")?;
            if !is_keyable(&col.ty) || KeyKind::of(logical_type(&col.ty)) != KeyKind::of(c.ty) {
                return Err(self.schema_err(format!(
                    "key column {:?} has type {}, which does not match the canonical key",
                    c.name, col.ty
                )));
            }
        }
        for c in &schema.values {
            self.find(&table, &c.name, "compared")?;
        }
        Ok(())
    }

    async fn sample_keys(&self, schema: &Schema, max: usize) -> Result<Sample, StoreError> {
        let (quoted, _) = self.table_columns().await?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {quoted}"))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.read_err(&e))?;
        let rows = rows as u64;
        if max == 0 {
            return Ok(Sample { keys: Vec::new(), rows });
        }
        // A Bernoulli sample reads every page but returns only the sampled keys; small tables
        // are read whole, every n-th key kept.
        let (text, stride) = if rows > 4 * max as u64 {
            let percent = (max as f64 * 100.0 / rows as f64).min(100.0);
            (sql::sample_select(&quoted, schema, percent), 1)
        } else {
            (sql::key_select(&quoted, schema), (rows / max as u64).max(1))
        };
        let mut stream = sqlx::query(&text).fetch(&self.pool);
        let mut keys = Vec::new();
        let mut n = 0u64;
        while let Some(row) = stream.try_next().await.map_err(|e| self.read_err(&e))? {
            if n.is_multiple_of(stride) {
                keys.push(self.read_key(schema, &row)?);
            }
            n += 1;
        }
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
            let (quoted, _) = self.table_columns().await?;
            let (text, binds) = sql::range_select(&quoted, schema, &range).map_err(|r| self.schema_err(r))?;
            let mut query = sqlx::query(&text);
            for b in binds {
                query = b.bind_to(query);
            }
            let mut rows = query.fetch(&self.pool);
            let mut batch: DigestBatch = Vec::with_capacity(BATCH_ROWS);
            let mut previous: Option<Key> = None;
            let mut scratch = Vec::with_capacity(256);
            while let Some(row) = rows.try_next().await.map_err(|e| self.read_err(&e))? {
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
                let values = self.read_values(schema, &row)?;
                let digest = hasher.digest_row(key.as_bytes(), &values, &mut scratch);
                batch.push((key, digest));
                if batch.len() == BATCH_ROWS {
                    progress.fetch_add(BATCH_ROWS as u64, Ordering::Relaxed);
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

    fn pushdown_kind(&self, schema: &Schema) -> Option<&'static str> {
        sql::encoded_key(schema).map(|_| PUSHDOWN_KIND)
    }

    async fn pushdown_tree(&self, schema: &Schema, boundaries: &Boundaries) -> Result<Tree, StoreError> {
        let (quoted, _) = self.table_columns().await?;
        let encoded = sql::encoded_key(schema)
            .ok_or_else(|| self.schema_err("bytea keys cannot be digested in the server".into()))?;
        let thresholds: Vec<Vec<u8>> = boundaries.keys().iter().map(|k| k.as_bytes().to_vec()).collect();
        let rows = sqlx::query(&sql::pushdown_select(&quoted, schema, &encoded))
            .bind(thresholds)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.read_err(&e))?;
        let mut leaves = vec![Aggregate::default(); boundaries.leaf_count()];
        for row in rows {
            let (leaf, count, high, low): (i32, i64, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
            let half = |s: &str| {
                s.parse::<i128>()
                    .map_err(|e| self.read_err(&sqlx::Error::Decode(Box::new(e))))
            };
            // Each half is a sum of signed 64-bit values; wrapping it to 64 bits keeps the
            // aggregate additive, like the row-digest sums.
            let sum = (u128::from(half(&high)? as u64) << 64) | u128::from(half(&low)? as u64);
            let slot = leaves.get_mut(leaf as usize).ok_or_else(|| {
                self.schema_err(format!("push-down returned leaf {leaf} of {}", boundaries.leaf_count()))
            })?;
            *slot = Aggregate {
                count: count as u64,
                sum,
            };
        }
        Ok(Tree::from_leaves(leaves))
    }

    async fn fetch(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError> {
        self.rows_of(schema, keys).await
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn placeholder(&self, n: usize) -> Option<String> {
        Some(format!("${n}"))
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
        self.digest_many(schema, keys, hasher).await
    }

    async fn keys_since(&self, schema: &Schema, column: &str, since_us: i64) -> Result<Vec<Key>, StoreError> {
        self.keys_changed_since(schema, column, since_us).await
    }

    async fn duplicate_groups(&self, schema: &Schema, columns: &[String]) -> Result<Vec<Vec<Key>>, StoreError> {
        self.duplicate_key_groups(schema, columns).await
    }
}
