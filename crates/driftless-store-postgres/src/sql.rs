//! SQL text for PostgreSQL scans. Identifiers are quoted; values are always bound.

use driftless_core::key::format_uuid;
use driftless_core::{Key, KeyPart, KeyRange, LogicalType};
use driftless_store::Schema;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

/// How a key column is read, compared and bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Integer types, read as `int8`.
    Int,
    /// Text types, compared `COLLATE "C"`.
    Text,
    /// `uuid`, read as text, compared natively (bytewise).
    Uuid,
    /// `bytea`, compared natively (bytewise).
    Bytes,
}

impl KeyKind {
    /// The key kind of a logical type, if it can be a key.
    pub fn of(ty: LogicalType) -> Option<KeyKind> {
        match ty {
            LogicalType::Number => Some(KeyKind::Int),
            LogicalType::Text => Some(KeyKind::Text),
            LogicalType::Uuid => Some(KeyKind::Uuid),
            LogicalType::Bytes => Some(KeyKind::Bytes),
            _ => None,
        }
    }

    pub(crate) fn cast(self) -> &'static str {
        match self {
            KeyKind::Int => "int8",
            KeyKind::Text => "text",
            KeyKind::Uuid => "uuid",
            KeyKind::Bytes => "bytea",
        }
    }
}

/// A value to bind.
#[derive(Debug)]
pub enum Bind {
    /// An integer.
    Int(i64),
    /// Text (also uuids, cast in SQL).
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Bind {
    /// Binds this value to `query`.
    pub fn bind_to(self, query: Query<'_, Postgres, PgArguments>) -> Query<'_, Postgres, PgArguments> {
        match self {
            Bind::Int(v) => query.bind(v),
            Bind::Text(s) => query.bind(s),
            Bind::Bytes(b) => query.bind(b),
        }
    }
}

/// Quotes an identifier for PostgreSQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The key kind of a key column's logical type.
pub fn key_kind(ty: LogicalType) -> KeyKind {
    // Schemas are validated when resolved: every key column has a key kind.
    KeyKind::of(ty).unwrap_or(KeyKind::Text)
}

/// A key column's select expression: integers as they are (decoded by width), text as
/// `text`, uuids and bytes as they are.
pub fn key_expr(name: &str, kind: KeyKind) -> String {
    match kind {
        KeyKind::Text => format!("{}::text", ident(name)),
        KeyKind::Int | KeyKind::Uuid | KeyKind::Bytes => ident(name),
    }
}

/// Key columns as compared and ordered: text bytewise.
pub(crate) fn key_exprs(schema: &Schema) -> Vec<String> {
    schema
        .key
        .iter()
        .map(|c| match key_kind(c.ty) {
            KeyKind::Text => format!("{} COLLATE \"C\"", ident(&c.name)),
            _ => ident(&c.name),
        })
        .collect()
}

/// Key columns as `wire::push_key` reads them, then (with `with_values`) every compared
/// column as its text form, which `fetch` normalises with `Value::from_text`.
pub(crate) fn select_list(schema: &Schema, with_values: bool) -> String {
    let mut cols: Vec<String> = schema.key.iter().map(|c| key_expr(&c.name, key_kind(c.ty))).collect();
    if with_values {
        cols.extend(schema.values.iter().map(|c| format!("{}::text", ident(&c.name))));
    }
    cols.join(", ")
}

pub(crate) fn placeholders(schema: &Schema, first: usize) -> String {
    let marks: Vec<String> = schema
        .key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", first + i, key_kind(c.ty).cast()))
        .collect();
    marks.join(", ")
}

/// `select` (a select list) over the rows of `range` in key order, with the values to bind.
pub fn range_select(
    table: &str,
    schema: &Schema,
    select: &str,
    range: &KeyRange,
) -> Result<(String, Vec<Bind>), String> {
    let keys = key_exprs(schema).join(", ");
    let mut sql = format!("SELECT {select} FROM {table}");
    let mut binds = Vec::new();
    let mut clauses = Vec::new();
    for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
        if let Some(k) = bound {
            let marks = placeholders(schema, binds.len() + 1);
            clauses.push(format!("({keys}) {op} ({marks})"));
            binds.extend(key_binds(k)?);
        }
    }
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY {keys}"));
    Ok((sql, binds))
}

/// Key columns only, in key order.
pub fn key_select(table: &str, schema: &Schema) -> String {
    format!(
        "SELECT {} FROM {table} ORDER BY {}",
        select_list(schema, false),
        key_exprs(schema).join(", ")
    )
}

/// The key columns as a select list.
pub fn key_list(schema: &Schema) -> String {
    select_list(schema, false)
}

/// About `percent` of the keys, in no particular order.
pub fn sample_select(table: &str, schema: &Schema, percent: f64) -> String {
    format!(
        "SELECT {} FROM {table} TABLESAMPLE BERNOULLI ({percent})",
        select_list(schema, false)
    )
}

/// The bind values of a key's parts.
pub fn key_binds(key: &Key) -> Result<Vec<Bind>, String> {
    let parts = key.parts().map_err(|e| e.to_string())?;
    Ok(parts
        .into_iter()
        .map(|p| match p {
            KeyPart::Int(v) => Bind::Int(v),
            KeyPart::Text(s) => Bind::Text(s),
            KeyPart::Uuid(u) => Bind::Text(format_uuid(&u)),
            KeyPart::Bytes(b) => Bind::Bytes(b),
        })
        .collect())
}
