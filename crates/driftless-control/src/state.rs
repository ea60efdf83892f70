//! A stage's latest state, as `gate`, the status API and dashboards read it: the newest
//! finished run that covered the stage, the newest good one, and the queue's depth.

use crate::{ControlError, ControlPlane, Db, Depth, Mode, RunStatus, sqlite_sql};

/// One finished run's result for one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageRun {
    /// The run.
    pub run_id: String,
    /// Scan or repair.
    pub mode: Mode,
    /// How the whole run ended.
    pub status: RunStatus,
    /// When it finished, UTC microseconds.
    pub finished_us: i64,
    /// Divergent keys it found in the stage.
    pub divergent: i64,
    /// Of those, how many it repaired.
    pub repaired: i64,
    /// Why the breaker held the stage, if it did.
    pub held: Option<String>,
    /// Rows (or objects) of the canonical copy the run read.
    pub canonical_rows: i64,
    /// Rows (or objects) of the stage the run read.
    pub stage_rows: i64,
}

impl StageRun {
    /// Whether the run left the stage agreeing with canonical.
    pub fn is_good(&self) -> bool {
        self.held.is_none() && self.divergent <= self.repaired
    }
}

/// What the control plane knows of one stage now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageState {
    /// The newest finished run that covered the stage.
    pub last_run: Option<StageRun>,
    /// The newest finished run that left the stage consistent.
    pub last_good: Option<StageRun>,
    /// The stage's queue.
    pub depth: Depth,
}

/// Finished runs only, newest first: `$3` = 1 asks only for those that left it consistent.
const STAGE_RUN: &str = "SELECT r.run_id, r.mode, r.status, r.finished_us, s.divergent, s.repaired, s.held, \
    s.canonical_rows, s.stage_rows \
    FROM run_stages s JOIN runs r ON r.run_id = s.run_id \
    WHERE s.dataset = $1 AND s.stage = $2 AND r.finished_us IS NOT NULL \
      AND r.status IN ('consistent', 'drift', 'held') \
      AND ($3 = 0 OR (s.held IS NULL AND s.divergent <= s.repaired)) \
    ORDER BY r.finished_us DESC, r.run_id DESC LIMIT 1";

type Row = (String, String, String, i64, i64, i64, Option<String>, i64, i64);

impl ControlPlane {
    /// The latest state of `stage` of `dataset`.
    pub async fn stage_state(&self, dataset: &str, stage: &str) -> Result<StageState, ControlError> {
        let last_run = self.stage_run(dataset, stage, false).await?;
        let last_good = match &last_run {
            Some(run) if run.is_good() => Some(run.clone()),
            _ => self.stage_run(dataset, stage, true).await?,
        };
        Ok(StageState {
            last_run,
            last_good,
            depth: self.depth(dataset, stage).await?,
        })
    }

    async fn stage_run(&self, dataset: &str, stage: &str, good: bool) -> Result<Option<StageRun>, ControlError> {
        let row: Option<Row> = on_db!(self, |pool, sql| {
            sqlx::query_as(&sql(STAGE_RUN))
                .bind(dataset)
                .bind(stage)
                .bind(i64::from(good))
                .fetch_optional(pool)
                .await
        })?;
        let Some((run_id, mode, status, finished_us, divergent, repaired, held, canonical_rows, stage_rows)) = row
        else {
            return Ok(None);
        };
        Ok(Some(StageRun {
            mode: self.read_status(&run_id, Mode::parse, &mode)?,
            status: self.read_status(&run_id, RunStatus::parse, &status)?,
            run_id,
            finished_us,
            divergent,
            repaired,
            held,
            canonical_rows,
            stage_rows,
        }))
    }
}
