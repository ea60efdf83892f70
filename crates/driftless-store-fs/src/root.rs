//! Turning the copy's `file:` URL into the directory it names.
//!
//! Two forms are accepted:
//! - `file:///abs/path/to/dir` (also `file://localhost/abs/...`): a standard file URL, so
//!   percent-escapes are decoded (`file:///my%20data` is `/my data`); a `?` or `#` in the
//!   path must be written `%3F` or `%23`.
//! - `file:relative/dir`, `file:./dir` or `file:/abs/dir` (no `//`): the rest of the string
//!   taken literally as a path, relative ones resolved against the current directory when the
//!   store is opened. The standard URL parser would read `file:data` as `/data`, which is
//!   never what a person typing it meant, so this form bypasses it.
//!
//! `file://data/x` is rejected: it names the host `data`, almost certainly a relative path
//! with one slash too many, and guessing either way would scan the wrong directory.

use std::path::{Path, PathBuf};

/// The directory `raw` names, or why it names none.
pub(crate) fn parse(raw: &str) -> Result<PathBuf, String> {
    let rest = raw
        .get(..5)
        .filter(|scheme| scheme.eq_ignore_ascii_case("file:"))
        .map(|_| &raw[5..])
        .ok_or_else(|| "not a file: URL; a directory copy is file:///abs/path or file:relative/path".to_owned())?;
    if rest.starts_with("//") {
        return parse_url(raw);
    }
    if rest.is_empty() {
        return Err("the path is empty; use file:. for the current directory".to_owned());
    }
    let path = Path::new(rest);
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| format!("cannot resolve the relative path {rest:?}: no current directory: {e}"))?;
    Ok(cwd.join(path))
}

/// The standard `file://` form.
fn parse_url(raw: &str) -> Result<PathBuf, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("invalid file URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a file URL takes no query or fragment; write '?' as %3F and '#' as %23".to_owned());
    }
    if let Some(host) = url.host_str().filter(|h| !h.is_empty() && *h != "localhost") {
        return Err(format!(
            "the URL names the host {host:?}; a local directory is file:///abs/path (three \
             slashes) or file:relative/path (none)"
        ));
    }
    url.to_file_path()
        .map_err(|()| "the URL does not name a local path".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_urls_are_decoded() {
        assert_eq!(parse("file:///srv/data").unwrap(), PathBuf::from("/srv/data"));
        assert_eq!(parse("FILE:///srv/my%20data/").unwrap(), PathBuf::from("/srv/my data/"));
        assert_eq!(parse("file://localhost/srv/data").unwrap(), PathBuf::from("/srv/data"));
    }

    #[test]
    fn relative_paths_resolve_against_the_current_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(parse("file:rel/dir").unwrap(), cwd.join("rel/dir"));
        assert_eq!(parse("file:./dir").unwrap(), cwd.join("./dir"));
        // Literal, not percent-decoded: this form is a path, not a URL.
        assert_eq!(parse("file:my%20dir").unwrap(), cwd.join("my%20dir"));
        assert_eq!(parse("file:/abs/dir").unwrap(), PathBuf::from("/abs/dir"));
    }

    #[test]
    fn other_forms_are_rejected_with_a_reason() {
        for (raw, needle) in [
            ("sqlite://x.db", "not a file: URL"),
            ("/srv/data", "not a file: URL"),
            ("fil", "not a file: URL"),
            ("file:", "empty"),
            ("file://data/x", "host \"data\""),
            ("file:///srv/data?x=1", "no query"),
            ("file:///srv/data#top", "no query"),
        ] {
            let err = parse(raw).unwrap_err();
            assert!(err.contains(needle), "{raw}: {err}");
        }
    }
}
