//! `/metrics`: the DESIGN.md families, filled from the control plane's live state so that
//! every serving process reports the same figures: per stage the divergent keys, consistency,
//! queue depth, oldest pending divergence, last success, dead entries, blackout, repairs by
//! outcome and the work counters; fleet-wide the runs held for approval and the workers
//! heartbeating by role.
//!
//! The counters are sums over the finished runs' stages (rows digested, duplicate rows, time
//! held back); the reconciliation-lag histogram is counted from the ledger (each repair's
//! wait from first detection), the run-duration histogram from the runs.

use std::time::Duration;

use driftless_control::LagCounts;
use driftless_engine::context::now_us;
use driftless_engine::metrics::{LAG_BUCKETS, RUN_BUCKETS};
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
    work(api, &metrics).await?;
    for r in api.control.repair_outcomes().await? {
        if let Some(outcome) = RepairOutcome::parse(&r.outcome) {
            metrics.add_repairs(&r.dataset, &r.stage, outcome, u64::try_from(r.count).unwrap_or(0));
        }
    }
    let mut text = metrics.render().map_err(|e| ApiError::internal(&e.into()))?;
    text.push_str(&fleet(api, views).await?);
    Ok(text)
}

/// The finished runs' work, summed: rows digested (canonical's as stage `canonical`),
/// duplicate rows, time held back.
async fn work(api: &ApiState, metrics: &Metrics) -> Result<(), ApiError> {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    for w in api.control.stage_work().await? {
        metrics.add_rows_digested(&w.dataset, &w.stage, count(w.stage_rows));
        metrics.add_duplicate_commits(&w.dataset, &w.stage, count(w.duplicates));
        metrics.add_backpressure(&w.dataset, &w.stage, Duration::from_micros(count(w.held_back_us)));
    }
    for (dataset, rows) in api.control.canonical_rows().await? {
        metrics.add_rows_digested(&dataset, "canonical", count(rows));
    }
    Ok(())
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
    families.extend(histograms(api).await?);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| ApiError::internal(&e.into()))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The histograms the control plane can count: `driftless_reconciliation_lag_seconds` from
/// the ledger, `driftless_run_duration_seconds` from the finished runs.
async fn histograms(api: &ApiState) -> Result<Vec<MetricFamily>, ApiError> {
    let micros = |bounds: &[f64]| bounds.iter().map(|s| (s * 1e6) as i64).collect::<Vec<i64>>();
    let lags = api.control.repair_lags(&micros(LAG_BUCKETS)).await?;
    let runs = api.control.run_durations(&micros(RUN_BUCKETS)).await?;
    let lag = HistogramShape {
        name: "driftless_reconciliation_lag_seconds",
        help: "Time from a divergence's first detection to its repair.",
        bounds: LAG_BUCKETS,
        with_stage: true,
    };
    let run = HistogramShape {
        name: "driftless_run_duration_seconds",
        help: "Wall time of a run, per dataset.",
        bounds: RUN_BUCKETS,
        with_stage: false,
    };
    Ok([lag.family(&lags), run.family(&runs)].into_iter().flatten().collect())
}

/// One histogram family's shape.
struct HistogramShape {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    with_stage: bool,
}

impl HistogramShape {
    /// The family of `rows`; `None` without any.
    fn family(&self, rows: &[LagCounts]) -> Option<MetricFamily> {
        if rows.is_empty() {
            return None;
        }
        let label = |name: &str, value: &str| {
            let mut l = LabelPair::default();
            l.set_name(name.to_owned());
            l.set_value(value.to_owned());
            l
        };
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let mut family = MetricFamily::default();
        family.set_name(self.name.to_owned());
        family.set_help(self.help.to_owned());
        family.set_field_type(MetricType::HISTOGRAM);
        for r in rows {
            let buckets = self
                .bounds
                .iter()
                .zip(&r.at_most)
                .map(|(bound, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(count(*n));
                    b
                })
                .collect();
            let mut histogram = Histogram::default();
            histogram.set_bucket(buckets);
            histogram.set_sample_count(count(r.count));
            histogram.set_sample_sum(r.sum_us as f64 / 1e6);
            let mut labels = vec![label("dataset", &r.dataset)];
            if self.with_stage {
                labels.push(label("stage", &r.stage));
            }
            let mut metric = Metric::default();
            metric.set_label(labels);
            metric.set_histogram(histogram);
            family.mut_metric().push(metric);
        }
        Some(family)
    }
}
