//! `driftless-e2e-bench`: times the release `driftless` binary on copies built on disk.
//!
//! For each scenario the harness builds the data (or reuses a kept work directory), writes
//! a config, runs `driftless scan --report json` once untimed to warm the page cache and
//! check the report, then runs it `--runs` times, checking every report, and prints the
//! median and minimum wall time, the median CPU time (user plus system, a check on how
//! much a busy machine inflated the wall time) and the child's peak RSS. Scenarios:
//!
//! - `sqlite-1m`: two SQLite files of 1M rows, 20 divergent keys; exit code 2.
//! - `sqlite-identical-1m`: the same canonical against an identical copy; exit code 0.
//! - `sqlite-4m`: as `sqlite-1m` with 4M rows, to compare peak memory with 1M rows.
//! - `files-100k`: two directories of 100k small files, 20 differing; exit code 2. When
//!   `rclone` is installed, `rclone check` is timed on the same two directories, on a warm
//!   and on a cold page cache (rclone drops the cache of what it reads), and so is
//!   `driftless scan` on the cold cache rclone leaves; see `Bench::time_rclone`.
//! - `postgres-10m`, `postgres-pull-10m`, `postgres-identical-10m`, `postgres-copy-floor`:
//!   two PostgreSQL databases of 10M rows on the server at `DATABASE_URL` (and an identical
//!   third), compared in push-down (the default between two PostgreSQL copies) and in pull
//!   mode (`DRIFTLESS_POSTGRES_PUSHDOWN=off` in the scan's environment), and beside them the
//!   floor: `psql -c "COPY items TO STDOUT (FORMAT binary)" > /dev/null` on each copy and on
//!   both at once. See `pg_data` for the data.
//!
//! Usage: `cargo run --release -p driftless-benches --bin driftless-e2e-bench -- --help`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use driftless_benches::measure::{Options, Runner, Sample, Summary, find_on_path, load_average, print_sample, secs};
use driftless_benches::{Divergence, files_data, pg_data, report, sqlite_data};

mod postgres;

/// Timed runs per scenario unless `--runs` says otherwise.
const DEFAULT_RUNS: usize = 5;
/// The release binary, relative to the workspace root (this crate's parent directory).
const DEFAULT_BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/driftless");
/// Rows of the small SQLite scenarios.
const ROWS_1M: u64 = 1_000_000;
/// Rows of the large SQLite scenario.
const ROWS_4M: u64 = 4_000_000;
/// Target wall time of the 1M-row and 100k-file scans with 20 divergences (from the issue).
const TARGET_WALL: Duration = Duration::from_millis(1500);
/// Rows per PostgreSQL copy unless `--pg-rows` says otherwise.
const PG_ROWS: u64 = 10_000_000;
/// Exit code of `driftless scan` on consistent copies.
const EXIT_CONSISTENT: i32 = 0;
/// Exit code of `driftless scan` on drift.
const EXIT_DRIFT: i32 = 2;
/// The dataset name every config uses.
const DATASET: &str = "items";

/// Times the release `driftless` binary end to end on generated copies.
#[derive(Debug, Parser)]
#[command(name = "driftless-e2e-bench", version)]
struct Args {
    /// Scenario to run (repeatable); default all of them.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Timed runs per scenario, after one untimed warm-up run.
    #[arg(long, default_value_t = DEFAULT_RUNS)]
    runs: usize,
    /// The `driftless` binary to time.
    #[arg(long, default_value = DEFAULT_BIN)]
    bin: PathBuf,
    /// Where to build the data. It is kept, and data already built there is reused.
    /// Default: a temporary directory, removed at the end unless `--keep` is given.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the temporary work directory and print its path.
    #[arg(long)]
    keep: bool,
    /// Do not time `rclone check`, even when rclone is installed.
    #[arg(long)]
    no_rclone: bool,
    /// The PostgreSQL server of the `postgres-*` scenarios (any database on it; the user
    /// must be able to create databases). Without it those scenarios are skipped.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Rows per PostgreSQL copy.
    #[arg(long, default_value_t = PG_ROWS)]
    pg_rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1M vs 1M SQLite rows, 20 divergences.
    #[value(name = "sqlite-1m")]
    Sqlite1m,
    /// 1M vs 1M identical SQLite rows.
    #[value(name = "sqlite-identical-1m")]
    SqliteIdentical1m,
    /// 4M vs 4M SQLite rows, 20 divergences.
    #[value(name = "sqlite-4m")]
    Sqlite4m,
    /// 100k vs 100k files, 20 differing; and rclone check on the same trees.
    #[value(name = "files-100k")]
    Files100k,
    /// 10M vs 10M PostgreSQL rows, 20 divergences, push-down.
    #[value(name = "postgres-10m")]
    Postgres10m,
    /// 10M vs 10M PostgreSQL rows, 20 divergences, pull mode.
    #[value(name = "postgres-pull-10m")]
    PostgresPull10m,
    /// 10M vs 10M identical PostgreSQL rows, push-down and pull.
    #[value(name = "postgres-identical-10m")]
    PostgresIdentical10m,
    /// `psql -c "COPY items TO STDOUT (FORMAT binary)"` of each copy and of both at once.
    #[value(name = "postgres-copy-floor")]
    PostgresCopyFloor,
}

impl Scenario {
    /// The name `--scenario` takes; the `#[value(name)]` attributes must agree.
    fn name(self) -> &'static str {
        match self {
            Scenario::Sqlite1m => "sqlite-1m",
            Scenario::SqliteIdentical1m => "sqlite-identical-1m",
            Scenario::Sqlite4m => "sqlite-4m",
            Scenario::Files100k => "files-100k",
            Scenario::Postgres10m => "postgres-10m",
            Scenario::PostgresPull10m => "postgres-pull-10m",
            Scenario::PostgresIdentical10m => "postgres-identical-10m",
            Scenario::PostgresCopyFloor => "postgres-copy-floor",
        }
    }

    fn needs_postgres(self) -> bool {
        matches!(
            self,
            Scenario::Postgres10m
                | Scenario::PostgresPull10m
                | Scenario::PostgresIdentical10m
                | Scenario::PostgresCopyFloor
        )
    }
}

/// One line of the final table.
#[derive(Debug)]
struct Measured {
    label: String,
    data: String,
    exit: String,
    divergences: String,
    summary: Summary,
    target: Target,
    /// The 1-minute load average when the runs ended.
    load: String,
}

/// What a measurement must meet, if anything.
#[derive(Debug, Clone, Copy, Default)]
struct Target {
    /// Median wall time.
    wall: Option<Duration>,
    /// Peak RSS in KiB.
    rss_kib: Option<u64>,
}

impl Target {
    fn wall(wall: Duration) -> Target {
        Target {
            wall: Some(wall),
            rss_kib: None,
        }
    }
}

/// One checked `driftless scan`: its config, and the exit code and divergences it must give.
#[derive(Debug)]
struct Scan {
    config: PathBuf,
    exit: i32,
    expected: BTreeSet<Divergence>,
    /// Environment variables of the scan.
    env: Vec<(String, String)>,
}

/// What the scenarios share: the binary, the runner, the options.
#[derive(Debug)]
struct Bench {
    bin: PathBuf,
    runs: usize,
    runner: Runner,
    work: PathBuf,
    rclone: Option<PathBuf>,
    postgres_url: Option<String>,
    pg_rows: u64,
    /// The PostgreSQL set, once ensured.
    pg: Option<pg_data::PgSet>,
    results: Vec<Measured>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.bin.exists(),
        "{} does not exist: build it with `cargo build --release -p driftless`, or pass --bin",
        args.bin.display()
    );
    let bin = std::fs::canonicalize(&args.bin).with_context(|| format!("cannot resolve {}", args.bin.display()))?;
    let scenarios = if args.scenarios.is_empty() {
        let all = Scenario::value_variants().iter().copied();
        if args.postgres_url.is_none() {
            println!("DATABASE_URL not set (or --postgres-url): skipping the postgres-* scenarios");
        }
        all.filter(|s| args.postgres_url.is_some() || !s.needs_postgres())
            .collect()
    } else {
        args.scenarios
    };
    ensure!(
        args.postgres_url.is_some() || !scenarios.iter().any(|s| s.needs_postgres()),
        "the postgres-* scenarios need a server: set DATABASE_URL or pass --postgres-url \
         (scripts/with-postgres starts one)"
    );

    let (work, temp) = match args.work_dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("driftless-e2e-")
                .tempdir()
                .context("cannot create a temp dir")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    let runner = Runner::new(&work);
    if !runner.measures_memory() {
        eprintln!("note: /usr/bin/time not found (Debian package `time`); peak memory will not be measured");
    }
    let rclone = if args.no_rclone { None } else { find_on_path("rclone") };
    println!("binary: {}", bin.display());
    println!("work dir: {}", work.display());
    println!("runs per scenario: {} timed, after 1 untimed warm-up", args.runs);

    let mut bench = Bench {
        bin: args.bin,
        runs: args.runs,
        runner,
        work: work.clone(),
        rclone,
        postgres_url: args.postgres_url,
        pg_rows: args.pg_rows,
        pg: None,
        results: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    for scenario in scenarios {
        println!("\n== {} (load average {})", scenario.name(), load_average());
        match scenario {
            Scenario::Sqlite1m => bench.sqlite(&runtime, scenario, ROWS_1M, false)?,
            Scenario::SqliteIdentical1m => bench.sqlite(&runtime, scenario, ROWS_1M, true)?,
            Scenario::Sqlite4m => bench.sqlite(&runtime, scenario, ROWS_4M, false)?,
            Scenario::Files100k => bench.files(scenario)?,
            Scenario::Postgres10m | Scenario::PostgresPull10m | Scenario::PostgresIdentical10m => {
                bench.postgres(&runtime, scenario)?
            }
            Scenario::PostgresCopyFloor => bench.copy_floor(&runtime)?,
        }
    }
    bench.print_table();

    if let Some(t) = temp
        && args.keep
    {
        println!("\nkept work dir {}", t.keep().display());
    }
    Ok(())
}

impl Bench {
    /// A SQLite scenario: `rows` rows, against the diverged stage or the identical twin.
    fn sqlite(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        scenario: Scenario,
        rows: u64,
        identical: bool,
    ) -> Result<()> {
        let dir = self.work.join(format!("sqlite-{}m", rows / ROWS_1M));
        let start = Instant::now();
        let (set, generated) = runtime.block_on(sqlite_data::ensure(&dir, rows))?;
        report_generation(generated, start, &format!("{rows} rows x 3 SQLite copies"), &set.dir);

        let (stage_name, stage_file, expected, exit) = if identical {
            ("twin", &set.twin, BTreeSet::new(), EXIT_CONSISTENT)
        } else {
            ("stage", &set.stage, set.expected.clone(), EXIT_DRIFT)
        };
        let file_name = |p: &Path| {
            p.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let config = format!(
            "[[datasets]]\nname = {DATASET:?}\ncanonical = {{ url = \"sqlite://{}\", table = {:?} }}\n\
             stages = [ {{ name = {stage_name:?}, url = \"sqlite://{}\", table = {:?} }} ]\n",
            file_name(&set.canonical),
            sqlite_data::TABLE,
            file_name(stage_file),
            sqlite_data::TABLE,
        );
        let config_path = set.dir.join(format!("{}.toml", scenario.name()));
        std::fs::write(&config_path, config).with_context(|| format!("cannot write {}", config_path.display()))?;
        let data = format!(
            "{}M vs {}M rows{}",
            rows / ROWS_1M,
            rows / ROWS_1M,
            if identical { ", identical" } else { "" }
        );
        let target = Target {
            wall: (rows == ROWS_1M && !identical).then_some(TARGET_WALL),
            rss_kib: None,
        };
        let scan = Scan {
            config: config_path,
            exit,
            expected,
            env: Vec::new(),
        };
        self.time_scan(scenario.name(), data, &scan, target)
    }

    /// The files scenario, and rclone check on the same trees.
    fn files(&mut self, scenario: Scenario) -> Result<()> {
        let dir = self.work.join(scenario.name());
        let start = Instant::now();
        let (set, generated) = files_data::ensure(&dir)?;
        report_generation(
            generated,
            start,
            &format!("{} files x 2 trees", files_data::FILES),
            &dir,
        );

        let config = format!(
            "[[datasets]]\nname = {DATASET:?}\ncanonical = {{ url = \"file:canonical\" }}\n\
             stages = [ {{ name = \"stage\", url = \"file:stage\" }} ]\n"
        );
        let config_path = dir.join(format!("{}.toml", scenario.name()));
        std::fs::write(&config_path, config).with_context(|| format!("cannot write {}", config_path.display()))?;
        let data = format!("{}k vs {}k files", files_data::FILES / 1000, files_data::FILES / 1000);
        let scan = Scan {
            config: config_path,
            exit: EXIT_DRIFT,
            expected: set.expected.clone(),
            env: Vec::new(),
        };
        self.time_scan(
            scenario.name(),
            format!("{data}, warm cache"),
            &scan,
            Target::wall(TARGET_WALL),
        )?;

        match self.rclone.clone() {
            Some(rclone) => self.time_rclone(&rclone, &set, &scan, &data),
            None => {
                println!("rclone not installed (or --no-rclone): skipping `rclone check`");
                Ok(())
            }
        }
    }

    /// Warms up, then times `driftless scan` `--runs` times, checking every run.
    fn time_scan(&mut self, label: &str, data: String, scan: &Scan, target: Target) -> Result<()> {
        let warm = self.scan_once(scan).with_context(|| format!("{label}: warm-up run"))?;
        println!(
            "warm-up {} (untimed): exit {}, {} divergences as injected",
            secs(warm.wall),
            scan.exit,
            scan.expected.len()
        );
        let mut samples = Vec::with_capacity(self.runs);
        for run in 1..=self.runs {
            let sample = self.scan_once(scan).with_context(|| format!("{label}: run {run}"))?;
            print_sample("", run, &sample);
            samples.push(sample);
        }
        let (exit, divergences) = (scan.exit.to_string(), scan.expected.len().to_string());
        self.record(label.to_owned(), data, exit, divergences, &samples, target)
    }

    /// One run of `driftless scan`, checked: exit code, and exactly the injected divergences.
    fn scan_once(&self, scan: &Scan) -> Result<Sample> {
        let dir = scan.config.parent().context("a config file lives in a directory")?;
        let args = [
            OsStr::new("scan"),
            OsStr::new("--config"),
            scan.config.as_os_str(),
            OsStr::new("--report"),
            OsStr::new("json"),
        ];
        let options = Options {
            env: scan.env.clone(),
            discard_stdout: false,
        };
        let sample = self.runner.run_with(&self.bin, &args, dir, &options)?;
        ensure!(
            sample.code == Some(scan.exit),
            "exit code {:?}, expected {}; stderr:\n{}",
            sample.code,
            scan.exit,
            sample.stderr
        );
        report::check_exact(&scan.expected, &report::divergences(&sample.stdout)?)?;
        Ok(sample)
    }

    /// Times `rclone check canonical stage` (which exits non-zero when the trees differ)
    /// beside `driftless scan`.
    ///
    /// rclone's local backend drops the page cache of every file it has read
    /// (`fadvise(DONTNEED)`), so a warm cache does not survive one of its runs. Each round
    /// therefore reads both trees (untimed) to warm the cache, then times rclone on the warm
    /// cache, rclone again on the cache its first run left cold (what running it repeatedly
    /// costs), and `driftless scan` on that cold cache.
    fn time_rclone(&mut self, rclone: &Path, set: &files_data::FileSet, scan: &Scan, data: &str) -> Result<()> {
        let dir = scan.config.parent().context("a config file lives in a directory")?;
        let args = [OsStr::new("check"), set.canonical.as_os_str(), set.stage.as_os_str()];
        let rclone_once = || -> Result<(Sample, Option<u64>)> {
            let sample = self.runner.run(rclone, &args, dir)?;
            ensure!(
                sample.code.is_some_and(|c| c != 0),
                "rclone check found no difference (exit {:?}): {}",
                sample.code,
                sample.stderr
            );
            let found = report::rclone_differences(&sample.stderr);
            if found != Some(scan.expected.len() as u64) {
                eprintln!(
                    "warning: rclone check reported {found:?} differences, {} were injected",
                    scan.expected.len()
                );
            }
            Ok((sample, found))
        };
        let (warm, found) = rclone_once().context("rclone check: warm-up run")?;
        println!(
            "rclone check warm-up {} (untimed), exit {:?}",
            secs(warm.wall),
            warm.code
        );
        let (mut on_warm, mut on_cold, mut scan_cold) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=self.runs {
            let start = Instant::now();
            let bytes = files_data::read_all(&set.canonical)? + files_data::read_all(&set.stage)?;
            println!(
                "round {run}: read {bytes} bytes of both trees to warm the cache in {}",
                secs(start.elapsed())
            );
            let (sample, _) = rclone_once()?;
            print_sample("  rclone check, warm cache:", run, &sample);
            on_warm.push(sample);
            let (sample, _) = rclone_once()?;
            print_sample("  rclone check, cold cache:", run, &sample);
            on_cold.push(sample);
            let sample = self
                .scan_once(scan)
                .with_context(|| format!("driftless scan after rclone, round {run}"))?;
            print_sample("  driftless scan, cold cache:", run, &sample);
            scan_cold.push(sample);
        }
        let exit = warm.code.map_or_else(|| "signal".to_owned(), |c| c.to_string());
        let differences = found.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let (scan_exit, scan_divergences) = (scan.exit.to_string(), scan.expected.len().to_string());
        let warm_data = format!("{data}, warm cache");
        let cold_data = format!("{data}, cold cache (after rclone)");
        self.record(
            "rclone check".to_owned(),
            warm_data,
            exit.clone(),
            differences.clone(),
            &on_warm,
            Target::default(),
        )?;
        self.record(
            "rclone check".to_owned(),
            cold_data.clone(),
            exit,
            differences,
            &on_cold,
            Target::default(),
        )?;
        self.record(
            "files-100k".to_owned(),
            cold_data,
            scan_exit,
            scan_divergences,
            &scan_cold,
            Target::default(),
        )
    }

    fn record(
        &mut self,
        label: String,
        data: String,
        exit: String,
        divergences: String,
        samples: &[Sample],
        target: Target,
    ) -> Result<()> {
        let Some(summary) = Summary::of(samples) else {
            bail!("{label}: no timed run")
        };
        println!(
            "{label}: median {}, min {}, max {}, median CPU {}, peak RSS {} (load average {})",
            secs(summary.median),
            secs(summary.min),
            secs(summary.max),
            summary.median_cpu.map_or_else(|| "n/a".to_owned(), secs),
            summary.peak_rss_mib(),
            load_average()
        );
        self.results.push(Measured {
            label,
            data,
            exit,
            divergences,
            summary,
            target,
            load: load_average(),
        });
        Ok(())
    }

    /// The results as a Markdown table, then peak memory of 1M against 4M rows.
    fn print_table(&self) {
        println!(
            "\n| scenario | data | exit | divergences | runs | median wall | min wall | median CPU | peak RSS | load | target |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for m in &self.results {
            let mut verdicts = Vec::new();
            if let Some(t) = m.target.wall {
                let met = if m.summary.median <= t { "met" } else { "MISSED" };
                verdicts.push(format!("<= {} {met}", secs(t)));
            }
            if let Some(kib) = m.target.rss_kib {
                let met = match m.summary.peak_rss_kib {
                    Some(rss) if rss <= kib => "met",
                    Some(_) => "MISSED",
                    None => "unmeasured",
                };
                verdicts.push(format!("RSS <= {} MiB {met}", kib / 1024));
            }
            let target = if verdicts.is_empty() {
                "-".to_owned()
            } else {
                verdicts.join(", ")
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m.label,
                m.data,
                m.exit,
                m.divergences,
                m.summary.runs,
                secs(m.summary.median),
                secs(m.summary.min),
                m.summary.median_cpu.map_or_else(|| "n/a".to_owned(), secs),
                m.summary.peak_rss_mib(),
                m.load,
                target
            );
        }
        let rss = |label: &str| {
            self.results
                .iter()
                .find(|m| m.label == label)
                .and_then(|m| m.summary.peak_rss_kib)
        };
        if let (Some(small), Some(large)) = (rss(Scenario::Sqlite1m.name()), rss(Scenario::Sqlite4m.name())) {
            println!(
                "\npeak RSS, 1M rows: {} KiB; 4M rows: {} KiB ({:.2}x for 4x the rows)",
                small,
                large,
                large as f64 / small as f64
            );
        }
    }
}

fn report_generation(generated: bool, start: Instant, what: &str, dir: &Path) {
    if generated {
        println!("generated {what} in {} under {}", secs(start.elapsed()), dir.display());
    } else {
        println!("reusing {what} under {}", dir.display());
    }
}

/// A row count as `10M`, `100k` or `1234`.
fn human(n: u64) -> String {
    match n {
        _ if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        _ if n >= 1000 && n.is_multiple_of(1000) => format!("{}k", n / 1000),
        _ => n.to_string(),
    }
}
