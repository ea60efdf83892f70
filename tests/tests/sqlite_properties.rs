//! Property: for any random set of inserts, updates and deletes on a SQLite stage, the engine
//! (real SQLite, real range queries with composite row-value predicates) names exactly the
//! mutated keys. Small tables, many cases; the million-row test covers scale.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use driftless_core::{DigestAlgorithm, RowHasher};
use driftless_engine::{CopyRef, DatasetPlan, ScanOptions, scan_dataset};
use driftless_store_sqlite::SqliteStore;
use driftless_tests::sqlite_exec;
use proptest::prelude::*;
use serde_json::json;

type Rows = BTreeMap<(i64, String), Option<String>>;

fn insert_sql(rows: &Rows) -> String {
    let mut sql = String::from(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;\n\
         CREATE TABLE t (k1 INTEGER NOT NULL, k2 TEXT NOT NULL, v TEXT, PRIMARY KEY (k1, k2));\n",
    );
    for ((k1, k2), v) in rows {
        let v = v
            .as_ref()
            .map_or("NULL".to_owned(), |v| format!("'{}'", v.replace('\'', "''")));
        sql += &format!("INSERT INTO t VALUES ({k1}, '{}', {v});\n", k2.replace('\'', "''"));
    }
    sql + "COMMIT;"
}

async fn scan(canonical: &Rows, stage: &Rows) -> BTreeSet<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let (c, s) = (dir.path().join("c.db"), dir.path().join("s.db"));
    sqlite_exec(&c, &insert_sql(canonical)).await;
    sqlite_exec(&s, &insert_sql(stage)).await;
    let url = |p: &std::path::Path| format!("sqlite://{}", p.display());
    let plan = DatasetPlan {
        name: "t".into(),
        key: vec![],
        columns: None,
        canonical: Arc::new(SqliteStore::open(&url(&c), "t").await.unwrap()),
        stages: vec![CopyRef {
            name: "s".into(),
            store: Arc::new(SqliteStore::open(&url(&s), "t").await.unwrap()),
            policy: Default::default(),
        }],
        hasher: RowHasher::new(DigestAlgorithm::Xxh3, 0),
        dedupe_key: Vec::new(),
        changed_column: None,
    };
    // Few rows per leaf, so small tables still make many leaves and many range queries.
    let options = ScanOptions {
        rows_per_leaf: 7,
        ..ScanOptions::default()
    };
    let report = scan_dataset(&plan, &options).await.unwrap();
    report.stages[0]
        .divergences
        .iter()
        .map(|d| (d.key.to_string(), d.kind.to_owned()))
        .collect()
}

fn rows() -> impl Strategy<Value = Rows> {
    proptest::collection::btree_map((-20i64..400, "[aBZ ä]{0,2}"), proptest::option::of("[xy]{0,2}"), 0..600)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn sqlite_stage_mutations_are_found_exactly(canonical in rows(), stage_only in rows(), seed in any::<u64>()) {
        // The stage keeps some canonical rows as they are, changes some, drops some, and adds
        // rows of its own.
        let mut stage = Rows::new();
        for (i, (k, v)) in canonical.iter().enumerate() {
            match (seed.rotate_left(i as u32) ^ i as u64) % 5 {
                0 => {}
                1 => { stage.insert(k.clone(), Some(format!("{}!", v.clone().unwrap_or_default()))); }
                _ => { stage.insert(k.clone(), v.clone()); }
            }
        }
        for (k, v) in stage_only {
            stage.entry(k).or_insert(v);
        }
        let mut expected = BTreeSet::new();
        for (k, v) in &canonical {
            let key = json!({"k1": k.0, "k2": k.1}).to_string();
            match stage.get(k) {
                None => { expected.insert((key, "missing".to_owned())); }
                Some(s) if s != v => { expected.insert((key, "changed".to_owned())); }
                Some(_) => {}
            }
        }
        for k in stage.keys().filter(|k| !canonical.contains_key(*k)) {
            expected.insert((json!({"k1": k.0, "k2": k.1}).to_string(), "extra".to_owned()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let found = runtime.block_on(scan(&canonical, &stage));
        prop_assert_eq!(found, expected);
    }
}
