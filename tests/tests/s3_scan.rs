//! Scans of S3 copies against the real S3-compatible server of `scripts/with-s3`: 10k
//! objects under nested prefixes with awkward keys, multipart beside single-part copies of
//! the same bytes, every compare mode, S3 against a directory, paging, empty prefixes,
//! a throttling server, and the errors a missing bucket gives.

use std::collections::BTreeSet;
use std::path::Path;

use driftless_tests::s3::{self, Proxy};
use driftless_tests::{Named, assert_exactly, divergences, run_driftless};

/// Regular objects per copy.
const OBJECTS: usize = 10_000;
/// 5 MiB, S3's smallest part but the last.
const PART: usize = 5 * 1024 * 1024;

/// A key of exactly 1024 bytes under the 6-byte prefixes `canon/` and `stage/`, in
/// components a file system can hold.
fn long_key() -> String {
    let mut k = String::from("long/");
    for _ in 0..4 {
        k.push_str(&"a".repeat(250));
        k.push('/');
    }
    let rest = 1024 - 6 - k.len();
    k.push_str(&"z".repeat(rest));
    k
}

fn regular(i: usize) -> (String, Vec<u8>) {
    (
        format!("d{:02}/s{}/f{i:05}.txt", i % 40, i % 7),
        format!("object {i}\n").into_bytes(),
    )
}

/// The keys with awkward names, and their bytes.
fn edge_objects() -> Vec<(String, Vec<u8>)> {
    [
        "\u{fc}n\u{ef}c\u{f8}d\u{e9}/\u{65e5}\u{672c}\u{8a9e}.txt",
        "with space/a b.txt",
        "plus+sign.txt",
        "percent%20.txt",
        "eq=ual.txt",
        "question?.txt",
        "hash#.txt",
        "Case.txt",
        "case.txt",
    ]
    .iter()
    .map(|k| (k.to_string(), format!("edge {k}").into_bytes()))
    .chain([("empty.bin".to_owned(), Vec::new()), (long_key(), b"long".to_vec())])
    .collect()
}

/// Multipart test bytes: two parts' worth, the second short.
fn big(seed: u8) -> Vec<u8> {
    (0..PART + 1024 * 1024).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn named(stage: &str, key: &str, kind: &str) -> Named {
    (
        stage.to_owned(),
        serde_json::json!({ "key": key }).to_string(),
        kind.to_owned(),
    )
}

/// The canonical objects and the stage's, with the divergences injected into the stage.
struct World {
    canonical: Vec<(String, Vec<u8>)>,
    stage: Vec<(String, Vec<u8>)>,
    expected: BTreeSet<Named>,
}

fn world() -> World {
    let mut canonical: Vec<(String, Vec<u8>)> = (0..OBJECTS).map(regular).collect();
    canonical.extend(edge_objects());
    let mut expected = BTreeSet::new();
    let mut stage = Vec::new();
    for (key, bytes) in &canonical {
        let i = key
            .strip_suffix(".txt")
            .and_then(|k| k.rsplit_once("/f"))
            .and_then(|(_, n)| n.parse::<usize>().ok());
        match (i, key.as_str()) {
            (Some(i), _) if i % 997 == 3 => {
                expected.insert(named("stage", key, "missing"));
            }
            (Some(i), _) if i % 1009 == 5 => {
                // Same size, other bytes: only the fingerprint tells.
                let mut b = bytes.clone();
                b[0] = b'O';
                stage.push((key.clone(), b));
                expected.insert(named("stage", key, "changed"));
            }
            (Some(i), _) if i % 1013 == 7 => {
                let mut b = bytes.clone();
                b.push(b'!');
                stage.push((key.clone(), b));
                expected.insert(named("stage", key, "changed"));
            }
            (None, "hash#.txt") => {
                expected.insert(named("stage", key, "missing"));
            }
            (None, "Case.txt" | "empty.bin") => {
                stage.push((key.clone(), b"other".to_vec()));
                expected.insert(named("stage", key, "changed"));
            }
            (None, k) if k == long_key() => {
                stage.push((key.clone(), b"LONG".to_vec()));
                expected.insert(named("stage", key, "changed"));
            }
            _ => stage.push((key.clone(), bytes.clone())),
        }
    }
    for extra in ["d00/s0/extra0.txt", "d39/s6/extra1.txt", "extra \u{fc}+%=?#.txt"] {
        stage.push((extra.to_owned(), b"stray".to_vec()));
        expected.insert(named("stage", extra, "extra"));
    }
    // A multipart object whose single-part copy holds other bytes of the same size.
    expected.insert(named("stage", "big/mp-changed.bin", "changed"));
    World {
        canonical,
        stage,
        expected,
    }
}

/// Puts the world under `canon/` and `stage/` of a new bucket, with objects beside and
/// inside the prefixes that are not rows; returns the bucket.
async fn put_world(client: &aws_sdk_s3::Client, w: &World) -> String {
    let bucket = s3::fresh_bucket(client, "scan").await;
    let under = |prefix: &str, objects: &[(String, Vec<u8>)]| {
        objects
            .iter()
            .map(|(k, b)| (format!("{prefix}{k}"), b.clone()))
            .collect::<Vec<_>>()
    };
    let mut all = under("canon/", &w.canonical);
    all.extend(under("stage/", &w.stage));
    // Outside either prefix (one shares the prefix's letters), and a folder marker.
    all.extend([
        ("canon-other/x.txt".to_owned(), b"not a row".to_vec()),
        ("outside/y.txt".to_owned(), b"not a row".to_vec()),
        ("canon/folder/".to_owned(), Vec::new()),
    ]);
    s3::put_all(client, &bucket, all).await;
    // Multipart in canonical, single-part in the stage: equal bytes, and changed bytes.
    s3::put_multipart(client, &bucket, "canon/big/mp-equal.bin", &big(0), PART).await;
    s3::put_multipart(client, &bucket, "canon/big/mp-changed.bin", &big(0), PART).await;
    s3::put_all(
        client,
        &bucket,
        vec![
            ("stage/big/mp-equal.bin".to_owned(), big(0)),
            ("stage/big/mp-changed.bin".to_owned(), big(1)),
        ],
    )
    .await;
    assert!(
        s3::etag(client, &bucket, "canon/big/mp-equal.bin")
            .await
            .ends_with("-2\"")
    );
    bucket
}

/// Writes objects into a directory.
fn write_dir(root: &Path, objects: &[(String, Vec<u8>)]) {
    for (key, bytes) in objects {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn config(dir: &Path, compare: &str, canonical: &str, stage: &str) {
    std::fs::write(
        dir.join("driftless.toml"),
        format!(
            "[[datasets]]\nname = \"objects\"\ncompare = {compare:?}\ncanonical = {canonical}\n\
             stages = [ {{ name = \"stage\", {stage} }} ]\n"
        ),
    )
    .unwrap();
}

fn s3_copy(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!("url = \"s3://{bucket}/{prefix}\", endpoint = {endpoint:?}")
}

fn scan(dir: &Path) -> driftless_tests::Run {
    run_driftless!(dir, &["scan", "--report", "json"])
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_scans_name_exactly_the_mutated_objects_in_every_mode() {
    let endpoint = s3::endpoint();
    let client = s3::client(&endpoint);
    let w = world();
    let bucket = put_world(&client, &w).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let canon = format!("{{ {} }}", s3_copy(&endpoint, &bucket, "canon/"));

    for compare in ["etag", "checksum", "content"] {
        config(d, compare, &canon, &s3_copy(&endpoint, &bucket, "stage"));
        let run = scan(d);
        assert_eq!(run.code, Some(2), "{compare}: {}\n{}", run.stdout, run.stderr);
        assert_exactly(&w.expected, &divergences(&run.report()));
        let stage = &run.report()["datasets"][0]["stages"][0];
        assert_eq!(stage["canonical_rows"], (w.canonical.len() + 2) as u64, "{compare}");
    }

    // The same bytes in a directory: equal to the S3 prefix, and the stage's drift is the
    // same whichever side is the directory.
    let canon_dir = d.join("canon-dir");
    write_dir(&canon_dir, &w.canonical);
    write_dir(
        &canon_dir,
        &[
            ("big/mp-equal.bin".into(), big(0)),
            ("big/mp-changed.bin".into(), big(0)),
        ],
    );
    let stage_dir = d.join("stage-dir");
    write_dir(&stage_dir, &w.stage);
    write_dir(
        &stage_dir,
        &[
            ("big/mp-equal.bin".into(), big(0)),
            ("big/mp-changed.bin".into(), big(1)),
        ],
    );
    // In `etag` mode, where the directory's MD5s meet S3's ETags (and the multipart ETag
    // settles by content); `content` hashes both sides alike, as the S3 scans above show.
    let compare = "etag";
    config(d, compare, &canon, "url = \"file:canon-dir\"");
    let run = scan(d);
    assert_eq!(
        run.code,
        Some(0),
        "{compare}: S3 and a directory of the same bytes: {}\n{}",
        run.stdout,
        run.stderr
    );
    config(d, compare, &canon, "url = \"file:stage-dir\"");
    let run = scan(d);
    assert_eq!(run.code, Some(2), "{compare}: {}\n{}", run.stdout, run.stderr);
    assert_exactly(&w.expected, &divergences(&run.report()));
    config(
        d,
        compare,
        "{ url = \"file:canon-dir\" }",
        &s3_copy(&endpoint, &bucket, "stage/"),
    );
    let run = scan(d);
    assert_eq!(run.code, Some(2), "{compare}: {}\n{}", run.stdout, run.stderr);
    assert_exactly(&w.expected, &divergences(&run.report()));
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_prefixes_and_buckets_scan() {
    let endpoint = s3::endpoint();
    let client = s3::client(&endpoint);
    let bucket = s3::fresh_bucket(&client, "empty").await;
    let other = s3::fresh_bucket(&client, "three").await;
    s3::put_all(
        &client,
        &other,
        (0..3).map(|i| (format!("p/k{i}"), vec![b'x'; i])).collect(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = format!("{{ {} }}", s3_copy(&endpoint, &bucket, ""));
    config(d, "etag", &empty, &s3_copy(&endpoint, &bucket, "nothing/here/"));
    let run = scan(d);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    config(d, "etag", &empty, &s3_copy(&endpoint, &other, "p/"));
    let run = scan(d);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    let expected: BTreeSet<Named> = (0..3).map(|i| named("stage", &format!("k{i}"), "extra")).collect();
    assert_exactly(&expected, &divergences(&run.report()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_of_more_than_a_thousand_keys_pages() {
    use driftless_core::{Key, KeyRange, RowHasher};
    use driftless_store::Store;
    use driftless_store_s3::{S3Options, S3Store};
    let endpoint = s3::endpoint();
    let client = s3::client(&endpoint);
    let bucket = s3::fresh_bucket(&client, "paging").await;
    let keys: Vec<String> = (0..2_600).map(|i| format!("k{i:05}")).collect();
    s3::put_all(
        &client,
        &bucket,
        keys.iter()
            .map(|k| (format!("in/{k}"), k.clone().into_bytes()))
            .collect(),
    )
    .await;
    let store = S3Store::open(
        &format!("s3://{bucket}/in/"),
        S3Options {
            endpoint: Some(endpoint),
            path_style: true,
            ..S3Options::default()
        },
    )
    .await
    .unwrap();
    let schema = store.schema(&[], None).await.unwrap();
    let hasher = RowHasher::new(Default::default(), 0);
    let progress = Default::default();
    // From the 300th key to just before the 2,450th: a start after, two continuations and
    // a stop inside the last page.
    let range = KeyRange {
        lo: Some(Key::text(&keys[300])),
        hi: Some(Key::text(&keys[2_450])),
    };
    let rows = store.scan_collect(&schema, range, &hasher, &progress).await.unwrap();
    let got: Vec<Key> = rows.into_iter().map(|(k, _)| k).collect();
    let want: Vec<Key> = keys[300..2_450].iter().map(|k| Key::text(k)).collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    let all = store
        .scan_collect(&schema, KeyRange::all(), &hasher, &progress)
        .await
        .unwrap();
    assert_eq!(all.len(), keys.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_answering_503_for_a_while_is_ridden_out() {
    let endpoint = s3::endpoint();
    let client = s3::client(&endpoint);
    let bucket = s3::fresh_bucket(&client, "slowdown").await;
    s3::put_all(
        &client,
        &bucket,
        (0..50).map(|i| (format!("a/k{i}"), vec![b'a'; i])).collect(),
    )
    .await;
    s3::put_all(
        &client,
        &bucket,
        (1..50).map(|i| (format!("b/k{i}"), vec![b'a'; i])).collect(),
    )
    .await;
    let proxy = Proxy::start(&endpoint, &["--fail-first", "6"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    config(
        d,
        "etag",
        &format!("{{ {} }}", s3_copy(&proxy.endpoint, &bucket, "a/")),
        &s3_copy(&proxy.endpoint, &bucket, "b/"),
    );
    let run = scan(d);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert_exactly(&[named("stage", "k0", "missing")].into(), &divergences(&run.report()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_fails_naming_dataset_copy_and_bucket() {
    let endpoint = s3::endpoint();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client = s3::client(&endpoint);
    let bucket = s3::fresh_bucket(&client, "present").await;
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[[datasets]]\nname = \"objects\"\ncanonical = {{ {} }}\n\
             stages = [ {{ name = \"eu\", {}, access_key_id = \"AKIDEXAMPLE\", secret_access_key = \"s3cr3t-never-shown\" }} ]\n",
            s3_copy(&endpoint, &bucket, ""),
            s3_copy(&endpoint, "no-such-bucket-here", "x/"),
        ),
    )
    .unwrap();
    let run = scan(d);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    for needle in ["\"objects\"", "stage \"eu\"", "no-such-bucket-here", "does not exist"] {
        assert!(run.stderr.contains(needle), "{needle:?} not in: {}", run.stderr);
    }
    assert!(
        !run.stderr.contains("s3cr3t-never-shown") && !run.stdout.contains("s3cr3t"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_fail_without_showing_the_secret() {
    let server = s3::AuthServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[[datasets]]\nname = \"objects\"\n\
             canonical = {{ url = \"s3://private/\", endpoint = {:?}, access_key_id = \"AKIAUNKNOWNKEY000000\", secret_access_key = \"wJalr-very-secret\" }}\n\
             stages = [ {{ name = \"eu\", url = \"file:eu\" }} ]\n",
            server.endpoint
        ),
    )
    .unwrap();
    std::fs::create_dir(d.join("eu")).unwrap();
    let run = scan(d);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    for needle in [
        "\"objects\"",
        "canonical copy",
        "\"private\"",
        "credentials were refused",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} not in: {}", run.stderr);
    }
    assert!(
        !run.stderr.contains("wJalr") && !run.stdout.contains("wJalr"),
        "{}",
        run.stderr
    );
}
