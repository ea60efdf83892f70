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
//!
//! The engine depends on the store traits only; the binary chooses the implementations.

pub mod metrics;
pub mod pace;
pub mod report;
pub mod scan;

pub use metrics::{Metrics, MetricsError, RepairOutcome};
pub use pace::{PaceConfig, PaceError, Pacer};
pub use report::{DatasetReport, DivergenceReport, Mode, RunReport, StageReport};
pub use scan::{CopyRef, DatasetPlan, EngineError, ScanOptions, scan_dataset};
