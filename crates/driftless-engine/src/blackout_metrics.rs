//! `driftless_blackout_active{dataset, stage}`: 1 while a stage's repairer waits inside a
//! maintenance window, 0 once it writes again. The repairer sets it where it is gated, so
//! the gauge lives in one process-wide family that [`crate::Metrics::render`] includes.

use std::sync::LazyLock;

use prometheus::{IntGaugeVec, Opts, proto::MetricFamily};

static ACTIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "driftless_blackout_active",
            "1 while the stage is inside a maintenance window (no repair write starts)",
        ),
        &["dataset", "stage"],
    )
    .expect("valid metric")
});

/// Marks the stage inside (or outside) a window.
pub fn set_active(dataset: &str, stage: &str, inside: bool) {
    ACTIVE.with_label_values(&[dataset, stage]).set(i64::from(inside));
}

/// Whether the stage was last seen inside a window.
pub fn is_active(dataset: &str, stage: &str) -> bool {
    ACTIVE
        .get_metric_with_label_values(&[dataset, stage])
        .is_ok_and(|g| g.get() == 1)
}

/// The family, when any stage has a series.
pub fn gather() -> Vec<MetricFamily> {
    use prometheus::core::Collector as _;
    ACTIVE
        .collect()
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}
