//! The first listing of a copy, kept as a bounded summary.
//!
//! The engine samples canonical's keys before it builds any tree, and S3 cannot count or
//! sample a prefix without listing it. So the one listing that samples also digests: every
//! object is folded into a run of consecutive objects (a micro-leaf: its first key and its
//! aggregate). When the runs reach [`MAX_RUNS`], neighbours are merged pairwise and each
//! run doubles, so memory stays bounded whatever the number of objects. The key sample is
//! the runs' first keys, so every leaf boundary the engine cuts from it starts a run, and
//! canonical's tree is the runs folded into leaves: no second listing.

use driftless_core::{Aggregate, Boundaries, Key, KeyRange, RowHasher, Tree};
use driftless_store::object::{ObjectColumn, ObjectMeta};
use driftless_store::{Sample, Schema, StoreError};
use futures::StreamExt;

use crate::S3Store;
use crate::layout::{Piece, SMALL_FOLDER_KEYS};
use crate::list::Cursor;

/// Folders the first listing reads at once, beyond the first.
const FOLDERS_IN_FLIGHT: usize = 8;
/// Pages of one folder listed before the fold reaches it: the buffer per folder in flight.
const PAGES_AHEAD: usize = 2;

/// The most runs a summary holds (their first keys and aggregates: about 100 bytes each).
const MAX_RUNS: usize = 1 << 14;

/// A copy's objects as runs of consecutive keys.
#[derive(Debug)]
pub(crate) struct Summary {
    columns: Vec<ObjectColumn>,
    algorithm: driftless_core::DigestAlgorithm,
    runs: Vec<(Key, Aggregate)>,
    /// Objects per run, but the last: a power of two.
    run_len: u64,
    rows: u64,
}

impl Summary {
    fn new(columns: Vec<ObjectColumn>, algorithm: driftless_core::DigestAlgorithm) -> Summary {
        Summary {
            columns,
            algorithm,
            runs: Vec::new(),
            run_len: 1,
            rows: 0,
        }
    }

    /// Folds the next object (in key order) into the runs.
    fn add(&mut self, key: Key, digest: u128) {
        if self.rows.is_multiple_of(self.run_len) {
            if self.runs.len() == MAX_RUNS {
                // Every run holds `run_len` objects, so after merging pairs this object
                // starts a run of the doubled length too.
                self.halve();
                self.run_len *= 2;
            }
            self.runs.push((key, Aggregate::default()));
        }
        self.rows += 1;
        // A run was started above whenever the last one was full, so there is one.
        if let Some(last) = self.runs.last_mut() {
            last.1.add(digest);
        }
    }

    /// Merges neighbouring runs pairwise.
    fn halve(&mut self) {
        let runs = std::mem::take(&mut self.runs);
        let mut it = runs.into_iter();
        while let Some((key, mut agg)) = it.next() {
            if let Some((_, next)) = it.next() {
                agg.count += next.count;
                agg.sum = agg.sum.wrapping_add(next.sum);
            }
            self.runs.push((key, agg));
        }
    }

    /// Objects listed.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// About `max` of the runs' first keys, evenly spread, and the row count.
    pub(crate) fn sample(&self, max: usize) -> Sample {
        let n = self.runs.len();
        let keys = if max >= n {
            self.runs.iter().map(|r| r.0.clone()).collect()
        } else {
            (0..max).map(|i| self.runs[i * n / max].0.clone()).collect()
        };
        Sample { keys, rows: self.rows }
    }

    /// The tree over `boundaries`, when this summary can give it: digested over the same
    /// columns with the same algorithm, and every boundary the first key of a run.
    pub(crate) fn tree(&self, columns: &[ObjectColumn], boundaries: &Boundaries, hasher: &RowHasher) -> Option<Tree> {
        if columns != self.columns || hasher.algorithm() != self.algorithm {
            return None;
        }
        let starts_runs = boundaries
            .keys()
            .iter()
            .all(|b| self.runs.binary_search_by(|r| r.0.cmp(b)).is_ok());
        if !starts_runs {
            return None;
        }
        let mut leaves = vec![Aggregate::default(); boundaries.leaf_count()];
        for (key, agg) in &self.runs {
            let leaf = &mut leaves[boundaries.leaf_of(key)];
            leaf.count += agg.count;
            leaf.sum = leaf.sum.wrapping_add(agg.sum);
        }
        Some(Tree::from_leaves(leaves))
    }
}

impl S3Store {
    /// The summary of this copy, listed on first use.
    pub(crate) async fn summary(&self, schema: &Schema) -> Result<&Summary, StoreError> {
        self.summary.get_or_try_init(|| self.list_summary(schema)).await
    }

    /// Lists the whole copy into a summary. The first piece is listed alone (a small first
    /// folder sends the rest to one flat listing); the others are listed
    /// [`FOLDERS_IN_FLIGHT`] at once, each up to [`PAGES_AHEAD`] pages ahead, and folded in
    /// key order.
    async fn list_summary(&self, schema: &Schema) -> Result<Summary, StoreError> {
        let columns = self.columns(schema)?;
        let hasher = self
            .options
            .hasher
            .clone()
            .unwrap_or_else(|| RowHasher::new(Default::default(), 0));
        let mut summary = Summary::new(columns.clone(), hasher.algorithm());
        let pieces = self.pieces(&KeyRange::all(), None).await?;
        let Some((first, rest)) = pieces.split_first() else {
            return Ok(summary);
        };
        // The rest is asked for only once the first is folded (and was not small).
        let mut ahead = futures::stream::once(self.list_ahead(first.clone()))
            .chain(
                futures::stream::iter(rest.iter().cloned())
                    .map(|piece| self.list_ahead(piece))
                    .buffered(FOLDERS_IN_FLIGHT),
            )
            .boxed();
        let mut next = pieces.iter().skip(1);
        while let Some(listed) = ahead.next().await {
            let Ahead { folder, pages, cursor } = listed?;
            let listed = self.fold(&mut summary, pages, cursor, &columns, &hasher).await?;
            let following = next.next();
            // Small folders cost more requests than they save: the rest in one flat listing.
            if folder
                && listed < SMALL_FOLDER_KEYS
                && let Some(following) = following
            {
                drop(ahead);
                let rest = KeyRange {
                    lo: Some(Key::text(following.start())),
                    hi: None,
                };
                let flat = Cursor::new(rest, vec![Piece::List(String::new())], None);
                self.fold(&mut summary, Vec::new(), flat, &columns, &hasher).await?;
                break;
            }
        }
        Ok(summary)
    }

    /// The first pages of one piece, listed ahead of the fold.
    async fn list_ahead(&self, piece: Piece) -> Result<Ahead, StoreError> {
        let folder = matches!(piece, Piece::List(_));
        let mut cursor = Cursor::new(KeyRange::all(), vec![piece], None);
        let mut pages = Vec::new();
        while pages.len() < PAGES_AHEAD {
            match self.next_page(&mut cursor).await? {
                Some(page) => pages.push(page),
                None => break,
            }
        }
        Ok(Ahead { folder, pages, cursor })
    }

    /// Folds `pages`, then every further page of `cursor`, into `summary`; returns how many
    /// objects.
    async fn fold(
        &self,
        summary: &mut Summary,
        pages: Vec<Vec<ObjectMeta>>,
        mut cursor: Cursor,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
    ) -> Result<u64, StoreError> {
        let mut listed = 0;
        for page in pages {
            listed += self.fold_page(summary, page, columns, hasher).await?;
        }
        while let Some(page) = self.next_page(&mut cursor).await? {
            listed += self.fold_page(summary, page, columns, hasher).await?;
        }
        Ok(listed)
    }

    async fn fold_page(
        &self,
        summary: &mut Summary,
        page: Vec<ObjectMeta>,
        columns: &[ObjectColumn],
        hasher: &RowHasher,
    ) -> Result<u64, StoreError> {
        let digested = self.digest_page(page, columns, hasher).await?;
        let n = digested.len() as u64;
        for (key, digest) in digested {
            summary.add(key, digest);
        }
        Ok(n)
    }
}

/// One piece's listing, its first pages already read.
struct Ahead {
    /// Whether the piece is a folder (not the top-level objects).
    folder: bool,
    pages: Vec<Vec<ObjectMeta>>,
    /// Where the piece's listing goes on after `pages`.
    cursor: Cursor,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary_of(n: u64) -> Summary {
        let mut s = Summary::new(ObjectColumn::ALL.to_vec(), Default::default());
        for i in 0..n {
            s.add(Key::text(&format!("k{i:08}")), u128::from(i) * 7919);
        }
        s
    }

    #[test]
    fn runs_stay_bounded_and_cover_every_object() {
        for n in [0, 1, 5, MAX_RUNS as u64, MAX_RUNS as u64 + 1, 3 * MAX_RUNS as u64 + 7] {
            let s = summary_of(n);
            assert!(s.runs.len() <= MAX_RUNS, "{n}: {} runs", s.runs.len());
            assert_eq!(s.runs.iter().map(|r| r.1.count).sum::<u64>(), n);
            assert_eq!(s.rows(), n);
            assert!(s.runs.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    #[test]
    fn trees_from_runs_equal_trees_from_rows() {
        let n = 3 * MAX_RUNS as u64 + 7;
        let s = summary_of(n);
        let boundaries = Boundaries::from_sample(s.sample(800).keys, 100);
        let hasher = RowHasher::new(Default::default(), 0);
        let tree = s.tree(&ObjectColumn::ALL, &boundaries, &hasher).unwrap();
        let rows: Vec<(Key, u128)> = (0..n)
            .map(|i| (Key::text(&format!("k{i:08}")), u128::from(i) * 7919))
            .collect();
        assert_eq!(tree, Tree::build(&boundaries, rows.iter().map(|(k, d)| (k, *d))));
        // Boundaries that do not start runs are refused rather than folded wrongly.
        let odd = Boundaries::from_sorted(vec![Key::text("k00000003")]);
        assert!(s.tree(&ObjectColumn::ALL, &odd, &hasher).is_none());
    }
}
