//! From SQLite's dynamically typed values to logical values.
//!
//! SQLite stores each value with its own storage class (INTEGER, REAL, TEXT, BLOB, NULL),
//! whatever the column's declared type. The declared type of the canonical copy's column
//! gives the logical type; each value is converted from its actual class into that type.
//! A value that does not convert (text that is no number in a numeric column) is kept as
//! text, so it digests differently from every number and shows up as drift.

use driftless_core::key::{KeyBuilder, parse_uuid};
use driftless_core::value::{canonical_decimal, parse_date, parse_timestamp};
use driftless_core::{LogicalType, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, TypeInfo, ValueRef};

/// SQLite's storage class of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Null,
    Integer,
    Real,
    Text,
    Blob,
}

fn class(row: &SqliteRow, i: usize) -> Class {
    let Ok(raw) = row.try_get_raw(i) else { return Class::Null };
    if raw.is_null() {
        return Class::Null;
    }
    match raw.type_info().name() {
        "INTEGER" | "BOOLEAN" | "INT8" => Class::Integer,
        "REAL" => Class::Real,
        "BLOB" => Class::Blob,
        _ => Class::Text,
    }
}

/// The logical type of a declared column type, following SQLite's affinity rules and
/// recognising the names applications use for richer types.
pub fn logical_type(declared: &str) -> LogicalType {
    let t = declared.to_ascii_uppercase();
    let has = |s: &str| t.contains(s);
    if t.trim().is_empty() {
        LogicalType::Any
    } else if has("BOOL") {
        LogicalType::Bool
    } else if has("UUID") {
        LogicalType::Uuid
    } else if has("JSON") {
        LogicalType::Json
    } else if has("TIMESTAMP") || has("DATETIME") {
        LogicalType::Timestamp
    } else if t.starts_with("DATE") {
        LogicalType::Date
    } else if has("INT") {
        LogicalType::Number
    } else if has("CHAR") || has("CLOB") || has("TEXT") {
        LogicalType::Text
    } else if has("BLOB") || has("BYTEA") {
        LogicalType::Bytes
    } else {
        LogicalType::Number
    }
}

/// Appends key column `i` of `row` to `key`. Keys are integers, text, uuids or bytes, never
/// NULL and never REAL (a float key has no exact bytewise order in every database).
pub fn push_key(key: &mut KeyBuilder, row: &SqliteRow, i: usize, ty: LogicalType) -> Result<(), String> {
    match class(row, i) {
        Class::Integer => key.push_int(get(row, i)),
        Class::Text => {
            let s: &str = get(row, i);
            match (ty, parse_uuid(s)) {
                (LogicalType::Uuid, Some(u)) => key.push_uuid(&u),
                (LogicalType::Uuid, None) => return Err(format!("{s:?} is not a uuid")),
                _ => key.push_text(s.as_bytes()),
            }
        }
        Class::Blob => {
            let b: &[u8] = get(row, i);
            match (ty, <[u8; 16]>::try_from(b)) {
                (LogicalType::Uuid, Ok(u)) => key.push_uuid(&u),
                _ => key.push_bytes(b),
            }
        }
        Class::Null => return Err("NULL in a key column".into()),
        Class::Real => return Err("REAL value in a key column; keys must be integer, text, uuid or bytes".into()),
    }
    Ok(())
}

/// Column `i` of `row` as a value of logical type `ty`.
pub fn value(row: &SqliteRow, i: usize, ty: LogicalType) -> Value {
    let class = class(row, i);
    match (class, ty) {
        (Class::Null, _) => Value::Null,
        (Class::Integer, LogicalType::Bool) => Value::Bool(get::<i64>(row, i) != 0),
        (Class::Integer, LogicalType::Timestamp) => Value::Timestamp(get::<i64>(row, i).saturating_mul(1_000_000)),
        (Class::Integer, LogicalType::Text) => Value::Text(get::<i64>(row, i).to_string()),
        (Class::Integer, _) => Value::Int(get(row, i)),
        (Class::Real, LogicalType::Timestamp) => Value::Timestamp((get::<f64>(row, i) * 1e6).round() as i64),
        (Class::Real, LogicalType::Text) => Value::Text(get::<f64>(row, i).to_string()),
        (Class::Real, _) => Value::Float(get(row, i)),
        (Class::Blob, LogicalType::Uuid) => {
            let b: &[u8] = get(row, i);
            <[u8; 16]>::try_from(b).map_or_else(|_| Value::Bytes(b.to_vec()), Value::Uuid)
        }
        (Class::Blob, _) => Value::Bytes(get::<&[u8]>(row, i).to_vec()),
        (Class::Text, ty) => text_value(get(row, i), ty),
    }
}

/// Text converted into `ty` where it parses, kept as text where it does not.
fn text_value(s: &str, ty: LogicalType) -> Value {
    let parsed = match ty {
        LogicalType::Number => canonical_decimal(s).map(Value::Decimal),
        LogicalType::Bool => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "yes" | "on" => Some(Value::Bool(true)),
            "0" | "f" | "false" | "no" | "off" => Some(Value::Bool(false)),
            _ => None,
        },
        LogicalType::Timestamp => parse_timestamp(s).map(Value::Timestamp),
        LogicalType::Date => parse_date(s).map(Value::Date),
        LogicalType::Uuid => parse_uuid(s).map(Value::Uuid),
        LogicalType::Json => return Value::json_or_text(s),
        LogicalType::Text | LogicalType::Bytes | LogicalType::Any => None,
    };
    parsed.unwrap_or_else(|| Value::Text(s.to_owned()))
}

/// Reads column `i` as `T`. The storage class was checked first, so decoding cannot fail
/// except on invalid UTF-8 in TEXT, which reads as the replacement of its bytes.
fn get<'r, T>(row: &'r SqliteRow, i: usize) -> T
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + Default,
{
    row.try_get_unchecked::<T, _>(i).unwrap_or_default()
}
