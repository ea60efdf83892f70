//! Every configured stage's latest state as the control plane holds it, read once per
//! request and shared by `/v1/status`, `/metrics` and the status page, so each says the same.

use std::time::Duration;

use driftless_control::{StageRun, StageState};
use driftless_engine::context::now_us;
use serde_json::{Value as Json, json};

use super::ApiState;
use super::error::ApiError;
use crate::run::{self, Selection};
use driftless_engine::{Mode, RunStatus};

/// What a stage looks like now, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No finished run has covered it.
    Unknown,
    /// Its latest run left it agreeing with canonical.
    Consistent,
    /// Its latest run left divergent keys.
    Drift,
    /// A repair run covering it is under way.
    Repairing,
    /// The breaker held its repair; a person must approve it.
    Held,
    /// Some of its divergences failed too often and were parked.
    Dead,
}

impl Condition {
    /// The label the API and the page use.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Unknown => "unknown",
            Condition::Consistent => "consistent",
            Condition::Drift => "drift",
            Condition::Repairing => "repairing",
            Condition::Held => "held",
            Condition::Dead => "dead",
        }
    }
}

/// One stage.
#[derive(Debug, Clone)]
pub struct StageView {
    /// The dataset.
    pub dataset: String,
    /// The stage.
    pub stage: String,
    /// What the control plane holds.
    pub state: StageState,
    /// How long the oldest unrepaired divergence has waited.
    pub lag: Option<Duration>,
    /// Whether a maintenance window is open now.
    pub blackout: bool,
    /// Whether a repair run covering it is under way.
    pub repairing: bool,
}

impl StageView {
    /// Divergent keys the latest run left.
    pub fn divergent(&self) -> i64 {
        self.state
            .last_run
            .as_ref()
            .map_or(0, |r| (r.divergent - r.repaired).max(0))
    }

    /// The stage in one word: held over repairing over dead over drift.
    pub fn condition(&self) -> Condition {
        match &self.state.last_run {
            Some(r) if r.held.is_some() => Condition::Held,
            _ if self.repairing => Condition::Repairing,
            _ if self.state.depth.dead > 0 => Condition::Dead,
            None => Condition::Unknown,
            Some(r) if r.is_good() => Condition::Consistent,
            Some(_) => Condition::Drift,
        }
    }

    /// The stage as `GET /v1/status` lists it.
    pub fn json(&self) -> Json {
        let run = |r: &StageRun| {
            json!({
                "run_id": r.run_id, "mode": r.mode, "status": r.status,
                "finished": super::timestamp(r.finished_us),
                "divergent": r.divergent, "repaired": r.repaired, "held": r.held,
            })
        };
        let depth = &self.state.depth;
        json!({
            "dataset": self.dataset,
            "stage": self.stage,
            "state": self.condition().as_str(),
            "divergent": self.divergent(),
            "queue": { "pending": depth.live, "stale": depth.stale, "dead": depth.dead },
            "lag_seconds": self.lag.map(|d| d.as_secs_f64()),
            "blackout": self.blackout,
            "last_run": self.state.last_run.as_ref().map(run),
            "last_good_run": self.state.last_good.as_ref().map(run),
        })
    }
}

/// Every configured stage, in config order.
pub async fn stages(api: &ApiState) -> Result<Vec<StageView>, ApiError> {
    let now = now_us();
    let wall = chrono::Utc::now();
    let repairs = running_repairs(api).await?;
    let mut views = Vec::new();
    for configured in &api.stages {
        let (dataset, stage) = (configured.dataset.clone(), configured.stage.clone());
        let state = api.control.stage_state(&dataset, &stage).await?;
        let repairing = repairs.iter().any(|r| covers(r, &dataset, &stage));
        views.push(StageView {
            lag: state.depth.lag(now),
            blackout: configured.blackout.is_inside(wall),
            dataset,
            stage,
            state,
            repairing,
        });
    }
    Ok(views)
}

/// How many recent runs are looked through for repairs under way.
const RECENT: u32 = 50;

/// The selections of the repair runs running now (among the recent ones).
async fn running_repairs(api: &ApiState) -> Result<Vec<Selection>, ApiError> {
    let mut selections = Vec::new();
    for run in api.control.recent_runs(None, RECENT).await? {
        if run.mode != Mode::Repair || run.status != RunStatus::Running {
            continue;
        }
        let scope = api.control.run_info(&run.run_id).await?.and_then(|i| i.scope);
        if let Some(selection) = scope.and_then(|s| run::selection_from_json(&s).ok()) {
            selections.push(selection);
        }
    }
    Ok(selections)
}

fn covers(selection: &Selection, dataset: &str, stage: &str) -> bool {
    let named = |names: &[String], name: &str| names.is_empty() || names.iter().any(|n| n == name);
    named(&selection.datasets, dataset) && named(&selection.stages, stage)
}
