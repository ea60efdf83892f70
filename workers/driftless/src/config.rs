//! The TOML config file: what datasets exist, where each copy lives.
//!
//! Every table rejects unknown fields, so a typo is an error, not a silently ignored line.
//! String values may contain `${ENV_VAR}`, replaced from the environment after parsing, so
//! secrets stay out of the file. Every error names the file and the line.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use driftless_core::DigestAlgorithm;
use serde::Deserialize;
use toml::Spanned;

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
    /// The S3 endpoint, for S3-compatible servers.
    #[serde(default)]
    pub endpoint: Option<String>,
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
struct Source<'a> {
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
    Ok(())
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
