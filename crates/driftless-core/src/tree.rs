//! Range boundaries and the range Merkle tree.
//!
//! [`Boundaries`] split the key space into leaves: `n` sorted boundary keys make `n + 1`
//! half-open ranges, the first open below and the last open above, so a key that exists only
//! in a stage (below the canonical minimum, above its maximum, or in a gap) still falls in a
//! leaf. Boundaries are quantiles of a sample of the canonical copy's keys, never arithmetic
//! splits of `min..max`, so gaps, text keys, uuids and composite keys all give balanced leaves.
//!
//! A [`Tree`] holds one [`Aggregate`] per leaf and, above them, a binary tree of aggregates.
//! Because aggregates add, a tree can be built from chunks of rows in parallel and merged,
//! and the result does not depend on the chunking: [`Tree::build_par`] equals
//! [`Tree::build`] on the same rows, which the tests check.

use rayon::prelude::*;

use crate::digest::{Aggregate, Digest};
use crate::key::Key;

/// A half-open key range `[lo, hi)`; `None` is unbounded on that side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// Inclusive lower bound.
    pub lo: Option<Key>,
    /// Exclusive upper bound.
    pub hi: Option<Key>,
}

impl KeyRange {
    /// The whole key space.
    pub fn all() -> KeyRange {
        KeyRange::default()
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &Key) -> bool {
        self.lo.as_ref().is_none_or(|lo| key >= lo) && self.hi.as_ref().is_none_or(|hi| key < hi)
    }
}

/// The sorted, distinct keys that split the key space into leaves, and how many rows a
/// leaf is expected to hold when that is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Boundaries {
    keys: Vec<Key>,
    leaf_rows: Option<u64>,
}

impl Boundaries {
    /// Boundaries from already sorted, distinct keys.
    ///
    /// # Panics
    /// If `keys` is not strictly increasing; callers build it from a sorted sample.
    pub fn from_sorted(keys: Vec<Key>) -> Boundaries {
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "boundaries must be strictly increasing"
        );
        Boundaries { keys, leaf_rows: None }
    }

    /// Boundaries at the quantiles of `sample`, aiming for `target_leaves` leaves of about
    /// equal row count. A sample with fewer distinct keys gives fewer leaves.
    pub fn from_sample(mut sample: Vec<Key>, target_leaves: usize) -> Boundaries {
        sample.sort_unstable();
        sample.dedup();
        let target = target_leaves.max(1);
        let n = sample.len();
        if n == 0 {
            return Boundaries::default();
        }
        let mut keys: Vec<Key> = (1..target).map(|i| sample[i * n / target].clone()).collect();
        keys.dedup();
        // The lowest sampled key would only make an empty first leaf.
        if keys.first() == sample.first() {
            keys.remove(0);
        }
        Boundaries { keys, leaf_rows: None }
    }

    /// These boundaries, with `rows` rows expected in all (the canonical copy's count when
    /// they were cut): each leaf expects an even share. Stores use it to size reads.
    pub fn expecting(mut self, rows: u64) -> Boundaries {
        self.leaf_rows = Some(rows.div_ceil(self.leaf_count() as u64));
        self
    }

    /// Rows a leaf is expected to hold, when known.
    pub fn leaf_rows(&self) -> Option<u64> {
        self.leaf_rows
    }

    /// Number of leaves these boundaries make.
    pub fn leaf_count(&self) -> usize {
        self.keys.len() + 1
    }

    /// The boundary keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The leaves `first..=last` that `range` covers exactly, when both its ends are
    /// boundaries (or open).
    pub fn leaves_of(&self, range: &KeyRange) -> Option<(usize, usize)> {
        let first = match &range.lo {
            None => 0,
            Some(lo) => self.keys.binary_search(lo).ok()? + 1,
        };
        let last = match &range.hi {
            None => self.keys.len(),
            Some(hi) => self.keys.binary_search(hi).ok()?,
        };
        (first <= last).then_some((first, last))
    }

    /// The leaf holding `key`.
    #[inline]
    pub fn leaf_of(&self, key: &Key) -> usize {
        self.keys.partition_point(|b| b <= key)
    }

    /// The key range of leaf `i`.
    pub fn range(&self, i: usize) -> KeyRange {
        self.span(i, i)
    }

    /// The key range covering leaves `first..=last`.
    pub fn span(&self, first: usize, last: usize) -> KeyRange {
        KeyRange {
            lo: first.checked_sub(1).map(|j| self.keys[j].clone()),
            hi: self.keys.get(last).cloned(),
        }
    }

    /// Coalesces sorted leaf indices into the fewest ranges: adjacent leaves become one
    /// range, so a run of divergent leaves is read back in one query.
    pub fn coalesce(&self, leaves: &[usize]) -> Vec<KeyRange> {
        self.coalesce_at_most(leaves, usize::MAX)
    }

    /// As [`Boundaries::coalesce`], with at most `max_leaves` leaves a range, so that what
    /// one re-read holds stays bounded however much of a copy diverges.
    pub fn coalesce_at_most(&self, leaves: &[usize], max_leaves: usize) -> Vec<KeyRange> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < leaves.len() {
            let first = leaves[i];
            let mut last = first;
            while i + 1 < leaves.len() && leaves[i + 1] == last + 1 && last + 1 - first < max_leaves {
                i += 1;
                last = leaves[i];
            }
            out.push(self.span(first, last));
            i += 1;
        }
        out
    }
}

/// A range Merkle tree: leaf aggregates and the binary tree of aggregates above them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// `levels[0]` are the leaves; each higher level pairs up the one below; the last level
    /// holds the root alone.
    levels: Vec<Vec<Aggregate>>,
}

impl Tree {
    /// A tree over the given leaf aggregates.
    pub fn from_leaves(leaves: Vec<Aggregate>) -> Tree {
        let mut levels = vec![if leaves.is_empty() {
            vec![Aggregate::default()]
        } else {
            leaves
        }];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().unwrap();
            let above = below
                .chunks(2)
                .map(|pair| {
                    let mut a = pair[0];
                    if let Some(b) = pair.get(1) {
                        a.merge(b);
                    }
                    a
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    /// Builds a tree from rows in any order, one at a time.
    pub fn build<'a>(boundaries: &Boundaries, rows: impl IntoIterator<Item = (&'a Key, Digest)>) -> Tree {
        let mut leaves = LeafBuilder::new(boundaries);
        for (key, digest) in rows {
            leaves.add(key, digest);
        }
        leaves.finish()
    }

    /// Builds a tree from rows in parallel chunks on the rayon pool, then merges the chunks.
    pub fn build_par(boundaries: &Boundaries, rows: &[(Key, Digest)]) -> Tree {
        /// Rows per parallel chunk: large enough to amortise a leaf vector per chunk.
        const CHUNK_ROWS: usize = 64 * 1024;
        Tree::build_par_chunks(boundaries, rows, CHUNK_ROWS)
    }

    /// [`Tree::build_par`] with a chosen chunk size.
    pub fn build_par_chunks(boundaries: &Boundaries, rows: &[(Key, Digest)], chunk_rows: usize) -> Tree {
        let leaves = rows
            .par_chunks(chunk_rows.max(1))
            .map(|chunk| {
                let mut leaves = vec![Aggregate::default(); boundaries.leaf_count()];
                for (key, digest) in chunk {
                    leaves[boundaries.leaf_of(key)].add(*digest);
                }
                leaves
            })
            .reduce(
                || vec![Aggregate::default(); boundaries.leaf_count()],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| x.merge(y));
                    a
                },
            );
        Tree::from_leaves(leaves)
    }

    /// Adds another tree over the same boundaries into this one (a parallel chunk's tree).
    pub fn merge(&mut self, other: &Tree) {
        let mut leaves = self.leaves().to_vec();
        leaves.iter_mut().zip(other.leaves()).for_each(|(a, b)| a.merge(b));
        *self = Tree::from_leaves(leaves);
    }

    /// The leaf aggregates.
    pub fn leaves(&self) -> &[Aggregate] {
        &self.levels[0]
    }

    /// The aggregate of the whole copy.
    pub fn root(&self) -> Aggregate {
        self.levels.last().unwrap()[0]
    }

    /// Leaves whose aggregates differ, found top-down: a subtree whose root matches is not
    /// descended into. Both trees must be built over the same boundaries.
    ///
    /// # Panics
    /// If the trees have different numbers of leaves.
    pub fn diff(&self, other: &Tree) -> Vec<usize> {
        assert_eq!(
            self.leaves().len(),
            other.leaves().len(),
            "trees over different boundaries"
        );
        let mut out = Vec::new();
        let top = self.levels.len() - 1;
        self.descend(other, top, 0, &mut out);
        out
    }

    fn descend(&self, other: &Tree, level: usize, index: usize, out: &mut Vec<usize>) {
        if self.levels[level][index] == other.levels[level][index] {
            return;
        }
        if level == 0 {
            out.push(index);
            return;
        }
        let below = self.levels[level - 1].len();
        for child in [2 * index, 2 * index + 1] {
            if child < below {
                self.descend(other, level - 1, child, out);
            }
        }
    }
}

/// Accumulates rows into leaves as a scan streams them. Rows usually arrive in key order,
/// so the current leaf is checked first and the binary search is the rare path. `B` is
/// `&Boundaries` or an owned or shared `Boundaries`, for builders that must be `'static`.
#[derive(Debug)]
pub struct LeafBuilder<B> {
    boundaries: B,
    leaves: Vec<Aggregate>,
    current: usize,
}

impl<B: AsRef<Boundaries>> LeafBuilder<B> {
    /// An empty builder over `boundaries`.
    pub fn new(boundaries: B) -> LeafBuilder<B> {
        let leaves = vec![Aggregate::default(); boundaries.as_ref().leaf_count()];
        LeafBuilder {
            boundaries,
            leaves,
            current: 0,
        }
    }

    /// Adds one row.
    #[inline]
    pub fn add(&mut self, key: &Key, digest: Digest) {
        let keys = self.boundaries.as_ref().keys();
        let in_current = self.current.checked_sub(1).is_none_or(|j| &keys[j] <= key)
            && keys.get(self.current).is_none_or(|hi| key < hi);
        if !in_current {
            self.current = self.boundaries.as_ref().leaf_of(key);
        }
        self.leaves[self.current].add(digest);
    }

    /// The finished tree.
    pub fn finish(self) -> Tree {
        Tree::from_leaves(self.leaves)
    }
}

impl AsRef<Boundaries> for Boundaries {
    fn as_ref(&self) -> &Boundaries {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyPart;

    fn k(i: i64) -> Key {
        Key::from_parts(&[KeyPart::Int(i)])
    }

    #[test]
    fn quantile_boundaries_balance_gappy_keys() {
        // Keys 0..1000 and then 1_000_000_000..1_000_001_000: arithmetic splits of min..max
        // would put everything in the first and last leaf.
        let sample: Vec<Key> = (0..1000).chain(1_000_000_000..1_000_001_000).map(k).collect();
        let b = Boundaries::from_sample(sample.clone(), 10);
        assert_eq!(b.leaf_count(), 10);
        let mut counts = vec![0; b.leaf_count()];
        sample.iter().for_each(|key| counts[b.leaf_of(key)] += 1);
        assert!(counts.iter().all(|&c| c == 200), "{counts:?}");
    }

    #[test]
    fn first_and_last_leaves_are_open() {
        let b = Boundaries::from_sample((10..20).map(k).collect(), 3);
        assert_eq!(b.leaf_of(&k(i64::MIN)), 0);
        assert_eq!(b.leaf_of(&k(i64::MAX)), b.leaf_count() - 1);
        assert!(b.range(0).lo.is_none());
        assert!(b.range(b.leaf_count() - 1).hi.is_none());
    }

    #[test]
    fn spans_map_back_to_their_leaves() {
        let b = Boundaries::from_sample((0..100).map(k).collect(), 7).expecting(100);
        assert_eq!(b.leaf_rows(), Some(15));
        let n = b.leaf_count();
        for (first, last) in [(0, 0), (0, n - 1), (2, 4), (n - 1, n - 1)] {
            assert_eq!(b.leaves_of(&b.span(first, last)), Some((first, last)));
        }
        // A range whose ends are not boundaries covers no leaves exactly.
        let odd = KeyRange {
            lo: Some(k(-3)),
            hi: None,
        };
        assert_eq!(b.leaves_of(&odd), None);
        assert_eq!(Boundaries::from_sorted(vec![k(5)]).leaf_rows(), None);
    }

    #[test]
    fn ranges_partition_the_key_space() {
        let b = Boundaries::from_sample((0..100).map(k).collect(), 7);
        for i in -5..105 {
            let key = k(i);
            let holding: Vec<usize> = (0..b.leaf_count()).filter(|&l| b.range(l).contains(&key)).collect();
            assert_eq!(holding, vec![b.leaf_of(&key)]);
        }
    }

    #[test]
    fn coalesce_merges_adjacent_leaves() {
        let b = Boundaries::from_sample((0..100).map(k).collect(), 10);
        assert_eq!(b.coalesce_at_most(&[0, 1, 2, 5, 7, 8, 9], 2).len(), 5);
        let ranges = b.coalesce(&[0, 1, 2, 5, 7, 8, 9]);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0], b.span(0, 2));
        assert!(ranges[0].lo.is_none() && ranges[2].hi.is_none());
    }

    #[test]
    fn diff_names_exactly_the_changed_leaves() {
        let b = Boundaries::from_sample((0..1000).map(k).collect(), 33);
        let keys: Vec<Key> = (0..1000).map(k).collect();
        let a = Tree::build(&b, keys.iter().map(|key| (key, 1)));
        let mut changed: Vec<(&Key, u128)> = keys.iter().map(|key| (key, 1)).collect();
        changed[5].1 = 2;
        changed[640].1 = 2;
        let t = Tree::build(&b, changed);
        assert_eq!(a.diff(&t), vec![b.leaf_of(&k(5)), b.leaf_of(&k(640))]);
        assert!(a.diff(&a).is_empty());
    }

    #[test]
    fn an_empty_copy_still_has_a_root() {
        let t = Tree::from_leaves(Vec::new());
        assert_eq!(t.root(), Aggregate::default());
    }
}
