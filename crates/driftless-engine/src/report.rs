//! The report of a run, shaped as the JSON contract in DESIGN.md. Extend it, never rename.

use serde::Serialize;
use serde_json::Value as Json;

/// What a run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Detect and report; no copy is written.
    Scan,
    /// Detect, then repair.
    Repair,
}

/// One run over one or more datasets.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Unique id of the run.
    pub run_id: String,
    /// What the run did.
    pub mode: Mode,
    /// One entry per dataset, in config order.
    pub datasets: Vec<DatasetReport>,
}

/// One dataset's result.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetReport {
    /// The dataset's name.
    pub dataset: String,
    /// One entry per stage, in config order.
    pub stages: Vec<StageReport>,
}

/// One stage's result against canonical.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    /// The stage's name.
    pub stage: String,
    /// Rows in the canonical copy.
    pub canonical_rows: u64,
    /// Rows in the stage's copy.
    pub stage_rows: u64,
    /// Divergent keys found.
    pub divergent: u64,
    /// Divergences repaired in this run.
    pub repaired: u64,
    /// The divergent keys, in key order.
    pub divergences: Vec<DivergenceReport>,
}

/// One divergent key.
#[derive(Clone, Debug, Serialize)]
pub struct DivergenceReport {
    /// The key, one member per key column (`{"key": "path"}` for object stores).
    pub key: Json,
    /// `missing`, `extra`, `changed` or `duplicate`.
    pub kind: &'static str,
}

impl RunReport {
    /// Whether any stage of any dataset has divergences left.
    pub fn has_drift(&self) -> bool {
        self.datasets
            .iter()
            .flat_map(|d| &d.stages)
            .any(|s| s.divergent > s.repaired)
    }
}
