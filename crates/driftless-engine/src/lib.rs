//! The reconciliation engine: what a run does, independent of where copies live.
//!
//! # Layout
//!
//! - [`scan`]: one dataset's scan. Resolve the schema on canonical, sample its keys for
//!   boundaries, digest canonical and every stage into trees concurrently, compare each
//!   stage's tree with canonical top-down, re-read only divergent ranges and merge-join
//!   them into named divergences.
//! - [`report`]: the run report, serialised as the JSON contract of DESIGN.md.
//! - [`metrics`]: the metric families of DESIGN.md, rendered as Prometheus text, written
//!   atomically as a textfile or pushed to a Pushgateway.
//! - [`pace`]: per-stage pacing of repair writes, a governor rate limit with AIMD.
//! - [`run`]: a dataset's run against the control plane: detection queued as it goes, and
//!   for `repair` the breaker, the repairs, backpressure and verification, stage by stage;
//!   `outcome` renders what a stage came to as its repair report and metrics.
//! - [`repair`]: one stage's repairer (lease, re-read canonical, ledger intent, conditional
//!   write, settle). [`compensate`] compiles compensating statements; [`policy`] holds
//!   the per-stage policy and run-wide settings; [`detect`] scoped runs and duplicate commits.
//! - [`lifecycle`]: a run's life in the control plane (create, approve a held run, finish,
//!   abandon), shared by every entry point.
//! - [`worker`] and [`supervisor`]: the one `Worker` trait (a step returns busy, idle,
//!   throttled or done) and the supervisor that steps workers together and owns how they
//!   stop (Ctrl-C, SIGTERM, a failed worker). Detection of a stage (`detector`) and the
//!   repair of its queue are workers.
//! - [`blackout`]: maintenance windows in which no repair write starts; a repairer inside
//!   one is throttled until it ends (`driftless_blackout_active` in [`blackout_metrics`]).
//! - [`lease`]: one heartbeat for every lease a worker holds (run, segment, batch).
//! - [`segment`]: a submitted run's trees digested in segments by any worker of the fleet,
//!   under heartbeated leases, and read back from the recorded leaf digests.
//! - [`resume`]: a submitted run driven again after its driver died counts what the
//!   earlier driver repaired.
//! - [`settle`]: changed object keys whose fingerprints cannot be compared are settled by
//!   content on both copies before they are reported.
//!
//! The engine depends on the store traits only; the binary chooses the implementations.

pub mod blackout;
pub mod blackout_metrics;
pub mod compensate;
pub mod context;
pub mod detect;
mod detector;
pub mod error;
pub mod lease;
pub mod lifecycle;
pub mod metrics;
mod outcome;
pub mod pace;
pub mod plan;
pub mod policy;
pub mod repair;
mod repair_outcome;
pub mod report;
pub mod resume;
pub mod run;
pub mod scan;
pub mod segment;
pub mod settle;
pub mod supervisor;
pub mod worker;

pub use context::RunContext;
pub use detect::Scope;
pub use error::EngineError;
pub use metrics::{Metrics, MetricsError, RepairOutcome};
pub use pace::{PaceConfig, PaceError, Pacer};
pub use policy::{RepairMode, RepairSettings, StagePolicy};
pub use report::{DatasetReport, DivergenceReport, Mode, RepairStatus, RunReport, RunStatus, StageReport};
pub use run::run_dataset;
pub use scan::{CopyRef, DatasetPlan, ScanOptions, scan_dataset};
pub use supervisor::Supervisor;
pub use worker::{Shutdown, WorkContext, Worker, WorkerState};

/// Reads failpoint settings from the `FAILPOINTS` environment variable, in builds with the
/// `failpoints` feature (crash tests); does nothing otherwise. Call once, at start-up.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
