//! From SQLite's dynamically typed values to logical values.
//!
//! SQLite stores each value with its own storage class (INTEGER, REAL, TEXT, BLOB, NULL),
//! whatever the column's declared type. The declared type of the canonical copy's column
//! gives the logical type; each value is converted from its actual class into that type.
//! A value that does not convert (text that is no number in a numeric column) is kept as
//! text, so it digests differently from every number and shows up as drift.

use driftless_core::key::{KeyBuilder, parse_uuid};
use driftless_core::value::parse_timestamp;
use driftless_core::{LogicalType, Value};
use rusqlite::types::ValueRef;

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

/// Appends one key column's value to `key`. Keys are integers, text, uuids or bytes, never
/// NULL and never REAL (a float key has no exact bytewise order in every database).
pub fn push_key(key: &mut KeyBuilder, raw: ValueRef<'_>, ty: LogicalType) -> Result<(), String> {
    match raw {
        ValueRef::Integer(v) => key.push_int(v),
        ValueRef::Text(bytes) => match (ty, std::str::from_utf8(bytes).ok().and_then(parse_uuid)) {
            (LogicalType::Uuid, Some(u)) => key.push_uuid(&u),
            (LogicalType::Uuid, None) => return Err(format!("{:?} is not a uuid", String::from_utf8_lossy(bytes))),
            _ => key.push_text(bytes),
        },
        ValueRef::Blob(b) => match (ty, <[u8; 16]>::try_from(b)) {
            (LogicalType::Uuid, Ok(u)) => key.push_uuid(&u),
            _ => key.push_bytes(b),
        },
        ValueRef::Null => return Err("NULL in a key column".into()),
        ValueRef::Real(_) => return Err("REAL value in a key column; keys must be integer, text, uuid or bytes".into()),
    }
    Ok(())
}

/// One column's value as a value of logical type `ty`.
pub fn value(raw: ValueRef<'_>, ty: LogicalType) -> Value {
    match (raw, ty) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Integer(v), LogicalType::Bool) => Value::Bool(v != 0),
        (ValueRef::Integer(v), LogicalType::Timestamp) => Value::Timestamp(v.saturating_mul(1_000_000)),
        (ValueRef::Integer(v), LogicalType::Text) => Value::Text(v.to_string()),
        (ValueRef::Integer(v), _) => Value::Int(v),
        (ValueRef::Real(f), LogicalType::Timestamp) => Value::Timestamp((f * 1e6).round() as i64),
        (ValueRef::Real(f), LogicalType::Text) => Value::Text(f.to_string()),
        (ValueRef::Real(f), _) => Value::Float(f),
        (ValueRef::Blob(b), LogicalType::Uuid) => {
            <[u8; 16]>::try_from(b).map_or_else(|_| Value::Bytes(b.to_vec()), Value::Uuid)
        }
        (ValueRef::Blob(b), _) => Value::Bytes(b.to_vec()),
        (ValueRef::Text(bytes), ty) => match std::str::from_utf8(bytes) {
            Ok(s) => Value::from_text(s, ty),
            // Invalid UTF-8 in a TEXT value: compare the bytes themselves.
            Err(_) => Value::Bytes(bytes.to_vec()),
        },
    }
}

/// Appends the canonical encoding of one column's value to `buf`: exactly what
/// `value(raw, ty).encode(buf)` appends, without building a [`Value`] in the common cases.
pub fn encode(raw: ValueRef<'_>, ty: LogicalType, buf: &mut Vec<u8>) {
    use driftless_core::value::{encode_bytes, encode_float, encode_int, encode_null, encode_text, encode_timestamp};
    match (raw, ty) {
        (ValueRef::Null, _) => encode_null(buf),
        (ValueRef::Integer(v), LogicalType::Number | LogicalType::Any) => encode_int(v, buf),
        (ValueRef::Real(f), LogicalType::Number | LogicalType::Any) => encode_float(f, buf),
        (ValueRef::Blob(b), ty) if ty != LogicalType::Uuid => encode_bytes(b, buf),
        (ValueRef::Text(t), LogicalType::Text | LogicalType::Any) if std::str::from_utf8(t).is_ok() => {
            encode_text(t, buf)
        }
        (ValueRef::Text(t), LogicalType::Timestamp) => match std::str::from_utf8(t).ok().and_then(parse_timestamp) {
            Some(us) => encode_timestamp(us, buf),
            None => value(raw, ty).encode(buf),
        },
        _ => value(raw, ty).encode(buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_encoding_matches_values() {
        let raws = [
            ValueRef::Null,
            ValueRef::Integer(-42),
            ValueRef::Integer(1),
            ValueRef::Real(12.25),
            ValueRef::Real(-0.0),
            ValueRef::Text(b"12.50"),
            ValueRef::Text(b""),
            ValueRef::Text(b"true"),
            ValueRef::Text(b"2024-03-01 12:00:00+01:00"),
            ValueRef::Text(b"not a date"),
            ValueRef::Text(b"{\"b\":1,\"a\":2}"),
            ValueRef::Text(b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ValueRef::Text(&[0xff, 0xfe]),
            ValueRef::Text(b"\\x41"),
            ValueRef::Text(b"NaN"),
            ValueRef::Blob(&[1, 2, 3]),
            ValueRef::Blob(&[7; 16]),
        ];
        let types = [
            LogicalType::Bool,
            LogicalType::Number,
            LogicalType::Text,
            LogicalType::Bytes,
            LogicalType::Timestamp,
            LogicalType::Date,
            LogicalType::Uuid,
            LogicalType::Json,
            LogicalType::Any,
        ];
        for raw in raws {
            for ty in types {
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                encode(raw, ty, &mut fast);
                value(raw, ty).encode(&mut slow);
                assert_eq!(fast, slow, "{raw:?} as {ty:?}");
            }
        }
    }

    #[test]
    fn declared_types_map_to_logical_types() {
        for (declared, want) in [
            ("INTEGER", LogicalType::Number),
            ("bigint", LogicalType::Number),
            ("NUMERIC(12,2)", LogicalType::Number),
            ("REAL", LogicalType::Number),
            ("VARCHAR(20)", LogicalType::Text),
            ("TEXT", LogicalType::Text),
            ("BLOB", LogicalType::Bytes),
            ("", LogicalType::Any),
            ("BOOLEAN", LogicalType::Bool),
            ("TIMESTAMPTZ", LogicalType::Timestamp),
            ("DATETIME", LogicalType::Timestamp),
            ("DATE", LogicalType::Date),
            ("UUID", LogicalType::Uuid),
            ("JSONB", LogicalType::Json),
        ] {
            assert_eq!(logical_type(declared), want, "{declared}");
        }
    }
}
