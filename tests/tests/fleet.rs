//! The fleet: real `driftless worker` processes sharing one real PostgreSQL control plane.
//!
//! - A 1M-row, 3-stage repair run submitted with `--no-wait` completes while workers are
//!   killed with SIGKILL at random moments and new ones started: its segments are spread
//!   over several workers, every injected divergence is queued once and repaired once (the
//!   stages' own write logs, kept by triggers, and the ledger), and a scan afterwards finds
//!   every stage consistent.
//! - SIGTERM: a worker stops within its deadline and hands back its run, segments and queue
//!   entries at once; another worker finishes the run.
//! - The control plane's PostgreSQL stopped and started again under a running fleet: the
//!   workers reconnect and the run completes, each repair applied once; while it is out of
//!   reach for longer than the lease, no worker writes any stage.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use driftless_control::ControlPlane;
use driftless_tests::http::spawn_worker;
use driftless_tests::{Rng, fresh_pg_database, run_driftless, sqlite_exec, sqlite_rows};
use sqlx::PgPool;

/// The stages, in channel order.
const STAGES: [&str; 3] = ["canary", "eu", "us"];
/// The longest a test waits for anything.
const PATIENCE: Duration = Duration::from_secs(300);

/// Canonical with `rows` rows, and per stage a copy drifted in its own keys: changed
/// (`id % 997 = i`), missing (`id % 1009 = i`) and 100 extra keys; every write a stage
/// receives afterwards is logged by a trigger. Returns the divergent keys per stage.
async fn world(dir: &Path, rows: i64, control_url: &str, repair: &str, policy: &str) -> BTreeMap<String, usize> {
    sqlite_exec(
        &dir.join("canonical.db"),
        &format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, amount NUMERIC, status TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO items SELECT i, i * 0.25, 'ok' FROM n;"
        ),
    )
    .await;
    let mut divergent = BTreeMap::new();
    let mut stages = String::new();
    for (i, stage) in STAGES.iter().enumerate() {
        let file = dir.join(format!("{stage}.db"));
        std::fs::copy(dir.join("canonical.db"), &file).unwrap();
        sqlite_exec(
            &file,
            &format!(
                "UPDATE items SET status = 'drifted' WHERE id % 997 = {i};
                 DELETE FROM items WHERE id % 1009 = {i} AND id % 997 <> {i};
                 WITH RECURSIVE n(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM n WHERE j < 100)
                 INSERT INTO items SELECT {rows} + j * 7 + {i}, 1, 'stray' FROM n;
                 CREATE TABLE write_log (id INTEGER NOT NULL, op TEXT NOT NULL);
                 CREATE TRIGGER log_insert AFTER INSERT ON items BEGIN INSERT INTO write_log VALUES (NEW.id, 'insert'); END;
                 CREATE TRIGGER log_update AFTER UPDATE ON items BEGIN INSERT INTO write_log VALUES (NEW.id, 'update'); END;
                 CREATE TRIGGER log_delete AFTER DELETE ON items BEGIN INSERT INTO write_log VALUES (OLD.id, 'delete'); END;"
            ),
        )
        .await;
        let i = i as i64;
        let changed = (1..=rows).filter(|id| id % 997 == i).count();
        let missing = (1..=rows).filter(|id| id % 1009 == i && id % 997 != i).count();
        divergent.insert((*stage).to_owned(), changed + missing + 100);
        stages.push_str(&format!(
            "  {{ name = {stage:?}, url = \"sqlite://{stage}.db\", table = \"items\" }},\n"
        ));
    }
    std::fs::write(
        dir.join("driftless.toml"),
        format!(
            "[control]\nurl = {control_url:?}\n\n{repair}\n[[datasets]]\nname = \"items\"\n{policy}\n\
             canonical = {{ url = \"sqlite://canonical.db\", table = \"items\" }}\n\
             stages = [\n{stages}]\n"
        ),
    )
    .unwrap();
    divergent
}

/// Starts a worker in `dir`, its output kept in `worker-N.log`.
fn worker(dir: &Path, n: usize) -> Child {
    spawn_worker(env!("CARGO_BIN_EXE_driftless-under-test"), dir, n, &[])
}

/// Submits a repair run for the fleet without waiting; returns its id.
fn submit(dir: &Path) -> String {
    let run = run_driftless!(dir, &["repair", "--submit", "--no-wait"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let id = run.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "not a run id: {id:?}");
    id
}

/// The run's status in the control plane.
async fn status(control: &PgPool, run_id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(control)
        .await
        .unwrap()
}

async fn finished(control: &PgPool, run_id: &str) -> bool {
    !matches!(status(control, run_id).await.as_str(), "queued" | "running")
}

/// Waits until the run has finished, failing after [`PATIENCE`].
async fn wait_finished(control: &PgPool, run_id: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !finished(control, run_id).await {
        assert!(Instant::now() < deadline, "run {run_id} never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The finished run's report, as `runs show` prints it.
fn shown(dir: &Path, run_id: &str) -> serde_json::Value {
    let show = run_driftless!(dir, &["runs", "show", run_id, "--report", "json"]);
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    show.report()
}

/// The run's report found and repaired each stage's divergent keys, each once: the report
/// lists the first 1000 (the default `report_limit`), `runs show --all` every one.
fn check_report(dir: &Path, run_id: &str, divergent: &BTreeMap<String, usize>) {
    let report = shown(dir, run_id);
    assert_eq!(report["status"], "consistent", "{report}");
    let all = run_driftless!(dir, &["runs", "show", run_id, "--all", "--report", "json"]);
    assert_eq!(all.code, Some(0), "{}", all.stderr);
    let all = all.report();
    for (stage, &n) in divergent {
        let s = driftless_tests::stage_of(&report, stage);
        assert_eq!(s["divergent"], n as u64, "stage {stage}: {}", s["divergent"]);
        assert_eq!(s["repaired"], n as u64, "stage {stage}");
        assert_eq!(s["divergences"].as_array().unwrap().len(), n.min(1000), "stage {stage}");
        assert_eq!(s["truncated"].as_bool().unwrap_or(false), n > 1000, "stage {stage}");
        let listed = driftless_tests::stage_of(&all, stage)["divergences"]
            .as_array()
            .unwrap()
            .clone();
        let keys: std::collections::BTreeSet<String> = listed.iter().map(|v| v["key"].to_string()).collect();
        assert_eq!(
            (listed.len(), keys.len()),
            (n, n),
            "stage {stage}: every key listed once"
        );
    }
}

/// Each stage received exactly one write per divergent key, the ledger holds one
/// application per key, the queue one entry per key, all repaired; and a fresh one-shot
/// scan finds every stage consistent.
async fn check_exactly_once(dir: &Path, control_url: &str, divergent: &BTreeMap<String, usize>) {
    let control = ControlPlane::connect(control_url).await.unwrap();
    for (stage, &n) in divergent {
        let writes = sqlite_rows(
            &dir.join(format!("{stage}.db")),
            "SELECT id, count(*) FROM write_log GROUP BY id",
        )
        .await;
        let twice: Vec<_> = writes.iter().filter(|r| r[1] != "1").collect();
        assert!(twice.is_empty(), "stage {stage}: written more than once: {twice:?}");
        assert_eq!(writes.len(), n, "stage {stage}: keys written");
        driftless_tests::assert_applied_once(&control, "items", stage, n).await;
        let entries = control.entries("items", stage, "repaired").await.unwrap();
        assert_eq!(entries.len(), n, "stage {stage}: queue entries repaired");
    }
    let scan = run_driftless!(dir, &["scan", "--report", "json"]);
    assert_eq!(
        scan.code,
        Some(0),
        "drift left after the fleet's repair: {}",
        scan.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_repair_survives_twenty_kills_and_applies_every_repair_once() {
    const ROWS: i64 = 1_000_000;
    const KILLS: usize = 22;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (control, control_url) = fresh_pg_database("fleet_kills").await;
    // Short leases, so that a killed worker's run and segments are soon someone else's; a
    // pace of 500 writes a second keeps the run's repairs going through the kills.
    let repair = "[repair]\nbatch_keys = 32\nlease_secs = 2\n";
    let policy = "repair = { rate_per_sec = 500.0, burst = 32, max_divergence_ratio = 0.5 }";
    let divergent = world(d, ROWS, &control_url, repair, policy).await;

    let mut workers: Vec<Child> = (0..3).map(|n| worker(d, n)).collect();
    let run_id = submit(d);
    let mut rng = Rng::new(0xF1EE7);
    let mut hit_running = 0;
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
        if !finished(&control, &run_id).await {
            hit_running += 1;
        }
        let victim = rng.below(workers.len() as u64) as usize;
        let mut gone = workers.swap_remove(victim);
        gone.kill().unwrap();
        gone.wait().unwrap();
        workers.push(worker(d, 3 + kill));
    }
    assert!(
        hit_running >= 20,
        "only {hit_running} of {KILLS} kills hit the running run"
    );
    wait_finished(&control, &run_id).await;
    for mut w in workers {
        w.kill().unwrap();
        w.wait().unwrap();
    }

    check_report(d, &run_id, &divergent);
    let report = shown(d, &run_id);
    let took_part = report["workers"].as_array().unwrap().len();
    assert!(took_part > 1, "one worker did everything: {}", report["workers"]);
    let owners: Vec<String> = sqlx::query_scalar("SELECT DISTINCT owner FROM segments WHERE run_id = $1")
        .bind(&run_id)
        .fetch_all(&control)
        .await
        .unwrap();
    assert!(owners.len() > 1, "segments were digested by one worker: {owners:?}");
    let (segments, retaken): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE attempts > 1) FROM segments WHERE run_id = $1")
            .bind(&run_id)
            .fetch_one(&control)
            .await
            .unwrap();
    eprintln!(
        "{took_part} workers took part, {} digested segments; {retaken} of {segments} segments were taken again",
        owners.len()
    );
    check_exactly_once(d, &control_url, &divergent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_by_sigterm_hands_its_work_back_at_once() {
    const ROWS: i64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (control, control_url) = fresh_pg_database("fleet_sigterm").await;
    // Leases far longer than the test: anything not handed back would still be leased.
    let repair = "[repair]\nbatch_keys = 8\nlease_secs = 3600\nshutdown_secs = 10\n";
    let policy = "repair = { rate_per_sec = 40.0, burst = 8, max_divergence_ratio = 0.5 }";
    let divergent = world(d, ROWS, &control_url, repair, policy).await;

    let first = worker(d, 0);
    let run_id = submit(d);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let written = sqlite_rows(&d.join("canary.db"), "SELECT count(*) FROM write_log").await;
        if written[0][0].parse::<usize>().unwrap() >= 16 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never started repairing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = first.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = first.wait_with_output().unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(10 + 5), "the worker took {took:?} to stop");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let log = std::fs::read_to_string(d.join("worker-0.log")).unwrap();
    assert!(log.contains("leases handed back"), "{log}");

    // Nothing is left leased: the run is claimable at once, its entries pending.
    let held: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM runs WHERE lease_until_us > 0 AND status = 'running') \
              + (SELECT count(*) FROM segments WHERE state = 'leased') \
              + (SELECT count(*) FROM divergences WHERE state = 'leased')",
    )
    .fetch_one(&control)
    .await
    .unwrap();
    assert_eq!(held, 0, "leases were left behind after SIGTERM");
    assert_eq!(status(&control, &run_id).await, "running");

    let mut second = worker(d, 1);
    wait_finished(&control, &run_id).await;
    second.kill().unwrap();
    second.wait().unwrap();
    check_report(d, &run_id, &divergent);
    check_exactly_once(d, &control_url, &divergent).await;
}

/// A private PostgreSQL server (scripts/pg-server) that the test can stop and start.
struct Server {
    dir: String,
    url: String,
}

impl Server {
    fn script() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-server")
    }

    fn init() -> Server {
        let out = Command::new(Self::script()).arg("init").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let (dir, url) = (lines.next().unwrap().to_owned(), lines.next().unwrap().to_owned());
        Server { dir, url }
    }

    fn run(&self, what: &str) {
        let status = Command::new(Self::script()).args([what, &self.dir]).status().unwrap();
        assert!(status.success(), "pg-server {what}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(Self::script()).args(["remove", &self.dir]).status();
    }
}

/// Writes the stages have received so far.
async fn stage_writes(dir: &Path) -> usize {
    let mut n = 0;
    for stage in STAGES {
        let rows = sqlite_rows(&dir.join(format!("{stage}.db")), "SELECT count(*) FROM write_log").await;
        n += rows[0][0].parse::<usize>().unwrap();
    }
    n
}

async fn wait_for_writes(dir: &Path, at_least: usize) {
    let deadline = Instant::now() + PATIENCE;
    while stage_writes(dir).await < at_least {
        assert!(Instant::now() < deadline, "the fleet never made {at_least} writes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_rides_out_a_control_plane_restart_and_stops_writing_when_cut_off() {
    const ROWS: i64 = 200_000;
    const LEASE: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::init();
    let repair = format!("[repair]\nbatch_keys = 16\nlease_secs = {}\n", LEASE.as_secs());
    let policy = "repair = { rate_per_sec = 100.0, burst = 16, max_divergence_ratio = 0.5 }";
    let divergent = world(d, ROWS, &server.url, &repair, policy).await;
    let total: usize = divergent.values().sum();
    let mut workers: Vec<Child> = (0..3).map(|n| worker(d, n)).collect();
    let run_id = submit(d);

    // A short outage, well within the lease.
    wait_for_writes(d, 32).await;
    server.run("stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.run("start");

    // A long one: once the lease has run out, no stage is written until it is back.
    let before = stage_writes(d).await;
    wait_for_writes(d, before + 64).await;
    server.run("stop");
    tokio::time::sleep(LEASE + Duration::from_secs(2)).await;
    let cut_off = stage_writes(d).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        stage_writes(d).await,
        cut_off,
        "a stage was written while the control plane was out of reach"
    );
    assert!(cut_off < total, "the repair finished before the outage");
    server.run("start");

    let control = ControlPlane::connect(&server.url).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !matches!(control.run_report(&run_id).await.unwrap(), Some((s, Some(_))) if s.as_str() != "running") {
        assert!(Instant::now() < deadline, "the run never finished after the restarts");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in &mut workers {
        assert!(w.try_wait().unwrap().is_none(), "a worker died of the outage");
        w.kill().unwrap();
        w.wait().unwrap();
    }
    check_report(d, &run_id, &divergent);
    check_exactly_once(d, &server.url, &divergent).await;
}
