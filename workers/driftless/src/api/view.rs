//! Every configured stage's latest state as the control plane holds it, read once per
//! request and shared by `/v1/status`, `/metrics` and the status page, so each says the same.

use std::time::Duration;

use driftless_control::{StageRun, StageState};
use driftless_engine::context::now_us;
use serde_json::{Value as Json, json};

use super::ApiState;
use super::error::ApiError;

/// What a stage looks like now, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No finished run has covered it.
    Unknown,
    /// Its latest run left it agreeing with canonical.
    Consistent,
    /// Its latest run left divergent keys.
    Drift,
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
}

impl StageView {
    /// Divergent keys the latest run left.
    pub fn divergent(&self) -> i64 {
        self.state
            .last_run
            .as_ref()
            .map_or(0, |r| (r.divergent - r.repaired).max(0))
    }

    /// The stage in one word: held over dead over drift.
    pub fn condition(&self) -> Condition {
        match &self.state.last_run {
            Some(r) if r.held.is_some() => Condition::Held,
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
    let mut views = Vec::new();
    for d in &api.loaded.config.datasets {
        for s in &d.stages {
            let (dataset, stage) = (d.name.get_ref().clone(), s.stage_name().to_owned());
            let state = api.control.stage_state(&dataset, &stage).await?;
            let lag = state
                .depth
                .lag_us(now)
                .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)));
            let blackout = d
                .policy(s, &api.loaded.source())
                .map(|p| p.blackout.is_inside(wall))
                .unwrap_or(false);
            views.push(StageView {
                dataset,
                stage,
                state,
                lag,
                blackout,
            });
        }
    }
    Ok(views)
}
