//! Object repair against the real S3-compatible server of `scripts/with-s3`: S3 and
//! directory stages healed from S3 and directory canonicals, dry runs that write nothing,
//! newer objects kept on both write paths (conditional headers honoured, and ignored by a
//! proxy that strips them), and repairs killed with SIGKILL that apply every write once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use driftless_control::ControlPlane;
use driftless_tests::s3::{self, Proxy};
use driftless_tests::{Rng, run_driftless, stage_of};
use serde_json::Value as Json;

/// Objects in canonical, beside one large object.
const OBJECTS: usize = 300;
/// Larger than the multipart threshold (16 MiB): streamed into a stage in 8 MiB parts.
const BLOB_BYTES: usize = 20 * 1024 * 1024;

fn key(i: usize) -> String {
    format!("p{}/o{i:04}.bin", i % 5)
}

fn canonical_objects() -> Vec<(String, Vec<u8>)> {
    (0..OBJECTS)
        .map(|i| (key(i), format!("canonical {i}").into_bytes()))
        .collect()
}

fn blob() -> Vec<u8> {
    (0..BLOB_BYTES).map(|i| (i % 253) as u8).collect()
}

/// A stage of canonical with drift: every tenth key missing, every tenth (offset 2) changed,
/// 20 strays, and the large object missing.
fn drifted() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = canonical_objects()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 1)
        .map(|(i, (k, b))| {
            if i % 10 == 2 {
                (k, format!("drifted {i}").into_bytes())
            } else {
                (k, b)
            }
        })
        .collect();
    out.extend((0..20).map(|j| (format!("stray/{j}.bin"), b"stray".to_vec())));
    out
}

/// Divergences [`drifted`] makes.
const DRIFT: usize = 30 + 30 + 20 + 1;

fn under(prefix: &str, objects: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    objects
        .iter()
        .map(|(k, b)| (format!("{prefix}{k}"), b.clone()))
        .collect()
}

fn write_dir(root: &Path, objects: &[(String, Vec<u8>)]) {
    for (key, bytes) in objects {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Every file below `root` and its bytes.
fn read_dir(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Every key under `prefix` and its ETag.
async fn listing(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in page.contents() {
            out.insert(o.key().unwrap().to_owned(), o.e_tag().unwrap_or_default().to_owned());
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

fn s3_copy(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!("url = \"s3://{bucket}/{prefix}\", endpoint = {endpoint:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_heals_s3_and_directory_stages_from_s3_and_directory_canonicals() {
    let endpoint = s3::endpoint();
    let client = s3::client(&endpoint);
    let bucket = s3::fresh_bucket(&client, "heal").await;
    let mut canonical = canonical_objects();
    canonical.push(("big/blob.bin".into(), blob()));
    let mut objects = under("canon/", &canonical);
    objects.extend(under("stage/", &drifted()));
    objects.extend(under("fromdir/", &drifted()));
    s3::put_all(&client, &bucket, objects).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_dir(&d.join("stage-dir"), &drifted());
    write_dir(&d.join("canon-dir"), &canonical);
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[[datasets]]\nname = \"from-s3\"\nrepair = {{ max_divergence_ratio = 1.0 }}\n\
             canonical = {{ {} }}\n\
             stages = [ {{ name = \"s3\", {} }}, {{ name = \"dir\", url = \"file:stage-dir\" }} ]\n\n\
             [[datasets]]\nname = \"from-dir\"\nrepair = {{ max_divergence_ratio = 1.0 }}\n\
             canonical = {{ url = \"file:canon-dir\" }}\n\
             stages = [ {{ name = \"s3\", {} }} ]\n",
            s3_copy(&endpoint, &bucket, "canon/"),
            s3_copy(&endpoint, &bucket, "stage/"),
            s3_copy(&endpoint, &bucket, "fromdir/"),
        ),
    )
    .unwrap();

    // A dry run plans every write and makes none.
    let (stage_before, fromdir_before) = (
        listing(&client, &bucket, "stage/").await,
        listing(&client, &bucket, "fromdir/").await,
    );
    let dir_before = read_dir(&d.join("stage-dir"));
    let dry = run_driftless!(d, &["repair", "--dry-run", "--report", "json"]);
    assert_eq!(dry.code, Some(2), "{}\n{}", dry.stdout, dry.stderr);
    let planned: u64 = dry.report()["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| {
            d["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["divergent"].as_u64().unwrap())
        })
        .sum();
    assert_eq!(planned, 3 * DRIFT as u64);
    assert_eq!(
        listing(&client, &bucket, "stage/").await,
        stage_before,
        "a dry run wrote to S3"
    );
    assert_eq!(
        listing(&client, &bucket, "fromdir/").await,
        fromdir_before,
        "a dry run wrote to S3"
    );
    assert_eq!(
        read_dir(&d.join("stage-dir")),
        dir_before,
        "a dry run wrote to a directory"
    );

    let repair = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(repair.code, Some(0), "{}\n{}", repair.stdout, repair.stderr);
    let report = repair.report();
    for dataset in report["datasets"].as_array().unwrap() {
        for stage in dataset["stages"].as_array().unwrap() {
            assert_eq!(stage["repaired"], DRIFT as u64, "{stage}");
        }
    }
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "{}\n{}", scan.stdout, scan.stderr);

    // Byte for byte: the stages hold canonical's objects and nothing else.
    let want: BTreeMap<String, Vec<u8>> = canonical.iter().cloned().collect();
    assert_eq!(read_dir(&d.join("stage-dir")), want);
    for prefix in ["stage/", "fromdir/"] {
        let keys: BTreeSet<String> = listing(&client, &bucket, prefix).await.into_keys().collect();
        let expected: BTreeSet<String> = want.keys().map(|k| format!("{prefix}{k}")).collect();
        assert_eq!(keys, expected, "{prefix}");
        for k in [key(1), key(2), "big/blob.bin".to_owned()] {
            let got = s3::get(&client, &bucket, &format!("{prefix}{k}")).await;
            assert_eq!(got.as_deref(), Some(want[&k].as_slice()), "{prefix}{k}");
        }
    }
    // Streamed from the directory in parts: a multipart ETag.
    assert!(
        s3::etag(&client, &bucket, "fromdir/big/blob.bin")
            .await
            .ends_with("-3\"")
    );
}

/// Canonical on `endpoint`; the stage reached through `stage_endpoint`; the last keys of the
/// stage overwritten by another writer once the repair has queued them.
async fn newer_objects_survive(endpoint: &str, stage_endpoint: &str) {
    let client = s3::client(endpoint);
    let bucket = s3::fresh_bucket(&client, "newer").await;
    let changed: Vec<(String, Vec<u8>)> = (0..40).map(|i| (key(i), format!("stale {i}").into_bytes())).collect();
    let mut objects = under("canon/", &canonical_objects()[..40]);
    objects.extend(under("stage/", &changed));
    s3::put_all(&client, &bucket, objects).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One key per batch at 10 writes a second: the last keys are written seconds after
    // detection queued them.
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[repair]\nbatch_keys = 1\n\n[[datasets]]\nname = \"objects\"\n\
             repair = {{ rate_per_sec = 10.0, burst = 1, max_divergence_ratio = 1.0 }}\n\
             canonical = {{ {} }}\nstages = [ {{ name = \"stage\", {} }} ]\n",
            s3_copy(endpoint, &bucket, "canon/"),
            s3_copy(stage_endpoint, &bucket, "stage/"),
        ),
    )
    .unwrap();
    // The control plane exists (and is migrated) before the repair starts, so its queue
    // can be watched; it holds no entries until the repair's detection queues them.
    let control = ControlPlane::connect(&format!("sqlite://{}", d.join("driftless.db").display()))
        .await
        .unwrap();
    let child = driftless_tests::spawn_driftless!(d, ["repair", "--report", "json"]);
    driftless_tests::wait_for_queued(&d.join("driftless.db"), 40).await;
    // Keys sort as text, so the last five repaired are the largest five.
    let mut keys: Vec<String> = changed.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    let newer: Vec<String> = keys[35..].to_vec();
    s3::put_all(
        &client,
        &bucket,
        newer
            .iter()
            .map(|k| (format!("stage/{k}"), b"a newer write".to_vec()))
            .collect(),
    )
    .await;
    drop(control);

    let report = driftless_tests::finished_report(child, 2);
    let s = stage_of(&report, "stage");
    let skipped: BTreeSet<String> = s["repair"]["skipped_newer"]
        .as_array()
        .unwrap()
        .iter()
        .map(Json::to_string)
        .collect();
    let want: BTreeSet<String> = newer
        .iter()
        .map(|k| serde_json::json!({ "key": k }).to_string())
        .collect();
    assert_eq!(skipped, want, "{s}");
    assert_eq!(s["repair"]["outcomes"]["applied"], 35, "{s}");
    for k in &newer {
        let got = s3::get(&client, &bucket, &format!("stage/{k}")).await;
        assert_eq!(got.as_deref(), Some(&b"a newer write"[..]), "{k} lost its newer write");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_objects_are_not_overwritten_with_conditional_writes() {
    let endpoint = s3::endpoint();
    newer_objects_survive(&endpoint, &endpoint).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_objects_are_not_overwritten_where_conditional_headers_are_ignored() {
    let endpoint = s3::endpoint();
    let proxy = Proxy::start(&endpoint, &["--strip-conditional"]);
    newer_objects_survive(&endpoint, &proxy.endpoint).await;
}

/// Repairs killed this many times before one is let finish.
const KILLS: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn killed_object_repairs_apply_every_write_once() {
    let endpoint = s3::endpoint();
    let client = s3::client(&endpoint);
    let bucket = s3::fresh_bucket(&client, "crash").await;
    let mut objects = under("canon/", &canonical_objects());
    objects.extend(under("stage/", &drifted()));
    s3::put_all(&client, &bucket, objects).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Every write the stage receives goes through this proxy, which logs it.
    let log = d.join("writes.log");
    let proxy = Proxy::start(&endpoint, &["--write-log", log.to_str().unwrap()]);
    std::fs::write(
        d.join("driftless.toml"),
        format!(
            "[repair]\nbatch_keys = 4\nlease_secs = 2\n\n[[datasets]]\nname = \"objects\"\n\
             repair = {{ rate_per_sec = 20.0, burst = 4, max_divergence_ratio = 1.0 }}\n\
             canonical = {{ {} }}\nstages = [ {{ name = \"stage\", {} }} ]\n",
            s3_copy(&endpoint, &bucket, "canon/"),
            s3_copy(&proxy.endpoint, &bucket, "stage/"),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_driftless-under-test");
    let mut rng = Rng::new(0x53);
    for i in 0..KILLS {
        let mut command = Command::new(bin);
        // Every other run parks between a stage write and its settlement; the kill lands there.
        if i % 2 == 1 {
            command.env(
                "FAILPOINTS",
                format!("repair-after-stage-write={}*off->sleep(60000)", rng.below(6)),
            );
        }
        let mut child = command
            .args(["repair", "--report", "json"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let last = run_driftless!(d, &["repair", "--report", "json"]);
    assert_eq!(last.code, Some(0), "{}\n{}", last.stdout, last.stderr);
    let scan = run_driftless!(d, &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(0), "a divergence was lost: {}", scan.stdout);

    // The stage received one write per divergent key: a PUT for each missing or changed
    // object, a DELETE for each stray (the conditional-write probes aside).
    let text = std::fs::read_to_string(&log).unwrap();
    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.contains(".driftless-probe-")) {
        let mut parts = line.split(' ');
        let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
        *writes.entry(format!("{method} {path}")).or_default() += 1;
    }
    let twice: Vec<_> = writes.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(writes.len(), DRIFT - 1, "{writes:?}");
    let control = ControlPlane::connect(&format!("sqlite://{}", d.join("driftless.db").display()))
        .await
        .unwrap();
    driftless_tests::assert_applied_once(&control, "objects", "stage", DRIFT - 1).await;
    drop(proxy);
}
