//! Conditional writes to a PostgreSQL copy, and batched reads by key.
//!
//! A batch of writes is one transaction. Each op locks its key's rows with
//! `SELECT ... FOR UPDATE`, digests them exactly as a scan would, and writes only if they
//! still aggregate to what was seen at detection; a concurrent writer either committed
//! before the lock (and its newer row is seen and kept) or waits behind it. When an op
//! fails, PostgreSQL aborts the whole transaction; the batch is then rolled back and
//! replayed one op per transaction, so the failure is reported for that op alone.
//!
//! Values are bound as text and cast to the stage column's own type
//! (`$n::text::numeric(12,2)`; the type comes from the catalog, never from a config), so
//! PostgreSQL parses them as it would any literal; bytes bind as `bytea`.

use driftless_core::{Aggregate, Key, RowHasher, Value};
use driftless_store::{DigestBatch, Schema, StoreError, WriteAction, WriteOp, WriteResult};
use futures::TryStreamExt;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Transaction};

use crate::row::KeyReader;
use crate::sql::{self, Bind, KeyKind, ident};
use crate::{PgStore, describe_error};

/// Keys per batched read.
const READ_BATCH_KEYS: usize = 1000;

/// Binds a value for a column of PostgreSQL type `ty` (as `format_type` prints it): the
/// placeholder text and the bind.
fn value_bind(value: &Value, n: usize, ty: &str) -> (String, ValueBind) {
    match value {
        Value::Bytes(b) => (format!("${n}::bytea::{ty}"), ValueBind::Bytes(Some(b.clone()))),
        Value::Null => (format!("${n}::text::{ty}"), ValueBind::Text(None)),
        other => (format!("${n}::text::{ty}"), ValueBind::Text(other.to_text())),
    }
}

/// A compensating statement's bind: typed where PostgreSQL needs the type to resolve
/// operators (integers, floats, booleans, bytes), text otherwise.
fn statement_bind(value: &Value) -> ValueBind {
    match value {
        Value::Int(v) => ValueBind::Int(Some(*v)),
        Value::Float(f) => ValueBind::Float(Some(*f)),
        Value::Bool(b) => ValueBind::Bool(Some(*b)),
        Value::Bytes(b) => ValueBind::Bytes(Some(b.clone())),
        other => ValueBind::Text(other.to_text()),
    }
}

/// One bound value of a write.
#[derive(Debug, Clone)]
enum ValueBind {
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
}

fn bind_value(query: Query<'_, Postgres, PgArguments>, v: ValueBind) -> Query<'_, Postgres, PgArguments> {
    match v {
        ValueBind::Text(t) => query.bind(t),
        ValueBind::Bytes(b) => query.bind(b),
        ValueBind::Int(i) => query.bind(i),
        ValueBind::Float(f) => query.bind(f),
        ValueBind::Bool(b) => query.bind(b),
    }
}

/// The SQL of one batch of writes, for the write columns and their stage types.
#[derive(Debug)]
struct Statements {
    table: String,
    /// The write columns (key first) with their stage types.
    columns: Vec<(String, String)>,
    key_cols: usize,
    /// `(k1, k2) = ($1::int8, $2::text)`, with the key binds first.
    key_cond: String,
}

impl Statements {
    fn delete(&self) -> String {
        format!("DELETE FROM {} WHERE {}", self.table, self.key_cond)
    }

    /// `INSERT` of all columns, or `UPDATE` of the non-key ones, with binds numbered after
    /// the key's for the update.
    fn put(&self, values: &[Value], update: bool) -> (String, Vec<ValueBind>) {
        let mut marks = Vec::new();
        let mut binds = Vec::new();
        let first = if update { self.key_cols } else { 0 };
        for (i, ((_, ty), v)) in self.columns.iter().zip(values).enumerate().skip(first) {
            let n = if update { i + 1 } else { i - first + 1 };
            let (mark, bind) = value_bind(v, n, ty);
            marks.push(mark);
            binds.push(bind);
        }
        let names: Vec<String> = self.columns.iter().map(|(c, _)| ident(c)).collect();
        if update {
            let sets: Vec<String> = names[self.key_cols..]
                .iter()
                .zip(&marks)
                .map(|(c, m)| format!("{c} = {m}"))
                .collect();
            (
                format!("UPDATE {} SET {} WHERE {}", self.table, sets.join(", "), self.key_cond),
                binds,
            )
        } else {
            (
                format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    self.table,
                    names.join(", "),
                    marks.join(", ")
                ),
                binds,
            )
        }
    }
}

fn bind_key<'q>(mut query: Query<'q, Postgres, PgArguments>, key: &[Bind]) -> Query<'q, Postgres, PgArguments> {
    for b in key {
        query = match b {
            Bind::Int(v) => query.bind(*v),
            Bind::Text(s) => query.bind(s.clone()),
            Bind::Bytes(b) => query.bind(b.clone()),
        };
    }
    query
}

impl PgStore {
    /// The key of a row whose first columns are `schema`'s key as [`sql::select_list`]
    /// selects it.
    fn read_key(&self, schema: &Schema, row: &sqlx::postgres::PgRow) -> Result<Key, StoreError> {
        KeyReader::new(schema).read(row).map_err(|r| self.schema_err(r))
    }

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
        let (quoted, table) = self.table_columns().await?;
        let mut columns = Vec::new();
        for c in write.key.iter().chain(&write.values) {
            let col = self.find(&table, &c.name, "written")?;
            columns.push((c.name.clone(), col.ty.clone()));
        }
        let key_cond = format!(
            "({}) = ({})",
            sql::key_exprs(write).join(", "),
            sql::placeholders(write, 1)
        );
        let statements = Statements {
            table: quoted,
            columns,
            key_cols: write.key.len(),
            key_cond,
        };
        match self.apply_in_one(&statements, check, hasher, ops).await {
            Ok(results) => Ok(results),
            Err(_) if ops.len() > 1 => {
                // Some op failed and aborted the transaction: replay one op at a time, so
                // each failure is reported for its own op and the others are written.
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(
                        match self
                            .apply_in_one(&statements, check, hasher, std::slice::from_ref(op))
                            .await
                        {
                            Ok(mut r) => r.pop().unwrap_or(WriteResult::Failed("no result".into())),
                            Err(reason) => WriteResult::Failed(reason),
                        },
                    );
                }
                Ok(results)
            }
            Err(reason) => Ok(vec![WriteResult::Failed(reason)]),
        }
    }

    /// All of `ops` in one transaction, or the first error (the transaction rolled back).
    /// The rows of every key are read and locked by one query first.
    async fn apply_in_one(
        &self,
        statements: &Statements,
        check: &Schema,
        hasher: &RowHasher,
        ops: &[WriteOp],
    ) -> Result<Vec<WriteResult>, String> {
        let err = |e: sqlx::Error| describe_error(&e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let mut keys: Vec<Key> = ops.iter().map(|op| op.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        let select = keys_in_select(&statements.table, check, true);
        let mut now: std::collections::HashMap<Key, Aggregate> = std::collections::HashMap::new();
        let mut scratch = Vec::new();
        for chunk in keys.chunks(READ_BATCH_KEYS) {
            let rows = bind_key_arrays(sqlx::query(&select), check, chunk)?
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
            for row in &rows {
                let k = self.read_key(check, row).map_err(|e| e.to_string())?;
                let values = self.read_values(check, row).map_err(|e| e.to_string())?;
                let digest = hasher.digest_row(k.as_bytes(), &values, &mut scratch);
                now.entry(k).or_default().add(digest);
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let held = now.get(&op.key).copied().unwrap_or_default();
            if held != op.seen {
                results.push(WriteResult::Changed(held));
                continue;
            }
            let key = sql::key_binds(&op.key)?;
            write_one(&mut tx, statements, op, &key, held.count)
                .await
                .map_err(err)?;
            results.push(WriteResult::Applied);
        }
        tx.commit().await.map_err(err)?;
        Ok(results)
    }

    /// The `(key, digest)` of every row with one of `keys`, in key order.
    pub(crate) async fn digest_many(
        &self,
        schema: &Schema,
        keys: &[Key],
        hasher: &RowHasher,
    ) -> Result<DigestBatch, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut scratch = Vec::new();
        for (key, values) in self.rows_of(schema, keys).await? {
            out.push((key.clone(), hasher.digest_row(key.as_bytes(), &values, &mut scratch)));
        }
        Ok(out)
    }

    /// The compared values of the rows with one of `keys`, in key order (a key held twice
    /// appears twice).
    pub(crate) async fn rows_of(&self, schema: &Schema, keys: &[Key]) -> Result<Vec<(Key, Vec<Value>)>, StoreError> {
        let (quoted, _) = self.table_columns().await?;
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let text = keys_in_select(&quoted, schema, false);
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_BATCH_KEYS) {
            let query = bind_key_arrays(sqlx::query(&text), schema, chunk).map_err(|r| self.schema_err(r))?;
            let mut rows = query.fetch(&self.pool);
            while let Some(row) = rows.try_next().await.map_err(|e| self.read_err(&e))? {
                out.push((self.read_key(schema, &row)?, self.read_values(schema, &row)?));
            }
        }
        Ok(out)
    }

    /// Keys of the rows whose `column` is at or after `since_us`.
    pub(crate) async fn keys_changed_since(
        &self,
        schema: &Schema,
        column: &str,
        since_us: i64,
    ) -> Result<Vec<Key>, StoreError> {
        let (quoted, table) = self.table_columns().await?;
        self.find(&table, column, "change-time")?;
        let text = format!(
            "SELECT {} FROM {quoted} WHERE {}::timestamptz >= $1::text::timestamptz",
            sql::select_list(schema, false),
            ident(column)
        );
        let since = Value::Timestamp(since_us).to_text();
        let mut rows = sqlx::query(&text).bind(since).fetch(&self.pool);
        let mut keys = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(|e| self.read_err(&e))? {
            keys.push(self.read_key(schema, &row)?);
        }
        Ok(keys)
    }

    /// For every value of `columns` held by more than one row, the sorted keys of its rows.
    pub(crate) async fn duplicate_key_groups(
        &self,
        schema: &Schema,
        columns: &[String],
    ) -> Result<Vec<Vec<Key>>, StoreError> {
        let (quoted, table) = self.table_columns().await?;
        for c in columns {
            self.find(&table, c, "dedupe_key")?;
        }
        let cols: Vec<String> = columns.iter().map(|c| ident(c)).collect();
        let cols = cols.join(", ");
        let text_cols: Vec<String> = columns.iter().map(|c| format!("{}::text", ident(c))).collect();
        let text = format!(
            "SELECT {}, {} FROM {quoted} WHERE ({cols}) IN \
             (SELECT {cols} FROM {quoted} GROUP BY {cols} HAVING count(*) > 1) ORDER BY {cols}, {}",
            sql::select_list(schema, false),
            text_cols.join(", "),
            sql::key_exprs(schema).join(", ")
        );
        let mut rows = sqlx::query(&text).fetch(&self.pool);
        let mut groups: Vec<Vec<Key>> = Vec::new();
        let mut last: Option<Vec<Option<String>>> = None;
        let at = schema.key.len();
        while let Some(row) = rows.try_next().await.map_err(|e| self.read_err(&e))? {
            let dedupe: Vec<Option<String>> = (0..columns.len())
                .map(|i| sqlx::Row::try_get::<Option<String>, _>(&row, at + i).map_err(|e| self.read_err(&e)))
                .collect::<Result<_, _>>()?;
            if last.as_ref() != Some(&dedupe) {
                groups.push(Vec::new());
                last = Some(dedupe);
            }
            groups
                .last_mut()
                .expect("a group was just pushed")
                .push(self.read_key(schema, &row)?);
        }
        groups.retain(|g| g.len() > 1);
        Ok(groups)
    }
}

/// `SELECT key, values FROM t WHERE key IN (the arrays bound by [`bind_key_arrays`])`, in
/// key order, optionally locking the rows (`FOR UPDATE`, taken in key order, so two
/// repairers of one stage never deadlock).
fn keys_in_select(table: &str, schema: &Schema, lock: bool) -> String {
    let arrays: Vec<String> = schema
        .key
        .iter()
        .enumerate()
        .map(|(i, c)| match sql::key_kind(c.ty) {
            KeyKind::Uuid => format!("${}::text[]::uuid[]", i + 1),
            k => format!("${}::{}[]", i + 1, k.cast()),
        })
        .collect();
    // One key column: `= ANY`, an index condition whatever the statistics; several: a
    // row-value semi-join against the arrays.
    let filter = match arrays.as_slice() {
        [one] => format!("{} = ANY({one})", sql::key_exprs(schema).join(", ")),
        _ => format!(
            "({}) IN (SELECT * FROM UNNEST({}))",
            sql::key_exprs(schema).join(", "),
            arrays.join(", ")
        ),
    };
    format!(
        "SELECT {} FROM {table} WHERE {filter} ORDER BY {}{}",
        sql::select_list(schema, true),
        sql::key_exprs(schema).join(", "),
        if lock { " FOR UPDATE" } else { "" }
    )
}

/// Binds `keys` as one array per key column.
fn bind_key_arrays<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    schema: &Schema,
    keys: &[Key],
) -> Result<Query<'q, Postgres, PgArguments>, String> {
    let parts: Vec<Vec<Bind>> = keys.iter().map(sql::key_binds).collect::<Result<_, _>>()?;
    for (i, c) in schema.key.iter().enumerate() {
        let column = parts.iter().map(|p| p.get(i));
        query = match sql::key_kind(c.ty) {
            KeyKind::Int => query.bind(
                column
                    .map(|b| if let Some(Bind::Int(v)) = b { *v } else { 0 })
                    .collect::<Vec<i64>>(),
            ),
            KeyKind::Bytes => query.bind(
                column
                    .map(|b| {
                        if let Some(Bind::Bytes(v)) = b {
                            v.clone()
                        } else {
                            Vec::new()
                        }
                    })
                    .collect::<Vec<Vec<u8>>>(),
            ),
            KeyKind::Text | KeyKind::Uuid => query.bind(
                column
                    .map(|b| match b {
                        Some(Bind::Text(s)) => s.clone(),
                        Some(Bind::Int(v)) => v.to_string(),
                        _ => String::new(),
                    })
                    .collect::<Vec<String>>(),
            ),
        };
    }
    Ok(query)
}

/// Makes one op's write, inside the batch's transaction.
async fn write_one(
    tx: &mut Transaction<'_, Postgres>,
    statements: &Statements,
    op: &WriteOp,
    key: &[Bind],
    rows_now: u64,
) -> Result<(), sqlx::Error> {
    match &op.action {
        WriteAction::Put(values) => {
            if rows_now == 1 && statements.columns.len() > statements.key_cols {
                let (text, binds) = statements.put(values, true);
                let mut q = bind_key(sqlx::query(&text), key);
                for b in binds {
                    q = bind_value(q, b);
                }
                q.execute(&mut **tx).await?;
            } else if rows_now != 1 {
                if rows_now > 1 {
                    bind_key(sqlx::query(&statements.delete()), key)
                        .execute(&mut **tx)
                        .await?;
                }
                let (text, binds) = statements.put(values, false);
                let mut q = sqlx::query(&text);
                for b in binds {
                    q = bind_value(q, b);
                }
                q.execute(&mut **tx).await?;
            }
        }
        WriteAction::PutObject(_) => {
            return Err(sqlx::Error::Protocol(
                "an object write reached a PostgreSQL table: canonical is an object copy and this stage is not".into(),
            ));
        }
        WriteAction::Delete => {
            bind_key(sqlx::query(&statements.delete()), key)
                .execute(&mut **tx)
                .await?;
        }
        WriteAction::Statement { sql, binds } => {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = bind_value(q, statement_bind(b));
            }
            q.execute(&mut **tx).await?;
        }
    }
    Ok(())
}
