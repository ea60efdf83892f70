//! The API's request rate and the scheduler's control-plane load, on this machine.
//!
//! - Requests per second of `GET /v1/status` and `POST /v1/runs` (run creation) against a
//!   release `driftless serve` over a PostgreSQL control plane, each beside `GET /healthz`
//!   (no control plane, the server's own ceiling) measured in the same round: the ratio says
//!   what the control-plane reads and writes cost. `--clients` keep-alive connections send
//!   requests back to back for `--seconds`; client and server share the machine's cores.
//! - The scheduler: five `driftless worker --roles schedule` processes over a per-second cron;
//!   control-plane transactions (PostgreSQL's `xact_commit`) per claimed tick, beside the
//!   same five workers' heartbeats alone.
//!
//! ```sh
//! cargo build --release -p driftless -p driftless-benches
//! scripts/with-postgres target/release/driftless-api-bench --runs 5
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

const CONTROL_DB: &str = "bench_api_control";
const TOKEN: &str = "bench-api-token";

#[derive(Debug, Parser)]
struct Args {
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds each measurement sends requests for.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Datasets of three stages each that `/v1/status` reports.
    #[arg(long, default_value_t = 4)]
    datasets: usize,
    /// Seconds the scheduler is watched for.
    #[arg(long, default_value_t = 20)]
    schedule_seconds: u64,
    /// The driftless binary.
    #[arg(long, default_value = "target/release/driftless")]
    bin: PathBuf,
    /// Scratch directory.
    #[arg(long, default_value = "/tmp/driftless-api-bench")]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = std::fs::canonicalize(&args.bin).with_context(|| format!("no binary at {}", args.bin.display()))?;
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let admin_url = std::env::var("DATABASE_URL").context("DATABASE_URL: run under scripts/with-postgres")?;
    let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {CONTROL_DB} WITH (FORCE)").as_str())
        .await?;
    admin.execute(format!("CREATE DATABASE {CONTROL_DB}").as_str()).await?;
    let mut url = url::Url::parse(&admin_url)?;
    url.set_path(CONTROL_DB);
    let control_url = url.to_string();
    let control = PgPoolOptions::new().max_connections(1).connect(&control_url).await?;

    world(&args.work_dir, args.datasets, &control_url, false).await?;
    let scan = Command::new(&bin)
        .args(["scan", "--report", "json"])
        .current_dir(&args.work_dir)
        .output()?;
    if scan.status.code() != Some(2) {
        bail!(
            "the setup scan did not find drift: {}",
            String::from_utf8_lossy(&scan.stderr)
        );
    }
    api_rates(&args, &bin).await?;
    scheduler_load(&args, &bin, &control, &control_url).await
}

/// `datasets` datasets of 1000 rows, each with three stages (one drifted), in SQLite files.
async fn world(dir: &Path, datasets: usize, control_url: &str, schedule: bool) -> Result<()> {
    let mut config = format!("[control]\nurl = {control_url:?}\n\n[repair]\nshutdown_secs = 5\n");
    for d in 0..datasets {
        let canonical = dir.join(format!("canonical-{d}.db"));
        if !canonical.exists() {
            sqlite(
                &canonical,
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
                WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
                INSERT INTO t SELECT i, 'v' || i FROM n;",
            )
            .await?;
            for s in ["a", "b", "c"] {
                let stage = dir.join(format!("{s}-{d}.db"));
                std::fs::copy(&canonical, &stage)?;
                if s == "b" {
                    sqlite(&stage, "UPDATE t SET v = 'drifted' WHERE id % 50 = 0;").await?;
                }
            }
        }
        let cron = if schedule && d == 0 {
            "schedule = { cron = \"* * * * * *\" }\n"
        } else {
            ""
        };
        config.push_str(&format!(
            "\n[[datasets]]\nname = \"d{d}\"\nkey = [\"id\"]\n{cron}canonical = {{ url = \"sqlite://canonical-{d}.db\", table = \"t\" }}\nstages = [\n"
        ));
        for s in ["a", "b", "c"] {
            config.push_str(&format!(
                "  {{ name = \"{s}\", url = \"sqlite://{s}-{d}.db\", table = \"t\" }},\n"
            ));
        }
        config.push_str("]\n");
    }
    std::fs::write(dir.join("driftless.toml"), config)?;
    Ok(())
}

async fn sqlite(path: &Path, sql: &str) -> Result<()> {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut db = sqlx::SqliteConnection::connect_with(&options).await?;
    sqlx::raw_sql(sql).execute(&mut db).await?;
    db.close().await?;
    Ok(())
}

fn spawn(bin: &Path, dir: &Path, args: &[&str], log: &str) -> Result<Child> {
    Ok(Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("DRIFTLESS_API_TOKENS", TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log))?)
        .spawn()?)
}

fn stop(children: &mut [Child]) {
    for c in children.iter() {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// What one measurement sends.
#[derive(Debug, Clone, Copy)]
enum Probe {
    Healthz,
    Status,
    Create,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Healthz => "GET /healthz",
            Probe::Status => "GET /v1/status",
            Probe::Create => "POST /v1/runs",
        }
    }

    fn request(self, client: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
        let auth = format!("Bearer {TOKEN}");
        match self {
            Probe::Healthz => client.get(format!("{base}/healthz")),
            Probe::Status => client.get(format!("{base}/v1/status")).header("Authorization", auth),
            Probe::Create => client
                .post(format!("{base}/v1/runs"))
                .header("Authorization", auth)
                .header("Content-Type", "application/json")
                .body(r#"{"mode": "scan", "dataset": "d0"}"#),
        }
    }
}

/// Requests per second of `probe` from `clients` clients over `seconds`.
async fn rate(probe: Probe, base: &str, clients: usize, seconds: u64) -> Result<f64> {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, base) = (client.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let status = probe.request(&client, &base).send().await?.status();
                if !status.is_success() {
                    bail!("{} answered {status}", probe.name());
                }
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn api_rates(args: &Args, bin: &Path) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = vec![spawn(
        bin,
        &args.work_dir,
        &["serve", "--listen", &listen],
        "serve.log",
    )?];
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        if Instant::now() > deadline {
            bail!("serve never answered; see {}/serve.log", args.work_dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "API: {} clients, {} s a measurement, {} datasets x 3 stages, load {}",
        args.clients,
        args.seconds,
        args.datasets,
        driftless_benches::measure::load_average()
    );
    let (mut status_ratio, mut create_ratio) = (Vec::new(), Vec::new());
    let (mut status, mut create) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let health = rate(Probe::Healthz, &base, args.clients, args.seconds).await?;
        let s = rate(Probe::Status, &base, args.clients, args.seconds).await?;
        let c = rate(Probe::Create, &base, args.clients, args.seconds).await?;
        println!(
            "  round {run}: healthz {health:.0}/s, status {s:.0}/s ({:.3}), create {c:.0}/s ({:.3})",
            s / health,
            c / health
        );
        status_ratio.push(s / health);
        create_ratio.push(c / health);
        status.push(s);
        create.push(c);
    }
    println!(
        "API medians: GET /v1/status {:.0}/s (x{:.3} of /healthz), POST /v1/runs {:.0}/s (x{:.3} of /healthz)",
        median(status),
        median(status_ratio),
        median(create),
        median(create_ratio)
    );
    stop(&mut serve);
    Ok(())
}

async fn commits(control: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(CONTROL_DB)
            .fetch_one(control)
            .await?,
    )
}

async fn ticks(control: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM schedule_ticks")
        .fetch_one(control)
        .await?)
}

/// Transactions the five workers commit in `seconds`, and the ticks claimed meanwhile.
async fn watch(args: &Args, bin: &Path, control: &PgPool) -> Result<(i64, i64)> {
    let mut workers: Vec<Child> = (0..5)
        .map(|n| {
            spawn(
                bin,
                &args.work_dir,
                &["worker", "--roles", "schedule"],
                &format!("worker-{n}.log"),
            )
        })
        .collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Cumulative statistics are flushed about once a second: wait past a flush on each end.
    let (c0, t0) = (commits(control).await?, ticks(control).await?);
    tokio::time::sleep(Duration::from_secs(args.schedule_seconds)).await;
    let (c1, t1) = (commits(control).await?, ticks(control).await?);
    stop(&mut workers);
    Ok((c1 - c0, t1 - t0))
}

async fn scheduler_load(args: &Args, bin: &Path, control: &PgPool, control_url: &str) -> Result<()> {
    println!(
        "scheduler: 5 workers --roles schedule, {} s a measurement",
        args.schedule_seconds
    );
    let (mut per_tick, mut beats) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        world(&args.work_dir, args.datasets, control_url, false).await?;
        let (idle, _) = watch(args, bin, control).await?;
        world(&args.work_dir, args.datasets, control_url, true).await?;
        let (busy, claimed) = watch(args, bin, control).await?;
        if claimed == 0 {
            bail!("no tick was claimed in {} s", args.schedule_seconds);
        }
        let scheduling = (busy - idle) as f64 / claimed as f64;
        println!(
            "  round {run}: {claimed} ticks, {busy} transactions ({idle} with heartbeats alone): {scheduling:.1} per tick"
        );
        per_tick.push(scheduling);
        beats.push(idle as f64 / args.schedule_seconds as f64);
    }
    println!(
        "scheduler medians: {:.1} control-plane transactions per tick for 5 workers (heartbeats alone: {:.1}/s)",
        median(per_tick),
        median(beats)
    );
    Ok(())
}
