//! `driftless repair` against the real PostgreSQL that `scripts/test` starts: a PostgreSQL
//! canonical copy repaired into a PostgreSQL stage and a SQLite stage over every common
//! column type, with the control plane in PostgreSQL too; a concurrent writer's newer
//! values kept under `FOR UPDATE`; duplicate commits and a `--since` scope on PostgreSQL.

use std::collections::BTreeSet;
use std::path::Path;

use driftless_tests::{Named, assert_exactly, divergences, fresh_pg_database, run_driftless, sqlite, sqlite_rows};
use serde_json::{Value as Json, json};
use sqlx::{Connection, PgPool, Row};

/// Rows in the canonical table.
const ROWS: i64 = 3000;

/// Every common type, NULLs in every nullable column, generated inside the server.
fn items_sql(rows: i64) -> String {
    format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, n int, amount numeric(12,2), t text, v varchar(20) NOT NULL, \
           b bool, ts timestamptz, d date, u uuid, j jsonb, bytes bytea);
         INSERT INTO items SELECT i,
           CASE WHEN i % 11 = 0 THEN NULL ELSE i % 1000 - 500 END,
           CASE WHEN i % 13 = 0 THEN NULL ELSE (i % 5000) + (i % 100) / 100.0 END,
           CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'tëxt ' || i ELSE 'Z' END,
           'v' || (i % 17),
           CASE WHEN i % 5 = 0 THEN NULL ELSE i % 2 = 0 END,
           CASE WHEN i % 9 = 0 THEN NULL ELSE timestamptz '2024-01-01 00:00:00+00' + i * interval '37 minutes 1.000123 seconds' END,
           CASE WHEN i % 8 = 0 THEN NULL ELSE date '1960-01-01' + i * 7 END,
           CASE WHEN i % 6 = 0 THEN NULL ELSE md5(i::text)::uuid END,
           CASE WHEN i % 10 = 0 THEN NULL ELSE jsonb_build_object('b', i, 'a', jsonb_build_array(1, 'x', null)) END,
           CASE WHEN i % 7 = 0 THEN NULL ELSE decode(lpad(to_hex(i), 8, '0'), 'hex') END
         FROM generate_series(1, {rows}) i"
    )
}

const DRIFT_PG: &str = "UPDATE items SET amount = amount + 1 WHERE id IN (10, 20);
     UPDATE items SET t = 'changed' WHERE id = 30;
     UPDATE items SET j = '{\"x\": 1}' WHERE id = 41;
     UPDATE items SET ts = NULL WHERE id = 50;
     DELETE FROM items WHERE id IN (60, 70, 80);
     INSERT INTO items (id, v) VALUES (5000, 'new'), (5001, 'new');";

fn drift(stage: &str) -> BTreeSet<Named> {
    let key = |id: i64| json!({ "id": id }).to_string();
    let mut out = BTreeSet::new();
    for id in [10, 20, 30, 41, 50] {
        out.insert((stage.to_owned(), key(id), "changed".to_owned()));
    }
    for id in [60, 70, 80] {
        out.insert((stage.to_owned(), key(id), "missing".to_owned()));
    }
    for id in [5000, 5001] {
        out.insert((stage.to_owned(), key(id), "extra".to_owned()));
    }
    out
}

/// A SQLite copy of canonical's rows.
async fn sqlite_copy(canonical: &PgPool, path: &Path) {
    let rows = sqlx::query(
        "SELECT id, n, amount::text, t, v, b, ts::text, d::text, u::text, j::text, bytes FROM items ORDER BY id",
    )
    .fetch_all(canonical)
    .await
    .unwrap();
    let mut db = sqlite(path).await;
    sqlx::raw_sql(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER, amount NUMERIC(12,2), t TEXT, v VARCHAR(20) NOT NULL, \
         b BOOLEAN, ts TIMESTAMPTZ, d DATE, u UUID, j JSONB, bytes BYTEA)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    for r in rows {
        sqlx::query("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(r.get::<i64, _>(0))
            .bind(r.get::<Option<i32>, _>(1))
            .bind(r.get::<Option<String>, _>(2))
            .bind(r.get::<Option<String>, _>(3))
            .bind(r.get::<String, _>(4))
            .bind(r.get::<Option<bool>, _>(5))
            .bind(r.get::<Option<String>, _>(6))
            .bind(r.get::<Option<String>, _>(7))
            .bind(r.get::<Option<String>, _>(8))
            .bind(r.get::<Option<String>, _>(9))
            .bind(r.get::<Option<Vec<u8>>, _>(10))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::raw_sql(
        "UPDATE items SET amount = amount + 1 WHERE id IN (10, 20);
         UPDATE items SET t = 'changed' WHERE id = 30;
         UPDATE items SET j = '{\"x\": 1}' WHERE id = 41;
         UPDATE items SET ts = NULL WHERE id = 50;
         DELETE FROM items WHERE id IN (60, 70, 80);
         INSERT INTO items (id, v) VALUES (5000, 'new'), (5001, 'new');",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
}

async fn dump(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("SELECT row_of::text FROM {table} row_of ORDER BY 1"))
        .fetch_all(pool)
        .await
        .unwrap()
}

fn stage<'a>(report: &'a Json, name: &str) -> &'a Json {
    driftless_tests::stage_of(report, name)
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_heals_postgres_and_sqlite_stages_from_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (canonical, canonical_url) = fresh_pg_database("repair_canonical").await;
    let (staged, stage_url) = fresh_pg_database("repair_stage").await;
    let (_control, control_url) = fresh_pg_database("repair_control").await;
    sqlx::raw_sql(&items_sql(ROWS)).execute(&canonical).await.unwrap();
    sqlx::raw_sql(&items_sql(ROWS)).execute(&staged).await.unwrap();
    sqlite_copy(&canonical, &d.join("lite.db")).await;
    sqlx::raw_sql(DRIFT_PG).execute(&staged).await.unwrap();
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[control]\nurl = {control_url:?}\n\n[[datasets]]\nname = \"items\"\n\
             canonical = {{ url = {canonical_url:?}, table = \"items\" }}\n\
             stages = [\n  {{ name = \"pg\", url = {stage_url:?}, table = \"public.items\" }},\n\
               {{ name = \"lite\", url = \"sqlite://lite.db\", table = \"items\" }},\n]\n"
        ),
    )
    .unwrap();
    let mut expected = drift("pg");
    expected.extend(drift("lite"));
    let (pg_before, lite_before) = (
        dump(&staged, "items").await,
        sqlite_rows(&d.join("lite.db"), "SELECT * FROM items ORDER BY id").await,
    );

    let dry = run_driftless!(d, &["repair", "--dry-run", "--report", "json"]);
    assert_eq!(dry.code, Some(2), "{}\n{}", dry.stdout, dry.stderr);
    assert_exactly(&expected, &divergences(&dry.report()));
    assert_eq!(dump(&staged, "items").await, pg_before, "--dry-run wrote to PostgreSQL");
    assert_eq!(
        sqlite_rows(&d.join("lite.db"), "SELECT * FROM items ORDER BY id").await,
        lite_before,
        "--dry-run wrote to SQLite"
    );

    let run = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.report();
    assert_exactly(&expected, &divergences(&report));
    for name in ["pg", "lite"] {
        let s = stage(&report, name);
        assert_eq!(s["repair"]["outcomes"]["applied"], 10, "{s}");
        assert_eq!(s["repaired"], 10, "{s}");
    }
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "{}\n{}", scan.stdout, scan.stderr);
    assert!(divergences(&scan.report()).is_empty());
    // Between two PostgreSQL copies the repair writes every column as canonical has it.
    assert_eq!(dump(&staged, "items").await, dump(&canonical, "items").await);
    // The password of the URLs never shows.
    let password = url::Url::parse(&canonical_url).unwrap().password().unwrap().to_owned();
    for out in [&dry, &run, &scan] {
        assert!(!out.stdout.contains(&password) && !out.stderr.contains(&password));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_postgres_writer_keeps_its_newer_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (canonical, canonical_url) = fresh_pg_database("writer_canonical").await;
    let (staged, stage_url) = fresh_pg_database("writer_stage").await;
    sqlx::raw_sql(&items_sql(1000)).execute(&canonical).await.unwrap();
    sqlx::raw_sql(&items_sql(1000)).execute(&staged).await.unwrap();
    let updated: Vec<i64> = (1..=30).map(|i| i * 30).collect();
    sqlx::raw_sql(&format!(
        "UPDATE items SET v = 'drifted' WHERE id IN ({})",
        updated.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
    ))
    .execute(&staged)
    .await
    .unwrap();
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[repair]\nbatch_keys = 1\n\n[[datasets]]\nname = \"items\"\nrepair = {{ rate_per_sec = 10.0, burst = 1 }}\n\
             canonical = {{ url = {canonical_url:?}, table = \"items\" }}\n\
             stages = [ {{ name = \"pg\", url = {stage_url:?}, table = \"items\" }} ]\n"
        ),
    )
    .unwrap();
    let control = driftless_control::ControlPlane::connect(&format!("sqlite://{}", d.join("driftless.db").display()))
        .await
        .unwrap();
    let child = driftless_tests::spawn_driftless!(d, ["repair", "--report", "json"]);
    driftless_tests::wait_for_queued(&d.join("driftless.db"), 30).await;
    drop(control);
    // Keys repaired last (about 2.5 s from now), rewritten by another writer now.
    let newer = &updated[25..];
    sqlx::raw_sql(&format!(
        "UPDATE items SET v = 'writer' WHERE id IN ({})",
        newer.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
    ))
    .execute(&staged)
    .await
    .unwrap();
    let report = driftless_tests::finished_report(child, 2);
    let s = stage(&report, "pg");
    let skipped: BTreeSet<String> = s["repair"]["skipped_newer"]
        .as_array()
        .unwrap()
        .iter()
        .map(Json::to_string)
        .collect();
    let want: BTreeSet<String> = newer.iter().map(|id| json!({ "id": id }).to_string()).collect();
    assert_eq!(skipped, want, "{s}");
    assert_eq!(s["repair"]["outcomes"]["applied"], 25, "{s}");
    let writer: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE v = 'writer'")
        .fetch_one(&staged)
        .await
        .unwrap();
    assert_eq!(writer, newer.len() as i64, "a newer value was overwritten");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_duplicate_commits_and_since_scope() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (canonical, canonical_url) = fresh_pg_database("dupes_canonical").await;
    let (staged, stage_url) = fresh_pg_database("dupes_stage").await;
    let orders = "CREATE TABLE orders (id bigint PRIMARY KEY, commit_id text, amount numeric(10,2), updated_at timestamptz);
         INSERT INTO orders SELECT i, 'c' || i, i * 1.5, timestamptz '2026-11-01 00:00:00+00' FROM generate_series(1, 400) i;";
    sqlx::raw_sql(orders).execute(&canonical).await.unwrap();
    sqlx::raw_sql(orders).execute(&staged).await.unwrap();
    // After 2026-11-30 a retried executor committed c5 and c6 again under new ids; an older
    // drift (id 7) is out of the scope.
    sqlx::raw_sql(
        "INSERT INTO orders VALUES (1001, 'c5', 7.5, '2026-11-30 12:00:00+00'), (1002, 'c6', 9, '2026-11-30 12:00:00+00');
         UPDATE orders SET amount = 0 WHERE id = 7;",
    )
    .execute(&staged)
    .await
    .unwrap();
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[[datasets]]\nname = \"orders\"\ndedupe_key = [\"commit_id\"]\nchanged_column = \"updated_at\"\n\
             canonical = {{ url = {canonical_url:?}, table = \"orders\" }}\n\
             stages = [ {{ name = \"pg\", url = {stage_url:?}, table = \"orders\" }} ]\n"
        ),
    )
    .unwrap();
    let run = run_driftless!(
        d,
        &[
            "repair",
            "--since",
            "2026-11-30T00:00:00Z",
            "--report",
            "json",
            "--metrics-file",
            "m.prom"
        ]
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let found = divergences(&run.report());
    let want: BTreeSet<Named> = [1001, 1002]
        .iter()
        .map(|id| ("pg".to_owned(), json!({ "id": id }).to_string(), "duplicate".to_owned()))
        .collect();
    assert_exactly(&want, &found);
    let metrics = std::fs::read_to_string(d.join("m.prom")).unwrap();
    assert!(
        metrics.contains("driftless_duplicate_commits_total{dataset=\"orders\",stage=\"pg\"} 2"),
        "{metrics}"
    );
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    let left: BTreeSet<String> = divergences(&scan.report()).into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(left, BTreeSet::from([json!({ "id": 7 }).to_string()]));
}
