//! Naming divergent keys: a merge-join of two key-sorted `(key, digest)` streams.
//!
//! Only the rows of divergent leaves reach this point, so the streams are short. A key in
//! the canonical stream alone is `missing` from the stage; in the stage alone it is `extra`;
//! in both with different digests it is `changed`. A key the stage holds more than once is
//! a `duplicate` (one divergence per surplus row), which a key-unique canonical copy never is.

use std::cmp::Ordering;
use std::iter::Peekable;

use serde::{Deserialize, Serialize};

use crate::digest::{Aggregate, Digest};
use crate::key::Key;

/// How a stage's copy of a key differs from canonical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DivergenceKind {
    /// In canonical, not in the stage.
    Missing,
    /// In the stage, not in canonical.
    Extra,
    /// In both, with different values.
    Changed,
    /// In the stage more than once.
    Duplicate,
}

impl DivergenceKind {
    /// The kind's name as reports print it.
    pub fn as_str(self) -> &'static str {
        match self {
            DivergenceKind::Missing => "missing",
            DivergenceKind::Extra => "extra",
            DivergenceKind::Changed => "changed",
            DivergenceKind::Duplicate => "duplicate",
        }
    }

    /// The kind named `name`, as [`DivergenceKind::as_str`] spells it.
    pub fn parse(name: &str) -> Option<DivergenceKind> {
        [
            DivergenceKind::Missing,
            DivergenceKind::Extra,
            DivergenceKind::Changed,
            DivergenceKind::Duplicate,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// One divergent key, with the digests each side had (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The key.
    pub key: Key,
    /// What kind of divergence.
    pub kind: DivergenceKind,
    /// The canonical row's digest, if canonical has the key.
    pub canonical: Option<Digest>,
    /// The stage row's digest, if the stage has the key.
    pub stage: Option<Digest>,
}

/// Merge-joins two streams sorted by key into the divergences between them. Keys out of
/// order are the caller's contract to prevent (stores verify their scan order).
pub fn merge_join(
    canonical: impl IntoIterator<Item = (Key, Digest)>,
    stage: impl IntoIterator<Item = (Key, Digest)>,
) -> Vec<Divergence> {
    let mut c = canonical.into_iter().peekable();
    let mut s = stage.into_iter().peekable();
    let mut out = Vec::new();
    loop {
        let order = match (c.peek(), s.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.0.cmp(&b.0),
        };
        match order {
            Ordering::Less => {
                let (key, d) = c.next().unwrap();
                out.push(Divergence {
                    key,
                    kind: DivergenceKind::Missing,
                    canonical: Some(d),
                    stage: None,
                });
            }
            Ordering::Greater => {
                let (key, d) = s.next().unwrap();
                let canonical = None;
                out.push(Divergence {
                    key: key.clone(),
                    kind: DivergenceKind::Extra,
                    canonical,
                    stage: Some(d),
                });
                push_duplicates(&mut s, &key, canonical, &mut out);
            }
            Ordering::Equal => {
                let (key, cd) = c.next().unwrap();
                let (_, sd) = s.next().unwrap();
                if cd != sd {
                    out.push(Divergence {
                        key: key.clone(),
                        kind: DivergenceKind::Changed,
                        canonical: Some(cd),
                        stage: Some(sd),
                    });
                }
                push_duplicates(&mut s, &key, Some(cd), &mut out);
            }
        }
    }
    out
}

/// Consumes further stage rows with the same key, each a `duplicate`.
fn push_duplicates<I: Iterator<Item = (Key, Digest)>>(
    s: &mut Peekable<I>,
    key: &Key,
    canonical: Option<Digest>,
    out: &mut Vec<Divergence>,
) {
    while let Some((_, d)) = s.next_if(|(k, _)| k == key) {
        out.push(Divergence {
            key: key.clone(),
            kind: DivergenceKind::Duplicate,
            canonical,
            stage: Some(d),
        });
    }
}

/// One divergent key with everything a repair needs: what canonical held, what the stage
/// held (all its rows of that key, as an [`Aggregate`]), and the key's kind. A key holds one
/// entry in the divergence queue, however many rows the stage has for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDivergence {
    /// The key.
    pub key: Key,
    /// `duplicate` when the stage holds the key more than once, else the row's kind.
    pub kind: DivergenceKind,
    /// The canonical row's digest, if canonical has the key.
    pub canonical: Option<Digest>,
    /// The stage's rows of this key: `(0, 0)` when it has none.
    pub stage: Aggregate,
}

/// Groups the row-level divergences of [`merge_join`] (sorted by key) into one entry per
/// key. A key the stage holds twice, once equal to canonical, shows in `divergences` only by
/// its surplus row; the row equal to canonical is added back into the stage aggregate.
pub fn by_key(divergences: &[Divergence]) -> Vec<KeyDivergence> {
    let mut out: Vec<KeyDivergence> = Vec::new();
    let mut i = 0;
    while i < divergences.len() {
        let first = &divergences[i];
        let mut stage = Aggregate::default();
        let mut rows_unequal_to_canonical = false;
        let mut j = i;
        while j < divergences.len() && divergences[j].key == first.key {
            let d = &divergences[j];
            if let Some(digest) = d.stage {
                stage.add(digest);
            }
            rows_unequal_to_canonical |= matches!(d.kind, DivergenceKind::Changed | DivergenceKind::Extra);
            j += 1;
        }
        let duplicated = j - i > 1 || first.kind == DivergenceKind::Duplicate;
        if let (true, false, Some(c)) = (duplicated, rows_unequal_to_canonical, first.canonical) {
            stage.add(c);
        }
        out.push(KeyDivergence {
            key: first.key.clone(),
            kind: if duplicated {
                DivergenceKind::Duplicate
            } else {
                first.kind
            },
            canonical: first.canonical,
            stage,
        });
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyPart;

    fn rows(items: &[(i64, u128)]) -> Vec<(Key, Digest)> {
        items
            .iter()
            .map(|&(k, d)| (Key::from_parts(&[KeyPart::Int(k)]), d))
            .collect()
    }

    fn kinds(d: &[Divergence]) -> Vec<(String, DivergenceKind)> {
        d.iter().map(|d| (d.key.to_string(), d.kind)).collect()
    }

    #[test]
    fn names_each_kind() {
        let c = rows(&[(1, 10), (2, 20), (3, 30), (5, 50)]);
        let s = rows(&[(2, 20), (3, 31), (3, 31), (4, 40), (5, 50)]);
        use DivergenceKind::*;
        assert_eq!(
            kinds(&merge_join(c, s)),
            vec![
                ("1".into(), Missing),
                ("3".into(), Changed),
                ("3".into(), Duplicate),
                ("4".into(), Extra)
            ]
        );
    }

    #[test]
    fn identical_streams_have_no_divergence() {
        let c = rows(&[(1, 10), (2, 20)]);
        assert!(merge_join(c.clone(), c).is_empty());
    }

    #[test]
    fn keys_group_every_stage_row() {
        let c = rows(&[(1, 10), (2, 20), (3, 30), (6, 60)]);
        let s = rows(&[(2, 20), (2, 20), (3, 31), (3, 32), (4, 40), (5, 50), (5, 51), (6, 61)]);
        let keys = by_key(&merge_join(c, s));
        let got: Vec<(String, DivergenceKind, Option<u128>, u64, u128)> = keys
            .iter()
            .map(|k| (k.key.to_string(), k.kind, k.canonical, k.stage.count, k.stage.sum))
            .collect();
        use DivergenceKind::*;
        assert_eq!(
            got,
            vec![
                ("1".into(), Missing, Some(10), 0, 0),
                ("2".into(), Duplicate, Some(20), 2, 40),
                ("3".into(), Duplicate, Some(30), 2, 63),
                ("4".into(), Extra, None, 1, 40),
                ("5".into(), Duplicate, None, 2, 101),
                ("6".into(), Changed, Some(60), 1, 61),
            ]
        );
    }

    #[test]
    fn a_repeated_identical_row_is_a_duplicate() {
        let c = rows(&[(1, 10)]);
        let s = rows(&[(1, 10), (1, 10)]);
        assert_eq!(kinds(&merge_join(c, s)), vec![("1".into(), DivergenceKind::Duplicate)]);
    }
}
