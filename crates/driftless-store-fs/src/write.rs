//! Conditional writes to a directory copy, one file at a time.
//!
//! A put streams canonical's bytes into a temporary file in the target's own folder
//! (`.<name>.driftless-tmp-<pid>-<n>`, which listings skip), syncs it, checks that the
//! target still is what detection saw, and renames it over the target, then syncs the
//! folder: a reader sees the old file or the new one, never part of one, and a crash leaves
//! at most a temporary file. A delete checks, then removes. The check and the rename are
//! two steps (POSIX has no compare-and-swap of a file), so a write that lands between them
//! is overwritten; the window is one `stat` and one hash of the target.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use driftless_core::{Aggregate, Key};
use driftless_store::object::SourceRef;
use driftless_store::{StoreError, WriteAction, WriteOp, WriteResult};

use crate::digest::Job;
use crate::listing::{TEMP_MARK, entry_at, relative_path};
use crate::tasks::blocking;

/// Numbers this process's temporary files, so concurrent writes never share one.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// One conditional op.
pub(crate) async fn apply_one(job: &Job, op: &WriteOp) -> WriteResult {
    match try_apply(job, op).await {
        Ok(result) => result,
        Err(e) => WriteResult::Failed(e.to_string()),
    }
}

async fn try_apply(job: &Job, op: &WriteOp) -> Result<WriteResult, StoreError> {
    let rel = driftless_store::object::key_path(&job.location, &op.key)?;
    let path = match relative_path(&rel) {
        Ok(p) => job.root.join(p),
        Err(reason) => return Ok(WriteResult::Failed(reason)),
    };
    let now = current(job, &op.key, &rel).await?;
    if now != op.seen {
        return Ok(WriteResult::Changed(now));
    }
    match &op.action {
        WriteAction::PutObject(source) => put(job, op, &rel, &path, source).await,
        WriteAction::Delete => {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(write_error(job, &rel, &e)),
            }
            Ok(WriteResult::Applied)
        }
        WriteAction::Put(_) | WriteAction::Statement { .. } => Ok(WriteResult::Failed(
            "a directory copy takes object writes only: its canonical copy must be an object copy".into(),
        )),
    }
}

/// What the key holds now: the aggregate of its row as a scan digests it.
async fn current(job: &Job, key: &Key, rel: &str) -> Result<Aggregate, StoreError> {
    let (job, key, rel) = (job.clone(), key.clone(), rel.to_owned());
    let location = job.location.clone();
    blocking(&location, move || {
        let entry = entry_at(&job.root, &key, &rel).map_err(|e| write_error(&job, &rel, &e))?;
        let mut agg = Aggregate::default();
        for (_, digest) in job.digest_entries(entry.as_slice())? {
            agg.add(digest);
        }
        Ok(agg)
    })
    .await
}

async fn put(job: &Job, op: &WriteOp, rel: &str, path: &Path, source: &SourceRef) -> Result<WriteResult, StoreError> {
    let Some((_, mut reader)) = source.0.open_object(rel).await? else {
        return Ok(WriteResult::Failed(format!(
            "{rel}: the canonical copy no longer holds it; the next attempt deletes it"
        )));
    };
    let dir = path.parent().unwrap_or(&job.root).to_path_buf();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| write_error(job, rel, &e))?;
    let temp = temp_path(&dir, path);
    let written = async {
        let mut file = tokio::fs::File::create(&temp).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.sync_all().await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(write_error(job, rel, &e));
    }
    let now = current(job, &op.key, rel).await?;
    if now != op.seen {
        let _ = tokio::fs::remove_file(&temp).await;
        return Ok(WriteResult::Changed(now));
    }
    if let Err(e) = tokio::fs::rename(&temp, path).await {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(write_error(job, rel, &e));
    }
    // The rename is durable once the folder is synced.
    if let Ok(d) = tokio::fs::File::open(&dir).await {
        let _ = d.sync_all().await;
    }
    Ok(WriteResult::Applied)
}

/// A temporary file beside `path`.
fn temp_path(dir: &Path, path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    // Long names are cut so the temporary name stays within a file system's name limit.
    let short: String = name.chars().take(100).collect();
    dir.join(format!(".{short}{TEMP_MARK}{}-{n}", std::process::id()))
}

fn write_error(job: &Job, rel: &str, e: &io::Error) -> StoreError {
    StoreError::Read {
        location: job.location.to_string(),
        reason: format!("{rel}: writing: {e}"),
    }
}
