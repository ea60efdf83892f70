//! Logical column types and the canonical encoding of values.
//!
//! Two copies of a dataset may hold the same logical row in different physical forms:
//! `12.50` as a PostgreSQL `numeric(12,2)`, `12.5` as a SQLite REAL, `'12.50'` as text in an
//! untyped SQLite column. The logical type of a column comes from the canonical copy; each
//! store converts what it reads into a [`Value`] of that type, and [`Value::encode`] writes
//! one byte string per logical value. Rules:
//!
//! - NULL is its own tag, distinct from the empty string and from empty bytes.
//! - Numbers (integers, decimals, floats) share one encoding of their exact decimal value
//!   `m * 10^e`, with `m` carrying no trailing zeros (zero is `0 * 10^0`, and `-0` is `0`).
//!   When `m` fits an `i64`, as for every integer and almost every amount, that is 11 fixed
//!   bytes: a tag, `m` and `e` little-endian, written without formatting a single digit.
//!   Wider numbers are their shortest plain decimal text under another tag. A float counts
//!   as its shortest round-trip decimal, so `0.1f64` is `1 * 10^-1`, the same as the text
//!   `'0.10'`. NaN and the infinities are words of their own.
//! - Timestamps are UTC microseconds since the Unix epoch; dates are days since it.
//! - JSON is re-serialised with object keys sorted and no insignificant white space.
//! - Every variable-length payload is length-prefixed, so no two rows share an encoding.

use serde_json::Value as Json;

/// The logical type of a compared column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogicalType {
    /// True or false.
    Bool,
    /// Any exact or approximate number.
    Number,
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
    /// An instant, normalised to UTC microseconds.
    Timestamp,
    /// A calendar date.
    Date,
    /// A uuid.
    Uuid,
    /// A JSON document.
    Json,
    /// No declared type: each value keeps the type it was stored with.
    Any,
}

/// A normalised value, ready to encode.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer; encodes like the equal decimal.
    Int(i64),
    /// A float; encodes like its shortest round-trip decimal.
    Float(f64),
    /// A decimal already in canonical form (see [`canonical_decimal`]).
    Decimal(String),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// UTC microseconds since the epoch.
    Timestamp(i64),
    /// Days since the epoch.
    Date(i32),
    /// A uuid.
    Uuid([u8; 16]),
    /// A JSON document already in canonical form (see [`canonical_json`]).
    Json(String),
}

const TAG_NULL: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_NUMBER: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BYTES: u8 = 4;
const TAG_TIMESTAMP: u8 = 5;
const TAG_DATE: u8 = 6;
const TAG_UUID: u8 = 7;
const TAG_JSON: u8 = 8;
/// A number `m * 10^e` whose `m` fits an `i64`: `m` as 8 bytes, `e` as 2, little-endian.
const TAG_NUMBER_SMALL: u8 = 9;

/// Where encodings are appended: a `Vec<u8>`, or the fixed row buffer of the digest hot
/// path. Every `encode_*` function is generic over it, so both get the same bytes.
pub trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Bytes a [`RowBuf`] holds before a row falls back to a `Vec`.
pub const ROW_BUF_BYTES: usize = 240;

/// A fixed buffer on the stack for encoding one row. Appending checks one bound and copies
/// (fixed-size writes inline to a couple of moves), with no capacity bookkeeping; a row
/// that does not fit reports it through [`RowBuf::as_bytes`] and is encoded again into a
/// `Vec`.
#[derive(Debug)]
pub struct RowBuf {
    buf: [u8; ROW_BUF_BYTES],
    len: usize,
}

impl Default for RowBuf {
    fn default() -> Self {
        RowBuf::new()
    }
}

impl RowBuf {
    /// An empty buffer.
    #[inline]
    pub fn new() -> RowBuf {
        RowBuf {
            buf: [0; ROW_BUF_BYTES],
            len: 0,
        }
    }

    /// The bytes appended, or `None` when they did not fit.
    #[inline]
    pub fn as_bytes(&self) -> Option<&[u8]> {
        self.buf.get(..self.len)
    }
}

impl Sink for RowBuf {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
        }
        // Past the end the length keeps counting, so `as_bytes` reports the overflow.
        self.len = end;
    }
}

impl Value {
    /// Appends the canonical encoding of this value to `buf`.
    #[inline]
    pub fn encode<S: Sink + ?Sized>(&self, buf: &mut S) {
        match self {
            Value::Null => encode_null(buf),
            Value::Bool(b) => encode_bool(*b, buf),
            Value::Int(v) => encode_int(*v, buf),
            Value::Float(f) => encode_float(*f, buf),
            Value::Decimal(s) => encode_decimal_text(s, buf),
            Value::Text(s) => encode_text(s.as_bytes(), buf),
            Value::Bytes(b) => encode_bytes(b, buf),
            Value::Timestamp(us) => encode_timestamp(*us, buf),
            Value::Date(d) => encode_date(*d, buf),
            Value::Uuid(u) => encode_uuid(u, buf),
            Value::Json(s) => push_var(buf, TAG_JSON, s.as_bytes()),
        }
    }

    /// A value of logical type `ty` from its text form, as SQLite stores dynamically typed
    /// values and as PostgreSQL prints any value cast to text. Text that does not parse as
    /// `ty` stays text, so it digests differently from every value of that type.
    pub fn from_text(s: &str, ty: LogicalType) -> Value {
        let parsed = match ty {
            LogicalType::Number => canonical_decimal(s).map(Value::Decimal).or_else(|| match s.trim() {
                "NaN" => Some(Value::Float(f64::NAN)),
                "Infinity" | "inf" => Some(Value::Float(f64::INFINITY)),
                "-Infinity" | "-inf" => Some(Value::Float(f64::NEG_INFINITY)),
                _ => None,
            }),
            LogicalType::Bool => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "t" | "true" | "yes" | "on" => Some(Value::Bool(true)),
                "0" | "f" | "false" | "no" | "off" => Some(Value::Bool(false)),
                _ => None,
            },
            LogicalType::Timestamp => parse_timestamp(s).map(Value::Timestamp),
            LogicalType::Date => parse_date(s).map(Value::Date),
            LogicalType::Uuid => crate::key::parse_uuid(s).map(Value::Uuid),
            LogicalType::Json => return Value::json_or_text(s),
            // PostgreSQL prints bytea as `\x` and hex digits.
            LogicalType::Bytes => s.strip_prefix("\\x").and_then(parse_hex).map(Value::Bytes),
            LogicalType::Text | LogicalType::Any => None,
        };
        parsed.unwrap_or_else(|| Value::Text(s.to_owned()))
    }

    /// The value as text that [`Value::from_text`] reads back as an equal value of the same
    /// logical type, and that SQL databases accept for a column of that type: how repairs
    /// carry values between different kinds of store. `None` for NULL. Timestamps are UTC
    /// with microseconds and an explicit offset; bytes are `\x` and hex, as PostgreSQL
    /// prints `bytea`.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(b) => if *b { "true" } else { "false" }.to_owned(),
            Value::Int(v) => v.to_string(),
            Value::Float(f) if f.is_nan() => "NaN".to_owned(),
            Value::Float(f) if f.is_infinite() => if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned(),
            Value::Float(f) => f.to_string(),
            Value::Decimal(s) | Value::Text(s) | Value::Json(s) => s.clone(),
            Value::Bytes(b) => {
                let mut out = String::with_capacity(2 + 2 * b.len());
                out.push_str("\\x");
                for byte in b {
                    out.push_str(&format!("{byte:02x}"));
                }
                out
            }
            Value::Timestamp(us) => match chrono::DateTime::from_timestamp_micros(*us) {
                Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string(),
                None => us.to_string(),
            },
            Value::Date(days) => match chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::days(i64::from(*days))))
            {
                Some(d) => d.format("%Y-%m-%d").to_string(),
                None => days.to_string(),
            },
            Value::Uuid(u) => crate::key::format_uuid(u),
        })
    }

    /// A number parsed from text, or the text itself when it is not a number: a number that
    /// was stored as text compares equal to the number, and garbage still compares unequal.
    pub fn number_or_text(s: &str) -> Value {
        match canonical_decimal(s) {
            Some(d) => Value::Decimal(d),
            None => Value::Text(s.to_owned()),
        }
    }

    /// A JSON document parsed from text, or the text itself when it is not valid JSON.
    pub fn json_or_text(s: &str) -> Value {
        match canonical_json(s) {
            Some(j) => Value::Json(j),
            None => Value::Text(s.to_owned()),
        }
    }
}

// The `encode_*` functions write what [`Value::encode`] writes for the matching variant,
// without building a value: stores call them on the hot path of a scan.

/// Bytes from hex digits (an even number of them, either case).
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Encodes NULL.
#[inline]
pub fn encode_null<S: Sink + ?Sized>(buf: &mut S) {
    buf.put(&[TAG_NULL]);
}

/// Encodes a boolean.
#[inline]
pub fn encode_bool<S: Sink + ?Sized>(b: bool, buf: &mut S) {
    buf.put(&[TAG_BOOL, b as u8]);
}

/// Encodes text given as its UTF-8 bytes.
#[inline]
pub fn encode_text<S: Sink + ?Sized>(s: &[u8], buf: &mut S) {
    push_var(buf, TAG_TEXT, s);
}

/// Encodes bytes.
#[inline]
pub fn encode_bytes<S: Sink + ?Sized>(b: &[u8], buf: &mut S) {
    push_var(buf, TAG_BYTES, b);
}

/// Encodes a timestamp in UTC microseconds.
#[inline]
pub fn encode_timestamp<S: Sink + ?Sized>(us: i64, buf: &mut S) {
    let mut out = [0u8; 9];
    out[0] = TAG_TIMESTAMP;
    out[1..].copy_from_slice(&us.to_le_bytes());
    buf.put(&out);
}

/// Encodes an integer.
#[inline]
pub fn encode_int<S: Sink + ?Sized>(v: i64, buf: &mut S) {
    let (mut m, mut e) = (v, 0i16);
    // Most integers do not end in zero: one multiply-and-compare, no digit loop.
    while m != 0 && m % 10 == 0 {
        m /= 10;
        e += 1;
    }
    encode_small_number(m, e, buf);
}

/// Encodes `m * 10^e` (`m` without trailing zeros, or zero with `e = 0`) in the fixed form.
#[inline]
fn encode_small_number<S: Sink + ?Sized>(m: i64, e: i16, buf: &mut S) {
    let mut out = [0u8; 11];
    out[0] = TAG_NUMBER_SMALL;
    out[1..9].copy_from_slice(&m.to_le_bytes());
    out[9..11].copy_from_slice(&e.to_le_bytes());
    buf.put(&out);
}

/// Encodes a float.
#[inline]
pub fn encode_float<S: Sink + ?Sized>(f: f64, buf: &mut S) {
    // Integral floats below 2^53 are integers (a cast, not `fract`, which calls libm's trunc).
    if f.abs() < 9.0e15 && (f as i64) as f64 == f {
        encode_int(f as i64, buf);
    } else if let Some((mantissa, scale)) = short_decimal(f) {
        // The smallest scale that round-trips leaves no trailing zero on the mantissa.
        encode_small_number(mantissa, -(scale as i16), buf);
    } else {
        encode_float_slow(f, buf);
    }
}

#[cold]
fn encode_float_slow<S: Sink + ?Sized>(f: f64, buf: &mut S) {
    if f.is_nan() {
        push_var(buf, TAG_NUMBER, b"NaN");
    } else if f.is_infinite() {
        push_var(buf, TAG_NUMBER, if f > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        // Rust's Display prints the shortest decimal that round-trips, with no exponent and
        // no trailing fractional zeros: the canonical decimal text. The longest such output
        // (the smallest subnormal) is under 330 bytes.
        let mut text = [0u8; 400];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        use std::io::Write as _;
        // The buffer is large enough for any finite f64, so the write cannot fail.
        write!(cursor, "{f}").expect("f64 fits in 400 bytes");
        let len = cursor.position() as usize;
        let text = std::str::from_utf8(&text[..len]).expect("Display writes ASCII");
        encode_decimal_text(text, buf);
    }
}

/// Encodes a number given as canonical decimal text (what [`canonical_decimal`] returns, or
/// `NaN`, `Infinity`, `-Infinity`): the fixed form when its significant digits fit an
/// `i64`, else the text itself.
pub fn encode_decimal_text<S: Sink + ?Sized>(s: &str, buf: &mut S) {
    match small_decimal(s.as_bytes()) {
        Some((m, e)) => encode_small_number(m, e, buf),
        None => push_var(buf, TAG_NUMBER, s.as_bytes()),
    }
}

/// Encodes the decimal number `-?0.d1d2d3... * 10^point`: `digits` are ASCII decimal
/// digits and the decimal point falls after `point` of them (negative, or past the end,
/// means leading or trailing zeros). Writes what [`Value::encode`] writes for the same
/// number parsed by [`canonical_decimal`], without allocating when its significant digits
/// fit an `i64`; binary readers (PostgreSQL's base-10000 `numeric`) use it.
pub fn encode_decimal_digits<S: Sink + ?Sized>(negative: bool, digits: &[u8], point: i64, buf: &mut S) {
    let Some(first) = digits.iter().position(|&c| c != b'0') else {
        return encode_small_number(0, 0, buf);
    };
    let last = digits.iter().rposition(|&c| c != b'0').unwrap_or(first);
    let significant = &digits[first..=last];
    // The value is `significant * 10^e`.
    let e = point - (last as i64 + 1);
    if significant.len() <= 19 {
        // 19 digits always fit a u64; whether they fit an i64 is decided as for text.
        let m = significant.iter().fold(0u64, |m, &c| m * 10 + u64::from(c - b'0'));
        let m = if negative {
            0i64.checked_sub_unsigned(m)
        } else {
            i64::try_from(m).ok()
        };
        if let (Some(m), Ok(e)) = (m, i16::try_from(e)) {
            return encode_small_number(m, e, buf);
        }
    }
    // Wide: the canonical text, as `canonical_decimal` writes it.
    let mut text = Vec::with_capacity(significant.len() + 8);
    if negative {
        text.push(b'-');
    }
    let (first, last) = (first as i64, last as i64);
    if point <= first {
        text.extend_from_slice(b"0.");
        text.extend(std::iter::repeat_n(b'0', (first - point) as usize));
        text.extend_from_slice(significant);
    } else {
        for i in first..point.max(last + 1) {
            if i == point {
                text.push(b'.');
            }
            text.push(digits.get(i as usize).copied().unwrap_or(b'0'));
        }
    }
    push_var(buf, TAG_NUMBER, &text);
}

/// Encodes a date as days since the Unix epoch.
#[inline]
pub fn encode_date<S: Sink + ?Sized>(days: i32, buf: &mut S) {
    let mut out = [0u8; 5];
    out[0] = TAG_DATE;
    out[1..].copy_from_slice(&days.to_le_bytes());
    buf.put(&out);
}

/// Encodes a uuid.
#[inline]
pub fn encode_uuid<S: Sink + ?Sized>(u: &[u8; 16], buf: &mut S) {
    let mut out = [0u8; 17];
    out[0] = TAG_UUID;
    out[1..].copy_from_slice(u);
    buf.put(&out);
}

/// `s` (`-`? digits (`.` digits)?) as `m * 10^e` with `m` free of trailing zeros, when `m`
/// fits an `i64` and `e` an `i16`.
fn small_decimal(s: &[u8]) -> Option<(i64, i16)> {
    let (negative, digits) = match s.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, s),
    };
    let mut m: u64 = 0;
    // Zeros seen since the last non-zero digit, not yet multiplied into `m`.
    let mut zeros: u32 = 0;
    let mut frac_digits: i64 = 0;
    let mut seen_point = false;
    let mut any_digit = false;
    for &c in digits {
        match c {
            b'0' => {
                zeros += 1;
                any_digit = true;
            }
            b'1'..=b'9' => {
                if zeros > 0 && m > 0 {
                    m = m.checked_mul(10u64.checked_pow(zeros)?)?;
                }
                m = m.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                zeros = 0;
                any_digit = true;
            }
            b'.' if !seen_point => seen_point = true,
            _ => return None,
        }
        if seen_point && c != b'.' {
            frac_digits += 1;
        }
    }
    if !any_digit {
        return None;
    }
    if m == 0 {
        return Some((0, 0));
    }
    let e = i16::try_from(i64::from(zeros) - frac_digits).ok()?;
    let m = if negative {
        // -2^63 fits although 2^63 does not.
        0i64.checked_sub_unsigned(m)?
    } else {
        i64::try_from(m).ok()?
    };
    Some((m, e))
}

/// Decimal places the fast float path tries before falling back to the formatter.
const SHORT_DECIMAL_PLACES: u32 = 6;
/// Scaled mantissas stay below this, so a float's rounding interval holds at most one
/// decimal of a given scale (its width is under a quarter of `10^-scale`).
const SHORT_DECIMAL_LIMIT: f64 = (1u64 << 50) as f64;

/// The shortest round-trip decimal of `f` as `mantissa * 10^-scale` when it has at most
/// [`SHORT_DECIMAL_PLACES`] decimals, found without the formatter (money and measurements
/// mostly look like this). `m / 10^k == f` holds exactly when the decimal parses back to
/// `f` (the division is correctly rounded), and below [`SHORT_DECIMAL_LIMIT`] only one
/// decimal of a given scale can parse to `f`. So when a `k`-place decimal round-trips, it
/// is the shortest one padded with zeros, and stripping them gives what Display prints;
/// when it does not, no decimal of `k` places or fewer does. Two places are tried first
/// (money: one division), then six.
#[inline]
fn short_decimal(f: f64) -> Option<(i64, u32)> {
    if !f.is_finite() {
        return None;
    }
    let x = f * 1e6;
    if x.abs() >= SHORT_DECIMAL_LIMIT {
        return short_decimal_by_scale(f);
    }
    // Integral floats never get here, so two places round-tripping means one or two.
    let m = round_half_away(f * 100.0);
    if m as f64 / 100.0 == f {
        return Some(if m % 10 == 0 { (m / 10, 1) } else { (m, 2) });
    }
    let m = round_half_away(x);
    if m as f64 / 1e6 != f {
        return None;
    }
    // Three to six places: strip the zeros of the padding.
    let (mut m, mut scale) = (m, SHORT_DECIMAL_PLACES);
    while scale > 3 && m % 10 == 0 {
        m /= 10;
        scale -= 1;
    }
    Some((m, scale))
}

/// [`short_decimal`] for magnitudes whose six-place mantissa would pass the limit: tries
/// each scale from one up, so large amounts with few decimals still avoid the formatter.
#[cold]
fn short_decimal_by_scale(f: f64) -> Option<(i64, u32)> {
    let mut pow = 1.0f64;
    for scale in 1..=SHORT_DECIMAL_PLACES {
        pow *= 10.0;
        let x = f * pow;
        if x.abs() >= SHORT_DECIMAL_LIMIT {
            return None;
        }
        let m = round_half_away(x);
        if m as f64 / pow == f {
            return Some((m, scale));
        }
    }
    None
}

/// `x` rounded half away from zero, for `|x| < 2^50`: there `x ± 0.5` is exact, and unlike
/// `f64::round` the cast needs no libm call on baseline x86-64 (no SSE4.1 `roundsd`).
#[inline]
fn round_half_away(x: f64) -> i64 {
    if x >= 0.0 { (x + 0.5) as i64 } else { (x - 0.5) as i64 }
}

/// Appends `tag`, the payload's length as 4 bytes little-endian, and the payload.
#[inline]
fn push_var<S: Sink + ?Sized>(buf: &mut S, tag: u8, payload: &[u8]) {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.put(&head);
    buf.put(payload);
}

/// The largest decimal exponent expanded into plain digits; beyond it a number is treated
/// as text rather than written out as thousands of zeros.
const MAX_DECIMAL_EXPONENT: i64 = 400;

/// Normalises a decimal number written as text: optional sign, digits with an optional
/// point, optional exponent. Returns `None` when `s` is not such a number.
pub fn canonical_decimal(s: &str) -> Option<String> {
    let s = s.trim();
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    if exponent.abs() > MAX_DECIMAL_EXPONENT {
        return None;
    }
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().chain(frac_part.bytes()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    // All digits, with the decimal point after `point` of them.
    let digits: Vec<u8> = int_part.bytes().chain(frac_part.bytes()).collect();
    let point = int_part.len() as i64 + exponent;
    let first = digits.iter().position(|&c| c != b'0');
    let Some(first) = first else {
        return Some("0".to_owned());
    };
    let last = digits.iter().rposition(|&c| c != b'0').unwrap_or(first);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    let first = first as i64;
    let last = last as i64;
    if point <= first {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (first - point) as usize));
        out.extend(digits[first as usize..=last as usize].iter().map(|&c| c as char));
    } else {
        for i in first..point.max(last + 1) {
            if i == point {
                out.push('.');
            }
            out.push(digits.get(i as usize).map_or('0', |&c| c as char));
        }
    }
    Some(out)
}

/// Parses a timestamp written as text into UTC microseconds since the epoch. Accepts
/// RFC 3339 and the SQL forms `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]]`, with `T` or a space;
/// a timestamp without an offset is taken as UTC. A bare date is midnight UTC.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let s = s.trim();
    if let Some(us) = fast_timestamp(s.as_bytes()) {
        return Some(us);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Some(t.timestamp_micros());
        }
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros())
}

/// The common fixed-width forms, `YYYY-MM-DD[ T]HH:MM:SS[.f{1,9}][Z|+HH[:MM]|-HH[:MM]]`,
/// parsed without allocating; `None` sends anything else to the general parser.
fn fast_timestamp(b: &[u8]) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        let frac = num(start..i)?;
        micros = if digits <= 6 {
            frac * 10i64.pow(6 - digits as u32)
        } else {
            frac / 10i64.pow(digits as u32 - 6)
        };
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let hours = num(i + 1..i + 3)?;
            let minutes = match b.len() - (i + 3) {
                0 => 0,
                3 if b[i + 3] == b':' => num(i + 4..i + 6)?,
                2 => num(i + 3..i + 5)?,
                _ => return None,
            };
            let secs = hours * 3600 + minutes * 60;
            if sign == b'+' { secs } else { -secs }
        }
        Some(_) => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a `YYYY-MM-DD` date into days since the epoch.
pub fn parse_date(s: &str) -> Option<i32> {
    let date = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((date - epoch).num_days()).ok()
}

/// Re-serialises a JSON document with object keys sorted and no insignificant white space.
/// Numbers inside JSON are kept as written; JSON that does not parse gives `None`.
pub fn canonical_json(s: &str) -> Option<String> {
    let value: Json = serde_json::from_str(s).ok()?;
    let mut out = String::with_capacity(s.len());
    write_sorted(&value, &mut out);
    Some(out)
}

fn write_sorted(v: &Json, out: &mut String) {
    match v {
        Json::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Json::String(k.clone()).to_string());
                out.push(':');
                write_sorted(v, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        v.encode(&mut b);
        b
    }

    #[test]
    fn text_forms_read_back_equal() {
        let cases = [
            (Value::Bool(true), LogicalType::Bool),
            (Value::Int(-42), LogicalType::Number),
            (Value::Float(12.25), LogicalType::Number),
            (Value::Float(f64::NEG_INFINITY), LogicalType::Number),
            (Value::Decimal("-0.001".into()), LogicalType::Number),
            (Value::Text("".into()), LogicalType::Text),
            (Value::Bytes(vec![0, 1, 0xfe]), LogicalType::Bytes),
            (Value::Timestamp(-1_234_567), LogicalType::Timestamp),
            (Value::Timestamp(1_700_000_000_123_456), LogicalType::Timestamp),
            (Value::Date(-400), LogicalType::Date),
            (Value::Uuid([7; 16]), LogicalType::Uuid),
            (Value::Json("{\"a\":[1,2]}".into()), LogicalType::Json),
        ];
        for (value, ty) in cases {
            let text = value.to_text().unwrap();
            assert_eq!(enc(&Value::from_text(&text, ty)), enc(&value), "{value:?} as {text:?}");
        }
        assert_eq!(Value::Null.to_text(), None);
    }

    #[test]
    fn decimals_normalise() {
        for (input, want) in [
            ("12.50", "12.5"),
            ("012.5", "12.5"),
            ("-0.00", "0"),
            ("+7", "7"),
            ("1.5e3", "1500"),
            ("1.5E-3", "0.0015"),
            (".5", "0.5"),
            ("5.", "5"),
            ("100", "100"),
            ("0.000", "0"),
            ("-0.010", "-0.01"),
        ] {
            assert_eq!(canonical_decimal(input).as_deref(), Some(want), "input {input}");
        }
        for bad in ["", "-", ".", "1.2.3", "abc", "1e", "1e999999", "12a"] {
            assert_eq!(canonical_decimal(bad), None, "input {bad:?}");
        }
    }

    #[test]
    fn numbers_encode_alike_across_representations() {
        let forms = [
            Value::Int(42),
            Value::Float(42.0),
            Value::number_or_text("42.00"),
            Value::Decimal("42".into()),
        ];
        for f in &forms {
            assert_eq!(enc(f), enc(&forms[0]), "{f:?}");
        }
        assert_eq!(enc(&Value::Float(12.25)), enc(&Value::number_or_text("12.250")));
        assert_eq!(enc(&Value::Float(0.1)), enc(&Value::number_or_text("0.1")));
        assert_eq!(enc(&Value::Float(-0.0)), enc(&Value::Int(0)));
        assert_ne!(enc(&Value::Float(f64::NAN)), enc(&Value::Float(f64::INFINITY)));
    }

    #[test]
    fn small_and_wide_numbers() {
        let small = |m: i64, e: i16| {
            let mut b = vec![TAG_NUMBER_SMALL];
            b.extend_from_slice(&m.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
            b
        };
        assert_eq!(enc(&Value::Int(1500)), small(15, 2));
        assert_eq!(enc(&Value::Int(0)), small(0, 0));
        assert_eq!(enc(&Value::Int(i64::MIN)), small(i64::MIN, 0));
        assert_eq!(enc(&Value::number_or_text("-9223372036854775808")), small(i64::MIN, 0));
        assert_eq!(enc(&Value::number_or_text("0.0015")), small(15, -4));
        assert_eq!(enc(&Value::number_or_text("-12.50")), small(-125, -1));
        assert_eq!(enc(&Value::Float(12.5)), small(125, -1));
        // Trailing zeros do not count against the width: 19 significant digits and 5 zeros.
        assert_eq!(
            enc(&Value::number_or_text("1234567890123456789e5")),
            small(1_234_567_890_123_456_789, 5)
        );
        // One more significant digit, or 2^63, is wide: the text form.
        for wide in ["12345678901234567891", "9223372036854775808", "0.12345678901234567891"] {
            let mut want = vec![TAG_NUMBER];
            want.extend_from_slice(&(wide.len() as u32).to_le_bytes());
            want.extend_from_slice(wide.as_bytes());
            assert_eq!(enc(&Value::number_or_text(wide)), want, "{wide}");
        }
        assert_ne!(enc(&Value::Float(f64::NAN)), enc(&Value::Float(f64::NEG_INFINITY)));
        assert_eq!(
            enc(&Value::Float(1e20)),
            enc(&Value::number_or_text("100000000000000000000"))
        );
        // The binary readers' digit form agrees at the i64 edge.
        for (negative, digits, point) in [
            (true, "9223372036854775808", 19),
            (false, "9223372036854775808", 19),
            (false, "9223372036854775807", 19),
            (false, "000123000", 5),
            (true, "5", -300),
        ] {
            let mut fast = Vec::new();
            encode_decimal_digits(negative, digits.as_bytes(), point, &mut fast);
            let text = format!("{}0.{digits}e{point}", if negative { "-" } else { "" });
            assert_eq!(fast, enc(&Value::number_or_text(&text)), "{text}");
        }
        // Leading zeros never count, however many.
        assert_eq!(enc(&Value::number_or_text("1e-30")), small(1, -30));
        assert_eq!(enc(&Value::Float(1e-30)), small(1, -30));
    }

    #[test]
    fn null_is_not_empty() {
        assert_ne!(enc(&Value::Null), enc(&Value::Text(String::new())));
        assert_ne!(enc(&Value::Null), enc(&Value::Bytes(Vec::new())));
        assert_ne!(enc(&Value::Text(String::new())), enc(&Value::Bytes(Vec::new())));
    }

    #[test]
    fn text_forms_parse_into_their_types() {
        assert_eq!(
            Value::from_text("\\x00ff", LogicalType::Bytes),
            Value::Bytes(vec![0, 255])
        );
        assert_eq!(Value::from_text("\\x0", LogicalType::Bytes), Value::Text("\\x0".into()));
        assert_eq!(Value::from_text("t", LogicalType::Bool), Value::Bool(true));
        assert_eq!(
            enc(&Value::from_text("NaN", LogicalType::Number)),
            enc(&Value::Float(f64::NAN))
        );
        assert_eq!(
            enc(&Value::from_text("1e+100", LogicalType::Number)),
            enc(&Value::Float(1e100))
        );
        assert_eq!(Value::from_text("2024-01-02", LogicalType::Date), Value::Date(19724));
        assert_eq!(
            Value::from_text("soon", LogicalType::Timestamp),
            Value::Text("soon".into())
        );
    }

    #[test]
    fn text_that_is_not_a_number_stays_text() {
        assert_eq!(Value::number_or_text("12 apples"), Value::Text("12 apples".into()));
    }

    #[test]
    fn json_keys_sorted() {
        assert_eq!(
            canonical_json(r#"{ "b": 1, "a": {"d": [1, 2], "c": null} }"#).unwrap(),
            r#"{"a":{"c":null,"d":[1,2]},"b":1}"#
        );
        assert_eq!(canonical_json("{not json"), None);
    }

    #[test]
    fn concatenated_values_cannot_collide() {
        let mut a = Vec::new();
        Value::Text("ab".into()).encode(&mut a);
        Value::Text("c".into()).encode(&mut a);
        let mut b = Vec::new();
        Value::Text("a".into()).encode(&mut b);
        Value::Text("bc".into()).encode(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn timestamps_normalise_to_utc_micros() {
        let want = parse_timestamp("2024-03-01T12:00:00Z").unwrap();
        for form in [
            "2024-03-01 12:00:00",
            "2024-03-01 12:00:00.000000",
            "2024-03-01T13:00:00+01:00",
            "2024-03-01 14:00:00+02",
            "2024-03-01 12:00:00+00:00",
        ] {
            assert_eq!(parse_timestamp(form), Some(want), "{form}");
        }
        assert_eq!(parse_timestamp("2024-03-01 12:00:00.5").unwrap() - want, 500_000);
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_date("1970-01-02"), Some(1));
    }

    proptest! {
        #[test]
        fn short_decimals_encode_as_display_prints_them(cents in -10_000_000_000i64..10_000_000_000, scale in 0u32..8, bits in any::<u64>()) {
            let f = cents as f64 / 10f64.powi(scale as i32);
            let mut fast = Vec::new();
            encode_float(f, &mut fast);
            let display = format!("{f}");
            let mut slow = Vec::new();
            encode_decimal_text(&display, &mut slow);
            prop_assert_eq!(fast, slow, "{}", display);
            let g = f64::from_bits(bits);
            if g.is_finite() && g.fract() != 0.0 {
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                encode_float(g, &mut fast);
                encode_decimal_text(&format!("{g}"), &mut slow);
                prop_assert_eq!(fast, slow, "{}", g);
            }
        }

        #[test]
        fn fast_timestamp_agrees_with_chrono(secs in -62_000_000_000i64..250_000_000_000, micros in 0u32..1_000_000, offset_min in -900i32..900) {
            use chrono::{DateTime, FixedOffset};
            let tz = FixedOffset::east_opt(offset_min * 60).unwrap();
            let t = DateTime::from_timestamp(secs, micros * 1000).unwrap().with_timezone(&tz);
            let text = t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string();
            prop_assert_eq!(fast_timestamp(text.as_bytes()), Some(t.timestamp_micros()), "{}", text);
            let naive = t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string();
            prop_assert_eq!(fast_timestamp(naive.as_bytes()), Some(t.timestamp_micros()), "{}", naive);
        }

        #[test]
        fn integers_encode_like_their_decimal_text(v in any::<i64>()) {
            prop_assert_eq!(enc(&Value::Int(v)), enc(&Value::number_or_text(&v.to_string())));
        }

        #[test]
        fn floats_encode_like_their_decimal_text(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            prop_assert_eq!(enc(&Value::Float(f)), enc(&Value::number_or_text(&format!("{f:e}"))));
        }

        #[test]
        fn decimal_digits_encode_like_canonical_decimal(negative in any::<bool>(), digits in "[0-9]{0,30}", point in -40i64..40) {
            let mut fast = Vec::new();
            encode_decimal_digits(negative, digits.as_bytes(), point, &mut fast);
            let text = format!("{}0{digits}e{}", if negative { "-" } else { "" }, point - digits.len() as i64);
            prop_assert_eq!(fast, enc(&Value::number_or_text(&text)), "{}", text);
        }

        #[test]
        fn canonical_decimal_is_idempotent(int in 0u64..1_000_000, frac in 0u32..10_000, zeros in 0usize..4) {
            let s = format!("{int}.{frac:04}{}", "0".repeat(zeros));
            let once = canonical_decimal(&s).unwrap();
            prop_assert_eq!(canonical_decimal(&once).unwrap(), once);
        }
    }
}
