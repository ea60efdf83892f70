//! The control plane: the one place fleet state lives, in PostgreSQL (fleets) or SQLite (the
//! embedded default, a file next to the config).
//!
//! The schema is in `migrations/postgres` and `migrations/sqlite` (plain, commented SQL),
//! applied by [`ControlPlane::connect`].
//!
//! # Layout
//!
//! - this file: connecting and migrating, and runs: their start, scope, per-stage results,
//!   holds by the breaker and approvals.
//! - [`queue`]: the divergence queue (upsert on detection, leases, backoff, dead entries).
//! - [`leases`]: queue leases renewed, handed back, taken back from dead repairers
//!   (poison entries counted as attempts, parked dead).
//! - [`ledger`]: the repair ledger, settled in one transaction with the queue entry.
//! - [`fleet`]: runs submitted for workers and their leases, datasets' plans, segments,
//!   the workers that took part, stored reports.
//! - [`status`]: the typed mode and statuses of runs and stage repairs.

/// Runs a statement builder against whichever database the control plane is, mapping
/// errors to [`ControlError`]. `|pool, sql|`: `sql` turns a `$n` statement into the
/// database's own; `pg: A, sqlite: B, |pool, text|`: `text` is the statement written for
/// each (`B`'s `$n` turned into SQLite's).
macro_rules! on_db {
    ($self:expr, |$pool:ident, $sql:ident| $body:expr) => {{
        let result: Result<_, sqlx::Error> = match &$self.db {
            Db::Postgres($pool) => {
                let $sql = |s: &str| s.to_owned();
                $body
            }
            Db::Sqlite($pool) => {
                let $sql = sqlite_sql;
                $body
            }
        };
        result.map_err(|e| $self.query_err(e))
    }};
    ($self:expr, pg: $pg:expr, sqlite: $lite:expr, |$pool:ident, $text:ident| $body:expr) => {{
        let result: Result<_, sqlx::Error> = match &$self.db {
            Db::Postgres($pool) => {
                let $text: &str = &$pg;
                $body
            }
            Db::Sqlite($pool) => {
                let converted = sqlite_sql(&$lite);
                let $text: &str = &converted;
                $body
            }
        };
        result.map_err(|e| $self.query_err(e))
    }};
}

pub mod fleet;
pub mod gauges;
pub mod leases;
pub mod ledger;
pub mod queue;
pub mod state;
pub mod status;
pub mod ticks;

pub use fleet::{ClaimedRun, RunSummary, Segment};
pub use gauges::{DeadCount, LagCounts, RepairCount, StageWork};
pub use ledger::{Intent, KeyLedger, LedgerRow, LedgerUpdate, Settle};
pub use queue::{Backoff, Depth, Detected, EntryRecord, Leased, Settlement};
pub use state::{StageRun, StageState};
pub use status::{Mode, RepairStatus, RunStatus, StageStatus};

use std::str::FromStr;
use std::time::Duration;

use driftless_store::redact_url;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Postgres, Sqlite};

/// Connections the control plane keeps open.
const POOL_CONNECTIONS: u32 = 4;
/// How long a SQLite writer waits for another process's write lock.
const SQLITE_BUSY_TIMEOUT_SECS: u64 = 30;
/// Leaf rows per statement on SQLite (six bound values a row).
const LEAF_ROWS_PER_STATEMENT: usize = 1000;
/// How long opening the control plane may wait for a connection.
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// What can go wrong with the control plane; messages name it by its redacted URL.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The database could not be opened or migrated.
    #[error("control plane {location}: {reason}")]
    Open {
        /// The redacted URL.
        location: String,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("control plane {location}: {reason}")]
    Query {
        /// The redacted URL.
        location: String,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection pool to the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    location: String,
    db: Db,
}

/// The start of a run, as recorded.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// The run's id (uuid v7).
    pub run_id: String,
    /// What the run does.
    pub mode: Mode,
    /// `user@host` of the process.
    pub started_by: String,
    /// Hex BLAKE3 of the config file.
    pub config_digest: String,
    /// UTC microseconds since the epoch.
    pub started_us: i64,
    /// What the run covers (JSON), so a held run can be continued.
    pub scope: String,
}

/// One stage's result in a run.
#[derive(Debug, Clone)]
pub struct StageCounts {
    /// The dataset.
    pub dataset: String,
    /// The stage.
    pub stage: String,
    /// Rows in canonical.
    pub canonical_rows: i64,
    /// Rows in the stage.
    pub stage_rows: i64,
    /// Divergent keys.
    pub divergent: i64,
    /// Repaired keys.
    pub repaired: i64,
    /// Why the breaker held this stage's writes, if it did.
    pub held: Option<String>,
    /// Stage rows repeating a commit id.
    pub duplicates: i64,
    /// Time held back by backpressure and the rate limit, microseconds.
    pub held_back_us: i64,
}

/// A recorded run, as `repair --approve` reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The run's id.
    pub run_id: String,
    /// What the run does.
    pub mode: Mode,
    /// Where it stands.
    pub status: RunStatus,
    /// Hex BLAKE3 of the config file it ran with.
    pub config_digest: String,
    /// What it covered (JSON).
    pub scope: Option<String>,
    /// Stages whose writes were held: `(dataset, stage, divergent keys found, why)`.
    pub held: Vec<(String, String, i64, String)>,
}

/// A recorded run, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// Where it stands.
    pub status: RunStatus,
    /// How many stage results it recorded.
    pub stages: i64,
}

/// `$1`-style placeholders as SQLite's `?1`.
fn sqlite_sql(pg: &str) -> String {
    pg.replace('$', "?")
}

impl ControlPlane {
    /// Opens the control plane at `url` (`sqlite://file.db`, created if missing, or
    /// `postgres://...`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<ControlPlane, ControlError> {
        let location = redact_url(url);
        let open_err = |reason: String| ControlError::Open {
            location: location.clone(),
            reason,
        };
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| open_err(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(SQLITE_BUSY_TIMEOUT_SECS));
            // sqlx takes no lock while migrating a SQLite database, and switching a new
            // file to WAL needs it alone: processes opening a new control plane together
            // would collide. A lock file beside the database makes them take turns at
            // opening and migrating.
            let _turn = migration_lock(options.get_filename().to_path_buf())
                .await
                .map_err(|e| open_err(format!("cannot lock for migration: {e}")))?;
            let pool = SqlitePoolOptions::new()
                .max_connections(POOL_CONNECTIONS)
                .connect_with(options)
                .await
                .map_err(|e| open_err(e.to_string()))?;
            sqlx::migrate!("../../migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| open_err(e.to_string()))?;
            Db::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).map_err(|_| open_err("not a PostgreSQL URL".into()))?;
            driftless_store::reach::reachable(options.get_host(), options.get_port())
                .await
                .map_err(open_err)?;
            let pool = PgPoolOptions::new()
                .max_connections(POOL_CONNECTIONS)
                .acquire_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS))
                // The queue and the ledger grow from nothing within a run, faster than
                // statistics follow; a plan cached while they were empty (a sequential scan)
                // would be kept as they grow. Every statement is planned for the table as
                // it is now instead: a fraction of a millisecond each.
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(conn, "SET plan_cache_mode = force_custom_plan").await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .map_err(|e| open_err(describe(&e)))?;
            // sqlx holds an advisory lock while migrating, so workers starting together
            // apply each migration once.
            sqlx::migrate!("../../migrations/postgres")
                .run(&pool)
                .await
                .map_err(|e| open_err(e.to_string()))?;
            Db::Postgres(pool)
        } else {
            return Err(open_err("expected a sqlite:// or postgres:// URL".into()));
        };
        Ok(ControlPlane { location, db })
    }

    fn query_err(&self, e: sqlx::Error) -> ControlError {
        ControlError::Query {
            location: self.location.clone(),
            reason: describe(&e),
        }
    }

    /// Records the start of a run.
    pub async fn start_run(&self, run: &RunStart) -> Result<(), ControlError> {
        const SQL: &str = "INSERT INTO runs (run_id, mode, started_by, config_digest, started_us, scope) \
                           VALUES ($1, $2, $3, $4, $5, $6)";
        match &self.db {
            Db::Sqlite(pool) => bind_run::<Sqlite>(sqlx::query(&sqlite_sql(SQL)), run)
                .execute(pool)
                .await
                .map(drop),
            Db::Postgres(pool) => bind_run::<Postgres>(sqlx::query(SQL), run)
                .execute(pool)
                .await
                .map(drop),
        }
        .map_err(|e| self.query_err(e))
    }

    /// Records the end of a run and its per-stage results, in one transaction.
    pub async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        finished_us: i64,
        stages: &[StageCounts],
    ) -> Result<(), ControlError> {
        // A continued (approved) run records its stages again: the later result wins.
        const STAGE: &str = "INSERT INTO run_stages (run_id, dataset, stage, canonical_rows, stage_rows, divergent, \
                             repaired, held, duplicates, held_back_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                             ON CONFLICT (run_id, dataset, stage) DO UPDATE SET canonical_rows = excluded.canonical_rows, \
                             stage_rows = excluded.stage_rows, divergent = excluded.divergent, \
                             repaired = excluded.repaired, held = excluded.held, duplicates = excluded.duplicates, \
                             held_back_us = excluded.held_back_us";
        const RUN: &str = "UPDATE runs SET status = $1, finished_us = $2 WHERE run_id = $3";
        macro_rules! finish {
            ($pool:expr, $sql:expr) => {{
                let mut tx = $pool.begin().await?;
                for s in stages {
                    sqlx::query(&$sql(STAGE))
                        .bind(run_id)
                        .bind(&s.dataset)
                        .bind(&s.stage)
                        .bind(s.canonical_rows)
                        .bind(s.stage_rows)
                        .bind(s.divergent)
                        .bind(s.repaired)
                        .bind(&s.held)
                        .bind(s.duplicates)
                        .bind(s.held_back_us)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&$sql(RUN))
                    .bind(status.as_str())
                    .bind(finished_us)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }};
        }
        let result: Result<(), sqlx::Error> = async {
            match &self.db {
                Db::Sqlite(pool) => finish!(pool, sqlite_sql),
                Db::Postgres(pool) => finish!(pool, str::to_owned),
            }
        }
        .await;
        result.map_err(|e| self.query_err(e))
    }

    /// Every recorded run, oldest first, with its status and number of stage results.
    pub async fn runs(&self) -> Result<Vec<RunRecord>, ControlError> {
        const SQL: &str = "SELECT r.run_id, r.status, (SELECT count(*) FROM run_stages s WHERE s.run_id = r.run_id) \
                           FROM runs r ORDER BY r.started_us, r.run_id";
        let rows: Vec<(String, String, i64)> = match &self.db {
            Db::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
            Db::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        }
        .map_err(|e| self.query_err(e))?;
        rows.into_iter()
            .map(|(run_id, status, stages)| {
                Ok(RunRecord {
                    status: self.read_status(&run_id, RunStatus::parse, &status)?,
                    run_id,
                    stages,
                })
            })
            .collect()
    }
}

impl ControlPlane {
    /// Records one copy's leaf aggregates in a run, the drift history of each range. `copy`
    /// is `canonical` or the stage's name, suffixed `:kind` for a push-down tree, whose sums
    /// are not comparable with row-digest sums.
    pub async fn record_leaves(
        &self,
        run_id: &str,
        dataset: &str,
        copy: &str,
        leaves: &[(u64, u128)],
    ) -> Result<(), ControlError> {
        self.record_leaves_from(run_id, dataset, copy, 0, leaves).await
    }

    /// Records leaves `first..` of one copy in a run (a segment's), as [`Self::record_leaves`].
    pub async fn record_leaves_from(
        &self,
        run_id: &str,
        dataset: &str,
        copy: &str,
        first: u32,
        leaves: &[(u64, u128)],
    ) -> Result<(), ControlError> {
        let first = first as usize;
        let result: Result<(), sqlx::Error> = async {
            match &self.db {
                Db::Postgres(pool) => {
                    let (n, counts, sums): (Vec<i32>, Vec<i64>, Vec<String>) = leaves
                        .iter()
                        .enumerate()
                        .map(|(i, (c, s))| ((first + i) as i32, queue::saturating(*c), queue::hex128(*s)))
                        .fold((Vec::new(), Vec::new(), Vec::new()), |mut acc, (i, c, s)| {
                            acc.0.push(i);
                            acc.1.push(c);
                            acc.2.push(s);
                            acc
                        });
                    sqlx::query(
                        "INSERT INTO leaf_digests (run_id, dataset, copy, leaf, count, sum_hex) \
                         SELECT $1, $2, $3, l, c, s FROM UNNEST($4::int4[], $5::int8[], $6::text[]) AS u(l, c, s) \
                         ON CONFLICT (run_id, dataset, copy, leaf) DO UPDATE SET count = excluded.count, sum_hex = excluded.sum_hex",
                    )
                    .bind(run_id)
                    .bind(dataset)
                    .bind(copy)
                    .bind(n)
                    .bind(counts)
                    .bind(sums)
                    .execute(pool)
                    .await
                    .map(drop)
                }
                Db::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    let numbered: Vec<(usize, &(u64, u128))> =
                        leaves.iter().enumerate().map(|(i, l)| (first + i, l)).collect();
                    for chunk in numbered.chunks(LEAF_ROWS_PER_STATEMENT) {
                        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
                            "INSERT INTO leaf_digests (run_id, dataset, copy, leaf, count, sum_hex) ",
                        );
                        insert.push_values(chunk, |mut row, (i, (c, s))| {
                            row.push_bind(run_id)
                                .push_bind(dataset)
                                .push_bind(copy)
                                .push_bind(*i as i64)
                                .push_bind(queue::saturating(*c))
                                .push_bind(queue::hex128(*s));
                        });
                        insert.push(
                            " ON CONFLICT (run_id, dataset, copy, leaf) DO UPDATE SET count = excluded.count, \
                             sum_hex = excluded.sum_hex",
                        );
                        insert.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await
                }
            }
        }
        .await;
        result.map_err(|e| self.query_err(e))
    }

    /// A copy's recorded leaf aggregates in a run, by leaf: `(count, sum)`.
    pub async fn leaves(&self, run_id: &str, dataset: &str, copy: &str) -> Result<Vec<(u64, u128)>, ControlError> {
        const SQL: &str =
            "SELECT count, sum_hex FROM leaf_digests WHERE run_id = $1 AND dataset = $2 AND copy = $3 ORDER BY leaf";
        let rows: Result<Vec<(i64, String)>, sqlx::Error> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(SQL)
                    .bind(run_id)
                    .bind(dataset)
                    .bind(copy)
                    .fetch_all(pool)
                    .await
            }
            Db::Sqlite(pool) => {
                sqlx::query_as(&sqlite_sql(SQL))
                    .bind(run_id)
                    .bind(dataset)
                    .bind(copy)
                    .fetch_all(pool)
                    .await
            }
        };
        Ok(rows
            .map_err(|e| self.query_err(e))?
            .into_iter()
            .map(|(c, s)| (c.max(0) as u64, u128::from_str_radix(&s, 16).unwrap_or(0)))
            .collect())
    }

    /// A run's record and its held stages, or `None` when no run has that id.
    pub async fn run_info(&self, run_id: &str) -> Result<Option<RunInfo>, ControlError> {
        const RUN: &str = "SELECT run_id, mode, status, config_digest, scope FROM runs WHERE run_id = $1";
        const HELD: &str = "SELECT dataset, stage, divergent, held FROM run_stages \
                            WHERE run_id = $1 AND held IS NOT NULL ORDER BY dataset, stage";
        macro_rules! info {
            ($pool:expr, $sql:expr) => {
                async {
                    type RunRow = (String, String, String, String, Option<String>);
                    let Some(run) = sqlx::query_as::<_, RunRow>(&$sql(RUN))
                        .bind(run_id)
                        .fetch_optional($pool)
                        .await?
                    else {
                        return Ok(None);
                    };
                    let held = sqlx::query_as::<_, (String, String, i64, String)>(&$sql(HELD))
                        .bind(run_id)
                        .fetch_all($pool)
                        .await?;
                    Ok::<_, sqlx::Error>(Some((run, held)))
                }
                .await
            };
        }
        let result = match &self.db {
            Db::Postgres(pool) => info!(pool, str::to_owned),
            Db::Sqlite(pool) => info!(pool, sqlite_sql),
        };
        let Some((run, held)) = result.map_err(|e| self.query_err(e))? else {
            return Ok(None);
        };
        Ok(Some(RunInfo {
            mode: self.read_status(&run.0, Mode::parse, &run.1)?,
            status: self.read_status(&run.0, RunStatus::parse, &run.2)?,
            run_id: run.0,
            config_digest: run.3,
            scope: run.4,
            held,
        }))
    }

    /// A stored word read back as its type; a word this build does not know (a newer
    /// driftless wrote it) is an error naming the run.
    fn read_status<T>(&self, run_id: &str, parse: fn(&str) -> Option<T>, text: &str) -> Result<T, ControlError> {
        parse(text).ok_or_else(|| ControlError::Query {
            location: self.location.clone(),
            reason: format!("run {run_id} has status or mode {text:?}, which this driftless does not know"),
        })
    }

    /// Records that `approved_by` approved the held run `run_id` and marks it running again.
    /// Fails when the run is not held (approving twice, or a run that needs no approval).
    pub async fn approve_run(&self, run_id: &str, approved_by: &str, now_us: i64) -> Result<bool, ControlError> {
        const SQL: &str = "UPDATE runs SET status = 'running', approved_by = $1, approved_us = $2 \
                           WHERE run_id = $3 AND status = 'held'";
        let result = match &self.db {
            Db::Postgres(pool) => sqlx::query(SQL)
                .bind(approved_by)
                .bind(now_us)
                .bind(run_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Db::Sqlite(pool) => sqlx::query(&sqlite_sql(SQL))
                .bind(approved_by)
                .bind(now_us)
                .bind(run_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        };
        Ok(result.map_err(|e| self.query_err(e))? == 1)
    }
}

fn bind_run<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    run: &'q RunStart,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(&run.run_id)
        .bind(run.mode.as_str().to_owned())
        .bind(&run.started_by)
        .bind(&run.config_digest)
        .bind(run.started_us)
        .bind(&run.scope)
}

/// An exclusive lock on `<database>-migrate.lock`, held until dropped; none for an
/// in-memory database. The wait for it happens on a blocking thread, never on the runtime
/// (the holder's migration needs the runtime to finish).
async fn migration_lock(database: std::path::PathBuf) -> std::io::Result<Option<std::fs::File>> {
    if database.as_os_str().is_empty() || database.to_string_lossy().starts_with(":memory:") {
        return Ok(None);
    }
    let mut name = database.into_os_string();
    name.push("-migrate.lock");
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::path::PathBuf::from(name))?;
        file.lock()?;
        Ok(Some(file))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A sqlx error without the connection URL.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Configuration(_) => "bad connection settings".to_owned(),
        other => other.to_string(),
    }
}
