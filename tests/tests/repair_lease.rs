//! A slow batch keeps its leases: at 1 write a second, a 64-key batch takes over a minute,
//! far longer than its 10 s lease, and the repairer renews the lease while it waits and
//! writes. A rival repairer trying all along to take lapsed entries back or claim them
//! never gets one, and every key is written exactly once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use driftless_control::ControlPlane;
use driftless_tests::{run_driftless, sqlite_exec, sqlite_rows};

/// Keys changed in the stage: one batch.
const DIVERGENT: usize = 64;
/// The longest the test waits for anything.
const PATIENCE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_batch_renews_its_lease_and_is_never_claimed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sqlite_exec(
        &d.join("canonical.db"),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, status TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 640)
         INSERT INTO items SELECT i, 'ok' FROM n;",
    )
    .await;
    std::fs::copy(d.join("canonical.db"), d.join("stage.db")).unwrap();
    sqlite_exec(
        &d.join("stage.db"),
        "UPDATE items SET status = 'drifted' WHERE id % 10 = 0;
         CREATE TABLE write_log (id INTEGER NOT NULL);
         CREATE TRIGGER log_update AFTER UPDATE ON items BEGIN INSERT INTO write_log VALUES (NEW.id); END;",
    )
    .await;
    std::fs::write(
        d.join("driftless.toml"),
        "[repair]\nbatch_keys = 64\nlease_secs = 10\n\n\
         [[datasets]]\nname = \"items\"\n\
         repair = { rate_per_sec = 1.0, burst = 1, max_divergence_ratio = 0.5 }\n\
         canonical = { url = \"sqlite://canonical.db\", table = \"items\" }\n\
         stages = [ { name = \"stage\", url = \"sqlite://stage.db\", table = \"items\" } ]\n",
    )
    .unwrap();
    let db = d.join("driftless.db");
    let control = ControlPlane::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_driftless-under-test"))
        .args(["repair", "--report", "json"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let started = Instant::now();
    while sqlite_rows(&db, "SELECT count(*) FROM divergences WHERE state = 'leased'").await
        != vec![vec![DIVERGENT.to_string()]]
    {
        assert!(started.elapsed() < PATIENCE, "the repairer never leased its batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_id = control.runs().await.unwrap()[0].run_id.clone();
    let mut tries = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < PATIENCE, "the repair never finished");
        let now = driftless_engine::context::now_us();
        let reaped = control.reap_lapsed("items", "stage", now, 100).await.unwrap();
        let taken = control
            .lease(&run_id, "items", "stage", "rival", now, now + 60_000_000, 64)
            .await
            .unwrap();
        assert_eq!(
            (reaped, taken.len()),
            (0, 0),
            "a lease lapsed after {:?}",
            started.elapsed()
        );
        tries += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(30), "the batch was not slow");
    assert!(tries > 40, "the rival tried only {tries} times");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let twice = sqlite_rows(
        &d.join("stage.db"),
        "SELECT id FROM write_log GROUP BY id HAVING count(*) > 1",
    )
    .await;
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    driftless_tests::assert_applied_once(&control, "items", "stage", DIVERGENT).await;
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "{}", scan.stdout);
}
