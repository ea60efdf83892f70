//! PostgreSQL tables as copies of a dataset, through sqlx.
//!
//! - The table name from the config is only ever a bound value: `to_regclass($1)` resolves it
//!   and PostgreSQL's own `regclass::text` quotes it; column names are checked against the
//!   catalog and quoted; every value is bound. Nothing in a config can inject SQL.
//! - Every session runs with fixed settings (`TimeZone = UTC`, ISO dates, shortest
//!   round-trip floats, hex bytea, ISO intervals, `C` money, custom plans), so the text form
//!   of every value, and every plan, is the same on every server and every run.
//! - Pull mode reads values in PostgreSQL's binary format and encodes each straight into the
//!   row buffer ([`wire`]), exactly as its text form normalised by [`Value::from_text`]
//!   would encode: a PostgreSQL copy and a SQLite copy of the same rows digest the same. A
//!   whole copy streams through `COPY ... (FORMAT binary)` into a blocking thread that
//!   digests and places rows ([`copy`]); ranges are sqlx queries with bound key bounds,
//!   `ORDER BY` the keys with text `COLLATE "C"`, digested on a blocking thread per batch.
//! - Push-down ([`pushdown`]): when canonical and a stage are both PostgreSQL, each copy's
//!   leaf aggregates come from one grouped query inside the server, and only the rows of
//!   divergent leaves travel. `DRIFTLESS_POSTGRES_PUSHDOWN=off` in the environment turns it
//!   off, so two PostgreSQL copies are compared in pull mode (benchmarks use it).

mod copy;
mod pushdown;
mod row;
mod sample;
mod sql;
mod wire;
mod write;

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use driftless_core::{Aggregate, Boundaries, Key, KeyRange, LogicalType, RowHasher, Tree, Value};
use driftless_store::{
    Column, DigestBatch, DigestStream, OrderCheck, Progress, Sample, Schema, Store, StoreError, WriteOp, WriteResult,
    redact_url,
};
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions as _, Executor, Row};

use crate::pushdown::HashedColumn;
use crate::row::{RowDigester, RowPlan};
use crate::sql::KeyKind;

/// Rows a range scan digests per batch (one trip to a blocking thread).
const BATCH_ROWS: usize = 4096;
/// Connections per copy: a full scan and a few range reads at once.
const POOL_CONNECTIONS: u32 = 4;
/// How long opening a copy may wait for a connection.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Session settings that make the text form of every value canonical enough to normalise
/// (pull mode's `::text` columns, push-down's text hashes), keep string literals literal
/// (the `bytea` literals of push-down's key encoding) and plan every execution afresh.
const SESSION_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET extra_float_digits = 1; SET bytea_output = 'hex'; SET IntervalStyle = 'iso_8601'; \
     SET lc_monetary = 'C'; SET standard_conforming_strings = on; \
     SET plan_cache_mode = force_custom_plan";
/// The environment variable that turns push-down off when set to `off`, `0` or `false`.
pub const PUSHDOWN_ENV: &str = "DRIFTLESS_POSTGRES_PUSHDOWN";

/// One PostgreSQL table holding a copy of a dataset.
#[derive(Debug, Clone)]
pub struct PgStore {
    location: String,
    /// The table as given in the config (`name` or `schema.name`).
    table: String,
    pool: PgPool,
    /// Whether this copy offers push-down (see [`PUSHDOWN_ENV`]).
    pushdown: bool,
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
    not_null: bool,
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
        // A full scan is one long statement by design; sqlx would log each as a slow one.
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| open_err("not a PostgreSQL URL".into()))?
            .disable_statement_logging();
        driftless_store::reach::reachable(options.get_host(), options.get_port())
            .await
            .map_err(open_err)?;
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
        let pushdown = !std::env::var(PUSHDOWN_ENV)
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false" | "no"));
        Ok(PgStore {
            location,
            table: table.to_owned(),
            pool,
            pushdown,
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
        self.read_failed(describe_error(e))
    }

    fn read_failed(&self, reason: String) -> StoreError {
        StoreError::Read {
            location: self.location.clone(),
            reason,
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
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty, a.attnotnull AS not_null, \
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
                not_null: r.get("not_null"),
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

    /// The quoted table and how this copy's rows of `schema` are selected and decoded.
    async fn row_plan(&self, schema: &Schema) -> Result<(String, RowPlan), StoreError> {
        let (quoted, table) = self.table_columns().await?;
        let physical = schema
            .values
            .iter()
            .map(|c| self.find(&table, &c.name, "compared").map(|t| t.ty.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((quoted.clone(), RowPlan::new(schema, &physical)))
    }

    /// The table's row count as the planner estimates it (the last `VACUUM` or `ANALYZE`'s
    /// rows per page times the pages it has now), or `None` if it was never analysed.
    async fn estimated_rows(&self) -> Result<Option<u64>, StoreError> {
        let estimate: Option<i64> = sqlx::query_scalar(
            "SELECT CASE WHEN c.reltuples >= 0 AND c.relpages > 0 THEN \
                    (c.reltuples / c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::int8))::int8 \
                    END \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
        )
        .bind(&self.table)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.read_err(&e))?
        .flatten();
        Ok(estimate.map(|n| n.max(0) as u64))
    }

    /// The compared values of a row selected with their text forms (`fetch`).
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

/// Digests a batch of rows on a blocking thread; returns the digester for the next batch.
async fn digest_rows(mut digester: RowDigester, rows: Vec<PgRow>) -> Result<(RowDigester, DigestBatch), String> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let key = digester.key(row)?;
            let digest = digester.digest(key.as_bytes(), row)?;
            out.push((key, digest));
        }
        Ok((digester, out))
    })
    .await
    .map_err(|e| format!("digest task failed: {e}"))?
}

/// Runs the push-down query over `leaves` leaves. The planner cannot tell how many groups
/// `width_bucket` makes and plans for one per row: with the default `work_mem` it sorts the
/// whole table on disk instead of hashing a few thousand groups. A read-only transaction
/// gives the aggregate the memory its leaves need and rules the sort out.
async fn pushdown_rows(
    pool: &PgPool,
    text: &str,
    thresholds: pushdown::Thresholds,
    range: Vec<sql::Bind>,
    leaves: usize,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let work_mem = format!("SET LOCAL work_mem = '{}kB'", pushdown::work_mem_kib(leaves));
    // One statement each: sqlx's multi-statement `raw_sql` on a transaction is not `Send`
    // for async-trait.
    for setting in ["SET TRANSACTION READ ONLY", &work_mem, "SET LOCAL enable_sort = off"] {
        sqlx::query(setting).persistent(false).execute(&mut *tx).await?;
    }
    let mut query = thresholds.bind_to(sqlx::query(text));
    for b in range {
        query = b.bind_to(query);
    }
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

impl PgStore {
    /// Push-down leaf aggregates over `boundaries`, of the rows in `range` when given.
    async fn pushdown_leaves(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        range: Option<KeyRange>,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let (quoted, table) = self.table_columns().await?;
        let columns = schema
            .key
            .iter()
            .chain(&schema.values)
            .map(|c| {
                self.find(&table, &c.name, "compared").map(|t| HashedColumn {
                    name: &t.name,
                    pg_type: &t.ty,
                    not_null: t.not_null,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (from, binds) = match &range {
            Some(r) => pushdown::range_table(&quoted, schema, r, pushdown::threshold_params(schema) + 1)
                .map_err(|r| self.schema_err(r))?,
            None => (quoted.clone(), Vec::new()),
        };
        let (text, thresholds) =
            pushdown::query(&from, schema, &columns, boundaries).map_err(|r| self.schema_err(r))?;
        if range.is_some() && thresholds.params() != pushdown::threshold_params(schema) {
            return Err(self.schema_err("the boundaries' keys do not match the key columns' types".into()));
        }
        let rows = pushdown_rows(&self.pool, &text, thresholds, binds, boundaries.leaf_count())
            .await
            .map_err(|e| self.read_err(&e))?;
        let mut leaves = vec![Aggregate::default(); boundaries.leaf_count()];
        for row in rows {
            let (leaf, count, sum): (i32, i64, Option<String>) = (row.get(0), row.get(1), row.get(2));
            let slot = usize::try_from(leaf)
                .ok()
                .and_then(|i| leaves.get_mut(i))
                .ok_or_else(|| {
                    self.schema_err(format!("push-down returned leaf {leaf} of {}", boundaries.leaf_count()))
                })?;
            *slot = pushdown::aggregate(count, sum.as_deref().unwrap_or("0")).map_err(|r| self.read_failed(r))?;
        }
        Ok(leaves)
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
        let column = |c: &&TableColumn| Column {
            name: c.name.clone(),
            ty: logical_type(&c.ty),
        };
        Ok(Schema {
            key: key_cols.iter().map(column).collect(),
            values: value_cols.iter().map(column).collect(),
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
        // The planner's estimate sizes the sample as well as an exact count does, without a
        // scan of its own; a table never analysed is counted.
        let rows = match self.estimated_rows().await? {
            Some(rows) => rows,
            None => {
                let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {quoted}"))
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| self.read_err(&e))?;
                rows as u64
            }
        };
        if max == 0 {
            return Ok(Sample { keys: Vec::new(), rows });
        }
        let keys = self.sample(&quoted, schema, rows, max).await?;
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
            let (quoted, plan) = self.row_plan(schema).await?;
            let (text, binds) =
                sql::range_select(&quoted, schema, &plan.select, &range).map_err(|r| self.schema_err(r))?;
            let mut query = sqlx::query(&text);
            for b in binds {
                query = b.bind_to(query);
            }
            let mut rows = query.fetch(&self.pool);
            let mut digester = RowDigester::new(plan, hasher.clone());
            let mut order = OrderCheck::default();
            let mut pending = Vec::with_capacity(BATCH_ROWS);
            loop {
                let row = rows.try_next().await.map_err(|e| self.read_err(&e))?;
                let done = row.is_none();
                pending.extend(row);
                if done && pending.is_empty() {
                    break;
                }
                if !done && pending.len() < BATCH_ROWS {
                    continue;
                }
                let (next, batch) = digest_rows(digester, std::mem::take(&mut pending))
                    .await
                    .map_err(|r| self.read_failed(r))?;
                digester = next;
                for (key, _) in &batch {
                    order.check(&self.location, key)?;
                }
                progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
                yield batch;
                if done {
                    break;
                }
            }
        })
    }

    async fn tree(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        hasher: &RowHasher,
        progress: &Progress,
    ) -> Result<Tree, StoreError> {
        let (quoted, plan) = self.row_plan(schema).await?;
        copy::copy_tree(
            &self.pool,
            &quoted,
            plan,
            boundaries.clone(),
            hasher.clone(),
            progress.clone(),
        )
        .await
        .map_err(|r| self.read_failed(r))
    }

    fn pushdown_kind(&self, schema: &Schema) -> Option<&'static str> {
        (self.pushdown && pushdown::supported(schema)).then_some(pushdown::KIND)
    }

    async fn pushdown_tree(&self, schema: &Schema, boundaries: &Boundaries) -> Result<Tree, StoreError> {
        Ok(Tree::from_leaves(self.pushdown_leaves(schema, boundaries, None).await?))
    }

    async fn pushdown_span(
        &self,
        schema: &Schema,
        boundaries: &Boundaries,
        first: usize,
        last: usize,
    ) -> Result<Vec<Aggregate>, StoreError> {
        // The span's own boundaries: its leaves are leaves `first..=last`, once the rows
        // outside it are left out.
        let inner = Boundaries::from_sorted(boundaries.keys()[first..last].to_vec());
        self.pushdown_leaves(schema, &inner, Some(boundaries.span(first, last)))
            .await
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
