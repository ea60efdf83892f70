//! Fleet-wide figures read from the control plane's live state, the same whichever process
//! serves them: workers heartbeating by role, runs held for approval, dead queue entries,
//! and one run's divergences a page at a time.

use std::collections::BTreeMap;

use crate::queue::{EntryRow, entry_record};
use crate::{ControlError, ControlPlane, Db, EntryRecord, sqlite_sql};

/// Dead entries of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadCount {
    /// The dataset.
    pub dataset: String,
    /// The stage.
    pub stage: String,
    /// Entries parked after too many failed attempts.
    pub dead: i64,
}

/// Ledger rows of one stage with one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairCount {
    /// The dataset.
    pub dataset: String,
    /// The stage.
    pub stage: String,
    /// `applied`, `skipped_newer`, `failed`, ... as the ledger records it.
    pub outcome: String,
    /// How many.
    pub count: i64,
}

/// Counts by bound, for a histogram: one stage's repairs by how long each waited from first
/// detection, or one dataset's runs by how long each took (`stage` empty): how many took at
/// most each bound, how many in all, and their total, in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagCounts {
    /// The dataset.
    pub dataset: String,
    /// The stage.
    pub stage: String,
    /// Per bound (in the order asked), the repairs that waited at most that long.
    pub at_most: Vec<i64>,
    /// Every repair.
    pub count: i64,
    /// Their waits added up, microseconds.
    pub sum_us: i64,
}

/// What the finished runs did to one stage, summed: the fleet's work counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageWork {
    /// The dataset.
    pub dataset: String,
    /// The stage.
    pub stage: String,
    /// Stage rows digested.
    pub stage_rows: i64,
    /// Stage rows found repeating a commit id.
    pub duplicates: i64,
    /// Time held back by backpressure and the rate limit, microseconds.
    pub held_back_us: i64,
}

/// `SELECT labels, COUNT(*), SUM(value), one cumulative count per bound`: a histogram's
/// columns over `value`, as [`ControlPlane::bucket_counts`] reads them. The bounds are
/// integers this code chose, not input: nothing to bind.
fn bucket_select(labels: &str, value: &str, bounds_us: &[i64]) -> String {
    let mut sql = format!("SELECT {labels}, COUNT(*), CAST(COALESCE(SUM({value}), 0) AS BIGINT)");
    for b in bounds_us {
        sql.push_str(&format!(
            ", CAST(SUM(CASE WHEN {value} <= {b} THEN 1 ELSE 0 END) AS BIGINT)"
        ));
    }
    sql
}

const HEARTBEAT: &str = "INSERT INTO workers (worker_id, roles, heartbeat_us) VALUES ($1, $2, $3) \
                         ON CONFLICT (worker_id) DO UPDATE SET roles = excluded.roles, heartbeat_us = excluded.heartbeat_us";

impl ControlPlane {
    /// Records that `worker` with `roles` is alive at `now_us`.
    pub async fn heartbeat(&self, worker: &str, roles: &[&str], now_us: i64) -> Result<(), ControlError> {
        let roles = roles.join(",");
        on_db!(self, |pool, sql| {
            sqlx::query(&sql(HEARTBEAT))
                .bind(worker)
                .bind(&roles)
                .bind(now_us)
                .execute(pool)
                .await
                .map(drop)
        })
    }

    /// Removes `worker`'s heartbeat (it stopped cleanly).
    pub async fn forget_worker(&self, worker: &str) -> Result<(), ControlError> {
        const SQL: &str = "DELETE FROM workers WHERE worker_id = $1";
        on_db!(self, |pool, sql| {
            sqlx::query(&sql(SQL)).bind(worker).execute(pool).await.map(drop)
        })
    }

    /// Workers whose last heartbeat is at or after `since_us`, counted by role.
    pub async fn workers_by_role(&self, since_us: i64) -> Result<BTreeMap<String, i64>, ControlError> {
        const SQL: &str = "SELECT roles FROM workers WHERE heartbeat_us >= $1";
        let rows: Vec<String> = on_db!(self, |pool, sql| {
            sqlx::query_scalar(&sql(SQL)).bind(since_us).fetch_all(pool).await
        })?;
        let mut counts = BTreeMap::new();
        for role in rows.iter().flat_map(|r| r.split(',')).filter(|r| !r.is_empty()) {
            *counts.entry(role.to_owned()).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// Runs the breaker held that wait for approval.
    pub async fn held_runs(&self) -> Result<i64, ControlError> {
        const SQL: &str = "SELECT count(*) FROM runs WHERE status = 'held'";
        on_db!(self, |pool, sql| {
            sqlx::query_scalar::<_, i64>(&sql(SQL)).fetch_one(pool).await
        })
    }

    /// Dead entries per stage, for every stage that has any.
    pub async fn dead_counts(&self) -> Result<Vec<DeadCount>, ControlError> {
        const SQL: &str = "SELECT dataset, stage, count(*) FROM divergences WHERE state = 'dead' \
                           GROUP BY dataset, stage ORDER BY dataset, stage";
        let rows: Vec<(String, String, i64)> =
            on_db!(self, |pool, sql| sqlx::query_as(&sql(SQL)).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(dataset, stage, dead)| DeadCount { dataset, stage, dead })
            .collect())
    }

    /// Repairs recorded in the ledger, by dataset, stage and outcome.
    pub async fn repair_outcomes(&self) -> Result<Vec<RepairCount>, ControlError> {
        const SQL: &str = "SELECT dataset, stage, outcome, COUNT(*) FROM repairs GROUP BY dataset, stage, outcome";
        let rows: Vec<(String, String, String, i64)> =
            on_db!(self, |pool, sql| sqlx::query_as(&sql(SQL)).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(dataset, stage, outcome, count)| RepairCount {
                dataset,
                stage,
                outcome,
                count,
            })
            .collect())
    }

    /// Per stage, the finished runs' rows digested, duplicate rows and time held back.
    pub async fn stage_work(&self) -> Result<Vec<StageWork>, ControlError> {
        const SQL: &str = "SELECT s.dataset, s.stage, CAST(SUM(s.stage_rows) AS BIGINT), \
                           CAST(SUM(s.duplicates) AS BIGINT), CAST(SUM(s.held_back_us) AS BIGINT) \
                           FROM run_stages s JOIN runs r ON r.run_id = s.run_id \
                           WHERE r.finished_us IS NOT NULL GROUP BY s.dataset, s.stage";
        let rows: Vec<(String, String, i64, i64, i64)> =
            on_db!(self, |pool, sql| sqlx::query_as(&sql(SQL)).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(dataset, stage, stage_rows, duplicates, held_back_us)| StageWork {
                dataset,
                stage,
                stage_rows,
                duplicates,
                held_back_us,
            })
            .collect())
    }

    /// Per dataset, the canonical rows the finished runs digested (once a run).
    pub async fn canonical_rows(&self) -> Result<Vec<(String, i64)>, ControlError> {
        const SQL: &str = "SELECT dataset, CAST(SUM(rows) AS BIGINT) FROM \
                           (SELECT s.dataset, MAX(s.canonical_rows) AS rows FROM run_stages s \
                            JOIN runs r ON r.run_id = s.run_id WHERE r.finished_us IS NOT NULL \
                            GROUP BY s.run_id, s.dataset) per_run GROUP BY dataset";
        on_db!(self, |pool, sql| sqlx::query_as(&sql(SQL)).fetch_all(pool).await)
    }

    /// Per dataset, the finished runs that covered it, counted against each of `bounds_us`
    /// by their wall time: the run-duration histogram, fleet-wide (a run's whole time counts
    /// for each dataset it covered).
    pub async fn run_durations(&self, bounds_us: &[i64]) -> Result<Vec<LagCounts>, ControlError> {
        let mut sql = bucket_select("dataset, ''", "took", bounds_us);
        sql.push_str(
            " FROM (SELECT DISTINCT s.run_id, s.dataset, r.finished_us - r.started_us AS took FROM run_stages s \
             JOIN runs r ON r.run_id = s.run_id WHERE r.finished_us IS NOT NULL) per_run GROUP BY dataset",
        );
        self.bucket_counts(&sql, bounds_us.len()).await
    }

    /// Repairs made (applied, or found made) per stage, counted against each of `bounds_us`
    /// by their wait from first detection: the reconciliation-lag histogram, fleet-wide.
    pub async fn repair_lags(&self, bounds_us: &[i64]) -> Result<Vec<LagCounts>, ControlError> {
        let mut sql = bucket_select("dataset, stage", "applied_us - first_seen_us", bounds_us);
        sql.push_str(
            " FROM repairs WHERE outcome IN ('applied', 'resolved') AND first_seen_us > 0 GROUP BY dataset, stage",
        );
        self.bucket_counts(&sql, bounds_us.len()).await
    }

    /// Rows of `(dataset, stage, count, sum, cumulative count per bound...)` as [`LagCounts`].
    async fn bucket_counts(&self, sql: &str, bounds: usize) -> Result<Vec<LagCounts>, ControlError> {
        use sqlx::Row as _;
        on_db!(self, |pool, _sql| {
            sqlx::query(sql).fetch_all(pool).await.and_then(|rows| {
                rows.iter()
                    .map(|r| {
                        Ok(LagCounts {
                            dataset: r.try_get(0)?,
                            stage: r.try_get(1)?,
                            count: r.try_get(2)?,
                            sum_us: r.try_get(3)?,
                            at_most: (0..bounds).map(|i| r.try_get(4 + i)).collect::<Result<_, _>>()?,
                        })
                    })
                    .collect()
            })
        })
    }

    /// Up to `limit` of the divergences run `run_id` detected last in a stage, in key order,
    /// after the key whose encoding is `after` (the previous page's last).
    pub async fn run_divergence_page(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<EntryRecord>, ControlError> {
        const SQL: &str = "SELECT key_bytes, key_json, kind, state, attempts, last_error FROM divergences \
                           WHERE last_run_id = $1 AND dataset = $2 AND stage = $3 \
                           AND ($4::bytea IS NULL OR key_bytes > $4) ORDER BY key_bytes LIMIT $5";
        let lite = SQL.replace("::bytea", "");
        let rows: Vec<EntryRow> = on_db!(self, pg: SQL, sqlite: lite, |pool, text| {
            sqlx::query_as(text)
                .bind(run_id)
                .bind(dataset)
                .bind(stage)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?;
        Ok(rows.into_iter().map(entry_record).collect())
    }
}
