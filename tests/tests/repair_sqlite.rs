//! `driftless repair` on SQLite copies, through the real binary: repairs heal, dry runs
//! write nothing, newer writes are kept, the breaker holds until approval, duplicate commits
//! are found and counted, scoped repairs stay in scope, compensating statements get their
//! parameters bound, and failing writes are parked as dead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use driftless_control::ControlPlane;
use driftless_tests::{Named, assert_exactly, divergences, run_driftless, sqlite_exec, sqlite_rows};
use serde_json::Value as Json;

/// Rows in the canonical table.
const ROWS: i64 = 2000;

/// A canonical `items` table of `ROWS` rows with even ids, and a file copy as the stage.
async fn world(dir: &Path, stages: &[&str]) {
    sqlite_exec(
        &dir.join("canonical.db"),
        &format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, tenant INTEGER NOT NULL, amount NUMERIC, status TEXT, \
             updated_at TEXT, note TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
             INSERT INTO items SELECT 2 * i, i % 7, round(i * 1.25, 2), 'ok', '2026-11-01 00:00:00',
                    CASE WHEN i % 5 = 0 THEN NULL ELSE 'note ' || i END FROM n;"
        ),
    )
    .await;
    for s in stages {
        std::fs::copy(dir.join("canonical.db"), dir.join(format!("{s}.db"))).unwrap();
    }
}

/// Updates, deletes and inserts in a stage; returns the divergences they make.
async fn mutate(db: &Path, stage: &str, updated: &[i64], deleted: &[i64], inserted: &[i64]) -> BTreeSet<Named> {
    let mut sql = String::new();
    let mut expected = BTreeSet::new();
    let mut add = |id: i64, kind: &str| {
        expected.insert((stage.to_owned(), format!("{{\"id\":{id}}}"), kind.to_owned()));
    };
    for id in updated {
        sql.push_str(&format!(
            "UPDATE items SET status = 'drifted', amount = amount + 1 WHERE id = {id};\n"
        ));
        add(*id, "changed");
    }
    for id in deleted {
        sql.push_str(&format!("DELETE FROM items WHERE id = {id};\n"));
        add(*id, "missing");
    }
    for id in inserted {
        sql.push_str(&format!(
            "INSERT INTO items VALUES ({id}, 1, 9.99, 'stray', '2026-11-30 12:00:00', 'inserted');\n"
        ));
        add(*id, "extra");
    }
    sqlite_exec(db, &sql).await;
    expected
}

fn config(dir: &Path, stages: &[&str], top: &str) -> PathBuf {
    config_with(dir, stages, top, "")
}

/// A config of the `items` dataset and its stages, with run-wide tables in `top` and more
/// dataset fields (its `repair` table, `dedupe_key`, ...) in `dataset`.
fn config_with(dir: &Path, stages: &[&str], top: &str, dataset: &str) -> PathBuf {
    let mut text = format!(
        "{top}\n[[datasets]]\nname = \"items\"\n{dataset}\ncanonical = {{ url = \"sqlite://canonical.db\", table = \"items\" }}\n\
         stages = [\n"
    );
    for s in stages {
        text.push_str(&format!(
            "  {{ name = \"{s}\", url = \"sqlite://{s}.db\", table = \"items\" }},\n"
        ));
    }
    text.push_str("]\n");
    let path = dir.join("driftless.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn table(db: &Path) -> Vec<Vec<String>> {
    sqlite_rows(db, "SELECT * FROM items ORDER BY id").await
}

fn stage<'a>(report: &'a Json, name: &str) -> &'a Json {
    driftless_tests::stage_of(report, name)
}

async fn control(dir: &Path) -> ControlPlane {
    ControlPlane::connect(&format!("sqlite://{}", dir.join("driftless.db").display()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_heals_and_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &["test"]).await;
    let expected = mutate(
        &d.join("test.db"),
        "test",
        &[2, 500, 1000, 2400, 3998, 4000, 10, 12, 14, 16],
        &[4, 600, 1200, 3000, 3996],
        &[-5, 1, 1001, 2001, 99_999],
    )
    .await;
    config(d, &["test"], "");
    let before = table(&d.join("test.db")).await;

    let dry = run_driftless!(d, &["repair", "--dry-run", "--report", "json"]);
    assert_eq!(dry.code, Some(2), "{}", dry.stderr);
    let report = dry.report();
    assert_exactly(&expected, &divergences(&report));
    let repair = &stage(&report, "test")["repair"];
    assert_eq!(repair["status"], "dry_run");
    assert_eq!(repair["planned"].as_array().unwrap().len(), 20);
    assert_eq!(table(&d.join("test.db")).await, before, "--dry-run wrote to the stage");

    let run = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.report();
    assert_exactly(&expected, &divergences(&report));
    let s = stage(&report, "test");
    assert_eq!(s["repaired"], 20);
    assert_eq!(s["repair"]["status"], "repaired", "{s}");
    assert_eq!(s["repair"]["outcomes"]["applied"], 20, "{s}");

    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "{}", scan.stdout);
    let report = scan.report();
    assert!(divergences(&report).is_empty());
    // Every run records each copy's leaves; after the repair the two copies' are equal.
    let run_id = report["run_id"].as_str().unwrap();
    let control_plane = control(d).await;
    let canonical_leaves = control_plane.leaves(run_id, "items", "canonical").await.unwrap();
    assert!(canonical_leaves.len() > 1);
    assert_eq!(canonical_leaves.iter().map(|l| l.0).sum::<u64>(), ROWS as u64);
    assert_eq!(
        control_plane.leaves(run_id, "items", "test").await.unwrap(),
        canonical_leaves
    );
    // Overwrite copies every column, not only the compared ones.
    assert_eq!(table(&d.join("test.db")).await, table(&d.join("canonical.db")).await);

    let ledger = control(d).await.ledger("items", "test").await.unwrap();
    assert_eq!(ledger.len(), 20, "{ledger:?}");
    assert!(
        ledger
            .iter()
            .all(|r| r.outcome == "applied" && r.applications == 1 && r.repeats == 0),
        "{ledger:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_writer_keeps_its_newer_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &["test"]).await;
    let updated: Vec<i64> = (1..=40).map(|i| i * 40).collect();
    mutate(&d.join("test.db"), "test", &updated, &[], &[]).await;
    // One key per batch at 10 writes/s: the last keys are written about 4 s after detection.
    config_with(
        d,
        &["test"],
        "[repair]\nbatch_keys = 1",
        "repair = { rate_per_sec = 10.0, burst = 1 }",
    );
    // The control plane exists (and is migrated) before the repair starts.
    let control = control(d).await;
    let child = driftless_tests::spawn_driftless!(d, ["repair", "--report", "json"]);
    // Once the run has queued its divergences, a writer updates the last five keys.
    let newer: Vec<i64> = updated[35..].to_vec();
    driftless_tests::wait_for_queued(&d.join("driftless.db"), 40).await;
    let writes: String = newer
        .iter()
        .map(|id| format!("UPDATE items SET note = 'writer {id}' WHERE id = {id};"))
        .collect();
    sqlite_exec(&d.join("test.db"), &writes).await;
    drop(control);

    let report = driftless_tests::finished_report(child, 2);
    let s = stage(&report, "test");
    let skipped: BTreeSet<String> = s["repair"]["skipped_newer"]
        .as_array()
        .unwrap()
        .iter()
        .map(Json::to_string)
        .collect();
    let want: BTreeSet<String> = newer.iter().map(|id| format!("{{\"id\":{id}}}")).collect();
    assert_eq!(skipped, want, "{s}");
    assert_eq!(s["repair"]["outcomes"]["applied"], 35, "{s}");
    assert_eq!(s["repair"]["status"], "incomplete", "{s}");
    for id in &newer {
        let note = sqlite_rows(&d.join("test.db"), &format!("SELECT note FROM items WHERE id = {id}")).await;
        assert_eq!(
            note,
            vec![vec![format!("\"writer {id}\"")]],
            "key {id} lost its newer value"
        );
    }
    // The next scan sees exactly the keys the writer changed.
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    let left: BTreeSet<String> = divergences(&scan.report()).into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(left, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_holds_writes_until_approved_and_halts_later_stages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &["test", "production"]).await;
    // 30% of the rows changed in the first stage, one in the second.
    let updated: Vec<i64> = (1..=ROWS).filter(|i| i % 10 < 3).map(|i| 2 * i).collect();
    mutate(&d.join("test.db"), "test", &updated, &[], &[]).await;
    mutate(&d.join("production.db"), "production", &[8], &[], &[]).await;
    config_with(
        d,
        &["test", "production"],
        "",
        "repair = { max_divergence_ratio = 0.05 }",
    );
    let (test_before, prod_before) = (table(&d.join("test.db")).await, table(&d.join("production.db")).await);

    let held = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(held.code, Some(2), "{}", held.stderr);
    let report = held.report();
    assert_eq!(report["status"], "held");
    let t = stage(&report, "test");
    assert_eq!(t["repair"]["status"], "held", "{t}");
    assert!(t["repair"]["reason"].as_str().unwrap().contains("--approve"), "{t}");
    assert_eq!(stage(&report, "production")["repair"]["status"], "halted");
    assert_eq!(table(&d.join("test.db")).await, test_before, "a held stage was written");
    assert_eq!(
        table(&d.join("production.db")).await,
        prod_before,
        "a halted stage was written"
    );

    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let approved = run_driftless!(d, &["repair", "--approve", &run_id, "--report", "json"]);
    assert_eq!(approved.code, Some(0), "{}\n{}", approved.stdout, approved.stderr);
    let report = approved.report();
    assert_eq!(report["run_id"], run_id.as_str());
    assert_eq!(stage(&report, "test")["repaired"], updated.len());
    assert_eq!(stage(&report, "production")["repaired"], 1);
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "{}", scan.stdout);

    // A run is approved once.
    let again = run_driftless!(d, &["repair", "--approve", &run_id]);
    assert_eq!(again.code, Some(1));
    assert!(
        again.stderr.contains("only a repair run held by the breaker"),
        "{}",
        again.stderr
    );
}

/// The breaker's ratio counts the keys in either copy: with 1 canonical row and 7 other stage
/// rows, all 8 keys diverge; 1.0 repairs them all, 0.9 (7 of 8) holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_ratio_of_one_never_holds() {
    for (ratio, held) in [("1.0", false), ("0.9", true)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let schema = "CREATE TABLE items (id INTEGER PRIMARY KEY, tenant INTEGER NOT NULL, amount NUMERIC, \
                      status TEXT, updated_at TEXT, note TEXT);";
        sqlite_exec(
            &d.join("canonical.db"),
            &format!("{schema} INSERT INTO items VALUES (1, 1, 1.5, 'ok', NULL, NULL);"),
        )
        .await;
        sqlite_exec(&d.join("test.db"), schema).await;
        mutate(&d.join("test.db"), "test", &[], &[], &[2, 3, 4, 5, 6, 7, 8]).await;
        config_with(
            d,
            &["test"],
            "",
            &format!("repair = {{ max_divergence_ratio = {ratio} }}"),
        );
        let run = run_driftless!(d, &["repair", "--report", "json"]);
        let report = run.report();
        let t = stage(&report, "test");
        assert_eq!(t["divergent"], 8, "{t}");
        if held {
            assert_eq!(run.code, Some(2), "{}", run.stderr);
            assert_eq!(t["repair"]["status"], "held", "{t}");
        } else {
            assert_eq!(run.code, Some(0), "ratio {ratio}: {t}\n{}", run.stderr);
            assert_eq!(t["repaired"], 8, "{t}");
            assert_eq!(table(&d.join("test.db")).await, table(&d.join("canonical.db")).await);
        }
    }
}

/// Metric samples of the textfile, by name and labels.
fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_commits_are_found_repaired_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sqlite_exec(
        &d.join("canonical.db"),
        "CREATE TABLE items (id INTEGER PRIMARY KEY, commit_id TEXT, amount NUMERIC);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO items SELECT i, 'c' || i, i * 0.5 FROM n;",
    )
    .await;
    std::fs::copy(d.join("canonical.db"), d.join("test.db")).unwrap();
    // A retried executor committed c10 twice more and c20 once more, under new ids; 900 is
    // a stray row of a commit canonical never had, 901 and 902 one commit twice.
    sqlite_exec(
        &d.join("test.db"),
        "INSERT INTO items VALUES (1000, 'c10', 5), (1001, 'c10', 5), (1002, 'c20', 10), (900, 'x1', 1),
                                 (901, 'x2', 2), (902, 'x2', 2);",
    )
    .await;
    config_with(d, &["test"], "", "dedupe_key = [\"commit_id\"]");
    let run = run_driftless!(d, &["repair", "--report", "json", "--metrics-file", "metrics.prom"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let expected: BTreeSet<Named> = [
        (1000, "duplicate"),
        (1001, "duplicate"),
        (1002, "duplicate"),
        (900, "extra"),
        (901, "extra"),
        (902, "duplicate"),
    ]
    .iter()
    .map(|(id, kind)| ("test".to_owned(), format!("{{\"id\":{id}}}"), (*kind).to_owned()))
    .collect();
    assert_exactly(&expected, &divergences(&run.report()));
    assert_eq!(table(&d.join("test.db")).await, table(&d.join("canonical.db")).await);

    let text = std::fs::read_to_string(d.join("metrics.prom")).unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format");
    let l = [("dataset", "items"), ("stage", "test")];
    assert_eq!(
        metric(&scrape, "driftless_duplicate_commits_total", &l),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &scrape,
            "driftless_repairs_total",
            &[("dataset", "items"), ("stage", "test"), ("outcome", "applied")]
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(metric(&scrape, "driftless_divergent_keys", &l), Some(0.0), "{text}");
    assert_eq!(metric(&scrape, "driftless_consistency_ratio", &l), Some(1.0), "{text}");
    assert_eq!(metric(&scrape, "driftless_queue_depth", &l), Some(0.0), "{text}");
    // The lag histogram observed each of the six repairs, and they took under a minute.
    assert_eq!(
        metric(&scrape, "driftless_reconciliation_lag_seconds_count", &l),
        Some(6.0),
        "{text}"
    );
    let lag_sum = metric(&scrape, "driftless_reconciliation_lag_seconds_sum", &l).unwrap();
    assert!((0.0..60.0 * 6.0).contains(&lag_sum), "{text}");
    assert!(metric(&scrape, "driftless_last_success_timestamp_seconds", &l).unwrap() > 1.7e9);
}

#[tokio::test(flavor = "multi_thread")]
async fn scoped_repairs_touch_only_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &["test"]).await;
    // A bad release after 2026-11-30 10:00 rewrote three rows and added one; an older drift
    // (key 50) is out of its scope.
    sqlite_exec(
        &d.join("test.db"),
        "UPDATE items SET status = 'bad', updated_at = '2026-11-30 11:00:00' WHERE id IN (100, 200, 300);
         INSERT INTO items VALUES (7, 1, 1, 'bad', '2026-11-30 11:30:00', NULL);
         UPDATE items SET status = 'old drift' WHERE id = 50;",
    )
    .await;
    config_with(d, &["test"], "", "changed_column = \"updated_at\"");
    let run = run_driftless!(d, &["repair", "--since", "2026-11-30T10:00:00Z", "--report", "json"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let found: BTreeSet<String> = divergences(&run.report()).into_iter().map(|(_, k, _)| k).collect();
    let want: BTreeSet<String> = [7, 100, 200, 300].iter().map(|id| format!("{{\"id\":{id}}}")).collect();
    assert_eq!(found, want);
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    let left: BTreeSet<String> = divergences(&scan.report()).into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(left, BTreeSet::from(["{\"id\":50}".to_owned()]));

    std::fs::write(d.join("keys.txt"), "# the one left\n{\"id\": 50}\n\n").unwrap();
    let keyed = run_driftless!(d, &["repair", "--keys", "keys.txt", "--report", "json"]);
    assert_eq!(keyed.code, Some(0), "{}\n{}", keyed.stdout, keyed.stderr);
    assert_eq!(run_driftless!(d, &["scan"]).code, Some(0));

    std::fs::write(d.join("bad.txt"), "{\"id\": 50}\n{\"nope\": 1}\n").unwrap();
    let bad = run_driftless!(d, &["repair", "--keys", "bad.txt"]);
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr.contains("bad.txt:2") && bad.stderr.contains("nope"),
        "{}",
        bad.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compensating_statements_run_with_bound_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &["test"]).await;
    sqlite_exec(
        &d.join("test.db"),
        "CREATE TABLE fixes (repair_id TEXT PRIMARY KEY, id INTEGER, kind TEXT, amount NUMERIC);",
    )
    .await;
    mutate(&d.join("test.db"), "test", &[20, 40], &[60], &[61]).await;
    // Each statement logs the fix under its repair id (once, whatever the retries) and
    // applies it.
    config_with(
        d,
        &["test"],
        "",
        concat!(
            r#"repair = { mode = "compensate", compensate = { "#,
            r#"changed = "INSERT INTO fixes VALUES (:repair_id, :id, :kind, :amount) ON CONFLICT DO NOTHING", "#,
            r#"missing = "INSERT INTO fixes VALUES (:repair_id, :id, :kind, :amount) ON CONFLICT DO NOTHING", "#,
            r#"extra = "DELETE FROM items WHERE id = :id AND NOT EXISTS (SELECT 1 FROM fixes WHERE repair_id = :repair_id)" } }"#,
        ),
    );
    let run = run_driftless!(d, &["repair", "--report", "json"]);
    let report = run.report();
    let s = stage(&report, "test");
    // The statements for changed and missing only log (they do not make the stage equal),
    // so verification reports those keys; the extra row is deleted.
    assert_eq!(run.code, Some(2), "{s}\n{}", run.stderr);
    assert_eq!(s["repair"]["outcomes"]["applied"], 4, "{s}");
    assert_eq!(s["repair"]["status"], "verify_failed", "{s}");
    let fixes = sqlite_rows(&d.join("test.db"), "SELECT id, kind, amount FROM fixes ORDER BY id").await;
    assert_eq!(
        fixes,
        vec![
            vec!["20".to_owned(), "\"changed\"".into(), "12.5".into()],
            vec!["40".to_owned(), "\"changed\"".into(), "25".into()],
            vec!["60".to_owned(), "\"missing\"".into(), "37.5".into()],
        ],
    );
    assert!(
        sqlite_rows(&d.join("test.db"), "SELECT 1 FROM items WHERE id = 61")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_that_keep_failing_are_parked_as_dead_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &[]).await;
    // The stage refuses negative amounts; canonical has one.
    sqlite_exec(&d.join("canonical.db"), "UPDATE items SET amount = -1 WHERE id = 10;").await;
    sqlite_exec(
        &d.join("test.db"),
        &format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, tenant INTEGER NOT NULL, amount NUMERIC CHECK (amount >= 0), \
             status TEXT, updated_at TEXT, note TEXT);
             ATTACH '{}' AS c; INSERT INTO items SELECT * FROM c.items WHERE id <> 10; DETACH c;
             INSERT INTO items VALUES (10, 5, 0, 'ok', '2026-11-01 00:00:00', 'note 5');",
            d.join("canonical.db").display()
        ),
    )
    .await;
    sqlite_exec(&d.join("test.db"), "UPDATE items SET status = 'x' WHERE id = 12;").await;
    config_with(d, &["test"], "[repair]\nmax_attempts = 3\nbackoff_base_ms = 10", "");
    let run = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    let report = run.report();
    let s = stage(&report, "test");
    assert_eq!(s["repair"]["outcomes"]["applied"], 1, "{s}");
    assert_eq!(s["repair"]["outcomes"]["failed"], 3, "{s}");
    assert_eq!(s["repair"]["outcomes"]["dead"], 1, "{s}");
    let dead = s["repair"]["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{s}");
    assert_eq!(dead[0]["key"], serde_json::json!({"id": 10}));
    assert!(dead[0]["error"].as_str().unwrap().contains("CHECK"), "{s}");
    // Dead entries stay in the queue and in reports; the next run does not hammer them.
    let again = run_driftless!(d, &["repair", "--report", "json"]);
    let again = again.report();
    let s = stage(&again, "test");
    assert_eq!(s["repair"]["dead"].as_array().unwrap().len(), 1, "{s}");
    assert!(s["repair"]["outcomes"].get("failed").is_none(), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn detection_pauses_at_the_high_watermark_while_the_repairer_drains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &["test"]).await;
    // 60 changed keys in the lower half of the key space, so the trees bound the divergent
    // keys under the breaker's limit and repair runs while detection goes on.
    let updated: Vec<i64> = (1..=60).map(|i| i * 30).collect();
    mutate(&d.join("test.db"), "test", &updated, &[], &[]).await;
    let run = |high: u64| {
        config_with(
            d,
            &["test"],
            &format!(
                "[repair]\nbatch_keys = 4\nhigh_watermark = {high}\nlow_watermark = {}",
                high / 2
            ),
            "repair = { rate_per_sec = 200.0, burst = 4, max_divergence_ratio = 1.0 }",
        );
        std::fs::copy(d.join("test.db"), d.join("test.db.orig")).unwrap();
        let out = run_driftless!(d, &["repair", "--report", "json"]);
        std::fs::rename(d.join("test.db.orig"), d.join("test.db")).unwrap();
        std::fs::remove_file(d.join("driftless.db")).unwrap();
        assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
        let report = out.report();
        let s = stage(&report, "test").clone();
        assert_eq!(s["repaired"], 60, "{s}");
        s["repair"]["detection_paused_secs"].as_f64().unwrap()
    };
    // With room for every entry, detection never waits; with room for 4, it does.
    assert_eq!(run(1_000_000), 0.0);
    let paused = run(4);
    assert!(paused > 0.0, "detection never paused at a high watermark of 4");
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_give_each_stage_a_status_and_name_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world(d, &["test", "prod"]).await;
    mutate(&d.join("test.db"), "test", &[2, 500], &[4], &[-5]).await;
    config(d, &["test", "prod"], "");
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(2), "{}", scan.stderr);
    let report = scan.report();
    assert_eq!(stage(&report, "test")["status"], "drift");
    assert_eq!(stage(&report, "prod")["status"], "consistent");
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{report}");
    let me = workers[0].as_str().unwrap();
    let pid = me.rsplit_once('/').map(|(_, pid)| pid).unwrap();
    assert!(pid.parse::<u32>().is_ok() && me.contains('@'), "{me}: user@host/pid");

    let repair = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(repair.code, Some(0), "{}", repair.stderr);
    let report = repair.report();
    assert_eq!(stage(&report, "test")["status"], "repaired");
    assert_eq!(
        stage(&report, "test")["status"],
        stage(&report, "test")["repair"]["status"]
    );
    assert_eq!(report["status"], "consistent");
}
