//! The `[serve]` table: how the HTTP API of `serve` and `worker --listen` authenticates and
//! whether it speaks TLS. Relative paths are relative to the config file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `[serve]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// A file of bearer tokens, one a line; `ro:` before a token makes it read-only, `#`
    /// starts a comment. `DRIFTLESS_API_TOKENS` (comma-separated) adds to it.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// A PEM certificate chain: with `tls_key`, the API is served over TLS (rustls).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl ServeConfig {
    /// `path` resolved against the config file's directory.
    pub fn resolve(dir: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            dir.join(path)
        }
    }
}
