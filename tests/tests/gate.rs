//! `driftless gate`, through the real binary: 0 for a consistent stage, 2 for a diverged
//! one or one whose last good run is older than `--max-age`, 1 for an unknown dataset or
//! stage; `--scan` judges a fresh scan, not the last recorded state.

use std::path::Path;

use driftless_tests::{run_driftless, sqlite_exec};
use serde_json::Value as Json;

/// A canonical table and two stages, `good` equal to it and `bad` with one changed row.
async fn world(d: &Path) {
    let sql = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
               WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
               INSERT INTO t SELECT i, 'v' || i FROM n;";
    for db in ["canonical", "good", "bad"] {
        sqlite_exec(&d.join(format!("{db}.db")), sql).await;
    }
    sqlite_exec(&d.join("bad.db"), "UPDATE t SET v = 'drifted' WHERE id = 7;").await;
    std::fs::write(
        d.join("driftless.toml"),
        "[[datasets]]\nname = \"items\"\ncanonical = { url = \"sqlite://canonical.db\", table = \"t\" }\n\
         stages = [\n  { name = \"good\", url = \"sqlite://good.db\", table = \"t\" },\n  \
         { name = \"bad\", url = \"sqlite://bad.db\", table = \"t\" },\n]\n",
    )
    .unwrap();
}

/// Runs the gate for `stage` and returns its exit code and JSON answer.
fn gate(d: &Path, stage: &str, extra: &[&str]) -> (Option<i32>, Json) {
    let mut args = vec!["gate", "--dataset", "items", "--stage", stage, "--report", "json"];
    args.extend_from_slice(extra);
    let run = run_driftless!(d, &args);
    let answer = serde_json::from_str(&run.stdout).unwrap_or(Json::Null);
    (run.code, answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_passes_consistent_stages_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d).await;

    // Nothing recorded yet: no run has covered the stage.
    let (code, answer) = gate(d, "good", &[]);
    assert_eq!(code, Some(2), "{answer}");
    assert!(
        answer["reasons"][0].as_str().unwrap().contains("no finished run"),
        "{answer}"
    );

    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(2), "{}", scan.stderr);
    let (code, answer) = gate(d, "good", &["--max-age", "1h"]);
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(answer["promote"], true);
    let (code, answer) = gate(d, "bad", &[]);
    assert_eq!(code, Some(2), "{answer}");
    assert_eq!(answer["divergent"], 1, "{answer}");
    let (code, _) = gate(d, "bad", &["--max-divergent", "1"]);
    assert_eq!(code, Some(0), "one divergent key is within --max-divergent 1");

    // The last good run ages past --max-age.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, answer) = gate(d, "good", &["--max-age", "1s"]);
    assert_eq!(code, Some(2), "{answer}");
    assert!(answer["reasons"][0].as_str().unwrap().contains("--max-age"), "{answer}");

    // The recorded state says good; a fresh scan finds the new drift.
    sqlite_exec(&d.join("good.db"), "DELETE FROM t WHERE id = 3;").await;
    assert_eq!(gate(d, "good", &[]).0, Some(0));
    let (code, answer) = gate(d, "good", &["--scan"]);
    assert_eq!(code, Some(2), "{answer}");
    assert_eq!(answer["divergent"], 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_refuses_unknown_datasets_and_stages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d).await;
    let unknown_stage = run_driftless!(d, &["gate", "--dataset", "items", "--stage", "nope"]);
    assert_eq!(unknown_stage.code, Some(1));
    assert!(unknown_stage.stderr.contains("\"nope\""), "{}", unknown_stage.stderr);
    let unknown_dataset = run_driftless!(d, &["gate", "--dataset", "nothing", "--stage", "good"]);
    assert_eq!(unknown_dataset.code, Some(1));
    assert!(
        unknown_dataset.stderr.contains("\"nothing\""),
        "{}",
        unknown_dataset.stderr
    );
    let two = run_driftless!(d, &["gate", "--dataset", "items"]);
    assert_eq!(two.code, Some(1), "a stage is required");
}
