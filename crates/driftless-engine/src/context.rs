//! What a run shares across its datasets and workers, and the clock it records with.

use std::collections::HashMap;

use driftless_control::ControlPlane;

use crate::detect::Scope;
use crate::metrics::Metrics;
use crate::policy::RepairSettings;
use crate::report::Mode;
use crate::scan::ScanOptions;
use crate::worker::Shutdown;

/// Everything a run shares across its datasets.
#[derive(Debug)]
pub struct RunContext {
    /// The run's id.
    pub run_id: String,
    /// `scan` or `repair`.
    pub mode: Mode,
    /// `repair --dry-run`: plan only, write no copy.
    pub dry_run: bool,
    /// The control plane.
    pub control: ControlPlane,
    /// Where the run's metrics go.
    pub metrics: Metrics,
    /// Lease, batch, backoff and watermark settings.
    pub settings: RepairSettings,
    /// Keys the run is limited to, if any.
    pub scope: Scope,
    /// Approved stages of a held run being continued: `(dataset, stage)` -> the divergent
    /// keys approved (the breaker lets up to that many through).
    pub approved: HashMap<(String, String), u64>,
    /// Who holds leases: `user@host/pid`.
    pub owner: String,
    /// Tree-building knobs and progress counters.
    pub options: ScanOptions,
    /// The process's stop signal: workers take no new step after it.
    pub shutdown: Shutdown,
    /// Hex BLAKE3 of the config the run was started with.
    pub config_digest: String,
    /// Trees are digested in segments that any worker of the fleet may take (a submitted
    /// run), rather than whole in this process.
    pub segmented: bool,
}

/// UTC microseconds since the epoch.
pub fn now_us() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}
