//! `/metrics`: the DESIGN.md families, filled from the control plane's live state so that
//! every serving process reports the same figures: per stage the divergent keys, consistency,
//! queue depth, oldest pending divergence, last success, dead entries, blackout and repairs by
//! outcome; fleet-wide the runs held for approval and the workers heartbeating by role.
//!
//! The reconciliation-lag histogram is counted from the ledger (each repair's wait from first
//! detection). The counters of work one process did (rows digested, backpressure, duplicate
//! commits, run durations) are not kept in the control plane; a one-shot run writes or
//! pushes them.

use std::time::Duration;

use driftless_engine::context::now_us;
use driftless_engine::metrics::LAG_BUCKETS;
use driftless_engine::{Metrics, RepairOutcome, blackout_metrics};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::ApiState;
use super::error::ApiError;
use super::view::StageView;

/// A worker counts as alive while its last heartbeat is this recent.
pub const ALIVE: Duration = Duration::from_secs(15);

/// The whole exposition, in the Prometheus text format.
pub async fn render(api: &ApiState, views: &[StageView]) -> Result<String, ApiError> {
    let metrics = Metrics::new();
    for v in views {
        stage_figures(&metrics, v);
    }
    for r in api.control.repair_outcomes().await? {
        if let Some(outcome) = RepairOutcome::parse(&r.outcome) {
            metrics.add_repairs(&r.dataset, &r.stage, outcome, u64::try_from(r.count).unwrap_or(0));
        }
    }
    let mut text = metrics.render().map_err(|e| ApiError::internal(&e.into()))?;
    text.push_str(&fleet(api, views).await?);
    Ok(text)
}

fn stage_figures(metrics: &Metrics, v: &StageView) {
    let (d, s) = (v.dataset.as_str(), v.stage.as_str());
    let depth = &v.state.depth;
    metrics.set_queue_depth(d, s, depth.live);
    metrics.set_oldest_pending(d, s, v.lag.unwrap_or_default());
    blackout_metrics::set_active(d, s, v.blackout);
    if let Some(run) = &v.state.last_run {
        let remaining = u64::try_from(v.divergent()).unwrap_or(0);
        metrics.set_divergent_keys(d, s, remaining);
        let rows = |n: i64| u64::try_from(n).unwrap_or(0);
        metrics.set_consistency(d, s, rows(run.canonical_rows), rows(run.stage_rows), remaining);
    }
    if let Some(good) = &v.state.last_good {
        metrics.set_last_success(d, s, good.finished_us as f64 / 1e6);
    }
}

/// `driftless_dead_entries`, `driftless_held_runs` and `driftless_workers{role}`.
async fn fleet(api: &ApiState, views: &[StageView]) -> Result<String, ApiError> {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
        registry.register(Box::new(g.clone())).expect("unique names");
        g
    };
    let dead = gauge(
        "driftless_dead_entries",
        "Divergences parked after too many failed repair attempts.",
        &["dataset", "stage"],
    );
    for v in views {
        dead.with_label_values(&[&v.dataset, &v.stage])
            .set(i64::try_from(v.state.depth.dead).unwrap_or(i64::MAX));
    }
    let held = IntGauge::with_opts(Opts::new(
        "driftless_held_runs",
        "Repair runs the breaker held, awaiting approval.",
    ))
    .expect("valid gauge");
    registry.register(Box::new(held.clone())).expect("unique names");
    held.set(api.control.held_runs().await?);
    let workers = gauge(
        "driftless_workers",
        "Workers whose heartbeat is recent, by role.",
        &["role"],
    );
    let since = now_us() - i64::try_from(ALIVE.as_micros()).unwrap_or(0);
    for (role, n) in api.control.workers_by_role(since).await? {
        workers.with_label_values(&[&role]).set(n);
    }
    let mut families = registry.gather();
    families.extend(lag_family(api).await?);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| ApiError::internal(&e.into()))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `driftless_reconciliation_lag_seconds` from the ledger, in the engine's buckets; `None`
/// before any repair.
async fn lag_family(api: &ApiState) -> Result<Option<MetricFamily>, ApiError> {
    let bounds: Vec<i64> = LAG_BUCKETS.iter().map(|s| (s * 1e6) as i64).collect();
    let stages = api.control.repair_lags(&bounds).await?;
    if stages.is_empty() {
        return Ok(None);
    }
    let label = |name: &str, value: &str| {
        let mut l = LabelPair::default();
        l.set_name(name.to_owned());
        l.set_value(value.to_owned());
        l
    };
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let mut family = MetricFamily::default();
    family.set_name("driftless_reconciliation_lag_seconds".to_owned());
    family.set_help("Time from a divergence's first detection to its repair.".to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    for s in stages {
        let buckets = LAG_BUCKETS
            .iter()
            .zip(&s.at_most)
            .map(|(bound, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(count(*n));
                b
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(count(s.count));
        histogram.set_sample_sum(s.sum_us as f64 / 1e6);
        let mut metric = Metric::default();
        metric.set_label(vec![label("dataset", &s.dataset), label("stage", &s.stage)]);
        metric.set_histogram(histogram);
        family.mut_metric().push(metric);
    }
    Ok(Some(family))
}
