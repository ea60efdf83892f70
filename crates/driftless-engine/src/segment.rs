//! Segments: a run's trees digested by any worker of the fleet, a range of leaves at a time.
//!
//! The worker driving a run plans each dataset once ([`prepare_segmented`]): canonical's
//! boundaries are cut as for a one-shot scan and recorded with the run, and every tree the
//! comparison needs is split into segments of [`SEGMENT_LEAVES`] leaves (a push-down
//! segment is one grouped query over that key range, in the database). Any worker claims a segment, digests
//! that range of that copy while renewing its lease by heartbeat, and records the segment's
//! leaf digests with it done. A segment whose worker died is claimed again once its lease
//! lapses; one whose worker stopped is handed back at once. When every segment is done the
//! driver reads the trees back from the leaf digests and compares them as a one-shot run
//! does, so a run survives the loss of any worker and resumes where it stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use driftless_control::{ControlError, ControlPlane, Segment};
use driftless_core::tree::LeafBuilder;
use driftless_core::{Aggregate, Boundaries, Key, Tree};
use driftless_store::{Progress, Schema};
use futures::StreamExt;
use tracing::{debug, warn};

use crate::context::{RunContext, now_us};
use crate::error::EngineError;
use crate::lease::keep_lease;
use crate::plan::DatasetPlan;
use crate::scan::{Prepared, TreeJob, TreeJobs, choose_boundaries, copy_label, resolve_schema, tree_jobs};
use crate::worker::{WorkContext, Worker, WorkerState};

/// Leaves per segment: about 128k rows at the default leaf size, a few seconds of reading.
pub const SEGMENT_LEAVES: u32 = 128;
/// How long a worker with nothing to claim waits before looking again.
pub const SEGMENT_POLL: Duration = Duration::from_millis(250);
/// How long a worker waits after the control plane failed, before trying again.
pub const CONTROL_RETRY: Duration = Duration::from_secs(1);
/// Datasets' plans a worker keeps resolved (schema, boundaries) between segments.
const PLANS_CACHED: usize = 32;

/// Boundaries as a run records them: each key's encoding after its 4-byte big-endian length.
pub fn encode_boundaries(boundaries: &Boundaries) -> Vec<u8> {
    let mut out = Vec::new();
    for key in boundaries.keys() {
        out.extend_from_slice(&(key.as_bytes().len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
    }
    out
}

/// Recorded boundaries read back, expecting `rows` rows; `None` when they do not decode.
pub fn decode_boundaries(mut bytes: &[u8], rows: u64) -> Option<Boundaries> {
    let mut keys = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let key = rest.get(..len)?;
        keys.push(Key::from_encoded(key.to_vec()).ok()?);
        bytes = &rest[len..];
    }
    if !keys.windows(2).all(|w| w[0] < w[1]) {
        return None;
    }
    Some(Boundaries::from_sorted(keys).expecting(rows))
}

/// The segments of a dataset's trees: `(copy label, first leaf, last leaf)`, every tree
/// cut every [`SEGMENT_LEAVES`] leaves.
pub fn segments_of(jobs: &TreeJobs, leaves: usize) -> Vec<(String, u32, u32)> {
    let last = leaves.saturating_sub(1) as u32;
    jobs.trees
        .iter()
        .flat_map(|job| {
            (0..=last)
                .step_by(SEGMENT_LEAVES as usize)
                .map(move |first| (job.label(), first, (first + SEGMENT_LEAVES - 1).min(last)))
        })
        .collect()
}

/// One dataset of one run, resolved for digesting its segments.
#[derive(Clone, Debug)]
struct Resolved {
    schema: Arc<Schema>,
    boundaries: Arc<Boundaries>,
    jobs: TreeJobs,
}

fn control_err(dataset: &str) -> impl Fn(ControlError) -> EngineError + '_ {
    move |error| EngineError::Control {
        dataset: dataset.to_owned(),
        error,
    }
}

/// Reads a dataset's recorded plan in a run.
async fn recorded(control: &ControlPlane, run_id: &str, dataset: &str) -> Result<Option<Boundaries>, EngineError> {
    let Some((rows, bytes)) = control.plan(run_id, dataset).await.map_err(control_err(dataset))? else {
        return Ok(None);
    };
    decode_boundaries(&bytes, rows.max(0) as u64)
        .map(Some)
        .ok_or_else(|| EngineError::Run {
            run_id: run_id.to_owned(),
            reason: format!("the recorded boundaries of dataset {dataset:?} do not decode"),
        })
}

/// Digests one claimed segment and records its leaves, renewing the lease while it works.
/// `Ok(false)` when the lease was lost before it finished (to another worker, or for want
/// of the control plane for a whole lease).
async fn digest_segment(
    plan: &DatasetPlan,
    resolved: &Resolved,
    segment: &Segment,
    control: &ControlPlane,
    owner: &str,
    lease: Duration,
    progress: &Progress,
) -> Result<bool, EngineError> {
    let Some(job) = resolved.jobs.trees.iter().find(|j| j.label() == segment.copy) else {
        return Err(EngineError::Run {
            run_id: segment.run_id.clone(),
            reason: format!(
                "segment of copy {:?} of dataset {:?} is not a copy this config compares",
                segment.copy, plan.name
            ),
        });
    };
    let work = leaves_of(plan, resolved, job, segment, progress);
    let beat = keep_lease(lease, "a segment's lease", |until| {
        control.renew_segment(segment, owner, until)
    });
    let leaves = tokio::select! {
        leaves = work => leaves?,
        () = beat => return Ok(false),
    };
    control
        .finish_segment(segment, owner, &leaves)
        .await
        .map_err(control_err(&plan.name))
}

/// The leaf aggregates of one segment of one copy.
async fn leaves_of(
    plan: &DatasetPlan,
    resolved: &Resolved,
    job: &TreeJob,
    segment: &Segment,
    progress: &Progress,
) -> Result<Vec<(u64, u128)>, EngineError> {
    let store_err = |error| EngineError::Store {
        dataset: plan.name.clone(),
        copy: copy_label(&job.copy),
        error,
    };
    let (first, last) = (segment.leaf_first as usize, segment.leaf_last as usize);
    let (schema, boundaries) = (&*resolved.schema, &*resolved.boundaries);
    if job.in_place {
        let leaves = job
            .store
            .pushdown_span(schema, boundaries, first, last)
            .await
            .map_err(store_err)?;
        return Ok(leaves.iter().map(|a| (a.count, a.sum)).collect());
    }
    let tree = {
        let mut leaves = LeafBuilder::new(boundaries);
        let mut stream = job
            .store
            .scan(schema, boundaries.span(first, last), &plan.hasher, progress);
        while let Some(batch) = stream.next().await {
            for (key, digest) in batch.map_err(store_err)? {
                leaves.add(&key, digest);
            }
        }
        leaves.finish()
    };
    Ok(tree.leaves()[first..=last.min(tree.leaves().len() - 1)]
        .iter()
        .map(|a| (a.count, a.sum))
        .collect())
}

/// A dataset's trees for a run, digested in segments by the fleet: planned (or read back
/// when the run was planned before), this run's segments worked on here as well, and the
/// trees read back from the leaf digests once every segment is done.
pub async fn prepare_segmented(plan: &DatasetPlan, schema: Schema, ctx: &RunContext) -> Result<Prepared, EngineError> {
    let jobs = tree_jobs(plan, &schema);
    let boundaries = match recorded(&ctx.control, &ctx.run_id, &plan.name).await? {
        Some(b) => b,
        None => {
            let (b, rows) = choose_boundaries(plan, &schema, &ctx.options).await?;
            let segments = segments_of(&jobs, b.leaf_count());
            debug!(dataset = %plan.name, segments = segments.len(), "planned");
            ctx.control
                .save_plan(&ctx.run_id, &plan.name, rows as i64, &encode_boundaries(&b), &segments)
                .await
                .map_err(control_err(&plan.name))?;
            recorded(&ctx.control, &ctx.run_id, &plan.name).await?.unwrap_or(b)
        }
    };
    let resolved = Resolved {
        schema: Arc::new(schema),
        boundaries: Arc::new(boundaries),
        jobs,
    };
    let lease = Duration::from_secs(ctx.settings.lease_secs.max(1));
    loop {
        if ctx.shutdown.is_stopping() {
            return Err(EngineError::Interrupted("interrupted while digesting segments".into()));
        }
        let now = now_us();
        let until = now + lease.as_micros() as i64;
        let claimed = ctx
            .control
            .claim_segment(Some(&ctx.run_id), &ctx.config_digest, &ctx.owner, now, until)
            .await
            .map_err(control_err(&plan.name))?;
        match claimed {
            Some(segment) if segment.dataset == plan.name => {
                digest_segment(
                    plan,
                    &resolved,
                    &segment,
                    &ctx.control,
                    &ctx.owner,
                    lease,
                    &ctx.options.progress,
                )
                .await?;
            }
            Some(other) => {
                // Another dataset of this run: hand it back for its own turn.
                ctx.control
                    .release_segment(&other, &ctx.owner)
                    .await
                    .map_err(control_err(&plan.name))?;
                if open_segments(ctx, &plan.name).await? == 0 {
                    break;
                }
                tokio::time::sleep(SEGMENT_POLL).await;
            }
            None if open_segments(ctx, &plan.name).await? == 0 => break,
            None => tokio::time::sleep(SEGMENT_POLL).await,
        }
    }
    read_trees(ctx, &plan.name, resolved).await
}

async fn open_segments(ctx: &RunContext, dataset: &str) -> Result<i64, EngineError> {
    let (open, _) = ctx
        .control
        .segments_open(&ctx.run_id, dataset)
        .await
        .map_err(control_err(dataset))?;
    Ok(open)
}

/// The trees of a dataset whose segments are all done, from their leaf digests.
async fn read_trees(ctx: &RunContext, dataset: &str, resolved: Resolved) -> Result<Prepared, EngineError> {
    let leaves = resolved.boundaries.leaf_count();
    let mut built = Vec::new();
    for job in &resolved.jobs.trees {
        let recorded = ctx
            .control
            .leaves(&ctx.run_id, dataset, &job.label())
            .await
            .map_err(control_err(dataset))?;
        if recorded.len() != leaves {
            return Err(EngineError::Run {
                run_id: ctx.run_id.clone(),
                reason: format!(
                    "dataset {dataset:?}, copy {:?}: {} of {leaves} leaf digests recorded",
                    job.label(),
                    recorded.len()
                ),
            });
        }
        built.push(Tree::from_leaves(
            recorded
                .into_iter()
                .map(|(count, sum)| Aggregate { count, sum })
                .collect(),
        ));
    }
    Ok(resolved.jobs.assemble(resolved.schema, resolved.boundaries, built))
}

/// A fleet worker's segment digester: claims segments of any running run submitted with
/// this worker's config, one per step. A segment that fails here (a copy unreachable) is
/// handed back and logged, not fatal to the worker: the run's driver meets the same error
/// when it takes the segment, and fails the run with it.
#[derive(Debug)]
pub struct SegmentWorker {
    /// The config's datasets, opened for reading.
    pub plans: HashMap<String, DatasetPlan>,
    /// The control plane.
    pub control: ControlPlane,
    /// This worker: `user@host/pid`.
    pub owner: String,
    /// Hex BLAKE3 of this worker's config: only runs submitted with it are worked on.
    pub config_digest: String,
    /// How long a claim holds before it must be renewed.
    pub lease: Duration,
    /// Rows digested, for logs.
    pub progress: Progress,
    resolved: HashMap<(String, String), Resolved>,
}

impl SegmentWorker {
    /// A digester over `plans`.
    pub fn new(
        plans: HashMap<String, DatasetPlan>,
        control: ControlPlane,
        owner: String,
        config_digest: String,
        lease: Duration,
    ) -> SegmentWorker {
        SegmentWorker {
            plans,
            control,
            owner,
            config_digest,
            lease,
            progress: Progress::default(),
            resolved: HashMap::new(),
        }
    }

    async fn digest(&mut self, plan: &DatasetPlan, segment: &Segment) -> Result<bool, EngineError> {
        self.control
            .add_worker(&segment.run_id, &self.owner)
            .await
            .map_err(control_err(&plan.name))?;
        let resolved = self.resolve(plan, &segment.run_id).await?;
        digest_segment(
            plan,
            &resolved,
            segment,
            &self.control,
            &self.owner,
            self.lease,
            &self.progress,
        )
        .await
    }

    async fn resolve(&mut self, plan: &DatasetPlan, run_id: &str) -> Result<Resolved, EngineError> {
        let id = (run_id.to_owned(), plan.name.clone());
        if let Some(r) = self.resolved.get(&id) {
            return Ok(r.clone());
        }
        let schema = resolve_schema(plan).await?;
        let boundaries = recorded(&self.control, run_id, &plan.name)
            .await?
            .ok_or_else(|| EngineError::Run {
                run_id: run_id.to_owned(),
                reason: format!("dataset {:?} has segments but no recorded plan", plan.name),
            })?;
        let resolved = Resolved {
            jobs: tree_jobs(plan, &schema),
            schema: Arc::new(schema),
            boundaries: Arc::new(boundaries),
        };
        if self.resolved.len() >= PLANS_CACHED {
            self.resolved.clear();
        }
        self.resolved.insert(id, resolved.clone());
        Ok(resolved)
    }
}

#[async_trait]
impl Worker for SegmentWorker {
    fn name(&self) -> String {
        "segments".to_owned()
    }

    async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
        let now = now_us();
        let until = now + self.lease.as_micros() as i64;
        let claimed = match self
            .control
            .claim_segment(None, &self.config_digest, &self.owner, now, until)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                // The control plane is out of reach (restarting): try again later.
                warn!(error = %e, "could not claim a segment; trying again");
                return Ok(WorkerState::Idle(CONTROL_RETRY));
            }
        };
        let Some(segment) = claimed else {
            return Ok(WorkerState::Idle(SEGMENT_POLL));
        };
        let Some(plan) = self.plans.get(&segment.dataset).cloned() else {
            self.control
                .release_segment(&segment, &self.owner)
                .await
                .map_err(control_err("(fleet)"))?;
            return Ok(WorkerState::Idle(SEGMENT_POLL));
        };
        match self.digest(&plan, &segment).await {
            Ok(done) => {
                debug!(run = %segment.run_id, dataset = %segment.dataset, copy = %segment.copy,
                    first = segment.leaf_first, done, "segment");
                Ok(WorkerState::Busy)
            }
            Err(e) => {
                warn!(run = %segment.run_id, error = %e, "a segment failed; handed back");
                self.control
                    .release_segment(&segment, &self.owner)
                    .await
                    .map_err(control_err("(fleet)"))?;
                Ok(WorkerState::Idle(SEGMENT_POLL * 4))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_read_back_and_garbage_is_refused() {
        let keys: Vec<Key> = ["apple", "kiwi", "pear"].into_iter().map(Key::text).collect();
        let b = Boundaries::from_sorted(keys).expecting(400);
        let bytes = encode_boundaries(&b);
        assert_eq!(decode_boundaries(&bytes, 400), Some(b));
        assert_eq!(decode_boundaries(&[], 7).map(|b| b.leaf_count()), Some(1));
        assert_eq!(decode_boundaries(&bytes[..bytes.len() - 1], 400), None);
        assert_eq!(decode_boundaries(&[0, 0, 0, 9, 1], 400), None);
    }
}
