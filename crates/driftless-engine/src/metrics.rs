//! The metrics operators gate on, with the names DESIGN.md fixes.
//!
//! One [`Metrics`] per process holds every family in its own registry (never the global
//! one, so tests and embedders can hold several). Labels are `dataset` and `stage`, plus
//! `outcome` on repairs; a key never appears in a label, because keys are unbounded and may
//! be sensitive.
//!
//! A long-running worker serves [`Metrics::render`] on `/metrics`. A one-shot run writes it
//! with [`Metrics::write_textfile`] (for node exporter's textfile collector: written to a
//! temporary file beside the target and renamed, so the collector never reads half a file)
//! or sends it with [`Metrics::push`] to a Pushgateway.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

pub use crate::repair_outcome::RepairOutcome;

use prometheus::{
    CounterVec, Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Why metrics could not be written or pushed. Messages never contain the Pushgateway's
/// credentials: only its redacted address.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot write metrics file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot push metrics to {url}: {reason}")]
    Push { url: String, reason: String },
    #[error("cannot encode metrics: {0}")]
    Encode(String),
}

/// Buckets of the lag histogram, in seconds: from a repair in the same run (about a second)
/// to a divergence that waited for a weekly run.
pub const LAG_BUCKETS: &[f64] = &[
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
    3.0 * 86400.0,
    7.0 * 86400.0,
];

/// Buckets of the run duration histogram, in seconds.
pub const RUN_BUCKETS: &[f64] = &[
    0.1,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
];

/// Every driftless metric family, in one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    lag: HistogramVec,
    oldest_pending: GaugeVec,
    divergent_keys: IntGaugeVec,
    consistency: GaugeVec,
    duplicate_commits: IntCounterVec,
    repairs: IntCounterVec,
    queue_depth: IntGaugeVec,
    backpressure: CounterVec,
    rows_digested: IntCounterVec,
    last_success: GaugeVec,
    run_duration: HistogramVec,
}

const DS: &[&str] = &["dataset", "stage"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered and no series yet.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "driftless_reconciliation_lag_seconds",
                "Time from a divergence's first detection to its repair.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            DS,
        )
        .expect("valid histogram");
        let oldest_pending = GaugeVec::new(
            Opts::new(
                "driftless_oldest_pending_divergence_seconds",
                "Age of the oldest divergence still queued (0 when none).",
            ),
            DS,
        )
        .expect("valid gauge");
        let divergent_keys = IntGaugeVec::new(
            Opts::new(
                "driftless_divergent_keys",
                "Keys whose stage state differs from canonical, at the last scan.",
            ),
            DS,
        )
        .expect("valid gauge");
        let consistency = GaugeVec::new(
            Opts::new(
                "driftless_consistency_ratio",
                "Share of canonical keys that are consistent in the stage, 1 when fully consistent.",
            ),
            DS,
        )
        .expect("valid gauge");
        let duplicate_commits = IntCounterVec::new(
            Opts::new(
                "driftless_duplicate_commits_total",
                "Rows in a stage repeating a commit id (dedupe_key).",
            ),
            DS,
        )
        .expect("valid counter");
        let repairs = IntCounterVec::new(
            Opts::new("driftless_repairs_total", "Repairs by outcome."),
            &["dataset", "stage", "outcome"],
        )
        .expect("valid counter");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "driftless_queue_depth",
                "Divergences queued and not yet repaired (pending or leased).",
            ),
            DS,
        )
        .expect("valid gauge");
        let backpressure = CounterVec::new(
            Opts::new(
                "driftless_backpressure_seconds_total",
                "Time held back by backpressure: scans paused on queue depth, repairs waiting on the rate limit.",
            ),
            DS,
        )
        .expect("valid counter");
        let rows_digested = IntCounterVec::new(
            Opts::new("driftless_rows_digested_total", "Rows (or objects) digested, per copy."),
            DS,
        )
        .expect("valid counter");
        let last_success = GaugeVec::new(
            Opts::new(
                "driftless_last_success_timestamp_seconds",
                "Unix time of the last run that ended with the stage consistent.",
            ),
            DS,
        )
        .expect("valid gauge");
        let run_duration = HistogramVec::new(
            HistogramOpts::new("driftless_run_duration_seconds", "Wall time of a run, per dataset.")
                .buckets(RUN_BUCKETS.to_vec()),
            &["dataset"],
        )
        .expect("valid histogram");

        let metrics = Metrics {
            registry,
            lag,
            oldest_pending,
            divergent_keys,
            consistency,
            duplicate_commits,
            repairs,
            queue_depth,
            backpressure,
            rows_digested,
            last_success,
            run_duration,
        };
        for collector in metrics.collectors() {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.lag.clone()),
            Box::new(self.oldest_pending.clone()),
            Box::new(self.divergent_keys.clone()),
            Box::new(self.consistency.clone()),
            Box::new(self.duplicate_commits.clone()),
            Box::new(self.repairs.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.backpressure.clone()),
            Box::new(self.rows_digested.clone()),
            Box::new(self.last_success.clone()),
            Box::new(self.run_duration.clone()),
        ]
    }

    /// One repaired divergence: `lag` from its first detection to the repair.
    pub fn observe_lag(&self, dataset: &str, stage: &str, lag: Duration) {
        self.lag.with_label_values(&[dataset, stage]).observe(lag.as_secs_f64());
    }

    /// Age of the oldest queued divergence of a stage (zero when the queue is empty).
    pub fn set_oldest_pending(&self, dataset: &str, stage: &str, age: Duration) {
        self.oldest_pending
            .with_label_values(&[dataset, stage])
            .set(age.as_secs_f64());
    }

    /// Divergent keys found by the last scan of a stage.
    pub fn set_divergent_keys(&self, dataset: &str, stage: &str, keys: u64) {
        self.divergent_keys
            .with_label_values(&[dataset, stage])
            .set(saturating_i64(keys));
    }

    /// Consistency of a stage: `1 - divergent / max(canonical_rows, stage_rows)`, clamped to
    /// `[0, 1]`; an empty pair of copies is fully consistent.
    pub fn set_consistency(&self, dataset: &str, stage: &str, canonical_rows: u64, stage_rows: u64, divergent: u64) {
        self.consistency
            .with_label_values(&[dataset, stage])
            .set(consistency_ratio(canonical_rows, stage_rows, divergent));
    }

    /// Rows found repeating a commit id.
    pub fn add_duplicate_commits(&self, dataset: &str, stage: &str, rows: u64) {
        self.duplicate_commits.with_label_values(&[dataset, stage]).inc_by(rows);
    }

    /// Repairs ending with `outcome`.
    pub fn add_repairs(&self, dataset: &str, stage: &str, outcome: RepairOutcome, n: u64) {
        self.repairs
            .with_label_values(&[dataset, stage, outcome.as_str()])
            .inc_by(n);
    }

    /// Divergences queued and not yet repaired.
    pub fn set_queue_depth(&self, dataset: &str, stage: &str, depth: u64) {
        self.queue_depth
            .with_label_values(&[dataset, stage])
            .set(saturating_i64(depth));
    }

    /// Time held back by backpressure or rate limits.
    pub fn add_backpressure(&self, dataset: &str, stage: &str, held: Duration) {
        self.backpressure
            .with_label_values(&[dataset, stage])
            .inc_by(held.as_secs_f64());
    }

    /// Rows digested from one copy (`stage` is `canonical` for the canonical copy).
    pub fn add_rows_digested(&self, dataset: &str, stage: &str, rows: u64) {
        self.rows_digested.with_label_values(&[dataset, stage]).inc_by(rows);
    }

    /// A run ended with this stage consistent, at `unix_seconds`.
    pub fn set_last_success(&self, dataset: &str, stage: &str, unix_seconds: f64) {
        self.last_success.with_label_values(&[dataset, stage]).set(unix_seconds);
    }

    /// One run of one dataset took `took`.
    pub fn observe_run_duration(&self, dataset: &str, took: Duration) {
        self.run_duration
            .with_label_values(&[dataset])
            .observe(took.as_secs_f64());
    }

    /// Every series, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(
                &[self.registry.gather(), crate::blackout_metrics::gather()].concat(),
                &mut out,
            )
            .map_err(|e| MetricsError::Encode(e.to_string()))?;
        String::from_utf8(out).map_err(|e| MetricsError::Encode(e.to_string()))
    }

    /// Writes [`Metrics::render`] to `path` atomically: a temporary file in the same
    /// directory, flushed, then renamed over `path`.
    pub fn write_textfile(&self, path: &Path) -> Result<(), MetricsError> {
        let text = self.render()?;
        let shown = path.display().to_string();
        let write_err = |source| MetricsError::Write {
            path: shown.clone(),
            source,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
        tmp.write_all(text.as_bytes()).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(path).map_err(|e| write_err(e.error))?;
        Ok(())
    }

    /// Pushes every series to a Pushgateway under `job` (a `PUT`, so this run's series
    /// replace the previous push of the same job). `gateway` is the Pushgateway's base
    /// address, `http://host:9091`; credentials in it are sent as basic auth and never
    /// shown in errors.
    pub async fn push(&self, gateway: &str, job: &str) -> Result<(), MetricsError> {
        let shown = redact(gateway);
        let push_err = |reason: String| MetricsError::Push {
            url: shown.clone(),
            reason,
        };
        let mut url = url::Url::parse(gateway).map_err(|e| push_err(format!("not a URL: {e}")))?;
        if url.scheme() != "http" {
            return Err(push_err(format!(
                "scheme {}:// is not supported; this build pushes over plain http only",
                url.scheme()
            )));
        }
        let user = url.username().to_string();
        let password = url.password().map(str::to_string);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.path_segments_mut()
            .map_err(|()| push_err("cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(["metrics", "job", job]);
        let body = self.render()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| push_err(e.to_string()))?;
        let mut request = client
            .put(url)
            .header("content-type", "text/plain; version=0.0.4")
            .body(body);
        if !user.is_empty() || password.is_some() {
            request = request.basic_auth(user, password);
        }
        let response = request.send().await.map_err(|e| push_err(describe_reqwest(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let text = text.trim();
            return Err(push_err(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        Ok(())
    }
}

/// `1 - divergent / max(canonical_rows, stage_rows)`, in `[0, 1]`.
pub fn consistency_ratio(canonical_rows: u64, stage_rows: u64, divergent: u64) -> f64 {
    let total = canonical_rows.max(stage_rows);
    if total == 0 {
        return if divergent == 0 { 1.0 } else { 0.0 };
    }
    (1.0 - divergent as f64 / total as f64).clamp(0.0, 1.0)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The address without user, password or query, for messages.
fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.to_string()
        }
        Err(_) => "<unparseable address>".to_string(),
    }
}

/// reqwest's error without the URL it carries (which may hold credentials).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_design_names_with_labels() {
        let m = Metrics::new();
        m.add_duplicate_commits("orders", "test", 3);
        m.add_repairs("orders", "test", RepairOutcome::Applied, 7);
        m.add_repairs("orders", "test", RepairOutcome::SkippedNewer, 1);
        m.observe_lag("orders", "test", Duration::from_secs(90));
        m.set_consistency("orders", "test", 100, 98, 5);
        m.add_backpressure("orders", "test", Duration::from_millis(1500));
        let text = m.render().unwrap();
        assert!(
            text.contains("driftless_duplicate_commits_total{dataset=\"orders\",stage=\"test\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("driftless_repairs_total{dataset=\"orders\",outcome=\"applied\",stage=\"test\"} 7"),
            "{text}"
        );
        assert!(text.contains("outcome=\"skipped_newer\""), "{text}");
        assert!(
            text.contains("# TYPE driftless_reconciliation_lag_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("driftless_reconciliation_lag_seconds_bucket{dataset=\"orders\",stage=\"test\",le=\"60\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "driftless_reconciliation_lag_seconds_bucket{dataset=\"orders\",stage=\"test\",le=\"300\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("driftless_consistency_ratio{dataset=\"orders\",stage=\"test\"} 0.95"),
            "{text}"
        );
        assert!(
            text.contains("driftless_backpressure_seconds_total{dataset=\"orders\",stage=\"test\"} 1.5"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.set_divergent_keys("a\"b", "new\nline", 2);
        let text = m.render().unwrap();
        assert!(
            text.contains(r#"driftless_divergent_keys{dataset="a\"b",stage="new\nline"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn consistency_ratio_edges() {
        assert_eq!(consistency_ratio(0, 0, 0), 1.0);
        assert_eq!(consistency_ratio(10, 0, 10), 0.0);
        assert_eq!(consistency_ratio(10, 10, 0), 1.0);
        assert_eq!(consistency_ratio(10, 12, 30), 0.0);
        assert!((consistency_ratio(1000, 1000, 1) - 0.999).abs() < 1e-12);
    }

    #[test]
    fn textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("driftless.prom");
        std::fs::write(&path, "stale").unwrap();
        let m = Metrics::new();
        m.set_queue_depth("d", "s", 4);
        m.write_textfile(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("driftless_queue_depth{dataset=\"d\",stage=\"s\"} 4"),
            "{text}"
        );
        assert!(!text.contains("stale"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
    }

    #[test]
    fn missing_directory_names_the_path() {
        let m = Metrics::new();
        let err = m
            .write_textfile(Path::new("/nonexistent-driftless-dir/m.prom"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent-driftless-dir/m.prom"), "{err}");
    }

    #[tokio::test]
    async fn push_errors_hide_credentials() {
        let m = Metrics::new();
        // Port 9 (discard) on loopback: nothing listens, so the connect fails fast.
        let err = m.push("http://user:s3cret@127.0.0.1:9", "driftless").await.unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("s3cret") && !text.contains("user"), "{text}");
        assert!(text.contains("127.0.0.1:9"), "{text}");
        let err = m.push("https://127.0.0.1:9", "driftless").await.unwrap_err();
        assert!(err.to_string().contains("plain http"), "{err}");
    }

    /// Reads one HTTP request (headers and a content-length body) from a loopback client,
    /// answers `status`, and returns the request text.
    async fn serve_one(listener: tokio::net::TcpListener, status: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .map(|v| v.parse::<usize>().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    break;
                }
            }
            assert!(n > 0, "client closed early");
        }
        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope");
        socket.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[tokio::test]
    async fn push_puts_text_format_under_the_job() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve_one(listener, "200 OK"));
        let m = Metrics::new();
        m.add_duplicate_commits("orders", "test", 2);
        m.push(&format!("http://ops:pw@127.0.0.1:{port}/"), "driftless")
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("PUT /metrics/job/driftless HTTP/1.1\r\n"),
            "{request}"
        );
        // Basic auth of ops:pw.
        assert!(
            request.to_ascii_lowercase().contains("authorization: basic b3bzonb3"),
            "{request}"
        );
        assert!(
            request.contains("driftless_duplicate_commits_total{dataset=\"orders\",stage=\"test\"} 2"),
            "{request}"
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve_one(listener, "500 Internal Server Error"));
        let err = m
            .push(&format!("http://ops:pw@127.0.0.1:{port}"), "driftless")
            .await
            .unwrap_err();
        server.await.unwrap();
        let text = err.to_string();
        assert!(
            text.contains("HTTP 500") && text.contains("nope") && !text.contains("pw@"),
            "{text}"
        );
    }
}
