//! The report as a table for people or as the JSON contract for tools.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{Context, Result};
use driftless_engine::{RepairStatus, RunReport};

use crate::{OutputArgs, ReportFormat};

/// Divergent keys listed per stage in the table; the JSON report lists all.
const TABLE_KEYS_PER_STAGE: usize = 20;

/// Writes the report where and how `output` says.
pub fn write(report: &RunReport, output: &OutputArgs) -> Result<()> {
    let format = output.report.unwrap_or(if default_is_table(output) {
        ReportFormat::Table
    } else {
        ReportFormat::Json
    });
    let text = match format {
        ReportFormat::Json => serde_json::to_string_pretty(report).context("serialising the report")? + "\n",
        ReportFormat::Table => table(report),
    };
    emit(&text, output)
}

/// Writes `text` to the report file, or to standard output.
pub fn emit(text: &str, output: &OutputArgs) -> Result<()> {
    match &output.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write report to {}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .context("writing the report")
        }
    }
}

/// The report as aligned text: one line per stage, then its first divergent keys.
pub fn table(report: &RunReport) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail, here and below.
    writeln!(
        s,
        "run {}, mode {}",
        report.run_id,
        serde_json::to_value(report.mode)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?")
    )
    .unwrap();
    let header = [
        "dataset",
        "stage",
        "canonical",
        "stage rows",
        "divergent",
        "repaired",
        "status",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for d in &report.datasets {
        for st in &d.stages {
            let status = match st.repair.as_ref().map(|r| r.status) {
                Some(RepairStatus::Held) => "HELD (approval needed)".to_owned(),
                Some(RepairStatus::Halted) => "HALTED".to_owned(),
                Some(RepairStatus::VerifyFailed) => "VERIFY FAILED".to_owned(),
                _ if st.divergent > st.repaired => "DRIFT".to_owned(),
                _ => "ok".to_owned(),
            };
            rows.push([
                d.dataset.clone(),
                st.stage.clone(),
                st.canonical_rows.to_string(),
                st.stage_rows.to_string(),
                st.divergent.to_string(),
                st.repaired.to_string(),
                status,
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(s, "{}", line(&header)).unwrap();
    for r in &rows {
        writeln!(s, "{}", line(&r.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    }
    for d in &report.datasets {
        for st in d
            .stages
            .iter()
            .filter(|st| st.divergent > 0 || st.repair.as_ref().is_some_and(|r| !r.dead.is_empty()))
        {
            writeln!(s, "\n{} / {}:", d.dataset, st.stage).unwrap();
            if let Some(r) = &st.repair {
                let outcomes: Vec<String> = r.outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
                writeln!(
                    s,
                    "  repair ({}): {}",
                    r.mode,
                    if outcomes.is_empty() {
                        "nothing to do".into()
                    } else {
                        outcomes.join(", ")
                    }
                )
                .unwrap();
                if let Some(reason) = &r.reason {
                    writeln!(s, "  {reason}").unwrap();
                }
                for k in &r.skipped_newer {
                    writeln!(
                        s,
                        "  skipped   {k} (changed in the stage after detection; newer value kept)"
                    )
                    .unwrap();
                }
                for dead in &r.dead {
                    writeln!(
                        s,
                        "  dead      {} after {} attempts: {}",
                        dead.key,
                        dead.attempts,
                        dead.error.as_deref().unwrap_or("?")
                    )
                    .unwrap();
                }
            }
            for div in st.divergences.iter().take(TABLE_KEYS_PER_STAGE) {
                writeln!(s, "  {:<9} {}", div.kind, div.key).unwrap();
            }
            if st.divergences.len() > TABLE_KEYS_PER_STAGE {
                writeln!(
                    s,
                    "  ... and {} more (use --report json for all)",
                    st.divergences.len() - TABLE_KEYS_PER_STAGE
                )
                .unwrap();
            }
        }
    }
    s
}

/// Whether output goes to a terminal, which picks the default report format.
pub fn default_is_table(output: &OutputArgs) -> bool {
    output.out.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout())
}

/// UTC microseconds as RFC 3339 to the second.
pub fn timestamp(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
