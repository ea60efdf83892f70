//! A copy's tree by listing, in parallel key ranges.
//!
//! The leaves are grouped into about [`RANGES_PER_LIST`] contiguous spans, listed
//! [`LISTS_IN_FLIGHT`] at a time, each folded into a partial tree as its pages arrive; the
//! partial trees are then merged (leaf aggregates add). Memory is one page per span in
//! flight.

use driftless_core::tree::LeafBuilder;
use driftless_core::{Boundaries, RowHasher, Tree};
use driftless_store::object::ObjectColumn;
use driftless_store::{Progress, StoreError};
use futures::{StreamExt, TryStreamExt};

use crate::S3Store;
use crate::list::Cursor;

/// Key ranges a listing is split into, so that a few slow pages do not hold up the rest.
const RANGES_PER_LIST: usize = 32;
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
        let leaves = boundaries.leaf_count();
        let per_span = leaves.div_ceil(RANGES_PER_LIST).max(1);
        let spans: Vec<(usize, usize)> = (0..leaves)
            .step_by(per_span)
            .map(|first| (first, (first + per_span).min(leaves) - 1))
            .collect();
        let parts: Vec<Tree> = futures::stream::iter(spans)
            .map(|(first, last)| async move {
                let mut cursor = Cursor::new(boundaries.span(first, last));
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
}
