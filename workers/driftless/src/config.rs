//! The TOML config file: what datasets exist, where each copy lives.
//!
//! Every table rejects unknown fields, so a typo is an error, not a silently ignored line.
//! String values may contain `${ENV_VAR}`, replaced from the environment after parsing, so
//! secrets stay out of the file. Every error names the file and the line.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use driftless_control::Backoff;
use driftless_core::{DigestAlgorithm, DivergenceKind};
use driftless_engine::{PaceConfig, RepairMode, RepairSettings, StagePolicy};
use serde::Deserialize;
use toml::Spanned;

use crate::schedule_config::{self, Schedule, ScheduleConfig};
pub use crate::serve_config::ServeConfig;

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where fleet state lives; default `sqlite://driftless.db` next to the config file.
    #[serde(default)]
    pub control: Option<Control>,
    /// How rows are digested.
    #[serde(default)]
    pub digest: DigestConfig,
    /// Run-wide repair settings.
    #[serde(default)]
    pub repair: RepairConfig,
    /// Divergences (and planned writes) a report lists per stage; the counts are always
    /// whole. Default 1000.
    #[serde(default)]
    pub report_limit: Option<usize>,
    /// The HTTP API of `serve` and `worker --listen`.
    #[serde(default)]
    pub serve: ServeConfig,
    /// The datasets, in the order reports list them.
    #[serde(default)]
    pub datasets: Vec<Dataset>,
}

/// The `[control]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// `sqlite://file.db` (default, next to the config) or `postgres://...`.
    pub url: Spanned<String>,
}

/// The `[digest]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestConfig {
    /// `xxh3` (default, fast) or `blake3` (cryptographic, tamper-evident).
    #[serde(default)]
    pub algorithm: DigestAlgorithm,
    /// Seed of the row hash; every copy of a run uses the same. Default 0.
    #[serde(default)]
    pub seed: u64,
}

/// The `[repair]` table: settings of the repair machinery, the same for every stage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairConfig {
    /// How long a repairer owns a leased entry before another may take it. Default 60.
    pub lease_secs: Option<Spanned<u64>>,
    /// Entries leased and written per stage transaction. Default 64.
    pub batch_keys: Option<Spanned<u64>>,
    /// Failed attempts after which an entry is parked as dead. Default 5.
    pub max_attempts: Option<Spanned<u32>>,
    /// Delay after a first failure; it doubles per failure. Default 200.
    pub backoff_base_ms: Option<u64>,
    /// The longest delay between attempts. Default 30000.
    pub backoff_max_ms: Option<u64>,
    /// A stage's queue depth (this run's unrepaired entries) at which detection pauses
    /// while its repairer drains. Default 100000.
    pub high_watermark: Option<Spanned<u64>>,
    /// The depth under which paused detection resumes. Default 50000.
    pub low_watermark: Option<Spanned<u64>>,
    /// After Ctrl-C or SIGTERM, how long a batch in flight may take to finish before it is
    /// abandoned (its ledger intent and lease let the next run finish it). Default 30.
    pub shutdown_secs: Option<u64>,
}

/// A dataset's or a stage's `repair` table; a stage's fields override its dataset's.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairPolicyConfig {
    /// `overwrite` (default), `compensate` or `report`.
    pub mode: Option<Spanned<String>>,
    /// Writes per second to the stage. Default 1000.
    pub rate_per_sec: Option<Spanned<f64>>,
    /// Writes allowed at once after an idle spell. Default 100.
    pub burst: Option<Spanned<u32>>,
    /// Above this many divergent keys, nothing is written without `--approve`.
    pub max_repairs: Option<u64>,
    /// Above this share of divergent keys (of the keys in either copy), nothing is written
    /// without `--approve`. Default 0.1; 1.0 never holds on the ratio.
    pub max_divergence_ratio: Option<Spanned<f64>>,
    /// A write slower than this counts as congestion and slows the rate (AIMD).
    pub latency_target_ms: Option<u64>,
    /// Compensating statements per divergence kind, for mode `compensate`.
    pub compensate: Option<Spanned<CompensateConfig>>,
}

/// Compensating statements: SQL run in the stage, with `:repair_id`, `:kind` and column
/// names as bound parameters.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensateConfig {
    /// For a key canonical has and the stage lacks.
    pub missing: Option<String>,
    /// For a key the stage has and canonical lacks.
    pub extra: Option<String>,
    /// For a key whose values differ.
    pub changed: Option<String>,
    /// For a row repeating a commit (or a key the stage holds twice).
    pub duplicate: Option<String>,
}

/// One `[[datasets]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Unique name, used by `--dataset` and in reports.
    pub name: Spanned<String>,
    /// Key columns of SQL copies; omitted for object stores and for tables whose primary key
    /// is the key.
    #[serde(default)]
    pub key: Vec<String>,
    /// Compared columns; default every non-key column.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Columns holding a commit id: stage rows repeating one are `duplicate` commits.
    #[serde(default)]
    pub dedupe_key: Vec<String>,
    /// The column holding each row's change time (for `repair --since`).
    #[serde(default)]
    pub changed_column: Option<String>,
    /// How `repair` treats this dataset's stages.
    #[serde(default)]
    pub repair: Option<Spanned<RepairPolicyConfig>>,
    /// How object copies (S3, directories) compare: `etag`, `checksum` or `content`.
    /// Default `etag` when a copy is on S3, `content` otherwise. Overridable per copy.
    #[serde(default)]
    pub compare: Option<Spanned<String>>,
    /// When the fleet's `schedule` workers start runs of this dataset.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// Maintenance windows of every stage, in the schedule's time zone (UTC without one).
    #[serde(default)]
    pub blackout: Vec<Spanned<String>>,
    /// The canonical copy.
    pub canonical: CopyConfig,
    /// The stages, in channel order; each needs a `name`.
    #[serde(default)]
    pub stages: Vec<CopyConfig>,
}

/// Where one copy lives: the canonical copy or a stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    /// The stage's name, unique within the dataset; used by `--stage` and in reports.
    /// Required for stages, not allowed on the canonical copy.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// `sqlite://path.db`, `file:///dir` (relative paths are relative to the config file),
    /// later `postgres://...` and `s3://bucket/prefix/`.
    pub url: Spanned<String>,
    /// The table, for SQL copies.
    #[serde(default)]
    pub table: Option<String>,
    /// The S3 endpoint, for S3-compatible servers (`http://127.0.0.1:9000` works).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The S3 region; default the AWS chain's, then `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// S3 path-style addressing (`endpoint/bucket/key`); default true with an `endpoint`.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// S3 credentials, usually `${ENV}`; default the standard AWS chain (environment,
    /// profile, web identity). Never printed.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret of `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// This copy's compare mode, over its dataset's (object copies only).
    #[serde(default)]
    pub compare: Option<Spanned<String>>,
    /// This stage's repair settings, over its dataset's. Not allowed on canonical.
    #[serde(default)]
    pub repair: Option<Spanned<RepairPolicyConfig>>,
    /// This stage's maintenance windows, besides its dataset's. Not allowed on canonical.
    #[serde(default)]
    pub blackout: Vec<Spanned<String>>,
}

/// A config file read and checked, with what is needed to point errors at lines.
#[derive(Debug)]
pub struct Loaded {
    /// The parsed config, with `${VAR}` replaced.
    pub config: Config,
    /// The file it came from.
    pub path: PathBuf,
    /// The directory relative copy paths are resolved against.
    pub dir: PathBuf,
    text: String,
}

impl Loaded {
    /// The file, for resolving policies with line numbers.
    pub fn source(&self) -> Source<'_> {
        Source {
            path: &self.path,
            text: &self.text,
        }
    }

    /// Hex BLAKE3 of the file's bytes, recorded with every run.
    pub fn digest(&self) -> String {
        blake3::hash(self.text.as_bytes()).to_hex().to_string()
    }

    /// `path:line` of a byte span in the file.
    pub fn at(&self, span: Range<usize>) -> String {
        Source {
            path: &self.path,
            text: &self.text,
        }
        .at(span)
    }
}

/// The file being loaded, for error positions.
pub struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, span: Range<usize>) -> String {
        let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
        format!("{}:{line}", self.path.display())
    }
}

/// Reads, parses and checks the config at `path`.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let source = Source { path, text: &text };
    let mut config: Config = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or_else(|| path.display().to_string(), |s| source.at(s));
        anyhow::anyhow!("config file {at}: {}", e.message().trim_end())
    })?;
    substitute_env(&mut config, &source)?;
    check(&config, &source)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        dir,
        text,
    })
}

/// Replaces `${VAR}` in every URL and endpoint.
fn substitute_env(config: &mut Config, loaded: &Source<'_>) -> Result<()> {
    let mut copies: Vec<(&mut CopyConfig, String)> = Vec::new();
    for d in &mut config.datasets {
        copies.push((&mut d.canonical, format!("dataset {:?}, canonical", d.name.get_ref())));
        for s in &mut d.stages {
            let what = format!("dataset {:?}, stage {:?}", d.name.get_ref(), s.stage_name());
            copies.push((s, what));
        }
    }
    if let Some(control) = &mut config.control {
        let span = control.url.span();
        let value =
            expand(control.url.get_ref()).with_context(|| format!("{}: [control] url", loaded.at(span.clone())))?;
        control.url = Spanned::new(span, value);
    }
    for (copy, what) in copies {
        let span = copy.url.span();
        let value = expand(copy.url.get_ref()).with_context(|| format!("{}: {what}: url", loaded.at(span.clone())))?;
        copy.url = Spanned::new(span.clone(), value);
        if let Some(e) = &copy.endpoint {
            copy.endpoint = Some(expand(e).with_context(|| format!("{}: {what}: endpoint", loaded.at(span)))?);
        }
    }
    Ok(())
}

/// `${NAME}` replaced by the environment variable `NAME`; an unset variable is an error
/// naming it (its value would be a secret, so values are never printed).
pub fn expand(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            bail!("unclosed `${{` in value")
        };
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("`${{{name}}}` is not a valid environment variable reference");
        }
        let value = std::env::var(name).map_err(|_| anyhow::anyhow!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks what the types cannot: unique names, a table for SQL copies.
fn check(config: &Config, loaded: &Source<'_>) -> Result<()> {
    let mut names = HashSet::new();
    for d in &config.datasets {
        let name = d.name.get_ref();
        if !names.insert(name.as_str()) {
            bail!("{}: dataset {name:?} is defined twice", loaded.at(d.name.span()));
        }
        if let Some(n) = &d.canonical.name {
            bail!(
                "{}: dataset {name:?}: the canonical copy takes no `name`",
                loaded.at(n.span())
            );
        }
        if let Some(w) = d.canonical.blackout.first() {
            bail!(
                "{}: dataset {name:?}: the canonical copy is never repaired; `blackout` belongs to the dataset or a stage",
                loaded.at(w.span())
            );
        }
        d.schedule(loaded)?;
        if let Some(r) = &d.canonical.repair {
            bail!(
                "{}: dataset {name:?}: the canonical copy is never repaired; `repair` belongs to the dataset or a stage",
                loaded.at(r.span())
            );
        }
        let mut stages = HashSet::new();
        for s in &d.stages {
            let Some(stage) = &s.name else {
                bail!(
                    "{}: dataset {name:?}: every stage needs a `name`",
                    loaded.at(s.url.span())
                );
            };
            if !stages.insert(stage.get_ref().as_str()) {
                bail!(
                    "{}: dataset {name:?}: stage {:?} is defined twice",
                    loaded.at(stage.span()),
                    stage.get_ref()
                );
            }
        }
    }
    check_repair(config, loaded)?;
    Ok(())
}

/// Checks every `repair` table by resolving each stage's policy once, and the `[repair]`
/// table's watermarks.
fn check_repair(config: &Config, loaded: &Source<'_>) -> Result<()> {
    for d in &config.datasets {
        for s in &d.stages {
            d.policy(s, loaded)?;
        }
    }
    let r = &config.repair;
    let settings = config.repair_settings();
    if settings.low_watermark >= settings.high_watermark {
        let span = r
            .low_watermark
            .as_ref()
            .or(r.high_watermark.as_ref())
            .map(Spanned::span);
        bail!(
            "{}: [repair]: low_watermark ({}) must be below high_watermark ({})",
            span.map_or_else(|| loaded.path.display().to_string(), |s| loaded.at(s)),
            settings.low_watermark,
            settings.high_watermark
        );
    }
    for (field, value) in [
        ("lease_secs", &r.lease_secs),
        ("batch_keys", &r.batch_keys),
        ("high_watermark", &r.high_watermark),
    ] {
        if let Some(v) = value
            && *v.get_ref() == 0
        {
            bail!("{}: [repair]: {field} must be at least 1", loaded.at(v.span()));
        }
    }
    if let Some(v) = &r.max_attempts
        && *v.get_ref() == 0
    {
        bail!("{}: [repair]: max_attempts must be at least 1", loaded.at(v.span()));
    }
    Ok(())
}

impl Dataset {
    /// The repair policy of one of this dataset's stages: the stage's `repair` fields over
    /// the dataset's, over the defaults. Errors name the line.
    pub fn policy(&self, stage: &CopyConfig, loaded: &Source<'_>) -> Result<StagePolicy> {
        let (name, stage_name) = (self.name.get_ref(), stage.stage_name());
        let what = format!("dataset {name:?}, stage {stage_name:?}: repair");
        let none = RepairPolicyConfig::default();
        let d = self.repair.as_ref().map_or(&none, |r| r.get_ref());
        let s = stage.repair.as_ref().map_or(&none, |r| r.get_ref());
        let line = |span: Option<Range<usize>>| {
            span.or_else(|| stage.repair.as_ref().map(Spanned::span))
                .or_else(|| self.repair.as_ref().map(Spanned::span))
                .map_or_else(|| loaded.path.display().to_string(), |sp| loaded.at(sp))
        };
        let mut policy = StagePolicy::default();
        let rate = s.rate_per_sec.as_ref().or(d.rate_per_sec.as_ref());
        let burst = s.burst.as_ref().or(d.burst.as_ref());
        let burst_value = burst.map_or(driftless_engine::policy::DEFAULT_BURST, |b| *b.get_ref());
        let burst_nz = std::num::NonZeroU32::new(burst_value)
            .ok_or_else(|| anyhow::anyhow!("{}: {what}: burst must be at least 1", line(burst.map(Spanned::span))))?;
        policy.pace = PaceConfig::new(
            rate.map_or(driftless_engine::policy::DEFAULT_RATE_PER_SEC, |r| *r.get_ref()),
            burst_nz,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {what}: {}",
                line(rate.map(Spanned::span)),
                e.to_string().replace("rate ", "rate_per_sec ")
            )
        })?;
        if let Some(ms) = s.latency_target_ms.or(d.latency_target_ms) {
            policy.pace.latency_target = Some(std::time::Duration::from_millis(ms));
        }
        policy.max_repairs = s.max_repairs.or(d.max_repairs);
        if let Some(r) = s.max_divergence_ratio.as_ref().or(d.max_divergence_ratio.as_ref()) {
            let v = *r.get_ref();
            if !(v > 0.0 && v <= 1.0) {
                bail!(
                    "{}: {what}: max_divergence_ratio must be in (0, 1], got {v}",
                    line(Some(r.span()))
                );
            }
            policy.max_divergence_ratio = Some(v);
        }
        let compensate = s.compensate.as_ref().or(d.compensate.as_ref());
        let mode = s.mode.as_ref().or(d.mode.as_ref());
        policy.mode = match mode.map(|m| m.get_ref().as_str()) {
            None | Some("overwrite") => RepairMode::Overwrite,
            Some("report") => RepairMode::Report,
            Some("compensate") => {
                let Some(c) = compensate else {
                    bail!(
                        "{}: {what}: mode \"compensate\" needs a `compensate` table with a statement per kind \
                         (missing, extra, changed, duplicate)",
                        line(mode.map(Spanned::span))
                    );
                };
                let c = c.get_ref();
                let statements: std::collections::BTreeMap<DivergenceKind, String> = [
                    (DivergenceKind::Missing, &c.missing),
                    (DivergenceKind::Extra, &c.extra),
                    (DivergenceKind::Changed, &c.changed),
                    (DivergenceKind::Duplicate, &c.duplicate),
                ]
                .into_iter()
                .filter_map(|(k, sql)| sql.clone().map(|sql| (k, sql)))
                .collect();
                if statements.is_empty() {
                    bail!(
                        "{}: {what}: `compensate` has no statement",
                        line(compensate.map(Spanned::span))
                    );
                }
                RepairMode::Compensate(statements)
            }
            Some(other) => bail!(
                "{}: {what}: unknown mode {other:?} (expected overwrite, compensate or report)",
                line(mode.map(Spanned::span))
            ),
        };
        if let (Some(c), false) = (compensate, matches!(policy.mode, RepairMode::Compensate(_))) {
            bail!(
                "{}: {what}: `compensate` statements apply only with mode = \"compensate\"",
                line(Some(c.span()))
            );
        }
        let at = |span: Range<usize>| loaded.at(span);
        let tz = schedule_config::timezone(self.schedule.as_ref(), name, &at)?;
        let windows: Vec<&Spanned<String>> = self.blackout.iter().chain(&stage.blackout).collect();
        policy.blackout = schedule_config::blackouts(
            &windows,
            tz,
            &format!("dataset {name:?}, stage {stage_name:?}: blackout"),
            &at,
        )?;
        Ok(policy)
    }

    /// The dataset's schedule, checked; `None` without one.
    pub fn schedule(&self, loaded: &Source<'_>) -> Result<Option<Schedule>> {
        let at = |span: Range<usize>| loaded.at(span);
        self.schedule
            .as_ref()
            .map(|s| s.build(self.name.get_ref(), &at))
            .transpose()
    }
}

impl Config {
    /// How long work in flight may finish after a stop signal.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        self.repair
            .shutdown_secs
            .map_or(driftless_engine::worker::DEFAULT_GRACE, std::time::Duration::from_secs)
    }

    /// The run-wide repair settings, defaults filled in.
    pub fn repair_settings(&self) -> RepairSettings {
        let r = &self.repair;
        let d = RepairSettings::default();
        RepairSettings {
            lease_secs: r.lease_secs.as_ref().map_or(d.lease_secs, |v| *v.get_ref()),
            batch_keys: r.batch_keys.as_ref().map_or(d.batch_keys, |v| *v.get_ref() as usize),
            backoff: Backoff {
                base_ms: r.backoff_base_ms.unwrap_or(d.backoff.base_ms),
                max_ms: r.backoff_max_ms.unwrap_or(d.backoff.max_ms),
                max_attempts: r.max_attempts.as_ref().map_or(d.backoff.max_attempts, |v| *v.get_ref()),
            },
            high_watermark: r.high_watermark.as_ref().map_or(d.high_watermark, |v| *v.get_ref()),
            low_watermark: r.low_watermark.as_ref().map_or(
                r.high_watermark.as_ref().map_or(d.low_watermark, |h| *h.get_ref() / 2),
                |v| *v.get_ref(),
            ),
        }
    }
}

impl CopyConfig {
    /// The stage's name; empty for the canonical copy (checked at load).
    pub fn stage_name(&self) -> &str {
        self.name.as_ref().map_or("", |n| n.get_ref().as_str())
    }
}

impl Config {
    /// The datasets selected by `--dataset` (all when empty), erroring on unknown names.
    pub fn select<'c>(&'c self, names: &[String], loaded_path: &Path) -> Result<Vec<&'c Dataset>> {
        for n in names {
            if !self.datasets.iter().any(|d| d.name.get_ref() == n) {
                let known: Vec<&str> = self.datasets.iter().map(|d| d.name.get_ref().as_str()).collect();
                bail!(
                    "no dataset named {n:?} in {} (datasets: {})",
                    loaded_path.display(),
                    known.join(", ")
                );
            }
        }
        Ok(self
            .datasets
            .iter()
            .filter(|d| names.is_empty() || names.contains(d.name.get_ref()))
            .collect())
    }
}
