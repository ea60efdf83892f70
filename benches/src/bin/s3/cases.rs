//! What `driftless-s3-bench` times, one child process per case, and how each run is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use driftless_benches::measure::{Options, Runner, Sample, load_average, print_sample, secs};
use driftless_benches::s3_data::ObjectSet;
use driftless_benches::{Divergence, files_data, report};
use serde_json::Value as Json;

/// Exit code of `driftless scan` on drift.
const EXIT_DRIFT: i32 = 2;
/// The dataset name of both configs.
const DATASET: &str = "objects";

/// One measured command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    /// `driftless scan`, bucket A (canonical) against bucket B, etag mode.
    ScanBuckets,
    /// `driftless scan`, bucket A (canonical) against directory D, etag mode.
    ScanDir,
    /// `rclone check A B`.
    RcloneBuckets,
    /// `rclone check D A`.
    RcloneDir,
    /// The floor: bare ListObjectsV2 loops over A and B at the same time.
    FloorBoth,
    /// The floor of the directory case: the same loop over A alone.
    FloorA,
}

impl Case {
    /// Every case, in the order each round runs them.
    pub const ALL: [Case; 6] = [
        Case::ScanBuckets,
        Case::ScanDir,
        Case::RcloneBuckets,
        Case::RcloneDir,
        Case::FloorBoth,
        Case::FloorA,
    ];

    /// The command, as the table shows it.
    pub fn label(self) -> &'static str {
        match self {
            Case::ScanBuckets => "driftless scan A→B (etag)",
            Case::ScanDir => "driftless scan A→D (etag)",
            Case::RcloneBuckets => "rclone check A B",
            Case::RcloneDir => "rclone check D A",
            Case::FloorBoth => "floor: list A and B at once",
            Case::FloorA => "floor: list A",
        }
    }

    /// A short name for the results file.
    pub fn slug(self) -> &'static str {
        match self {
            Case::ScanBuckets => "scan-buckets",
            Case::ScanDir => "scan-dir",
            Case::RcloneBuckets => "rclone-buckets",
            Case::RcloneDir => "rclone-dir",
            Case::FloorBoth => "floor-both",
            Case::FloorA => "floor-a",
        }
    }

    /// The listing floor this case is compared with.
    pub fn floor(self) -> Option<Case> {
        match self {
            Case::ScanBuckets | Case::RcloneBuckets => Some(Case::FloorBoth),
            Case::ScanDir | Case::RcloneDir => Some(Case::FloorA),
            Case::FloorBoth | Case::FloorA => None,
        }
    }

    /// The rclone run doing the same comparison, for driftless's cases.
    pub fn peer(self) -> Option<Case> {
        match self {
            Case::ScanBuckets => Some(Case::RcloneBuckets),
            Case::ScanDir => Some(Case::RcloneDir),
            _ => None,
        }
    }

    /// Whether the case reads directory D (whose page cache is warmed before it).
    fn reads_dir(self) -> bool {
        matches!(self, Case::ScanDir | Case::RcloneDir)
    }

    fn is_rclone(self) -> bool {
        matches!(self, Case::RcloneBuckets | Case::RcloneDir)
    }
}

/// Everything a run needs: the programs, the copies and the two configs.
#[derive(Debug)]
pub struct Bench {
    pub runner: Runner,
    /// The `driftless` binary.
    pub driftless: PathBuf,
    /// This harness, whose `floor` subcommand is the floor.
    pub me: PathBuf,
    pub rclone: Option<PathBuf>,
    pub endpoint: String,
    pub set: ObjectSet,
    /// The config of A against B, then of A against D, each in a directory of its own
    /// (the control plane's database goes next to it).
    pub configs: [PathBuf; 2],
    pub differ: usize,
}

/// Writes the two configs under `dir`: A against B, and A against D, both in etag mode.
pub fn write_configs(dir: &Path, set: &ObjectSet, endpoint: &str) -> Result<[PathBuf; 2]> {
    let s3 = |bucket: &str| format!("url = \"s3://{bucket}/\", endpoint = {endpoint:?}");
    let dir_url = format!("url = \"file:{}\"", set.dir.display());
    let mut paths = Vec::new();
    for (name, stage) in [("scan-buckets", s3(&set.bucket_b)), ("scan-dir", dir_url)] {
        let stage_name = if name == "scan-buckets" { "b" } else { "d" };
        let config = format!(
            "[[datasets]]\nname = {DATASET:?}\ncompare = \"etag\"\ncanonical = {{ {} }}\n\
             stages = [ {{ name = {stage_name:?}, {stage} }} ]\n",
            s3(&set.bucket_a)
        );
        let path = dir.join(name).join("driftless.toml");
        let parent = path.parent().context("a config lives in a directory")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok([paths[0].clone(), paths[1].clone()])
}

impl Bench {
    /// The cases to run: all of them, less rclone's when it is not installed.
    pub fn cases(&self) -> Vec<Case> {
        Case::ALL
            .into_iter()
            .filter(|c| self.rclone.is_some() || !c.is_rclone())
            .collect()
    }

    /// Objects in the copies `case` reads, both together: what its keys/s counts.
    pub fn keys(&self, case: Case) -> usize {
        let s = &self.set;
        match case {
            Case::ScanBuckets | Case::RcloneBuckets | Case::FloorBoth => s.count_a + s.count_b,
            Case::ScanDir | Case::RcloneDir => s.count_a + s.count_d,
            Case::FloorA => s.count_a,
        }
    }

    /// `runs` rounds, each running every case once in turn (so a change in the machine's
    /// load falls on all cases alike), every run checked.
    pub fn measure(&self, runs: usize) -> Result<BTreeMap<Case, Vec<Sample>>> {
        let mut samples: BTreeMap<Case, Vec<Sample>> = BTreeMap::new();
        for run in 1..=runs {
            println!("\nround {run} of {runs} (load average {})", load_average());
            for case in self.cases() {
                if case.reads_dir() {
                    let start = Instant::now();
                    let bytes = files_data::read_all(&self.set.dir)?;
                    println!(
                        "  (read {bytes} bytes of D to warm the page cache in {})",
                        secs(start.elapsed())
                    );
                }
                let sample = self
                    .run(case)
                    .with_context(|| format!("{}, round {run}", case.label()))?;
                print_sample(&format!("  {}:", case.label()), run, &sample);
                samples.entry(case).or_default().push(sample);
            }
        }
        Ok(samples)
    }

    /// One checked run of `case`.
    fn run(&self, case: Case) -> Result<Sample> {
        let set = &self.set;
        match case {
            Case::ScanBuckets => self.scan(&self.configs[0], &set.expected_b, set.count_b),
            Case::ScanDir => self.scan(&self.configs[1], &set.expected_d, set.count_d),
            Case::RcloneBuckets => self.rclone([self.remote(&set.bucket_a), self.remote(&set.bucket_b)]),
            Case::RcloneDir => self.rclone([set.dir.clone().into_os_string(), self.remote(&set.bucket_a)]),
            Case::FloorBoth => self.floor(&[(&set.bucket_a, set.count_a), (&set.bucket_b, set.count_b)]),
            Case::FloorA => self.floor(&[(&set.bucket_a, set.count_a)]),
        }
    }

    /// `driftless scan --report json`, which must exit 2, name exactly `expected`, count
    /// `expected.len()` divergent keys and see every object of both copies.
    fn scan(&self, config: &Path, expected: &BTreeSet<Divergence>, stage_rows: usize) -> Result<Sample> {
        let dir = config.parent().context("a config lives in a directory")?;
        let args = [
            OsString::from("scan"),
            "--config".into(),
            config.into(),
            "--report".into(),
            "json".into(),
        ];
        let sample = self.runner.run(&self.driftless, &args, dir)?;
        ensure!(
            sample.code == Some(EXIT_DRIFT),
            "driftless scan exited {:?}, expected {EXIT_DRIFT}; stderr:\n{}",
            sample.code,
            sample.stderr
        );
        report::check_exact(expected, &report::divergences(&sample.stdout)?)?;
        let report: Json = serde_json::from_str(&sample.stdout).context("the report is not JSON")?;
        let stage = &report["datasets"][0]["stages"][0];
        let counts = (
            stage["divergent"].as_u64(),
            stage["canonical_rows"].as_u64(),
            stage["stage_rows"].as_u64(),
        );
        let want = (expected.len() as u64, self.set.count_a as u64, stage_rows as u64);
        ensure!(
            counts == (Some(want.0), Some(want.1), Some(want.2)),
            "report counts (divergent, canonical_rows, stage_rows) = {counts:?}, expected {want:?}"
        );
        Ok(sample)
    }

    /// An rclone on-the-fly remote for `bucket` on the server: provider Other, credentials
    /// from the environment (`env_auth`), so none is written on a command line.
    fn remote(&self, bucket: &str) -> OsString {
        format!(":s3,provider=Other,env_auth=true,endpoint='{}':{bucket}", self.endpoint).into()
    }

    /// `rclone check`, which must find differences (exit 1); a count other than `--differ`
    /// is warned about. rclone 1.60 fails while `AWS_CA_BUNDLE` is set, even for plain
    /// http, so it runs with that variable empty.
    fn rclone(&self, pair: [OsString; 2]) -> Result<Sample> {
        let rclone = self.rclone.as_ref().context("rclone is not installed")?;
        let args = [OsString::from("check"), pair[0].clone(), pair[1].clone()];
        let options = Options {
            env: vec![("AWS_CA_BUNDLE".to_owned(), String::new())],
            discard_stdout: false,
        };
        let dir = self.configs[0].parent().context("a config lives in a directory")?;
        let sample = self.runner.run_with(rclone, &args, dir, &options)?;
        ensure!(
            sample.code == Some(1),
            "rclone check exited {:?}, expected 1 (differences found); stderr:\n{}",
            sample.code,
            sample.stderr
        );
        let found = report::rclone_differences(&sample.stderr);
        if found != Some(self.differ as u64) {
            eprintln!(
                "warning: rclone check reported {found:?} differences, {} were injected",
                self.differ
            );
        }
        Ok(sample)
    }

    /// `driftless-s3-bench floor` over `buckets`, which must list each bucket's objects.
    fn floor(&self, buckets: &[(&String, usize)]) -> Result<Sample> {
        let mut args = vec![
            OsString::from("floor"),
            "--endpoint".into(),
            self.endpoint.clone().into(),
        ];
        for (bucket, _) in buckets {
            args.extend([OsString::from("--bucket"), bucket.into()]);
        }
        let dir = self.configs[0].parent().context("a config lives in a directory")?;
        let sample = self.runner.run(&self.me, &args, dir)?;
        ensure!(
            sample.code == Some(0),
            "floor exited {:?}; stderr:\n{}",
            sample.code,
            sample.stderr
        );
        for (bucket, count) in buckets {
            let line = format!("{bucket} {count} keys ");
            ensure!(
                sample.stdout.lines().any(|l| l.starts_with(&line)),
                "floor did not list {count} keys in {bucket}: {}",
                sample.stdout
            );
        }
        Ok(sample)
    }
}
