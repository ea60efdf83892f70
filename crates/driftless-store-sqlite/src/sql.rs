//! SQL text for scans. Identifiers are quoted; values are always bound, never spliced.

use driftless_core::key::format_uuid;
use driftless_core::{Key, KeyPart, KeyRange};
use driftless_store::Schema;
use rusqlite::types::Value as Bind;

/// Quotes an identifier for SQLite.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn key_list(schema: &Schema) -> String {
    let cols: Vec<String> = schema
        .key
        .iter()
        .map(|c| format!("{} COLLATE BINARY", ident(&c.name)))
        .collect();
    cols.join(", ")
}

fn select_list(schema: &Schema, with_values: bool) -> String {
    let mut cols: Vec<String> = schema.key.iter().map(|c| ident(&c.name)).collect();
    if with_values {
        cols.extend(schema.values.iter().map(|c| ident(&c.name)));
    }
    cols.join(", ")
}

/// `SELECT key, values FROM t WHERE (key) >= (lo) AND (key) < (hi) ORDER BY key`,
/// with the values to bind in order.
pub fn range_select(table: &str, schema: &Schema, range: &KeyRange) -> Result<(String, Vec<Bind>), String> {
    let keys = key_list(schema);
    let mut sql = format!("SELECT {} FROM {}", select_list(schema, true), ident(table));
    let mut binds = Vec::new();
    let mut clauses = Vec::new();
    for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
        if let Some(k) = bound {
            let b = key_binds(k)?;
            let first = binds.len() + 1;
            let marks: Vec<String> = (first..first + b.len()).map(|i| format!("?{i}")).collect();
            clauses.push(format!("({keys}) {op} ({})", marks.join(", ")));
            binds.extend(b);
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
        "SELECT {} FROM {} ORDER BY {}",
        select_list(schema, false),
        ident(table),
        key_list(schema)
    )
}

/// The rows at rowids `lo, lo + step, ...` up to `hi`: a systematic sample.
pub fn rowid_sample(table: &str, schema: &Schema) -> String {
    format!(
        "WITH RECURSIVE s(r) AS (SELECT ?1 UNION ALL SELECT r + ?2 FROM s WHERE r + ?2 <= ?3) \
         SELECT {} FROM {} JOIN s ON {}.rowid = s.r",
        select_list(schema, false),
        ident(table),
        ident(table)
    )
}

/// One row by key.
pub fn point_select(table: &str, schema: &Schema) -> String {
    let cond: Vec<String> = schema
        .key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", ident(&c.name), i + 1))
        .collect();
    format!(
        "SELECT {} FROM {} WHERE {}",
        select_list(schema, true),
        ident(table),
        cond.join(" AND ")
    )
}

/// The bind values of a key's parts. Uuids bind as their lower-case text, the form
/// applications store them in SQLite.
pub fn key_binds(key: &Key) -> Result<Vec<Bind>, String> {
    let parts = key.parts().map_err(|e| e.to_string())?;
    Ok(parts
        .into_iter()
        .map(|p| match p {
            KeyPart::Int(v) => Bind::Integer(v),
            KeyPart::Text(s) => Bind::Text(s),
            KeyPart::Uuid(u) => Bind::Text(format_uuid(&u)),
            KeyPart::Bytes(b) => Bind::Blob(b),
        })
        .collect())
}

/// Key columns and one more column, for selecting rows by change time.
pub fn keys_and(table: &str, schema: &Schema, column: &str) -> String {
    format!(
        "SELECT {}, {} FROM {}",
        select_list(schema, false),
        ident(column),
        ident(table)
    )
}

/// The `columns` and key of every row whose `columns` value more than one row holds,
/// ordered so that rows sharing a value are adjacent.
pub fn duplicate_select(table: &str, schema: &Schema, columns: &[String]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    let cols = cols.join(", ");
    format!(
        "SELECT {cols}, {} FROM {t} WHERE ({cols}) IN (SELECT {cols} FROM {t} GROUP BY {cols} HAVING count(*) > 1) \
         ORDER BY {cols}, {}",
        select_list(schema, false),
        key_list(schema),
        t = ident(table),
    )
}
