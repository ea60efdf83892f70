//! What one stage's run came to, as it is reported and measured: the repair section of its
//! report (outcomes, dead entries, the writes a dry run plans) and its metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use driftless_control::EntryRecord;
use driftless_core::KeyDivergence;
use driftless_store::Schema;

use crate::context::{RunContext, now_us};
use crate::detector::Found;
use crate::error::EngineError;
use crate::metrics::RepairOutcome;
use crate::plan::{CopyRef, DatasetPlan};
use crate::policy::RepairMode;
use crate::repair::RepairStats;
use crate::report::{DeadReport, PlannedReport, RepairStatus, StageRepairReport, StageReport};

/// The repair section of a stage's report; `dead` are the stage's dead queue entries.
#[allow(clippy::too_many_arguments)]
pub(crate) fn repair_report(
    schema: &Schema,
    stage: &CopyRef,
    found: &Found,
    stats: &RepairStats,
    dead: Vec<EntryRecord>,
    status: RepairStatus,
    reason: Option<String>,
    held_back: Duration,
    limit: usize,
) -> StageRepairReport {
    let key_names = schema.key_names();
    let dead = dead
        .into_iter()
        .map(|e| DeadReport {
            key: serde_json::from_str(&e.key_json).unwrap_or(serde_json::Value::String(e.key_json)),
            kind: e.kind,
            attempts: e.attempts,
            error: e.last_error,
        })
        .collect();
    let mut outcomes: BTreeMap<String, u64> = stats
        .outcomes
        .iter()
        .map(|(o, n)| (o.as_str().to_owned(), *n))
        .collect();
    let planning = if status.plans_only() { found.key_count } else { 0 };
    let planned: Vec<PlannedReport> = found
        .keys
        .iter()
        .take(if planning > 0 { limit } else { 0 })
        .map(|k| PlannedReport {
            key: k.key.to_json(&key_names),
            kind: k.kind.as_str().to_owned(),
            action: planned_action(&stage.policy.mode, k).to_owned(),
        })
        .collect();
    if planning > 0 {
        outcomes.insert(RepairOutcome::Planned.as_str().to_owned(), planning);
    }
    StageRepairReport {
        mode: stage.policy.mode.name().to_owned(),
        status,
        reason,
        outcomes,
        skipped_newer: stats.skipped_newer.iter().map(|k| k.to_json(&key_names)).collect(),
        dead,
        planned,
        held_back_secs: held_back.as_secs_f64(),
        detection_paused_secs: found.paused.as_secs_f64(),
    }
}

/// The write a divergent key would get, from what detection saw.
fn planned_action(mode: &RepairMode, k: &KeyDivergence) -> &'static str {
    match mode {
        RepairMode::Compensate(by_kind) if by_kind.contains_key(&k.kind) => "compensate",
        RepairMode::Compensate(_) => "none",
        _ if k.canonical.is_some() => "put",
        _ => "delete",
    }
}

/// The stage's metrics at the end of its run.
pub(crate) async fn record_metrics(
    plan: &DatasetPlan,
    ctx: &RunContext,
    stage: &CopyRef,
    report: &StageReport,
    found: &Found,
    stats: &RepairStats,
    held_back: Duration,
) -> Result<(), EngineError> {
    let (ds, st) = (plan.name.as_str(), stage.name.as_str());
    let m = &ctx.metrics;
    let left = found.key_count.saturating_sub(stats.repaired.len() as u64);
    m.set_divergent_keys(ds, st, left);
    m.set_consistency(ds, st, report.canonical_rows, report.stage_rows, left);
    m.add_duplicate_commits(ds, st, found.duplicates);
    for (outcome, n) in &stats.outcomes {
        m.add_repairs(ds, st, *outcome, *n);
    }
    if let Some(r) = &report.repair
        && let Some(n) = r.outcomes.get(RepairOutcome::Planned.as_str())
    {
        m.add_repairs(ds, st, RepairOutcome::Planned, *n);
    }
    for lag in &stats.lags {
        m.observe_lag(ds, st, *lag);
    }
    m.add_backpressure(ds, st, held_back);
    let depth = ctx.control.depth(ds, st).await.map_err(|error| EngineError::Control {
        dataset: plan.name.clone(),
        error,
    })?;
    m.set_queue_depth(ds, st, depth.live);
    let oldest = depth.oldest_first_seen_us.map_or(Duration::ZERO, |us| {
        Duration::from_micros(now_us().saturating_sub(us).max(0) as u64)
    });
    m.set_oldest_pending(ds, st, oldest);
    if left == 0 {
        m.set_last_success(ds, st, now_us() as f64 / 1e6);
    }
    Ok(())
}
