//! What a scan or a run is given: a dataset's copies and how to compare them.

use std::sync::Arc;

use driftless_core::RowHasher;
use driftless_store::Store;

use crate::policy::StagePolicy;

/// A named copy of a dataset.
#[derive(Clone, Debug)]
pub struct CopyRef {
    /// The stage's name.
    pub name: String,
    /// Where it lives.
    pub store: Arc<dyn Store>,
    /// How `repair` treats it.
    pub policy: StagePolicy,
}

/// Everything a scan of one dataset needs.
#[derive(Clone, Debug)]
pub struct DatasetPlan {
    /// The dataset's name.
    pub name: String,
    /// Key columns; empty for the store's own key.
    pub key: Vec<String>,
    /// Compared columns; `None` for all non-key columns.
    pub columns: Option<Vec<String>>,
    /// The canonical copy.
    pub canonical: Arc<dyn Store>,
    /// The stages, in channel order.
    pub stages: Vec<CopyRef>,
    /// The row hasher every copy is digested with.
    pub hasher: RowHasher,
    /// Columns holding a commit id: stage rows repeating one are duplicate commits.
    pub dedupe_key: Vec<String>,
    /// The column holding each row's change time, for runs scoped by `--since`.
    pub changed_column: Option<String>,
}
