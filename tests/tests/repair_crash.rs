//! A repair killed with SIGKILL at many random points, then run again until it finishes:
//! every divergence is repaired exactly once. The stage logs every write it receives with a
//! trigger (in the same transaction as the write), so a write made twice would show, and the
//! ledger must record one application per divergence. Half the runs are stopped by a
//! failpoint right after a stage write, before its settlement, so kills land in that window.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use driftless_control::ControlPlane;
use driftless_tests::{Rng, fresh_pg_database, run_driftless, sqlite_exec, sqlite_rows};

/// Rows in canonical.
const ROWS: i64 = 10_000;
/// Divergent keys: changed (id % 12 == 1), missing (id % 12 == 2), and 800 extra. At 300
/// writes a second, their repair takes about 8 s, longer than all the killed runs together,
/// so every kill lands in a run with work left.
const DIVERGENT: usize = 834 + 834 + 800;
/// Kills before the run that is let finish.
const KILLS: usize = 25;

/// Small batches, and leases short enough that a killed run's are soon free (on this host
/// they are freed at once: their process is gone).
const REPAIR: &str = "[repair]\nbatch_keys = 8\nlease_secs = 2\n";
/// 300 writes a second: see [`DIVERGENT`].
const POLICY: &str = "repair = { rate_per_sec = 300.0, burst = 8, max_divergence_ratio = 0.5 }";

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
    // Changed, missing and extra keys spread over the key space; then every write the
    // stage receives from now on is logged.
    sqlite_exec(
        &dir.join("stage.db"),
        "UPDATE items SET status = 'drifted' WHERE id % 12 = 1;
         DELETE FROM items WHERE id % 12 = 2;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 800)
         INSERT INTO items SELECT i * 12 + 3 + 200000, 1, 'stray' FROM n;
         CREATE TABLE write_log (id INTEGER NOT NULL, op TEXT NOT NULL);
         CREATE TRIGGER log_insert AFTER INSERT ON items BEGIN INSERT INTO write_log VALUES (NEW.id, 'insert'); END;
         CREATE TRIGGER log_update AFTER UPDATE ON items BEGIN INSERT INTO write_log VALUES (NEW.id, 'update'); END;
         CREATE TRIGGER log_delete AFTER DELETE ON items BEGIN INSERT INTO write_log VALUES (OLD.id, 'delete'); END;",
    )
    .await;
    std::fs::write(
        dir.join("driftless.toml"),
        format!(
            "{REPAIR}\n[[datasets]]\nname = \"items\"\n{POLICY}\n\
             canonical = {{ url = \"sqlite://canonical.db\", table = \"items\" }}\n\
             stages = [ {{ name = \"stage\", url = \"sqlite://stage.db\", table = \"items\" }} ]\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_sqlite_repairs_apply_every_divergence_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d).await;
    kill_repeatedly(d).await;
    let writes = sqlite_rows(&d.join("stage.db"), "SELECT id, count(*) FROM write_log GROUP BY id").await;
    let control = ControlPlane::connect(&format!("sqlite://{}", d.join("driftless.db").display()))
        .await
        .unwrap();
    check_exactly_once(&writes, &control).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_postgres_repairs_apply_every_divergence_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (canonical, canonical_url) = fresh_pg_database("crash_canonical").await;
    let (staged, stage_url) = fresh_pg_database("crash_stage").await;
    let (_, control_url) = fresh_pg_database("crash_control").await;
    let table = format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, amount numeric(12,2), status text);
         INSERT INTO items SELECT i, i * 0.25, 'ok' FROM generate_series(1, {ROWS}) i;"
    );
    sqlx::raw_sql(&table).execute(&canonical).await.unwrap();
    sqlx::raw_sql(&table).execute(&staged).await.unwrap();
    sqlx::raw_sql(
        "UPDATE items SET status = 'drifted' WHERE id % 12 = 1;
         DELETE FROM items WHERE id % 12 = 2;
         INSERT INTO items SELECT i * 12 + 3 + 200000, 1, 'stray' FROM generate_series(1, 800) i;
         CREATE TABLE write_log (id bigint NOT NULL, op text NOT NULL);
         CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO write_log VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, TG_OP);
           RETURN NULL;
         END $$;
         CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION log_write();",
    )
    .execute(&staged)
    .await
    .unwrap();
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[control]\nurl = {control_url:?}\n\n{REPAIR}\n[[datasets]]\nname = \"items\"\n{POLICY}\n\
             canonical = {{ url = {canonical_url:?}, table = \"items\" }}\n\
             stages = [ {{ name = \"stage\", url = {stage_url:?}, table = \"items\" }} ]\n"
        ),
    )
    .unwrap();
    kill_repeatedly(d).await;
    let writes: Vec<Vec<String>> = sqlx::query_as::<_, (i64, i64)>("SELECT id, count(*) FROM write_log GROUP BY id")
        .fetch_all(&staged)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, n)| vec![id.to_string(), n.to_string()])
        .collect();
    let control = ControlPlane::connect(&control_url).await.unwrap();
    check_exactly_once(&writes, &control).await;
}

/// Runs `driftless repair` [`KILLS`] times, killing each run at a random point (every other
/// one parked by a failpoint just after a stage write), then once to completion, and checks
/// nothing is left.
async fn kill_repeatedly(d: &Path) {
    let bin = env!("CARGO_BIN_EXE_driftless-under-test");
    let mut rng = Rng::new(0x5151);
    let mut killed_running = 0;
    for i in 0..KILLS {
        let mut command = Command::new(bin);
        // Every other run stops, after a few batches, between writing the stage and
        // settling the ledger, the narrowest window; the kill then lands in it.
        if i % 2 == 1 {
            command.env(
                "FAILPOINTS",
                format!("repair-after-stage-write={}*off->sleep(60000)", rng.below(20)),
            );
        }
        let mut child = command
            .args(["repair", "--report", "json"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Anywhere from start-up (opening, digesting, queueing) to well into the repairs.
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(
        killed_running >= 20,
        "only {killed_running} of {KILLS} kills hit a running repair"
    );
    let last = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(last.code, Some(0), "{}\n{}", last.stdout, last.stderr);
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "a divergence was lost: {}", scan.stdout);
}

/// The stage received one write per divergent key (`writes`: id, count), and the ledger
/// holds one application per divergent key, some of them found applied after a kill.
async fn check_exactly_once(writes: &[Vec<String>], control: &ControlPlane) {
    let twice: Vec<&Vec<String>> = writes.iter().filter(|r| r[1] != "1").collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(writes.len(), DIVERGENT);
    // Some repairs were found already applied after a kill between the stage write and
    // the ledger: counted once, not written again.
    let recovered = driftless_tests::assert_applied_once(control, "items", "stage", DIVERGENT).await;
    eprintln!("{recovered} repairs were found applied after a kill, of {DIVERGENT}");
    assert!(recovered > 0, "no kill landed between a stage write and its settlement");
}
