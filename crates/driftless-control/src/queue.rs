//! The divergence queue: one live entry per (dataset, stage, key).
//!
//! - [`ControlPlane::enqueue`] upserts what a scan found. A later run updates an entry and
//!   keeps its first detection time; an entry that was repaired or resolved and diverges
//!   again starts a new life (new first detection, attempts back to zero).
//! - [`ControlPlane::resolve_unseen`] closes the entries a complete scan of a stage no longer
//!   found: the stage became consistent without us.
//! - [`ControlPlane::lease`] claims due entries for one repairer: `FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL; on SQLite one `UPDATE ... RETURNING` statement, which holds the database's
//!   single write lock, so two repairers never claim the same entry either. A lease that is
//!   not settled before it expires is free again.
//! - [`ControlPlane::settle`] records how each leased entry ended, together with its ledger
//!   row, in one transaction. A failed attempt goes back to `pending` with exponential
//!   backoff; after `max_attempts` failures the entry is parked as `dead`, kept and reported,
//!   never dropped.

use crate::{ControlError, ControlPlane, Db, sqlite_sql};

/// One divergent key as a scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The order-preserving key encoding.
    pub key_bytes: Vec<u8>,
    /// The key as reports print it (a JSON object).
    pub key_json: String,
    /// `missing`, `extra`, `changed` or `duplicate`.
    pub kind: String,
    /// Canonical's row digest, if it has the key.
    pub canonical_digest: Option<u128>,
    /// How many stage rows have the key.
    pub stage_count: u64,
    /// The sum of their digests, mod 2^128 (0 when none).
    pub stage_sum: u128,
}

/// An entry claimed by a repairer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// What was detected, as last updated.
    pub detected: Detected,
    /// When the entry was first detected, UTC microseconds.
    pub first_seen_us: i64,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// A queue entry as reports list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// The order-preserving key encoding.
    pub key_bytes: Vec<u8>,
    /// The key as reports print it.
    pub key_json: String,
    /// The kind.
    pub kind: String,
    /// The state.
    pub state: String,
    /// Failed attempts.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// How a leased entry ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Our write made the stage consistent (now or in an attempt that was cut short).
    Repaired,
    /// The stage was consistent without our write.
    Resolved,
    /// The stage changed after detection and was not overwritten; the next scan looks again.
    Stale,
    /// The attempt failed: retried after a backoff, or parked as dead after too many.
    Failed {
        /// Why, for the report and `last_error`.
        error: String,
    },
}

/// Backoff of failed attempts: `base_ms * 2^(attempts - 1)`, at most `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure, milliseconds.
    pub base_ms: u64,
    /// The longest delay, milliseconds.
    pub max_ms: u64,
    /// Failures after which an entry is dead.
    pub max_attempts: u32,
}

impl Backoff {
    /// The delay before the attempt after `attempts` failures, microseconds.
    pub fn delay_us(&self, attempts: i64) -> i64 {
        let shift = attempts.saturating_sub(1).clamp(0, 30) as u32;
        let ms = self.base_ms.saturating_mul(1u64 << shift).min(self.max_ms);
        i64::try_from(ms.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// Counts of one stage's entries by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Waiting for a repairer, or claimed by one: what backpressure watches.
    pub live: u64,
    /// Waiting for the next scan after the stage changed under a repair.
    pub stale: u64,
    /// Parked after too many failures.
    pub dead: u64,
    /// First detection of the oldest live, stale or dead entry, UTC microseconds.
    pub oldest_first_seen_us: Option<i64>,
}

impl Depth {
    /// How long the oldest unrepaired divergence has waited at `now_us`; `None` when
    /// nothing waits (dead entries alone are not lag: no repairer will take them).
    pub fn lag(&self, now_us: i64) -> Option<std::time::Duration> {
        self.oldest_first_seen_us
            .filter(|_| self.live + self.stale > 0)
            .map(|us| std::time::Duration::from_micros(u64::try_from(now_us.saturating_sub(us)).unwrap_or(0)))
    }
}

/// A 128-bit digest as 32 hex digits, as the queue and ledger store it.
pub fn hex128(v: u128) -> String {
    format!("{v:032x}")
}

fn parse_hex128(s: Option<String>) -> Option<u128> {
    s.and_then(|s| u128::from_str_radix(&s, 16).ok())
}

/// The upsert's conflict clause, shared by both databases. `$now` is the caller's clock.
const UPSERT_SET: &str = "ON CONFLICT (dataset, stage, key_bytes) DO UPDATE SET \
    kind = excluded.kind, \
    key_json = excluded.key_json, \
    canonical_digest = excluded.canonical_digest, \
    stage_digest = excluded.stage_digest, \
    stage_count = excluded.stage_count, \
    last_seen_us = excluded.last_seen_us, \
    last_run_id = excluded.last_run_id, \
    first_seen_us = CASE WHEN divergences.state IN ('repaired', 'resolved') \
        THEN excluded.first_seen_us ELSE divergences.first_seen_us END, \
    attempts = CASE WHEN divergences.state IN ('pending', 'leased', 'stale') OR (divergences.state = 'dead' \
        AND coalesce(divergences.stage_digest, '') = coalesce(excluded.stage_digest, '') \
        AND divergences.stage_count = excluded.stage_count) THEN divergences.attempts ELSE 0 END, \
    next_attempt_us = CASE WHEN divergences.state IN ('pending', 'leased') \
        THEN divergences.next_attempt_us ELSE 0 END, \
    state = CASE \
        WHEN divergences.state = 'leased' AND divergences.lease_until_us > excluded.last_seen_us THEN 'leased' \
        WHEN divergences.state = 'dead' \
            AND coalesce(divergences.stage_digest, '') = coalesce(excluded.stage_digest, '') \
            AND divergences.stage_count = excluded.stage_count THEN 'dead' \
        ELSE 'pending' END";

/// Columns returned by a lease, in [`leased_from_row`]'s order.
const LEASED_COLUMNS: &str =
    "key_bytes, key_json, kind, canonical_digest, stage_count, stage_digest, first_seen_us, attempts";

/// A leased row as [`LEASED_COLUMNS`] returns it.
type LeasedRow = (Vec<u8>, String, String, Option<String>, i64, Option<String>, i64, i64);

fn leased_from_row(row: LeasedRow) -> Leased {
    let (key_bytes, key_json, kind, canonical, stage_count, stage_sum, first_seen_us, attempts) = row;
    Leased {
        detected: Detected {
            key_bytes,
            key_json,
            kind,
            canonical_digest: parse_hex128(canonical),
            stage_count: stage_count.max(0) as u64,
            stage_sum: parse_hex128(stage_sum).unwrap_or(0),
        },
        first_seen_us,
        attempts,
    }
}

/// Which due entries a claim takes.
#[derive(Debug, Clone, Copy)]
enum Due {
    /// Pending, past their backoff.
    Pending,
    /// Leased, with the lease expired.
    Expired,
}

/// Entries an enqueue adds before PostgreSQL's statistics of the queue are refreshed.
const ANALYZE_AFTER_ROWS: usize = 1000;

/// Rows per statement on SQLite (12 bound values a row, well under SQLite's limit).
const SQLITE_CHUNK_ROWS: usize = 500;

/// Rows per bulk statement on PostgreSQL (arrays bound once per chunk).
const PG_CHUNK_ROWS: usize = 2000;

impl ControlPlane {
    /// Upserts the divergences a run found in one stage, in one transaction.
    pub async fn enqueue(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
        now_us: i64,
        found: &[Detected],
    ) -> Result<(), ControlError> {
        let result: Result<(), sqlx::Error> = async {
            match &self.db {
                Db::Postgres(pool) => {
                    let sql = format!(
                        "INSERT INTO divergences (dataset, stage, key_bytes, key_json, kind, canonical_digest, \
                         stage_digest, stage_count, first_seen_us, last_seen_us, last_run_id, next_attempt_us) \
                         SELECT $1, $2, k, j, kd, cd, sd, sc, $3, $3, $4, 0 \
                         FROM UNNEST($5::bytea[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[]) \
                         AS u(k, j, kd, cd, sd, sc) {UPSERT_SET}"
                    );
                    let mut tx = pool.begin().await?;
                    for chunk in found.chunks(PG_CHUNK_ROWS) {
                        let (k, j, kd, cd, sd, sc) = columns(chunk);
                        sqlx::query(&sql)
                            .bind(dataset)
                            .bind(stage)
                            .bind(now_us)
                            .bind(run_id)
                            .bind(k)
                            .bind(j)
                            .bind(kd)
                            .bind(cd)
                            .bind(sd)
                            .bind(sc)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    // A queue that just grew by many entries gets fresh statistics at once,
                    // so the leases and settlements that follow are planned by index (the
                    // autovacuum daemon would take up to a minute to notice).
                    if found.len() >= ANALYZE_AFTER_ROWS {
                        sqlx::query("ANALYZE divergences").execute(pool).await?;
                    }
                    Ok(())
                }
                Db::Sqlite(pool) => {
                    // Many rows per statement: one statement per entry costs a round trip to
                    // the database thread each, which dominated large enqueues.
                    let mut tx = pool.begin().await?;
                    for chunk in found.chunks(SQLITE_CHUNK_ROWS) {
                        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                            "INSERT INTO divergences (dataset, stage, key_bytes, key_json, kind, canonical_digest, \
                             stage_digest, stage_count, first_seen_us, last_seen_us, last_run_id, next_attempt_us) ",
                        );
                        insert.push_values(chunk, |mut row, d| {
                            row.push_bind(dataset)
                                .push_bind(stage)
                                .push_bind(&d.key_bytes)
                                .push_bind(&d.key_json)
                                .push_bind(&d.kind)
                                .push_bind(d.canonical_digest.map(hex128))
                                .push_bind(stage_digest(d))
                                .push_bind(saturating(d.stage_count))
                                .push_bind(now_us)
                                .push_bind(now_us)
                                .push_bind(run_id)
                                .push_bind(0i64);
                        });
                        insert.push(" ");
                        insert.push(UPSERT_SET);
                        insert.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await
                }
            }
        }
        .await;
        result.map_err(|e| self.query_err(e))
    }

    /// Marks resolved every entry of a stage that run `run_id` did not find again. Call it
    /// only after a scan that covered the stage's whole key space and completed. Entries
    /// under a live lease are left to their holder. A repair intent such an entry left
    /// behind (its repairer was cut short after writing the stage and before settling) whose
    /// target is what canonical held is recorded as applied: the stage now holds it.
    pub async fn resolve_unseen(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
        now_us: i64,
    ) -> Result<u64, ControlError> {
        const UNSEEN: &str = "dataset = $1 AND stage = $2 AND last_run_id <> $3 \
                              AND (state IN ('pending', 'stale', 'dead') OR (state = 'leased' AND lease_until_us <= $4))";
        let intents = format!(
            "UPDATE repairs SET outcome = 'applied', applications = applications + 1, repeats = repeats + 1, \
             applied_us = $4 \
             WHERE outcome = 'pending' AND dataset = $1 AND stage = $2 AND EXISTS (SELECT 1 FROM divergences \
             WHERE {UNSEEN} AND divergences.key_bytes = repairs.key_bytes \
             AND divergences.first_seen_us = repairs.first_seen_us \
             AND coalesce(divergences.canonical_digest, '') = coalesce(repairs.target_digest, ''))"
        );
        let entries =
            format!("UPDATE divergences SET state = 'resolved', owner = NULL, lease_until_us = NULL WHERE {UNSEEN}");
        macro_rules! resolve {
            ($pool:expr, $sql:expr) => {
                async {
                    let mut tx = $pool.begin().await?;
                    let mut resolved = 0;
                    // The intents first: the entries they match are about to change state.
                    for text in [&intents, &entries] {
                        resolved = sqlx::query(&$sql(text.as_str()))
                            .bind(dataset)
                            .bind(stage)
                            .bind(run_id)
                            .bind(now_us)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(resolved)
                }
                .await
            };
        }
        let result = match &self.db {
            Db::Postgres(pool) => resolve!(pool, str::to_owned),
            Db::Sqlite(pool) => resolve!(pool, sqlite_sql),
        };
        result.map_err(|e| self.query_err(e))
    }

    /// Claims up to `limit` due entries that run `run_id` detected in one stage, for `owner`
    /// until `lease_until_us`: pending entries whose backoff has passed, and leased entries
    /// whose lease expired. Entries come in key order.
    #[allow(clippy::too_many_arguments)]
    pub async fn lease(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
        owner: &str,
        now_us: i64,
        lease_until_us: i64,
        limit: usize,
    ) -> Result<Vec<Leased>, ControlError> {
        // Pending entries first, then expired leases: each claim walks its own partial
        // index, so a claim costs the entries it takes, however long the queue.
        let mut leased = Vec::new();
        for due in [Due::Pending, Due::Expired] {
            let want = limit.saturating_sub(leased.len());
            if want == 0 {
                break;
            }
            let claimed = self
                .claim(due, run_id, dataset, stage, owner, now_us, lease_until_us, want)
                .await
                .map_err(|e| self.query_err(e))?;
            leased.extend(claimed);
        }
        // RETURNING gives no order; repairs go in key order.
        leased.sort_by(|a, b| a.detected.key_bytes.cmp(&b.detected.key_bytes));
        Ok(leased)
    }

    /// One claim of up to `limit` entries that are `due`.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        due: Due,
        run_id: &str,
        dataset: &str,
        stage: &str,
        owner: &str,
        now_us: i64,
        lease_until_us: i64,
        limit: usize,
    ) -> Result<Vec<Leased>, sqlx::Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let which = match due {
            Due::Pending => "state = 'pending' AND next_attempt_us <= $5",
            Due::Expired => "state = 'leased' AND lease_until_us <= $5",
        };
        let rows = match &self.db {
            Db::Postgres(pool) => {
                // The claim is a materialized CTE, run once: as a plain sub-select it may be
                // re-run for each row it joins, and with SKIP LOCKED every re-run claims
                // the next rows, far past the limit. The update finds the claimed rows by their
                // `ctid` (stable while their locks are held), which needs no plan: a join on
                // the key was planned, on a freshly filled queue, as a scan per claimed row.
                let sql = format!(
                    "WITH c AS MATERIALIZED (SELECT ctid FROM divergences \
                           WHERE dataset = $3 AND stage = $4 AND last_run_id = $7 AND {which} \
                           ORDER BY key_bytes LIMIT $6 FOR UPDATE SKIP LOCKED) \
                     UPDATE divergences d SET state = 'leased', owner = $1, lease_until_us = $2 \
                     WHERE d.ctid = ANY(ARRAY(SELECT ctid FROM c)) \
                     RETURNING {LEASED_COLUMNS}"
                );
                sqlx::query_as::<_, LeasedRow>(&sql)
                    .bind(owner)
                    .bind(lease_until_us)
                    .bind(dataset)
                    .bind(stage)
                    .bind(now_us)
                    .bind(limit)
                    .bind(run_id)
                    .fetch_all(pool)
                    .await?
            }
            Db::Sqlite(pool) => {
                // One statement holds SQLite's single write lock: no two claims overlap.
                let sql = sqlite_sql(&format!(
                    "UPDATE divergences SET state = 'leased', owner = $1, lease_until_us = $2 \
                     WHERE rowid IN (SELECT rowid FROM divergences WHERE dataset = $3 AND stage = $4 \
                           AND last_run_id = $7 AND {which} ORDER BY key_bytes LIMIT $6) \
                     RETURNING {LEASED_COLUMNS}"
                ));
                sqlx::query_as::<_, LeasedRow>(&sql)
                    .bind(owner)
                    .bind(lease_until_us)
                    .bind(dataset)
                    .bind(stage)
                    .bind(now_us)
                    .bind(limit)
                    .bind(run_id)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(leased_from_row).collect())
    }

    /// Of the entries run `run_id` detected in a stage and has not settled: how many there
    /// are, and when the next becomes due (a pending entry's backoff or a lease's expiry).
    pub async fn run_backlog(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
    ) -> Result<(u64, Option<i64>), ControlError> {
        const SQL: &str = "SELECT count(*), min(CASE WHEN state = 'pending' THEN next_attempt_us ELSE lease_until_us END) \
                           FROM divergences WHERE dataset = $1 AND stage = $2 AND last_run_id = $3 \
                           AND state IN ('pending', 'leased')";
        let result = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as::<_, (i64, Option<i64>)>(SQL)
                    .bind(dataset)
                    .bind(stage)
                    .bind(run_id)
                    .fetch_one(pool)
                    .await
            }
            Db::Sqlite(pool) => {
                sqlx::query_as::<_, (i64, Option<i64>)>(&sqlite_sql(SQL))
                    .bind(dataset)
                    .bind(stage)
                    .bind(run_id)
                    .fetch_one(pool)
                    .await
            }
        };
        let (count, due) = result.map_err(|e| self.query_err(e))?;
        Ok((count.max(0) as u64, due))
    }

    /// Entries of a stage by state, and the oldest first detection among the unrepaired.
    pub async fn depth(&self, dataset: &str, stage: &str) -> Result<Depth, ControlError> {
        const SQL: &str = "SELECT \
              coalesce(sum(CASE WHEN state IN ('pending', 'leased') THEN 1 ELSE 0 END), 0), \
              coalesce(sum(CASE WHEN state = 'stale' THEN 1 ELSE 0 END), 0), \
              coalesce(sum(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0), \
              min(first_seen_us) \
            FROM divergences WHERE dataset = $1 AND stage = $2 AND state IN ('pending', 'leased', 'stale', 'dead')";
        type DepthRow = (i64, i64, i64, Option<i64>);
        let result = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as::<_, DepthRow>(SQL)
                    .bind(dataset)
                    .bind(stage)
                    .fetch_one(pool)
                    .await
            }
            Db::Sqlite(pool) => {
                sqlx::query_as::<_, DepthRow>(&sqlite_sql(SQL))
                    .bind(dataset)
                    .bind(stage)
                    .fetch_one(pool)
                    .await
            }
        };
        let (live, stale, dead, oldest) = result.map_err(|e| self.query_err(e))?;
        Ok(Depth {
            live: live.max(0) as u64,
            stale: stale.max(0) as u64,
            dead: dead.max(0) as u64,
            oldest_first_seen_us: oldest,
        })
    }

    /// Every entry of a stage in `state`, in key order, for reports.
    pub async fn entries(&self, dataset: &str, stage: &str, state: &str) -> Result<Vec<EntryRecord>, ControlError> {
        self.entries_of(None, dataset, stage, Some(state)).await
    }

    /// The entries of a stage in `state` that run `run_id` detected last, in key order.
    pub async fn run_entries(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
        state: &str,
    ) -> Result<Vec<EntryRecord>, ControlError> {
        self.entries_of(Some(run_id), dataset, stage, Some(state)).await
    }

    /// Every entry of a stage, in any state, that run `run_id` detected last, in key order:
    /// the run's full list of divergences (a later run that finds a key again takes it).
    pub async fn run_divergences(
        &self,
        run_id: &str,
        dataset: &str,
        stage: &str,
    ) -> Result<Vec<EntryRecord>, ControlError> {
        self.entries_of(Some(run_id), dataset, stage, None).await
    }

    async fn entries_of(
        &self,
        run_id: Option<&str>,
        dataset: &str,
        stage: &str,
        state: Option<&str>,
    ) -> Result<Vec<EntryRecord>, ControlError> {
        const SQL: &str = "SELECT key_bytes, key_json, kind, state, attempts, last_error FROM divergences \
                           WHERE dataset = $1 AND stage = $2 AND ($3::text IS NULL OR state = $3) \
                           AND ($4::text IS NULL OR last_run_id = $4) ORDER BY key_bytes";
        let record = entry_record;
        let result = match &self.db {
            Db::Postgres(pool) => sqlx::query_as::<_, EntryRow>(SQL)
                .bind(dataset)
                .bind(stage)
                .bind(state)
                .bind(run_id)
                .fetch_all(pool)
                .await
                .map(|rows| rows.into_iter().map(record).collect()),
            Db::Sqlite(pool) => sqlx::query_as::<_, EntryRow>(&sqlite_sql(&SQL.replace("::text", "")))
                .bind(dataset)
                .bind(stage)
                .bind(state)
                .bind(run_id)
                .fetch_all(pool)
                .await
                .map(|rows| rows.into_iter().map(record).collect()),
        };
        result.map_err(|e| self.query_err(e))
    }
}

/// An entry's columns as `SELECT key_bytes, key_json, kind, state, attempts, last_error` reads them.
pub(crate) type EntryRow = (Vec<u8>, String, String, String, i64, Option<String>);

pub(crate) fn entry_record((key_bytes, key_json, kind, state, attempts, last_error): EntryRow) -> EntryRecord {
    EntryRecord {
        key_bytes,
        key_json,
        kind,
        state,
        attempts,
        last_error,
    }
}

type Columns = (
    Vec<Vec<u8>>,
    Vec<String>,
    Vec<String>,
    Vec<Option<String>>,
    Vec<Option<String>>,
    Vec<i64>,
);

/// The bulk upsert's parallel arrays.
fn columns(found: &[Detected]) -> Columns {
    let mut out: Columns = Default::default();
    for d in found {
        out.0.push(d.key_bytes.clone());
        out.1.push(d.key_json.clone());
        out.2.push(d.kind.clone());
        out.3.push(d.canonical_digest.map(hex128));
        out.4.push(stage_digest(d));
        out.5.push(saturating(d.stage_count));
    }
    out
}

/// The stage side as stored: NULL when the stage had no row with the key.
fn stage_digest(d: &Detected) -> Option<String> {
    (d.stage_count > 0).then(|| hex128(d.stage_sum))
}

pub(crate) fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
