//! Schedule ticks: exactly one run per dataset and tick, fleet-wide. Every worker with the
//! `schedule` role may try to claim a tick; the unique `(dataset, tick_at_us)` key lets one
//! insert win, and only that inserter queues the run, in the same transaction.

use crate::fleet::queued_run;
use crate::{ControlError, ControlPlane, Db, RunStart, sqlite_sql};

/// Only a tick newer than every recorded one: a worker that read the ticks before another
/// claimed a newer one cannot queue an older, coalesced tick after it.
const INSERT_TICK: &str = "INSERT INTO schedule_ticks (dataset, tick_at_us, run_id) \
                           SELECT $1, $2, $3 WHERE NOT EXISTS \
                             (SELECT 1 FROM schedule_ticks WHERE dataset = $1 AND tick_at_us >= $2) \
                           ON CONFLICT DO NOTHING";

impl ControlPlane {
    /// The newest tick recorded for `dataset`, if any.
    pub async fn last_tick(&self, dataset: &str) -> Result<Option<i64>, ControlError> {
        const SQL: &str = "SELECT MAX(tick_at_us) FROM schedule_ticks WHERE dataset = $1";
        on_db!(self, |pool, sql| {
            sqlx::query_scalar::<_, Option<i64>>(&sql(SQL))
                .bind(dataset)
                .fetch_one(pool)
                .await
        })
    }

    /// Claims `tick_at_us` of `dataset` and queues `run` for it, in one transaction; `false`
    /// when another worker claimed the tick first (nothing is queued then).
    pub async fn claim_tick(&self, dataset: &str, tick_at_us: i64, run: &RunStart) -> Result<bool, ControlError> {
        on_db!(self, |pool, sql| {
            async {
                let mut tx = pool.begin().await?;
                let won = sqlx::query(&sql(INSERT_TICK))
                    .bind(dataset)
                    .bind(tick_at_us)
                    .bind(&run.run_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    queued_run!(sql, run).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(won)
            }
            .await
        })
    }
}
