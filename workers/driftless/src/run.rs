//! `driftless scan` and `driftless repair`: open the selected copies, run each dataset
//! against the control plane, record the run, write the report and the metrics.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use driftless_control::{ControlPlane, RunStart, StageCounts};
use driftless_core::RowHasher;
use driftless_engine::run::now_us;
use driftless_engine::{
    CopyRef, DatasetPlan, DatasetReport, EngineError, Metrics, Mode, RepairMode, RepairStatus, RunContext, RunReport,
    RunStatus, ScanOptions, Scope, run_dataset,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value as Json;

use crate::config::{self, Loaded};
use crate::open::{open_control, open_copy};
use crate::{MetricsArgs, OutputArgs, RepairArgs, ScanArgs, render, signals};

/// How often the progress bar reads the counters.
const PROGRESS_TICK_MS: u64 = 100;
/// The Pushgateway job a run's metrics are pushed under.
const PUSH_JOB: &str = "driftless";

/// What a run covers; recorded with the run as JSON.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Selection {
    datasets: Vec<String>,
    stages: Vec<String>,
    scope: Scope,
}

/// Runs a scan; `Ok(true)` when drift was found.
pub async fn scan(args: &ScanArgs) -> Result<bool> {
    let loaded = config::load(&args.config)?;
    let selection = selection(args)?;
    let report = execute(&loaded, &selection, Mode::Scan, false, None, &args.metrics).await?;
    render::write(&report, &args.output)?;
    Ok(report.has_drift())
}

/// Runs a repair; `Ok(true)` when drift is left (held, skipped, dead, or a dry run).
pub async fn repair(args: &RepairArgs) -> Result<bool> {
    let loaded = config::load(&args.scan.config)?;
    let selection = selection(&args.scan)?;
    let report = execute(
        &loaded,
        &selection,
        Mode::Repair,
        args.dry_run,
        args.approve.as_deref(),
        &args.scan.metrics,
    )
    .await?;
    render::write(&report, &args.scan.output)?;
    Ok(report.has_drift() || report.held())
}

/// Scans the selected datasets and stages of a loaded config (the demo's entry).
pub async fn scan_loaded(loaded: &Loaded, datasets: &[String], stages: &[String]) -> Result<RunReport> {
    let selection = Selection {
        datasets: datasets.to_vec(),
        stages: stages.to_vec(),
        scope: Scope::default(),
    };
    let no_metrics = MetricsArgs {
        metrics_file: None,
        pushgateway: None,
    };
    execute(loaded, &selection, Mode::Scan, false, None, &no_metrics).await
}

/// The selection the flags make, with `--keys` read and `--since` parsed.
fn selection(args: &ScanArgs) -> Result<Selection> {
    let mut scope = Scope::default();
    if let Some(path) = &args.keys {
        scope.keys = Some((path.display().to_string(), read_keys(path)?));
    }
    if let Some(since) = &args.since {
        let Some(us) = driftless_core::value::parse_timestamp(since) else {
            bail!("--since {since:?} is not a timestamp (expected RFC 3339, e.g. 2026-12-01T10:00:00Z)");
        };
        scope.since_us = Some(us);
    }
    Ok(Selection {
        datasets: args.datasets.clone(),
        stages: args.stages.clone(),
        scope,
    })
}

/// A `--keys` file: one key per line, JSON (an object or a value) or bare text; blank lines
/// and lines starting with `#` are skipped.
fn read_keys(path: &Path) -> Result<Vec<(usize, Json)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read keys file {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let l = l.trim();
            (
                i + 1,
                serde_json::from_str(l).unwrap_or_else(|_| Json::String(l.to_owned())),
            )
        })
        .collect())
}

/// The selection as the run records it, so `--approve` can continue it.
fn scope_json(s: &Selection) -> String {
    // Strings, numbers and JSON values only: serialising cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

fn selection_from_json(text: &str) -> Result<Selection> {
    serde_json::from_str(text).context("the run's recorded scope does not read back")
}

/// A run continued by `--approve`: its id and what was approved.
struct Approval {
    run_id: String,
    caps: HashMap<(String, String), u64>,
}

/// Checks that `run_id` is a held run of this config and records its approval.
async fn approve(control: &ControlPlane, loaded: &Loaded, run_id: &str) -> Result<(Approval, Selection)> {
    let Some(info) = control.run_info(run_id).await? else {
        bail!("no run {run_id:?} is recorded in the control plane");
    };
    if info.mode != Mode::Repair || info.status != RunStatus::Held {
        bail!(
            "run {run_id} is a {} run with status {:?}; only a repair run held by the breaker can be approved",
            info.mode,
            info.status
        );
    }
    if info.config_digest != loaded.digest() {
        bail!(
            "run {run_id} ran with a different version of {}; run `driftless repair` again to see what the current config would do",
            loaded.path.display()
        );
    }
    let selection = selection_from_json(info.scope.as_deref().unwrap_or("{}"))?;
    let caps = info
        .held
        .iter()
        .map(|(d, s, n, _)| ((d.clone(), s.clone()), (*n).max(0) as u64))
        .collect();
    if !control.approve_run(run_id, &started_by(), now_us()).await? {
        bail!("run {run_id} was approved by someone else meanwhile");
    }
    Ok((
        Approval {
            run_id: run_id.to_owned(),
            caps,
        },
        selection,
    ))
}

/// Opens the selected copies as plans (stages opened for writing when this run may write
/// them).
async fn plans(loaded: &Loaded, selection: &Selection, mode: Mode, dry_run: bool) -> Result<Vec<DatasetPlan>> {
    let selected = loaded.config.select(&selection.datasets, &loaded.path)?;
    for s in &selection.stages {
        if !selected.iter().any(|d| d.stages.iter().any(|st| st.stage_name() == s)) {
            bail!(
                "no stage named {s:?} in the selected datasets of {}",
                loaded.path.display()
            );
        }
    }
    let hasher = RowHasher::new(loaded.config.digest.algorithm, loaded.config.digest.seed);
    let source = loaded.source();
    let mut plans = Vec::new();
    for d in selected {
        let name = d.name.get_ref();
        let canonical = open_copy(
            &d.canonical,
            d,
            loaded,
            &format!("dataset {name:?}, canonical copy"),
            false,
        )
        .await?;
        let mut copies = Vec::new();
        for s in d
            .stages
            .iter()
            .filter(|s| selection.stages.is_empty() || selection.stages.iter().any(|n| n == s.stage_name()))
        {
            let policy = d.policy(s, &source)?;
            let writable = mode == Mode::Repair && !dry_run && policy.mode != RepairMode::Report;
            let what = format!("dataset {name:?}, stage {:?}", s.stage_name());
            copies.push(CopyRef {
                name: s.stage_name().to_owned(),
                store: open_copy(s, d, loaded, &what, writable).await?,
                policy,
            });
        }
        plans.push(DatasetPlan {
            name: name.clone(),
            key: d.key.clone(),
            columns: d.columns.clone(),
            canonical,
            stages: copies,
            hasher: hasher.clone(),
            dedupe_key: d.dedupe_key.clone(),
            changed_column: d.changed_column.clone(),
        });
    }
    Ok(plans)
}

/// Runs the selection and records it; returns the report.
async fn execute(
    loaded: &Loaded,
    selection: &Selection,
    mode: Mode,
    dry_run: bool,
    approve_id: Option<&str>,
    metrics_args: &MetricsArgs,
) -> Result<RunReport> {
    let control = open_control(loaded).await?;
    let (run_id, selection, approved) = match approve_id {
        Some(id) => {
            let (approval, recorded) = approve(&control, loaded, id).await?;
            (approval.run_id, recorded, approval.caps)
        }
        None => (uuid::Uuid::now_v7().to_string(), selection.clone(), HashMap::new()),
    };
    let plans = plans(loaded, &selection, mode, dry_run).await?;
    if approve_id.is_none() {
        control
            .start_run(&RunStart {
                run_id: run_id.clone(),
                mode,
                started_by: started_by(),
                config_digest: loaded.digest(),
                started_us: now_us(),
                scope: scope_json(&selection),
            })
            .await?;
    }

    let shutdown = signals::listen(loaded.config.shutdown_grace());
    let ctx = RunContext {
        run_id: run_id.clone(),
        mode,
        dry_run,
        control: control.clone(),
        metrics: Metrics::new(),
        settings: loaded.config.repair_settings(),
        scope: selection.scope.clone(),
        approved,
        owner: format!("{}/{}", started_by(), std::process::id()),
        options: ScanOptions::default(),
        shutdown,
    };
    let bar = progress_bar(&ctx.options);
    let mut reports = Vec::new();
    for plan in &plans {
        match run_or_stop(plan, &ctx).await {
            Ok(report) => reports.push(report),
            Err(e) => {
                bar.abandon();
                return Err(record_failure(&ctx, e, metrics_args).await);
            }
        }
    }
    bar.finish_and_clear();
    let mut report = RunReport {
        run_id: run_id.clone(),
        status: RunStatus::Consistent,
        mode,
        datasets: reports,
    };
    report.status = report.status_of();
    control
        .finish_run(&run_id, report.status, now_us(), &stage_counts(&report))
        .await?;
    write_metrics(&ctx.metrics, metrics_args).await?;
    Ok(report)
}

/// Runs one dataset until it finishes or the stop signal ends it: the engine's workers stop
/// between steps, and the parts that are not steps (digesting the trees, which writes
/// nothing) are dropped once the grace is over.
async fn run_or_stop(plan: &DatasetPlan, ctx: &RunContext) -> Result<DatasetReport, EngineError> {
    let grace_over = async {
        ctx.shutdown.stopped().await;
        tokio::time::sleep(ctx.shutdown.grace).await;
    };
    tokio::select! {
        report = run_dataset(plan, ctx) => report,
        () = grace_over => Err(EngineError::Interrupted(format!(
            "interrupted by {}",
            ctx.shutdown.reason().unwrap_or_default()
        ))),
    }
}

/// Records a run that ended in an error (or was interrupted): its status, the leases this
/// process held handed back, the metrics written. Returns the error to report.
async fn record_failure(ctx: &RunContext, error: EngineError, metrics_args: &MetricsArgs) -> anyhow::Error {
    let interrupted = matches!(error, EngineError::Interrupted(_));
    let status = if interrupted {
        RunStatus::Interrupted
    } else {
        RunStatus::Failed
    };
    // The run's error is the one to report; failures to record it are secondary.
    let handed_back = match ctx.control.release_owner(&ctx.owner).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not hand back this process's leases");
            0
        }
    };
    if let Err(record) = ctx.control.finish_run(&ctx.run_id, status, now_us(), &[]).await {
        tracing::warn!(%record, "could not record the failed run");
    }
    if let Err(m) = write_metrics(&ctx.metrics, metrics_args).await {
        tracing::warn!(error = %m, "could not write metrics");
    }
    if interrupted {
        anyhow::anyhow!(
            "{error}: run {} stopped between batches; {handed_back} leased entries were handed back and \
             what was detected stays queued; run the same command again to finish",
            ctx.run_id
        )
    } else {
        error.into()
    }
}

/// Writes and pushes the run's metrics as the flags say.
async fn write_metrics(metrics: &Metrics, args: &MetricsArgs) -> Result<()> {
    if let Some(path) = &args.metrics_file {
        metrics.write_textfile(path)?;
    }
    if let Some(url) = &args.pushgateway {
        metrics.push(url, PUSH_JOB).await?;
    }
    Ok(())
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
            })
        })
        .collect()
}

/// `user@host` of this process, for the run record.
fn started_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

/// A progress bar on a terminal, fed from the engine's counters; hidden when piped.
fn progress_bar(options: &ScanOptions) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} digesting {pos}/{len} rows [{bar:30}] {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (progress, expected) = (Arc::clone(&options.progress), Arc::clone(&options.expected_rows));
    let ticker = bar.clone();
    tokio::spawn(async move {
        while !ticker.is_finished() {
            ticker.set_length(expected.load(Ordering::Relaxed));
            ticker.set_position(progress.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(PROGRESS_TICK_MS)).await;
        }
    });
    bar
}

/// Whether output goes to a terminal, which picks the default report format.
pub fn default_is_table(output: &OutputArgs) -> bool {
    output.out.is_none() && std::io::stdout().is_terminal()
}
