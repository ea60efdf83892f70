//! PostgreSQL copies (pull mode) against the real server that `scripts/test` starts
//! (`scripts/with-postgres` exports `DATABASE_URL`): PostgreSQL vs PostgreSQL and
//! PostgreSQL vs SQLite over every common column type, composite keys with a locale
//! collation, and the errors a user meets first.

use std::collections::BTreeSet;
use std::path::Path;

use driftless_tests::{Named, assert_exactly, divergences, fresh_pg_database, run_driftless, sqlite, write_config};
use serde_json::json;
use sqlx::{Connection, PgPool};

/// Rows per generated table.
const ROWS: i64 = 3000;

/// One logical row, written identically into PostgreSQL and SQLite.
struct Row {
    id: i64,
    n: Option<i32>,
    amount: Option<String>,
    t: Option<String>,
    v: String,
    b: Option<bool>,
    ts: Option<String>,
    d: Option<String>,
    u: Option<String>,
    j: Option<String>,
    bytes: Option<Vec<u8>>,
}

fn row(i: i64) -> Row {
    let some = |every: i64| i % every != 0;
    Row {
        id: i * 7 - 500,
        n: some(11).then_some((i % 1000) as i32 - 500),
        amount: some(13).then(|| format!("{}.{:02}", i % 5000, i % 100)),
        t: match i % 4 {
            0 => None,
            1 => Some(String::new()),
            2 => Some(format!("tëxt {i}")),
            _ => Some("Z".into()),
        },
        v: format!("v{}", i % 17),
        b: some(5).then_some(i % 2 == 0),
        ts: some(9).then(|| {
            format!(
                "2024-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                1 + i % 12,
                1 + i % 28,
                i % 24,
                i % 60,
                i % 59,
                i * 37 % 1_000_000
            )
        }),
        d: some(8).then(|| format!("20{:02}-{:02}-{:02}", 10 + i % 20, 1 + i % 12, 1 + i % 28)),
        u: some(6).then(|| format!("{:08x}-0000-4000-8000-{:012x}", i * 2654435761 % (1 << 32), i)),
        j: some(10).then(|| format!(r#"{{"b": {i}, "a": [1, "x", null], "c": {{"z": true, "y": 1.5}}}}"#)),
        bytes: some(7).then(|| vec![(i % 256) as u8, 0, 255, (i / 256 % 256) as u8]),
    }
}

const PG_TABLE: &str = "CREATE TABLE items (id bigint PRIMARY KEY, n int, amount numeric(12,2), t text, \
    v varchar(20) NOT NULL, b bool, ts timestamptz, d date, u uuid, j jsonb, bytes bytea)";
const SQLITE_TABLE: &str = "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER, amount NUMERIC(12,2), t TEXT, \
    v VARCHAR(20) NOT NULL, b BOOLEAN, ts TIMESTAMPTZ, d DATE, u UUID, j JSONB, bytes BYTEA)";

async fn fill_pg(pool: &PgPool, table: &str) {
    sqlx::query(&PG_TABLE.replace("items", table))
        .execute(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    for i in 0..ROWS {
        let r = row(i);
        sqlx::query(&format!(
            "INSERT INTO {table} VALUES ($1, $2, $3::numeric, $4, $5, $6, $7::timestamptz, $8::date, $9::uuid, $10::jsonb, $11)"
        ))
        .bind(r.id)
        .bind(r.n)
        .bind(r.amount)
        .bind(r.t)
        .bind(r.v)
        .bind(r.b)
        .bind(r.ts)
        .bind(r.d)
        .bind(r.u)
        .bind(r.j)
        .bind(r.bytes)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn fill_sqlite(path: &Path) {
    let mut db = sqlite(path).await;
    sqlx::raw_sql(SQLITE_TABLE).execute(&mut db).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    for i in 0..ROWS {
        let r = row(i);
        // SQLite stores the timestamp as written, with a different but equal offset notation.
        let ts = r.ts.map(|t| t.replace("+00", "Z"));
        sqlx::query("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(r.id)
            .bind(r.n)
            .bind(r.amount)
            .bind(r.t)
            .bind(r.v)
            .bind(r.b)
            .bind(ts)
            .bind(r.d)
            .bind(r.u)
            .bind(r.j)
            .bind(r.bytes)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    db.close().await.unwrap();
}

fn expect(stage: &str, id: i64, kind: &str) -> Named {
    (stage.to_owned(), json!({ "id": id }).to_string(), kind.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_and_sqlite_copies_compare_equal_and_name_mutations() {
    let (pool, url) = fresh_pg_database("driftless_types").await;
    fill_pg(&pool, "canonical").await;
    fill_pg(&pool, "mirror").await;
    let dir = tempfile::tempdir().unwrap();
    fill_sqlite(&dir.path().join("lite.db")).await;
    write_config(
        dir.path(),
        "items",
        &[],
        (&url, Some("canonical")),
        &[
            ("pg", &url, Some("mirror")),
            ("lite", "sqlite://lite.db", Some("items")),
        ],
    );

    let clean = run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(clean.code, Some(0), "equal copies: {}\n{}", clean.stderr, clean.stdout);

    let id = |i: i64| row(i).id;
    sqlx::raw_sql(&format!(
        "UPDATE mirror SET amount = amount + 0.01 WHERE id = {a};
         UPDATE mirror SET ts = ts + interval '1 microsecond' WHERE id = {b};
         UPDATE mirror SET j = '{{\"a\": 2}}' WHERE id = {c};
         UPDATE mirror SET t = NULL WHERE id = {d};
         DELETE FROM mirror WHERE id = {e};
         INSERT INTO mirror (id, v) VALUES (-100000, 'new');
         UPDATE mirror SET amount = 1.10 WHERE id = {f};",
        a = id(1),
        b = id(10),
        c = id(21),
        d = id(2),
        e = id(500),
        f = id(27),
    ))
    .execute(&pool)
    .await
    .unwrap();
    let mut lite = sqlite(&dir.path().join("lite.db")).await;
    sqlx::raw_sql(&format!(
        "UPDATE items SET bytes = x'00' WHERE id = {a};
         UPDATE items SET b = NOT b WHERE id = {b};
         UPDATE items SET u = NULL WHERE id = {c};
         DELETE FROM items WHERE id = {d};
         UPDATE items SET amount = '1.100' WHERE id = {e};",
        a = id(1),
        b = id(2),
        c = id(1001),
        d = id(2999),
        e = id(27),
    ))
    .execute(&mut lite)
    .await
    .unwrap();
    lite.close().await.unwrap();

    let mut expected: BTreeSet<Named> = [
        (1, "changed"),
        (10, "changed"),
        (21, "changed"),
        (2, "changed"),
        (500, "missing"),
    ]
    .into_iter()
    .map(|(i, k)| expect("pg", id(i), k))
    .collect();
    expected.insert(expect("pg", -100000, "extra"));
    // Row 27's amount was 27.27 in every copy; both stages now hold 1.10, written differently.
    expected.insert(expect("pg", id(27), "changed"));
    for (i, k) in [
        (1, "changed"),
        (2, "changed"),
        (1001, "changed"),
        (2999, "missing"),
        (27, "changed"),
    ] {
        expected.insert(expect("lite", id(i), k));
    }
    let run = run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_exactly(&expected, &divergences(&run.report()));

    // The two PostgreSQL copies in pull mode (binary COPY, digested here) name the same keys.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_driftless-under-test"))
        .args(["scan", "--report", "json"])
        .current_dir(dir.path())
        .env("DRIFTLESS_POSTGRES_PUSHDOWN", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled = driftless_tests::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::new(),
    };
    assert_exactly(&expected, &divergences(&pulled.report()));
}

#[tokio::test(flavor = "multi_thread")]
async fn locale_collated_composite_keys_give_no_false_divergence() {
    let (pool, url) = fresh_pg_database("driftless_collation").await;
    // und-x-icu orders 'a' < 'B' < 'ä' < 'Z'; bytewise it is 'B' < 'Z' < 'a' < 'ä'.
    let names = ["a", "B", "ä", "Z", "", " ", "a b", "Äpfel", "b"];
    for table in ["c", "s"] {
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (region int, name text COLLATE \"und-x-icu\", v int, PRIMARY KEY (region, name));
             INSERT INTO {table} SELECT r, n, r FROM generate_series(1, 400) r, unnest(ARRAY[{}]) n;",
            names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::raw_sql(
        "UPDATE s SET v = -1 WHERE region = 17 AND name = 'ä'; DELETE FROM s WHERE region = 300 AND name = 'B';",
    )
    .execute(&pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "regions", &[], (&url, Some("c")), &[("s", &url, Some("s"))]);
    let run = run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let expected: BTreeSet<Named> = [
        (
            "s".to_owned(),
            json!({"region": 17, "name": "ä"}).to_string(),
            "changed".to_owned(),
        ),
        (
            "s".to_owned(),
            json!({"region": 300, "name": "B"}).to_string(),
            "missing".to_owned(),
        ),
    ]
    .into();
    assert_exactly(&expected, &divergences(&run.report()));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_errors_name_dataset_and_copy_without_the_password() {
    let (pool, url) = fresh_pg_database("driftless_errors").await;
    sqlx::raw_sql("CREATE TABLE nokey (id int, v text); CREATE TABLE t (id int PRIMARY KEY, v text);")
        .execute(&pool)
        .await
        .unwrap();
    let password = url::Url::parse(&url).unwrap().password().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let scan = |canonical_url: &str, table: &str| {
        write_config(
            dir.path(),
            "d",
            &[],
            (canonical_url, Some(table)),
            &[("s", &url, Some("t"))],
        );
        let run = run_driftless!(dir.path(), &["scan", "--report", "json"]);
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(
            !run.stderr.contains(&password) && !run.stderr.contains("panicked"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("dataset \"d\", canonical copy"), "{}", run.stderr);
        run.stderr
    };
    assert!(scan(&url, "nokey").contains("no primary key"));
    assert!(scan(&url, "absent").contains("table not found"));
    let mut wrong = url::Url::parse(&url).unwrap();
    wrong.set_password(Some("not-the-password")).unwrap();
    let stderr = scan(wrong.as_str(), "t");
    assert!(
        stderr.contains("password authentication failed") && !stderr.contains("not-the-password"),
        "{stderr}"
    );
    let mut unreachable = url::Url::parse(&url).unwrap();
    unreachable.set_port(Some(1)).unwrap();
    assert!(scan(unreachable.as_str(), "t").contains("cannot open"));

    // A compared column the stage lacks names the stage.
    sqlx::raw_sql("CREATE TABLE narrow (id int PRIMARY KEY);")
        .execute(&pool)
        .await
        .unwrap();
    write_config(dir.path(), "d", &[], (&url, Some("t")), &[("s", &url, Some("narrow"))]);
    let run = run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("stage \"s\"") && run.stderr.contains("\"v\" not found"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_key_gaps_split_into_balanced_ranges() {
    use driftless_core::{Boundaries, DigestAlgorithm, RowHasher};
    use driftless_store::Store;
    use driftless_store_postgres::PgStore;

    let (pool, url) = fresh_pg_database("driftless_gaps").await;
    // Three dense clusters separated by gaps of a trillion and more: arithmetic splits of
    // min..max would put nearly every row in the first and last range.
    sqlx::raw_sql(
        "CREATE TABLE gaps (id bigint PRIMARY KEY, v int);
         INSERT INTO gaps SELECT g, 1 FROM generate_series(1, 20000) g;
         INSERT INTO gaps SELECT 1000000000000 + g, 1 FROM generate_series(1, 20000) g;
         INSERT INTO gaps SELECT 5000000000000000 + g * 3, 1 FROM generate_series(1, 20000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = PgStore::open(&url, "gaps").await.unwrap();
    let schema = store.schema(&[], None).await.unwrap();
    let sample = store.sample_keys(&schema, 2000).await.unwrap();
    assert_eq!(sample.rows, 60_000);
    let boundaries = Boundaries::from_sample(sample.keys, 30);
    let hasher = RowHasher::new(DigestAlgorithm::Xxh3, 0);
    let tree = store
        .tree(&schema, &boundaries, &hasher, &Default::default())
        .await
        .unwrap();
    let counts: Vec<u64> = tree.leaves().iter().map(|l| l.count).collect();
    assert_eq!(counts.iter().sum::<u64>(), 60_000);
    let mean = 60_000 / counts.len() as u64;
    assert!(counts.len() >= 25, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c > mean / 3 && c < mean * 3),
        "unbalanced leaves: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pushdown_leaves_agree_with_row_digest_leaves() {
    use driftless_core::{Boundaries, DigestAlgorithm, RowHasher};
    use driftless_store::Store;
    use driftless_store_postgres::PgStore;

    let (pool, url) = fresh_pg_database("driftless_pushdown").await;
    for table in ["a", "b"] {
        sqlx::raw_sql(&format!(
            "CREATE TABLE {table} (k int8, name text COLLATE \"und-x-icu\", u uuid, v numeric(12,2), w text,
                                   PRIMARY KEY (k, name, u));
             INSERT INTO {table} SELECT g - 3000, n, md5(g::text || n)::uuid, g / 7.0, CASE WHEN g % 3 = 0 THEN NULL ELSE '' END
               FROM generate_series(1, 6000) g, unnest(ARRAY['a', 'B', 'ä', '', 'Z z']) n;"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    let (a, b) = (
        PgStore::open(&url, "a").await.unwrap(),
        PgStore::open(&url, "b").await.unwrap(),
    );
    let schema = a.schema(&[], None).await.unwrap();
    assert!(a.pushdown_kind(&schema).is_some());
    let sample = a.sample_keys(&schema, 3000).await.unwrap();
    let boundaries = Boundaries::from_sample(sample.keys, 40);
    let hasher = RowHasher::new(DigestAlgorithm::Xxh3, 0);
    let pulled = a
        .tree(&schema, &boundaries, &hasher, &Default::default())
        .await
        .unwrap();
    let pushed = a.pushdown_tree(&schema, &boundaries).await.unwrap();
    // The server assigns every row to the same leaf as Boundaries::leaf_of does.
    let counts = |t: &driftless_core::Tree| t.leaves().iter().map(|l| l.count).collect::<Vec<_>>();
    assert_eq!(counts(&pushed), counts(&pulled));
    assert_eq!(pushed, b.pushdown_tree(&schema, &boundaries).await.unwrap());

    // NULL to empty string, one row: exactly that row's leaf differs.
    sqlx::raw_sql("UPDATE b SET w = '' WHERE k = 0 AND name = 'ä';")
        .execute(&pool)
        .await
        .unwrap();
    let changed = b.pushdown_tree(&schema, &boundaries).await.unwrap();
    let u: String = sqlx::query_scalar("SELECT u::text FROM b WHERE k = 0 AND name = 'ä'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let key = driftless_core::Key::from_parts(&[
        driftless_core::KeyPart::Int(0),
        driftless_core::KeyPart::Text("ä".into()),
        driftless_core::KeyPart::Uuid(driftless_core::key::parse_uuid(&u).unwrap()),
    ]);
    assert_eq!(pushed.diff(&changed), vec![boundaries.leaf_of(&key)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pushdown_spans_are_the_whole_trees_leaves() {
    use driftless_core::Boundaries;
    use driftless_store::Store;
    use driftless_store_postgres::PgStore;

    let (pool, url) = fresh_pg_database("driftless_pushdown_span").await;
    sqlx::raw_sql(
        "CREATE TABLE ints (k int8 PRIMARY KEY, v text);
         INSERT INTO ints SELECT g * 3, g::text FROM generate_series(1, 20000) g;
         CREATE TABLE texts (k text COLLATE \"und-x-icu\" PRIMARY KEY, v int);
         INSERT INTO texts SELECT n || g, g FROM generate_series(1, 4000) g, unnest(ARRAY['a', 'B', 'ä', 'Z z']) n;
         CREATE TABLE pairs (a int8, b text, v int, PRIMARY KEY (a, b));
         INSERT INTO pairs SELECT g % 97, g::text, g FROM generate_series(1, 20000) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    for table in ["ints", "texts", "pairs"] {
        let store = PgStore::open(&url, table).await.unwrap();
        let schema = store.schema(&[], None).await.unwrap();
        assert!(store.pushdown_kind(&schema).is_some(), "{table}");
        let sample = store.sample_keys(&schema, 4000).await.unwrap();
        let boundaries = Boundaries::from_sample(sample.keys, 50);
        let whole = store.pushdown_tree(&schema, &boundaries).await.unwrap();
        let last = boundaries.leaf_count() - 1;
        // Open-ended first and last spans, interior ones, a single leaf.
        for (first, end) in [(0, 6), (7, 20), (21, last), (13, 13), (0, last)] {
            let span = store.pushdown_span(&schema, &boundaries, first, end).await.unwrap();
            assert_eq!(
                span,
                whole.leaves()[first..=end].to_vec(),
                "{table}: leaves {first}..={end}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_scans_record_distinct_runs_in_one_postgres_control_plane() {
    let (pool, url) = fresh_pg_database("driftless_control").await;
    sqlx::raw_sql(
        "CREATE TABLE c (id int PRIMARY KEY, v text); INSERT INTO c SELECT g, 'v' || g FROM generate_series(1, 20000) g;
         CREATE TABLE s AS SELECT * FROM c; ALTER TABLE s ADD PRIMARY KEY (id); DELETE FROM s WHERE id = 77;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "d", &[], (&url, Some("c")), &[("s", &url, Some("s"))]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[control]\nurl = \"{url}\"\n\n{text}")).unwrap();

    let bin = env!("CARGO_BIN_EXE_driftless-under-test");
    let spawn = || {
        std::process::Command::new(bin)
            .args(["scan", "--report", "json"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let mut run_ids = BTreeSet::new();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        run_ids.insert(report["run_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(run_ids.len(), 2, "two runs, two ids");

    let control = driftless_control::ControlPlane::connect(&url).await.unwrap();
    let runs = control.runs().await.unwrap();
    let recorded: BTreeSet<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(recorded, run_ids);
    assert!(runs.iter().all(|r| r.status == "drift" && r.stages == 1), "{runs:?}");
}
