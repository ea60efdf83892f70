//! `driftless scan` on two SQLite copies of a million rows: a composite key of an integer and
//! text whose bytewise order differs from locale order, NULLs next to empty strings, numbers
//! stored as text in the stage, and seeded random inserts, updates and deletes. The report
//! must name exactly the mutated keys with the right kind.

use std::collections::BTreeSet;
use std::path::Path;

use driftless_tests::{Rng, assert_exactly, divergences, run_driftless, sqlite_exec, write_config};
use serde_json::json;

const ROWS: u64 = 1_000_000;
/// Names per region: every row's key is (i / NAMES.len(), NAMES[i % NAMES.len()]).
const NAMES: [&str; 8] = ["a", "B", "ä", "Z", "", " ", "a b", "Äpfel"];
const MUTATIONS_PER_KIND: usize = 20;

fn key_of(i: u64) -> (i64, &'static str) {
    (
        (i / NAMES.len() as u64) as i64,
        NAMES[(i % NAMES.len() as u64) as usize],
    )
}

fn names_case() -> String {
    let arms: Vec<String> = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| format!("WHEN {i} THEN '{}'", n.replace('\'', "''")))
        .collect();
    format!("CASE i % {} {} END", NAMES.len(), arms.join(" "))
}

/// The canonical table: typed columns, amounts as numbers.
async fn make_canonical(path: &Path) {
    sqlite_exec(
        path,
        &format!(
            "CREATE TABLE t (region_id INTEGER NOT NULL, name TEXT NOT NULL, amount NUMERIC, note TEXT, \
             updated_at TIMESTAMP, PRIMARY KEY (region_id, name));
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
             INSERT INTO t SELECT i / {names}, {case},
               CASE WHEN i % 5 = 0 THEN NULL WHEN i % 5 = 1 THEN i % 1000 ELSE (i % 1000) / 4.0 END,
               CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'note ' || i END,
               '2024-01-01 00:00:00' FROM n;",
            last = ROWS - 1,
            names = NAMES.len(),
            case = names_case()
        ),
    )
    .await;
}

/// A stage holding the same rows, but with amounts stored as text (`'12.25'`, `'3.0'`) in
/// an untyped column: equal to canonical once normalised.
async fn make_stage(canonical: &Path, path: &Path) {
    sqlite_exec(
        path,
        &format!(
            "ATTACH DATABASE '{}' AS c;
             CREATE TABLE t (region_id INTEGER NOT NULL, name TEXT NOT NULL, amount, note TEXT, \
             updated_at TIMESTAMP, PRIMARY KEY (region_id, name));
             INSERT INTO t SELECT region_id, name, CAST(amount AS TEXT), note, updated_at FROM c.t;
             UPDATE t SET amount = printf('%.4f', amount) WHERE region_id % 1000 = 3 AND amount IS NOT NULL;",
            canonical.display()
        ),
    )
    .await;
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[tokio::test(flavor = "multi_thread")]
async fn million_row_composite_key_scan_names_exactly_the_mutated_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (canonical, stage, twin) = (
        dir.path().join("canonical.db"),
        dir.path().join("stage.db"),
        dir.path().join("twin.db"),
    );
    make_canonical(&canonical).await;
    make_stage(&canonical, &stage).await;
    make_stage(&canonical, &twin).await;

    let mut rng = Rng::new(0x5eed_d81f);
    let mut used = BTreeSet::new();
    let mut pick = |rng: &mut Rng| loop {
        let i = rng.below(ROWS);
        if used.insert(i) {
            return key_of(i);
        }
    };
    let mut sql = String::new();
    let mut expected = BTreeSet::new();
    let mut expect = |key: (i64, &str), kind: &str| {
        expected.insert((
            "diverged".to_owned(),
            json!({"region_id": key.0, "name": key.1}).to_string(),
            kind.to_owned(),
        ));
    };
    for _ in 0..MUTATIONS_PER_KIND {
        let k = pick(&mut rng);
        sql += &format!(
            "UPDATE t SET note = 'changed' WHERE region_id = {} AND name = {};\n",
            k.0,
            sql_text(k.1)
        );
        expect(k, "changed");
        let k = pick(&mut rng);
        sql += &format!(
            "UPDATE t SET amount = NULL, note = NULL WHERE region_id = {} AND name = {};\n",
            k.0,
            sql_text(k.1)
        );
        // Rows whose amount and note were already NULL do not change.
        let i = k.0 as u64 * NAMES.len() as u64 + NAMES.iter().position(|n| *n == k.1).unwrap() as u64;
        if !(i.is_multiple_of(5) && i.is_multiple_of(3)) {
            expect(k, "changed");
        }
        let k = pick(&mut rng);
        sql += &format!(
            "DELETE FROM t WHERE region_id = {} AND name = {};\n",
            k.0,
            sql_text(k.1)
        );
        expect(k, "missing");
    }
    // Inserts below the smallest key, above the largest, and between existing names.
    // None of these names is in NAMES, so an inserted key never exists in canonical.
    let extra_names = ["b", "é", "zz", "A", "\u{00a0}"];
    let mut inserted = BTreeSet::new();
    for n in 0..MUTATIONS_PER_KIND {
        let region = match n % 3 {
            0 => -1 - rng.below(1000) as i64,
            1 => (ROWS / NAMES.len() as u64 + rng.below(1000)) as i64,
            _ => rng.below(ROWS / NAMES.len() as u64) as i64,
        };
        let name = extra_names[n % extra_names.len()];
        if !inserted.insert((region, name)) {
            continue;
        }
        sql += &format!(
            "INSERT INTO t VALUES ({region}, {}, 1.5, NULL, '2024-01-01 00:00:00');\n",
            sql_text(name)
        );
        expect((region, name), "extra");
    }
    // Writes that change the representation but not the value: no drift.
    sql += "UPDATE t SET amount = amount || '00' WHERE region_id = 77 AND amount LIKE '%.%';\n";
    sql += "UPDATE t SET updated_at = '2024-01-01T02:00:00+02:00' WHERE region_id = 78;\n";
    sqlite_exec(&stage, &sql).await;

    write_config(
        dir.path(),
        "ledger",
        &["region_id", "name"],
        ("sqlite://canonical.db", Some("t")),
        &[
            ("diverged", "sqlite://stage.db", Some("t")),
            ("twin", "sqlite://twin.db", Some("t")),
        ],
    );

    let twin_run = run_driftless!(dir.path(), &["scan", "--stage", "twin", "--report", "json"]);
    assert_eq!(twin_run.code, Some(0), "identical copies: {}", twin_run.stderr);
    assert!(divergences(&twin_run.report()).is_empty());
    let stage_rows = &twin_run.report()["datasets"][0]["stages"][0];
    assert_eq!(stage_rows["canonical_rows"], json!(ROWS));
    assert_eq!(stage_rows["stage_rows"], json!(ROWS));

    let run = run_driftless!(dir.path(), &["scan", "--stage", "diverged", "--report", "json"]);
    assert_eq!(run.code, Some(2), "diverged copies: {}", run.stderr);
    let found = divergences(&run.report());
    assert_exactly(&expected, &found);
    assert!(
        expected.len() >= 3 * MUTATIONS_PER_KIND,
        "the test must mutate something"
    );
}
