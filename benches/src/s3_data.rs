//! The copies of the S3 benchmark (`driftless-s3-bench`): two buckets and a directory.
//!
//! Bucket A holds `n` objects of [`BODY_BYTES`] bytes of seeded text, under 100 prefixes
//! ([`key`]: `d{i % 100}/f{i}.bin`, zero-padded). Bucket B is A with `k` objects
//! differing, and the directory D is A's bytes with `k` others differing. The differences
//! ([`plan`]) are spread evenly over the keys in key order (so over prefixes and tree
//! leaves, not bunched under one prefix) and cycle through three kinds: changed
//! (alternately at the same size and grown by a byte), missing (absent from the copy) and
//! extra (only in the copy). B and D differ at different keys. A is canonical in both
//! comparisons, so the kinds are A's view of B and D.
//!
//! Populating is the slow part (moto takes 200–275 PUTs/s), so finished buckets are
//! marked by an object in a separate bucket ([`MARKERS`]) on the same server: a fresh server
//! has no marker and is populated again, a kept one is reused. A finished directory is
//! marked by a file beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use serde_json::json;

use crate::Divergence;
use crate::rng::Rng;

/// Bytes of every object body (a grown object has one more).
pub const BODY_BYTES: usize = 100;
/// Top-level prefixes the keys are spread over.
pub const PREFIXES: usize = 100;
/// PUTs in flight while populating.
const PUTS_IN_FLIGHT: usize = 16;
/// Keys per ListObjectsV2 page: S3's maximum, and what driftless asks for.
pub const PAGE_KEYS: i32 = 1000;
/// The bucket holding one marker object per finished pair of buckets.
pub const MARKERS: &str = "driftless-bench-markers";
/// Version of the data layout, part of every name: a change of layout must not reuse
/// buckets or directories built by an older harness.
const LAYOUT: u32 = 2;
/// Seed of the object bodies.
const SEED: u64 = 0x53_3b_e4_c4;

/// How a copy differs from A at one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Other bytes of the same size.
    SameSize,
    /// One byte longer.
    Grown,
    /// Absent from the copy.
    Missing,
    /// A key next to this one that only the copy has.
    Extra,
}

impl Change {
    /// The kind a scan with A as canonical reports.
    fn kind(self) -> &'static str {
        match self {
            Change::SameSize | Change::Grown => "changed",
            Change::Missing => "missing",
            Change::Extra => "extra",
        }
    }
}

/// The key of object `i`.
pub fn key(i: usize) -> String {
    format!("d{:02}/f{i:07}.bin", i % PREFIXES)
}

/// The key of the extra object next to object `i`: it sorts right after [`key`]`(i)`.
fn extra_key(i: usize) -> String {
    format!("d{:02}/f{i:07}x.bin", i % PREFIXES)
}

/// The body of object `i` in A: a line naming it, then seeded lowercase letters.
pub fn body(i: usize) -> Vec<u8> {
    let mut out = format!("object {i:07}\n").into_bytes();
    let mut rng = Rng::new(SEED ^ i as u64);
    while out.len() < BODY_BYTES {
        out.push(b'a' + rng.below(26) as u8);
    }
    out
}

/// `k` changes spread evenly over the `n` keys in key order, starting `phase` thirds of a
/// step in (so copies with another phase differ at other keys), kinds in turn. Keys sort by
/// prefix first, so object numbers evenly spaced would all share one prefix.
pub fn plan(n: usize, k: usize, phase: usize) -> BTreeMap<usize, Change> {
    let step = n / k.max(1);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (i % PREFIXES, i));
    (0..k)
        .map(|m| {
            let change = match m % 3 {
                0 if (m / 3).is_multiple_of(2) => Change::SameSize,
                0 => Change::Grown,
                1 => Change::Missing,
                _ => Change::Extra,
            };
            (order[m * step + step * phase / 3], change)
        })
        .collect()
}

/// The objects of a copy that is A with `changes`, and what a scan against A
/// must report.
pub fn copy(n: usize, changes: &BTreeMap<usize, Change>) -> (Vec<(String, Vec<u8>)>, BTreeSet<Divergence>) {
    let mut objects = Vec::with_capacity(n + changes.len());
    let mut expected = BTreeSet::new();
    for i in 0..n {
        let Some(&change) = changes.get(&i) else {
            objects.push((key(i), body(i)));
            continue;
        };
        let mut bytes = body(i);
        let named = match change {
            Change::SameSize => {
                bytes[0] = b'O';
                key(i)
            }
            Change::Grown => {
                bytes.push(b'+');
                key(i)
            }
            Change::Missing => key(i),
            Change::Extra => {
                objects.push((key(i), bytes.clone()));
                extra_key(i)
            }
        };
        if change != Change::Missing {
            objects.push((named.clone(), bytes));
        }
        expected.insert((json!({ "key": named }).to_string(), change.kind().to_owned()));
    }
    (objects, expected)
}

/// The three copies, ready.
#[derive(Debug, Clone)]
pub struct ObjectSet {
    /// Bucket A, canonical.
    pub bucket_a: String,
    /// Bucket B.
    pub bucket_b: String,
    /// Directory D.
    pub dir: PathBuf,
    /// Objects in A.
    pub count_a: usize,
    /// Objects in B.
    pub count_b: usize,
    /// Files in D.
    pub count_d: usize,
    /// What a scan of B against A must report.
    pub expected_b: BTreeSet<Divergence>,
    /// What a scan of D against A must report.
    pub expected_d: BTreeSet<Divergence>,
}

/// What [`ensure`] had to build.
#[derive(Debug, Clone, Copy)]
pub struct Built {
    /// The buckets were populated now (else reused).
    pub buckets: bool,
    /// The directory was written now (else reused).
    pub dir: bool,
}

/// A client of `endpoint`, path-style, with the credentials of the environment (moto
/// accepts any; `testing` when none are set), checksums only where the API requires them.
pub fn client(endpoint: &str) -> Client {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "testing".to_owned());
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new(region))
        .credentials_provider(Credentials::new(
            var("AWS_ACCESS_KEY_ID"),
            var("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "driftless-benches",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// The copies for `n` objects with `k` differing, under `work` and on the server of
/// `client`, built unless finished ones are there.
pub async fn ensure(client: &Client, work: &Path, n: usize, k: usize) -> Result<(ObjectSet, Built)> {
    ensure!(
        k >= 1 && n >= 10 * k,
        "need at least one difference and 10 objects per difference"
    );
    let name = format!("s3-v{LAYOUT}-{n}-{k}");
    let (a, _) = copy(n, &BTreeMap::new());
    let (b, expected_b) = copy(n, &plan(n, k, 1));
    let (d, expected_d) = copy(n, &plan(n, k, 2));
    let set = ObjectSet {
        bucket_a: format!("dl-bench-v{LAYOUT}-{n}-{k}-a"),
        bucket_b: format!("dl-bench-v{LAYOUT}-{n}-{k}-b"),
        dir: work.join(&name).join("dir"),
        count_a: a.len(),
        count_b: b.len(),
        count_d: d.len(),
        expected_b,
        expected_d,
    };
    let dir_marker = work.join(&name).join("dir-ready");
    let built_dir = !dir_marker.exists();
    if built_dir {
        write_dir(&set.dir, &d)?;
        fs::write(&dir_marker, b"").context("cannot write the directory's ready marker")?;
    }
    let built_buckets = !has_marker(client, &name).await?;
    if built_buckets {
        let start = Instant::now();
        create_bucket(client, &set.bucket_a).await?;
        create_bucket(client, &set.bucket_b).await?;
        let puts = [(&set.bucket_a, a), (&set.bucket_b, b)]
            .into_iter()
            .flat_map(|(bucket, objects)| objects.into_iter().map(move |(k, v)| (bucket.clone(), k, v)))
            .collect();
        put_all(client, puts).await?;
        let note = format!(
            "{n} objects, {k} differing, populated in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        put(client, MARKERS, &name, note.into_bytes()).await?;
    }
    let built = Built {
        buckets: built_buckets,
        dir: built_dir,
    };
    Ok((set, built))
}

/// Whether the marker of a finished pair of buckets named `name` is on the server.
async fn has_marker(client: &Client, name: &str) -> Result<bool> {
    create_bucket(client, MARKERS).await?;
    Ok(client.head_object().bucket(MARKERS).key(name).send().await.is_ok())
}

/// Creates `bucket` unless it exists.
async fn create_bucket(client: &Client, bucket: &str) -> Result<()> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot create bucket {bucket}: {}", DisplayErrorContext(e)))?;
    Ok(())
}

async fn put(client: &Client, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot put s3://{bucket}/{key}: {}", DisplayErrorContext(e)))?;
    Ok(())
}

/// Puts every `(bucket, key, bytes)`, [`PUTS_IN_FLIGHT`] at a time, printing progress.
/// Overwriting is harmless, so an interrupted population is simply redone.
async fn put_all(client: &Client, puts: Vec<(String, String, Vec<u8>)>) -> Result<()> {
    let total = puts.len();
    let tenth = (total / 10).max(1);
    let start = Instant::now();
    let mut done = 0;
    let mut results = futures::stream::iter(puts)
        .map(|(bucket, key, bytes)| async move { put(client, &bucket, &key, bytes).await })
        .buffer_unordered(PUTS_IN_FLIGHT);
    while let Some(result) = results.next().await {
        result?;
        done += 1;
        if done % tenth == 0 || done == total {
            let elapsed = start.elapsed().as_secs_f64();
            println!(
                "  put {done}/{total} objects in {elapsed:.0} s ({:.0}/s)",
                done as f64 / elapsed
            );
        }
    }
    Ok(())
}

/// Writes `objects` as files under `root`, replacing whatever was there.
fn write_dir(root: &Path, objects: &[(String, Vec<u8>)]) -> Result<()> {
    if root.exists() {
        // A half-written directory from an interrupted run: start over.
        fs::remove_dir_all(root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    for p in 0..PREFIXES {
        let dir = root.join(format!("d{p:02}"));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for (key, bytes) in objects {
        let path = root.join(key);
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Lists every key of `bucket` with a bare ListObjectsV2 loop ([`PAGE_KEYS`] per page,
/// continuation tokens), returning the keys and pages seen: the least any listing-based
/// scan must do.
pub async fn list_all(client: &Client, bucket: &str) -> Result<(u64, u64)> {
    let (mut keys, mut pages) = (0u64, 0u64);
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(PAGE_KEYS)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot list {bucket}: {}", DisplayErrorContext(e)))?;
        keys += page.contents().len() as u64;
        pages += 1;
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => return Ok((keys, pages)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_differ_by_exactly_k_at_distinct_keys() {
        for (n, k) in [(2000, 20), (100_000, 20), (1000, 7)] {
            let (b, expected_b) = copy(n, &plan(n, k, 1));
            let (d, expected_d) = copy(n, &plan(n, k, 2));
            assert_eq!(expected_b.len(), k);
            assert_eq!(expected_d.len(), k);
            assert!(expected_b.is_disjoint(&expected_d));
            let prefixes: BTreeSet<_> = expected_b.iter().map(|(key, _)| key[..11].to_owned()).collect();
            assert_eq!(
                prefixes.len(),
                k,
                "one difference per stretch of key order: {prefixes:?}"
            );
            let keys: BTreeSet<_> = b.iter().map(|(k, _)| k).collect();
            assert_eq!(keys.len(), b.len(), "keys are unique");
            assert_eq!(d.len(), n - (k + 1) / 3 + k / 3, "missing and extra in turn");
            assert_eq!(body(3).len(), BODY_BYTES);
        }
    }
}
