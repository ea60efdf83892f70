//! `driftless demo`: a canonical copy and three stages with known drift, on SQLite and on
//! local directories, scanned with the real engine. It needs nothing installed, and it
//! checks its own result: the report must name exactly the injected divergences.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

use crate::{Common, DemoArgs, config, render, run};

/// Rows in the demo's canonical table.
const DEMO_ROWS: i64 = 5000;
/// Files in the demo's canonical directory.
const DEMO_FILES: usize = 200;
/// A file that marks a directory as the demo's own, so it can be replaced safely.
const MARKER: &str = ".driftless-demo";
/// The stages, in channel order.
const STAGES: [&str; 3] = ["playground", "test", "production"];

/// One injected divergence: dataset, stage, key as JSON text, kind.
type Expected = (String, String, String, String);

/// A stage of the demo table: its name, the SQL that injects its drift, and the
/// divergences that SQL makes as `(id, kind)`.
struct StageDrift {
    stage: &'static str,
    sql: &'static str,
    divergences: &'static [(i64, &'static str)],
}

/// Builds the demo, scans it, prints the report; `Ok(false)` when the report names exactly
/// the injected drift (the demo's own success), an error otherwise.
pub async fn run(common: &Common, args: &DemoArgs) -> Result<bool> {
    let dir = &args.dir;
    prepare_dir(dir)?;
    let mut expected = BTreeSet::new();
    build_tables(dir, &mut expected).await?;
    build_directories(dir, &mut expected)?;
    let config_path = dir.join("driftless.toml");
    std::fs::write(&config_path, CONFIG).with_context(|| format!("writing {}", config_path.display()))?;

    let loaded = config::load(&config_path)?;
    let report = run::scan_loaded(&loaded, &[], &[]).await?;
    render::write(&report, &common.output)?;

    let found: BTreeSet<Expected> = report
        .datasets
        .iter()
        .flat_map(|d| {
            d.stages.iter().flat_map(move |s| {
                s.divergences
                    .iter()
                    .map(move |v| (d.dataset.clone(), s.stage.clone(), v.key.to_string(), v.kind.to_owned()))
            })
        })
        .collect();
    if found != expected {
        let missed: Vec<_> = expected.difference(&found).collect();
        let surplus: Vec<_> = found.difference(&expected).collect();
        bail!("demo: the report does not match the injected drift; not found: {missed:?}; not injected: {surplus:?}");
    }
    eprintln!(
        "demo: the report names exactly the {} injected divergences. Scan again with\n  driftless scan --config {}",
        expected.len(),
        config_path.display()
    );
    Ok(false)
}

const CONFIG: &str = r#"# Written by `driftless demo`.
[[datasets]]
name = "tax_rules"
key = ["id"]
canonical = { url = "sqlite://canonical.db", table = "tax_rules" }
stages = [
  { name = "playground", url = "sqlite://playground.db", table = "tax_rules" },
  { name = "test", url = "sqlite://test.db", table = "tax_rules" },
  { name = "production", url = "sqlite://production.db", table = "tax_rules" },
]

[[datasets]]
name = "assets"
# Directory copies: one row per file, keyed by its relative path; `driftless repair` copies
# canonical's files over (a temporary file renamed into place) and deletes strays.
canonical = { url = "file:canonical-assets" }
stages = [
  { name = "playground", url = "file:playground-assets" },
  { name = "test", url = "file:test-assets" },
  { name = "production", url = "file:production-assets" },
]
"#;

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{} exists and was not made by `driftless demo`; choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the old demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "").with_context(|| format!("writing into {}", dir.display()))
}

async fn open_new(path: &Path) -> Result<SqliteConnection> {
    let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
    SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("creating {}", path.display()))
}

async fn build_tables(dir: &Path, expected: &mut BTreeSet<Expected>) -> Result<()> {
    let canonical = dir.join("canonical.db");
    let mut db = open_new(&canonical).await?;
    sqlx::raw_sql(
        "CREATE TABLE tax_rules (id INTEGER PRIMARY KEY, region TEXT NOT NULL, rate NUMERIC, \
         valid_from TIMESTAMP, note TEXT);",
    )
    .execute(&mut db)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO tax_rules SELECT i, CASE i % 4 WHEN 0 THEN 'eu-west' WHEN 1 THEN 'us-east' \
         WHEN 2 THEN 'ap-south' ELSE 'sa-east' END, (i % 40) / 100.0 + 0.05, \
         '2024-01-01 00:00:00', CASE WHEN i % 10 = 0 THEN NULL ELSE '' END FROM n",
    )
    .bind(DEMO_ROWS)
    .execute(&mut db)
    .await?;
    db.close().await?;

    let drift = [
        StageDrift {
            stage: "playground",
            sql: "DELETE FROM tax_rules WHERE id IN (17, 4242); \
             INSERT INTO tax_rules VALUES (5001, 'eu-west', 0.21, '2024-06-01 00:00:00', ''); \
             UPDATE tax_rules SET rate = 0.99 WHERE id = 100; \
             UPDATE tax_rules SET note = NULL WHERE id = 2001;",
            divergences: &[
                (17, "missing"),
                (4242, "missing"),
                (5001, "extra"),
                (100, "changed"),
                (2001, "changed"),
            ],
        },
        StageDrift {
            stage: "test",
            // The same instant written with an offset is not drift; a different one is.
            sql: "UPDATE tax_rules SET valid_from = '2024-01-01T01:00:00+01:00' WHERE id = 12; \
                  UPDATE tax_rules SET valid_from = '2024-01-02 00:00:00' WHERE id = 3000;",
            divergences: &[(3000, "changed")],
        },
        StageDrift {
            stage: "production",
            sql: "",
            divergences: &[],
        },
    ];
    for StageDrift {
        stage,
        sql,
        divergences,
    } in drift
    {
        let path = dir.join(format!("{stage}.db"));
        std::fs::copy(&canonical, &path).with_context(|| format!("creating {}", path.display()))?;
        if !sql.is_empty() {
            let mut db = open_new(&path).await?;
            sqlx::raw_sql(sql).execute(&mut db).await?;
            db.close().await?;
        }
        for (id, kind) in divergences {
            expected.insert((
                "tax_rules".into(),
                stage.into(),
                json!({ "id": id }).to_string(),
                (*kind).into(),
            ));
        }
    }
    Ok(())
}

fn build_directories(dir: &Path, expected: &mut BTreeSet<Expected>) -> Result<()> {
    let write = |root: &Path, rel: &str, content: &[u8]| -> Result<()> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
    };
    let name = |i: usize| format!("release {}/asset-{i:03}.json", i % 7);
    for stage in std::iter::once("canonical").chain(STAGES) {
        let root = dir.join(format!("{stage}-assets"));
        for i in 0..DEMO_FILES {
            write(&root, &name(i), format!("{{\"asset\": {i}}}").as_bytes())?;
        }
        write(&root, "empty.txt", b"")?;
    }
    let mut inject = |stage: &str, key: String, kind: &str| {
        expected.insert((
            "assets".into(),
            stage.into(),
            json!({ "key": key }).to_string(),
            kind.into(),
        ));
    };
    let playground = dir.join("playground-assets");
    write(&playground, &name(5), b"{\"asset\": 5, \"edited\": true}")?;
    inject("playground", name(5), "changed");
    std::fs::remove_file(playground.join(name(150)))?;
    inject("playground", name(150), "missing");
    let test = dir.join("test-assets");
    write(&test, "release 9/stray.json", b"{}")?;
    inject("test", "release 9/stray.json".into(), "extra");
    Ok(())
}
