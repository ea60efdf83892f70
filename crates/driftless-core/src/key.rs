//! Keys: one or more typed parts, held as an order-preserving byte encoding.
//!
//! Comparing two encoded keys with `memcmp` gives the same answer as comparing their parts
//! one by one: integers numerically, text and bytes bytewise (never by locale), uuids by
//! their 16 bytes. That lets every range boundary, every sort and every merge-join work on
//! plain bytes, and it is why SQL stores must order text with a bytewise collation.
//!
//! Encoding of one part: a tag byte, then
//! - integer: the 8 big-endian bytes of the value with its sign bit flipped;
//! - text and bytes: the bytes with every `0x00` written as `0x00 0xFF`, closed by `0x00 0x01`
//!   (so a prefix sorts before every longer string, and no part can bleed into the next);
//! - uuid: its 16 bytes.
//!
//! The tags follow SQLite's ordering of storage classes (integers before text before blobs),
//! so a column that mixes classes still sorts the same in SQLite and here.

use std::fmt;

use serde_json::Value as Json;

const TAG_INT: u8 = 0x10;
const TAG_TEXT: u8 = 0x20;
const TAG_UUID: u8 = 0x28;
const TAG_BYTES: u8 = 0x30;
const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

/// One decoded part of a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPart {
    /// A signed 64-bit integer.
    Int(i64),
    /// Text, compared bytewise as UTF-8.
    Text(String),
    /// A uuid, compared by its 16 bytes.
    Uuid([u8; 16]),
    /// Raw bytes, compared bytewise.
    Bytes(Vec<u8>),
}

/// A key: the order-preserving encoding of its parts.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Vec<u8>);

/// An encoded key that does not decode: a corrupt boundary or a bug, never user input.
#[derive(Debug, thiserror::Error)]
#[error("malformed key encoding at byte {offset}")]
pub struct KeyError {
    offset: usize,
}

impl Key {
    /// Builds a key from its parts.
    pub fn from_parts(parts: &[KeyPart]) -> Key {
        let mut builder = KeyBuilder::default();
        for part in parts {
            match part {
                KeyPart::Int(v) => builder.push_int(*v),
                KeyPart::Text(s) => builder.push_text(s.as_bytes()),
                KeyPart::Uuid(u) => builder.push_uuid(u),
                KeyPart::Bytes(b) => builder.push_bytes(b),
            }
        }
        builder.finish()
    }

    /// A single-part text key, the shape of every object-store key.
    pub fn text(s: &str) -> Key {
        let mut builder = KeyBuilder::default();
        builder.push_text(s.as_bytes());
        builder.finish()
    }

    /// The encoded bytes, ordered as the key is.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Rebuilds a key from bytes produced by [`Key::as_bytes`], checking that they decode.
    pub fn from_encoded(bytes: Vec<u8>) -> Result<Key, KeyError> {
        let key = Key(bytes);
        key.parts()?;
        Ok(key)
    }

    /// Decodes the parts.
    pub fn parts(&self) -> Result<Vec<KeyPart>, KeyError> {
        let b = &self.0;
        let mut parts = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let tag = b[i];
            i += 1;
            match tag {
                TAG_INT => {
                    let raw: [u8; 8] = b
                        .get(i..i + 8)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(KeyError { offset: i })?;
                    parts.push(KeyPart::Int((u64::from_be_bytes(raw) ^ (1 << 63)) as i64));
                    i += 8;
                }
                TAG_UUID => {
                    let raw: [u8; 16] = b
                        .get(i..i + 16)
                        .and_then(|s| s.try_into().ok())
                        .ok_or(KeyError { offset: i })?;
                    parts.push(KeyPart::Uuid(raw));
                    i += 16;
                }
                TAG_TEXT | TAG_BYTES => {
                    let mut out = Vec::new();
                    loop {
                        match (b.get(i), b.get(i + 1)) {
                            (Some(&ESCAPE), Some(&TERMINATOR)) => {
                                i += 2;
                                break;
                            }
                            (Some(&ESCAPE), Some(&ESCAPED_ZERO)) => {
                                out.push(0);
                                i += 2;
                            }
                            (Some(&c), _) if c != ESCAPE => {
                                out.push(c);
                                i += 1;
                            }
                            _ => return Err(KeyError { offset: i }),
                        }
                    }
                    parts.push(if tag == TAG_TEXT {
                        KeyPart::Text(String::from_utf8(out).map_err(|_| KeyError { offset: i })?)
                    } else {
                        KeyPart::Bytes(out)
                    });
                }
                _ => return Err(KeyError { offset: i - 1 }),
            }
        }
        Ok(parts)
    }

    /// The key as JSON, one member per column name, for reports. Bytes are written as
    /// `\x` followed by lower-case hex, the way PostgreSQL prints `bytea`.
    pub fn to_json(&self, columns: &[String]) -> Json {
        let mut map = serde_json::Map::new();
        match self.parts() {
            Ok(parts) => {
                for (i, part) in parts.into_iter().enumerate() {
                    let name = columns.get(i).cloned().unwrap_or_else(|| format!("key{i}"));
                    map.insert(name, part.to_json());
                }
            }
            Err(_) => {
                map.insert("encoded".into(), Json::String(hex(&self.0)));
            }
        }
        Json::Object(map)
    }
}

impl KeyPart {
    /// The part as a JSON value.
    pub fn to_json(&self) -> Json {
        match self {
            KeyPart::Int(v) => Json::from(*v),
            KeyPart::Text(s) => Json::String(s.clone()),
            KeyPart::Uuid(u) => Json::String(format_uuid(u)),
            KeyPart::Bytes(b) => Json::String(format!("\\x{}", hex(b))),
        }
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Int(v) => write!(f, "{v}"),
            KeyPart::Text(s) => write!(f, "{s:?}"),
            KeyPart::Uuid(u) => f.write_str(&format_uuid(u)),
            KeyPart::Bytes(b) => write!(f, "\\x{}", hex(b)),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            Ok(parts) if parts.len() == 1 => write!(f, "{}", parts[0]),
            Ok(parts) => {
                f.write_str("(")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p}")?;
                }
                f.write_str(")")
            }
            Err(_) => write!(f, "<encoded {}>", hex(&self.0)),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// Builds a key part by part without intermediate [`KeyPart`] values; stores use it on the
/// hot path of a scan.
#[derive(Debug, Default)]
pub struct KeyBuilder(Vec<u8>);

impl KeyBuilder {
    /// Appends an integer part.
    pub fn push_int(&mut self, v: i64) {
        self.0.push(TAG_INT);
        self.0.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
    }

    /// Appends a text part given as its UTF-8 bytes.
    pub fn push_text(&mut self, s: &[u8]) {
        self.0.push(TAG_TEXT);
        self.push_escaped(s);
    }

    /// Appends a bytes part.
    pub fn push_bytes(&mut self, b: &[u8]) {
        self.0.push(TAG_BYTES);
        self.push_escaped(b);
    }

    /// Appends a uuid part.
    pub fn push_uuid(&mut self, u: &[u8; 16]) {
        self.0.push(TAG_UUID);
        self.0.extend_from_slice(u);
    }

    fn push_escaped(&mut self, s: &[u8]) {
        self.0.reserve(s.len() + 2);
        for &c in s {
            if c == ESCAPE {
                self.0.extend_from_slice(&[ESCAPE, ESCAPED_ZERO]);
            } else {
                self.0.push(c);
            }
        }
        self.0.extend_from_slice(&[ESCAPE, TERMINATOR]);
    }

    /// The finished key.
    pub fn finish(self) -> Key {
        Key(self.0)
    }
}

/// Formats 16 bytes as a lower-case hyphenated uuid.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses a hyphenated or plain 32-digit hex uuid, in either case.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if digits.len() != 32 || !matches!(s.len(), 32 | 36) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for byte in b {
        // Writing to a String cannot fail.
        write!(s, "{byte:02x}").unwrap();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part() -> impl Strategy<Value = KeyPart> {
        prop_oneof![
            any::<i64>().prop_map(KeyPart::Int),
            ".{0,8}".prop_map(KeyPart::Text),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(KeyPart::Bytes),
            any::<[u8; 16]>().prop_map(KeyPart::Uuid),
        ]
    }

    proptest! {
        #[test]
        fn encoding_round_trips(parts in proptest::collection::vec(part(), 1..4)) {
            let key = Key::from_parts(&parts);
            prop_assert_eq!(key.parts().unwrap(), parts);
        }

        #[test]
        fn encoding_preserves_order(a in proptest::collection::vec(part(), 2), b in proptest::collection::vec(part(), 2)) {
            prop_assert_eq!(Key::from_parts(&a).cmp(&Key::from_parts(&b)), a.cmp(&b));
        }
    }

    #[test]
    fn text_orders_bytewise_not_by_locale() {
        let mut words = ["a", "B", "ä", "Z", "", " ", "a b", "a\0b", "ab"];
        words.sort_by_key(|w| Key::text(w));
        assert_eq!(words, ["", " ", "B", "Z", "a", "a\0b", "a b", "ab", "ä"]);
    }

    #[test]
    fn uuid_text_round_trips() {
        let u = parse_uuid("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap();
        assert_eq!(format_uuid(&u), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(parse_uuid("not-a-uuid").is_none());
    }
}
