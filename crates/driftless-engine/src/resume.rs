//! A submitted run driven again after its driver died or stopped: what the earlier drivers
//! of the same run already did is in the control plane, and the run's report counts it.
//!
//! Detection of a stage runs again from the recorded trees, but keys the earlier driver
//! already repaired read consistent now and are not found again. They are the queue entries
//! of this run left `repaired`; the stage's report lists them with what detection found, in
//! key order, as found and repaired.

use std::collections::HashSet;

use crate::context::RunContext;
use crate::detector::Found;
use crate::error::EngineError;
use crate::metrics::RepairOutcome;
use crate::report::{DivergenceReport, StageReport};

/// Adds to `report` the keys of this run that an earlier driver repaired and that
/// detection (`found`) did not find again.
pub(crate) async fn add_earlier_repairs(
    ctx: &RunContext,
    dataset: &str,
    found: &Found,
    report: &mut StageReport,
) -> Result<(), EngineError> {
    let earlier = ctx
        .control
        .run_entries(&ctx.run_id, dataset, &report.stage, "repaired")
        .await
        .map_err(|error| EngineError::Control {
            dataset: dataset.to_owned(),
            error,
        })?;
    let none = HashSet::new();
    let seen = found.all_keys.as_ref().unwrap_or(&none);
    let mut listed: Vec<(Vec<u8>, DivergenceReport)> = found
        .divergences
        .iter()
        .map(|d| d.key.as_bytes().to_vec())
        .zip(std::mem::take(&mut report.divergences))
        .collect();
    let mut added = 0u64;
    for entry in earlier.into_iter().filter(|e| !seen.contains(&e.key_bytes)) {
        let key = serde_json::from_str(&entry.key_json).unwrap_or(serde_json::Value::String(entry.key_json));
        listed.push((entry.key_bytes, DivergenceReport { key, kind: entry.kind }));
        added += 1;
    }
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let limit = ctx.options.report_limit;
    report.truncated |= listed.len() > limit;
    report.divergences = listed.into_iter().take(limit).map(|(_, d)| d).collect();
    report.divergent += added;
    report.repaired += added;
    if let Some(repair) = report.repair.as_mut().filter(|_| added > 0) {
        *repair
            .outcomes
            .entry(RepairOutcome::Applied.as_str().to_owned())
            .or_default() += added;
    }
    Ok(())
}
