//! Runs handed to the fleet and read back: `scan --submit` / `repair --submit` (queue the
//! run, wait for a worker to finish it, print its report), `driftless runs` and
//! `driftless runs show RUN_ID`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use driftless_engine::lifecycle::{self, NewRun};
use driftless_engine::{Mode, RunReport, RunStatus};
use serde_json::Value as Json;

use crate::config::{self, Loaded};
use crate::open::open_control;
use crate::run::{self, Selection, check_selection, scope_json, started_by};
use crate::{OutputArgs, RepairArgs, ReportFormat, RunsArgs, RunsCommand, ScanArgs, SubmitArgs, render};

/// How often a waiting `--submit` reads the run's status.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `driftless scan --submit`.
pub async fn scan(args: &ScanArgs) -> Result<bool> {
    let loaded = config::load(&args.config)?;
    let selection = run::selection(args)?;
    submit(&loaded, &selection, Mode::Scan, &args.submit, &args.output).await
}

/// `driftless repair --submit`.
pub async fn repair(args: &RepairArgs) -> Result<bool> {
    if args.approve.is_some() {
        bail!("--approve continues a held run in this process; it cannot be combined with --submit");
    }
    let loaded = config::load(&args.scan.config)?;
    let mut selection = run::selection(&args.scan)?;
    selection.dry_run = args.dry_run;
    submit(&loaded, &selection, Mode::Repair, &args.scan.submit, &args.scan.output).await
}

/// Queues the run for the fleet; without `--no-wait`, waits for its report and prints it.
/// `Ok(true)` when drift is left, as the one-shot run would say.
async fn submit(
    loaded: &Loaded,
    selection: &Selection,
    mode: Mode,
    args: &SubmitArgs,
    output: &OutputArgs,
) -> Result<bool> {
    check_selection(loaded, selection)?;
    let control = open_control(loaded).await?;
    let run = NewRun {
        mode,
        started_by: started_by(),
        config_digest: loaded.digest(),
        scope: scope_json(selection),
    };
    let run_id = lifecycle::submit_run(&control, run).await?;
    if args.no_wait {
        println!("{run_id}");
        return Ok(false);
    }
    eprintln!(
        "driftless: submitted run {run_id}; waiting for a worker (Ctrl-C stops waiting, not the run; \
         `driftless runs show {run_id}` reads it later)"
    );
    let report = loop {
        if let Some(report) = finished_report(&control, &run_id).await? {
            break report;
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    render::write(&report, output)?;
    Ok(report.has_drift() || report.held())
}

/// A run's report once it has finished: `None` while it is queued or running, an error
/// naming the run when it failed or is unknown.
async fn finished_report(control: &driftless_control::ControlPlane, run_id: &str) -> Result<Option<RunReport>> {
    let Some((status, stored)) = control.run_report(run_id).await? else {
        bail!("run {run_id} is not recorded in the control plane");
    };
    if matches!(status, RunStatus::Queued | RunStatus::Running) {
        return Ok(None);
    }
    let Some(text) = stored else {
        // Finished but reported elsewhere (a one-shot run, or one ended before reports were
        // stored): only its status is known.
        bail!("run {run_id} ended with status {status} and left no report");
    };
    parse_report(run_id, &text).map(Some)
}

/// A stored report; a failed run's stored reason becomes the error.
fn parse_report(run_id: &str, text: &str) -> Result<RunReport> {
    let value: Json = serde_json::from_str(text).with_context(|| format!("run {run_id}: stored report"))?;
    if let Some(error) = value.get("error").and_then(Json::as_str) {
        bail!("run {run_id} failed: {error}");
    }
    serde_json::from_value(value).with_context(|| format!("run {run_id}: stored report does not read back"))
}

/// `driftless runs` and `driftless runs show RUN_ID`.
pub async fn runs(args: &RunsArgs) -> Result<bool> {
    let loaded = config::load(&args.config)?;
    let control = open_control(&loaded).await?;
    match &args.command {
        Some(RunsCommand::Show { run_id, all, output }) => {
            let Some((status, stored)) = control.run_report(run_id).await? else {
                bail!("run {run_id} is not recorded in the control plane");
            };
            match stored {
                Some(text) => {
                    let mut report = parse_report(run_id, &text)?;
                    if *all {
                        list_all(&control, &mut report).await?;
                    }
                    render::write(&report, output)?;
                }
                None => println!("run {run_id}: {status}; no report stored yet"),
            }
            Ok(false)
        }
        None => {
            let runs = control.recent_runs(args.dataset.as_deref(), args.limit).await?;
            let text = match args.output.report {
                Some(ReportFormat::Json) => runs_json(&runs)?,
                _ if args.output.report.is_none() && !render::default_is_table(&args.output) => runs_json(&runs)?,
                _ => runs_table(&runs),
            };
            render::emit(&text, &args.output)?;
            Ok(false)
        }
    }
}

/// Replaces each cut list of divergences with the run's whole list from the queue.
async fn list_all(control: &driftless_control::ControlPlane, report: &mut RunReport) -> Result<()> {
    for d in &mut report.datasets {
        for s in d.stages.iter_mut().filter(|s| s.truncated) {
            let entries = control.run_divergences(&report.run_id, &d.dataset, &s.stage).await?;
            s.divergences = entries
                .into_iter()
                .map(|e| driftless_engine::DivergenceReport {
                    key: serde_json::from_str(&e.key_json).unwrap_or(Json::String(e.key_json)),
                    kind: e.kind,
                })
                .collect();
            s.truncated = false;
        }
    }
    Ok(())
}

fn runs_json(runs: &[driftless_control::RunSummary]) -> Result<String> {
    let list: Vec<Json> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "run_id": r.run_id,
                "mode": r.mode,
                "status": r.status,
                "started_by": r.started_by,
                "started": timestamp(r.started_us),
                "finished": r.finished_us.map(timestamp),
                "divergent": r.divergent,
            })
        })
        .collect();
    Ok(serde_json::to_string_pretty(&list)? + "\n")
}

fn runs_table(runs: &[driftless_control::RunSummary]) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    writeln!(
        s,
        "{:<36}  {:<6}  {:<11}  {:<20}  {:>9}  started by",
        "run", "mode", "status", "started", "divergent"
    )
    .unwrap();
    for r in runs {
        writeln!(
            s,
            "{:<36}  {:<6}  {:<11}  {:<20}  {:>9}  {}",
            r.run_id,
            r.mode.as_str(),
            r.status.as_str(),
            timestamp(r.started_us),
            r.divergent,
            r.started_by
        )
        .unwrap();
    }
    s
}

/// UTC microseconds as RFC 3339 to the second.
fn timestamp(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
