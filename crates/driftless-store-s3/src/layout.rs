//! The top level of a copy: its folders and the objects beside them, from one delimited
//! listing, so that every later listing can name the narrowest prefix it needs.
//!
//! A listing request without a narrow prefix makes the server consider every object under
//! the copy's prefix; many servers (moto, and S3's own request partitions) do work in
//! proportion to that, page after page. Listing folder by folder, as `rclone` and
//! `aws s3 sync` do, keeps each request's work to its folder. The keys of folder `F` are
//! exactly the range `[F, F')` where `F'` is `F` with its final `/` raised to `0`, and
//! folders and top-level objects interleave in key order, so a range's listing is its
//! pieces, in order: whole or partial folders, and the top-level objects it holds.
//!
//! A copy with more top-level entries than one page, or with no folder, has no layout: it
//! is listed as one flat range; so is a range whose folders are small (under half a page
//! each), where a request per folder would cost more than it saves.

use std::sync::Arc;

use aws_sdk_s3::types::CommonPrefix;
use driftless_core::{Key, KeyPart, KeyRange};
use driftless_store::StoreError;
use driftless_store::object::ObjectMeta;

use crate::S3Store;

/// Top-level entries a layout holds at most: one page. A copy with more is listed flat.
const LAYOUT_ENTRIES: i32 = 1000;
/// Below this many keys a folder, listing folder by folder makes more requests than it
/// saves server work: half a page.
pub(crate) const SMALL_FOLDER_KEYS: u64 = 500;

/// One top-level entry.
#[derive(Debug, Clone)]
enum Entry {
    /// An object beside the folders.
    Object(ObjectMeta),
    /// A folder: its relative name, ending in `/`.
    Folder(String),
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Object(meta) => &meta.key,
            Entry::Folder(name) => name,
        }
    }
}

/// A copy's top level, in key order.
#[derive(Debug)]
pub(crate) struct Layout {
    entries: Vec<Entry>,
}

/// A part of a range's listing.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    /// List the keys under this relative prefix (empty: the whole copy).
    List(String),
    /// Top-level objects already known from the layout.
    Objects(Vec<ObjectMeta>),
}

impl Piece {
    /// The smallest key the piece can hold.
    pub(crate) fn start(&self) -> &str {
        match self {
            Piece::List(scope) => scope,
            Piece::Objects(metas) => metas.first().map_or("", |m| m.key.as_str()),
        }
    }
}

/// The longest common prefix of two strings, on a character boundary.
pub(crate) fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let end = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i);
    &a[..end]
}

/// The narrowest prefix every key of `range` has: the common prefix of its ends (every key
/// between two strings begins with what they share).
pub(crate) fn range_scope(range: &KeyRange) -> String {
    match (&range.lo, &range.hi) {
        (Some(lo), Some(hi)) => match (text_of(lo), text_of(hi)) {
            (Some(lo), Some(hi)) => common_prefix(&lo, &hi).to_owned(),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

/// An object key's text.
fn text_of(key: &Key) -> Option<String> {
    match key.parts().ok()?.as_slice() {
        [KeyPart::Text(s)] => Some(s.clone()),
        _ => None,
    }
}

/// `pieces`, or one flat listing of `range` when its folders would hold under
/// [`SMALL_FOLDER_KEYS`] of the `expected` keys each.
fn unless_small(pieces: Vec<Piece>, range: &KeyRange, expected: Option<u64>) -> Vec<Piece> {
    let folders = pieces.iter().filter(|p| matches!(p, Piece::List(_))).count() as u64;
    if folders > 1 && expected.is_some_and(|keys| keys / folders < SMALL_FOLDER_KEYS) {
        return vec![Piece::List(range_scope(range))];
    }
    pieces
}

/// The first key past folder `name`'s keys.
fn folder_end(name: &str) -> String {
    let mut end = name.strip_suffix('/').unwrap_or(name).to_owned();
    end.push('0');
    end
}

impl Layout {
    /// The pieces that list `range`, in key order.
    pub(crate) fn pieces(&self, range: &KeyRange) -> Vec<Piece> {
        let below_hi = |name: &str| range.hi.as_ref().is_none_or(|hi| Key::text(name) < *hi);
        // Within one folder, the range's own ends may narrow it further.
        let scope = range_scope(range);
        let mut pieces = Vec::new();
        let mut objects = Vec::new();
        for entry in &self.entries {
            match entry {
                Entry::Object(meta) => {
                    if range.contains(&Key::text(&meta.key)) {
                        objects.push(meta.clone());
                    }
                }
                Entry::Folder(name) => {
                    let end = folder_end(name);
                    let after_lo = range.lo.as_ref().is_none_or(|lo| Key::text(&end) > *lo);
                    if !(after_lo && below_hi(name)) {
                        continue;
                    }
                    if !objects.is_empty() {
                        pieces.push(Piece::Objects(std::mem::take(&mut objects)));
                    }
                    pieces.push(Piece::List(if scope.starts_with(name.as_str()) {
                        scope.clone()
                    } else {
                        name.clone()
                    }));
                }
            }
            if !below_hi(entry.name()) {
                break;
            }
        }
        if !objects.is_empty() {
            pieces.push(Piece::Objects(objects));
        }
        pieces
    }
}

impl S3Store {
    /// The copy's layout, listed on first use (and again after a write); `None` inside for
    /// a flat copy.
    async fn layout(&self) -> Result<Arc<Option<Layout>>, StoreError> {
        // Held while listing, so that ranges listed at once wait for one listing.
        let mut cached = self.layout.lock().await;
        if let Some(known) = cached.as_ref() {
            return Ok(Arc::clone(known));
        }
        let listed = Arc::new(self.list_layout().await?);
        *cached = Some(Arc::clone(&listed));
        Ok(listed)
    }

    /// The names of the copy's folders in key order, when it has a layout.
    pub(crate) async fn folders(&self) -> Result<Option<Vec<String>>, StoreError> {
        let layout = self.layout().await?;
        Ok(layout.as_ref().as_ref().map(|layout| {
            layout
                .entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Folder(name) => Some(name.clone()),
                    Entry::Object(_) => None,
                })
                .collect()
        }))
    }

    /// Drops the layout, after a write that may have changed it.
    pub(crate) async fn forget_layout(&self) {
        *self.layout.lock().await = None;
    }

    /// The pieces that list `range`, expected to hold `expected` keys when known: from the
    /// layout, or the range's own narrowest prefix. A folder costs a request at least, so
    /// when the range's folders would average under [`SMALL_FOLDER_KEYS`], one flat listing
    /// under the range's common prefix is made instead.
    pub(crate) async fn pieces(&self, range: &KeyRange, expected: Option<u64>) -> Result<Vec<Piece>, StoreError> {
        let layout = self.layout().await?;
        let Some(layout) = layout.as_ref() else {
            return Ok(vec![Piece::List(range_scope(range))]);
        };
        Ok(unless_small(layout.pieces(range), range, expected))
    }

    async fn list_layout(&self) -> Result<Option<Layout>, StoreError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .delimiter("/")
            .max_keys(LAYOUT_ENTRIES)
            .send()
            .await
            .map_err(|e| self.read_error(&e))?;
        if page.is_truncated().unwrap_or(false) || page.common_prefixes().is_empty() {
            return Ok(None);
        }
        let folders = page
            .common_prefixes()
            .iter()
            .filter_map(CommonPrefix::prefix)
            .filter_map(|p| p.strip_prefix(self.prefix.as_str()))
            .map(|rel| Entry::Folder(rel.to_owned()));
        let objects = page.contents().iter().filter_map(|o| self.meta(o)).map(Entry::Object);
        let mut entries: Vec<Entry> = folders.chain(objects).collect();
        entries.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(Some(Layout { entries }))
    }
}

#[cfg(test)]
mod tests {
    use driftless_store::object::Fingerprint;

    use super::*;

    fn layout() -> Layout {
        let object = |k: &str| {
            Entry::Object(ObjectMeta {
                key: k.into(),
                size: 1,
                fingerprint: Fingerprint::from_etag("\"00\""),
            })
        };
        Layout {
            entries: vec![
                object("a.txt"),
                Entry::Folder("d07/".into()),
                object("d07.txt"),
                Entry::Folder("d08/".into()),
                object("z"),
            ],
        }
    }

    fn range(lo: Option<&str>, hi: Option<&str>) -> KeyRange {
        KeyRange {
            lo: lo.map(Key::text),
            hi: hi.map(Key::text),
        }
    }

    fn names(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::List(scope) => format!("list {scope}"),
                Piece::Objects(o) => format!(
                    "objects {}",
                    o.iter().map(|m| m.key.as_str()).collect::<Vec<_>>().join(",")
                ),
            })
            .collect()
    }

    #[test]
    fn ranges_become_folders_and_objects_in_key_order() {
        let mut l = layout();
        l.entries.sort_by(|a, b| a.name().cmp(b.name()));
        assert_eq!(
            names(&l.pieces(&KeyRange::all())),
            ["objects a.txt,d07.txt", "list d07/", "list d08/", "objects z"]
        );
        // A range inside one folder narrows to its ends' common prefix.
        assert_eq!(
            names(&l.pieces(&range(Some("d07/f0001"), Some("d07/f0009")))),
            ["list d07/f000"]
        );
        // A range across folders lists each overlapping folder whole.
        assert_eq!(
            names(&l.pieces(&range(Some("d07/f5"), Some("d08/f1")))),
            ["list d07/", "list d08/"]
        );
        // Outside every folder: only the objects it holds.
        assert_eq!(names(&l.pieces(&range(Some("d09"), None))), ["objects z"]);
    }

    #[test]
    fn small_folders_are_listed_flat() {
        let mut l = layout();
        l.entries.sort_by(|a, b| a.name().cmp(b.name()));
        let r = range(Some("d07/f5"), Some("d08/f1"));
        // Two folders of 1,000 keys: one request each, under each folder's prefix.
        assert_eq!(
            names(&unless_small(l.pieces(&r), &r, Some(2000))),
            ["list d07/", "list d08/"]
        );
        // Two folders of 100 keys: one request under what the range's ends share.
        assert_eq!(names(&unless_small(l.pieces(&r), &r, Some(200))), ["list d0"]);
        // Unknown size, or one folder: as the layout says.
        assert_eq!(names(&unless_small(l.pieces(&r), &r, None)), ["list d07/", "list d08/"]);
        let one = range(Some("d07/f1"), Some("d07/f3"));
        assert_eq!(names(&unless_small(l.pieces(&one), &one, Some(1))), ["list d07/f"]);
    }

    #[test]
    fn common_prefixes_end_on_characters() {
        assert_eq!(common_prefix("d07/f1", "d07/g"), "d07/");
        assert_eq!(common_prefix("é1", "é2"), "é");
        assert_eq!(common_prefix("éa", "èa"), "");
        assert_eq!(common_prefix("abc", "ab"), "ab");
        assert_eq!(folder_end("d07/"), "d070");
    }
}
