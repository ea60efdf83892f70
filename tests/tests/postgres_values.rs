//! PostgreSQL values at their edges, against the real server `scripts/test` starts: binary
//! reads (COPY for whole copies, binary rows for ranges) must digest every value exactly as
//! its text form does, and push-down must place every kind of key as `Boundaries::leaf_of`
//! does and see the changes that matter.

use driftless_core::{Boundaries, DigestAlgorithm, Key, RowHasher, Tree};
use driftless_store::{Schema, Store};
use driftless_store_postgres::PgStore;
use driftless_tests::fresh_pg_database;
use sqlx::PgPool;

/// Edge values per column type, as SQL literals; row `i` takes value `i % len` of each.
const COLUMNS: &[(&str, &str, &[&str])] = &[
    (
        "n",
        "numeric",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "0",
            "'-0.0'",
            "12.5",
            "12.50",
            "12.500000",
            "NULL",
            "1e100",
            "-123456789012345678901234567890.123456789",
            "0.000000000000000000001",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "1e-300",
            "99999999999999999999.9999",
        ],
    ),
    (
        "amount",
        "numeric(12,2)",
        &["0", "-0.01", "12.5", "9999999999.99", "NULL", "-1"],
    ),
    (
        "scaled",
        "numeric(30,10)",
        &["1", "0.1234567891", "-5", "NULL", "123456789012345678.5"],
    ),
    (
        "f8",
        "double precision",
        &[
            "0.1",
            "'-0'",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "1e300",
            "5e-324",
            "1.7976931348623157e308",
            "123456789.125",
            "1/3.0",
            "NULL",
            "2.5e-7",
            "100",
            "-1e15",
            "1e16",
            "0.30000000000000004",
        ],
    ),
    (
        "f4",
        "real",
        &[
            "0.1",
            "1e20",
            "3.4028235e38",
            "1e-45",
            "'NaN'",
            "'-Infinity'",
            "16777217",
            "0.3",
            "NULL",
            "'-0'",
            "1.17549435e-38",
            "33.333",
        ],
    ),
    ("i2", "smallint", &["-32768", "32767", "0", "NULL", "100"]),
    ("i4", "integer", &["-2147483648", "2147483647", "0", "NULL", "1000"]),
    (
        "i8",
        "bigint",
        &["-9223372036854775808", "9223372036854775807", "0", "NULL", "-10"],
    ),
    (
        "tz",
        "timestamptz",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 00:00:00+00 BC'",
            "'0044-03-15 12:00:00.5+00 BC'",
            "'0001-01-01 00:00:00+00'",
            "'1969-12-31 23:59:59.999999+00'",
            "'1900-01-01 00:00:00+00'",
            "'9999-12-31 23:59:59.999999+00'",
            "'10000-01-01 00:00:00+00'",
            "'294276-12-31 23:59:59.999999+00'",
            "'2024-02-29 13:14:15.000016+05:30'",
            "NULL",
            "'1970-01-01 00:00:00+00'",
        ],
    ),
    (
        "ts",
        "timestamp(3)",
        &[
            "'infinity'",
            "'-infinity'",
            "'0001-01-01 00:00:00 BC'",
            "'2024-06-01 12:00:00.123'",
            "'12345-01-01 00:00:00'",
            "NULL",
            "'1999-12-31 23:59:59.999'",
        ],
    ),
    (
        "d",
        "date",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 BC'",
            "'0001-01-01'",
            "'1969-12-31'",
            "'9999-12-31'",
            "'10000-01-01'",
            "'5874897-12-31'",
            "NULL",
            "'2000-01-01'",
        ],
    ),
    (
        "t",
        "text",
        &[
            "''",
            "NULL",
            "'ä'",
            "'a''b'",
            "repeat('long ', 100)",
            "'  padded  '",
            "E'tab\\there'",
        ],
    ),
    ("vc", "varchar(40)", &["''", "'x'", "NULL", "'日本'"]),
    ("ch", "char(5)", &["'ab'", "''", "NULL", "'abcde'"]),
    ("b", "boolean", &["true", "false", "NULL"]),
    (
        "u",
        "uuid",
        &[
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "NULL",
            "'00000000-0000-0000-0000-000000000000'",
        ],
    ),
    (
        "by",
        "bytea",
        &[
            "''",
            "'\\x00'",
            "NULL",
            "'\\xdeadbeef'",
            "decode(repeat('ff', 300), 'hex')",
        ],
    ),
    (
        "jb",
        "jsonb",
        &[
            r#"'{"b": 1, "a": [1, 2, {"d": null, "c": 1.0}]}'"#,
            "'1'",
            r#"'"x"'"#,
            "'null'",
            "NULL",
            r#"'{"a": 1.0}'"#,
            "'[]'",
            r#"'{"é": "ü"}'"#,
        ],
    ),
    (
        "js",
        "json",
        &[
            r#"'{"b": 1,  "a": 2}'"#,
            r#"'{"a": 1, "a": 2}'"#,
            "'[1, 2.50]'",
            "NULL",
            "'not json'::text::json",
        ],
    ),
    ("iv", "interval", &["'1 day 02:03:04.5'", "'-1 year'", "NULL", "'0'"]),
    ("ip", "inet", &["'192.168.0.1/24'", "'::1'", "NULL"]),
    ("arr", "numeric(5,1)[]", &["'{1.5,NULL,2}'", "'{}'", "NULL"]),
    ("m", "money", &["12.34", "-0.5", "NULL"]),
];

/// Rows of the edge-value table.
const ROWS: i64 = 400;

async fn create_edge_table(pool: &PgPool, table: &str) {
    let columns: Vec<String> = COLUMNS.iter().map(|(name, ty, _)| format!("{name} {ty}")).collect();
    let mut sql = format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, {});\n",
        columns.join(", ")
    );
    for i in 0..ROWS {
        // `json` values that are not JSON cannot be written; that literal is a probe of it.
        let values: Vec<String> = COLUMNS
            .iter()
            .map(|(_, ty, values)| {
                let v = values[i as usize % values.len()];
                if v.contains("not json") {
                    "NULL".to_owned()
                } else {
                    format!("({v})::{ty}")
                }
            })
            .collect();
        sql.push_str(&format!(
            "INSERT INTO {table} VALUES ({}, {});\n",
            i * 3 - 200,
            values.join(", ")
        ));
    }
    sqlx::raw_sql(&sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Every row's digest as the text path computes it: `fetch` reads each value's text form
/// and normalises it with `Value::from_text`.
async fn text_digests(store: &PgStore, schema: &Schema, hasher: &RowHasher, keys: &[Key]) -> Vec<(Key, u128)> {
    let mut scratch = Vec::new();
    store
        .fetch(schema, keys)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, values)| {
            let digest = hasher.digest_row(key.as_bytes(), &values, &mut scratch);
            (key, digest)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_reads_digest_every_edge_value_like_its_text_form() {
    let (pool, url) = fresh_pg_database("driftless_values").await;
    create_edge_table(&pool, "edges").await;
    let store = PgStore::open(&url, "edges").await.unwrap();
    let schema = store.schema(&[], None).await.unwrap();
    let hasher = RowHasher::new(DigestAlgorithm::Xxh3, 7);
    let progress = Default::default();

    // Ranges: binary rows, ordered.
    let scanned = store
        .scan_collect(&schema, driftless_core::KeyRange::all(), &hasher, &progress)
        .await
        .unwrap();
    assert_eq!(scanned.len(), ROWS as usize);
    let keys: Vec<Key> = scanned.iter().map(|(k, _)| k.clone()).collect();
    let expected = text_digests(&store, &schema, &hasher, &keys).await;
    for ((key, got), (_, want)) in scanned.iter().zip(&expected) {
        if got != want {
            let values = store.fetch(&schema, std::slice::from_ref(key)).await.unwrap();
            panic!("row {key}: binary digest differs from the text path; values {values:?}");
        }
    }

    // Whole copy: binary COPY, unordered, placed by leaf_of.
    let sample = store.sample_keys(&schema, 100).await.unwrap();
    let boundaries = Boundaries::from_sample(sample.keys, 13);
    let copied = store.tree(&schema, &boundaries, &hasher, &progress).await.unwrap();
    let built = Tree::build(&boundaries, scanned.iter().map(|(k, d)| (k, *d)));
    assert_eq!(copied, built);
}

/// Asserts the push-down tree of `b` equals `a`'s exactly when `equal`, after `change`.
async fn pushdown_sees(
    pool: &PgPool,
    a: &PgStore,
    b: &PgStore,
    schema: &Schema,
    change: &str,
    undo: &str,
    equal: bool,
) {
    let sample = a.sample_keys(schema, 200).await.unwrap();
    let boundaries = Boundaries::from_sample(sample.keys, 7);
    let before = a.pushdown_tree(schema, &boundaries).await.unwrap();
    sqlx::raw_sql(change).execute(pool).await.unwrap();
    let after = b.pushdown_tree(schema, &boundaries).await.unwrap();
    sqlx::raw_sql(undo).execute(pool).await.unwrap();
    assert_eq!(before == after, equal, "{change}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushdown_hashes_see_changes_and_ignore_equal_forms() {
    let (pool, url) = fresh_pg_database("driftless_pushdown_values").await;
    create_edge_table(&pool, "a").await;
    sqlx::raw_sql(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE b AS SELECT * FROM a; ALTER TABLE b ADD PRIMARY KEY (id);
         ALTER TABLE a ADD COLUMN ci text COLLATE ci DEFAULT 'abc';
         ALTER TABLE b ADD COLUMN ci text COLLATE ci DEFAULT 'abc';",
    )
    .execute(&pool)
    .await
    .unwrap();
    let a = PgStore::open(&url, "a").await.unwrap();
    let b = PgStore::open(&url, "b").await.unwrap();
    let schema = a.schema(&[], None).await.unwrap();
    assert!(a.pushdown_kind(&schema).is_some());
    // Equal forms of equal values: no alarm. Row `id = 3 * i - 200` holds value `i % len` of
    // each column's list, which the changes below pick from.
    for (change, undo) in [
        (
            "UPDATE b SET n = 12.500 WHERE n = 12.5",
            "UPDATE b SET n = 12.5 WHERE n = 12.5",
        ),
        (
            "UPDATE b SET f8 = 0 WHERE f8 = '-0'",
            "UPDATE b SET f8 = '-0' WHERE f8 = 0 AND id IN (SELECT id FROM a WHERE f8 = '-0')",
        ),
    ] {
        pushdown_sees(&pool, &a, &b, &schema, change, undo, true).await;
    }
    // Changes: always seen.
    for (change, undo) in [
        (
            "UPDATE b SET t = '' WHERE id = -197",
            "UPDATE b SET t = NULL WHERE id = -197",
        ),
        (
            "UPDATE b SET jb = '{\"a\": 1}' WHERE jb = '{\"a\": 1.0}'",
            "UPDATE b SET jb = '{\"a\": 1.0}' WHERE jb = '{\"a\": 1}'",
        ),
        (
            "UPDATE b SET ci = 'ABC' WHERE id = 1",
            "UPDATE b SET ci = 'abc' WHERE id = 1",
        ),
        (
            "UPDATE b SET tz = tz + interval '1 microsecond' WHERE id = 13",
            "UPDATE b SET tz = tz - interval '1 microsecond' WHERE id = 13",
        ),
        (
            "UPDATE b SET d = 'infinity' WHERE id = 1",
            "UPDATE b SET d = (SELECT d FROM a WHERE id = 1) WHERE id = 1",
        ),
        (
            "UPDATE b SET by = '\\x01' WHERE id = 1",
            "UPDATE b SET by = (SELECT by FROM a WHERE id = 1) WHERE id = 1",
        ),
        (
            "UPDATE b SET b = NOT b WHERE id = -200",
            "UPDATE b SET b = NOT b WHERE id = -200",
        ),
        (
            "UPDATE b SET i2 = i4::int2, i4 = i2 WHERE id = -188",
            "UPDATE b SET i2 = i4::int2, i4 = i2 WHERE id = -188",
        ),
        (
            "UPDATE b SET vc = t, t = vc WHERE id = 10",
            "UPDATE b SET vc = t, t = vc WHERE id = 10",
        ),
        (
            "UPDATE b SET n = 'NaN' WHERE id = 1",
            "UPDATE b SET n = (SELECT n FROM a WHERE id = 1) WHERE id = 1",
        ),
        (
            "DELETE FROM b WHERE id = 1",
            "INSERT INTO b SELECT * FROM a WHERE id = 1",
        ),
    ] {
        pushdown_sees(&pool, &a, &b, &schema, change, undo, false).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pushdown_places_every_kind_of_key_like_leaf_of() {
    let (pool, url) = fresh_pg_database("driftless_pushdown_keys").await;
    sqlx::raw_sql(
        "CREATE TABLE ints (k int4 PRIMARY KEY, v text);
         INSERT INTO ints SELECT g * 7 - 9000, 'v' || g FROM generate_series(1, 3000) g;
         CREATE TABLE texts (k text COLLATE \"und-x-icu\" PRIMARY KEY, v int);
         INSERT INTO texts SELECT n || g, g FROM generate_series(1, 800) g, unnest(ARRAY['a', 'B', 'ä', 'Z', ' ', '']) n;
         CREATE TABLE uuids (k uuid PRIMARY KEY, v int);
         INSERT INTO uuids SELECT md5(g::text)::uuid, g FROM generate_series(1, 3000) g;
         CREATE TABLE pairs (a text, b int8, v int, PRIMARY KEY (a, b));
         INSERT INTO pairs SELECT n, g - 500, g FROM generate_series(1, 1000) g, unnest(ARRAY['x', 'X', 'é']) n;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let hasher = RowHasher::new(DigestAlgorithm::Xxh3, 0);
    for (table, leaves) in [
        ("ints", 200),
        ("texts", 333),
        ("uuids", 150),
        ("pairs", 120),
        ("texts", 2),
        ("ints", 1),
    ] {
        let store = PgStore::open(&url, table).await.unwrap();
        let schema = store.schema(&[], None).await.unwrap();
        let sample = store.sample_keys(&schema, 4000).await.unwrap();
        let boundaries = Boundaries::from_sample(sample.keys, leaves);
        let pulled = store
            .tree(&schema, &boundaries, &hasher, &Default::default())
            .await
            .unwrap();
        let pushed = store.pushdown_tree(&schema, &boundaries).await.unwrap();
        let counts = |t: &Tree| t.leaves().iter().map(|l| l.count).collect::<Vec<_>>();
        assert_eq!(counts(&pushed), counts(&pulled), "{table} with {leaves} leaves");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn samples_spread_over_tables_views_and_small_tables() {
    let (pool, url) = fresh_pg_database("driftless_samples").await;
    sqlx::raw_sql(
        "CREATE TABLE big (id int8 PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', g % 300) FROM generate_series(1, 50000) g;
         CREATE VIEW big_view AS SELECT * FROM big;
         CREATE TABLE small (id int8 PRIMARY KEY);
         INSERT INTO small SELECT generate_series(1, 900);
         CREATE TABLE holes (id int8 PRIMARY KEY);
         INSERT INTO holes SELECT generate_series(1, 100000);
         DELETE FROM holes WHERE (ctid::text::point)[1] <= 8;",
    )
    .execute(&pool)
    .await
    .unwrap();
    // `holes` has lost the first rows of every page, which the tuple-id sample reads, so it
    // is sampled by TABLESAMPLE BERNOULLI instead.
    let holes: i64 = sqlx::query_scalar("SELECT count(*) FROM holes")
        .fetch_one(&pool)
        .await
        .unwrap();
    // (table, keys asked for, rows, largest key)
    for (table, max, rows, last) in [
        ("big", 1000, 50_000, 50_000),
        ("big_view", 1000, 50_000, 50_000),
        ("small", 300, 900, 900),
        ("holes", 1000, holes as u64, 100_000),
    ] {
        let store = PgStore::open(&url, table).await.unwrap();
        let schema = store.schema(&["id".to_owned()], None).await.unwrap();
        let sample = store.sample_keys(&schema, max).await.unwrap();
        assert_eq!(sample.rows, rows, "{table}");
        let n = sample.keys.len();
        assert!(n > max / 2 && n < max * 2, "{table}: {n} keys for {max}");
        // Spread: every tenth of the key range holds at least half its share of the sample.
        let mut per_tenth = [0usize; 10];
        for key in &sample.keys {
            match key.parts().unwrap()[0] {
                driftless_core::KeyPart::Int(v) => per_tenth[((v - 1) * 10 / last) as usize] += 1,
                _ => unreachable!("integer keys"),
            }
        }
        assert!(per_tenth.iter().all(|&c| c * 20 >= n), "{table}: {per_tenth:?}");
    }
}
