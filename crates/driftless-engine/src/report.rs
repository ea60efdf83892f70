//! The report of a run, shaped as the JSON contract in DESIGN.md. Extend it, never rename.

pub use driftless_control::{Mode, RepairStatus, RunStatus, StageStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One run over one or more datasets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// Unique id of the run.
    pub run_id: String,
    /// `consistent`, `drift`, or `held` (a stage awaits `driftless repair --approve`).
    pub status: RunStatus,
    /// What the run did.
    pub mode: Mode,
    /// The processes that took part: `user@host/pid`.
    pub workers: Vec<String>,
    /// One entry per dataset, in config order.
    pub datasets: Vec<DatasetReport>,
}

/// One dataset's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetReport {
    /// The dataset's name.
    pub dataset: String,
    /// One entry per stage, in config order.
    pub stages: Vec<StageReport>,
}

/// One stage's result against canonical.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageReport {
    /// The stage's name.
    pub stage: String,
    /// `consistent` or `drift` for a scan; what the repair came to for a repair.
    pub status: StageStatus,
    /// Rows in the canonical copy.
    pub canonical_rows: u64,
    /// Rows in the stage's copy.
    pub stage_rows: u64,
    /// Divergent keys found.
    pub divergent: u64,
    /// Divergences repaired in this run.
    pub repaired: u64,
    /// The divergent keys, in key order; at most the report limit of them.
    pub divergences: Vec<DivergenceReport>,
    /// The list of divergences (and of planned writes) was cut at the report limit;
    /// `divergent` is still the true count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// What `repair` did to the stage; absent for `scan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<StageRepairReport>,
    /// Stage rows repeating a commit id (`dedupe_key`); absent when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicate_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a repair run did to one stage (an extension of the DESIGN.md report contract).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRepairReport {
    /// `overwrite`, `compensate` or `report`.
    pub mode: String,
    /// `repaired` (nothing left), `incomplete` (some keys left, listed below), `held`
    /// (breaker: approval needed), `halted` (an earlier stage did not finish), `dry_run`,
    /// `report` (mode report), or `verify_failed`.
    pub status: RepairStatus,
    /// Why writes were held or halted, or what verification found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Entries by outcome (`applied`, `already_applied`, `resolved`, `skipped_newer`,
    /// `failed` attempts, `dead`, `planned`, `no_statement`).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Keys not overwritten because the stage changed after detection (a newer write).
    pub skipped_newer: Vec<Json>,
    /// Entries parked after failing too often, with the last error.
    pub dead: Vec<DeadReport>,
    /// With `--dry-run` (or mode report): the write each divergent key would get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<PlannedReport>,
    /// Time detection spent paused by backpressure and writes waited on the rate limit.
    pub held_back_secs: f64,
    /// Of that, the time detection spent paused because the stage's queue reached the high
    /// watermark.
    pub detection_paused_secs: f64,
}

/// A queue entry parked as dead.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadReport {
    /// The key.
    pub key: Json,
    /// The divergence kind.
    pub kind: String,
    /// Failed attempts.
    pub attempts: i64,
    /// The last error.
    pub error: Option<String>,
}

/// A write a dry run would make.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlannedReport {
    /// The key.
    pub key: Json,
    /// The divergence kind.
    pub kind: String,
    /// `put`, `delete` or `compensate`.
    pub action: String,
}

/// One divergent key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DivergenceReport {
    /// The key, one member per key column (`{"key": "path"}` for object stores).
    pub key: Json,
    /// `missing`, `extra`, `changed` or `duplicate`.
    pub kind: String,
}

/// Divergences a report lists per stage unless the config says otherwise.
pub const DEFAULT_REPORT_LIMIT: usize = 1000;

impl RunReport {
    /// The report of a finished run, its status read from its stages.
    pub fn finished(run_id: String, mode: Mode, workers: Vec<String>, datasets: Vec<DatasetReport>) -> RunReport {
        let mut report = RunReport {
            run_id,
            status: RunStatus::Consistent,
            mode,
            workers,
            datasets,
        };
        report.status = report.status_of();
        report
    }

    /// Whether the breaker held some stage's writes.
    pub fn held(&self) -> bool {
        self.datasets
            .iter()
            .flat_map(|d| &d.stages)
            .any(|s| s.repair.as_ref().is_some_and(|r| r.status == RepairStatus::Held))
    }

    /// `held`, `drift` or `consistent`.
    pub fn status_of(&self) -> RunStatus {
        if self.held() {
            RunStatus::Held
        } else if self.has_drift() {
            RunStatus::Drift
        } else {
            RunStatus::Consistent
        }
    }

    /// Whether any stage of any dataset has divergences left.
    pub fn has_drift(&self) -> bool {
        self.datasets
            .iter()
            .flat_map(|d| &d.stages)
            .any(|s| s.divergent > s.repaired)
    }
}
