//! `driftless scan` and `driftless repair`: open the selected copies, run each dataset
//! against the control plane, record the run, write the report and the metrics.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use driftless_core::RowHasher;
use driftless_engine::lifecycle::{self, NewRun, Resume};
use driftless_engine::{
    CopyRef, DatasetPlan, DatasetReport, EngineError, Metrics, Mode, RepairMode, RunContext, RunReport, ScanOptions,
    Scope, run_dataset,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value as Json;

use crate::config::{self, Loaded};
use crate::open::{open_control, open_copy};
use crate::{Common, MetricsArgs, RepairArgs, ScanArgs, render, signals};

/// How long a run goes before its progress bar appears.
const PROGRESS_DELAY: Duration = Duration::from_millis(500);
/// How often the progress bar reads the counters.
const PROGRESS_TICK_MS: u64 = 100;
/// The Pushgateway job a run's metrics are pushed under.
const PUSH_JOB: &str = "driftless";

/// What a run covers; recorded with the run as JSON.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// `--dataset` (empty: all).
    pub datasets: Vec<String>,
    /// `--stage` (empty: all).
    pub stages: Vec<String>,
    scope: Scope,
    /// `repair --dry-run` (recorded for a submitted run, whose worker reads it back).
    #[serde(default)]
    pub dry_run: bool,
}

/// Chosen keys: where they came from (a file's name), and each with its line or position.
pub type KeyList = (String, Vec<(usize, Json)>);

impl Selection {
    /// `datasets` and `stages` (empty: all), limited to `keys` (named by where they came
    /// from, each with its line or position) and to rows changed at or after `since_us`.
    pub fn new(
        datasets: Vec<String>,
        stages: Vec<String>,
        keys: Option<KeyList>,
        since_us: Option<i64>,
        dry_run: bool,
    ) -> Selection {
        Selection {
            datasets,
            stages,
            scope: Scope { keys, since_us },
            dry_run,
        }
    }
}

/// Runs a scan; `Ok(true)` when drift was found.
pub async fn scan(common: &Common, args: &ScanArgs) -> Result<bool> {
    let loaded = config::load(&common.config)?;
    let selection = selection(common, args)?;
    let report = execute(&loaded, &selection, Mode::Scan, false, None, &args.metrics).await?;
    render::write(&report, &common.output)?;
    Ok(report.has_drift())
}

/// Runs a repair; `Ok(true)` when drift is left (held, skipped, dead, or a dry run).
pub async fn repair(common: &Common, args: &RepairArgs) -> Result<bool> {
    let loaded = config::load(&common.config)?;
    let selection = selection(common, &args.scan)?;
    let report = execute(
        &loaded,
        &selection,
        Mode::Repair,
        args.dry_run,
        args.approve.as_deref(),
        &args.scan.metrics,
    )
    .await?;
    render::write(&report, &common.output)?;
    Ok(report.has_drift() || report.held())
}

/// Scans the selected datasets and stages of a loaded config (the demo's entry).
pub async fn scan_loaded(loaded: &Loaded, datasets: &[String], stages: &[String]) -> Result<RunReport> {
    let selection = Selection {
        datasets: datasets.to_vec(),
        stages: stages.to_vec(),
        scope: Scope::default(),
        dry_run: false,
    };
    let no_metrics = MetricsArgs {
        metrics_file: None,
        pushgateway: None,
    };
    execute(loaded, &selection, Mode::Scan, false, None, &no_metrics).await
}

/// The selection the flags make, with `--keys` read and `--since` parsed.
pub fn selection(common: &Common, args: &ScanArgs) -> Result<Selection> {
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
        datasets: common.datasets.clone(),
        stages: common.stages.clone(),
        scope,
        dry_run: false,
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
pub fn scope_json(s: &Selection) -> String {
    // Strings, numbers and JSON values only: serialising cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

pub fn selection_from_json(text: &str) -> Result<Selection> {
    serde_json::from_str(text).context("the run's recorded scope does not read back")
}

/// Checks that the selection names datasets and stages of the config.
pub fn check_selection(loaded: &Loaded, selection: &Selection) -> Result<()> {
    let selected = loaded.config.select(&selection.datasets, &loaded.path)?;
    for s in &selection.stages {
        if !selected.iter().any(|d| d.stages.iter().any(|st| st.stage_name() == s)) {
            bail!(
                "no stage named {s:?} in the selected datasets of {}",
                loaded.path.display()
            );
        }
    }
    Ok(())
}

/// Opens the selected copies as plans (stages opened for writing when this run may write
/// them).
pub async fn plans(loaded: &Loaded, selection: &Selection, mode: Mode, dry_run: bool) -> Result<Vec<DatasetPlan>> {
    check_selection(loaded, selection)?;
    let selected = loaded.config.select(&selection.datasets, &loaded.path)?;
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
    let (selection, approved) = match approve_id {
        Some(id) => {
            let approved = lifecycle::approve_run(&control, id, &loaded.digest(), &started_by(), Resume::Here).await?;
            (selection_from_json(&approved.scope)?, approved.caps)
        }
        None => (selection.clone(), HashMap::new()),
    };
    let plans = plans(loaded, &selection, mode, dry_run).await?;
    let run_id = match approve_id {
        Some(id) => id.to_owned(),
        None => {
            let run = NewRun {
                mode,
                started_by: started_by(),
                config_digest: loaded.digest(),
                scope: scope_json(&selection),
            };
            lifecycle::create_run(&control, run).await?
        }
    };

    let shutdown = signals::listen(loaded.config.shutdown_grace());
    let mut ctx = context(loaded, &control, &run_id, mode, &selection, shutdown);
    ctx.dry_run = dry_run;
    ctx.approved = approved;
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
    let report = RunReport::finished(run_id, mode, vec![ctx.owner.clone()], reports);
    lifecycle::record_finished(&control, &report).await?;
    write_metrics(&ctx.metrics, metrics_args).await?;
    Ok(report)
}

/// A run's context as this process drives it: its own worker id, no approvals, not
/// segmented; the caller changes what differs.
pub fn context(
    loaded: &Loaded,
    control: &driftless_control::ControlPlane,
    run_id: &str,
    mode: Mode,
    selection: &Selection,
    shutdown: driftless_engine::Shutdown,
) -> RunContext {
    RunContext {
        run_id: run_id.to_owned(),
        mode,
        dry_run: selection.dry_run,
        control: control.clone(),
        metrics: Metrics::new(),
        settings: loaded.config.repair_settings(),
        scope: selection.scope.clone(),
        approved: HashMap::new(),
        owner: worker_id(),
        options: ScanOptions {
            report_limit: report_limit(loaded),
            ..ScanOptions::default()
        },
        shutdown,
        config_digest: loaded.digest(),
        segmented: false,
    }
}

/// Divergences a report lists per stage.
fn report_limit(loaded: &Loaded) -> usize {
    loaded
        .config
        .report_limit
        .unwrap_or(driftless_engine::report::DEFAULT_REPORT_LIMIT)
}

/// This process as a lease owner and report worker: `user@host/pid`.
pub fn worker_id() -> String {
    format!("{}/{}", started_by(), std::process::id())
}

/// Drives a run a worker claimed from the fleet's queue: its datasets' trees digested in
/// segments any worker may take, then compared, queued and repaired as a one-shot run
/// does; the report is stored for whoever waits on it. The caller handles failures.
pub async fn drive_submitted(
    loaded: &Loaded,
    control: &driftless_control::ControlPlane,
    claimed: &driftless_control::ClaimedRun,
    shutdown: driftless_engine::Shutdown,
) -> Result<RunReport, anyhow::Error> {
    let selection = selection_from_json(claimed.scope.as_deref().unwrap_or("{}"))?;
    let plans = plans(loaded, &selection, claimed.mode, selection.dry_run).await?;
    let mut ctx = context(loaded, control, &claimed.run_id, claimed.mode, &selection, shutdown);
    if claimed.approved {
        // Taken up again after approval: its segments were digested before it was held, so
        // this driver digests the copies afresh, and its held stages repair up to their caps.
        ctx.approved = lifecycle::approved_caps(control, &claimed.run_id).await?;
    } else {
        ctx.segmented = true;
    }
    let mut reports = Vec::new();
    for plan in &plans {
        reports.push(run_dataset(plan, &ctx).await?);
    }
    let mut workers = control.run_workers(&claimed.run_id).await?;
    if !workers.contains(&ctx.owner) {
        workers.push(ctx.owner.clone());
        workers.sort();
    }
    let report = RunReport::finished(claimed.run_id.clone(), claimed.mode, workers, reports);
    lifecycle::record_finished(control, &report).await?;
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
    let handed_back = lifecycle::abandon_run(&ctx.control, &ctx.run_id, &ctx.owner, interrupted).await;
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

/// `user@host` of this process, for the run record.
pub fn started_by() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

/// A progress bar on a terminal, fed from the engine's counters; hidden when piped. It
/// appears only once there are rows to count and the run has taken a moment (a tiny scan
/// shows none), and is cleared when the run ends.
fn progress_bar(options: &ScanOptions) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("{spinner} digesting {pos}/{len} rows [{bar:30}] {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (progress, expected) = (Arc::clone(&options.progress), Arc::clone(&options.expected_rows));
    let ticker = bar.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut shown = false;
        while !ticker.is_finished() {
            let (len, pos) = (expected.load(Ordering::Relaxed), progress.load(Ordering::Relaxed));
            ticker.set_length(len);
            ticker.set_position(pos.min(len));
            if !shown && len > 0 && started.elapsed() >= PROGRESS_DELAY {
                ticker.set_draw_target(ProgressDrawTarget::stderr());
                shown = true;
            }
            tokio::time::sleep(Duration::from_millis(PROGRESS_TICK_MS)).await;
        }
    });
    bar
}
