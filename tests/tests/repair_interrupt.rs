//! Ctrl-C (SIGINT) and SIGTERM on a one-shot `repair`: the run stops between batches, says
//! so and exits 1, is recorded `interrupted`, holds no lease afterwards, and the next run
//! finishes every repair exactly once (the stage's own write log and the ledger).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use driftless_control::ControlPlane;
use driftless_tests::{run_driftless, sqlite_exec, sqlite_rows};

/// Rows in canonical.
const ROWS: i64 = 4000;
/// Keys changed in the stage (`id % 8 = 1`): at 100 writes a second, 5 s of repairs, long
/// after the signal is sent.
const DIVERGENT: usize = 500;
/// Writes the stage must have received before the signal: the repair is under way.
const WRITES_BEFORE_SIGNAL: usize = 16;
/// The longest a test waits for anything.
const PATIENCE: Duration = Duration::from_secs(60);

async fn world(dir: &Path) {
    sqlite_exec(
        &dir.join("canonical.db"),
        &format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, amount NUMERIC, status TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
             INSERT INTO items SELECT i, i * 0.25, 'ok' FROM n;"
        ),
    )
    .await;
    std::fs::copy(dir.join("canonical.db"), dir.join("stage.db")).unwrap();
    sqlite_exec(
        &dir.join("stage.db"),
        "UPDATE items SET status = 'drifted' WHERE id % 8 = 1;
         CREATE TABLE write_log (id INTEGER NOT NULL);
         CREATE TRIGGER log_update AFTER UPDATE ON items BEGIN INSERT INTO write_log VALUES (NEW.id); END;
         CREATE TRIGGER log_insert AFTER INSERT ON items BEGIN INSERT INTO write_log VALUES (NEW.id); END;",
    )
    .await;
    // Leases far longer than the test: an entry still leased after the stop would show.
    std::fs::write(
        dir.join("driftless.toml"),
        "[repair]\nbatch_keys = 8\nlease_secs = 3600\nshutdown_secs = 20\n\n\
         [[datasets]]\nname = \"items\"\n\
         repair = { rate_per_sec = 100.0, burst = 8, max_divergence_ratio = 0.5 }\n\
         canonical = { url = \"sqlite://canonical.db\", table = \"items\" }\n\
         stages = [ { name = \"stage\", url = \"sqlite://stage.db\", table = \"items\" } ]\n",
    )
    .unwrap();
}

async fn writes(dir: &Path) -> usize {
    let rows = sqlite_rows(&dir.join("stage.db"), "SELECT count(*) FROM write_log").await;
    rows[0][0].parse().unwrap()
}

/// Starts a repair, sends `signal` once it is writing, and checks how it stopped.
async fn interrupt(dir: &Path, signal: &str, named: &str) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_driftless-under-test"))
        .args(["repair", "--report", "json"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while writes(dir).await < WRITES_BEFORE_SIGNAL {
        assert!(started.elapsed() < PATIENCE, "the repair never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the repair ended before the signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(stopped.elapsed() < PATIENCE, "the repair did not stop after {signal}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("interrupted by {named}")), "{stderr}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
    let written = writes(dir).await;
    assert!(
        written < DIVERGENT,
        "the repair finished ({written} writes) before {signal} took effect"
    );

    let control = dir.join("driftless.db");
    let leased = sqlite_rows(&control, "SELECT count(*) FROM divergences WHERE state = 'leased'").await;
    assert_eq!(leased, vec![vec!["0".to_owned()]], "leases were not handed back");
    let status = sqlite_rows(&control, "SELECT status FROM runs ORDER BY started_us DESC LIMIT 1").await;
    assert_eq!(
        status,
        vec![vec!["\"interrupted\"".to_owned()]],
        "text cells read back quoted"
    );
}

async fn finish_and_check(dir: &Path) {
    let last = run_driftless!(dir, &["repair", "--report", "json"]);
    assert_eq!(last.code, Some(0), "{}\n{}", last.stdout, last.stderr);
    let scan = run_driftless!(dir, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "a divergence was lost: {}", scan.stdout);
    let twice = sqlite_rows(
        &dir.join("stage.db"),
        "SELECT id FROM write_log GROUP BY id HAVING count(*) > 1",
    )
    .await;
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(writes(dir).await, DIVERGENT);
    let control = ControlPlane::connect(&format!("sqlite://{}", dir.join("driftless.db").display()))
        .await
        .unwrap();
    driftless_tests::assert_applied_once(&control, "items", "stage", DIVERGENT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_a_repair_that_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path()).await;
    interrupt(dir.path(), "INT", "Ctrl-C").await;
    finish_and_check(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_repair_that_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path()).await;
    interrupt(dir.path(), "TERM", "SIGTERM").await;
    finish_and_check(dir.path()).await;
}
