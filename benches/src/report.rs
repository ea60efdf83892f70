//! Reading a `driftless scan --report json` report: which keys it names, with which kind.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde_json::Value as Json;

use crate::Divergence;

/// Every divergence of every stage of every dataset in `report_text`, as
/// `(key as compact JSON, kind)`.
pub fn divergences(report_text: &str) -> Result<BTreeSet<Divergence>> {
    let report: Json = serde_json::from_str(report_text).context("the report is not JSON")?;
    let mut out = BTreeSet::new();
    for dataset in report["datasets"]
        .as_array()
        .context("report has no `datasets` array")?
    {
        for stage in dataset["stages"].as_array().context("dataset has no `stages` array")? {
            for d in stage["divergences"]
                .as_array()
                .context("stage has no `divergences` array")?
            {
                let kind = d["kind"].as_str().context("divergence has no `kind`")?;
                out.insert((d["key"].to_string(), kind.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Checks that `found` is exactly `expected`, naming what is missing and what is surplus.
pub fn check_exact(expected: &BTreeSet<Divergence>, found: &BTreeSet<Divergence>) -> Result<()> {
    let missed: Vec<_> = expected.difference(found).collect();
    let surplus: Vec<_> = found.difference(expected).collect();
    anyhow::ensure!(
        missed.is_empty() && surplus.is_empty(),
        "report differs from the injected drift: {} not reported {missed:?}, {} not injected {surplus:?}",
        missed.len(),
        surplus.len()
    );
    Ok(())
}

/// The `N` of rclone's closing "N differences found" line.
pub fn rclone_differences(stderr: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.contains("differences found"))?;
    let before = line.split("differences found").next()?;
    before.split_whitespace().last()?.parse().ok()
}
