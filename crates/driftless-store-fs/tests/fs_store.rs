//! The directory store's contract, on real temporary directories: key order, ranges, row
//! digests, drift detection and errors.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::Ordering;

use driftless_core::{Boundaries, DigestAlgorithm, Key, KeyRange, RowHasher, Tree, Value};
use driftless_store::{Progress, Schema, Store, StoreError};
use driftless_store_fs::FsStore;

/// Files of the standard fixture, in the order they are created.
const FILES: &[(&str, &[u8])] = &[
    ("a/b", b"nested"),
    ("a.txt", b"dot sorts before slash"),
    ("a/c/deep/file.bin", &[0, 1, 2, 255]),
    ("empty", b""),
    ("with space.txt", b"spaces in names"),
    ("unicode/caf\u{e9}.md", b"caf\xc3\xa9"),
    ("unicode/\u{65e5}\u{672c}.txt", b"nihon"),
    ("Zebra", b"upper case sorts before lower"),
    ("b-", b"dash"),
];

/// Every key of the fixture (files and the symlink), in bytewise order.
const SORTED: &[&str] = &[
    "Zebra",
    "a.txt",
    "a/b",
    "a/c/deep/file.bin",
    "b-",
    "empty",
    "link",
    "unicode/caf\u{e9}.md",
    "unicode/\u{65e5}\u{672c}.txt",
    "with space.txt",
];

fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// The fixture, created in `order`, with a symlink and an empty directory.
fn fixture(order: impl IntoIterator<Item = usize>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in order {
        let (rel, content) = FILES[i];
        write(dir.path(), rel, content);
    }
    symlink("a/b", dir.path().join("link")).unwrap();
    fs::create_dir_all(dir.path().join("empty-dir/inner")).unwrap();
    dir
}

fn open(dir: &Path) -> FsStore {
    FsStore::open(&format!("file://{}", dir.display())).unwrap()
}

fn hasher() -> RowHasher {
    RowHasher::new(DigestAlgorithm::Xxh3, 7)
}

async fn full_schema(store: &FsStore) -> Schema {
    store.schema(&[], None).await.unwrap()
}

async fn keys_in(store: &FsStore, range: KeyRange) -> Vec<Key> {
    let schema = full_schema(store).await;
    let progress = Progress::default();
    let rows = store.scan_collect(&schema, range, &hasher(), &progress).await.unwrap();
    assert_eq!(
        progress.load(Ordering::Relaxed),
        rows.len() as u64,
        "progress counts every row"
    );
    rows.into_iter().map(|(k, _)| k).collect()
}

fn boundaries() -> Boundaries {
    Boundaries::from_sample(SORTED.iter().map(|k| Key::text(k)).collect(), 4)
}

async fn tree_of(dir: &Path) -> Tree {
    let store = open(dir);
    let schema = full_schema(&store).await;
    store
        .tree(&schema, &boundaries(), &hasher(), &Progress::default())
        .await
        .unwrap()
}

fn text_keys(keys: &[&str]) -> Vec<Key> {
    keys.iter().map(|k| Key::text(k)).collect()
}

#[tokio::test]
async fn keys_come_back_in_bytewise_order() {
    let dir = fixture(0..FILES.len());
    let store = open(dir.path());
    assert_eq!(keys_in(&store, KeyRange::all()).await, text_keys(SORTED));
    let sample = store.sample_keys(&full_schema(&store).await, 1000).await.unwrap();
    assert_eq!(sample.rows, SORTED.len() as u64);
    assert_eq!(sample.keys, text_keys(SORTED));
    let few = store.sample_keys(&full_schema(&store).await, 3).await.unwrap();
    assert_eq!(few.keys, text_keys(&[SORTED[0], SORTED[3], SORTED[6]]));
}

#[tokio::test]
async fn range_scans_return_exactly_the_keys_in_range() {
    let dir = fixture(0..FILES.len());
    let store = open(dir.path());
    let all = text_keys(SORTED);
    // Bounds on existing keys, between keys, before and after everything.
    let bounds: Vec<Option<Key>> = [
        None,
        Some(""),
        Some("a"),
        Some("a.txt"),
        Some("a/"),
        Some("b-"),
        Some("c"),
    ]
    .into_iter()
    .chain(SORTED.iter().copied().map(Some))
    .chain([Some("zzz")])
    .map(|b| b.map(Key::text))
    .collect();
    for lo in &bounds {
        for hi in &bounds {
            let range = KeyRange {
                lo: lo.clone(),
                hi: hi.clone(),
            };
            let want: Vec<Key> = all.iter().filter(|k| range.contains(k)).cloned().collect();
            assert_eq!(keys_in(&store, range.clone()).await, want, "{range:?}");
        }
    }
}

#[tokio::test]
async fn identical_directories_give_identical_trees() {
    let forward = fixture(0..FILES.len());
    let backward = fixture((0..FILES.len()).rev());
    let a = tree_of(forward.path()).await;
    let b = tree_of(backward.path()).await;
    assert_eq!(a, b);
    assert_eq!(a.root().count, SORTED.len() as u64);
    assert!(a.diff(&b).is_empty());

    // The parallel tree agrees with folding the scan, which is what the default tree does.
    let store = open(forward.path());
    let schema = full_schema(&store).await;
    let rows = store
        .scan_collect(&schema, KeyRange::all(), &hasher(), &Progress::default())
        .await
        .unwrap();
    assert_eq!(Tree::build(&boundaries(), rows.iter().map(|(k, d)| (k, *d))), a);
}

#[tokio::test]
async fn every_kind_of_change_changes_the_tree() {
    type Change = fn(&Path);
    let changes: [(&str, Change); 6] = [
        ("one byte, same size", |d| write(d, "a/b", b"nestex")),
        ("size", |d| write(d, "a/b", b"nested!")),
        ("new file", |d| write(d, "a/new", b"")),
        ("new empty file in an empty dir", |d| write(d, "empty-dir/inner/x", b"")),
        ("deleted file", |d| fs::remove_file(d.join("empty")).unwrap()),
        ("symlink retargeted", |d| {
            fs::remove_file(d.join("link")).unwrap();
            symlink("a.txt", d.join("link")).unwrap();
        }),
    ];
    let base = fixture(0..FILES.len());
    let base_tree = tree_of(base.path()).await;
    for (what, change) in changes {
        let dir = fixture(0..FILES.len());
        assert_eq!(tree_of(dir.path()).await, base_tree, "{what}: before the change");
        change(dir.path());
        let changed = tree_of(dir.path()).await;
        assert_ne!(changed.root(), base_tree.root(), "{what}");
        assert_eq!(changed.diff(&base_tree).len(), 1, "{what}: one leaf differs");
    }
}

#[tokio::test]
async fn row_digests_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    // Larger than the read buffer, so the content is streamed.
    let big: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
    write(dir.path(), "big.bin", &big);
    write(dir.path(), "small", b"hello");
    symlink("../elsewhere", dir.path().join("ln")).unwrap();
    let store = open(dir.path());
    let expected = |h: &RowHasher, cols: &[&str], key: &str, content: &[u8]| {
        let hash = match h.algorithm() {
            DigestAlgorithm::Xxh3 => xxhash_rust::xxh3::xxh3_128(content).to_be_bytes().to_vec(),
            DigestAlgorithm::Blake3 => blake3::hash(content).as_bytes().to_vec(),
        };
        let values: Vec<Value> = cols
            .iter()
            .map(|c| match *c {
                "size" => Value::Int(content.len() as i64),
                _ => Value::Bytes(hash.clone()),
            })
            .collect();
        h.digest_row(Key::text(key).as_bytes(), &values, &mut Vec::new())
    };
    let column_sets: [&[&str]; 4] = [&["size", "content"], &["content", "size"], &["content"], &["size"]];
    for h in [hasher(), RowHasher::new(DigestAlgorithm::Blake3, 7)] {
        for cols in column_sets {
            let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
            let schema = store.schema(&["key".to_owned()], Some(&names)).await.unwrap();
            let rows = store
                .scan_collect(&schema, KeyRange::all(), &h, &Progress::default())
                .await
                .unwrap();
            let want = vec![
                (Key::text("big.bin"), expected(&h, cols, "big.bin", &big)),
                (Key::text("ln"), expected(&h, cols, "ln", b"../elsewhere")),
                (Key::text("small"), expected(&h, cols, "small", b"hello")),
            ];
            assert_eq!(rows, want, "{:?} {cols:?}", h.algorithm());
        }
    }
}

#[tokio::test]
async fn fetch_returns_whole_values_of_present_keys() {
    let dir = fixture(0..FILES.len());
    let store = open(dir.path());
    let schema = full_schema(&store).await;
    let keys = text_keys(&["with space.txt", "missing", "link", "empty"]);
    let rows = store.fetch(&schema, &keys).await.unwrap();
    let want = vec![
        (
            Key::text("with space.txt"),
            vec![Value::Int(15), Value::Bytes(b"spaces in names".to_vec())],
        ),
        (Key::text("link"), vec![Value::Int(3), Value::Bytes(b"a/b".to_vec())]),
        (Key::text("empty"), vec![Value::Int(0), Value::Bytes(Vec::new())]),
    ];
    assert_eq!(rows, want);
    let size_only = store.schema(&[], Some(&["size".to_owned()])).await.unwrap();
    let rows = store.fetch(&size_only, &text_keys(&["a/b"])).await.unwrap();
    assert_eq!(rows, vec![(Key::text("a/b"), vec![Value::Int(6)])]);
}

#[tokio::test]
async fn schema_rejects_unknown_columns_naming_them() {
    let dir = fixture(0..FILES.len());
    let url = format!("file://{}", dir.path().display());
    let store = FsStore::open(&url).unwrap();
    let schema = full_schema(&store).await;
    assert_eq!(schema.key_names(), ["key"]);
    assert_eq!(
        schema.values.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["size", "content"]
    );
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (key, cols, needle) in [
        (strings(&["id"]), None, "\"id\""),
        (strings(&["key", "key"]), None, "listed 2 times"),
        (strings(&[]), Some(strings(&["size", "mtime"])), "\"mtime\""),
        (strings(&[]), Some(strings(&["size", "size"])), "listed twice"),
    ] {
        match store.schema(&key, cols.as_deref()).await {
            Err(StoreError::Schema { location, reason }) => {
                assert_eq!(location, url);
                assert!(reason.contains(needle), "{reason}");
            }
            other => panic!("{key:?} {cols:?}: {other:?}"),
        }
    }
    let mut foreign = schema.clone();
    foreign.values[0].name = "amount".to_owned();
    let err = store.check_schema(&foreign).await.unwrap_err();
    assert!(err.to_string().contains("\"amount\""), "{err}");
    store.check_schema(&schema).await.unwrap();
}

#[tokio::test]
async fn non_utf8_file_names_are_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok", b"");
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff-name");
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub").join(name), b"x").unwrap();
    let store = open(dir.path());
    let schema = full_schema(&store).await;
    let err = store
        .scan_collect(&schema, KeyRange::all(), &hasher(), &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("sub/bad-\u{fffd}-name"), "{err}");
}

#[tokio::test]
async fn a_missing_directory_fails_to_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let store = open(&missing);
    for err in [
        store.schema(&[], None).await.unwrap_err(),
        store.check_schema(&Schema::default()).await.unwrap_err(),
        store.sample_keys(&Schema::default(), 10).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    }
    write(dir.path(), "a-file", b"");
    let err = open(&dir.path().join("a-file")).schema(&[], None).await.unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[tokio::test]
async fn a_file_gone_since_the_listing_is_a_read_error_naming_it() {
    let dir = fixture(0..FILES.len());
    let store = open(dir.path());
    let schema = full_schema(&store).await;
    store.sample_keys(&schema, 10).await.unwrap();
    fs::remove_file(dir.path().join("a/c/deep/file.bin")).unwrap();
    let err = store
        .scan_collect(&schema, KeyRange::all(), &hasher(), &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("a/c/deep/file.bin"), "{err}");
}

#[test]
fn open_accepts_file_urls_only() {
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(FsStore::open("file:.").unwrap().root(), cwd.join("."));
    assert_eq!(FsStore::open("file:///srv/x").unwrap().location(), "file:///srv/x");
    let err = FsStore::open("postgres://app:hunter2@db/x").unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("not a file: URL"), "{err}");
    assert!(FsStore::open("file://relative/dir").is_err());
}
