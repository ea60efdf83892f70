//! The sorted listing of a directory copy: every regular file and symlink below the root,
//! keyed by its relative path.
//!
//! The listing is built once per run (the store caches it) by one walk of the tree, then
//! sorted by [`Key`]. Sorting after the walk, rather than trusting walk order, is what makes
//! `a.txt` come before `a/b`: a walk visits the directory `a` as a unit, but keys compare the
//! whole path bytewise and `.` (0x2E) sorts before `/` (0x2F).

use std::fs;
use std::io;
use std::path::{Component, Path};

use driftless_core::Key;
use driftless_store::StoreError;

/// What a row is on disk; it decides how its content is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file: its content is the file's bytes.
    File,
    /// A symlink, not followed: its content is the bytes of its target path.
    Symlink,
}

/// One row of the listing.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The relative path with `/` separators.
    pub path: Box<str>,
    /// File or symlink.
    pub kind: Kind,
}

impl Entry {
    /// The row's key: `Key::text(path)`.
    pub(crate) fn key(&self) -> Key {
        Key::text(&self.path)
    }
}

/// Every row of a copy, sorted by key.
pub(crate) type Listing = Vec<Entry>;

/// Fails with [`StoreError::Open`] unless `root` is a directory (or a symlink to one).
pub(crate) fn check_root(location: &str, root: &Path) -> Result<(), StoreError> {
    let open_error = |reason: String| StoreError::Open {
        location: location.to_owned(),
        reason,
    };
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(open_error(format!("{} is not a directory", root.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(open_error(format!("directory {} does not exist", root.display())))
        }
        Err(e) => Err(open_error(format!("{}: {e}", root.display()))),
    }
}

/// Walks `root` once and returns its rows sorted by key. Blocking: run it off the runtime.
///
/// Directories are not rows, so an empty directory is invisible. Sockets, FIFOs and devices
/// are skipped too: they are not data, and opening a FIFO would block the scan forever.
pub(crate) fn list(location: &str, root: &Path) -> Result<Listing, StoreError> {
    check_root(location, root)?;
    let read_error = |reason: String| StoreError::Read {
        location: location.to_owned(),
        reason,
    };
    let mut entries = Vec::new();
    // The root itself is followed if it is a symlink (walkdir's default), nothing below it is.
    for item in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let item = item.map_err(|e| match e.path() {
            // The root itself cannot be read: the copy cannot be opened at all.
            Some(p) if e.depth() == 0 => StoreError::Open {
                location: location.to_owned(),
                reason: format!("{}: {e}", p.display()),
            },
            Some(p) => read_error(format!("{}: {e}", relative_lossy(root, p))),
            None => read_error(e.to_string()),
        })?;
        if is_temporary(item.file_name()) {
            continue;
        }
        let file_type = item.file_type();
        let kind = if file_type.is_file() {
            Kind::File
        } else if file_type.is_symlink() {
            Kind::Symlink
        } else {
            continue;
        };
        let path = relative_utf8(root, item.path()).ok_or_else(|| {
            read_error(format!(
                "{}: file name is not valid UTF-8 (shown lossily); keys must be text",
                relative_lossy(root, item.path())
            ))
        })?;
        entries.push(Entry {
            path: path.into_boxed_str(),
            kind,
        });
    }
    // Paths are unique, so an unstable sort gives the same order as a stable one.
    entries.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(entries)
}

/// `path` relative to `root` with `/` separators, or `None` if a component is not UTF-8.
fn relative_utf8(root: &Path, path: &Path) -> Option<String> {
    // walkdir builds every path by joining names onto the root as given, so the root is a
    // byte prefix: slicing it off is much cheaper than `strip_prefix`, which compares
    // component by component, on a listing of millions of files.
    let (root_bytes, bytes) = (root.as_os_str().as_encoded_bytes(), path.as_os_str().as_encoded_bytes());
    if std::path::MAIN_SEPARATOR == '/' && bytes.starts_with(root_bytes) {
        let rel = &bytes[root_bytes.len()..];
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        return std::str::from_utf8(rel).ok().map(str::to_owned);
    }
    let rel = path.strip_prefix(root).ok()?;
    let mut out = String::with_capacity(rel.as_os_str().len());
    for component in rel.components() {
        let Component::Normal(name) = component else {
            // A walk below the root yields only plain names; anything else is not a row.
            return None;
        };
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(name.to_str()?);
    }
    Some(out)
}

/// `path` relative to `root`, lossily decoded, for error messages.
fn relative_lossy(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.to_string_lossy().into_owned()
}

/// The index range of `listing` whose keys lie in `[lo, hi)`.
pub(crate) fn slice_bounds(listing: &[Entry], lo: Option<&Key>, hi: Option<&Key>) -> (usize, usize) {
    let start = lo.map_or(0, |lo| listing.partition_point(|e| e.key() < *lo));
    let end = hi.map_or(listing.len(), |hi| listing.partition_point(|e| e.key() < *hi));
    // A range with hi <= lo is empty rather than inverted.
    (start, end.max(start))
}

/// The entry with exactly `key`, if any.
pub(crate) fn find<'l>(listing: &'l [Entry], key: &Key) -> Option<&'l Entry> {
    listing.binary_search_by(|e| e.key().cmp(key)).ok().map(|i| &listing[i])
}

/// Marks the temporary files a repair writes before renaming them into place; a crash can
/// leave one behind, and it is never a row.
pub(crate) const TEMP_MARK: &str = ".driftless-tmp-";

/// Whether a file name is one of repair's temporary files.
fn is_temporary(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('.') && n.contains(TEMP_MARK))
}

/// A relative key as a path below the root, refused unless every component is a plain
/// name: an object key such as `../x`, `/x` or `a//b` names no file inside the copy.
pub(crate) fn relative_path(key: &str) -> Result<&Path, String> {
    let plain = !key.is_empty()
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if plain {
        Ok(Path::new(key))
    } else {
        Err(format!(
            "key {key:?} is not a relative file path (empty, `.` or `..` components)"
        ))
    }
}

/// The row at `key` as it is on disk now, or `None` if there is none. Blocking.
pub(crate) fn entry_at(root: &Path, key: &Key, rel: &str) -> io::Result<Option<Entry>> {
    let Ok(path) = relative_path(rel) else { return Ok(None) };
    let kind = match fs::symlink_metadata(root.join(path)) {
        Ok(m) if m.file_type().is_file() => Kind::File,
        Ok(m) if m.file_type().is_symlink() => Kind::Symlink,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => return Ok(None),
        Err(e) => return Err(e),
    };
    debug_assert_eq!(Key::text(rel), *key, "a key and its path");
    Ok(Some(Entry { path: rel.into(), kind }))
}
