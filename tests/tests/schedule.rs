//! Schedules and maintenance windows, with real worker processes.
//!
//! - Five workers holding the `schedule` role over a two-second cron queue exactly one run
//!   per tick between them (the control plane's unique tick key); after every worker was down
//!   for several ticks, the first one back queues the missed ticks once, not once each.
//! - A repair run inside a blackout window detects (its divergences are queued) but writes
//!   nothing until the window ends, while the API shows the stage repairing inside a window;
//!   then it repairs and finishes.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use driftless_tests::http::{Api, RO, free_port, spawn_with_tokens, spawn_worker};

const BIN: &str = env!("CARGO_BIN_EXE_driftless-under-test");
use driftless_tests::{fresh_pg_database, run_driftless, sqlite_exec, sqlite_rows};
use sqlx::PgPool;

async fn world(dir: &Path, control_url: &str, dataset_extra: &str) {
    sqlite_exec(
        &dir.join("canonical.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await;
    sqlite_exec(
        &dir.join("stage.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'x');",
    )
    .await;
    std::fs::write(
        dir.join("driftless.toml"),
        format!(
            "[control]\nurl = {control_url:?}\n\n[repair]\nshutdown_secs = 5\n\n\
             [[datasets]]\nname = \"t\"\nkey = [\"id\"]\n{dataset_extra}\n\
             canonical = {{ url = \"sqlite://canonical.db\", table = \"t\" }}\n\
             stages = [ {{ name = \"s\", url = \"sqlite://stage.db\", table = \"t\" }} ]\n"
        ),
    )
    .unwrap();
}

fn worker(dir: &Path, n: usize, roles: &str) -> Child {
    spawn_worker(BIN, dir, n, &["--roles", roles])
}

fn stop(mut children: Vec<Child>) {
    for c in &children {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    for c in &mut children {
        assert_eq!(c.wait().unwrap().code(), Some(0));
    }
}

/// `(tick_at_us, run_id)` of every recorded tick, oldest first.
async fn ticks(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT tick_at_us, run_id FROM schedule_ticks WHERE dataset = 't' ORDER BY tick_at_us")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn scheduled_runs(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT run_id FROM runs WHERE started_by LIKE 'schedule (%' ORDER BY run_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn wait_ticks(pool: &PgPool, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ticks(pool).await.len() < at_least {
        assert!(
            Instant::now() < deadline,
            "fewer than {at_least} ticks were ever claimed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[tokio::test]
async fn five_schedulers_queue_one_run_per_tick_and_a_missed_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, url) = fresh_pg_database("schedule_ticks_test").await;
    world(
        dir.path(),
        &url,
        "schedule = { cron = \"*/2 * * * * *\", mode = \"scan\" }",
    )
    .await;
    // Migrated before the workers start, so the test can read the ticks at once.
    driftless_control::ControlPlane::connect(&url).await.unwrap();
    let workers: Vec<Child> = (0..5).map(|n| worker(dir.path(), n, "schedule")).collect();
    wait_ticks(&pool, 4).await;
    stop(workers);

    let claimed = ticks(&pool).await;
    let mut runs: Vec<String> = claimed.iter().map(|(_, r)| r.clone()).collect();
    runs.sort();
    runs.dedup();
    assert_eq!(
        runs.len(),
        claimed.len(),
        "a run was recorded for two ticks: {claimed:?}"
    );
    assert_eq!(
        scheduled_runs(&pool).await,
        runs,
        "runs without a tick, or ticks without a run"
    );
    for pair in claimed.windows(2) {
        assert_eq!(
            (pair[1].0 - pair[0].0) % 2_000_000,
            0,
            "ticks off the cron: {claimed:?}"
        );
    }

    // Down for three ticks or more; then one worker comes back.
    let last_before = claimed.last().unwrap().0;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let back_at = now_us();
    let back = vec![worker(dir.path(), 9, "schedule")];
    wait_ticks(&pool, claimed.len() + 1).await;
    stop(back);
    let after = ticks(&pool).await;
    let caught_up: Vec<i64> = after
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t > last_before && *t <= back_at)
        .collect();
    assert_eq!(
        caught_up.len(),
        1,
        "missed ticks should run once: {after:?} (back at {back_at})"
    );
    assert!(
        caught_up[0] > back_at - 2_000_000,
        "the catch-up run is not the latest missed tick"
    );
    assert_eq!(scheduled_runs(&pool).await.len(), after.len());
}

/// A window `HH:MM:SS-HH:MM:SS` (UTC) from `start` to `end`, Unix seconds.
fn window(start: i64, end: i64) -> String {
    let hms = |s: i64| {
        let d = s.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", d / 3600, d / 60 % 60, d % 60)
    };
    format!("{}-{}", hms(start), hms(end))
}

#[tokio::test]
async fn no_repair_write_starts_inside_a_blackout_and_the_run_finishes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_us() / 1_000_000;
    let end = now + 8;
    let blackout = format!(
        "blackout = [{:?}]\nrepair = {{ max_divergence_ratio = 1.0 }}",
        window(now - 1, end)
    );
    world(dir.path(), "sqlite://control.db", &blackout).await;
    let before = sqlite_rows(&dir.path().join("stage.db"), "SELECT * FROM t ORDER BY id").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "worker",
        "--config",
        "driftless.toml",
        "--roles",
        "scan,repair",
        "--listen",
        &listen,
    ];
    let mut workers = vec![spawn_with_tokens(BIN, dir.path(), &args, "worker.log")];
    let api = Api::on(port);
    api.wait_healthy(&mut workers[0], &dir.path().join("worker.log")).await;
    let submit = run_driftless!(dir.path(), &["repair", "--submit", "--no-wait"]);
    assert_eq!(submit.code, Some(0), "{}", submit.stderr);
    let run_id = submit.stdout.trim().to_owned();

    let control = dir.path().join("control.db");
    let (mut detected, mut shown) = (false, false);
    while now_us() < (end - 1) * 1_000_000 {
        let queued = sqlite_rows(&control, "SELECT count(*) FROM divergences").await;
        detected |= queued != vec![vec!["0".to_owned()]];
        // The status says the stage is being repaired, inside a window.
        let status = api.get("/v1/status", Some(RO)).await.json();
        let stage = &status["stages"][0];
        shown |= stage["state"] == "repairing" && stage["blackout"] == true;
        let metrics = api.get("/metrics", Some(RO)).await.text;
        assert!(
            metrics.contains("driftless_blackout_active{dataset=\"t\",stage=\"s\"} 1"),
            "{metrics}"
        );
        let rows = sqlite_rows(&dir.path().join("stage.db"), "SELECT * FROM t ORDER BY id").await;
        assert_eq!(rows, before, "a repair wrote inside the window");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(detected, "detection should run inside the window");
    assert!(shown, "/v1/status never showed the stage repairing inside the window");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = sqlite_rows(
            &control,
            &format!("SELECT status, finished_us FROM runs WHERE run_id = '{run_id}'"),
        )
        .await;
        if !matches!(status[0][0].as_str(), "\"queued\"" | "\"running\"") {
            break status;
        }
        assert!(Instant::now() < deadline, "the run never finished: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop(workers);
    assert_eq!(status[0][0], "\"consistent\"", "{status:?}");
    assert!(status[0][1].parse::<i64>().unwrap() >= end * 1_000_000);
    let applied = sqlite_rows(&control, "SELECT min(applied_us), count(*) FROM repairs").await;
    assert_eq!(applied[0][1], "2", "{applied:?}");
    assert!(
        applied[0][0].parse::<i64>().unwrap() >= end * 1_000_000,
        "{applied:?} before {end}"
    );
    let canonical = sqlite_rows(&dir.path().join("canonical.db"), "SELECT * FROM t ORDER BY id").await;
    assert_eq!(
        sqlite_rows(&dir.path().join("stage.db"), "SELECT * FROM t ORDER BY id").await,
        canonical
    );
}
