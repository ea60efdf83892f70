//! The digest engine in isolation, on rows already in memory: no store, no I/O.
//!
//! Rows have an integer key and five compared columns shaped like a typical business table:
//! an integer, a decimal amount held as a float, a short status text, a timestamp in
//! microseconds, and a nullable note. Every benchmark reports throughput in rows
//! (`Throughput::Elements`), so criterion prints rows per second directly; all of them run
//! on one thread except `tree/build_par`, which uses the rayon pool.
//!
//! - `digest_row/{xxh3,blake3}`: [`RowHasher::digest_row`], i.e. encoding the five values
//!   into a scratch buffer and hashing key and values. Target: >= 30M rows/s per core
//!   for xxh3.
//! - `digest_row_cpu/xxh3`: the same as `digest_row/xxh3`, timed in the thread's CPU time
//!   instead of wall time, so it reads as rows per second per core even while other
//!   processes compete for the cores (wall time then counts time the thread was not
//!   running). Frequency and cache sharing still vary with load.
//! - `digest_row/xxh3_decimal_amount`: the same with the amount as canonical decimal text
//!   (same encoded bytes), which skips the float formatter: its share of the cost.
//! - `digest_encoded/{xxh3,blake3}`: [`RowHasher::digest_encoded`] on rows encoded
//!   beforehand: the hash alone, to separate hashing cost from encoding cost.
//! - `encode_row/values`: [`Value::encode`] of the five values alone, the other half.
//! - `tree/build/{sorted,shuffled}` and `tree/build_par/sorted`: [`Tree::build`] and
//!   [`Tree::build_par`] from `(key, digest)` pairs into leaves of about a thousand rows,
//!   the engine's default.
//!
//! Run with `cargo bench -p driftless-benches --bench digest`.

use std::hint::black_box;

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use driftless_benches::rng::Rng;
use driftless_core::{Boundaries, Digest, DigestAlgorithm, Key, KeyPart, RowHasher, Tree, Value};

/// Rows per digest iteration: enough to amortise criterion's per-iteration overhead while
/// keeping the rows (about 20 MB with their strings) mostly cache-resident.
const DIGEST_ROWS: usize = 64 * 1024;
/// Rows per tree build: a million, the size of the end-to-end SQLite scenario.
const TREE_ROWS: usize = 1_000_000;
/// Rows per leaf, as the engine's `DEFAULT_ROWS_PER_LEAF`.
const ROWS_PER_LEAF: usize = 1000;
/// Sampled keys per leaf when choosing boundaries, as the engine does.
const SAMPLES_PER_LEAF: usize = 8;
/// Initial capacity of the encoding buffer: more than any benchmark row encodes to.
const SCRATCH_BYTES: usize = 256;
/// Seed of the row hasher; any value works, it only has to be fixed.
const SEED: u64 = 0x5eed;
/// Microseconds since the epoch of 2024-01-01T00:00:00Z, the first row's timestamp.
const BASE_MICROS: i64 = 1_704_067_200_000_000;
/// Statuses cycled through by the short text column.
const STATUSES: [&str; 5] = ["new", "paid", "shipped", "returned", "cancelled"];

/// One in-memory row: its encoded key and its compared values.
struct Row {
    key: Key,
    values: Vec<Value>,
}

fn int_key(id: i64) -> Key {
    Key::from_parts(&[KeyPart::Int(id)])
}

/// `count` rows with ids `0..count`: the five columns of the module docs. Amounts have two
/// decimals, so most take the float-formatting path of the encoding, as real prices do.
fn rows(count: usize) -> Vec<Row> {
    let mut rng = Rng::new(1);
    (0..count)
        .map(|i| {
            let id = i as i64;
            let cents = rng.below(10_000_000) as f64;
            let note = if i % 3 == 0 {
                Value::Null
            } else {
                Value::Text(format!("note {}", rng.below(1_000_000)))
            };
            let values = vec![
                Value::Int(rng.below(1000) as i64),
                Value::Float(cents / 100.0),
                Value::Text(STATUSES[i % STATUSES.len()].to_owned()),
                Value::Timestamp(BASE_MICROS + id * 1_000_003),
                note,
            ];
            Row {
                key: int_key(id),
                values,
            }
        })
        .collect()
}

fn algorithms() -> [(&'static str, DigestAlgorithm); 2] {
    [("xxh3", DigestAlgorithm::Xxh3), ("blake3", DigestAlgorithm::Blake3)]
}

fn digest_row(c: &mut Criterion) {
    digest_row_group(c, "digest_row", true);
}

fn digest_row_cpu(c: &mut Criterion<ThreadCpu>) {
    digest_row_group(c, "digest_row_cpu", false);
}

/// `digest_row/*` (every case) or `digest_row_cpu/xxh3` (the headline case only), under
/// measurement `M`.
fn digest_row_group<M: Measurement>(c: &mut Criterion<M>, name: &str, all_cases: bool) {
    let rows = rows(DIGEST_ROWS);
    let decimal_rows = with_decimal_amounts(&rows);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(DIGEST_ROWS as u64));
    let mut cases: Vec<(String, DigestAlgorithm, &[Row])> = algorithms()
        .iter()
        .filter(|(name, _)| all_cases || *name == "xxh3")
        .map(|&(name, algorithm)| (name.to_owned(), algorithm, &rows[..]))
        .collect();
    if all_cases {
        // The same rows with the amount as decimal text, to show the float path's share.
        cases.push((
            "xxh3_decimal_amount".to_owned(),
            DigestAlgorithm::Xxh3,
            &decimal_rows[..],
        ));
    }
    for (name, algorithm, rows) in cases {
        let hasher = RowHasher::new(algorithm, SEED);
        let mut scratch = Vec::with_capacity(SCRATCH_BYTES);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum: Digest = 0;
                for row in rows {
                    sum = sum.wrapping_add(hasher.digest_row(row.key.as_bytes(), &row.values, &mut scratch));
                }
                black_box(sum)
            });
        });
    }
    group.finish();
}

/// Criterion measurement in the benchmark thread's CPU time.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = cpu_time::ThreadTime;
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        cpu_time::ThreadTime::now()
    }
    fn end(&self, start: Self::Intermediate) -> Self::Value {
        start.elapsed()
    }
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }
    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Formats CPU nanoseconds as criterion formats wall time: ns, µs, ms or s, and
/// throughput as elements per second.
struct CpuFormatter;

impl CpuFormatter {
    fn time_unit(typical_ns: f64) -> (f64, &'static str) {
        match typical_ns {
            t if t < 1e3 => (1.0, "ns (cpu)"),
            t if t < 1e6 => (1e-3, "µs (cpu)"),
            t if t < 1e9 => (1e-6, "ms (cpu)"),
            _ => (1e-9, "s (cpu)"),
        }
    }
}

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical_value: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = Self::time_unit(typical_value);
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, typical_value: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iteration = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n as f64,
        };
        // Elements per CPU second, scaled like criterion's Melem/s.
        let per_second = per_iteration * 1e9 / typical_value;
        let (factor, unit) = match per_second {
            r if r < 1e3 => (1.0, "elem/s (cpu)"),
            r if r < 1e6 => (1e-3, "Kelem/s (cpu)"),
            r if r < 1e9 => (1e-6, "Melem/s (cpu)"),
            _ => (1e-9, "Gelem/s (cpu)"),
        };
        values.iter_mut().for_each(|v| *v = per_iteration * 1e9 / *v * factor);
        unit
    }

    fn scale_for_machines(&self, values: &mut [f64]) -> &'static str {
        let _ = values;
        "ns"
    }
}

/// `rows` with every float amount replaced by the equal canonical decimal text, the form a
/// store reading an exact `numeric` column passes on: it encodes to the same bytes without
/// going through the float formatter.
fn with_decimal_amounts(rows: &[Row]) -> Vec<Row> {
    rows.iter()
        .map(|row| {
            let values = row
                .values
                .iter()
                .map(|v| match v {
                    // Display of a finite f64 is its shortest round-trip decimal: canonical.
                    Value::Float(f) => Value::Decimal(f.to_string()),
                    other => other.clone(),
                })
                .collect();
            Row {
                key: row.key.clone(),
                values,
            }
        })
        .collect()
}

fn digest_encoded(c: &mut Criterion) {
    let rows = rows(DIGEST_ROWS);
    // Each row encoded as digest_row would encode it, with the key's length beside it.
    let encoded: Vec<(Vec<u8>, usize)> = rows
        .iter()
        .map(|row| {
            let mut buf = row.key.as_bytes().to_vec();
            row.values.iter().for_each(|v| v.encode(&mut buf));
            (buf, row.key.as_bytes().len())
        })
        .collect();
    let mut group = c.benchmark_group("digest_encoded");
    group.throughput(Throughput::Elements(DIGEST_ROWS as u64));
    for (name, algorithm) in algorithms() {
        let hasher = RowHasher::new(algorithm, SEED);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sum: Digest = 0;
                for (buf, key_len) in &encoded {
                    sum = sum.wrapping_add(hasher.digest_encoded(buf, *key_len));
                }
                black_box(sum)
            });
        });
    }
    group.finish();
}

fn encode_row(c: &mut Criterion) {
    let rows = rows(DIGEST_ROWS);
    let mut group = c.benchmark_group("encode_row");
    group.throughput(Throughput::Elements(DIGEST_ROWS as u64));
    let mut scratch = Vec::with_capacity(SCRATCH_BYTES);
    group.bench_function("values", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for row in &rows {
                scratch.clear();
                row.values.iter().for_each(|v| v.encode(&mut scratch));
                total += scratch.len();
            }
            black_box(total)
        });
    });
    group.finish();
}

fn tree(c: &mut Criterion) {
    let hasher = RowHasher::new(DigestAlgorithm::Xxh3, SEED);
    let sorted: Vec<(Key, Digest)> = (0..TREE_ROWS as i64)
        .map(|id| {
            let key = int_key(id);
            let digest = hasher.digest_encoded(key.as_bytes(), key.as_bytes().len());
            (key, digest)
        })
        .collect();
    let leaves = TREE_ROWS / ROWS_PER_LEAF;
    let sample: Vec<Key> = sorted
        .iter()
        .step_by(ROWS_PER_LEAF / SAMPLES_PER_LEAF)
        .map(|(k, _)| k.clone())
        .collect();
    let boundaries = Boundaries::from_sample(sample, leaves);
    // A fixed permutation, so the leaf of each row has to be searched for.
    let mut shuffled = sorted.clone();
    let mut rng = Rng::new(2);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i as u64 + 1) as usize);
    }

    let mut group = c.benchmark_group("tree");
    group.throughput(Throughput::Elements(TREE_ROWS as u64));
    group.sample_size(20);
    group.bench_function("build/sorted", |b| {
        b.iter(|| black_box(Tree::build(&boundaries, sorted.iter().map(|(k, d)| (k, *d)))));
    });
    group.bench_function("build/shuffled", |b| {
        b.iter(|| black_box(Tree::build(&boundaries, shuffled.iter().map(|(k, d)| (k, *d)))));
    });
    group.bench_function("build_par/sorted", |b| {
        b.iter(|| black_box(Tree::build_par(&boundaries, &sorted)));
    });
    group.finish();
}

criterion_group!(benches, digest_row, digest_encoded, encode_row, tree);
criterion_group! {
    name = cpu_benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = digest_row_cpu
}
criterion_main!(benches, cpu_benches);
