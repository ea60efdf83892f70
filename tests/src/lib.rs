//! Helpers for the workspace-level integration tests: run the real `driftless` binary, make
//! SQLite copies and directory trees, read the JSON report.
//!
//! The binary is `driftless-under-test`, this package's build of the `driftless` command
//! line, so it is always current; tests run it through the [`run_driftless!`] macro.

pub mod http;
pub mod s3;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// The outcome of one run of the binary.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The JSON report on standard output.
    pub fn report(&self) -> Json {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("report is not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs `driftless ARGS` in the directory `DIR`: `run_driftless!(dir, &["scan"])`.
#[macro_export]
macro_rules! run_driftless {
    ($dir:expr, $args:expr) => {
        $crate::run_binary(
            std::path::Path::new(env!("CARGO_BIN_EXE_driftless-under-test")),
            $dir,
            $args,
        )
    };
}

/// Runs `bin ARGS` in `dir`; tests call it through [`run_driftless!`].
pub fn run_binary(bin: &Path, dir: &Path, args: &[&str]) -> Run {
    let Output { status, stdout, stderr } = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary starts");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `(stage, key as JSON text, kind)` of every divergence in a report.
pub fn divergences(report: &Json) -> BTreeSet<Named> {
    let mut out = BTreeSet::new();
    for d in report["datasets"].as_array().expect("datasets is an array") {
        for s in d["stages"].as_array().expect("stages is an array") {
            let stage = s["stage"].as_str().expect("stage is a string").to_owned();
            for v in s["divergences"].as_array().expect("divergences is an array") {
                out.insert((
                    stage.clone(),
                    v["key"].to_string(),
                    v["kind"].as_str().expect("kind").to_owned(),
                ));
            }
        }
    }
    out
}

/// A divergence as the tests compare them: `(stage, key as JSON text, kind)`.
pub type Named = (String, String, String);

/// Asserts a report named exactly `expected`, listing what was missed and what was surplus.
pub fn assert_exactly(expected: &BTreeSet<Named>, found: &BTreeSet<Named>) {
    let missed: Vec<_> = expected.difference(found).collect();
    let surplus: Vec<_> = found.difference(expected).collect();
    assert!(
        missed.is_empty() && surplus.is_empty(),
        "not found: {missed:?}\nnot injected: {surplus:?}"
    );
}

/// Opens (creating if needed) a SQLite database file for writing test data.
pub async fn sqlite(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
    SqliteConnection::connect_with(&options)
        .await
        .expect("open test database")
}

/// Runs a batch of SQL statements on a database file.
pub async fn sqlite_exec(path: &Path, sql: &str) {
    let mut db = sqlite(path).await;
    sqlx::raw_sql(sql)
        .execute(&mut db)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    db.close().await.expect("close test database");
}

/// A small deterministic generator (SplitMix64), so a failing test can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Writes a config file with one dataset whose canonical copy and stages are given as
/// `(name, url, table)`; the canonical's name is ignored.
pub fn write_config(
    dir: &Path,
    dataset: &str,
    key: &[&str],
    canonical: (&str, Option<&str>),
    stages: &[(&str, &str, Option<&str>)],
) -> PathBuf {
    let table = |t: Option<&str>| t.map_or(String::new(), |t| format!(", table = {t:?}"));
    let keys: Vec<String> = key.iter().map(|k| format!("{k:?}")).collect();
    let mut text = format!("[[datasets]]\nname = {dataset:?}\n");
    if !key.is_empty() {
        text.push_str(&format!("key = [{}]\n", keys.join(", ")));
    }
    text.push_str(&format!(
        "canonical = {{ url = {:?}{} }}\nstages = [\n",
        canonical.0,
        table(canonical.1)
    ));
    for (name, url, t) in stages {
        text.push_str(&format!("  {{ name = {name:?}, url = {url:?}{} }},\n", table(*t)));
    }
    text.push_str("]\n");
    let path = dir.join("driftless.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every row of a query on a SQLite file, each column as text (`NULL` for NULL), for
/// comparing whole tables.
pub async fn sqlite_rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    use sqlx::{Row, ValueRef};
    let mut db = sqlite(path).await;
    let rows = sqlx::query(sql)
        .fetch_all(&mut db)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    db.close().await.expect("close test database");
    rows.iter()
        .map(|r| {
            (0..r.columns().len())
                .map(|i| {
                    let raw = r.try_get_raw(i).expect("column");
                    if raw.is_null() {
                        return "NULL".to_owned();
                    }
                    let info = raw.type_info().to_string();
                    match info.as_str() {
                        "INTEGER" => r.get::<i64, _>(i).to_string(),
                        "REAL" => format!("{:?}", r.get::<f64, _>(i)),
                        "BLOB" => format!("{:?}", r.get::<Vec<u8>, _>(i)),
                        _ => format!("{:?}", r.get::<String, _>(i)),
                    }
                })
                .collect()
        })
        .collect()
}

/// The URL of the test server (`scripts/with-postgres` exports `DATABASE_URL`).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests through scripts/test, which starts PostgreSQL")
}

/// A fresh, empty PostgreSQL database for one test (so tests run in parallel), and its URL.
pub async fn fresh_pg_database(name: &str) -> (sqlx::PgPool, String) {
    use sqlx::postgres::PgPoolOptions;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url())
        .await
        .expect("connect");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    let mut url = url::Url::parse(&database_url()).expect("DATABASE_URL is a URL");
    url.set_path(name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(url.as_str())
        .await
        .expect("connect test db");
    (pool, url.to_string())
}

/// The report of one stage of the first dataset.
pub fn stage_of<'a>(report: &'a Json, name: &str) -> &'a Json {
    report["datasets"][0]["stages"]
        .as_array()
        .expect("stages is an array")
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {report}"))
}

/// Starts `driftless-under-test ARGS` in `dir` without waiting, its output captured.
#[macro_export]
macro_rules! spawn_driftless {
    ($dir:expr, $args:expr) => {
        std::process::Command::new(env!("CARGO_BIN_EXE_driftless-under-test"))
            .args($args)
            .current_dir($dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary starts")
    };
}

/// Waits (at most 30 s) until the SQLite control plane at `db` holds `n` queue entries.
pub async fn wait_for_queued(db: &Path, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sqlite_rows(db, "SELECT count(*) FROM divergences").await != vec![vec![n.to_string()]] {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never queued {n} divergences"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The JSON report a finished child printed, after checking its exit code.
pub fn finished_report(child: std::process::Child, code: i32) -> Json {
    let out = child.wait_with_output().expect("the child finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("the report is JSON")
}

/// Asserts the ledger of `dataset`/`stage` settled every intent and holds exactly one
/// application for each of `divergent` keys; returns how many repairs were found already
/// applied after a kill (`repeats`).
pub async fn assert_applied_once(
    control: &driftless_control::ControlPlane,
    dataset: &str,
    stage: &str,
    divergent: usize,
) -> usize {
    let ledger = control.ledger(dataset, stage).await.unwrap();
    let mut applied: std::collections::BTreeMap<Vec<u8>, i64> = std::collections::BTreeMap::new();
    for row in &ledger {
        *applied.entry(row.key_bytes.clone()).or_default() += row.applications;
        assert!(row.outcome != "pending", "an intent was left unsettled: {row:?}");
    }
    assert_eq!(applied.len(), divergent);
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
    ledger.iter().filter(|r| r.repeats > 0).count()
}
