//! Naming divergent keys: a merge-join of two key-sorted `(key, digest)` streams.
//!
//! Only the rows of divergent leaves reach this point, so the streams are short. A key in
//! the canonical stream alone is `missing` from the stage; in the stage alone it is `extra`;
//! in both with different digests it is `changed`. A key the stage holds more than once is
//! a `duplicate` (one divergence per surplus row), which a key-unique canonical copy never is.

use std::cmp::Ordering;
use std::iter::Peekable;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
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
    fn a_repeated_identical_row_is_a_duplicate() {
        let c = rows(&[(1, 10)]);
        let s = rows(&[(1, 10), (1, 10)]);
        assert_eq!(kinds(&merge_join(c, s)), vec![("1".into(), DivergenceKind::Duplicate)]);
    }
}
