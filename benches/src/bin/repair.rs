//! Repair throughput against PostgreSQL: `driftless repair` of 100,000 divergent keys, at a
//! configured rate (does the pacer hold it?) and unthrottled (how fast can it go?).
//!
//! Needs a PostgreSQL server in `DATABASE_URL` (a superuser: the harness creates
//! databases); `scripts/with-postgres` provides one:
//!
//! ```sh
//! cargo build --release -p driftless
//! scripts/with-postgres cargo run --release -p driftless-benches --bin driftless-repair-bench
//! ```
//!
//! The canonical copy is `items(id bigint primary key, tenant int, amount numeric(12,2),
//! status text, updated_at timestamptz, payload text)` with 200,000 rows, made inside the
//! server; the stage is the same with every other row changed (100,000 divergent keys).
//! Before each run the stage is recreated from a template database and the control plane
//! is a fresh database, so every run repairs the same 100,000 keys. The control plane is in
//! PostgreSQL too, as in a fleet.
//!
//! The repair rate is read from the ledger: repairs settled, over the time from the first
//! settlement to the last. Wall time also counts start-up, the digest of both copies and the
//! detection of the divergent keys.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use driftless_benches::measure::{Runner, Sample, load_average, secs};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

/// Rows in the canonical copy.
const ROWS: i64 = 200_000;
/// Divergent keys in the stage (every other row).
const DIVERGENT: i64 = ROWS / 2;
const CANONICAL_DB: &str = "bench_repair_canonical";
const TEMPLATE_DB: &str = "bench_repair_stage_template";
const STAGE_DB: &str = "bench_repair_stage";
const CONTROL_DB: &str = "bench_repair_control";

#[derive(Debug, Parser)]
#[command(about = "Times driftless repair of 100,000 divergent keys against PostgreSQL")]
struct Args {
    /// The driftless binary (default: target/release/driftless of this workspace).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Timed runs per rate.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The configured rate, writes per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Keys leased and written per transaction (`[repair] batch_keys`).
    #[arg(long, default_value_t = 64)]
    batch_keys: u64,
    /// Skip the throttled runs.
    #[arg(long)]
    unthrottled_only: bool,
}

/// One timed run.
#[derive(Debug)]
struct Measured {
    sample: Sample,
    /// Repairs settled per second, first settlement to last.
    rate: f64,
    /// Seconds from the first settlement to the last.
    repair_secs: f64,
}

fn database(url: &str, name: &str) -> Result<String> {
    let mut u = url::Url::parse(url).context("DATABASE_URL is not a URL")?;
    u.set_path(name);
    Ok(u.to_string())
}

async fn connect(url: &str) -> Result<PgPool> {
    Ok(PgPoolOptions::new().max_connections(2).connect(url).await?)
}

async fn recreate(admin: &PgPool, name: &str, template: Option<&str>) -> Result<()> {
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    let create = match template {
        Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
        None => format!("CREATE DATABASE {name}"),
    };
    admin.execute(create.as_str()).await?;
    Ok(())
}

const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY, tenant int, amount numeric(12,2), status text, \
     updated_at timestamptz, payload text);
     INSERT INTO items SELECT i, i % 97, (i % 100000) / 100.0, 'ok',
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second', md5(i::text) || md5((i * 7)::text)
     FROM generate_series(1, 200000) i";

async fn build(url: &str) -> Result<()> {
    let admin = connect(url).await?;
    eprintln!("building {ROWS} canonical rows and a stage with {DIVERGENT} divergent keys");
    recreate(&admin, CANONICAL_DB, None).await?;
    recreate(&admin, TEMPLATE_DB, None).await?;
    for name in [CANONICAL_DB, TEMPLATE_DB] {
        let pool = connect(&database(url, name)?).await?;
        sqlx::raw_sql(ITEMS).execute(&pool).await?;
        if name == TEMPLATE_DB {
            sqlx::raw_sql("UPDATE items SET status = 'drifted', amount = amount + 1 WHERE id % 2 = 0")
                .execute(&pool)
                .await?;
        }
        // VACUUM runs outside any transaction, so on its own.
        pool.execute("VACUUM ANALYZE items").await?;
        pool.close().await;
    }
    Ok(())
}

async fn run_once(runner: &Runner, bin: &std::path::Path, url: &str, rate: f64, batch: u64) -> Result<Measured> {
    let admin = connect(url).await?;
    recreate(&admin, STAGE_DB, Some(TEMPLATE_DB)).await?;
    recreate(&admin, CONTROL_DB, None).await?;
    admin.close().await;
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[control]\nurl = {:?}\n\n[repair]\nbatch_keys = {batch}\nhigh_watermark = 1000000\n\n\
         [[datasets]]\nname = \"items\"\nrepair = {{ rate_per_sec = {rate:.1}, burst = 100, max_divergence_ratio = 1.0 }}\n\
         canonical = {{ url = {:?}, table = \"items\" }}\n\
         stages = [ {{ name = \"stage\", url = {:?}, table = \"items\" }} ]\n",
        database(url, CONTROL_DB)?,
        database(url, CANONICAL_DB)?,
        database(url, STAGE_DB)?,
    );
    std::fs::write(dir.path().join("driftless.toml"), config)?;
    let sample = runner.run(bin, &["repair", "--report", "json"], dir.path())?;
    if sample.code != Some(0) {
        bail!("repair exited {:?}: {}", sample.code, sample.stderr);
    }
    let report: serde_json::Value = serde_json::from_str(&sample.stdout).context("report is not JSON")?;
    let repaired = report["datasets"][0]["stages"][0]["repaired"].as_i64().unwrap_or(-1);
    if repaired != DIVERGENT {
        bail!("repaired {repaired} of {DIVERGENT} keys");
    }
    let control = connect(&database(url, CONTROL_DB)?).await?;
    let (n, first, last): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), min(applied_us), max(applied_us) FROM repairs WHERE outcome = 'applied' AND applications = 1",
    )
    .fetch_one(&control)
    .await?;
    control.close().await;
    if n != DIVERGENT {
        bail!("the ledger holds {n} applied repairs, not {DIVERGENT}");
    }
    let repair_secs = (last - first) as f64 / 1e6;
    Ok(Measured {
        sample,
        rate: n as f64 / repair_secs.max(1e-9),
        repair_secs,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set; run under scripts/with-postgres")?;
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/driftless"));
    if !bin.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p driftless`",
            bin.display()
        );
    }
    build(&url).await?;
    let scratch = tempfile::tempdir()?;
    let runner = Runner::new(scratch.path());
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    if !args.unthrottled_only {
        rates.push(("configured", args.rate));
    }
    rates.push(("unthrottled", 1e9));
    for (label, rate) in rates {
        let mut runs = Vec::new();
        for i in 0..args.runs {
            let m = run_once(&runner, &bin, &url, rate, args.batch_keys).await?;
            eprintln!(
                "{label} run {}: {:.0} repairs/s over {:.2} s, wall {}, load {}",
                i + 1,
                m.rate,
                m.repair_secs,
                secs(m.sample.wall),
                load_average()
            );
            runs.push(m);
        }
        let med = |f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        rows.push(format!(
            "| {label} | {} | {:.0} /s | {} | {:.2} s | {} | {:.2} s | {} MiB |",
            if rate >= 1e9 {
                "none".into()
            } else {
                format!("{rate:.0} /s")
            },
            med(&|m| m.rate),
            if rate >= 1e9 {
                "–".to_owned()
            } else {
                format!("{:+.1}%", (med(&|m| m.rate) / rate - 1.0) * 100.0)
            },
            med(&|m| m.repair_secs),
            secs(Duration::from_secs_f64(med(&|m| m.sample.wall.as_secs_f64()))),
            med(&|m| m.sample.cpu.map_or(f64::NAN, |c| c.as_secs_f64())),
            med(&|m| m.sample.peak_rss_kib.map_or(f64::NAN, |k| k as f64 / 1024.0)).round(),
        ));
    }
    println!(
        "| runs | configured rate | median repair rate | vs configured | median repair phase | median wall | median CPU | median peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
