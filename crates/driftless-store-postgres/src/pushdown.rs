//! Push-down: every leaf aggregate of a copy computed inside the server by one grouped query.
//!
//! Each row hashes to 64 bits: every column (key and compared) goes through its type's own
//! extended hash function with a seed of its position, so swapping two columns' values
//! changes the row hash, and the column hashes are combined with XOR. NULL is a constant of
//! its own per position, so NULL and `''` differ. Per leaf the server returns the row count
//! and the sum of row hashes, which is additive like the row-digest aggregates (never a XOR
//! across rows, which would let duplicate rows cancel out).
//!
//! What equal hashes mean: values that PostgreSQL's hash opclass calls equal hash equal
//! (`12.5` and `12.50`, `integer` 7 and `bigint` 7, `-0.0` and `0.0`), as the row digests call
//! them equal. Where the opclass is coarser than the row digests, the text form is hashed
//! instead: `jsonb` (whose opclass equates `1` and `1.0`), text under any collation (always
//! hashed `COLLATE "C"`, so a case-insensitive collation cannot hide a change of case). A
//! changed row goes unseen only if its 64-bit hash collides, about once in 1.8e19 changed
//! rows. Two copies whose column types differ may hash equal rows differently; that is a
//! false alarm, which costs a re-read of the leaf as row digests, never a wrong report.
//!
//! Leaves: `width_bucket(key, thresholds)` counts the boundaries at or below the key, which
//! is exactly `Boundaries::leaf_of`, provided the server compares keys as the encoded bytes
//! compare. Single integer keys use `int8[]` thresholds and uuid keys `uuid[]` (both compared
//! by value, as encoded); text keys `text[]` compared `COLLATE "C"`, and composite keys the
//! key's order-preserving encoding built in SQL as `bytea`. Thresholds of a variable-length
//! type are looked up in two levels (about the square root of the leaf count each), because
//! `width_bucket` walks a variable-length array from its start on every probe.

use driftless_core::key::format_uuid;
use driftless_core::{Aggregate, Boundaries, KeyPart, KeyRange};
use driftless_store::Schema;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::sql::{Bind, KeyKind, ident, key_binds, key_exprs, key_kind, placeholders};
use crate::wire::Physical;

/// The push-down digest kind; both copies must report it to be compared.
pub const KIND: &str = "postgres-hash64-v2";
/// Seed of the first column's hash; column `i` uses `SEED_BASE + i`.
const SEED_BASE: i64 = 0x5eed_d1f7_0000;
/// Hash of NULL in the first column; column `i` uses `NULL_BASE + i`.
const NULL_BASE: i64 = 0x6e75_6c6c_0000;

/// `work_mem` of the grouped query: a base, plus some per leaf.
const WORK_MEM_BASE_KIB: usize = 16 * 1024;
const WORK_MEM_PER_LEAF_KIB: usize = 2;

/// A column of this copy as push-down hashes it.
#[derive(Debug, Clone)]
pub struct HashedColumn<'a> {
    /// The column's name.
    pub name: &'a str,
    /// Its type as `format_type` prints it.
    pub pg_type: &'a str,
    /// Whether it is declared `NOT NULL`.
    pub not_null: bool,
}

/// The leaf expression's thresholds, bound as parameters.
#[derive(Debug)]
pub enum Thresholds {
    /// `$1::int8[]`.
    Int(Vec<i64>),
    /// `$1::text[]`, cast to `uuid[]` once.
    Uuid(Vec<String>),
    /// Two levels of text: `$1` the first-level thresholds, `$2`/`$3` the groups and
    /// thresholds of the second level.
    Text(Vec<String>, Vec<i32>, Vec<String>),
    /// Two levels of encoded keys, as for text.
    Bytes(Vec<Vec<u8>>, Vec<i32>, Vec<Vec<u8>>),
}

impl Thresholds {
    /// How many parameters they take: `$1`, or `$1` to `$3`.
    pub fn params(&self) -> usize {
        match self {
            Thresholds::Int(_) | Thresholds::Uuid(_) => 1,
            Thresholds::Text(..) | Thresholds::Bytes(..) => 3,
        }
    }

    /// Binds the thresholds to the query.
    pub fn bind_to(self, query: Query<'_, Postgres, PgArguments>) -> Query<'_, Postgres, PgArguments> {
        match self {
            Thresholds::Int(v) => query.bind(v),
            Thresholds::Uuid(v) => query.bind(v),
            Thresholds::Text(coarse, groups, fine) => query.bind(coarse).bind(groups).bind(fine),
            Thresholds::Bytes(coarse, groups, fine) => query.bind(coarse).bind(groups).bind(fine),
        }
    }
}

/// Whether a single key column of this kind has its thresholds bound as one array of its
/// own type (`$1`); text and composite keys bind two levels (`$1` to `$3`).
fn one_level(kind: KeyKind) -> bool {
    matches!(kind, KeyKind::Int | KeyKind::Uuid)
}

/// How many parameters [`query`]'s thresholds take for this schema's keys: range bounds
/// bound after them are numbered from the next.
pub fn threshold_params(schema: &Schema) -> usize {
    match schema.key.as_slice() {
        [only] if one_level(key_kind(only.ty)) => 1,
        _ => 3,
    }
}

/// The rows of `range` of `table`, as the grouped query's table: a sub-select whose bounds
/// are parameters numbered from `first`, with their values.
pub fn range_table(
    table: &str,
    schema: &Schema,
    range: &KeyRange,
    first: usize,
) -> Result<(String, Vec<Bind>), String> {
    let keys = key_exprs(schema).join(", ");
    let mut binds = Vec::new();
    let mut clauses = Vec::new();
    for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
        if let Some(k) = bound {
            clauses.push(format!("({keys}) {op} ({})", placeholders(schema, first + binds.len())));
            binds.extend(key_binds(k)?);
        }
    }
    if clauses.is_empty() {
        return Ok((table.to_owned(), binds));
    }
    Ok((
        format!("(SELECT * FROM {table} WHERE {}) AS span", clauses.join(" AND ")),
        binds,
    ))
}

/// Whether push-down can place this schema's keys: not when a key column is `bytea`,
/// whose order-preserving encoding escapes zero bytes, which SQL cannot do cheaply.
pub fn supported(schema: &Schema) -> bool {
    schema.key.iter().all(|c| key_kind(c.ty) != KeyKind::Bytes)
}

/// The grouped query over `table` and its thresholds. `columns` are this copy's key columns
/// then compared columns, in schema order.
pub fn query(
    table: &str,
    schema: &Schema,
    columns: &[HashedColumn<'_>],
    boundaries: &Boundaries,
) -> Result<(String, Thresholds), String> {
    let hash = row_hash(columns);
    let keys: Vec<Vec<KeyPart>> = boundaries
        .keys()
        .iter()
        .map(|k| k.parts().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    // Chosen by the key column's type, not only by the boundaries: with no boundaries (one
    // leaf, or a one-leaf span) every test on them would hold.
    let single = |kind: KeyKind, part: fn(&KeyPart) -> bool| {
        schema.key.len() == 1 && key_kind(schema.key[0].ty) == kind && keys.iter().all(|k| k.len() == 1 && part(&k[0]))
    };
    let grouped = |from: String| format!("SELECT leaf, count(*)::int8, sum(h)::text FROM ({from}) r GROUP BY leaf");
    if single(KeyKind::Int, |p| matches!(p, KeyPart::Int(_))) {
        let values = keys.iter().filter_map(|k| match k[0] {
            KeyPart::Int(v) => Some(v),
            _ => None,
        });
        let col = format!("{}::int8", ident(&schema.key[0].name));
        let from =
            format!("SELECT pg_catalog.width_bucket({col}, (SELECT $1::int8[])) AS leaf, {hash} AS h FROM {table}");
        Ok((grouped(from), Thresholds::Int(values.collect())))
    } else if single(KeyKind::Uuid, |p| matches!(p, KeyPart::Uuid(_))) {
        let values = keys.iter().filter_map(|k| match &k[0] {
            KeyPart::Uuid(u) => Some(format_uuid(u)),
            _ => None,
        });
        let col = ident(&schema.key[0].name);
        let from = format!(
            "SELECT pg_catalog.width_bucket({col}, (SELECT $1::text[]::uuid[])) AS leaf, {hash} AS h FROM {table}"
        );
        Ok((grouped(from), Thresholds::Uuid(values.collect())))
    } else if single(KeyKind::Text, |p| matches!(p, KeyPart::Text(_))) {
        let values: Vec<String> = keys
            .into_iter()
            .filter_map(|k| match k.into_iter().next() {
                Some(KeyPart::Text(s)) => Some(s),
                _ => None,
            })
            .collect();
        let (coarse, groups, fine, group) = two_levels(values);
        let key = format!("{}::text", ident(&schema.key[0].name));
        let from = two_level_from(table, &key, &hash, "text", group);
        Ok((grouped(from), Thresholds::Text(coarse, groups, fine)))
    } else {
        let encoded = encoded_key(schema).ok_or("bytea keys cannot be placed in the server")?;
        let values: Vec<Vec<u8>> = boundaries.keys().iter().map(|k| k.as_bytes().to_vec()).collect();
        let (coarse, groups, fine, group) = two_levels(values);
        let from = two_level_from(table, &encoded, &hash, "bytea", group);
        Ok((grouped(from), Thresholds::Bytes(coarse, groups, fine)))
    }
}

/// `work_mem` for the grouped query over `leaves` leaves: room for every group's state
/// (about half a KiB each, measured), with a margin.
pub fn work_mem_kib(leaves: usize) -> usize {
    WORK_MEM_BASE_KIB + leaves * WORK_MEM_PER_LEAF_KIB
}

/// A leaf aggregate from one result row: the row count and the sum of 64-bit row hashes
/// (exact, as `numeric` text), wrapped to 64 bits.
pub fn aggregate(count: i64, sum: &str) -> Result<Aggregate, String> {
    let sum: i128 = sum.parse().map_err(|e| format!("push-down sum {sum:?}: {e}"))?;
    Ok(Aggregate {
        count: u64::try_from(count).map_err(|_| format!("push-down count {count}"))?,
        sum: u128::from(sum as u64),
    })
}

/// The XOR of every column's seeded hash.
fn row_hash(columns: &[HashedColumn<'_>]) -> String {
    let terms: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let term = column_hash(&ident(c.name), Physical::of(c.pg_type), c.pg_type, SEED_BASE + i as i64);
            if c.not_null {
                term
            } else {
                format!("coalesce({term}, {})", NULL_BASE + i as i64)
            }
        })
        .collect();
    terms.join(" OPERATOR(pg_catalog.#) ")
}

/// One column's 64-bit hash (NULL for NULL).
fn column_hash(col: &str, physical: Physical, pg_type: &str, seed: i64) -> String {
    let f = |function: &str, arg: &str| format!("pg_catalog.{function}({arg}, {seed})");
    let as_text = f("hashtextextended", &format!("{col}::text COLLATE \"C\""));
    match physical {
        // The integer hashes agree across widths for equal values.
        Physical::Int => match pg_type {
            "bigint" => f("hashint8extended", col),
            "integer" => f("hashint4extended", col),
            _ => f("hashint2extended", col),
        },
        Physical::Numeric => f("hash_numeric_extended", col),
        Physical::Float4 => f("hashfloat4extended", col),
        Physical::Float8 => f("hashfloat8extended", col),
        Physical::Bool => f("hashint4extended", &format!("{col}::int4")),
        Physical::Text => as_text,
        Physical::Uuid => f("uuid_hash_extended", col),
        // The span from a fixed instant is exact; infinite values cannot be subtracted.
        Physical::Timestamp(tz) => {
            let epoch = if tz {
                "'2000-01-01 00:00:00+00'::timestamptz"
            } else {
                "'2000-01-01 00:00:00'::timestamp"
            };
            let span = f("interval_hash_extended", &format!("{col} - {epoch}"));
            format!("CASE WHEN pg_catalog.isfinite({col}) THEN {span} ELSE {as_text} END")
        }
        Physical::Date => {
            let days = f("hashint4extended", &format!("{col} - '2000-01-01'::date"));
            format!("CASE WHEN pg_catalog.isfinite({col}) THEN {days} ELSE {as_text} END")
        }
        // bytea's hash function takes `internal`; a one-column record reaches it.
        Physical::Bytes => f("hash_record_extended", &format!("ROW({col})")),
        Physical::Json(_) | Physical::Other => as_text,
    }
}

/// Splits sorted thresholds into a first level of every `group`-th one and second-level
/// groups of those between: returns the first level, each second-level threshold's group
/// and the thresholds, and the group size.
fn two_levels<T: Clone>(values: Vec<T>) -> (Vec<T>, Vec<i32>, Vec<T>, usize) {
    let group = (values.len() as f64).sqrt().ceil().max(1.0) as usize;
    let mut coarse = Vec::new();
    let (mut groups, mut fine) = (Vec::new(), Vec::new());
    for (i, v) in values.into_iter().enumerate() {
        if i % group == 0 {
            coarse.push(v);
        } else {
            groups.push((i / group) as i32);
            fine.push(v);
        }
    }
    (coarse, groups, fine, group)
}

/// Rows `(leaf, h)` of `table`, the leaf of `key` found in two-level thresholds of `ty`
/// (`$1` the first level, `$2`/`$3` the groups and thresholds of the second). With `c` the
/// first-level bucket: `c = 0` is below every boundary; otherwise the key is at or above
/// boundary `(c - 1) * group` and below boundary `c * group`, and the second level counts
/// the boundaries of group `c - 1` at or below it. `OFFSET 0` keeps the key expression from
/// being evaluated once per use.
fn two_level_from(table: &str, key: &str, hash: &str, ty: &str, group: usize) -> String {
    let collate = if ty == "text" { " COLLATE \"C\"" } else { "" };
    format!(
        "SELECT CASE WHEN k.c = 0 THEN 0 \
                ELSE (k.c - 1) * {group} + 1 + coalesce(pg_catalog.width_bucket(k.key{collate}, g.fine), 0) END AS leaf, \
                k.h \
         FROM (SELECT pg_catalog.width_bucket(r0.key{collate}, (SELECT $1::{ty}[])) AS c, r0.key, r0.h \
               FROM (SELECT {key} AS key, {hash} AS h FROM {table} OFFSET 0) r0) k \
         LEFT JOIN (SELECT j, pg_catalog.array_agg(e ORDER BY o) AS fine \
                    FROM unnest($2::int4[], $3::{ty}[]) WITH ORDINALITY AS u(j, e, o) GROUP BY j) g \
           ON g.j = k.c - 1"
    )
}

/// The key as the bytes of `driftless_core::key`'s order-preserving encoding, computed in
/// SQL, so `bytea` thresholds (compared bytewise) place it as `Boundaries::leaf_of` does.
/// `None` for bytea keys, whose encoding escapes zero bytes.
fn encoded_key(schema: &Schema) -> Option<String> {
    let parts: Option<Vec<String>> = schema
        .key
        .iter()
        .map(|c| {
            let col = ident(&c.name);
            match key_kind(c.ty) {
                // Tag 0x10, then the big-endian value with its sign bit flipped.
                KeyKind::Int => Some(format!(
                    "'\\x10'::bytea || pg_catalog.int8send({col}::int8 OPERATOR(pg_catalog.#) (-9223372036854775808)::int8)"
                )),
                // Tag 0x20, the UTF-8 bytes (PostgreSQL text holds no zero byte), 0x00 0x01.
                KeyKind::Text => Some(format!(
                    "'\\x20'::bytea || pg_catalog.convert_to({col}::text, 'UTF8') || '\\x0001'::bytea"
                )),
                // Tag 0x28, the 16 bytes.
                KeyKind::Uuid => Some(format!("'\\x28'::bytea || pg_catalog.uuid_send({col})")),
                KeyKind::Bytes => None,
            }
        })
        .collect();
    parts.map(|p| p.join(" || "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_levels_cover_every_threshold_once() {
        for n in [0usize, 1, 2, 3, 10, 99, 100, 101, 1000] {
            let (coarse, groups, fine, group) = two_levels((0..n).collect::<Vec<_>>());
            assert_eq!(coarse.len() + fine.len(), n);
            // The leaf of key `x + 0.5` (between thresholds x and x + 1) is x + 1.
            for x in 0..n {
                let c = coarse.iter().filter(|&&b| b <= x).count();
                let second = (0..fine.len())
                    .filter(|&i| groups[i] as usize == c - 1 && fine[i] <= x)
                    .count();
                assert_eq!((c - 1) * group + 1 + second, x + 1, "n {n}, x {x}");
            }
        }
    }
}
