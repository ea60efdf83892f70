//! Runs as the control plane keeps them: `report_limit` cuts a stage's list (marked
//! `truncated`, the count whole), `runs` lists recent runs, `runs show` prints a run's
//! stored report and `--all` the whole list; and a run submitted to a worker on the same
//! machine over the embedded SQLite control plane reports what the one-shot run reports.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use driftless_tests::{divergences, run_driftless, sqlite_exec, stage_of};

async fn world(dir: &Path) {
    sqlite_exec(
        &dir.join("canonical.db"),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, status TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO items SELECT i, 'ok' FROM n;",
    )
    .await;
    std::fs::copy(dir.join("canonical.db"), dir.join("stage.db")).unwrap();
    sqlite_exec(
        &dir.join("stage.db"),
        "UPDATE items SET status = 'x' WHERE id % 300 = 7;",
    )
    .await;
    std::fs::write(
        dir.join("driftless.toml"),
        "report_limit = 3\n\n[[datasets]]\nname = \"items\"\n\
         canonical = { url = \"sqlite://canonical.db\", table = \"items\" }\n\
         stages = [ { name = \"stage\", url = \"sqlite://stage.db\", table = \"items\" } ]\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_are_cut_at_the_limit_and_runs_show_prints_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d).await;
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(2), "{}", scan.stderr);
    let report = scan.report();
    let stage = stage_of(&report, "stage");
    assert_eq!(stage["divergent"], 10);
    assert_eq!(stage["divergences"].as_array().unwrap().len(), 3);
    assert_eq!(stage["truncated"], true);
    let run_id = report["run_id"].as_str().unwrap();

    let runs = run_driftless!(d, &["runs", "--report", "json"]);
    assert_eq!(runs.code, Some(0), "{}", runs.stderr);
    let listed = runs.report();
    assert_eq!(listed[0]["run_id"], run_id);
    assert_eq!(
        (listed[0]["status"].as_str(), listed[0]["divergent"].as_i64()),
        (Some("drift"), Some(10))
    );

    let shown = run_driftless!(d, &["runs", "show", run_id, "--report", "json"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    assert_eq!(divergences(&shown.report()), divergences(&report));
    let all = run_driftless!(d, &["runs", "show", run_id, "--all", "--report", "json"]);
    let whole = all.report();
    let stage = stage_of(&whole, "stage");
    assert_eq!(stage["divergences"].as_array().unwrap().len(), 10);
    assert!(stage.get("truncated").is_none(), "{stage}");
    let unknown = run_driftless!(d, &["runs", "show", "no-such-run"]);
    assert_eq!(unknown.code, Some(1));
    assert!(unknown.stderr.contains("no-such-run"), "{}", unknown.stderr);
}

/// A `driftless worker` in `dir`, its output dropped.
fn start_worker(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_driftless-under-test"))
        .args(["worker"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_submitted_over_sqlite_is_done_by_a_worker_on_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d).await;
    let oneshot = run_driftless!(d, &["scan", "--report", "json"]);
    let mut worker = start_worker(d);
    let submitted = run_driftless!(d, &["scan", "--submit", "--report", "json"]);
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(submitted.code, Some(2), "{}", submitted.stderr);
    let report = submitted.report();
    assert_ne!(report["run_id"], oneshot.report()["run_id"]);
    assert_eq!(divergences(&report), divergences(&oneshot.report()));
    assert_eq!(stage_of(&report, "stage")["divergent"], 10);
    assert_eq!(report["workers"].as_array().unwrap().len(), 1);
    // A submitted run with another config's digest is refused by the worker, saying why.
    let no_wait = run_driftless!(d, &["scan", "--submit", "--no-wait"]);
    assert_eq!(no_wait.code, Some(0), "{}", no_wait.stderr);
    let run_id = no_wait.stdout.trim().to_owned();
    std::fs::write(
        d.join("driftless.toml"),
        std::fs::read_to_string(d.join("driftless.toml")).unwrap() + "\n# changed\n",
    )
    .unwrap();
    let mut worker = start_worker(d);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let shown = loop {
        let shown = run_driftless!(d, &["runs", "show", &run_id]);
        if shown.code == Some(1) || std::time::Instant::now() > deadline {
            break shown;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(shown.code, Some(1), "{}", shown.stdout);
    assert!(
        shown.stderr.contains("another version of the config"),
        "{}",
        shown.stderr
    );
}
