//! From a copy's URL to the store that reads it. The one place that knows every kind of
//! store; the engine sees only `dyn Store`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use driftless_control::ControlPlane;
use driftless_core::RowHasher;
use driftless_store::{CompareMode, Store};
use driftless_store_fs::FsStore;
use driftless_store_postgres::PgStore;
use driftless_store_s3::{S3Options, S3Store};
use driftless_store_sqlite::SqliteStore;

use crate::config::{CopyConfig, Dataset, Loaded};

/// Opens one copy of `dataset`, for writing when `writable` (a stage `repair` may write).
/// `what` names it in errors (`dataset "x", stage "y"`).
pub async fn open_copy(
    copy: &CopyConfig,
    dataset: &Dataset,
    loaded: &Loaded,
    what: &str,
    writable: bool,
) -> Result<Arc<dyn Store>> {
    let url = copy.url.get_ref();
    let at = loaded.at(copy.url.span());
    let compare = compare_mode(copy, dataset, loaded, what)?;
    let Some((scheme, rest)) = url.split_once(':') else {
        bail!(
            "{at}: {what}: url {:?} is not a URL (expected sqlite://, file://, ...)",
            redacted(url)
        );
    };
    let needs_table = |table: &Option<String>| match table {
        Some(t) => Ok(t.clone()),
        None => bail!("{at}: {what}: a SQL copy needs `table`"),
    };
    let no_table = |kind: &str| match &copy.table {
        Some(_) => bail!("{at}: {what}: `table` does not apply to a {kind} copy"),
        None => Ok(()),
    };
    let store: Arc<dyn Store> = match scheme {
        "sqlite" => {
            let table = needs_table(&copy.table)?;
            let url = resolve_sqlite(rest, &loaded.dir);
            let opened = if writable {
                SqliteStore::open_writable(&url, &table).await
            } else {
                SqliteStore::open(&url, &table).await
            };
            Arc::new(opened.map_err(|e| anyhow::anyhow!("{what}: {e}"))?)
        }
        "file" => {
            no_table("directory")?;
            let url = resolve_file(rest, &loaded.dir);
            let opened = FsStore::open_with(&url, compare).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            Arc::new(if writable { opened.for_writing() } else { opened })
        }
        "postgres" | "postgresql" => {
            let table = needs_table(&copy.table)?;
            let opened = PgStore::open(url, &table)
                .await
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            Arc::new(if writable { opened.for_writing() } else { opened })
        }
        "s3" => {
            no_table("S3")?;
            let options = S3Options {
                endpoint: copy.endpoint.clone(),
                region: copy.region.clone(),
                path_style: copy.path_style.unwrap_or(copy.endpoint.is_some()),
                compare,
                access_key_id: copy.access_key_id.clone(),
                secret_access_key: copy.secret_access_key.clone(),
                hasher: Some(RowHasher::new(
                    loaded.config.digest.algorithm,
                    loaded.config.digest.seed,
                )),
            };
            let opened = S3Store::open(url, options)
                .await
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            Arc::new(if writable { opened.for_writing() } else { opened })
        }
        other => bail!("{at}: {what}: unsupported URL scheme {other:?} (expected sqlite, postgres, file or s3)"),
    };
    let s3_only = [
        ("endpoint", copy.endpoint.is_some()),
        ("region", copy.region.is_some()),
        ("path_style", copy.path_style.is_some()),
        ("access_key_id", copy.access_key_id.is_some()),
        ("secret_access_key", copy.secret_access_key.is_some()),
    ];
    if let Some((field, _)) = s3_only.iter().find(|(_, set)| *set)
        && scheme != "s3"
    {
        bail!("{at}: {what}: `{field}` applies to s3:// copies only");
    }
    if copy.access_key_id.is_some() != copy.secret_access_key.is_some() {
        bail!("{at}: {what}: `access_key_id` and `secret_access_key` go together");
    }
    Ok(store)
}

/// The copy's compare mode: its own, else its dataset's, else `etag` when a copy of the
/// dataset is on S3 and `content` otherwise. SQL copies take none.
fn compare_mode(copy: &CopyConfig, dataset: &Dataset, loaded: &Loaded, what: &str) -> Result<CompareMode> {
    let is_object = |c: &CopyConfig| {
        let url = c.url.get_ref();
        url.starts_with("s3:") || url.starts_with("file:")
    };
    if let Some(own) = &copy.compare
        && !is_object(copy)
    {
        bail!(
            "{}: {what}: `compare` applies to object copies (s3://, file:) only",
            loaded.at(own.span())
        );
    }
    let chosen = copy.compare.as_ref().or(dataset.compare.as_ref());
    match chosen {
        Some(c) => CompareMode::parse(c.get_ref()).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: {what}: compare = {:?} is not one of \"etag\", \"checksum\", \"content\"",
                loaded.at(c.span()),
                c.get_ref()
            )
        }),
        None => {
            let on_s3 = std::iter::once(&dataset.canonical)
                .chain(&dataset.stages)
                .any(|c| c.url.get_ref().starts_with("s3:"));
            Ok(if on_s3 { CompareMode::Etag } else { CompareMode::Content })
        }
    }
}

/// `sqlite://rel.db` resolved against the config's directory; absolute paths and in-memory
/// databases are left as they are.
pub fn resolve_sqlite(rest: &str, dir: &Path) -> String {
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (rest, String::new()),
    };
    if path.starts_with('/') || path.starts_with(":memory:") {
        return format!("sqlite://{path}{query}");
    }
    format!("sqlite://{}{query}", absolute(&dir.join(path)).display())
}

/// The control plane: `[control] url`, by default `sqlite://driftless.db` next to the config.
pub async fn open_control(loaded: &Loaded) -> Result<ControlPlane> {
    let (url, at) = match &loaded.config.control {
        Some(c) => (c.url.get_ref().clone(), loaded.at(c.url.span())),
        None => (DEFAULT_CONTROL_URL.to_owned(), loaded.path.display().to_string()),
    };
    let url = match url.split_once(':') {
        Some(("sqlite", rest)) => resolve_sqlite(rest, &loaded.dir),
        _ => url,
    };
    ControlPlane::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{at}: [control]: {e}"))
}

/// Where the control plane lives when the config does not say.
const DEFAULT_CONTROL_URL: &str = "sqlite://driftless.db";

/// `file:rel/dir` or `file://rel/dir` resolved against the config's directory.
fn resolve_file(rest: &str, dir: &Path) -> String {
    if rest.starts_with("///") {
        return format!("file:{rest}");
    }
    let path = rest.strip_prefix("//").unwrap_or(rest);
    match url::Url::from_directory_path(absolute(&dir.join(path))) {
        Ok(u) => u.to_string(),
        Err(()) => format!("file:{rest}"),
    }
}

fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn redacted(url: &str) -> String {
    driftless_store::redact_url(url)
}
