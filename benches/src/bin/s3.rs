//! `driftless-s3-bench`: times `driftless scan` of S3 copies beside `rclone check` and a
//! bare listing floor, on an S3-compatible server (`scripts/with-s3` starts moto).
//!
//! It populates bucket A with `--objects` small objects, bucket B and directory D with
//! `--differ` differences each (see `driftless_benches::s3_data`; kept and reused on the same
//! server), then runs `--runs` rounds. Every round runs each case once as its own process,
//! in turn (A B C A B C ...), so a change in the machine's load falls on all of them:
//!
//! - `driftless scan` of A (canonical) against B, and of A (canonical) against D, in etag
//!   mode; each must exit 2 and name exactly the injected keys;
//! - `rclone check A B` and `rclone check D A` (skipped without rclone);
//! - the floor: `driftless-s3-bench floor`, a bare paged ListObjectsV2 loop over A and B at
//!   the same time (the least any listing-based comparison of two buckets must do), and
//!   over A alone (the floor of the directory case).
//!
//! It prints the median wall time, keys/s (objects of both copies per second), the highest
//! peak RSS of the child (GNU time, see `measure`), and the ratios to the floor and to
//! rclone; and saves the figures to `WORK/results-N-K.json`, so that runs at two sizes show
//! whether peak memory grows with the object count.
//!
//! Usage: `scripts/with-s3 target/release/driftless-s3-bench --objects 10000 --runs 3`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::{Args, Parser, Subcommand};
use driftless_benches::measure::{Runner, Sample, Summary, find_on_path, load_average, secs};
use driftless_benches::s3_data;
use serde_json::json;

// A binary's root file looks for modules beside it, so the path is spelled out.
#[path = "s3/cases.rs"]
mod cases;

use cases::{Bench, Case};

/// The release binary, relative to the workspace root (this crate's parent directory).
const DEFAULT_BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/driftless");
/// The variable `scripts/with-s3` exports the server's URL in.
const ENDPOINT_ENV: &str = "DRIFTLESS_TEST_S3_ENDPOINT";

/// Times `driftless scan` of S3 copies beside `rclone check` and a bare listing floor.
#[derive(Debug, Parser)]
#[command(name = "driftless-s3-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The listing floor: a bare paged ListObjectsV2 loop (1000 keys per page) over each
    /// bucket, all at once; prints "BUCKET N keys P pages" per bucket.
    Floor(FloorArgs),
}

#[derive(Debug, Args)]
struct FloorArgs {
    /// The S3-compatible server.
    #[arg(long, env = ENDPOINT_ENV)]
    endpoint: String,
    /// A bucket to list (repeatable).
    #[arg(long = "bucket", required = true)]
    buckets: Vec<String>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Objects in bucket A.
    #[arg(long, default_value_t = 100_000)]
    objects: usize,
    /// Objects differing in bucket B, and (at other keys) in directory D.
    #[arg(long, default_value_t = 20)]
    differ: usize,
    /// Timed rounds; each runs every case once.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where directory D, the configs and the results go; kept and reused.
    #[arg(long, default_value = "/tmp/driftless-s3-bench")]
    work_dir: PathBuf,
    /// The `driftless` binary to time.
    #[arg(long, default_value = DEFAULT_BIN)]
    driftless: PathBuf,
    /// The S3-compatible server.
    #[arg(long, env = ENDPOINT_ENV)]
    endpoint: Option<String>,
    /// Do not time `rclone check`, even when rclone is installed.
    #[arg(long)]
    no_rclone: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Floor(args)) => floor(&args),
        None => bench(cli.bench),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start tokio")
}

/// The `floor` subcommand: every bucket listed by its own task, all at once.
fn floor(args: &FloorArgs) -> Result<()> {
    let client = s3_data::client(&args.endpoint);
    runtime()?.block_on(async {
        let tasks = args.buckets.iter().map(|bucket| {
            let (client, bucket) = (client.clone(), bucket.clone());
            tokio::spawn(async move { s3_data::list_all(&client, &bucket).await.map(|n| (bucket, n)) })
        });
        for done in futures::future::join_all(tasks).await {
            let (bucket, (keys, pages)) = done.context("a listing task panicked")??;
            println!("{bucket} {keys} keys {pages} pages");
        }
        Ok(())
    })
}

/// The benchmark proper.
fn bench(args: BenchArgs) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.driftless.exists(),
        "{} does not exist: build it with `cargo build --release -p driftless`, or pass --driftless",
        args.driftless.display()
    );
    let endpoint = args
        .endpoint
        .clone()
        .with_context(|| format!("no server: run under scripts/with-s3, or set {ENDPOINT_ENV} or --endpoint"))?;
    std::fs::create_dir_all(&args.work_dir).with_context(|| format!("cannot create {}", args.work_dir.display()))?;
    let work = std::fs::canonicalize(&args.work_dir)?;
    let driftless = std::fs::canonicalize(&args.driftless)?;
    let runner = Runner::new(&work);
    if !runner.measures_memory() {
        eprintln!("note: /usr/bin/time not found (Debian package `time`); peak memory will not be measured");
    }
    let rclone = if args.no_rclone { None } else { find_on_path("rclone") };
    println!(
        "driftless: {}\nserver: {endpoint}\nwork dir: {}",
        driftless.display(),
        work.display()
    );
    println!("load average at start: {}", load_average());

    let client = s3_data::client(&endpoint);
    let start = Instant::now();
    let (set, built) = runtime()?.block_on(s3_data::ensure(&client, &work, args.objects, args.differ))?;
    let what = |b: bool| if b { "built" } else { "reused" };
    println!(
        "copies: A {} objects, B {}, D {} files in {}; buckets {}, directory {} ({})",
        set.count_a,
        set.count_b,
        set.count_d,
        set.dir.display(),
        what(built.buckets),
        what(built.dir),
        secs(start.elapsed())
    );
    ensure!(
        set.expected_b.len() == args.differ && set.expected_d.len() == args.differ,
        "the data plan injects {} and {} differences, not --differ {}",
        set.expected_b.len(),
        set.expected_d.len(),
        args.differ
    );
    let data_dir = set.dir.parent().context("directory D lives in the data's directory")?;
    let configs = cases::write_configs(data_dir, &set, &endpoint)?;
    let bench = Bench {
        runner,
        driftless,
        me: std::env::current_exe().context("cannot find this harness's own binary")?,
        rclone,
        endpoint,
        set,
        configs,
        differ: args.differ,
    };
    if bench.rclone.is_none() {
        println!("rclone not installed (or --no-rclone): skipping `rclone check`");
    }
    let samples = bench.measure(args.runs)?;
    let summaries: BTreeMap<Case, Summary> = samples
        .iter()
        .filter_map(|(case, s)| Summary::of(s).map(|sum| (*case, sum)))
        .collect();
    print_table(&bench, &summaries);
    save_and_compare(&work, &args, &summaries, &samples)
}

/// The results as a Markdown table.
fn print_table(bench: &Bench, summaries: &BTreeMap<Case, Summary>) {
    let ratio = |case: Case, other: Option<Case>| -> String {
        match other.and_then(|o| summaries.get(&o)) {
            Some(o) => format!("{:.2}×", summaries[&case].median.as_secs_f64() / o.median.as_secs_f64()),
            None => "-".to_owned(),
        }
    };
    println!("\nload average at the end: {}", load_average());
    println!(
        "\n| case | objects (both copies) | runs | median wall | min–max | median CPU | keys/s | peak RSS | ÷ floor | ÷ rclone |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (&case, s) in summaries {
        let keys = bench.keys(case);
        println!(
            "| {} | {keys} | {} | {} | {}–{} | {} | {:.0} | {} | {} | {} |",
            case.label(),
            s.runs,
            secs(s.median),
            secs(s.min),
            secs(s.max),
            s.median_cpu.map_or_else(|| "n/a".to_owned(), secs),
            keys as f64 / s.median.as_secs_f64(),
            s.peak_rss_mib(),
            ratio(case, case.floor()),
            ratio(case, case.peer()),
        );
    }
}

/// Writes `WORK/results-N-K.json`, then compares peak RSS with the other sizes' results there.
fn save_and_compare(
    work: &Path,
    args: &BenchArgs,
    summaries: &BTreeMap<Case, Summary>,
    samples: &BTreeMap<Case, Vec<Sample>>,
) -> Result<()> {
    let cases: serde_json::Map<String, serde_json::Value> = summaries
        .iter()
        .map(|(case, s)| {
            let walls: Vec<f64> = samples[case].iter().map(|x| x.wall.as_secs_f64()).collect();
            let figures = json!({
                "median_s": s.median.as_secs_f64(),
                "walls_s": walls,
                "peak_rss_kib": s.peak_rss_kib,
            });
            (case.slug().to_owned(), figures)
        })
        .collect();
    let results = json!({ "objects": args.objects, "differ": args.differ, "cases": cases });
    let path = work.join(format!("results-{}-{}.json", args.objects, args.differ));
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nsaved {}", path.display());
    compare_sizes(work, args.differ)
}

/// Peak RSS per case from every `results-*-K.json` in `work`, one column per object count.
fn compare_sizes(work: &Path, differ: usize) -> Result<()> {
    let mut by_size: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    for entry in std::fs::read_dir(work)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("results-") && name.ends_with(&format!("-{differ}.json")) {
            let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            if let Some(n) = value["objects"].as_u64() {
                by_size.insert(n, value);
            }
        }
    }
    if by_size.len() < 2 {
        println!("(run another --objects with this --work-dir to compare peak memory across sizes)");
        return Ok(());
    }
    println!("\npeak RSS by object count (KiB):\n");
    let sizes: Vec<String> = by_size.keys().map(|n| n.to_string()).collect();
    println!("| case | {} |", sizes.join(" | "));
    println!("|---|{}", "---|".repeat(sizes.len()));
    for case in Case::ALL {
        let rss: Vec<String> = by_size
            .values()
            .map(|v| {
                v["cases"][case.slug()]["peak_rss_kib"]
                    .as_u64()
                    .map_or("-".to_owned(), |k| k.to_string())
            })
            .collect();
        println!("| {} | {} |", case.label(), rss.join(" | "));
    }
    Ok(())
}
