//! Values in PostgreSQL's binary wire format, encoded as the text path would encode them.
//!
//! Scans read every column in binary (`COPY ... (FORMAT binary)` for whole copies, sqlx's
//! binary result format for ranges) and write each value's canonical encoding straight into
//! the row buffer, with no `String` or [`Value`] per value. The result must be byte for byte
//! what reading the value's text form (`::text` under the session settings) and
//! [`Value::from_text`] gives, since that is how a SQLite copy of the same row is read. So:
//!
//! - A column is read natively only when its type is one whose binary form is decoded here
//!   *and* the canonical copy gave it the same logical type ([`ColumnPlan::for_value`]).
//!   Every other column is selected as `::text` and goes through [`Value::from_text`], the
//!   text path itself.
//! - Where the text form of a value does not parse as its type (infinite timestamps and dates,
//!   years outside 1..=9999), the decoder writes the text PostgreSQL would print and
//!   normalises that, so even those values encode as they do in the text path.

use driftless_core::key::KeyBuilder;
use driftless_core::value::{
    Sink, encode_bool, encode_bytes, encode_date, encode_decimal_digits, encode_int, encode_null, encode_text,
    encode_timestamp, encode_uuid,
};
use driftless_core::{LogicalType, Value};

use crate::sql::{KeyKind, ident};

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;
/// PostgreSQL's `infinity` and `-infinity` timestamps.
const TIMESTAMP_INFINITY: i64 = i64::MAX;
const TIMESTAMP_NEG_INFINITY: i64 = i64::MIN;
/// PostgreSQL's `infinity` and `-infinity` dates.
const DATE_INFINITY: i32 = i32::MAX;
const DATE_NEG_INFINITY: i32 = i32::MIN;
/// Sign words of the binary `numeric` form.
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// The version byte that starts a binary `jsonb` value.
const JSONB_VERSION: u8 = 1;

/// A PostgreSQL column type as `format_type` prints it, as far as decoding cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Physical {
    /// `smallint`, `integer`, `bigint`.
    Int,
    /// `numeric` with or without a typmod.
    Numeric,
    /// `real`.
    Float4,
    /// `double precision`.
    Float8,
    /// `boolean`.
    Bool,
    /// `text` and `character varying`: the binary form is the text itself.
    Text,
    /// `bytea`.
    Bytes,
    /// `uuid`.
    Uuid,
    /// `timestamp with time zone` (`true`) or without (`false`).
    Timestamp(bool),
    /// `date`.
    Date,
    /// `json` (`false`) or `jsonb` (`true`).
    Json(bool),
    /// Anything else: read as its text form.
    Other,
}

impl Physical {
    /// The physical kind of a type as `format_type` prints it.
    pub fn of(pg_type: &str) -> Physical {
        let t = pg_type.to_ascii_lowercase();
        let has_typmod_only = |name: &str| t == name || (t.starts_with(name) && t[name.len()..].starts_with('('));
        if t.ends_with(']') {
            // Arrays of any type are read as their text form.
            return Physical::Other;
        }
        match t.as_str() {
            "smallint" | "integer" | "bigint" => Physical::Int,
            "real" => Physical::Float4,
            "double precision" => Physical::Float8,
            "boolean" => Physical::Bool,
            "text" => Physical::Text,
            "bytea" => Physical::Bytes,
            "uuid" => Physical::Uuid,
            "date" => Physical::Date,
            "json" => Physical::Json(false),
            "jsonb" => Physical::Json(true),
            _ if has_typmod_only("numeric") => Physical::Numeric,
            _ if has_typmod_only("character varying") => Physical::Text,
            // `timestamp`, `timestamp(3)`, each with or without time zone.
            _ if t.starts_with("timestamp") => Physical::Timestamp(t.ends_with("with time zone")),
            _ => Physical::Other,
        }
    }

    /// The logical type this physical type decodes to natively, if it does.
    fn native_logical(self) -> Option<LogicalType> {
        Some(match self {
            Physical::Int | Physical::Numeric | Physical::Float4 | Physical::Float8 => LogicalType::Number,
            Physical::Bool => LogicalType::Bool,
            Physical::Text => LogicalType::Text,
            Physical::Bytes => LogicalType::Bytes,
            Physical::Uuid => LogicalType::Uuid,
            Physical::Timestamp(_) => LogicalType::Timestamp,
            Physical::Date => LogicalType::Date,
            Physical::Json(_) => LogicalType::Json,
            Physical::Other => return None,
        })
    }
}

/// How one compared column is selected and decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// A native binary form.
    Native(Physical),
    /// The text form (`::text`), normalised by [`Value::from_text`] into the logical type.
    FromText(LogicalType),
}

/// One selected column: its SQL expression and how its binary value is decoded.
#[derive(Clone, Debug)]
pub struct ColumnPlan {
    /// The select-list expression.
    pub expr: String,
    /// The decoder of its binary value.
    pub decode: Decode,
}

impl ColumnPlan {
    /// A compared column of physical type `physical` whose canonical logical type is `ty`.
    pub fn for_value(name: &str, physical: Physical, ty: LogicalType) -> ColumnPlan {
        if physical.native_logical() == Some(ty) {
            ColumnPlan {
                expr: ident(name),
                decode: Decode::Native(physical),
            }
        } else {
            ColumnPlan {
                expr: format!("{}::text", ident(name)),
                decode: Decode::FromText(ty),
            }
        }
    }
}

/// Appends one key column's binary value to `key`.
pub fn push_key(key: &mut KeyBuilder, kind: KeyKind, raw: Option<&[u8]>) -> Result<(), String> {
    let raw = raw.ok_or("NULL in a key column")?;
    match kind {
        KeyKind::Int => key.push_int(int(raw)?),
        KeyKind::Text => key.push_text(raw),
        KeyKind::Uuid => key.push_uuid(&raw.try_into().map_err(|_| "a uuid is not 16 bytes")?),
        KeyKind::Bytes => key.push_bytes(raw),
    }
    Ok(())
}

/// Scratch space a decoder reuses from row to row.
#[derive(Debug, Default)]
pub struct Scratch {
    /// ASCII digits of a `numeric`.
    digits: Vec<u8>,
}

/// Appends the canonical encoding of one compared value (`None` is NULL).
#[inline]
pub fn encode_value<S: Sink + ?Sized>(
    decode: Decode,
    raw: Option<&[u8]>,
    scratch: &mut Scratch,
    buf: &mut S,
) -> Result<(), String> {
    let Some(raw) = raw else {
        encode_null(buf);
        return Ok(());
    };
    match decode {
        Decode::Native(Physical::Int) => encode_int(int(raw)?, buf),
        Decode::Native(Physical::Numeric) => encode_numeric(raw, scratch, buf)?,
        Decode::Native(Physical::Float8) => Value::Float(f64::from_be_bytes(fixed(raw)?)).encode(buf),
        Decode::Native(Physical::Float4) => {
            // The text form of a `real` is its shortest round-trip decimal as an f32, which is
            // what Rust prints for the f32; widening to f64 first would add digits.
            let text = f32::from_be_bytes(fixed(raw)?).to_string();
            Value::from_text(&text, LogicalType::Number).encode(buf);
        }
        Decode::Native(Physical::Bool) => encode_bool(fixed::<1>(raw)?[0] != 0, buf),
        Decode::Native(Physical::Text) => encode_text(raw, buf),
        Decode::Native(Physical::Bytes) => encode_bytes(raw, buf),
        Decode::Native(Physical::Uuid) => encode_uuid(&fixed(raw)?, buf),
        Decode::Native(Physical::Timestamp(tz)) => encode_pg_timestamp(i64::from_be_bytes(fixed(raw)?), tz, buf),
        Decode::Native(Physical::Date) => encode_pg_date(i32::from_be_bytes(fixed(raw)?), buf),
        Decode::Native(Physical::Json(jsonb)) => {
            let body = match (jsonb, raw.split_first()) {
                (false, _) => raw,
                (true, Some((&JSONB_VERSION, body))) => body,
                (true, _) => return Err("unknown jsonb version".into()),
            };
            Value::json_or_text(utf8(body)?).encode(buf);
        }
        Decode::Native(Physical::Other) => return Err("no binary decoder for this type".into()),
        Decode::FromText(ty) => Value::from_text(utf8(raw)?, ty).encode(buf),
    }
    Ok(())
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("a {N}-byte value has {} bytes", raw.len()))
}

fn utf8(raw: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(raw).map_err(|_| "text is not UTF-8".to_owned())
}

/// A binary `smallint`, `integer` or `bigint`, told apart by width.
#[inline]
pub fn int(raw: &[u8]) -> Result<i64, String> {
    Ok(match raw.len() {
        8 => i64::from_be_bytes(fixed(raw)?),
        4 => i64::from(i32::from_be_bytes(fixed(raw)?)),
        2 => i64::from(i16::from_be_bytes(fixed(raw)?)),
        n => return Err(format!("an integer of {n} bytes")),
    })
}

/// A binary `numeric`: digit count, weight, sign and display scale (16 bits each), then
/// base-10000 digits, the first worth `10000^weight`. Its text form prints exactly `dscale`
/// decimals, so digits past them are cut, as the text form cuts them.
fn encode_numeric<S: Sink + ?Sized>(raw: &[u8], scratch: &mut Scratch, buf: &mut S) -> Result<(), String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".to_owned())
    };
    let (ndigits, weight, sign, dscale) = (word(0)? as i16, word(1)? as i16, word(2)?, word(3)?);
    // The text forms `NaN`, `Infinity` and `-Infinity` read as these floats.
    let special = match sign {
        NUMERIC_NAN => Some(f64::NAN),
        NUMERIC_PINF => Some(f64::INFINITY),
        NUMERIC_NINF => Some(f64::NEG_INFINITY),
        _ => None,
    };
    if let Some(f) = special {
        Value::Float(f).encode(buf);
        return Ok(());
    }
    let digits = &mut scratch.digits;
    digits.clear();
    for i in 0..usize::try_from(ndigits).map_err(|_| "negative numeric digit count")? {
        let d = word(4 + i)?;
        if d > 9999 {
            return Err(format!("numeric digit {d} out of range"));
        }
        digits.extend_from_slice(&[
            b'0' + (d / 1000) as u8,
            b'0' + (d / 100 % 10) as u8,
            b'0' + (d / 10 % 10) as u8,
            b'0' + (d % 10) as u8,
        ]);
    }
    let point = (i64::from(weight) + 1) * 4;
    let keep = (point + i64::from(dscale)).clamp(0, digits.len() as i64) as usize;
    encode_decimal_digits(sign == NUMERIC_NEG, &digits[..keep], point, buf);
    Ok(())
}

/// A timestamp in microseconds since 2000-01-01. Years 1 to 9999 have the text form the
/// timestamp parser reads back exactly; others are normalised from their text form.
#[inline]
fn encode_pg_timestamp<S: Sink + ?Sized>(pg_micros: i64, tz: bool, buf: &mut S) {
    if (ymd_micros(1, 1, 1)..ymd_micros(10_000, 1, 1)).contains(&pg_micros) {
        encode_timestamp(pg_micros + PG_EPOCH_MICROS, buf);
    } else {
        Value::from_text(&timestamp_text(pg_micros, tz), LogicalType::Timestamp).encode(buf);
    }
}

/// A date in days since 2000-01-01, like [`encode_pg_timestamp`].
#[inline]
fn encode_pg_date<S: Sink + ?Sized>(pg_days: i32, buf: &mut S) {
    let days = i64::from(pg_days);
    if (days_from_civil(1, 1, 1)..days_from_civil(10_000, 1, 1)).contains(&days) {
        encode_date(pg_days + PG_EPOCH_DAYS, buf);
    } else {
        Value::from_text(&date_text(pg_days), LogicalType::Date).encode(buf);
    }
}

/// Microseconds since 2000-01-01 of midnight on a date.
const fn ymd_micros(year: i64, month: i64, day: i64) -> i64 {
    days_from_civil(year, month, day) * DAY_MICROS
}

/// Days since 2000-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm, with
/// year 0 being 1 BC).
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - PG_EPOCH_DAYS as i64
}

/// The proleptic Gregorian `(year, month, day)` of a day count since 2000-01-01.
fn civil_from_days(pg_days: i64) -> (i64, i64, i64) {
    let z = pg_days + PG_EPOCH_DAYS as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DD` as PostgreSQL prints a date (ISO style): at least four year digits, and
/// ` BC` after years before 1 AD.
fn ymd_text(pg_days: i64) -> (String, &'static str) {
    let (year, month, day) = civil_from_days(pg_days);
    let (year, era) = if year <= 0 { (1 - year, " BC") } else { (year, "") };
    (format!("{year:04}-{month:02}-{day:02}"), era)
}

/// The text form of a timestamp under `DateStyle = ISO` and `TimeZone = UTC`.
fn timestamp_text(pg_micros: i64, tz: bool) -> String {
    match pg_micros {
        TIMESTAMP_INFINITY => return "infinity".into(),
        TIMESTAMP_NEG_INFINITY => return "-infinity".into(),
        _ => {}
    }
    let (days, in_day) = (pg_micros.div_euclid(DAY_MICROS), pg_micros.rem_euclid(DAY_MICROS));
    let (date, era) = ymd_text(days);
    let secs = in_day / 1_000_000;
    let mut text = format!("{date} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let micros = in_day % 1_000_000;
    if micros != 0 {
        let fraction = format!("{micros:06}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    if tz {
        text.push_str("+00");
    }
    text.push_str(era);
    text
}

/// The text form of a date under `DateStyle = ISO`.
fn date_text(pg_days: i32) -> String {
    match pg_days {
        DATE_INFINITY => "infinity".into(),
        DATE_NEG_INFINITY => "-infinity".into(),
        _ => {
            let (date, era) = ymd_text(i64::from(pg_days));
            date + era
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_path(text: &str, ty: LogicalType) -> Vec<u8> {
        let mut b = Vec::new();
        Value::from_text(text, ty).encode(&mut b);
        b
    }

    fn binary(decode: Decode, raw: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode_value(decode, Some(raw), &mut Scratch::default(), &mut b).unwrap();
        b
    }

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut raw = Vec::new();
        for w in [ndigits as u16, weight as u16, sign, dscale]
            .into_iter()
            .chain(digits.iter().copied())
        {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        raw
    }

    #[test]
    fn physical_types_from_format_type() {
        assert_eq!(Physical::of("numeric(12,2)"), Physical::Numeric);
        assert_eq!(Physical::of("numeric"), Physical::Numeric);
        assert_eq!(Physical::of("numeric(12,2)[]"), Physical::Other);
        assert_eq!(Physical::of("character varying(20)"), Physical::Text);
        assert_eq!(Physical::of("character(3)"), Physical::Other);
        assert_eq!(Physical::of("timestamp(3) with time zone"), Physical::Timestamp(true));
        assert_eq!(Physical::of("timestamp without time zone"), Physical::Timestamp(false));
        assert_eq!(Physical::of("timestamp with time zone[]"), Physical::Other);
        assert_eq!(Physical::of("integer[]"), Physical::Other);
    }

    #[test]
    fn numerics_encode_as_their_text() {
        let n = Decode::Native(Physical::Numeric);
        // 12.50: weight 0, digits 12 and 5000, two decimals shown.
        assert_eq!(
            binary(n, &numeric(2, 0, 0, 2, &[12, 5000])),
            text_path("12.50", LogicalType::Number)
        );
        assert_eq!(
            binary(n, &numeric(1, -1, NUMERIC_NEG, 4, &[1])),
            text_path("-0.0001", LogicalType::Number)
        );
        assert_eq!(
            binary(n, &numeric(0, 0, 0, 3, &[])),
            text_path("0.000", LogicalType::Number)
        );
        assert_eq!(
            binary(n, &numeric(1, 5, 0, 0, &[12])),
            text_path(&format!("12{}", "0".repeat(20)), LogicalType::Number)
        );
        // Digits past the display scale are not part of the text form.
        assert_eq!(
            binary(n, &numeric(2, 0, 0, 1, &[3, 1415])),
            text_path("3.1", LogicalType::Number)
        );
        for (sign, text) in [
            (NUMERIC_NAN, "NaN"),
            (NUMERIC_PINF, "Infinity"),
            (NUMERIC_NINF, "-Infinity"),
        ] {
            assert_eq!(
                binary(n, &numeric(0, 0, sign, 0, &[])),
                text_path(text, LogicalType::Number)
            );
        }
    }

    #[test]
    fn timestamps_outside_four_digit_years_go_through_their_text() {
        let day = DAY_MICROS;
        assert_eq!(timestamp_text(0, true), "2000-01-01 00:00:00+00");
        assert_eq!(timestamp_text(-1, false), "1999-12-31 23:59:59.999999");
        assert_eq!(timestamp_text(day / 2 + 500_000, true), "2000-01-01 12:00:00.5+00");
        assert_eq!(timestamp_text(ymd_micros(0, 3, 15), true), "0001-03-15 00:00:00+00 BC");
        assert_eq!(
            timestamp_text(ymd_micros(-43, 3, 15) + 1, false),
            "0044-03-15 00:00:00.000001 BC"
        );
        assert_eq!(
            timestamp_text(ymd_micros(12_345, 6, 7), true),
            "12345-06-07 00:00:00+00"
        );
        assert_eq!(date_text(i32::MAX), "infinity");
        assert_eq!(date_text(days_from_civil(-4712, 1, 1) as i32), "4713-01-01 BC");
        for (y, m, d) in [(1970, 1, 1), (2024, 2, 29), (1, 1, 1), (9999, 12, 31), (1600, 3, 1)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        let ts = Decode::Native(Physical::Timestamp(true));
        let at = |micros: i64| binary(ts, &micros.to_be_bytes());
        assert_eq!(at(0), text_path("2000-01-01 00:00:00+00", LogicalType::Timestamp));
        assert_eq!(at(i64::MAX), text_path("infinity", LogicalType::Timestamp));
        assert_eq!(
            at(ymd_micros(0, 1, 1)),
            text_path("0001-01-01 00:00:00+00 BC", LogicalType::Timestamp)
        );
    }
}
