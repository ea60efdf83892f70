//! A fleet process's heartbeat: every few seconds it records itself and its roles in the
//! control plane, where `driftless_workers{role}` counts the recent ones; on a clean stop it
//! removes itself.

use std::time::Duration;

use async_trait::async_trait;
use driftless_control::ControlPlane;
use driftless_engine::context::now_us;
use driftless_engine::{EngineError, WorkContext, Worker, WorkerState};
use tracing::warn;

/// How often a process records that it is alive (well inside the 15 s that `/metrics`
/// counts as alive).
pub const EVERY: Duration = Duration::from_secs(5);

/// The heartbeat worker.
#[derive(Debug)]
pub struct Heartbeat {
    control: ControlPlane,
    owner: String,
    roles: Vec<&'static str>,
}

impl Heartbeat {
    /// Beats for `owner` with `roles`.
    pub fn new(control: ControlPlane, owner: String, roles: Vec<&'static str>) -> Heartbeat {
        Heartbeat { control, owner, roles }
    }

    /// Removes the process from the control plane's workers (on a clean stop).
    pub async fn forget(&self) {
        if let Err(e) = self.control.forget_worker(&self.owner).await {
            warn!(error = %e, "could not remove this worker's heartbeat");
        }
    }
}

#[async_trait]
impl Worker for Heartbeat {
    fn name(&self) -> String {
        "heartbeat".to_owned()
    }

    async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
        if let Err(e) = self.control.heartbeat(&self.owner, &self.roles, now_us()).await {
            warn!(error = %e, "could not record this worker's heartbeat; trying again");
        }
        Ok(WorkerState::Idle(EVERY))
    }
}
