//! The `driftless` command line, as a library so that the binary and the workspace tests'
//! copy of it (`tests/src/bin/driftless-under-test.rs`) run the same code.
//!
//! # Layout
//!
//! - `main.rs`: the command line, exit codes, and the edge where errors become messages.
//! - `config`: the TOML config, `${ENV}` substitution, errors with file and line.
//! - `open`: copy URL -> store implementation.
//! - `run`: a scan or repair over the selected datasets and stages, with a progress bar;
//!   `--approve` continuing a held run; metrics written or pushed at the end.
//! - `render`: the report as a table or as the JSON contract.
//! - `submit`: `--submit` (a run queued for the fleet, waited on) and `driftless runs`.
//! - `worker`: `driftless worker`, the fleet's process: a run driver and segment digesters
//!   under one supervisor.
//! - `schedule`: the `schedule` role, one run per dataset schedule tick fleet-wide.
//! - `api`, `serve`: the HTTP API, in `driftless serve` and `driftless worker --listen`.
//! - `heartbeat`: each fleet process's record in the control plane.
//! - `demo`: builds a small world with known drift and scans it.
//!
//! Exit status follows Terraform's `-detailed-exitcode`: 0 every stage consistent, 2 drift
//! found or left unrepaired (a held run included), 1 error.

mod api;
mod config;
mod demo;
mod examples;
mod gate;
mod heartbeat;
mod open;
mod render;
mod run;
mod schedule;
mod schedule_config;
mod serve;
mod serve_config;
mod signals;
mod submit;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Finds and heals drift between a canonical copy of a dataset and its staged copies.
#[derive(Debug, Parser)]
#[command(name = "driftless", version, about, after_help = examples::TOP)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts, before or after the subcommand.
#[derive(Clone, Debug, Args)]
struct Common {
    /// The config file.
    #[arg(long, global = true, default_value = "driftless.toml")]
    config: PathBuf,
    /// Only this dataset (repeatable; default all).
    #[arg(long = "dataset", value_name = "NAME", global = true)]
    datasets: Vec<String>,
    /// Only this stage (repeatable; default all).
    #[arg(long = "stage", value_name = "NAME", global = true)]
    stages: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detect drift and report it; writes nothing to any copy (divergences are queued in the
    /// control plane).
    #[command(after_help = examples::SCAN)]
    Scan(ScanArgs),
    /// Detect drift, then repair it stage by stage in channel order; `--dry-run` prints the
    /// plan only.
    #[command(after_help = examples::REPAIR)]
    Repair(RepairArgs),
    /// Run a fleet worker until SIGTERM: drive submitted runs and digest their segments,
    /// sharing the control plane with any number of other workers.
    #[command(after_help = examples::WORKER)]
    Worker(WorkerArgs),
    /// Serve the HTTP API (runs, status, metrics) until SIGTERM; runs it creates are driven
    /// by `driftless worker` processes.
    #[command(after_help = examples::SERVE)]
    Serve(ServeArgs),
    /// May this stage be promoted? Exit 0 yes, 2 no (drift, lag or age over the limits), 1
    /// error; it says why. Reads the control plane's latest state of the stage.
    #[command(after_help = examples::GATE)]
    Gate(GateArgs),
    /// List recent runs, or print one run's report (`runs show RUN_ID`).
    #[command(after_help = examples::RUNS)]
    Runs(RunsArgs),
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    #[command(after_help = examples::COMPLETIONS)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Build a canonical copy and three stages with known drift under a directory, scan
    /// them, and check the report names exactly the injected drift.
    #[command(after_help = examples::DEMO)]
    Demo(DemoArgs),
}

/// Flags of `scan`, shared by `repair`.
#[derive(Debug, Args)]
struct ScanArgs {
    /// Only these keys: a file with one key per line, as a JSON object like the report's
    /// (`{"id": 5}`) or a bare value for a one-column key.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Only rows whose change-time column (the dataset's `changed_column`) is at or after
    /// this time, in canonical or the stage (RFC 3339, e.g. 2026-12-01T10:00:00Z).
    #[arg(long, value_name = "TIMESTAMP")]
    since: Option<String>,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    submit: SubmitArgs,
}

/// Handing a run to the fleet.
#[derive(Debug, Args)]
struct SubmitArgs {
    /// Queue the run in the control plane for `driftless worker` processes, wait for it,
    /// print its report and exit as the run would have.
    #[arg(long)]
    submit: bool,
    /// With `--submit`: print the run's id and exit 0 at once.
    #[arg(long, requires = "submit")]
    no_wait: bool,
}

/// What a worker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Drive submitted scan runs and digest any run's segments.
    Scan,
    /// Drive submitted repair runs.
    Repair,
    /// Queue the runs of dataset schedules (one run per tick, fleet-wide).
    Schedule,
}

/// Flags of `driftless worker`.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// What this worker takes on (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "scan,repair")]
    roles: Vec<Role>,
    /// Segments digested at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    concurrency: usize,
    /// Also serve the HTTP API on ADDR (`127.0.0.1:8080`, `:8080`).
    #[arg(long, value_name = "ADDR", value_parser = serve::parse_listen)]
    listen: Option<std::net::SocketAddr>,
}

/// Flags of `driftless serve`.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Where to serve the API (`127.0.0.1:8080`, `:8080`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = serve::parse_listen)]
    listen: std::net::SocketAddr,
}

/// Flags of `driftless gate` (with exactly one `--dataset` and one `--stage`).
#[derive(Debug, Args)]
struct GateArgs {
    /// Most divergent keys the stage's latest run may have left.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_divergent: i64,
    /// Longest an unrepaired divergence may have waited (e.g. 10m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_lag: Option<std::time::Duration>,
    /// Longest since a run last left the stage consistent (e.g. 26h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    max_age: Option<std::time::Duration>,
    /// Scan the stage first, then judge it by that scan.
    #[arg(long)]
    scan: bool,
}

/// Flags of `driftless runs`.
#[derive(Debug, Args)]
struct RunsArgs {
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20, value_name = "N")]
    limit: u32,
    #[command(subcommand)]
    command: Option<RunsCommand>,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Print one run's report, as the run printed it.
    Show {
        /// The run's id.
        run_id: String,
        /// List every divergence of a stage whose list the report cut at `report_limit`
        /// (from the queue: the keys this run detected last).
        #[arg(long)]
        all: bool,
    },
}

/// Flags of `driftless repair`.
#[derive(Debug, Args)]
struct RepairArgs {
    #[command(flatten)]
    scan: ScanArgs,
    /// Detect and print the planned writes; write nothing to any copy.
    #[arg(long)]
    dry_run: bool,
    /// Continue run RUN_ID, whose writes the breaker held: repair its held stages up to the
    /// number of divergences it found. Uses the run's own datasets, stages and keys.
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["dry_run", "keys", "since", "datasets", "stages"])]
    approve: Option<String>,
}

/// Where a one-shot run's metrics go.
#[derive(Debug, Args)]
struct MetricsArgs {
    /// Write the run's metrics to FILE in Prometheus text format (for node exporter's
    /// textfile collector; written atomically).
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Push the run's metrics to a Pushgateway (http://host:9091) under job `driftless`.
    #[arg(long, value_name = "URL")]
    pushgateway: Option<String>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Where the demo's databases, directories and config are written (replaced if present).
    #[arg(long, default_value = "driftless-demo")]
    dir: PathBuf,
}

#[derive(Clone, Debug, Args)]
struct OutputArgs {
    /// Report format; default `table` on a terminal, `json` otherwise.
    #[arg(long, value_enum, global = true)]
    report: Option<ReportFormat>,
    /// Write the report to this file instead of standard output.
    #[arg(long, value_name = "FILE", global = true)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Table,
    Json,
}

/// Exit status: every stage consistent.
const EXIT_CONSISTENT: u8 = 0;
/// Exit status: an error stopped the run.
const EXIT_ERROR: u8 = 1;
/// Exit status: drift found or left unrepaired.
const EXIT_DRIFT: u8 = 2;

/// Runs the command line and returns the exit status.
pub fn main() -> ExitCode {
    // A usage error exits 1, as every error does: clap's own 2 would read as "drift found"
    // to a pipeline. `--help` and `--version` still print and exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_ERROR);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONSISTENT);
        }
    };
    driftless_engine::failpoints_from_env();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DRIFTLESS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        let common = &cli.common;
        match cli.command {
            Command::Scan(args) if args.submit.submit => submit::scan(common, &args).await,
            Command::Scan(args) => run::scan(common, &args).await,
            Command::Repair(args) if args.scan.submit.submit => submit::repair(common, &args).await,
            Command::Repair(args) => run::repair(common, &args).await,
            Command::Worker(args) => worker::run(common, &args).await,
            Command::Serve(args) => serve::run(common, &args).await,
            Command::Runs(args) => submit::runs(common, &args).await,
            Command::Gate(args) => gate::run(common, &args).await,
            Command::Completions { shell } => Ok(completions(shell)),
            Command::Demo(args) => demo::run(common, &args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::from(EXIT_DRIFT),
        Ok(false) => ExitCode::from(EXIT_CONSISTENT),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Prints the completions of every command and flag for `shell`.
fn completions(shell: clap_complete::Shell) -> bool {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "driftless", &mut std::io::stdout());
    false
}
