//! The `driftless` command line, as a library so that the binary and the workspace tests'
//! copy of it (`tests/src/bin/driftless-under-test.rs`) run the same code.
//!
//! # Layout
//!
//! - `main.rs`: the command line, exit codes, and the edge where errors become messages.
//! - `config`: the TOML config, `${ENV}` substitution, errors with file and line.
//! - `open`: copy URL -> store implementation.
//! - `run`: a scan over the selected datasets and stages, with a progress bar.
//! - `render`: the report as a table or as the JSON contract.
//! - `demo`: builds a small world with known drift and scans it.
//!
//! Exit status follows Terraform's `-detailed-exitcode`: 0 every stage consistent, 2 drift
//! found, 1 error.

mod config;
mod demo;
mod open;
mod render;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Finds and heals drift between a canonical copy of a dataset and its staged copies.
#[derive(Debug, Parser)]
#[command(name = "driftless", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Detect drift and report it; writes nothing to any copy.
    Scan(ScanArgs),
    /// Build a canonical copy and three stages with known drift under a directory, scan
    /// them, and check the report names exactly the injected drift.
    Demo(DemoArgs),
}

/// Flags shared by the commands that run over a config.
#[derive(Debug, Args)]
struct ScanArgs {
    /// The config file.
    #[arg(long, default_value = "driftless.toml")]
    config: PathBuf,
    /// Only this dataset (repeatable; default all).
    #[arg(long = "dataset", value_name = "NAME")]
    datasets: Vec<String>,
    /// Only this stage (repeatable; default all).
    #[arg(long = "stage", value_name = "NAME")]
    stages: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Where the demo's databases, directories and config are written (replaced if present).
    #[arg(long, default_value = "driftless-demo")]
    dir: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// Report format; default `table` on a terminal, `json` otherwise.
    #[arg(long, value_enum)]
    report: Option<ReportFormat>,
    /// Write the report to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
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
    let cli = Cli::parse();
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
        match cli.command {
            Command::Scan(args) => run::scan(&args).await,
            Command::Demo(args) => demo::run(&args).await,
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
