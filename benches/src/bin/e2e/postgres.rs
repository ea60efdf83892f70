//! The `postgres-*` scenarios: push-down, pull and identical copies of 10M rows, and the
//! `psql` COPY floor beside them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use driftless_benches::measure::{Options, Sample, find_on_path, print_sample, secs};
use driftless_benches::pg_data;

use super::{Bench, DATASET, EXIT_CONSISTENT, EXIT_DRIFT, Scan, Scenario, Target, human};

/// Target wall times of the 10M-row PostgreSQL scans (from the issue): push-down with 20
/// divergences, pull with 20 divergences, identical copies.
const TARGET_PUSHDOWN: Duration = Duration::from_millis(2500);
const TARGET_PULL: Duration = Duration::from_millis(6000);
const TARGET_IDENTICAL: Duration = Duration::from_millis(2000);
/// Target client peak memory of the PostgreSQL scans (from the issue).
const TARGET_RSS_KIB: u64 = 256 * 1024;
/// The environment variable that puts two PostgreSQL copies in pull mode.
const PULL_ENV: (&str, &str) = ("DRIFTLESS_POSTGRES_PUSHDOWN", "off");
impl Bench {
    /// The PostgreSQL set, generated on first use, with its tables loaded into shared
    /// buffers.
    fn pg_set(&mut self, runtime: &tokio::runtime::Runtime) -> Result<pg_data::PgSet> {
        if let Some(set) = &self.pg {
            return Ok(set.clone());
        }
        let url = self.postgres_url.clone().context("no PostgreSQL server")?;
        let start = Instant::now();
        let (set, generated) = runtime.block_on(pg_data::ensure(&url, self.pg_rows))?;
        let what = format!("{} rows x 3 PostgreSQL databases", set.rows);
        if generated {
            println!("generated {what} in {}", secs(start.elapsed()));
        } else {
            println!("reusing {what}");
        }
        for copy in [&set.canonical, &set.stage, &set.twin] {
            if !runtime.block_on(pg_data::prewarm(copy))? {
                println!("pg_prewarm unavailable: the warm-up scan warms the caches");
            }
        }
        self.pg = Some(set.clone());
        Ok(set)
    }

    /// A PostgreSQL scenario: push-down or pull against the diverged stage, or both modes
    /// against the identical twin.
    pub(super) fn postgres(&mut self, runtime: &tokio::runtime::Runtime, scenario: Scenario) -> Result<()> {
        let set = self.pg_set(runtime)?;
        let dir = self.work.join("postgres");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let rows = format!("{} vs {} rows", human(set.rows), human(set.rows));
        // (pull mode, against the twin, wall-time target); the twin's pull run is a figure
        // beside the target, not held to it.
        let runs = match scenario {
            Scenario::Postgres10m => vec![(false, false, Some(TARGET_PUSHDOWN))],
            Scenario::PostgresPull10m => vec![(true, false, Some(TARGET_PULL))],
            _ => vec![(false, true, Some(TARGET_IDENTICAL)), (true, true, None)],
        };
        for (pull, identical, wall) in runs {
            let mode = if pull { "pull" } else { "push-down" };
            let (stage, stage_url) = if identical {
                ("twin", &set.twin)
            } else {
                ("stage", &set.stage)
            };
            let config = format!(
                "[[datasets]]\nname = {DATASET:?}\ncanonical = {{ url = {:?}, table = {:?} }}\n\
                 stages = [ {{ name = {stage:?}, url = {stage_url:?}, table = {:?} }} ]\n",
                set.canonical,
                pg_data::TABLE,
                pg_data::TABLE,
            );
            let config_path = dir.join(format!("{}-{mode}.toml", scenario.name()));
            std::fs::write(&config_path, config).with_context(|| format!("cannot write {}", config_path.display()))?;
            let scan = Scan {
                config: config_path,
                exit: if identical { EXIT_CONSISTENT } else { EXIT_DRIFT },
                expected: if identical {
                    BTreeSet::new()
                } else {
                    set.expected.clone()
                },
                env: if pull {
                    vec![(PULL_ENV.0.to_owned(), PULL_ENV.1.to_owned())]
                } else {
                    Vec::new()
                },
            };
            let data = format!("{rows}{}, {mode}", if identical { ", identical" } else { "" });
            let target = Target {
                wall,
                rss_kib: Some(TARGET_RSS_KIB),
            };
            self.time_scan(scenario.name(), data, &scan, target)?;
        }
        Ok(())
    }

    /// The floor: `psql -c "COPY items TO STDOUT (FORMAT binary)" > /dev/null` on the
    /// canonical copy, on the stage, and on both at once (as a scan reads them).
    pub(super) fn copy_floor(&mut self, runtime: &tokio::runtime::Runtime) -> Result<()> {
        let set = self.pg_set(runtime)?;
        let psql = find_on_path("psql").context("psql not found on PATH (Debian package postgresql-client)")?;
        let copy = format!("COPY {} TO STDOUT (FORMAT binary)", pg_data::TABLE);
        let discard = Options {
            env: Vec::new(),
            discard_stdout: true,
        };
        let both = format!(
            "{psql} \"$1\" -X -q -c \"$3\" > /dev/null & {psql} \"$2\" -X -q -c \"$3\" > /dev/null; wait",
            psql = psql.display()
        );
        let jobs: Vec<(&str, PathBuf, Vec<String>)> = vec![
            (
                "canonical",
                psql.clone(),
                vec![
                    set.canonical.clone(),
                    "-X".into(),
                    "-q".into(),
                    "-c".into(),
                    copy.clone(),
                ],
            ),
            (
                "stage",
                psql.clone(),
                vec![set.stage.clone(), "-X".into(), "-q".into(), "-c".into(), copy.clone()],
            ),
            (
                "both at once",
                PathBuf::from("/bin/sh"),
                vec![
                    "-c".into(),
                    both,
                    "sh".into(),
                    set.canonical.clone(),
                    set.stage.clone(),
                    copy.clone(),
                ],
            ),
        ];
        let rows = human(set.rows);
        for (what, program, args) in jobs {
            let once = || -> Result<Sample> {
                let sample = self.runner.run_with(&program, &args, &self.work, &discard)?;
                ensure!(sample.code == Some(0), "psql COPY of {what} failed: {}", sample.stderr);
                Ok(sample)
            };
            let warm = once().with_context(|| format!("COPY floor, {what}: warm-up run"))?;
            println!("COPY {what}: warm-up {} (untimed)", secs(warm.wall));
            let mut samples = Vec::with_capacity(self.runs);
            for run in 1..=self.runs {
                let sample = once()?;
                print_sample(&format!("COPY {what}:"), run, &sample);
                samples.push(sample);
            }
            let data = format!("psql COPY (FORMAT binary), {what}, {rows} rows each");
            self.record(
                "postgres-copy-floor".to_owned(),
                data,
                "0".into(),
                "-".into(),
                &samples,
                Target::default(),
            )?;
        }
        Ok(())
    }
}
