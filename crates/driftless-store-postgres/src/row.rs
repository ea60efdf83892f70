//! One row's key and digest from its binary fields, wherever the fields come from (a
//! binary COPY tuple or a sqlx row in the binary result format).

use driftless_core::key::KeyBuilder;
use driftless_core::value::{RowBuf, Sink as _};
use driftless_core::{Digest, Key, RowHasher};
use driftless_store::Schema;
use sqlx::postgres::PgRow;
use sqlx::{Row as _, ValueRef as _};

use crate::sql::key_expr;
use crate::sql::{KeyKind, key_kind};
use crate::wire::{ColumnPlan, Decode, Physical, Scratch, encode_value, push_key};

/// The binary fields of one row, keys first, then compared values; `None` is NULL.
pub trait Fields {
    /// Field `i`.
    fn field(&self, i: usize) -> Result<Option<&[u8]>, String>;
}

impl Fields for PgRow {
    fn field(&self, i: usize) -> Result<Option<&[u8]>, String> {
        let value = self.try_get_raw(i).map_err(|e| e.to_string())?;
        if value.is_null() {
            return Ok(None);
        }
        value.as_bytes().map(Some).map_err(|e| e.to_string())
    }
}

/// Reads a row's key from its first fields.
#[derive(Clone, Debug)]
pub struct KeyReader {
    kinds: Vec<KeyKind>,
    names: Vec<String>,
}

impl KeyReader {
    /// A reader of `schema`'s key columns, selected with [`key_expr`].
    pub fn new(schema: &Schema) -> KeyReader {
        KeyReader {
            kinds: schema.key.iter().map(|c| key_kind(c.ty)).collect(),
            names: schema.key.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// Fields the key takes.
    pub fn width(&self) -> usize {
        self.kinds.len()
    }

    /// Whether the key is one integer column, which [`int_key`] encodes.
    pub fn is_single_int(&self) -> bool {
        self.kinds == [KeyKind::Int]
    }

    /// The row's key.
    #[inline]
    pub fn read(&self, row: &impl Fields) -> Result<Key, String> {
        let mut key = KeyBuilder::default();
        for (i, (kind, name)) in self.kinds.iter().zip(&self.names).enumerate() {
            push_key(&mut key, *kind, row.field(i)?).map_err(|e| format!("key column {name:?}: {e}"))?;
        }
        Ok(key.finish())
    }
}

/// Tag and width of an integer key part in `driftless_core::key`'s encoding.
const INT_KEY_TAG: u8 = 0x10;
pub const INT_KEY_BYTES: usize = 9;

/// The encoded key of a single integer, as [`KeyBuilder::push_int`] writes it (a tag, then
/// the big-endian value with its sign bit flipped), on the stack: whole-copy scans of
/// integer keys build no `Key` per row. [`int_key_agrees`] checks the two agree.
#[inline]
pub fn int_key(v: i64) -> [u8; INT_KEY_BYTES] {
    let mut out = [0u8; INT_KEY_BYTES];
    out[0] = INT_KEY_TAG;
    out[1..].copy_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
    out
}

/// Whether [`int_key`] still writes what the core's key encoding writes.
pub fn int_key_agrees() -> bool {
    [0, 1, -1, 42, i64::MIN, i64::MAX].into_iter().all(|v| {
        let mut key = KeyBuilder::default();
        key.push_int(v);
        key.finish().as_bytes() == int_key(v)
    })
}

/// What a scan selects from one copy, and how it decodes each field.
#[derive(Clone, Debug)]
pub struct RowPlan {
    keys: KeyReader,
    values: Vec<Decode>,
    names: Vec<String>,
    /// The select list: key columns, then compared columns.
    pub select: String,
}

impl RowPlan {
    /// The plan for `schema` on a copy whose compared columns have the physical types
    /// `physical` (as `format_type` prints them), in schema order.
    pub fn new(schema: &Schema, physical: &[&str]) -> RowPlan {
        let keys = KeyReader::new(schema);
        let values: Vec<ColumnPlan> = schema
            .values
            .iter()
            .zip(physical)
            .map(|(c, ty)| ColumnPlan::for_value(&c.name, Physical::of(ty), c.ty))
            .collect();
        let select = schema
            .key
            .iter()
            .zip(&keys.kinds)
            .map(|(c, kind)| key_expr(&c.name, *kind))
            .chain(values.iter().map(|v| v.expr.clone()))
            .collect::<Vec<_>>()
            .join(", ");
        RowPlan {
            keys,
            values: values.iter().map(|v| v.decode).collect(),
            names: schema.values.iter().map(|c| c.name.clone()).collect(),
            select,
        }
    }

    /// How keys are read.
    pub fn keys(&self) -> &KeyReader {
        &self.keys
    }

    /// Fields a row has.
    pub fn width(&self) -> usize {
        self.keys.width() + self.values.len()
    }
}

/// Digests rows of one plan; owns the scratch buffers it reuses from row to row.
#[derive(Debug)]
pub struct RowDigester {
    plan: RowPlan,
    hasher: RowHasher,
    scratch: Scratch,
    /// Rows too long for the stack buffer are encoded again here.
    spill: Vec<u8>,
}

impl RowDigester {
    /// A digester for rows selected by `plan`.
    pub fn new(plan: RowPlan, hasher: RowHasher) -> RowDigester {
        RowDigester {
            plan,
            hasher,
            scratch: Scratch::default(),
            spill: Vec::new(),
        }
    }

    /// The row's key.
    #[inline]
    pub fn key(&self, row: &impl Fields) -> Result<Key, String> {
        self.plan.keys.read(row)
    }

    /// The row's digest, given its key's bytes.
    #[inline]
    pub fn digest(&mut self, key: &[u8], row: &impl Fields) -> Result<Digest, String> {
        let mut buf = RowBuf::new();
        buf.put(key);
        self.encode_values(row, &mut buf)?;
        if let Some(encoded) = buf.as_bytes() {
            return Ok(self.hasher.digest_encoded(encoded, key.len()));
        }
        let mut spill = std::mem::take(&mut self.spill);
        spill.clear();
        spill.extend_from_slice(key);
        let encoded = self.encode_values(row, &mut spill);
        let digest = encoded.map(|()| self.hasher.digest_encoded(&spill, key.len()));
        self.spill = spill;
        digest
    }

    #[inline]
    fn encode_values<S: driftless_core::value::Sink + ?Sized>(
        &mut self,
        row: &impl Fields,
        buf: &mut S,
    ) -> Result<(), String> {
        let first = self.plan.keys.width();
        for (i, decode) in self.plan.values.iter().enumerate() {
            encode_value(*decode, row.field(first + i)?, &mut self.scratch, buf)
                .map_err(|e| format!("compared column {:?}: {e}", self.plan.names[i]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_encode_as_the_core_encodes_them() {
        assert!(int_key_agrees());
    }
}
