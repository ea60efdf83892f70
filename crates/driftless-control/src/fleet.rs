//! The fleet's share of the control plane: runs submitted for workers and held by a
//! heartbeated lease, the plan of each dataset (its leaf boundaries), the segments any
//! worker digests, the workers that took part, and the report a finished run leaves.
//!
//! Claims are one statement each. On PostgreSQL the candidate row is locked `FOR UPDATE
//! SKIP LOCKED` in a materialized CTE, so concurrent claims take different rows and never
//! wait on each other; on SQLite the one `UPDATE ... RETURNING` holds the database's single
//! write lock. A lease that is not renewed before it lapses is anyone's again; a worker that
//! stops hands its leases back at once ([`ControlPlane::release_worker`]).

use crate::status::{Mode, RunStatus};
use crate::{ControlError, ControlPlane, Db, RunStart, sqlite_sql};

/// A run a worker has claimed to drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRun {
    /// The run's id.
    pub run_id: String,
    /// What it does.
    pub mode: Mode,
    /// Hex BLAKE3 of the config it was submitted with.
    pub config_digest: String,
    /// What it covers (JSON).
    pub scope: Option<String>,
    /// Whether someone approved it after the breaker held it: its held stages may repair
    /// the keys they were held with.
    pub approved: bool,
}

/// A segment a worker has claimed to digest: leaves `leaf_first..=leaf_last` of one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The run.
    pub run_id: String,
    /// The dataset.
    pub dataset: String,
    /// The leaf digests' copy label: `canonical` or a stage, `:kind` for a push-down tree.
    pub copy: String,
    /// The first leaf.
    pub leaf_first: u32,
    /// The last leaf.
    pub leaf_last: u32,
    /// Claims so far, this one included.
    pub attempts: i64,
}

/// A run as `driftless runs` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run's id.
    pub run_id: String,
    /// What it does.
    pub mode: Mode,
    /// Where it stands.
    pub status: RunStatus,
    /// Who started it.
    pub started_by: String,
    /// UTC microseconds.
    pub started_us: i64,
    /// UTC microseconds, once finished.
    pub finished_us: Option<i64>,
    /// Divergent keys over its recorded stages.
    pub divergent: i64,
}

type SegmentRow = (String, String, String, i32, i32, i64);

fn segment_from_row((run_id, dataset, copy, first, last, attempts): SegmentRow) -> Segment {
    Segment {
        run_id,
        dataset,
        copy,
        leaf_first: first.max(0) as u32,
        leaf_last: last.max(0) as u32,
        attempts,
    }
}

/// The insert of a run queued for the fleet, bound to `run` (also used by a claimed
/// schedule tick, in its transaction).
macro_rules! queued_run {
    ($sql:ident, $run:expr) => {
        sqlx::query(&$sql(
            "INSERT INTO runs (run_id, mode, started_by, config_digest, started_us, scope, status) \
             VALUES ($1, $2, $3, $4, $5, $6, 'queued')",
        ))
        .bind(&$run.run_id)
        .bind($run.mode.as_str())
        .bind(&$run.started_by)
        .bind(&$run.config_digest)
        .bind($run.started_us)
        .bind(&$run.scope)
    };
}
pub(crate) use queued_run;

impl ControlPlane {
    /// Records a run submitted for the fleet: `queued` until a worker claims it.
    pub async fn queue_run(&self, run: &RunStart) -> Result<(), ControlError> {
        on_db!(self, |pool, sql| {
            queued_run!(sql, run).execute(pool).await.map(drop)
        })
    }

    /// Claims the oldest run of one of `modes` that is queued, or running under a lease that
    /// lapsed (its worker died or was cut off), for `owner` until `lease_until_us`.
    pub async fn claim_run(
        &self,
        owner: &str,
        modes: &[Mode],
        now_us: i64,
        lease_until_us: i64,
    ) -> Result<Option<ClaimedRun>, ControlError> {
        // The modes' own names, never input: safe to splice.
        let names: Vec<String> = modes.iter().map(|m| format!("'{}'", m.as_str())).collect();
        let names = if names.is_empty() {
            "NULL".to_owned()
        } else {
            names.join(", ")
        };
        let due = format!(
            "mode IN ({names}) AND (status = 'queued' OR (status = 'running' AND owner IS NOT NULL \
             AND lease_until_us <= $3))"
        );
        let pg = format!(
            "WITH c AS MATERIALIZED (SELECT run_id FROM runs WHERE {due} ORDER BY run_id LIMIT 1 \
             FOR UPDATE SKIP LOCKED) \
             UPDATE runs r SET status = 'running', owner = $1, lease_until_us = $2 FROM c WHERE r.run_id = c.run_id \
             RETURNING r.run_id, r.mode, r.config_digest, r.scope, r.approved_by"
        );
        let sqlite = format!(
            "UPDATE runs SET status = 'running', owner = $1, lease_until_us = $2 \
             WHERE run_id = (SELECT run_id FROM runs WHERE {due} ORDER BY run_id LIMIT 1) \
             RETURNING run_id, mode, config_digest, scope, approved_by"
        );
        type Row = (String, String, String, Option<String>, Option<String>);
        let row: Option<Row> = on_db!(self, pg: pg, sqlite: sqlite, |pool, text| {
            sqlx::query_as(text)
                .bind(owner)
                .bind(lease_until_us)
                .bind(now_us)
                .fetch_optional(pool)
                .await
        })?;
        let Some((run_id, mode, config_digest, scope, approved_by)) = row else {
            return Ok(None);
        };
        Ok(Some(ClaimedRun {
            mode: self.read_status(&run_id, Mode::parse, &mode)?,
            run_id,
            config_digest,
            scope,
            approved: approved_by.is_some(),
        }))
    }

    /// Records that `approved_by` approved the held run `run_id` and queues it again for the
    /// fleet, whose driver repairs its held stages up to what they were held with. `false`
    /// when the run is not held (approved twice, or never held).
    pub async fn requeue_approved(&self, run_id: &str, approved_by: &str, now_us: i64) -> Result<bool, ControlError> {
        const SQL: &str = "UPDATE runs SET status = 'queued', approved_by = $1, approved_us = $2, \
                           owner = NULL, lease_until_us = NULL, report = NULL, finished_us = NULL \
                           WHERE run_id = $3 AND status = 'held'";
        let n = on_db!(self, |pool, sql| {
            sqlx::query(&sql(SQL))
                .bind(approved_by)
                .bind(now_us)
                .bind(run_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Renews `owner`'s lease of a run; `false` when it is no longer `owner`'s (the lease
    /// lapsed and another worker took the run), and the caller must stop driving it.
    pub async fn renew_run(&self, run_id: &str, owner: &str, lease_until_us: i64) -> Result<bool, ControlError> {
        const SQL: &str = "UPDATE runs SET lease_until_us = $1 WHERE run_id = $2 AND owner = $3 AND status = 'running'";
        let n = on_db!(self, |pool, sql| {
            sqlx::query(&sql(SQL))
                .bind(lease_until_us)
                .bind(run_id)
                .bind(owner)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Stores a finished run's JSON report (what `--submit` waits for and `runs show` prints).
    pub async fn store_report(&self, run_id: &str, report: &str) -> Result<(), ControlError> {
        const SQL: &str = "UPDATE runs SET report = $1, owner = NULL, lease_until_us = NULL WHERE run_id = $2";
        on_db!(self, |pool, sql| {
            sqlx::query(&sql(SQL))
                .bind(report)
                .bind(run_id)
                .execute(pool)
                .await
                .map(drop)
        })
    }

    /// A run's status and stored report, or `None` when no run has that id.
    pub async fn run_report(&self, run_id: &str) -> Result<Option<(RunStatus, Option<String>)>, ControlError> {
        const SQL: &str = "SELECT status, report FROM runs WHERE run_id = $1";
        let row: Option<(String, Option<String>)> = on_db!(self, |pool, sql| {
            sqlx::query_as(&sql(SQL)).bind(run_id).fetch_optional(pool).await
        })?;
        row.map(|(status, report)| Ok((self.read_status(run_id, RunStatus::parse, &status)?, report)))
            .transpose()
    }

    /// The most recent runs, newest first; with `dataset`, only runs that recorded it.
    pub async fn recent_runs(&self, dataset: Option<&str>, limit: u32) -> Result<Vec<RunSummary>, ControlError> {
        const SQL: &str = "SELECT r.run_id, r.mode, r.status, r.started_by, r.started_us, r.finished_us, \
                           (SELECT coalesce(sum(s.divergent), 0) FROM run_stages s WHERE s.run_id = r.run_id) \
                           FROM runs r WHERE $1 IS NULL OR EXISTS (SELECT 1 FROM run_stages s \
                           WHERE s.run_id = r.run_id AND s.dataset = $1) OR EXISTS (SELECT 1 FROM run_plans p \
                           WHERE p.run_id = r.run_id AND p.dataset = $1) \
                           ORDER BY r.run_id DESC LIMIT $2";
        type Row = (String, String, String, String, i64, Option<i64>, i64);
        let pg = SQL
            .replace("$1 IS NULL", "$1::text IS NULL")
            .replace("sum(s.divergent), 0)", "sum(s.divergent), 0)::int8");
        let rows: Vec<Row> = on_db!(self, pg: pg, sqlite: SQL, |pool, text| {
            sqlx::query_as(text)
                .bind(dataset)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter()
            .map(
                |(run_id, mode, status, started_by, started_us, finished_us, divergent)| {
                    Ok(RunSummary {
                        mode: self.read_status(&run_id, Mode::parse, &mode)?,
                        status: self.read_status(&run_id, RunStatus::parse, &status)?,
                        run_id,
                        started_by,
                        started_us,
                        finished_us,
                        divergent,
                    })
                },
            )
            .collect()
    }

    /// Records that `worker` took part in a run.
    pub async fn add_worker(&self, run_id: &str, worker: &str) -> Result<(), ControlError> {
        const SQL: &str = "INSERT INTO run_workers (run_id, worker) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        on_db!(self, |pool, sql| {
            sqlx::query(&sql(SQL))
                .bind(run_id)
                .bind(worker)
                .execute(pool)
                .await
                .map(drop)
        })
    }

    /// The workers that took part in a run, sorted.
    pub async fn run_workers(&self, run_id: &str) -> Result<Vec<String>, ControlError> {
        const SQL: &str = "SELECT worker FROM run_workers WHERE run_id = $1 ORDER BY worker";
        on_db!(self, |pool, sql| {
            sqlx::query_scalar(&sql(SQL)).bind(run_id).fetch_all(pool).await
        })
    }

    /// A dataset's plan in a run: canonical's row count and the encoded boundaries.
    pub async fn plan(&self, run_id: &str, dataset: &str) -> Result<Option<(i64, Vec<u8>)>, ControlError> {
        const SQL: &str = "SELECT rows, boundaries FROM run_plans WHERE run_id = $1 AND dataset = $2";
        on_db!(self, |pool, sql| {
            sqlx::query_as(&sql(SQL))
                .bind(run_id)
                .bind(dataset)
                .fetch_optional(pool)
                .await
        })
    }

    /// Records a dataset's plan and its segments `(copy, leaf_first, leaf_last)`, in one
    /// transaction; a plan already recorded is kept (the caller reads it back).
    pub async fn save_plan(
        &self,
        run_id: &str,
        dataset: &str,
        rows: i64,
        boundaries: &[u8],
        segments: &[(String, u32, u32)],
    ) -> Result<(), ControlError> {
        const PLAN: &str = "INSERT INTO run_plans (run_id, dataset, rows, boundaries) VALUES ($1, $2, $3, $4) \
                            ON CONFLICT DO NOTHING";
        const SEGMENT: &str = "INSERT INTO segments (run_id, dataset, copy, leaf_first, leaf_last) \
                               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
        on_db!(self, |pool, sql| {
            async {
                let mut tx = pool.begin().await?;
                let fresh = sqlx::query(&sql(PLAN))
                    .bind(run_id)
                    .bind(dataset)
                    .bind(rows)
                    .bind(boundaries)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if fresh == 1 {
                    for (copy, first, last) in segments {
                        sqlx::query(&sql(SEGMENT))
                            .bind(run_id)
                            .bind(dataset)
                            .bind(copy)
                            .bind(*first as i32)
                            .bind(*last as i32)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await
            }
            .await
        })
    }

    /// Claims one segment of a running run submitted with the config `config_digest` that
    /// is pending or whose lease lapsed, for `owner` until `lease_until_us`; with `run_id`,
    /// only that run's.
    pub async fn claim_segment(
        &self,
        run_id: Option<&str>,
        config_digest: &str,
        owner: &str,
        now_us: i64,
        lease_until_us: i64,
    ) -> Result<Option<Segment>, ControlError> {
        const DUE: &str = "(s.state = 'pending' OR (s.state = 'leased' AND s.lease_until_us <= $3)) \
                           AND ($4 IS NULL OR s.run_id = $4) \
                           AND EXISTS (SELECT 1 FROM runs r WHERE r.run_id = s.run_id AND r.status = 'running' \
                           AND r.config_digest = $5)";
        const COLUMNS: &str = "run_id, dataset, copy, leaf_first, leaf_last, attempts";
        let pg = format!(
            "WITH c AS MATERIALIZED (SELECT s.ctid FROM segments s WHERE {} \
             ORDER BY s.run_id, s.dataset, s.leaf_first, s.copy LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE segments SET state = 'leased', owner = $1, lease_until_us = $2, attempts = attempts + 1 \
             WHERE ctid = ANY(ARRAY(SELECT ctid FROM c)) RETURNING {COLUMNS}",
            DUE.replace("$4 IS NULL", "$4::text IS NULL")
        );
        let sqlite = format!(
            "UPDATE segments SET state = 'leased', owner = $1, lease_until_us = $2, attempts = attempts + 1 \
             WHERE rowid = (SELECT s.rowid FROM segments s WHERE {DUE} \
             ORDER BY s.run_id, s.dataset, s.leaf_first, s.copy LIMIT 1) RETURNING {COLUMNS}"
        );
        let row: Option<SegmentRow> = on_db!(self, pg: pg, sqlite: sqlite, |pool, text| {
            sqlx::query_as(text)
                .bind(owner)
                .bind(lease_until_us)
                .bind(now_us)
                .bind(run_id)
                .bind(config_digest)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.map(segment_from_row))
    }

    /// Renews `owner`'s lease of a segment; `false` when it is no longer `owner`'s.
    pub async fn renew_segment(&self, s: &Segment, owner: &str, lease_until_us: i64) -> Result<bool, ControlError> {
        Ok(self
            .update_held_segment("lease_until_us = $6", s, owner, Some(lease_until_us))
            .await?
            == 1)
    }

    /// Records a digested segment: its leaves (leaf `leaf_first + i` for the `i`-th), then
    /// the segment `done` if `owner` still holds it. `false` when it did not (another worker
    /// took it over; both wrote the same leaves of the same rows).
    pub async fn finish_segment(&self, s: &Segment, owner: &str, leaves: &[(u64, u128)]) -> Result<bool, ControlError> {
        self.record_leaves_from(&s.run_id, &s.dataset, &s.copy, s.leaf_first, leaves)
            .await?;
        let set = "state = 'done', lease_until_us = $6";
        Ok(self.update_held_segment(set, s, owner, None).await? == 1)
    }

    /// Hands one segment `owner` holds back, for any worker to claim at once.
    pub async fn release_segment(&self, s: &Segment, owner: &str) -> Result<(), ControlError> {
        let set = "state = 'pending', owner = NULL, lease_until_us = $6";
        self.update_held_segment(set, s, owner, None).await.map(drop)
    }

    /// Applies `set` (fixed assignments, never input; `$6` is `lease_until_us`) to a segment
    /// while `owner` holds it; returns how many rows changed (0 or 1).
    async fn update_held_segment(
        &self,
        set: &str,
        s: &Segment,
        owner: &str,
        lease_until_us: Option<i64>,
    ) -> Result<u64, ControlError> {
        let text = format!(
            "UPDATE segments SET {set} WHERE run_id = $1 AND dataset = $2 AND copy = $3 AND leaf_first = $4 \
             AND owner = $5 AND state = 'leased'"
        );
        on_db!(self, |pool, sql| {
            sqlx::query(&sql(&text))
                .bind(&s.run_id)
                .bind(&s.dataset)
                .bind(&s.copy)
                .bind(s.leaf_first as i32)
                .bind(owner)
                .bind(lease_until_us)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
    }

    /// A dataset's segments in a run: `(not done, all)`.
    pub async fn segments_open(&self, run_id: &str, dataset: &str) -> Result<(i64, i64), ControlError> {
        const SQL: &str = "SELECT coalesce(sum(CASE WHEN state <> 'done' THEN 1 ELSE 0 END), 0), count(*) \
                           FROM segments WHERE run_id = $1 AND dataset = $2";
        let pg = SQL.replace("ELSE 0 END), 0)", "ELSE 0 END), 0)::int8");
        on_db!(self, pg: pg, sqlite: SQL, |pool, text| {
            sqlx::query_as(text).bind(run_id).bind(dataset).fetch_one(pool).await
        })
    }

    /// Hands back every run and segment `owner` holds, for another worker to take at once
    /// (a stopping worker does this instead of letting its leases lapse). Returns how many.
    pub async fn release_worker(&self, owner: &str) -> Result<u64, ControlError> {
        const SEGMENTS: &str = "UPDATE segments SET state = 'pending', owner = NULL, lease_until_us = NULL \
                                WHERE owner = $1 AND state = 'leased'";
        const RUNS: &str = "UPDATE runs SET lease_until_us = 0 WHERE owner = $1 AND status = 'running'";
        on_db!(self, |pool, sql| {
            async {
                let mut n = 0;
                for statement in [SEGMENTS, RUNS] {
                    n += sqlx::query(&sql(statement))
                        .bind(owner)
                        .execute(pool)
                        .await?
                        .rows_affected();
                }
                Ok(n)
            }
            .await
        })
    }
}
