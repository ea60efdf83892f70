//! Timing a child process and reading its peak memory.
//!
//! Wall time is measured here with a monotonic clock around the whole child. Peak resident
//! memory comes from GNU time (`/usr/bin/time -f %M`, Debian package `time`), which reads
//! the child's `rusage` when it exits: that avoids `wait4` and `unsafe` in this crate. GNU
//! time writes to a file of its own (`-o`), so the child's standard error stays clean.
//! Without `/usr/bin/time` the harness still times runs and reports memory as unknown.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Where GNU time lives on Debian.
const GNU_TIME: &str = "/usr/bin/time";
/// GNU time's output format: elapsed seconds, maximum resident set size in KiB, user and
/// system CPU seconds.
const TIME_FORMAT: &str = "%e %M %U %S";
/// KiB in a MiB, for printing.
const KIB_PER_MIB: f64 = 1024.0;

/// One run of a child process.
#[derive(Debug)]
pub struct Sample {
    /// Wall time from spawn to exit.
    pub wall: Duration,
    /// Peak resident set size of the child in KiB, when GNU time is available.
    pub peak_rss_kib: Option<u64>,
    /// User plus system CPU time of the child, when GNU time is available. Unlike wall time
    /// it barely moves when other processes compete for the cores, so a run whose wall time
    /// grew while its CPU time did not was slowed by the machine, not by the code.
    pub cpu: Option<Duration>,
    /// Exit code; `None` if a signal ended the child.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// How a child runs, beyond its arguments.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Environment variables set for the child.
    pub env: Vec<(String, String)>,
    /// Send the child's standard output to `/dev/null` instead of keeping it (for children
    /// that write hundreds of megabytes).
    pub discard_stdout: bool,
}

/// Runs child processes, under GNU time when it is installed.
#[derive(Debug)]
pub struct Runner {
    gnu_time: Option<PathBuf>,
    /// The file GNU time writes its figures to; one per runner, overwritten by each run.
    time_out: PathBuf,
}

impl Runner {
    /// A runner that keeps GNU time's figures in `scratch_dir`.
    pub fn new(scratch_dir: &Path) -> Runner {
        let gnu_time = Some(PathBuf::from(GNU_TIME)).filter(|p| p.exists());
        Runner {
            gnu_time,
            time_out: scratch_dir.join("gnu-time.out"),
        }
    }

    /// Whether peak memory can be measured.
    pub fn measures_memory(&self) -> bool {
        self.gnu_time.is_some()
    }

    /// Runs `program args` in `cwd` to completion.
    pub fn run<S: AsRef<OsStr>>(&self, program: &Path, args: &[S], cwd: &Path) -> Result<Sample> {
        self.run_with(program, args, cwd, &Options::default())
    }

    /// Runs `program args` in `cwd` to completion, with `options`.
    pub fn run_with<S: AsRef<OsStr>>(
        &self,
        program: &Path,
        args: &[S],
        cwd: &Path,
        options: &Options,
    ) -> Result<Sample> {
        let mut command = match &self.gnu_time {
            Some(time) => {
                let mut c = Command::new(time);
                c.arg("-o").arg(&self.time_out).arg("-f").arg(TIME_FORMAT).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.args(args).current_dir(cwd);
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        if options.discard_stdout {
            command.stdout(Stdio::null());
        }
        let start = Instant::now();
        let Output { status, stdout, stderr } = command
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let wall = start.elapsed();
        let (peak_rss_kib, cpu) = match &self.gnu_time {
            Some(_) => {
                let (rss, cpu) = self.read_figures()?;
                (Some(rss), Some(cpu))
            }
            None => (None, None),
        };
        Ok(Sample {
            wall,
            peak_rss_kib,
            cpu,
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Peak RSS in KiB and CPU time of the last run. GNU time puts a line "Command exited
    /// with non-zero status N" before its figures when the child failed, so the last line
    /// is read.
    fn read_figures(&self) -> Result<(u64, Duration)> {
        let text = std::fs::read_to_string(&self.time_out)
            .with_context(|| format!("GNU time wrote no {}", self.time_out.display()))?;
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        let fields: Vec<&str> = last.split_whitespace().collect();
        let parse = || -> Option<(u64, Duration)> {
            let [_, rss, user, system] = fields.as_slice() else {
                return None;
            };
            let cpu = user.parse::<f64>().ok()? + system.parse::<f64>().ok()?;
            Some((rss.parse().ok()?, Duration::from_secs_f64(cpu)))
        };
        parse().with_context(|| format!("unexpected GNU time output {text:?}"))
    }
}

/// Repeated runs summed up.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Number of runs.
    pub runs: usize,
    /// Median wall time (mean of the middle two for an even count).
    pub median: Duration,
    /// Fastest run.
    pub min: Duration,
    /// Slowest run.
    pub max: Duration,
    /// Highest peak RSS over the runs, in KiB.
    pub peak_rss_kib: Option<u64>,
    /// Median CPU time (user plus system) of the child.
    pub median_cpu: Option<Duration>,
}

impl Summary {
    /// Sums up `samples`; `None` when there are none.
    pub fn of(samples: &[Sample]) -> Option<Summary> {
        let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
        walls.sort();
        let n = walls.len();
        let mut cpus: Vec<Duration> = samples.iter().filter_map(|s| s.cpu).collect();
        cpus.sort();
        Some(Summary {
            runs: n,
            median: median(&walls)?,
            min: walls[0],
            max: walls[n - 1],
            peak_rss_kib: samples.iter().filter_map(|s| s.peak_rss_kib).max(),
            median_cpu: median(&cpus),
        })
    }

    /// The peak RSS in MiB, formatted, or `n/a`.
    pub fn peak_rss_mib(&self) -> String {
        self.peak_rss_kib.map_or_else(
            || "n/a".to_owned(),
            |kib| format!("{:.0} MiB", kib as f64 / KIB_PER_MIB),
        )
    }
}

/// The median of sorted durations (mean of the middle two for an even count).
fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Seconds with millisecond precision, for tables.
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The 1-, 5- and 15-minute load averages, to show how busy the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// One timed run, after `what` (which may be empty).
pub fn print_sample(what: &str, run: usize, sample: &Sample) {
    let rss = sample
        .peak_rss_kib
        .map_or_else(|| "n/a".to_owned(), |kib| format!("{kib} KiB"));
    let cpu = sample.cpu.map_or_else(|| "n/a".to_owned(), secs);
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what} ")
    };
    println!("{what}run {run}: {} wall, {cpu} CPU, peak RSS {rss}", secs(sample.wall));
}

/// The first executable named `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
