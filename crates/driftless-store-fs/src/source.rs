//! A directory copy as the source of object repairs: its files' bytes, streamed.

use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use driftless_store::StoreError;
use driftless_store::object::{ObjectReader, ObjectSource};

use crate::listing::relative_path;

/// Reads the files of one directory copy.
#[derive(Debug)]
pub(crate) struct FsSource {
    location: Arc<str>,
    root: Arc<Path>,
}

impl FsSource {
    pub(crate) fn new(location: Arc<str>, root: Arc<Path>) -> FsSource {
        FsSource { location, root }
    }

    fn read_error(&self, key: &str, e: &io::Error) -> StoreError {
        StoreError::Read {
            location: self.location.to_string(),
            reason: format!("{key}: {e}"),
        }
    }
}

#[async_trait]
impl ObjectSource for FsSource {
    async fn open_object(&self, key: &str) -> Result<Option<(u64, ObjectReader)>, StoreError> {
        let Ok(rel) = relative_path(key) else { return Ok(None) };
        let path = self.root.join(rel);
        let meta = match tokio::fs::symlink_metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.read_error(key, &e)),
        };
        // A symlink's content is its target path, as the directory store digests it.
        if meta.file_type().is_symlink() {
            let target = tokio::fs::read_link(&path)
                .await
                .map_err(|e| self.read_error(key, &e))?;
            let bytes = target.into_os_string().into_encoded_bytes();
            return Ok(Some((bytes.len() as u64, Box::new(io::Cursor::new(bytes)))));
        }
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Some((meta.len(), Box::new(file)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.read_error(key, &e)),
        }
    }
}
