//! A copy's tree by listing, in parallel key ranges.
//!
//! The key space is cut into about [`RANGES_PER_LIST`] contiguous spans, listed
//! [`LISTS_IN_FLIGHT`] at a time, each folded into a partial tree as its pages arrive; the
//! partial trees are then merged (leaf aggregates add, so a leaf may straddle two spans).
//! Memory is one page per span in flight. A copy listed folder by folder is cut between
//! folders, so no folder costs a second run of requests. Otherwise spans are runs of
//! leaves, and when the boundaries say how many rows a leaf expects, a span is cut to a
//! little under a whole number of pages, so that listing in spans costs hardly more
//! requests than one listing from end to end.

use driftless_core::tree::LeafBuilder;
use driftless_core::{Boundaries, Key, KeyRange, RowHasher, Tree};
use driftless_store::object::ObjectColumn;
use driftless_store::{Progress, StoreError};
use futures::{StreamExt, TryStreamExt};

use crate::S3Store;
use crate::layout::SMALL_FOLDER_KEYS;
use crate::list::{Cursor, PAGE_KEYS};

/// Key ranges a listing is split into, so that a few slow pages do not hold up the rest.
const RANGES_PER_LIST: u64 = 16;
/// Ranges listed at once.
const LISTS_IN_FLIGHT: usize = 8;

impl S3Store {
    /// Lists the whole copy into a tree over `boundaries`.
    pub(crate) async fn list_tree(
        &self,
        columns: &[ObjectColumn],
        boundaries: &Boundaries,
        hasher: &RowHasher,
        progress: &Progress,
    ) -> Result<Tree, StoreError> {
        let spans = match self.folder_spans(boundaries).await? {
            Some(spans) => spans,
            None => leaf_spans(boundaries),
        };
        let parts: Vec<Tree> = futures::stream::iter(spans)
            .map(|(span, expected)| async move {
                let mut cursor = Cursor::new(span.clone(), self.pieces(&span, expected).await?, expected);
                let mut builder = LeafBuilder::new(boundaries);
                while let Some(page) = self.next_page(&mut cursor).await? {
                    let batch = self.digest_page(page, columns, hasher).await?;
                    progress.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    for (key, digest) in batch {
                        builder.add(&key, digest);
                    }
                }
                Ok::<_, StoreError>(builder.finish())
            })
            .buffer_unordered(LISTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut tree = LeafBuilder::new(boundaries).finish();
        for part in &parts {
            tree.merge(part);
        }
        Ok(tree)
    }

    /// Spans of whole folders, about [`RANGES_PER_LIST`] of them, when the copy has a layout
    /// whose folders are not small: every folder is then listed by one run of pages, none
    /// split between two spans (a split costs a request more). A span's pages are full
    /// ones, as it ends where its last folder does. `None` otherwise.
    async fn folder_spans(&self, boundaries: &Boundaries) -> Result<Option<Vec<(KeyRange, Option<u64>)>>, StoreError> {
        let Some(folders) = self.folders().await?.filter(|f| f.len() > 1) else {
            return Ok(None);
        };
        let rows = boundaries.leaf_rows().map(|r| r * boundaries.leaf_count() as u64);
        if rows.is_none_or(|rows| rows / (folders.len() as u64) < SMALL_FOLDER_KEYS) {
            return Ok(None);
        }
        let per_span = folders.len().div_ceil(RANGES_PER_LIST as usize);
        let cuts = folders.iter().skip(per_span).step_by(per_span).map(|f| Key::text(f));
        let spans = Boundaries::from_sorted(cuts.collect());
        Ok(Some((0..spans.leaf_count()).map(|i| (spans.range(i), None)).collect()))
    }
}

/// Spans of about [`RANGES_PER_LIST`] runs of whole leaves, each expected to hold what its
/// leaves do.
fn leaf_spans(boundaries: &Boundaries) -> Vec<(KeyRange, Option<u64>)> {
    let leaves = boundaries.leaf_count();
    let per_span = leaves_per_span(boundaries);
    (0..leaves)
        .step_by(per_span)
        .map(|first| {
            let last = (first + per_span).min(leaves) - 1;
            let expected = boundaries.leaf_rows().map(|rows| rows * (last - first + 1) as u64);
            (boundaries.span(first, last), expected)
        })
        .collect()
}

/// Leaves per listed span: a little under a whole number of pages of expected keys, or an
/// even share of the leaves when a leaf's rows are not known.
fn leaves_per_span(boundaries: &Boundaries) -> usize {
    let leaves = boundaries.leaf_count() as u64;
    let per_span = match boundaries.leaf_rows().filter(|&rows| rows > 0) {
        Some(rows) => {
            let page = PAGE_KEYS as u64;
            let pages_per_span = (leaves * rows).div_ceil(page).div_ceil(RANGES_PER_LIST);
            // 1/64 under whole pages, so a span a little fuller than expected still fits.
            pages_per_span * (page - page / 64) / rows
        }
        None => leaves.div_ceil(RANGES_PER_LIST),
    };
    usize::try_from(per_span.clamp(1, leaves)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boundaries(leaves: usize) -> Boundaries {
        Boundaries::from_sorted((1..leaves).map(|i| Key::text(&format!("k{i:06}"))).collect())
    }

    #[test]
    fn spans_fill_whole_pages() {
        // 1,000 leaves of 100 keys: 100 pages, 7 per span, 68 leaves (6,800 keys) per span.
        assert_eq!(leaves_per_span(&boundaries(1000).expecting(100_000)), 68);
        // A copy of a few pages: one page a span.
        assert_eq!(leaves_per_span(&boundaries(100).expecting(10_000)), 9);
        // Leaves bigger than a page: one leaf a span.
        assert_eq!(leaves_per_span(&boundaries(10).expecting(50_000)), 1);
        // Unknown leaf rows: an even share of the leaves.
        assert_eq!(leaves_per_span(&boundaries(100)), 7);
        assert_eq!(leaves_per_span(&boundaries(1).expecting(5)), 1);
    }
}
