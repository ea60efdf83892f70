//! Detection of one stage as a worker: each step reads one range (or one batch of chosen
//! keys) from both copies, names its divergences and queues them. With backpressure on, a
//! step that leaves the run's live queue for the stage at the high watermark throttles the
//! worker until a repairer has drained it to the low one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use driftless_control::{ControlError, Detected};
use driftless_core::{Divergence, DivergenceKind, Key, KeyDivergence, KeyRange, by_key};
use driftless_store::{Progress, Schema};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::task::JoinHandle;
use tracing::info;

use crate::context::{RunContext, now_us};
use crate::detect::{diff_keys, mark_duplicates};
use crate::error::EngineError;
use crate::plan::{CopyRef, DatasetPlan};
use crate::scan::diff_range;
use crate::worker::{Latch, WorkContext, Worker, WorkerState};

/// Keys a scoped run compares per point-read batch.
const KEY_BATCH: usize = 1000;
/// Chunks compared at once by a detection: reads of divergent ranges wait on the copies
/// (a listing, a query), so a few in flight keep both copies busy. Each holds at most one
/// chunk's divergences.
const COMPARES_IN_FLIGHT: usize = 4;
/// How often paused detection looks at the queue depth again (sooner when a repairer
/// signals).
const BACKPRESSURE_POLL: Duration = Duration::from_millis(50);

/// Where a stage's divergences are looked for.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Divergent leaves of the trees, coalesced.
    Ranges(Vec<KeyRange>),
    /// Chosen keys, compared point by point.
    Keys(Vec<Key>),
}

/// One step of detection or verification: a range, or a batch of keys.
#[derive(Debug)]
pub(crate) enum Chunk<'a> {
    Range(&'a KeyRange),
    Keys(&'a [Key]),
}

/// The steps `source` is read in: each range, or batches of [`KEY_BATCH`] keys.
pub(crate) fn chunks(source: &Source) -> Vec<Chunk<'_>> {
    match source {
        Source::Ranges(ranges) => ranges.iter().map(Chunk::Range).collect(),
        Source::Keys(keys) => keys.chunks(KEY_BATCH).map(Chunk::Keys).collect(),
    }
}

/// The row-level divergences of every chunk of `source`, in order, with up to
/// [`COMPARES_IN_FLIGHT`] chunks read at once.
pub(crate) fn compared<'a>(
    plan: &'a DatasetPlan,
    schema: &'a Schema,
    stage: &'a CopyRef,
    source: &'a Source,
    progress: &'a Progress,
) -> BoxStream<'a, Result<Vec<Divergence>, EngineError>> {
    futures::stream::iter(chunks(source))
        .map(move |chunk| async move { compare_chunk(plan, schema, stage, &chunk, progress).await })
        .buffered(COMPARES_IN_FLIGHT)
        .boxed()
}

/// The row-level divergences of one chunk, read from both copies.
pub(crate) async fn compare_chunk(
    plan: &DatasetPlan,
    schema: &Schema,
    stage: &CopyRef,
    chunk: &Chunk<'_>,
    progress: &Progress,
) -> Result<Vec<Divergence>, EngineError> {
    match chunk {
        Chunk::Range(range) => diff_range(plan, schema, stage, (*range).clone(), progress).await,
        Chunk::Keys(keys) => diff_keys(plan, schema, stage, keys).await,
    }
}

/// What detection of one stage found, in memory bounded by the report limit: counts of
/// everything, the first divergences and keys in key order (what a report lists), and the
/// keys themselves only when a repair needs them.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Row-level divergences found.
    pub(crate) divergent: u64,
    /// Divergent keys found.
    pub(crate) key_count: u64,
    /// Divergent keys the stage holds and canonical does not.
    pub(crate) stage_only_keys: u64,
    /// Row-level divergences that are duplicate commits.
    pub(crate) duplicates: u64,
    /// The first row-level divergences, at most the report limit.
    pub(crate) divergences: Vec<Divergence>,
    /// The first divergent keys, at most the report limit.
    pub(crate) keys: Vec<KeyDivergence>,
    /// Every divergent key's encoding, kept only for a repair (`None` otherwise).
    pub(crate) all_keys: Option<HashSet<Vec<u8>>>,
    /// Keys with more than one row-level divergence, and how many they have.
    pub(crate) multi: HashMap<Vec<u8>, u64>,
    /// Time detection was paused by backpressure.
    pub(crate) paused: Duration,
}

impl Found {
    /// Nothing found yet; `keep_keys` when a repair will ask which keys were found.
    pub(crate) fn new(keep_keys: bool) -> Found {
        Found {
            all_keys: keep_keys.then(HashSet::new),
            ..Found::default()
        }
    }

    /// Adds one chunk's findings, listing at most `limit` of each.
    fn add(&mut self, divergences: Vec<Divergence>, keys: Vec<KeyDivergence>, limit: usize) {
        self.divergent += divergences.len() as u64;
        self.key_count += keys.len() as u64;
        self.stage_only_keys += keys.iter().filter(|k| k.canonical.is_none()).count() as u64;
        let mut per_key: HashMap<&[u8], u64> = HashMap::new();
        for d in &divergences {
            self.duplicates += u64::from(d.kind == DivergenceKind::Duplicate);
            *per_key.entry(d.key.as_bytes()).or_default() += 1;
        }
        for (key, n) in per_key.into_iter().filter(|(_, n)| *n > 1) {
            self.multi.insert(key.to_vec(), n);
        }
        if let Some(all) = self.all_keys.as_mut() {
            all.extend(keys.iter().map(|k| k.key.as_bytes().to_vec()));
        }
        let room = limit.saturating_sub(self.divergences.len());
        self.divergences.extend(divergences.into_iter().take(room));
        let room = limit.saturating_sub(self.keys.len());
        self.keys.extend(keys.into_iter().take(room));
    }

    /// Row-level divergences of the `repaired` keys that this detection found.
    pub(crate) fn repaired_rows(&self, repaired: &HashSet<Vec<u8>>) -> u64 {
        let Some(all) = &self.all_keys else {
            return 0;
        };
        repaired
            .iter()
            .filter(|k| all.contains(*k))
            .map(|k| self.multi.get(k).copied().unwrap_or(1))
            .sum()
    }
}

/// Detection of one stage, step by step.
pub(crate) struct DetectWorker<'a> {
    pub(crate) plan: &'a DatasetPlan,
    pub(crate) ctx: &'a RunContext,
    pub(crate) schema: &'a Schema,
    pub(crate) stage: &'a CopyRef,
    /// Each chunk's divergences, compared ahead ([`compared`]).
    pub(crate) compared: BoxStream<'a, Result<Vec<Divergence>, EngineError>>,
    /// The previous chunk's enqueue, still running while the next chunk is compared.
    pub(crate) queueing: Option<JoinHandle<Result<(), ControlError>>>,
    /// Stage keys repeating a commit id: reported as duplicates.
    pub(crate) duplicates: &'a HashSet<Key>,
    /// Whether a repairer drains the queue meanwhile, so that detection may pause.
    pub(crate) pausable: bool,
    /// Raised when the last chunk is queued.
    pub(crate) finished: Latch,
    /// When the current pause began.
    pub(crate) paused_since: Option<Instant>,
    pub(crate) found: Found,
}

#[async_trait]
impl Worker for DetectWorker<'_> {
    fn name(&self) -> String {
        format!("detect {:?}/{:?}", self.plan.name, self.stage.name)
    }

    async fn work(&mut self, cx: &WorkContext) -> Result<WorkerState, EngineError> {
        if let Some(since) = self.paused_since {
            if self.live_depth().await? > self.ctx.settings.low_watermark {
                return Ok(WorkerState::Throttled(BACKPRESSURE_POLL));
            }
            self.found.paused += since.elapsed();
            self.paused_since = None;
        }
        let Some(divergences) = self.compared.next().await else {
            self.queued().await?;
            self.finished.raise();
            cx.signal();
            return Ok(WorkerState::Done);
        };
        let queued = self.step(divergences?).await?;
        if queued {
            // A repairer may be waiting for entries.
            cx.signal();
            if self.pausable && self.live_depth().await? >= self.ctx.settings.high_watermark {
                info!(dataset = %self.plan.name, stage = %self.stage.name, "queue above the high watermark; detection paused");
                self.paused_since = Some(Instant::now());
            }
        }
        Ok(WorkerState::Busy)
    }
}

impl DetectWorker<'_> {
    /// Queues one chunk's divergent keys once the previous chunk's are queued, and returns
    /// while they are written, so the next chunk is compared meanwhile (with backpressure on,
    /// once they are written). Whether entries reached the queue meanwhile.
    async fn step(&mut self, mut divergences: Vec<Divergence>) -> Result<bool, EngineError> {
        let (plan, ctx) = (self.plan, self.ctx);
        let key_names = self.schema.key_names();
        let mut keys = by_key(&divergences);
        mark_duplicates(&mut divergences, &mut keys, self.duplicates);
        let queued: Vec<Detected> = keys
            .iter()
            .map(|k| Detected {
                key_bytes: k.key.as_bytes().to_vec(),
                key_json: k.key.to_json(&key_names).to_string(),
                kind: k.kind.as_str().to_owned(),
                canonical_digest: k.canonical,
                stage_count: k.stage.count,
                stage_sum: k.stage.sum,
            })
            .collect();
        let before = self.queued().await?;
        if !queued.is_empty() {
            let (control, run_id) = (ctx.control.clone(), ctx.run_id.clone());
            let (dataset, stage) = (plan.name.clone(), self.stage.name.clone());
            self.queueing = Some(tokio::spawn(async move {
                control.enqueue(&run_id, &dataset, &stage, now_us(), &queued).await
            }));
        }
        self.found.add(divergences, keys, ctx.options.report_limit);
        // Backpressure looks at the queue after every chunk: no writing behind it then.
        if self.pausable {
            return Ok(self.queued().await? || before);
        }
        Ok(before)
    }

    /// Waits for the enqueue in flight, if any; whether there was one.
    async fn queued(&mut self) -> Result<bool, EngineError> {
        let Some(task) = self.queueing.take() else {
            return Ok(false);
        };
        let control_error = |error| EngineError::Control {
            dataset: self.plan.name.clone(),
            error,
        };
        match task.await {
            Ok(result) => result.map_err(control_error).map(|()| true),
            Err(e) => Err(EngineError::Worker {
                worker: self.name(),
                reason: format!("queueing a chunk's divergences failed: {e}"),
            }),
        }
    }

    /// This run's live queue depth for the stage. (`&mut`: the compare stream is `Send`
    /// but not `Sync`, so a shared borrow of the worker cannot be held across an await.)
    async fn live_depth(&mut self) -> Result<u64, EngineError> {
        let (ctx, plan, stage) = (self.ctx, self.plan, self.stage);
        ctx.control
            .run_backlog(&ctx.run_id, &plan.name, &stage.name)
            .await
            .map(|(n, _)| n)
            .map_err(|error| EngineError::Control {
                dataset: plan.name.clone(),
                error,
            })
    }
}
