//! A run of one dataset against the control plane: detect, queue, and (for `repair`) repair
//! stage by stage in channel order.
//!
//! Per stage, in config order:
//! 1. **Detect.** The tree walk names the ranges to re-read (or, for a scoped run, the
//!    chosen keys are compared point by point); each range's divergences are queued as they
//!    are found. Duplicate commits are reclassified first.
//! 2. **Breaker.** A stage's writes are held when its divergent keys exceed its
//!    `max_repairs` or `max_divergence_ratio`, until `driftless repair --approve RUN_ID`.
//!    When the trees already bound the divergent keys under the limit (the rows of both
//!    copies in divergent leaves), repair starts while detection goes on; otherwise after
//!    detection has counted the keys.
//! 3. **Repair** ([`crate::repair`]) while detection streams: detection pauses when the
//!    stage's live queue depth in this run reaches the high watermark and resumes under the
//!    low one (backpressure), and writes keep to the stage's pacer.
//! 4. **Verify.** The ranges (or keys) are read again from both copies; every key still
//!    divergent must be one the repair knowingly left (a newer write, a dead entry). A failed
//!    check, or a held stage, halts the later stages: they are detected and queued, not
//!    written.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_core::{DivergenceKind, Key, LogicalType, by_key};
use driftless_store::{Column, Schema};
use tracing::info;

use crate::compensate::{Compiled, compile};
use crate::context::{RunContext, now_us};
use crate::detect::{duplicate_commits, scoped_keys};
use crate::detector::{DetectWorker, Found, Source, chunks, compare_chunk, compared};
use crate::error::{EngineError, canonical_label, stage_label};
use crate::outcome::{record_metrics, repair_report};
use crate::pace::Pacer;
use crate::plan::{CopyRef, DatasetPlan};
use crate::policy::RepairMode;
use crate::repair::{RepairStats, RepairWorker, Repairer};
use crate::report::{DatasetReport, Mode, RepairStatus, StageReport};
use crate::resume::add_earlier_repairs;
use crate::scan::{Prepared, ROW_TREE, prepare, resolve_schema, stage_plan, stage_report};
use crate::segment::prepare_segmented;
use crate::supervisor::Supervisor;
use crate::worker::Latch;

/// Records every tree's leaf aggregates in the control plane: the drift history of each
/// range, run by run.
async fn record_leaves(plan: &DatasetPlan, ctx: &RunContext, prepared: &Prepared) -> Result<(), EngineError> {
    let label = |copy: &str, kind: &str| {
        if kind == ROW_TREE {
            copy.to_owned()
        } else {
            format!("{copy}:{kind}")
        }
    };
    let mut done = HashSet::new();
    for ((canonical, tree), (stage, kind)) in prepared.trees.iter().zip(plan.stages.iter().zip(&prepared.kinds)) {
        for (copy, t) in [(label("canonical", kind), canonical), (label(&stage.name, kind), tree)] {
            if !done.insert(copy.clone()) {
                continue;
            }
            let leaves: Vec<(u64, u128)> = t.leaves().iter().map(|a| (a.count, a.sum)).collect();
            ctx.control
                .record_leaves(&ctx.run_id, &plan.name, &copy, &leaves)
                .await
                .map_err(|error| EngineError::Control {
                    dataset: plan.name.clone(),
                    error,
                })?;
        }
    }
    Ok(())
}

/// Whether a lease owner (`user@host/pid`) is a process of this host that no longer exists.
/// Owners on other hosts, or whose process lives, are never judged dead: their leases
/// expire on their own.
pub fn owner_is_dead(owner: &str, me: &str) -> bool {
    let host_of = |o: &str| o.rsplit_once('/').map(|(who, _)| who.to_owned());
    let (Some(theirs), Some(mine)) = (host_of(owner), host_of(me)) else {
        return false;
    };
    let Some(pid) = owner.rsplit_once('/').and_then(|(_, pid)| pid.parse::<u32>().ok()) else {
        return false;
    };
    theirs == mine && owner != me && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs one dataset: detection for `scan`, detection and repair for `repair`.
pub async fn run_dataset(plan: &DatasetPlan, ctx: &RunContext) -> Result<DatasetReport, EngineError> {
    let started = Instant::now();
    let schema = Arc::new(resolve_schema(plan).await?);
    let prepared = if ctx.scope.is_scoped() {
        None
    } else if ctx.segmented {
        Some(prepare_segmented(plan, (*schema).clone(), ctx).await?)
    } else {
        Some(prepare(plan, (*schema).clone(), &ctx.options).await?)
    };
    if let Some(p) = &prepared {
        let canonical_rows = p.trees.first().map_or(0, |(c, _)| c.root().count);
        ctx.metrics.add_rows_digested(&plan.name, "canonical", canonical_rows);
        // Segments record their own leaves as they are done.
        if !ctx.segmented {
            record_leaves(plan, ctx, p).await?;
        }
    }
    let mut halted: Option<String> = None;
    let mut stages = Vec::new();
    for (i, stage) in plan.stages.iter().enumerate() {
        let report = run_stage(plan, ctx, &schema, prepared.as_ref(), i, halted.as_deref()).await?;
        if halted.is_none()
            && let Some(r) = &report.repair
            && r.status.halts_later_stages()
        {
            halted = Some(format!(
                "stage {:?} is {}",
                stage.name,
                r.status.as_str().replace('_', " ")
            ));
        }
        stages.push(report);
    }
    ctx.metrics.observe_run_duration(&plan.name, started.elapsed());
    Ok(DatasetReport {
        dataset: plan.name.clone(),
        stages,
    })
}

async fn run_stage(
    plan: &DatasetPlan,
    ctx: &RunContext,
    schema: &Arc<Schema>,
    prepared: Option<&Prepared>,
    index: usize,
    halted: Option<&str>,
) -> Result<StageReport, EngineError> {
    let stage = &plan.stages[index];
    let policy = &stage.policy;
    let control_err = |error| EngineError::Control {
        dataset: plan.name.clone(),
        error,
    };
    let (source, canonical_rows, stage_rows, bound) = match prepared {
        Some(p) => {
            let sp = stage_plan(p, index);
            ctx.metrics.add_rows_digested(&plan.name, &stage.name, sp.stage_rows);
            (Source::Ranges(sp.ranges), sp.canonical_rows, sp.stage_rows, sp.bound)
        }
        None => {
            let keys = scoped_keys(plan, schema, stage, &ctx.scope).await?;
            let (c, s) = row_counts(plan, schema, stage).await?;
            let bound = keys.len() as u64;
            (Source::Keys(keys), c, s, bound)
        }
    };
    let duplicates = duplicate_commits(plan, schema, stage).await?;
    let freed = ctx
        .control
        .release_orphans(
            &plan.name,
            &stage.name,
            now_us(),
            ctx.settings.backoff.max_attempts,
            |owner| owner_is_dead(owner, &ctx.owner),
        )
        .await
        .map_err(control_err)?;
    if freed > 0 {
        info!(dataset = %plan.name, stage = %stage.name, freed, "freed leases of a repairer that died on this host");
    }

    let repairing = ctx.mode == Mode::Repair;
    let writes = repairing && !ctx.dry_run && policy.mode != RepairMode::Report && halted.is_none();
    let approved = ctx
        .approved
        .get(&(plan.name.clone(), stage.name.clone()))
        .copied()
        .unwrap_or(0);
    let limit = policy.limit(canonical_rows.max(stage_rows)).max(approved);
    let early = writes && bound <= limit;
    info!(dataset = %plan.name, stage = %stage.name, bound, limit, early, "detecting");

    let setup = if writes {
        Some(RepairSetup::new(plan, schema, stage).await?)
    } else {
        None
    };
    let pacer = if writes {
        Some(Pacer::new(policy.pace.clone()).map_err(|e| EngineError::Input {
            dataset: plan.name.clone(),
            reason: format!("stage {:?}: {e}", stage.name),
        })?)
    } else {
        None
    };
    let repairer = match (&setup, &pacer) {
        (Some(s), Some(pacer)) => Some(s.repairer(plan, stage, schema, ctx, pacer)),
        _ => None,
    };

    let detected = Latch::default();
    let mut detector = DetectWorker {
        plan,
        ctx,
        schema,
        stage,
        compared: compared(plan, schema, stage, &source, &ctx.options.progress),
        queueing: None,
        duplicates: &duplicates,
        pausable: early,
        finished: detected.clone(),
        paused_since: None,
        found: Found::new(repairing),
    };
    let mut repair_worker = repairer.map(|repairer| RepairWorker {
        repairer,
        detected,
        stats: RepairStats::default(),
        reaped_at: None,
    });
    let mut supervisor = Supervisor::new(&ctx.shutdown);
    supervisor.add(&mut detector);
    let repairs_early = early && repair_worker.is_some();
    if let Some(w) = repair_worker.as_mut().filter(|_| early) {
        supervisor.add(w);
    }
    supervisor.run().await?;
    let found = detector.found;
    let mut stats = repair_worker
        .as_mut()
        .filter(|_| repairs_early)
        .map(|w| std::mem::take(&mut w.stats));
    if !ctx.scope.is_scoped() {
        ctx.control
            .resolve_unseen(&ctx.run_id, &plan.name, &stage.name, now_us())
            .await
            .map_err(control_err)?;
    }

    let key_count = found.key_count;
    // Keys in either copy: canonical's rows and the keys only the stage holds.
    let union = canonical_rows.saturating_add(found.stage_only_keys);
    let limit = policy.limit(union).max(approved);
    let mut held = None;
    if let (Some(w), None) = (repair_worker.as_mut(), &stats) {
        if key_count > limit {
            held = Some(format!(
                "{key_count} divergent keys exceed the breaker's limit of {limit} ({}); nothing was written. \
                 Approve with `driftless repair --approve {}`",
                limit_reason(policy, union),
                ctx.run_id
            ));
        } else {
            let mut supervisor = Supervisor::new(&ctx.shutdown);
            supervisor.add(w);
            supervisor.run().await?;
            stats = Some(std::mem::take(&mut w.stats));
        }
    }

    let mut status = if let Some(h) = halted.filter(|_| repairing) {
        held = Some(format!("halted: {h}; detected and queued, not written"));
        RepairStatus::Halted
    } else if held.is_some() {
        RepairStatus::Held
    } else if ctx.dry_run {
        RepairStatus::DryRun
    } else if policy.mode == RepairMode::Report {
        RepairStatus::Report
    } else {
        RepairStatus::Repaired
    };

    let mut stats = stats.unwrap_or_default();
    let dead = if repairing {
        ctx.control
            .entries(&plan.name, &stage.name, "dead")
            .await
            .map_err(control_err)?
    } else {
        Vec::new()
    };
    if repairing && status == RepairStatus::Repaired {
        // Entries parked dead (in this run or before) are known and reported; they do not
        // fail the check.
        stats.left.extend(dead.iter().map(|e| e.key_bytes.clone()));
        let (reason, still) = verify(plan, schema, stage, &source, &stats).await?;
        // A key written but found divergent again is not repaired, whatever its write did.
        stats.repaired.retain(|k| !still.contains(k));
        match reason {
            Some(reason) => {
                status = RepairStatus::VerifyFailed;
                held = Some(reason);
            }
            None if !stats.left.is_empty() => status = RepairStatus::Incomplete,
            None => {}
        }
    }

    let limit = ctx.options.report_limit;
    let mut report = stage_report(
        &stage.name,
        schema,
        (canonical_rows, stage_rows),
        (&found.divergences, found.divergent),
        limit,
    );
    // Repaired keys count as the row-level divergences they were.
    report.repaired = found.repaired_rows(&stats.repaired);
    report.duplicate_rows = found.duplicates;
    let held_back = found.paused + pacer.as_ref().map_or(Duration::ZERO, Pacer::held_back);
    if repairing {
        report.status = status.into();
        report.repair = Some(repair_report(
            schema, stage, &found, &stats, dead, status, held, held_back, limit,
        ));
        report.truncated |= found.key_count > limit as u64 && status.plans_only();
    }
    if ctx.segmented && repairing {
        add_earlier_repairs(ctx, &plan.name, &found, &mut report).await?;
    }
    record_metrics(plan, ctx, stage, &report, &found, &stats, held_back).await?;
    Ok(report)
}

/// Canonical's and the stage's row counts, for a scoped run that builds no trees.
async fn row_counts(plan: &DatasetPlan, schema: &Schema, stage: &CopyRef) -> Result<(u64, u64), EngineError> {
    let c = plan
        .canonical
        .sample_keys(schema, 0)
        .await
        .map_err(|error| EngineError::Store {
            dataset: plan.name.clone(),
            copy: canonical_label(),
            error,
        })?
        .rows;
    let s = stage
        .store
        .sample_keys(schema, 0)
        .await
        .map_err(|error| EngineError::Store {
            dataset: plan.name.clone(),
            copy: stage_label(&stage.name),
            error,
        })?
        .rows;
    Ok((c, s))
}

fn limit_reason(policy: &crate::policy::StagePolicy, keys: u64) -> String {
    let mut parts = Vec::new();
    if let Some(r) = policy.max_divergence_ratio {
        parts.push(format!("max_divergence_ratio {r} of {keys} keys in either copy"));
    }
    if let Some(m) = policy.max_repairs {
        parts.push(format!("max_repairs {m}"));
    }
    parts.join(", ")
}

/// Re-reads what was repaired: the keys still divergent that the repair did not knowingly
/// leave, and `Some(reason)` when there are any.
async fn verify(
    plan: &DatasetPlan,
    schema: &Schema,
    stage: &CopyRef,
    source: &Source,
    stats: &RepairStats,
) -> Result<(Option<String>, HashSet<Vec<u8>>), EngineError> {
    let mut remaining = Vec::new();
    let progress = Arc::default();
    for chunk in chunks(source) {
        remaining.extend(compare_chunk(plan, schema, stage, &chunk, &progress).await?);
    }
    let unexpected: Vec<Key> = by_key(&remaining)
        .into_iter()
        .filter(|k| !stats.left.contains(k.key.as_bytes()))
        .map(|k| k.key)
        .collect();
    let still: HashSet<Vec<u8>> = unexpected.iter().map(|k| k.as_bytes().to_vec()).collect();
    if unexpected.is_empty() {
        return Ok((None, still));
    }
    let shown: Vec<String> = unexpected
        .iter()
        .take(10)
        .map(|k| k.to_json(&schema.key_names()).to_string())
        .collect();
    let reason = format!(
        "after repair, {} key(s) still differ from canonical (e.g. {}); later stages are halted",
        unexpected.len(),
        shown.join(", ")
    );
    Ok((Some(reason), still))
}

/// What a repair of one stage needs besides its policy: the columns it writes and reads,
/// and the compiled compensating statements.
#[derive(Debug)]
struct RepairSetup {
    write: Schema,
    fetch: Schema,
    statements: BTreeMap<DivergenceKind, Compiled>,
}

impl RepairSetup {
    async fn new(plan: &DatasetPlan, schema: &Schema, stage: &CopyRef) -> Result<RepairSetup, EngineError> {
        let store_err = |copy: String| {
            let dataset = plan.name.clone();
            move |error| EngineError::Store { dataset, copy, error }
        };
        if !stage.store.writable() {
            return Err(EngineError::Input {
                dataset: plan.name.clone(),
                reason: format!(
                    "stage {:?} is a {} copy, which driftless cannot write yet; give it \
                     repair = {{ mode = \"report\" }} to detect and report its drift only",
                    stage.name,
                    stage.store.kind()
                ),
            });
        }
        let key = schema.key_names();
        let canonical_all = plan
            .canonical
            .schema(&key, None)
            .await
            .map_err(store_err(canonical_label()))?;
        let stage_all = stage
            .store
            .schema(&key, None)
            .await
            .map_err(store_err(stage_label(&stage.name)))?;
        let values: Vec<Column> = canonical_all
            .values
            .iter()
            .filter(|c| stage_all.values.iter().any(|s| s.name == c.name))
            .cloned()
            .collect();
        let write = Schema {
            key: schema.key.clone(),
            values,
        };
        // Between two copies of the same kind, overwrites carry values as the store holds
        // them (an untyped read); otherwise, and as a compensating statement's parameters,
        // as canonical's logical values.
        let same_kind = plan.canonical.kind() == stage.store.kind() && stage.policy.mode == RepairMode::Overwrite;
        let fetch = Schema {
            key: write.key.clone(),
            values: write
                .values
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    ty: if same_kind { LogicalType::Any } else { c.ty },
                })
                .collect(),
        };
        let mut statements = BTreeMap::new();
        if let RepairMode::Compensate(by_kind) = &stage.policy.mode {
            let names: Vec<String> = write.key.iter().chain(&write.values).map(|c| c.name.clone()).collect();
            for (kind, sql) in by_kind {
                let compiled = compile(sql, &names, |n| {
                    stage.store.placeholder(n).unwrap_or_else(|| format!("${n}"))
                })
                .map_err(|reason| EngineError::Input {
                    dataset: plan.name.clone(),
                    reason: format!("stage {:?}: compensate.{}: {reason}", stage.name, kind.as_str()),
                })?;
                statements.insert(*kind, compiled);
            }
        }
        Ok(RepairSetup {
            write,
            fetch,
            statements,
        })
    }

    fn repairer<'a>(
        &'a self,
        plan: &'a DatasetPlan,
        stage: &'a CopyRef,
        schema: &'a Schema,
        ctx: &'a RunContext,
        pacer: &'a Pacer,
    ) -> Repairer<'a> {
        Repairer {
            dataset: &plan.name,
            stage: &stage.name,
            store: &stage.store,
            canonical: &plan.canonical,
            hasher: &plan.hasher,
            check: schema,
            write: &self.write,
            fetch: &self.fetch,
            mode: &stage.policy.mode,
            blackout: &stage.policy.blackout,
            statements: &self.statements,
            ctx,
            pacer,
        }
    }
}
