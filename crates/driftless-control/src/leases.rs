//! The life of a queue entry's lease after its claim: renewed by a repairer's heartbeat,
//! handed back by a stopping process, and taken back from a repairer that died.
//!
//! An entry whose repairer died holding it (its lease lapsed, or its process is gone) may be
//! the reason it died: a poison entry. Each such loss counts as a failed attempt, and after
//! `max_attempts` the entry is parked `dead` instead of killing worker after worker.

use crate::{ControlError, ControlPlane, Db, sqlite_sql};

/// The update of an entry taken back from a repairer that died; `$n` is `max_attempts`.
fn reap_set(n: usize) -> String {
    format!(
        "attempts = attempts + 1, owner = NULL, lease_until_us = NULL, \
         last_error = 'its repairer stopped while holding it, without settling it', \
         state = CASE WHEN attempts + 1 >= ${n} THEN 'dead' ELSE 'pending' END"
    )
}

impl ControlPlane {
    /// Renews every lease `owner` holds in a stage until `lease_until_us` (a repairer's
    /// heartbeat while a batch is slow); returns how many it still held.
    pub async fn renew_leases(
        &self,
        dataset: &str,
        stage: &str,
        owner: &str,
        lease_until_us: i64,
    ) -> Result<u64, ControlError> {
        const SQL: &str = "UPDATE divergences SET lease_until_us = $1 \
                           WHERE dataset = $2 AND stage = $3 AND state = 'leased' AND owner = $4";
        on_db!(self, |pool, sql| {
            sqlx::query(&sql(SQL))
                .bind(lease_until_us)
                .bind(dataset)
                .bind(stage)
                .bind(owner)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
    }

    /// Hands back every entry `owner` holds leased, of any dataset and stage, for another
    /// repairer to take at once (a stopping process does this instead of letting its
    /// leases run out). Returns how many.
    pub async fn release_owner(&self, owner: &str) -> Result<u64, ControlError> {
        const SQL: &str = "UPDATE divergences SET state = 'pending', owner = NULL, lease_until_us = NULL \
                           WHERE state = 'leased' AND owner = $1";
        on_db!(self, |pool, sql| {
            sqlx::query(&sql(SQL))
                .bind(owner)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
    }

    /// Frees the live leases of a stage whose owner `is_dead` says has died (a repairer on
    /// this host whose process is gone), so its entries need not wait for the leases to
    /// expire; each counts as a failed attempt, as [`Self::reap_lapsed`]'s. Returns how many
    /// entries were freed.
    pub async fn release_orphans(
        &self,
        dataset: &str,
        stage: &str,
        now_us: i64,
        max_attempts: u32,
        is_dead: impl Fn(&str) -> bool,
    ) -> Result<u64, ControlError> {
        const OWNERS: &str = "SELECT DISTINCT owner FROM divergences \
                              WHERE dataset = $1 AND stage = $2 AND state = 'leased' AND lease_until_us > $3";
        let release = format!(
            "UPDATE divergences SET {} WHERE dataset = $1 AND stage = $2 AND state = 'leased' AND owner = $3",
            reap_set(4)
        );
        on_db!(self, |pool, sql| {
            async {
                let owners: Vec<Option<String>> = sqlx::query_scalar(&sql(OWNERS))
                    .bind(dataset)
                    .bind(stage)
                    .bind(now_us)
                    .fetch_all(pool)
                    .await?;
                let mut freed = 0;
                for owner in owners.into_iter().flatten().filter(|o| is_dead(o)) {
                    freed += sqlx::query(&sql(&release))
                        .bind(dataset)
                        .bind(stage)
                        .bind(&owner)
                        .bind(i64::from(max_attempts))
                        .execute(pool)
                        .await?
                        .rows_affected();
                }
                Ok(freed)
            }
            .await
        })
    }

    /// Takes back the entries of a stage whose lease lapsed before `now_us` (their repairer
    /// died, or lost the control plane), counting a failed attempt each; those that reach
    /// `max_attempts` are parked `dead`. Returns how many were taken back.
    pub async fn reap_lapsed(
        &self,
        dataset: &str,
        stage: &str,
        now_us: i64,
        max_attempts: u32,
    ) -> Result<u64, ControlError> {
        let sql = format!(
            "UPDATE divergences SET {} WHERE dataset = $1 AND stage = $2 AND state = 'leased' \
             AND lease_until_us <= $3",
            reap_set(4)
        );
        on_db!(self, |pool, text| {
            sqlx::query(&text(&sql))
                .bind(dataset)
                .bind(stage)
                .bind(now_us)
                .bind(i64::from(max_attempts))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
    }
}
