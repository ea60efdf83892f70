//! The PostgreSQL copies of the `postgres-*` scenarios: three databases of one server.
//!
//! Canonical is `items(id bigint primary key, tenant int, amount numeric(12,2), status text,
//! updated_at timestamptz, payload text)`, the same rows as the SQLite scenarios' (even ids,
//! 97 tenants, amounts in cents, five statuses, one row in ten without a payload), written
//! inside the server by `generate_series`, with the primary key built afterwards. `stage`
//! holds the same rows with [`UPDATES`] updates, [`DELETES`] deletes and [`INSERTS`] inserts
//! spread over the key range (the SQLite scenarios' keys and changes); `twin` is untouched.
//! Every database is then `VACUUM (FREEZE, ANALYZE)`d, so planner statistics are current
//! and the visibility map is set, as on a settled production table.
//!
//! A finished database holds a `driftless_bench_ready` table with its row count, so a server
//! that already has the set (a long-lived cluster) is reused rather than rebuilt.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::Divergence;
use crate::sqlite_data::mutations_sql;

/// The table every copy holds.
pub const TABLE: &str = "items";
/// The databases: canonical, the diverged stage, the identical twin.
pub const CANONICAL_DB: &str = "driftless_bench_canonical";
pub const STAGE_DB: &str = "driftless_bench_stage";
pub const TWIN_DB: &str = "driftless_bench_twin";
/// The table that marks a finished database, holding its row count.
const READY: &str = "driftless_bench_ready";

/// One generated set of PostgreSQL copies.
#[derive(Debug, Clone)]
pub struct PgSet {
    /// Rows in canonical.
    pub rows: u64,
    /// URLs of the three databases.
    pub canonical: String,
    pub stage: String,
    pub twin: String,
    /// What a scan of the stage must report.
    pub expected: BTreeSet<Divergence>,
}

/// The set of `rows` rows on the server at `server_url` (any database of it; the URL's
/// user must be able to create databases), generated unless it is already there. Returns
/// the set and whether it was generated now.
pub async fn ensure(server_url: &str, rows: u64) -> Result<(PgSet, bool)> {
    let url_of = |db: &str| -> Result<String> {
        let mut url = url::Url::parse(server_url).context("DATABASE_URL is not a URL")?;
        url.set_path(db);
        Ok(url.to_string())
    };
    let (sql, expected) = stage_mutations(rows);
    let set = PgSet {
        rows,
        canonical: url_of(CANONICAL_DB)?,
        stage: url_of(STAGE_DB)?,
        twin: url_of(TWIN_DB)?,
        expected,
    };
    let mut generated = false;
    let admin = connect(server_url).await?;
    let copies = [
        (CANONICAL_DB, &set.canonical, None),
        (STAGE_DB, &set.stage, Some(sql.as_str())),
        (TWIN_DB, &set.twin, None),
    ];
    let mut builds = Vec::new();
    for (db, url, mutations) in copies {
        if is_ready(&admin, db, url, rows).await? {
            continue;
        }
        generated = true;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await
            .with_context(|| format!("cannot drop {db}"))?;
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .with_context(|| format!("cannot create {db}"))?;
        builds.push(build(url.clone(), db, rows, mutations.map(str::to_owned)));
    }
    // The copies are written at once, one server backend each.
    futures::future::try_join_all(builds).await?;
    Ok((set, generated))
}

async fn connect(url: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("cannot connect to PostgreSQL (DATABASE_URL)")
}

/// Whether `db` exists and holds a finished copy of `rows` rows.
async fn is_ready(admin: &PgPool, db: &str, url: &str, rows: u64) -> Result<bool> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(db)
        .fetch_one(admin)
        .await?;
    if !exists {
        return Ok(false);
    }
    let pool = connect(url).await?;
    let ready: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT CASE WHEN to_regclass('{READY}') IS NULL THEN NULL ELSE (SELECT max(rows) FROM {READY}) END"
    ))
    .fetch_one(&pool)
    .await
    .unwrap_or(None);
    pool.close().await;
    Ok(ready == Some(rows as i64))
}

/// Fills one database: canonical's rows, then `mutations`, then `VACUUM`, then the marker.
async fn build(url: String, db: &str, rows: u64, mutations: Option<String>) -> Result<()> {
    let pool = connect(&url).await?;
    let mut statements = vec![canonical_sql(rows)];
    statements.extend(mutations);
    statements.push(format!("VACUUM (FREEZE, ANALYZE) {TABLE}"));
    statements.push(format!(
        "CREATE TABLE {READY} (rows bigint); INSERT INTO {READY} VALUES ({rows})"
    ));
    for sql in statements {
        sqlx::raw_sql(&sql)
            .execute(&pool)
            .await
            .with_context(|| format!("SQL failed on {db}"))?;
    }
    pool.close().await;
    Ok(())
}

/// The SQL that creates and fills canonical (the SQLite scenarios' rows).
fn canonical_sql(rows: u64) -> String {
    format!(
        "CREATE TABLE {TABLE} (id bigint, tenant int, amount numeric(12,2), status text, \
           updated_at timestamptz, payload text);
         INSERT INTO {TABLE}
         SELECT i * 2,
                i % 97,
                (i * 7919 % 1000000) / 100.0,
                (ARRAY['new', 'paid', 'shipped', 'returned', 'cancelled'])[i % 5 + 1],
                timestamptz '2024-01-01 00:00:00+00' + i * interval '37 seconds',
                CASE WHEN i % 10 = 0 THEN NULL ELSE 'order ' || i || ' for tenant ' || (i % 97) END
         FROM generate_series(0::bigint, {last}) i;
         ALTER TABLE {TABLE} ADD PRIMARY KEY (id);",
        last = rows.saturating_sub(1),
    )
}

/// The SQL that makes the stage diverge, and the divergences it makes: the keys and
/// changes of the SQLite scenarios, in PostgreSQL's dialect.
fn stage_mutations(rows: u64) -> (String, BTreeSet<Divergence>) {
    mutations_sql(rows, "+00")
}

/// Loads `items` and its primary key into shared buffers with `pg_prewarm`, where the
/// extension can be created; a warm-up scan warms the page cache either way.
pub async fn prewarm(url: &str) -> Result<bool> {
    let pool = connect(url).await?;
    let warmed = sqlx::raw_sql(&format!(
        "CREATE EXTENSION IF NOT EXISTS pg_prewarm; \
         SELECT pg_prewarm('{TABLE}'), pg_prewarm('{TABLE}_pkey');"
    ))
    .execute(&pool)
    .await
    .is_ok();
    pool.close().await;
    Ok(warmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite_data::DIVERGENCES;

    #[test]
    fn mutations_touch_distinct_keys() {
        for rows in [100, 10_000_000] {
            let (_, expected) = stage_mutations(rows);
            let keys: BTreeSet<&String> = expected.iter().map(|(key, _)| key).collect();
            assert_eq!(keys.len(), DIVERGENCES, "rows {rows}");
        }
    }
}
