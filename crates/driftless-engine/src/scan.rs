//! One dataset's scan: boundaries, trees, comparison, named divergences.
//!
//! The canonical tree is built once per dataset (once per kind of tree: a push-down tree for
//! stages whose store digests in place like canonical's, a row-digest tree for the rest) and
//! every stage is compared against it. Copies are digested concurrently, each on its own
//! task, so a scan of canonical and one stage keeps both cores busy. Only the ranges whose
//! leaves differ are read a second time, always as row digests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use driftless_core::{Boundaries, KeyRange, Tree, merge_join};
use driftless_store::{Progress, Schema, Store};
use futures::future::try_join_all;
use tracing::{debug, info};

pub use crate::error::{EngineError, canonical_label, stage_label};
pub use crate::plan::{CopyRef, DatasetPlan};
use crate::report::{DatasetReport, DivergenceReport, StageReport, StageStatus};

/// Rows a leaf should hold on average. Small leaves make re-reads of divergent ranges
/// cheap; many leaves make trees larger. A thousand rows per leaf keeps both small.
pub const DEFAULT_ROWS_PER_LEAF: u64 = 1000;
/// The kind of a tree whose leaves sum row digests computed here.
pub const ROW_TREE: &str = "rows";
/// The most leaves a tree gets, whatever the row count.
const MAX_LEAVES: u64 = 1 << 16;
/// Sampled keys per leaf: more samples give more even quantiles.
const SAMPLES_PER_LEAF: u64 = 8;

/// Knobs and progress counters of a scan.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Average rows per leaf.
    pub rows_per_leaf: u64,
    /// Rows digested so far, over all copies.
    pub progress: Progress,
    /// Rows the scan expects to digest, known after sampling; for progress bars.
    pub expected_rows: Arc<AtomicU64>,
}

impl Default for ScanOptions {
    fn default() -> ScanOptions {
        ScanOptions {
            rows_per_leaf: DEFAULT_ROWS_PER_LEAF,
            progress: Arc::default(),
            expected_rows: Arc::default(),
        }
    }
}

/// A dataset made ready for comparison: its schema, its boundaries, and per stage the pair
/// of trees to compare (canonical's of the matching kind, and the stage's).
#[derive(Debug)]
pub struct Prepared {
    /// The schema, resolved on canonical and checked on every stage.
    pub schema: Arc<Schema>,
    /// The leaf boundaries every tree shares.
    pub boundaries: Arc<Boundaries>,
    /// Per stage, in plan order: `(canonical tree, stage tree)`.
    pub trees: Vec<(Tree, Tree)>,
    /// Per stage, what the pair's leaf sums are: `rows` (sums of row digests) or the
    /// push-down kind both stores computed in place.
    pub kinds: Vec<&'static str>,
}

/// What one stage's trees say before any row is re-read.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// The key ranges to re-read: divergent leaves, adjacent ones coalesced.
    pub ranges: Vec<KeyRange>,
    /// Rows in canonical.
    pub canonical_rows: u64,
    /// Rows in the stage.
    pub stage_rows: u64,
    /// An upper bound of the divergent keys: the rows of both copies in divergent leaves.
    pub bound: u64,
}

/// Resolves the schema on canonical and checks it on every stage.
pub async fn resolve_schema(plan: &DatasetPlan) -> Result<Schema, EngineError> {
    let schema = plan
        .canonical
        .schema(&plan.key, plan.columns.as_deref())
        .await
        .map_err(|error| EngineError::Store {
            dataset: plan.name.clone(),
            copy: canonical_label(),
            error,
        })?;
    try_join_all(plan.stages.iter().map(|s| async {
        s.store.check_schema(&schema).await.map_err(|error| EngineError::Store {
            dataset: plan.name.clone(),
            copy: stage_label(&s.name),
            error,
        })
    }))
    .await?;
    Ok(schema)
}

/// Chooses boundaries and digests canonical and every stage into trees, concurrently.
pub async fn prepare(plan: &DatasetPlan, schema: Schema, options: &ScanOptions) -> Result<Prepared, EngineError> {
    let (boundaries, rows) = choose_boundaries(plan, &schema, options).await?;
    // A stage whose store digests leaves in place the same way canonical's does is compared
    // on push-down trees; every other stage on row-digest trees built here.
    let pushdown = plan.canonical.pushdown_kind(&schema);
    let uses_pushdown: Vec<bool> = plan
        .stages
        .iter()
        .map(|s| pushdown.is_some() && s.store.pushdown_kind(&schema) == pushdown)
        .collect();
    let mut jobs: Vec<TreeJob> = Vec::new();
    if uses_pushdown.iter().any(|&p| p) {
        jobs.push((canonical_label(), plan.canonical.clone(), true));
    }
    if uses_pushdown.iter().any(|&p| !p) {
        jobs.push((canonical_label(), plan.canonical.clone(), false));
    }
    for (stage, &p) in plan.stages.iter().zip(&uses_pushdown) {
        jobs.push((stage_label(&stage.name), stage.store.clone(), p));
    }
    let pulled = jobs.iter().filter(|j| !j.2).count() as u64;
    options.expected_rows.fetch_add(rows * pulled, Ordering::Relaxed);
    debug!(dataset = %plan.name, rows, leaves = boundaries.leaf_count(), ?pushdown, "boundaries chosen");

    let schema = Arc::new(schema);
    let boundaries = Arc::new(boundaries);
    let mut built = build_trees(plan, &schema, &boundaries, jobs, options).await?;
    // Canonical's trees come first in `built`, the stages' after them in plan order.
    let stage_trees = built.split_off(built.len() - plan.stages.len());
    let kinds = uses_pushdown
        .iter()
        .map(|&p| if p { pushdown.unwrap_or(ROW_TREE) } else { ROW_TREE })
        .collect();
    let trees = stage_trees
        .into_iter()
        .map(|(in_place, tree)| {
            let canonical = built
                .iter()
                .find(|(p, _)| *p == in_place)
                .map(|(_, t)| t.clone())
                .expect("canonical's tree of each kind in use is built");
            (canonical, tree)
        })
        .collect();
    Ok(Prepared {
        schema,
        boundaries,
        trees,
        kinds,
    })
}

/// Compares one stage's tree with canonical's, top-down.
pub fn stage_plan(prepared: &Prepared, stage: usize) -> StagePlan {
    let (canonical, tree) = &prepared.trees[stage];
    let leaves = canonical.diff(tree);
    let bound = leaves
        .iter()
        .map(|&l| canonical.leaves()[l].count + tree.leaves()[l].count)
        .sum();
    StagePlan {
        ranges: prepared.boundaries.coalesce(&leaves),
        canonical_rows: canonical.root().count,
        stage_rows: tree.root().count,
        bound,
    }
}

/// Scans one dataset: every stage compared with canonical. Writes nothing, records nothing.
pub async fn scan_dataset(plan: &DatasetPlan, options: &ScanOptions) -> Result<DatasetReport, EngineError> {
    let schema = resolve_schema(plan).await?;
    let prepared = prepare(plan, schema, options).await?;
    let mut stages = Vec::new();
    for (i, stage) in plan.stages.iter().enumerate() {
        let sp = stage_plan(&prepared, i);
        info!(dataset = %plan.name, stage = %stage.name, ranges = sp.ranges.len(), "comparing divergent ranges");
        let mut divergences = Vec::new();
        for range in sp.ranges {
            divergences.extend(diff_range(plan, &prepared.schema, stage, range, &options.progress).await?);
        }
        stages.push(stage_report(
            &stage.name,
            &prepared.schema,
            sp.canonical_rows,
            sp.stage_rows,
            &divergences,
        ));
    }
    Ok(DatasetReport {
        dataset: plan.name.clone(),
        stages,
    })
}

/// A stage's report from its row-level divergences, before any repair.
pub fn stage_report(
    stage: &str,
    schema: &Schema,
    canonical_rows: u64,
    stage_rows: u64,
    divergences: &[driftless_core::Divergence],
) -> StageReport {
    let key_names = schema.key_names();
    let divergences: Vec<DivergenceReport> = divergences
        .iter()
        .map(|d| DivergenceReport {
            key: d.key.to_json(&key_names),
            kind: d.kind.as_str(),
        })
        .collect();
    StageReport {
        stage: stage.to_owned(),
        status: if divergences.is_empty() {
            StageStatus::Consistent
        } else {
            StageStatus::Drift
        },
        canonical_rows,
        stage_rows,
        divergent: divergences.len() as u64,
        repaired: 0,
        divergences,
        repair: None,
    }
}

/// Boundaries at the quantiles of a sample of canonical's keys, about
/// `options.rows_per_leaf` rows per leaf; also returns canonical's row count.
async fn choose_boundaries(
    plan: &DatasetPlan,
    schema: &Schema,
    options: &ScanOptions,
) -> Result<(Boundaries, u64), EngineError> {
    let store_err = |error| EngineError::Store {
        dataset: plan.name.clone(),
        copy: canonical_label(),
        error,
    };
    // Copies whose re-reads cost per key returned (object listings) ask for smaller leaves.
    let rows_per_leaf = std::iter::once(&plan.canonical)
        .chain(plan.stages.iter().map(|s| &s.store))
        .filter_map(|store| store.leaf_rows())
        .fold(options.rows_per_leaf, u64::min)
        .max(1);
    let leaves_wanted = |rows: u64| (rows / rows_per_leaf).clamp(1, MAX_LEAVES);
    let estimate = plan.canonical.sample_keys(schema, 0).await.map_err(store_err)?.rows;
    let sample_size = (leaves_wanted(estimate) * SAMPLES_PER_LEAF) as usize;
    let sample = plan
        .canonical
        .sample_keys(schema, sample_size)
        .await
        .map_err(store_err)?;
    let boundaries = Boundaries::from_sample(sample.keys, leaves_wanted(sample.rows) as usize).expecting(sample.rows);
    Ok((boundaries, sample.rows))
}

/// One digest job: which copy, its store, and whether it digests in place (push-down).
type TreeJob = (String, Arc<dyn Store>, bool);

/// Runs the digest jobs concurrently, one task each, and returns `(in_place, tree)` in job
/// order.
async fn build_trees(
    plan: &DatasetPlan,
    schema: &Arc<Schema>,
    boundaries: &Arc<Boundaries>,
    jobs: Vec<TreeJob>,
    options: &ScanOptions,
) -> Result<Vec<(bool, Tree)>, EngineError> {
    try_join_all(jobs.into_iter().map(|(label, store, in_place)| {
        let (schema, boundaries, hasher) = (schema.clone(), boundaries.clone(), plan.hasher.clone());
        let progress = options.progress.clone();
        let task = tokio::spawn(async move {
            if in_place {
                store.pushdown_tree(&schema, &boundaries).await
            } else {
                store.tree(&schema, &boundaries, &hasher, &progress).await
            }
        });
        let dataset = plan.name.clone();
        async move {
            let tree = match task.await {
                Ok(tree) => tree.map_err(|error| EngineError::Store {
                    dataset,
                    copy: label,
                    error,
                })?,
                Err(e) => {
                    return Err(EngineError::Task {
                        dataset,
                        copy: label,
                        reason: e.to_string(),
                    });
                }
            };
            Ok((in_place, tree))
        }
    }))
    .await
}

/// Reads one range from canonical and the stage and merge-joins them.
pub async fn diff_range(
    plan: &DatasetPlan,
    schema: &Schema,
    stage: &CopyRef,
    range: KeyRange,
    progress: &Progress,
) -> Result<Vec<driftless_core::Divergence>, EngineError> {
    let err = |copy: String| {
        let dataset = plan.name.clone();
        move |error| EngineError::Store { dataset, copy, error }
    };
    let (canonical_rows, stage_rows) = tokio::try_join!(
        async {
            plan.canonical
                .scan_collect(schema, range.clone(), &plan.hasher, progress)
                .await
                .map_err(err(canonical_label()))
        },
        async {
            stage
                .store
                .scan_collect(schema, range.clone(), &plan.hasher, progress)
                .await
                .map_err(err(stage_label(&stage.name)))
        },
    )?;
    crate::settle::settle(plan, schema, stage, merge_join(canonical_rows, stage_rows)).await
}
