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
/// The most leaves one re-read of divergent leaves covers (about 64k rows): what a re-read
/// holds in memory stays bounded when much of a copy diverges.
const MAX_RANGE_LEAVES: usize = 64;
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
    /// Divergences (and planned writes) a stage's report lists; the counts stay whole.
    pub report_limit: usize,
}

impl Default for ScanOptions {
    fn default() -> ScanOptions {
        ScanOptions {
            rows_per_leaf: DEFAULT_ROWS_PER_LEAF,
            progress: Arc::default(),
            expected_rows: Arc::default(),
            report_limit: crate::report::DEFAULT_REPORT_LIMIT,
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
    let jobs = tree_jobs(plan, &schema);
    let pulled = jobs.trees.iter().filter(|j| !j.in_place).count() as u64;
    options.expected_rows.fetch_add(rows * pulled, Ordering::Relaxed);
    debug!(dataset = %plan.name, rows, leaves = boundaries.leaf_count(), pushdown = ?jobs.pushdown, "boundaries chosen");
    let schema = Arc::new(schema);
    let boundaries = Arc::new(boundaries);
    let built = build_trees(plan, &schema, &boundaries, &jobs.trees, options).await?;
    Ok(jobs.assemble(schema, boundaries, built))
}

/// One tree a dataset's comparison needs: which copy, and whether it digests in place.
#[derive(Clone, Debug)]
pub struct TreeJob {
    /// `canonical` or the stage's name.
    pub copy: String,
    /// Its store.
    pub store: Arc<dyn Store>,
    /// A push-down tree, computed where the data lives.
    pub in_place: bool,
    /// The kind of its leaf sums: [`ROW_TREE`] or the push-down kind.
    pub kind: &'static str,
}

impl TreeJob {
    /// The copy's label in the leaf digests: its name, `:kind` suffixed for a push-down tree.
    pub fn label(&self) -> String {
        if self.in_place {
            format!("{}:{}", self.copy, self.kind)
        } else {
            self.copy.clone()
        }
    }
}

/// The trees a dataset's comparison needs: canonical's (one per kind in use) first, then
/// the stages' in plan order.
#[derive(Clone, Debug)]
pub struct TreeJobs {
    /// The trees to build.
    pub trees: Vec<TreeJob>,
    /// Per stage, whether it is compared on push-down trees.
    uses_pushdown: Vec<bool>,
    /// Canonical's push-down kind, if it has one.
    pushdown: Option<&'static str>,
}

/// Which trees a dataset needs: a stage whose store digests leaves in place the same way
/// canonical's does is compared on push-down trees; every other stage on row-digest trees
/// built here.
pub fn tree_jobs(plan: &DatasetPlan, schema: &Schema) -> TreeJobs {
    let pushdown = plan.canonical.pushdown_kind(schema);
    let uses_pushdown: Vec<bool> = plan
        .stages
        .iter()
        .map(|s| pushdown.is_some() && s.store.pushdown_kind(schema) == pushdown)
        .collect();
    let job = |copy: String, store: &Arc<dyn Store>, in_place: bool| TreeJob {
        copy,
        store: store.clone(),
        in_place,
        kind: if in_place {
            pushdown.unwrap_or(ROW_TREE)
        } else {
            ROW_TREE
        },
    };
    let mut trees = Vec::new();
    for in_place in [true, false] {
        if uses_pushdown.contains(&in_place) {
            trees.push(job("canonical".to_owned(), &plan.canonical, in_place));
        }
    }
    for (stage, &p) in plan.stages.iter().zip(&uses_pushdown) {
        trees.push(job(stage.name.clone(), &stage.store, p));
    }
    TreeJobs {
        trees,
        uses_pushdown,
        pushdown,
    }
}

impl TreeJobs {
    /// The prepared comparison from the trees built, one per job in job order.
    pub fn assemble(&self, schema: Arc<Schema>, boundaries: Arc<Boundaries>, mut built: Vec<Tree>) -> Prepared {
        let stages = self.uses_pushdown.len();
        // Canonical's trees come first in `built`, the stages' after them in plan order.
        let stage_trees = built.split_off(built.len() - stages);
        let canonical: Vec<(bool, Tree)> = self.trees.iter().map(|j| j.in_place).zip(built).collect();
        let trees = stage_trees
            .into_iter()
            .zip(&self.uses_pushdown)
            .map(|(tree, &in_place)| {
                let of_kind = canonical
                    .iter()
                    .find(|(p, _)| *p == in_place)
                    .map(|(_, t)| t.clone())
                    .expect("canonical's tree of each kind in use is built");
                (of_kind, tree)
            })
            .collect();
        let kinds = self
            .uses_pushdown
            .iter()
            .map(|&p| if p { self.pushdown.unwrap_or(ROW_TREE) } else { ROW_TREE })
            .collect();
        Prepared {
            schema,
            boundaries,
            trees,
            kinds,
        }
    }
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
        ranges: prepared.boundaries.coalesce_at_most(&leaves, MAX_RANGE_LEAVES),
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
            (sp.canonical_rows, sp.stage_rows),
            (&divergences, divergences.len() as u64),
            options.report_limit,
        ));
    }
    Ok(DatasetReport {
        dataset: plan.name.clone(),
        stages,
    })
}

/// A stage's report from its row-level divergences, before any repair: `rows` of canonical
/// and the stage; `found`, the first divergences found in key order and how many there
/// were in all; at most `limit` of them listed.
pub fn stage_report(
    stage: &str,
    schema: &Schema,
    (canonical_rows, stage_rows): (u64, u64),
    (divergences, total): (&[driftless_core::Divergence], u64),
    limit: usize,
) -> StageReport {
    let key_names = schema.key_names();
    let listed: Vec<DivergenceReport> = divergences
        .iter()
        .take(limit)
        .map(|d| DivergenceReport {
            key: d.key.to_json(&key_names),
            kind: d.kind.as_str().to_owned(),
        })
        .collect();
    StageReport {
        stage: stage.to_owned(),
        status: if total == 0 {
            StageStatus::Consistent
        } else {
            StageStatus::Drift
        },
        canonical_rows,
        stage_rows,
        divergent: total,
        repaired: 0,
        truncated: (listed.len() as u64) < total,
        divergences: listed,
        repair: None,
        duplicate_rows: 0,
    }
}

/// Boundaries at the quantiles of a sample of canonical's keys, about
/// `options.rows_per_leaf` rows per leaf; also returns canonical's row count.
pub(crate) async fn choose_boundaries(
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

/// Builds the jobs' trees concurrently, one task each, in job order.
async fn build_trees(
    plan: &DatasetPlan,
    schema: &Arc<Schema>,
    boundaries: &Arc<Boundaries>,
    jobs: &[TreeJob],
    options: &ScanOptions,
) -> Result<Vec<Tree>, EngineError> {
    try_join_all(jobs.iter().map(|job| {
        let (schema, boundaries, hasher) = (schema.clone(), boundaries.clone(), plan.hasher.clone());
        let (store, in_place) = (job.store.clone(), job.in_place);
        let progress = options.progress.clone();
        let task = tokio::spawn(async move {
            if in_place {
                store.pushdown_tree(&schema, &boundaries).await
            } else {
                store.tree(&schema, &boundaries, &hasher, &progress).await
            }
        });
        let (dataset, label) = (plan.name.clone(), copy_label(&job.copy));
        async move {
            match task.await {
                Ok(tree) => tree.map_err(|error| EngineError::Store {
                    dataset,
                    copy: label,
                    error,
                }),
                Err(e) => Err(EngineError::Task {
                    dataset,
                    copy: label,
                    reason: e.to_string(),
                }),
            }
        }
    }))
    .await
}

/// How errors name a copy: `canonical` or the stage's name.
pub fn copy_label(copy: &str) -> String {
    if copy == "canonical" {
        canonical_label()
    } else {
        stage_label(copy)
    }
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
