//! `driftless scan`: open the selected copies, scan each dataset, write the report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use driftless_control::{RunStart, StageCounts};
use driftless_core::RowHasher;
use driftless_engine::{CopyRef, DatasetPlan, Mode, RunReport, ScanOptions, scan_dataset};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{self, Loaded};
use crate::open::{open_control, open_copy};
use crate::{OutputArgs, ScanArgs, render};

/// How often the progress bar reads the counters.
const PROGRESS_TICK_MS: u64 = 100;

/// Runs a scan; `Ok(true)` when drift was found.
pub async fn scan(args: &ScanArgs) -> Result<bool> {
    let loaded = config::load(&args.config)?;
    let report = scan_loaded(&loaded, &args.datasets, &args.stages).await?;
    render::write(&report, &args.output)?;
    Ok(report.has_drift())
}

/// Scans the selected datasets and stages of a loaded config.
pub async fn scan_loaded(loaded: &Loaded, datasets: &[String], stages: &[String]) -> Result<RunReport> {
    let selected = loaded.config.select(datasets, &loaded.path)?;
    for s in stages {
        if !selected.iter().any(|d| d.stages.iter().any(|st| st.stage_name() == s)) {
            bail!(
                "no stage named {s:?} in the selected datasets of {}",
                loaded.path.display()
            );
        }
    }
    let hasher = RowHasher::new(loaded.config.digest.algorithm, loaded.config.digest.seed);
    let mut plans = Vec::new();
    for d in selected {
        let name = d.name.get_ref();
        let canonical = open_copy(&d.canonical, loaded, &format!("dataset {name:?}, canonical copy")).await?;
        let mut copies = Vec::new();
        for s in d
            .stages
            .iter()
            .filter(|s| stages.is_empty() || stages.iter().any(|n| n == s.stage_name()))
        {
            let what = format!("dataset {name:?}, stage {:?}", s.stage_name());
            copies.push(CopyRef {
                name: s.stage_name().to_owned(),
                store: open_copy(s, loaded, &what).await?,
            });
        }
        plans.push(DatasetPlan {
            name: name.clone(),
            key: d.key.clone(),
            columns: d.columns.clone(),
            canonical,
            stages: copies,
            hasher: hasher.clone(),
        });
    }

    let control = open_control(loaded).await?;
    let run_id = uuid::Uuid::now_v7().to_string();
    control
        .start_run(&RunStart {
            run_id: run_id.clone(),
            mode: "scan".into(),
            started_by: started_by(),
            config_digest: loaded.digest(),
            started_us: now_us(),
        })
        .await?;

    let options = ScanOptions::default();
    let bar = progress_bar(&options);
    let mut reports = Vec::new();
    for plan in &plans {
        match scan_dataset(plan, &options).await {
            Ok(report) => reports.push(report),
            Err(e) => {
                bar.abandon();
                // The scan's error is the one to report; a failure to record it is secondary.
                if let Err(record) = control.finish_run(&run_id, "failed", now_us(), &[]).await {
                    tracing::warn!(%record, "could not record the failed run");
                }
                return Err(e.into());
            }
        }
    }
    bar.finish_and_clear();
    let report = RunReport {
        run_id: run_id.clone(),
        mode: Mode::Scan,
        datasets: reports,
    };
    let status = if report.has_drift() { "drift" } else { "consistent" };
    control
        .finish_run(&run_id, status, now_us(), &stage_counts(&report))
        .await?;
    Ok(report)
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

/// UTC microseconds since the epoch.
fn now_us() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
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
