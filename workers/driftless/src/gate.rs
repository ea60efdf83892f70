//! `driftless gate`: may this stage be promoted to the next? Reads the stage's latest state
//! from the control plane (after a fresh scan of it with `--scan`) and says yes (exit 0) or
//! no (exit 2) with every reason, for a person or, with `--report json`, a pipeline.

use std::time::Duration;

use anyhow::{Result, bail};
use driftless_control::{StageRun, StageState};
use driftless_engine::context::now_us;
use serde_json::json;

use crate::config::{self, Loaded};
use crate::open::open_control;
use crate::run::{self, Selection};
use crate::{Common, GateArgs, ReportFormat, render};

/// Runs the gate; `Ok(true)`: the stage may not be promoted.
pub async fn run(common: &Common, args: &GateArgs) -> Result<bool> {
    let (dataset, stage) = match (common.datasets.as_slice(), common.stages.as_slice()) {
        ([d], [s]) => (d.clone(), s.clone()),
        _ => bail!("`driftless gate` takes exactly one --dataset and one --stage"),
    };
    let loaded = config::load(&common.config)?;
    let mut selection = Selection::default();
    selection.datasets.push(dataset.clone());
    selection.stages.push(stage.clone());
    run::check_selection(&loaded, &selection)?;
    if args.scan {
        run::scan_loaded(&loaded, &selection.datasets, &selection.stages).await?;
    }
    let state = read_state(&loaded, &dataset, &stage).await?;
    let verdict = judge(&state, args, now_us());
    let text = match common.output.report {
        Some(ReportFormat::Json) => json_text(&dataset, &stage, &state, &verdict)?,
        None if !render::default_is_table(&common.output) => json_text(&dataset, &stage, &state, &verdict)?,
        _ => table_text(&dataset, &stage, &verdict),
    };
    render::emit(&text, &common.output)?;
    Ok(!verdict.reasons.is_empty())
}

async fn read_state(loaded: &Loaded, dataset: &str, stage: &str) -> Result<StageState> {
    let control = open_control(loaded).await?;
    Ok(control.stage_state(dataset, stage).await?)
}

/// The gate's answer: no reasons means promote.
#[derive(Debug)]
struct Verdict {
    reasons: Vec<String>,
    remaining: Option<i64>,
    lag: Option<Duration>,
    age: Option<Duration>,
}

fn since(us: i64, now: i64) -> Duration {
    Duration::from_micros(u64::try_from(now.saturating_sub(us)).unwrap_or(0))
}

fn judge(state: &StageState, args: &GateArgs, now: i64) -> Verdict {
    let mut reasons = Vec::new();
    let remaining = state.last_run.as_ref().map(|r| (r.divergent - r.repaired).max(0));
    match &state.last_run {
        None => reasons.push("no finished run has covered this stage".to_owned()),
        Some(run) => judge_run(run, args, &mut reasons),
    }
    let lag = state.depth.lag(now);
    if let (Some(max), Some(lag)) = (args.max_lag, lag)
        && lag > max
    {
        reasons.push(format!(
            "the oldest unrepaired divergence was found {} ago, over --max-lag {}",
            humantime::format_duration(round(lag)),
            humantime::format_duration(max)
        ));
    }
    let age = state.last_good.as_ref().map(|r| since(r.finished_us, now));
    if let Some(max) = args.max_age {
        match age {
            None => reasons.push("no run has left this stage consistent".to_owned()),
            Some(age) if age > max => reasons.push(format!(
                "the last good run finished {} ago, over --max-age {}",
                humantime::format_duration(round(age)),
                humantime::format_duration(max)
            )),
            Some(_) => {}
        }
    }
    Verdict {
        reasons,
        remaining,
        lag,
        age,
    }
}

fn judge_run(run: &StageRun, args: &GateArgs, reasons: &mut Vec<String>) {
    let remaining = (run.divergent - run.repaired).max(0);
    if run.held.is_some() {
        reasons.push(format!(
            "run {} is held by the breaker: approve with `driftless repair --approve {}`",
            run.run_id, run.run_id
        ));
    }
    if remaining > args.max_divergent {
        reasons.push(format!(
            "{remaining} divergent keys left by run {} (--max-divergent {})",
            run.run_id, args.max_divergent
        ));
    }
}

/// Whole seconds, for messages.
fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn table_text(dataset: &str, stage: &str, verdict: &Verdict) -> String {
    if verdict.reasons.is_empty() {
        let divergent = verdict.remaining.unwrap_or(0);
        return format!("promote: yes: stage {stage:?} of {dataset:?} ({divergent} divergent keys)\n");
    }
    let mut text = format!("promote: no: stage {stage:?} of {dataset:?}\n");
    for r in &verdict.reasons {
        text.push_str(&format!("  - {r}\n"));
    }
    text
}

fn json_text(dataset: &str, stage: &str, state: &StageState, verdict: &Verdict) -> Result<String> {
    let run =
        |r: &StageRun| json!({ "run_id": r.run_id, "mode": r.mode, "status": r.status, "finished_us": r.finished_us });
    let value = json!({
        "dataset": dataset,
        "stage": stage,
        "promote": verdict.reasons.is_empty(),
        "reasons": verdict.reasons,
        "divergent": verdict.remaining,
        "dead": state.depth.dead,
        "lag_seconds": verdict.lag.map(|d| d.as_secs_f64()),
        "last_run": state.last_run.as_ref().map(run),
        "last_good_run": state.last_good.as_ref().map(run),
        "last_good_age_seconds": verdict.age.map(|d| d.as_secs_f64()),
    });
    Ok(format!("{}\n", serde_json::to_string_pretty(&value)?))
}
