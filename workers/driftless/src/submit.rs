//! Runs handed to the fleet and read back: `scan --submit` / `repair --submit` (queue the
//! run, wait for a worker to finish it, print its report), `driftless runs` and
//! `driftless runs show RUN_ID`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Result, bail};
use driftless_control::ControlPlane;
use driftless_engine::lifecycle::{self, NewRun, StoredReport};
use driftless_engine::{Mode, RunReport};
use serde_json::Value as Json;

use crate::config::{self, Loaded};
use crate::open::open_control;
use crate::render::timestamp;
use crate::run::{self, Selection, check_selection, scope_json, started_by};
use crate::{Common, OutputArgs, RepairArgs, ReportFormat, RunsArgs, RunsCommand, ScanArgs, SubmitArgs, render};

/// How often a waiting `--submit` reads the run's status.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `driftless scan --submit`.
pub async fn scan(common: &Common, args: &ScanArgs) -> Result<bool> {
    let loaded = config::load(&common.config)?;
    let selection = run::selection(common, args)?;
    submit(&loaded, &selection, Mode::Scan, &args.submit, &common.output).await
}

/// `driftless repair --submit`.
pub async fn repair(common: &Common, args: &RepairArgs) -> Result<bool> {
    if args.approve.is_some() {
        bail!("--approve continues a held run in this process; it cannot be combined with --submit");
    }
    let loaded = config::load(&common.config)?;
    let mut selection = run::selection(common, &args.scan)?;
    selection.dry_run = args.dry_run;
    submit(&loaded, &selection, Mode::Repair, &args.scan.submit, &common.output).await
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
    let run_id = queue(loaded, &control, selection, mode, started_by()).await?;
    if args.no_wait {
        println!("{run_id}");
        return Ok(false);
    }
    eprintln!(
        "driftless: submitted run {run_id}; waiting for a worker (Ctrl-C stops waiting, not the run; \
         `driftless runs show {run_id}` reads it later)"
    );
    let report = loop {
        if let Some(report) = finished_report(&control, &run_id, false).await? {
            break report;
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    render::write(&report, output)?;
    Ok(report.has_drift() || report.held())
}

/// Queues a run of `selection` (checked against the config already) for the fleet and
/// returns its id.
pub async fn queue(
    loaded: &Loaded,
    control: &ControlPlane,
    selection: &Selection,
    mode: Mode,
    started_by: String,
) -> Result<String> {
    let run = NewRun {
        mode,
        started_by,
        config_digest: loaded.digest(),
        scope: scope_json(selection),
    };
    Ok(lifecycle::submit_run(control, run).await?)
}

/// A run's report once it has finished: `None` while it is queued or running, an error
/// naming the run when it failed or is unknown.
async fn finished_report(control: &ControlPlane, run_id: &str, all: bool) -> Result<Option<RunReport>> {
    match lifecycle::read_report(control, run_id, all).await? {
        StoredReport::Unknown => bail!("run {run_id} is not recorded in the control plane"),
        StoredReport::Pending(_) => Ok(None),
        StoredReport::Finished(report) => Ok(Some(*report)),
        StoredReport::Failed(error) => bail!("run {run_id} failed: {error}"),
        StoredReport::Missing(status) => bail!("run {run_id} ended with status {status} and left no report"),
    }
}

/// `driftless runs` and `driftless runs show RUN_ID`.
pub async fn runs(common: &Common, args: &RunsArgs) -> Result<bool> {
    let loaded = config::load(&common.config)?;
    let control = open_control(&loaded).await?;
    let output = &common.output;
    match &args.command {
        Some(RunsCommand::Show { run_id, all }) => {
            match finished_report(&control, run_id, *all).await? {
                Some(report) => render::write(&report, output)?,
                None => println!("run {run_id} has not finished; no report yet"),
            }
            Ok(false)
        }
        None => {
            let dataset = match common.datasets.as_slice() {
                [] => None,
                [one] => Some(one.as_str()),
                _ => bail!("`driftless runs` lists the runs of one --dataset at a time"),
            };
            let runs = control.recent_runs(dataset, args.limit).await?;
            let text = match output.report {
                Some(ReportFormat::Json) => runs_json(&runs)?,
                _ if output.report.is_none() && !render::default_is_table(output) => runs_json(&runs)?,
                _ => runs_table(&runs),
            };
            render::emit(&text, output)?;
            Ok(false)
        }
    }
}

fn runs_json(runs: &[driftless_control::RunSummary]) -> Result<String> {
    Ok(serde_json::to_string_pretty(&runs_value(runs))? + "\n")
}

/// Recent runs as the JSON `runs` prints and the API answers.
pub fn runs_value(runs: &[driftless_control::RunSummary]) -> Json {
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
    Json::Array(list)
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
