//! From a copy's URL to the store that reads it. The one place that knows every kind of
//! store; the engine sees only `dyn Store`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use driftless_control::ControlPlane;
use driftless_store::Store;
use driftless_store_fs::FsStore;
use driftless_store_postgres::PgStore;
use driftless_store_sqlite::SqliteStore;

use crate::config::{CopyConfig, Loaded};

/// Opens one copy, for writing when `writable` (a stage `repair` may write). `what` names it
/// in errors (`dataset "x", stage "y"`).
pub async fn open_copy(copy: &CopyConfig, loaded: &Loaded, what: &str, writable: bool) -> Result<Arc<dyn Store>> {
    let url = copy.url.get_ref();
    let at = loaded.at(copy.url.span());
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
            Arc::new(FsStore::open(&url).map_err(|e| anyhow::anyhow!("{what}: {e}"))?)
        }
        "postgres" | "postgresql" => {
            let table = needs_table(&copy.table)?;
            let opened = PgStore::open(url, &table)
                .await
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            Arc::new(if writable { opened.for_writing() } else { opened })
        }
        "s3" => bail!("{at}: {what}: S3 copies are not built yet (SQLite, PostgreSQL and file:// copies are)"),
        other => bail!("{at}: {what}: unsupported URL scheme {other:?} (expected sqlite, postgres or file)"),
    };
    if copy.endpoint.is_some() && scheme != "s3" {
        bail!("{at}: {what}: `endpoint` applies to s3:// copies only");
    }
    Ok(store)
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
