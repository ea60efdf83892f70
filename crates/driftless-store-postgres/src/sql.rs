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

pub(crate) fn kind(ty: LogicalType) -> KeyKind {
    // Schemas are validated when resolved: every key column has a key kind.
    KeyKind::of(ty).unwrap_or(KeyKind::Text)
}

/// Key columns as compared and ordered: text bytewise.
pub(crate) fn key_exprs(schema: &Schema) -> Vec<String> {
    schema
        .key
        .iter()
        .map(|c| match kind(c.ty) {
            KeyKind::Text => format!("{} COLLATE \"C\"", ident(&c.name)),
            _ => ident(&c.name),
        })
        .collect()
}

pub(crate) fn select_list(schema: &Schema, with_values: bool) -> String {
    let mut cols: Vec<String> = schema
        .key
        .iter()
        .map(|c| match kind(c.ty) {
            KeyKind::Int => format!("{}::int8", ident(&c.name)),
            KeyKind::Text | KeyKind::Uuid => format!("{}::text", ident(&c.name)),
            KeyKind::Bytes => ident(&c.name),
        })
        .collect();
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
        .map(|(i, c)| format!("${}::{}", first + i, kind(c.ty).cast()))
        .collect();
    marks.join(", ")
}

/// The rows of `range` in key order, with the values to bind.
pub fn range_select(table: &str, schema: &Schema, range: &KeyRange) -> Result<(String, Vec<Bind>), String> {
    let keys = key_exprs(schema).join(", ");
    let mut sql = format!("SELECT {} FROM {table}", select_list(schema, true));
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

/// The key as the bytes of `driftless_core::key`'s order-preserving encoding, computed in
/// SQL, so `width_bucket` over encoded boundary keys (a `bytea[]`, compared bytewise) gives
/// exactly the leaf `Boundaries::leaf_of` gives. `None` for bytea keys, whose encoding
/// escapes zero bytes, which SQL cannot do cheaply.
pub fn encoded_key(schema: &Schema) -> Option<String> {
    let parts: Option<Vec<String>> = schema
        .key
        .iter()
        .map(|c| {
            let col = ident(&c.name);
            match kind(c.ty) {
                // Tag 0x10, then the big-endian value with its sign bit flipped.
                KeyKind::Int => Some(format!(
                    "'\\x10'::bytea || int8send({col}::int8 # (-9223372036854775808)::int8)"
                )),
                // Tag 0x20, the UTF-8 bytes (PostgreSQL text holds no zero byte), 0x00 0x01.
                KeyKind::Text => Some(format!(
                    "'\\x20'::bytea || convert_to({col}::text, 'UTF8') || '\\x0001'::bytea"
                )),
                // Tag 0x28, the 16 bytes.
                KeyKind::Uuid => Some(format!("'\\x28'::bytea || uuid_send({col})")),
                KeyKind::Bytes => None,
            }
        })
        .collect();
    parts.map(|p| p.join(" || "))
}

/// One grouped query: per leaf, the row count and two 64-bit halves of the sum of the rows'
/// md5 digests (over the text form of key and compared columns). `$1` is the `bytea[]` of
/// encoded boundary keys.
pub fn pushdown_select(table: &str, schema: &Schema, encoded_key: &str) -> String {
    let cols: Vec<String> = schema
        .key
        .iter()
        .chain(&schema.values)
        .map(|c| ident(&c.name))
        .collect();
    format!(
        "SELECT leaf, count(*)::int8, \
                sum(('x' || substr(h, 1, 16))::bit(64)::int8)::text, \
                sum(('x' || substr(h, 17, 16))::bit(64)::int8)::text \
         FROM (SELECT width_bucket({encoded_key}, $1::bytea[]) AS leaf, md5(ROW({})::text) AS h FROM {table}) rows \
         GROUP BY leaf",
        cols.join(", ")
    )
}
