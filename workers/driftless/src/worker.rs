//! `driftless worker`: the fleet's long-running process. Under one supervisor it steps a
//! run driver (claims a submitted run and drives it, holding the run by a heartbeated lease)
//! and `--concurrency` segment digesters (claim any running run's segments), with the
//! `schedule` role a scheduler, with `--listen` the HTTP API, and a heartbeat, until SIGTERM
//! or Ctrl-C; then it hands back what it holds, so that another worker takes it at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use driftless_control::{ClaimedRun, ControlPlane};
use driftless_engine::context::now_us;
use driftless_engine::lease::keep_lease;
use driftless_engine::lifecycle;
use driftless_engine::segment::SegmentWorker;
use driftless_engine::{EngineError, Mode, Shutdown, Supervisor, WorkContext, Worker, WorkerState};
use tracing::{info, warn};

use crate::api::ApiWorker;
use crate::config::{self, Loaded};
use crate::heartbeat::Heartbeat;
use crate::open::open_control;
use crate::run::{self, Selection};
use crate::schedule::ScheduleWorker;
use crate::{Common, Role, WorkerArgs, signals};

/// How long a driver with no run to claim waits before looking again.
const RUN_POLL: Duration = Duration::from_millis(500);
/// How long a step waits after the control plane failed, before trying again.
const CONTROL_RETRY: Duration = Duration::from_secs(1);

/// Runs the worker until a stop signal; `Ok(false)`: it stopped cleanly.
pub async fn run(common: &Common, args: &WorkerArgs) -> Result<bool> {
    let loaded = Arc::new(config::load(&common.config)?);
    let control = open_control(&loaded).await?;
    let owner = run::worker_id();
    let lease = Duration::from_secs(loaded.config.repair_settings().lease_secs.max(1));
    let shutdown = signals::listen(loaded.config.shutdown_grace());
    let modes = modes(args);
    let mut digesters = Vec::new();
    if modes.contains(&Mode::Scan) {
        let readable = run::plans(&loaded, &Selection::default(), Mode::Scan, false).await?;
        let plans: HashMap<_, _> = readable.into_iter().map(|p| (p.name.clone(), p)).collect();
        for _ in 0..args.concurrency.max(1) {
            let (plans, control, owner) = (plans.clone(), control.clone(), owner.clone());
            digesters.push(SegmentWorker::new(plans, control, owner, loaded.digest(), lease));
        }
    }
    let mut scheduler = match args.roles.contains(&Role::Schedule) {
        true => Some(ScheduleWorker::new(&loaded, control.clone())?),
        false => None,
    };
    let mut api = match args.listen {
        Some(addr) => Some(ApiWorker::start(addr, loaded.clone(), control.clone(), shutdown.clone()).await?),
        None => None,
    };
    let mut driver = RunDriver {
        loaded: &loaded,
        control: control.clone(),
        owner: owner.clone(),
        modes: modes.clone(),
        lease,
        shutdown: shutdown.clone(),
    };
    let roles = role_names(args);
    let mut heartbeat = Heartbeat::new(control.clone(), owner.clone(), roles.clone());
    eprintln!(
        "driftless: worker {owner} started (roles {}, {} segment digesters)",
        roles.join(","),
        digesters.len()
    );
    let mut supervisor = Supervisor::new(&shutdown);
    supervisor.add(&mut driver).add(&mut heartbeat);
    for d in &mut digesters {
        supervisor.add(d);
    }
    if let Some(s) = &mut scheduler {
        supervisor.add(s);
    }
    if let Some(a) = &mut api {
        supervisor.add(a);
    }
    let result = supervisor.run().await;
    let handed_back = hand_back(&control, &owner).await;
    heartbeat.forget().await;
    match result {
        Ok(()) => Ok(false),
        Err(EngineError::Interrupted(why)) => {
            eprintln!("driftless: worker {owner} stopped ({why}); {handed_back} leases handed back");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The run modes a worker's driver takes: its roles but `schedule`.
fn modes(args: &WorkerArgs) -> Vec<Mode> {
    args.roles
        .iter()
        .filter_map(|r| match r {
            Role::Scan => Some(Mode::Scan),
            Role::Repair => Some(Mode::Repair),
            Role::Schedule => None,
        })
        .collect()
}

/// The roles as the heartbeat records them (`serve` with `--listen`).
fn role_names(args: &WorkerArgs) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = args
        .roles
        .iter()
        .map(|r| match r {
            Role::Scan => "scan",
            Role::Repair => "repair",
            Role::Schedule => "schedule",
        })
        .collect();
    if args.listen.is_some() {
        names.push("serve");
    }
    names.dedup();
    names
}

/// Hands back every run, segment and queue entry `owner` holds; returns how many.
async fn hand_back(control: &ControlPlane, owner: &str) -> u64 {
    let mut n = 0;
    match control.release_worker(owner).await {
        Ok(k) => n += k,
        Err(e) => warn!(error = %e, "could not hand back this worker's runs and segments"),
    }
    match control.release_owner(owner).await {
        Ok(k) => n += k,
        Err(e) => warn!(error = %e, "could not hand back this worker's queue entries"),
    }
    n
}

/// Claims submitted runs of its modes and drives them one at a time.
struct RunDriver<'a> {
    loaded: &'a Loaded,
    control: ControlPlane,
    owner: String,
    modes: Vec<Mode>,
    lease: Duration,
    shutdown: Shutdown,
}

#[async_trait]
impl Worker for RunDriver<'_> {
    fn name(&self) -> String {
        "runs".to_owned()
    }

    async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
        if self.modes.is_empty() {
            return Ok(WorkerState::Done);
        }
        let now = now_us();
        let claimed = match self
            .control
            .claim_run(&self.owner, &self.modes, now, now + micros(self.lease))
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(WorkerState::Idle(RUN_POLL)),
            Err(e) => {
                warn!(error = %e, "could not claim a run; trying again");
                return Ok(WorkerState::Idle(CONTROL_RETRY));
            }
        };
        info!(run = %claimed.run_id, mode = %claimed.mode, "driving a submitted run");
        if let Err(e) = self.control.add_worker(&claimed.run_id, &self.owner).await {
            warn!(error = %e, "could not record this worker in the run");
        }
        if claimed.config_digest != self.loaded.digest() {
            let reason = format!(
                "it was submitted with another version of the config than worker {}'s {}; \
                 run every worker with the same config",
                self.owner,
                self.loaded.path.display()
            );
            lifecycle::fail_submitted(&self.control, &claimed.run_id, &self.owner, &reason).await;
            return Ok(WorkerState::Busy);
        }
        let drive = run::drive_submitted(self.loaded, &self.control, &claimed, self.shutdown.clone());
        let outcome = tokio::select! {
            result = drive => Some(result),
            () = keep_lease(self.lease, "the run's lease", |until| {
                self.control.renew_run(&claimed.run_id, &self.owner, until)
            }) => None,
        };
        match outcome {
            None => warn!(run = %claimed.run_id, "lost the run's lease; another worker drives it now"),
            Some(Ok(report)) => info!(run = %claimed.run_id, status = %report.status, "run finished"),
            Some(Err(e)) => self.failed(&claimed, e).await?,
        }
        Ok(WorkerState::Busy)
    }
}

impl RunDriver<'_> {
    /// A run that ended in an error: a stop signal hands it back for another worker (and
    /// stops this one); any other error fails the run, with the reason stored as its report.
    async fn failed(&self, claimed: &ClaimedRun, error: anyhow::Error) -> Result<(), EngineError> {
        if let Some(EngineError::Interrupted(why)) = error.downcast_ref::<EngineError>() {
            hand_back(&self.control, &self.owner).await;
            return Err(EngineError::Interrupted(why.clone()));
        }
        if is_control_plane(&error) {
            // The control plane failed under the run (restarting, unreachable): the run is
            // not at fault. It is handed back (or, while the control plane is out of reach,
            // its lease lapses) and driven again, by this worker or another.
            warn!(run = %claimed.run_id, error = %format!("{error:#}"), "the control plane failed; the run is handed back");
            hand_back(&self.control, &self.owner).await;
            tokio::time::sleep(CONTROL_RETRY).await;
            return Ok(());
        }
        let reason = format!("{error:#}");
        warn!(run = %claimed.run_id, error = %reason, "run failed");
        lifecycle::fail_submitted(&self.control, &claimed.run_id, &self.owner, &reason).await;
        Ok(())
    }
}

/// Whether an error came from the control plane rather than the run's copies or config.
fn is_control_plane(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<driftless_control::ControlError>().is_some()
            || matches!(e.downcast_ref::<EngineError>(), Some(EngineError::Control { .. }))
    })
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
