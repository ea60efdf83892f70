//! The SQLite copies of the `sqlite-*` scenarios.
//!
//! Canonical is one table `items(id INTEGER PRIMARY KEY, tenant INTEGER, amount NUMERIC,
//! status TEXT, updated_at TIMESTAMP, payload TEXT)` filled inside SQLite by a recursive CTE,
//! which writes a million rows in about a second. Ids are even (`0, 2, 4, ...`) so that
//! stage inserts can land in the gaps between canonical keys, not only past the ends.
//!
//! Two stages are file copies of canonical: `twin.db` untouched, and `stage.db` with
//! [`UPDATES`] updates, [`DELETES`] deletes and [`INSERTS`] inserts spread over the key
//! range, so a scan of it must report exactly [`DIVERGENCES`] keys.
//!
//! A finished set is marked by a `ready` file, so a kept work directory is reused rather
//! than rebuilt.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use crate::Divergence;

/// The table every copy holds.
pub const TABLE: &str = "items";
/// Rows updated in the diverged stage.
pub const UPDATES: usize = 10;
/// Rows deleted from the diverged stage.
pub const DELETES: usize = 5;
/// Rows inserted into the diverged stage.
pub const INSERTS: usize = 5;
/// Divergences a scan of the diverged stage must report.
pub const DIVERGENCES: usize = UPDATES + DELETES + INSERTS;
/// The marker file of a finished set.
const READY: &str = "ready";
/// Seconds since the epoch of 2024-01-01T00:00:00Z, the first row's `updated_at`.
const BASE_EPOCH_SECS: u64 = 1_704_067_200;
/// Tenants the rows are spread over.
const TENANTS: u64 = 97;
/// Amounts are whole cents below this bound, divided by 100.
const AMOUNT_CENTS: u64 = 1_000_000;

/// One generated set of copies.
#[derive(Debug, Clone)]
pub struct SqliteSet {
    /// Rows in canonical.
    pub rows: u64,
    /// The directory holding the three files.
    pub dir: PathBuf,
    /// `canonical.db`.
    pub canonical: PathBuf,
    /// `stage.db`: canonical with [`DIVERGENCES`] changed keys.
    pub stage: PathBuf,
    /// `twin.db`: an identical copy.
    pub twin: PathBuf,
    /// What a scan of `stage.db` must report.
    pub expected: BTreeSet<Divergence>,
}

/// The set of `rows` rows under `dir`, generated unless a finished one is already there.
/// Returns the set and whether it was generated now.
pub async fn ensure(dir: &Path, rows: u64) -> Result<(SqliteSet, bool)> {
    let (sql, expected) = stage_mutations(rows);
    let set = SqliteSet {
        rows,
        dir: dir.to_owned(),
        canonical: dir.join("canonical.db"),
        stage: dir.join("stage.db"),
        twin: dir.join("twin.db"),
        expected,
    };
    if dir.join(READY).exists() {
        return Ok((set, false));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in [&set.canonical, &set.stage, &set.twin] {
        // A half-written set from an interrupted run: start over.
        if file.exists() {
            std::fs::remove_file(file).with_context(|| format!("cannot remove {}", file.display()))?;
        }
    }
    exec(&set.canonical, &canonical_sql(rows)).await?;
    for copy in [&set.stage, &set.twin] {
        std::fs::copy(&set.canonical, copy)
            .with_context(|| format!("cannot copy {} to {}", set.canonical.display(), copy.display()))?;
    }
    exec(&set.stage, &sql).await?;
    std::fs::write(dir.join(READY), b"").context("cannot write the ready marker")?;
    Ok((set, true))
}

/// The SQL that creates and fills canonical.
fn canonical_sql(rows: u64) -> String {
    format!(
        "CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, tenant INTEGER, amount NUMERIC, status TEXT, \
           updated_at TIMESTAMP, payload TEXT);
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
         INSERT INTO {TABLE}
         SELECT i * 2,
                i % {TENANTS},
                (i * 7919 % {AMOUNT_CENTS}) / 100.0,
                CASE i % 5 WHEN 0 THEN 'new' WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped'
                           WHEN 3 THEN 'returned' ELSE 'cancelled' END,
                datetime({BASE_EPOCH_SECS} + i * 37, 'unixepoch'),
                CASE WHEN i % 10 = 0 THEN NULL ELSE 'order ' || i || ' for tenant ' || (i % {TENANTS}) END
         FROM n;",
        last = rows.saturating_sub(1),
    )
}

/// The SQL that makes `stage.db` diverge, and the divergences it makes.
fn stage_mutations(rows: u64) -> (String, BTreeSet<Divergence>) {
    mutations_sql(rows, "")
}

/// The SQL that makes a stage of `rows` rows diverge, and the divergences it makes; the
/// SQLite and PostgreSQL scenarios share it, `zone` ending every timestamp literal (`""`
/// for SQLite's, `"+00"` for PostgreSQL's). Keys are spread evenly over the id range;
/// inserts take odd ids (gaps in canonical), one below the smallest key and one above the
/// largest.
pub(crate) fn mutations_sql(rows: u64, zone: &str) -> (String, BTreeSet<Divergence>) {
    let slots = DIVERGENCES as u64;
    // The canonical id at the middle of slot `k` of `slots` equal slices of the rows.
    let id_at = |k: usize| ((2 * k as u64 + 1) * rows / (2 * slots)) as i64 * 2;
    let key = |id: i64| json!({ "id": id }).to_string();
    let mut sql = String::new();
    let mut expected = BTreeSet::new();
    for k in 0..UPDATES {
        let id = id_at(k);
        let set = match k % 4 {
            0 => "status = 'disputed'",
            1 => "amount = amount + 0.01",
            2 => "payload = coalesce(payload, '') || ' (edited)'",
            _ => "updated_at = '2030-01-01 00:00:00",
        };
        let set = if k % 4 == 3 {
            format!("{set}{zone}'")
        } else {
            set.to_owned()
        };
        sql += &format!("UPDATE {TABLE} SET {set} WHERE id = {id};\n");
        expected.insert((key(id), "changed".to_owned()));
    }
    for k in UPDATES..UPDATES + DELETES {
        let id = id_at(k);
        sql += &format!("DELETE FROM {TABLE} WHERE id = {id};\n");
        expected.insert((key(id), "missing".to_owned()));
    }
    let max_id = (rows.saturating_sub(1) * 2) as i64;
    for k in UPDATES + DELETES..DIVERGENCES {
        let id = match k - UPDATES - DELETES {
            0 => -1,
            1 => max_id + 1,
            _ => id_at(k) + 1,
        };
        sql += &format!(
            "INSERT INTO {TABLE} VALUES ({id}, 0, 1.5, 'new', '2024-06-01 00:00:00{zone}', 'inserted in the stage');\n"
        );
        expected.insert((key(id), "extra".to_owned()));
    }
    (sql, expected)
}

/// Runs a batch of statements on a database file, creating it if needed. The file is left
/// in rollback-journal mode, a single self-contained file that can be copied.
async fn exec(path: &Path, sql: &str) -> Result<()> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .synchronous(SqliteSynchronous::Off);
    let mut db = SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    sqlx::raw_sql(sql)
        .execute(&mut db)
        .await
        .with_context(|| format!("SQL failed on {}", path.display()))?;
    db.close()
        .await
        .with_context(|| format!("cannot close {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_touch_distinct_keys() {
        for rows in [100, 1_000_000, 4_000_000] {
            let (_, expected) = stage_mutations(rows);
            let keys: BTreeSet<&String> = expected.iter().map(|(key, _)| key).collect();
            assert_eq!(keys.len(), DIVERGENCES, "rows {rows}");
        }
    }
}
