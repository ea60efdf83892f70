//! A run's life in the control plane, as every entry point shares it (the command line and
//! the worker now; the HTTP API and `gate` next): creating a run (or submitting it for the
//! fleet), approving a held one, recording how it finished with its report, reading that
//! report back, and abandoning it on an error or a stop signal.

use std::collections::HashMap;

use driftless_control::{ControlError, ControlPlane, Mode, RepairStatus, RunStart, RunStatus, StageCounts};

use crate::context::now_us;
use crate::error::EngineError;
use crate::report::{DivergenceReport, RunReport};

/// What a new run is.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// What it does.
    pub mode: Mode,
    /// Who asked for it: `user@host`.
    pub started_by: String,
    /// Hex BLAKE3 of the config it runs with.
    pub config_digest: String,
    /// What it covers (datasets, stages, keys), as JSON, so that it can be continued.
    pub scope: String,
}

/// A held run, approved: what it covered and how many divergent keys each held stage may
/// now repair (the number it found).
#[derive(Debug, Clone)]
pub struct Approved {
    /// The run's recorded scope (JSON).
    pub scope: String,
    /// `(dataset, stage)` -> divergent keys approved.
    pub caps: HashMap<(String, String), u64>,
}

/// How the control plane's errors read when no dataset is involved.
fn control_err(error: ControlError) -> EngineError {
    EngineError::Control {
        dataset: "(run)".to_owned(),
        error,
    }
}

fn refused(run_id: &str, reason: String) -> EngineError {
    EngineError::Run {
        run_id: run_id.to_owned(),
        reason,
    }
}

/// Records a new run this process drives and returns its id (a uuid v7: ids sort by start
/// time).
pub async fn create_run(control: &ControlPlane, run: NewRun) -> Result<String, EngineError> {
    let start = run_start(run);
    control.start_run(&start).await.map_err(control_err)?;
    Ok(start.run_id)
}

/// Records a new run for the fleet (`queued` until a worker takes it) and returns its id.
pub async fn submit_run(control: &ControlPlane, run: NewRun) -> Result<String, EngineError> {
    let start = run_start(run);
    control.queue_run(&start).await.map_err(control_err)?;
    Ok(start.run_id)
}

/// Queues the run of `dataset`'s schedule tick at `tick_at_us`, unless another worker
/// claimed that tick first: `Some(run_id)` for the one claim that wins, fleet-wide.
pub async fn schedule_run(
    control: &ControlPlane,
    dataset: &str,
    tick_at_us: i64,
    run: NewRun,
) -> Result<Option<String>, EngineError> {
    let start = run_start(run);
    let won = control
        .claim_tick(dataset, tick_at_us, &start)
        .await
        .map_err(control_err)?;
    Ok(won.then_some(start.run_id))
}

fn run_start(run: NewRun) -> RunStart {
    RunStart {
        run_id: uuid::Uuid::now_v7().to_string(),
        mode: run.mode,
        started_by: run.started_by,
        config_digest: run.config_digest,
        started_us: now_us(),
        scope: run.scope,
    }
}

/// Records how a run finished (its status and every stage's counts) and stores its report,
/// for whoever waits on a submitted run and for `runs show`.
pub async fn record_finished(control: &ControlPlane, report: &RunReport) -> Result<(), EngineError> {
    finish_run(control, report).await?;
    let json = serde_json::to_string(report).map_err(|e| refused(&report.run_id, format!("report: {e}")))?;
    control.store_report(&report.run_id, &json).await.map_err(control_err)
}

/// A run's report as the control plane keeps it.
#[derive(Debug)]
pub enum StoredReport {
    /// No run has that id.
    Unknown,
    /// Queued or running: no report yet.
    Pending(RunStatus),
    /// Finished, with its report.
    Finished(Box<RunReport>),
    /// Failed, with the reason stored in place of a report.
    Failed(String),
    /// Ended without leaving a report (one recorded before reports were stored).
    Missing(RunStatus),
}

/// Reads a run's stored report. With `all`, each stage's list of divergences that the
/// report cut at its limit is replaced by the run's whole list from the queue (the keys this
/// run detected last).
pub async fn read_report(control: &ControlPlane, run_id: &str, all: bool) -> Result<StoredReport, EngineError> {
    let Some((status, stored)) = control.run_report(run_id).await.map_err(control_err)? else {
        return Ok(StoredReport::Unknown);
    };
    let Some(text) = stored else {
        return Ok(match status {
            RunStatus::Queued | RunStatus::Running => StoredReport::Pending(status),
            _ => StoredReport::Missing(status),
        });
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| refused(run_id, format!("its stored report is not JSON: {e}")))?;
    if let Some(error) = value.get("error").and_then(serde_json::Value::as_str) {
        return Ok(StoredReport::Failed(error.to_owned()));
    }
    let mut report: RunReport = serde_json::from_value(value)
        .map_err(|e| refused(run_id, format!("its stored report does not read back: {e}")))?;
    if all {
        list_all(control, &mut report).await?;
    }
    Ok(StoredReport::Finished(Box::new(report)))
}

/// Replaces each cut list of divergences with the run's whole list from the queue.
async fn list_all(control: &ControlPlane, report: &mut RunReport) -> Result<(), EngineError> {
    for d in &mut report.datasets {
        for s in d.stages.iter_mut().filter(|s| s.truncated) {
            let entries = control
                .run_divergences(&report.run_id, &d.dataset, &s.stage)
                .await
                .map_err(control_err)?;
            s.divergences = entries
                .into_iter()
                .map(|e| DivergenceReport {
                    key: serde_json::from_str(&e.key_json).unwrap_or(serde_json::Value::String(e.key_json)),
                    kind: e.kind,
                })
                .collect();
            s.truncated = false;
        }
    }
    Ok(())
}

/// Records a submitted run that failed, with the reason in place of its report (what
/// `--submit` prints and `runs show` shows). Failures to record are logged.
pub async fn fail_submitted(control: &ControlPlane, run_id: &str, owner: &str, reason: &str) {
    abandon_run(control, run_id, owner, false).await;
    let json = serde_json::json!({ "run_id": run_id, "status": RunStatus::Failed, "error": reason });
    if let Err(e) = control.store_report(run_id, &json.to_string()).await {
        tracing::warn!(error = %e, "could not record why the run failed");
    }
}

/// Where an approved run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// In the approving process (`repair --approve`): the run is marked running.
    Here,
    /// In the fleet (the API's approve): the run is queued again for a worker's driver.
    Fleet,
}

/// Approves `run_id`, a repair run the breaker held, for the config whose digest is
/// `config_digest`. Refused for any other run, for a changed config, and when someone else
/// approved it first.
pub async fn approve_run(
    control: &ControlPlane,
    run_id: &str,
    config_digest: &str,
    approved_by: &str,
    resume: Resume,
) -> Result<Approved, EngineError> {
    let Some(info) = control.run_info(run_id).await.map_err(control_err)? else {
        return Err(EngineError::UnknownRun(run_id.to_owned()));
    };
    if info.mode != Mode::Repair || info.status != RunStatus::Held {
        return Err(refused(
            run_id,
            format!(
                "it is a {} run with status \"{}\"; only a repair run held by the breaker can be approved",
                info.mode, info.status
            ),
        ));
    }
    if info.config_digest != config_digest {
        return Err(refused(
            run_id,
            "it ran with a different version of the config; run `driftless repair` again to see \
             what the current config would do"
                .into(),
        ));
    }
    let marked = match resume {
        Resume::Here => control.approve_run(run_id, approved_by, now_us()).await,
        Resume::Fleet => control.requeue_approved(run_id, approved_by, now_us()).await,
    };
    if !marked.map_err(control_err)? {
        return Err(refused(run_id, "someone else approved it meanwhile".into()));
    }
    Ok(Approved {
        scope: info.scope.unwrap_or_else(|| "{}".to_owned()),
        caps: caps(&info.held),
    })
}

/// The divergent keys each held stage of an approved run may repair, as a worker's driver
/// reads them when it takes the run up again.
pub async fn approved_caps(
    control: &ControlPlane,
    run_id: &str,
) -> Result<HashMap<(String, String), u64>, EngineError> {
    let info = control.run_info(run_id).await.map_err(control_err)?;
    Ok(info.map(|i| caps(&i.held)).unwrap_or_default())
}

fn caps(held: &[(String, String, i64, String)]) -> HashMap<(String, String), u64> {
    held.iter()
        .map(|(d, s, n, _)| ((d.clone(), s.clone()), (*n).max(0) as u64))
        .collect()
}

/// Records how a run finished: its status and every stage's counts.
pub async fn finish_run(control: &ControlPlane, report: &RunReport) -> Result<(), EngineError> {
    control
        .finish_run(&report.run_id, report.status, now_us(), &stage_counts(report))
        .await
        .map_err(control_err)
}

/// Records a run that an error (or a stop signal: `interrupted`) ended, after handing back
/// every entry `owner` holds leased so that another repairer takes them at once. Returns how
/// many were handed back. Failures to record are logged, not returned: the run's own error
/// is the one to report.
pub async fn abandon_run(control: &ControlPlane, run_id: &str, owner: &str, interrupted: bool) -> u64 {
    let handed_back = control.release_owner(owner).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not hand back this process's leases");
        0
    });
    let status = if interrupted {
        RunStatus::Interrupted
    } else {
        RunStatus::Failed
    };
    if let Err(e) = control.finish_run(run_id, status, now_us(), &[]).await {
        tracing::warn!(error = %e, "could not record the failed run");
    }
    handed_back
}

/// Per-stage results of a report, as the control plane records them.
fn stage_counts(report: &RunReport) -> Vec<StageCounts> {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    report
        .datasets
        .iter()
        .flat_map(|d| {
            d.stages.iter().map(|s| StageCounts {
                dataset: d.dataset.clone(),
                stage: s.stage.clone(),
                canonical_rows: count(s.canonical_rows),
                stage_rows: count(s.stage_rows),
                divergent: count(s.divergent),
                repaired: count(s.repaired),
                held: s
                    .repair
                    .as_ref()
                    .filter(|r| r.status == RepairStatus::Held)
                    .map(|r| r.reason.clone().unwrap_or_else(|| "held".into())),
                duplicates: count(s.duplicate_rows),
                held_back_us: s.repair.as_ref().map_or(0, |r| (r.held_back_secs * 1e6) as i64),
            })
        })
        .collect()
}
