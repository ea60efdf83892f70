//! Conditional writes to a SQLite copy, and the by-key reads of scoped runs.
//!
//! A batch of writes is one `BEGIN IMMEDIATE` transaction: the database's write lock is
//! taken before the first check, so no other writer can change a key between its check and
//! its write. Each op runs under its own savepoint, so one failing op (a constraint, a bad
//! statement) is rolled back alone and reported, and the rest of the batch commits.

use driftless_core::{Aggregate, Key, LogicalType, RowHasher, Value};
use driftless_store::{DigestBatch, Schema, StoreError, WriteAction, WriteOp, WriteResult};
use rusqlite::params_from_iter;
use rusqlite::types::Value as Bind;

use crate::raw::{RawError, sql_err, with_connection};
use crate::{RowReader, SqliteStore, decode, raw_value, read_key, sql};

/// A value bound into a column whose declared type maps to `ty`. SQLite stores what it is
/// given (column affinity converts numeric text), so values keep their natural class:
/// booleans as 0/1, timestamps and dates as ISO text, uuids as lower-case text.
pub fn bind(value: &Value, ty: LogicalType) -> Bind {
    match value {
        Value::Null => Bind::Null,
        Value::Bool(b) => Bind::Integer(i64::from(*b)),
        Value::Int(v) => Bind::Integer(*v),
        Value::Float(f) => Bind::Real(*f),
        Value::Bytes(b) => Bind::Blob(b.clone()),
        Value::Uuid(u) if ty == LogicalType::Bytes => Bind::Blob(u.to_vec()),
        other => Bind::Text(other.to_text().unwrap_or_default()),
    }
}

impl SqliteStore {
    /// Applies `ops` in one transaction; see the module docs.
    pub(crate) async fn apply_ops(
        &self,
        check: &Schema,
        write: &Schema,
        hasher: &RowHasher,
        ops: &[WriteOp],
    ) -> Result<Vec<WriteResult>, StoreError> {
        if !self.writable {
            return Err(self.schema_err("opened read-only; repairs open copies for writing".into()));
        }
        let declared = self.table_columns().await?;
        let stage_type = move |name: &str| {
            declared
                .iter()
                .find(|c| c.name == name)
                .map_or(LogicalType::Any, |c| decode::logical_type(&c.declared))
        };
        let write_types: Vec<LogicalType> = write
            .key
            .iter()
            .chain(&write.values)
            .map(|c| stage_type(&c.name))
            .collect();
        let statements = Statements::new(&self.table, check, write);
        let mut reader = RowReader::new(self, check, hasher);
        let ops = ops.to_vec();
        let result = with_connection(&self.pool, move |db| {
            db.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
            let outcome = (|| {
                let mut results = Vec::with_capacity(ops.len());
                for op in &ops {
                    db.execute_batch("SAVEPOINT op").map_err(sql_err)?;
                    match apply_one(db, &statements, &mut reader, &write_types, op) {
                        Ok(result) => {
                            db.execute_batch("RELEASE op").map_err(sql_err)?;
                            results.push(result);
                        }
                        Err(reason) => {
                            db.execute_batch("ROLLBACK TO op; RELEASE op").map_err(sql_err)?;
                            results.push(WriteResult::Failed(reason));
                        }
                    }
                }
                db.execute_batch("COMMIT").map_err(sql_err)?;
                Ok(results)
            })();
            if outcome.is_err() {
                // Leave the pooled connection outside any transaction.
                let _ = db.execute_batch("ROLLBACK");
            }
            outcome
        })
        .await;
        result.map_err(|e| self.raw_err(e))
    }

    /// Digests of every row with one of `keys`, in key order.
    pub(crate) async fn digest_rows_of(
        &self,
        schema: &Schema,
        keys: &[Key],
        hasher: &RowHasher,
    ) -> Result<DigestBatch, StoreError> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let mut reader = RowReader::new(self, schema, hasher);
        self.rows_with_keys(schema, keys, move |_, row| reader.digest_any(row))
            .await
    }

    /// The values of every row with one of `keys`, in `keys` order (a key held twice
    /// appears twice).
    pub(crate) async fn fetch_rows(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError> {
        let columns = schema.clone();
        self.rows_with_keys(schema, keys.to_vec(), move |key, row| {
            let key_cols = columns.key.len();
            let values = columns
                .values
                .iter()
                .enumerate()
                .map(|(i, c)| Ok(decode::value(raw_value(row, key_cols + i)?, c.ty)))
                .collect::<Result<Vec<Value>, StoreError>>()?;
            Ok((key.clone(), values))
        })
        .await
    }

    /// `on_row(key, row)` for every row of each of `keys`, in that order, by one prepared
    /// point select on one connection.
    async fn rows_with_keys<T: Send + 'static>(
        &self,
        schema: &Schema,
        keys: Vec<Key>,
        mut on_row: impl FnMut(&Key, &rusqlite::Row<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<Vec<T>, StoreError> {
        let select = sql::point_select(&self.table, schema);
        let result = with_connection(&self.pool, move |db| {
            let mut statement = db.prepare(&select).map_err(sql_err)?;
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                let binds = sql::key_binds(key).map_err(RawError::Row)?;
                let mut rows = statement.query(params_from_iter(binds)).map_err(sql_err)?;
                while let Some(row) = rows.next().map_err(sql_err)? {
                    // `raw_err` names the copy.
                    out.push(on_row(key, row).map_err(|e| RawError::Row(e.to_string()))?);
                }
            }
            Ok(out)
        })
        .await;
        result.map_err(|e| self.raw_err(e))
    }

    /// Keys of the rows whose `column` holds a time at or after `since_us`. Times are read
    /// as the store reads timestamps (ISO text, or Unix seconds as numbers) and compared in
    /// Rust, so every representation SQLite applications use compares correctly.
    pub(crate) async fn keys_changed_since(
        &self,
        schema: &Schema,
        column: &str,
        since_us: i64,
    ) -> Result<Vec<Key>, StoreError> {
        let table = self.table_columns().await?;
        self.find(&table, column, "change-time")?;
        let select = sql::keys_and(&self.table, schema, column);
        let (location, schema_owned) = (self.location.clone(), schema.clone());
        let at = schema.key.len();
        self.rows(select, Vec::new(), Vec::new(), move |keys, row| {
            if let Value::Timestamp(us) = decode::value(raw_value(row, at)?, LogicalType::Timestamp)
                && us >= since_us
            {
                keys.push(read_key(&location, &schema_owned, row)?);
            }
            Ok(())
        })
        .await
    }

    /// For every value of `columns` held by more than one row, the sorted keys of those rows.
    pub(crate) async fn duplicate_key_groups(
        &self,
        schema: &Schema,
        columns: &[String],
    ) -> Result<Vec<Vec<Key>>, StoreError> {
        let table = self.table_columns().await?;
        for c in columns {
            self.find(&table, c, "dedupe_key")?;
        }
        let select = sql::duplicate_select(&self.table, schema, columns);
        let (location, schema_owned, width) = (self.location.clone(), schema.clone(), columns.len());
        let key_at = width;
        let (mut groups, _) = self
            .rows(
                select,
                Vec::new(),
                (Vec::<Vec<Key>>::new(), Vec::<u8>::new()),
                move |(groups, last), row| {
                    let mut dedupe = Vec::new();
                    for i in 0..width {
                        decode::value(raw_value(row, i)?, LogicalType::Any).encode(&mut dedupe);
                    }
                    let key = read_key_at(&location, &schema_owned, row, key_at)?;
                    if groups.is_empty() || *last != dedupe {
                        groups.push(Vec::new());
                        *last = dedupe;
                    }
                    groups.last_mut().expect("a group was just pushed").push(key);
                    Ok(())
                },
            )
            .await?;
        for g in &mut groups {
            g.sort_unstable();
        }
        groups.retain(|g| g.len() > 1);
        Ok(groups)
    }

    fn raw_err(&self, e: RawError<String>) -> StoreError {
        match e {
            RawError::Sql(reason) => self.read_err(reason),
            RawError::Row(reason) => self.read_err(reason),
        }
    }
}

/// The key of a row whose key columns start at column `at`.
fn read_key_at(location: &str, schema: &Schema, row: &rusqlite::Row<'_>, at: usize) -> Result<Key, StoreError> {
    let mut key = driftless_core::key::KeyBuilder::default();
    for (i, col) in schema.key.iter().enumerate() {
        decode::push_key(&mut key, raw_value(row, at + i)?, col.ty).map_err(|reason| StoreError::Schema {
            location: location.to_owned(),
            reason: format!("key column {:?}: {reason}", col.name),
        })?;
    }
    Ok(key.finish())
}

/// The SQL of one batch of writes.
struct Statements {
    select: String,
    update: Option<String>,
    insert: String,
    delete: String,
}

impl Statements {
    fn new(table: &str, check: &Schema, write: &Schema) -> Statements {
        let t = sql::ident(table);
        let key_cond: Vec<String> = write
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", sql::ident(&c.name), i + 1))
            .collect();
        let key_cond = key_cond.join(" AND ");
        let cols: Vec<String> = write
            .key
            .iter()
            .chain(&write.values)
            .map(|c| sql::ident(&c.name))
            .collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let sets: Vec<String> = write
            .values
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", sql::ident(&c.name), write.key.len() + i + 1))
            .collect();
        Statements {
            select: sql::point_select(table, check),
            update: (!sets.is_empty()).then(|| format!("UPDATE {t} SET {} WHERE {key_cond}", sets.join(", "))),
            insert: format!("INSERT INTO {t} ({}) VALUES ({})", cols.join(", "), marks.join(", ")),
            delete: format!("DELETE FROM {t} WHERE {key_cond}"),
        }
    }
}

/// One op under its savepoint: check, then write. `Err` rolls the op back.
fn apply_one(
    db: &rusqlite::Connection,
    statements: &Statements,
    reader: &mut RowReader,
    write_types: &[LogicalType],
    op: &WriteOp,
) -> Result<WriteResult, String> {
    let key_binds = sql::key_binds(&op.key)?;
    let mut now = Aggregate::default();
    {
        let mut select = db.prepare_cached(&statements.select).map_err(|e| e.to_string())?;
        let mut rows = select
            .query(params_from_iter(key_binds.iter()))
            .map_err(|e| e.to_string())?;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            now.add(reader.digest_any(row).map_err(|e| e.to_string())?.1);
        }
    }
    if now != op.seen {
        return Ok(WriteResult::Changed(now));
    }
    let exec = |sql: &str, binds: Vec<Bind>| {
        db.prepare_cached(sql)
            .and_then(|mut s| s.execute(params_from_iter(binds)))
            .map_err(|e| e.to_string())
    };
    match &op.action {
        WriteAction::Put(values) => {
            let binds: Vec<Bind> = values.iter().zip(write_types).map(|(v, ty)| bind(v, *ty)).collect();
            match (now.count, &statements.update) {
                (1, Some(update)) => {
                    exec(update, binds)?;
                }
                (1, None) => {}
                (0, _) => {
                    exec(&statements.insert, binds)?;
                }
                _ => {
                    exec(&statements.delete, key_binds)?;
                    exec(&statements.insert, binds)?;
                }
            }
        }
        WriteAction::PutObject(_) => {
            return Err(
                "an object write reached a SQLite table: canonical is an object copy and this stage is not".into(),
            );
        }
        WriteAction::Delete => {
            exec(&statements.delete, key_binds)?;
        }
        WriteAction::Statement { sql, binds } => {
            let binds: Vec<Bind> = binds.iter().map(|v| bind(v, LogicalType::Any)).collect();
            exec(sql, binds)?;
        }
    }
    Ok(WriteResult::Applied)
}
