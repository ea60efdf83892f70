//! ListObjectsV2 over one key range of a copy, page by page.
//!
//! A range `[lo, hi)` of relative keys is listed as its pieces ([`crate::layout`]): the
//! folders it overlaps, each under its own prefix, and the top-level objects it holds. A
//! piece starts with `StartAfter` set just below `prefix + lo` (when `lo` falls inside it)
//! and follows continuation tokens, and the range stops at the first key at or past `hi`.
//! S3 orders keys by their UTF-8 bytes, as driftless orders text keys, so a range's keys
//! come in key order. Memory is one page (at most 1,000 objects) per range in flight.
//!
//! S3 has no end key, so a range's last page would run past `hi` by up to a page of keys
//! that are thrown away. When the range's key count is expected (from the boundaries, or
//! from what this copy counted in its last tree), pages ask for just the keys still
//! expected and one more, which shows the end; when the range turns out to hold more, the
//! pages that follow grow from [`EXTRA_PAGE_KEYS`] back to full size.

use std::collections::VecDeque;

use aws_sdk_s3::types::Object;
use driftless_core::{Key, KeyRange};
use driftless_store::StoreError;
use driftless_store::object::{self, Fingerprint, ObjectMeta};

use crate::S3Store;
use crate::layout::Piece;

/// Keys per ListObjectsV2 page: S3's largest.
pub(crate) const PAGE_KEYS: i32 = 1000;
/// The first page asked for once a range's expected keys are all read.
const EXTRA_PAGE_KEYS: i32 = 64;
/// Objects whose relative key starts with this are driftless's own conditional-write
/// probes (see `probe`), never rows.
pub(crate) const PROBE_PREFIX: &str = ".driftless-probe-";

/// Where a range's listing stands.
#[derive(Debug)]
pub(crate) struct Cursor {
    range: KeyRange,
    /// What is left to list, in key order.
    pieces: VecDeque<Piece>,
    /// The continuation token within the first piece.
    token: Option<String>,
    /// Whether the first piece's first page is still to be asked for.
    first: bool,
    done: bool,
    /// Keys the range is expected to hold, when known.
    expected: Option<u64>,
    /// Keys of the range read so far.
    seen: u64,
    /// The next page's size once the expected keys are read.
    extra: i32,
}

impl Cursor {
    /// A cursor over `range`, listed as `pieces`, expected to hold `keys` keys if known.
    pub(crate) fn new(range: KeyRange, pieces: Vec<Piece>, keys: Option<u64>) -> Cursor {
        Cursor {
            range,
            pieces: pieces.into(),
            token: None,
            first: true,
            done: false,
            expected: keys,
            seen: 0,
            extra: EXTRA_PAGE_KEYS,
        }
    }

    /// The first piece is listed: go on with the next.
    fn next_piece(&mut self) {
        self.pieces.pop_front();
        self.token = None;
        self.first = true;
    }

    /// Keeps the keys of `metas` inside the range, in order; the first at or past `hi` ends
    /// the range.
    fn keep(&mut self, metas: impl IntoIterator<Item = ObjectMeta>) -> Vec<ObjectMeta> {
        let mut out = Vec::new();
        for meta in metas {
            let key = Key::text(&meta.key);
            if self.range.lo.as_ref().is_some_and(|lo| &key < lo) {
                continue;
            }
            if self.range.hi.as_ref().is_some_and(|hi| &key >= hi) {
                self.done = true;
                break;
            }
            out.push(meta);
        }
        self.seen += out.len() as u64;
        out
    }

    /// Keys to ask for in the next page.
    fn page_keys(&mut self) -> i32 {
        let Some(expected) = self.expected else {
            return PAGE_KEYS;
        };
        match expected.checked_sub(self.seen).filter(|&left| left > 0) {
            // One more than expected shows the first key past the range, or its absence.
            Some(left) => i32::try_from(left + 1).unwrap_or(PAGE_KEYS).min(PAGE_KEYS),
            None => {
                let keys = self.extra;
                self.extra = (self.extra * 4).min(PAGE_KEYS);
                keys
            }
        }
    }
}

/// The greatest string that sorts below `s`, near enough: every key `>= s` sorts after it
/// and almost no key `< s` does (those few are skipped as they are read). `None` when `s`
/// is empty (list from the start).
fn just_below(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    let last = chars.pop()?;
    let below = (1..u32::from(last)).rev().find_map(char::from_u32);
    let mut out: String = chars.into_iter().collect();
    if let Some(c) = below {
        out.push(c);
        // U+10FFFF is the largest code point, so `out` is above every key that begins with
        // the shortened string and a character below `last`.
        out.push('\u{10FFFF}');
    }
    Some(out).filter(|o| !o.is_empty())
}

impl S3Store {
    /// The next page of `cursor`'s range, or `None` after its last. Keys outside the range,
    /// folder markers (keys ending in `/`, which a directory cannot hold) and probes are
    /// left out.
    pub(crate) async fn next_page(&self, cursor: &mut Cursor) -> Result<Option<Vec<ObjectMeta>>, StoreError> {
        if cursor.done {
            return Ok(None);
        }
        let scope = match cursor.pieces.front() {
            None => {
                cursor.done = true;
                return Ok(None);
            }
            Some(Piece::Objects(metas)) => {
                let metas = metas.clone();
                cursor.next_piece();
                return Ok(Some(cursor.keep(metas)));
            }
            Some(Piece::List(scope)) => format!("{}{scope}", self.prefix),
        };
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&scope)
            .max_keys(cursor.page_keys());
        if cursor.first
            && let Some(lo) = &cursor.range.lo
        {
            let lo = format!("{}{}", self.prefix, object::key_path(&self.location, lo)?);
            // Only a start inside the piece needs skipping to; one before it is the prefix's.
            if lo > scope
                && let Some(after) = just_below(&lo)
            {
                req = req.start_after(after);
            }
        }
        if let Some(token) = cursor.token.take() {
            req = req.continuation_token(token);
        }
        cursor.first = false;
        let page = req.send().await.map_err(|e| self.read_error(&e))?;
        match page.next_continuation_token() {
            Some(token) if page.is_truncated().unwrap_or(false) => cursor.token = Some(token.to_owned()),
            _ => cursor.next_piece(),
        }
        let metas: Vec<ObjectMeta> = page.contents().iter().filter_map(|o| self.meta(o)).collect();
        Ok(Some(cursor.keep(metas)))
    }

    /// A listed object as a row, or `None` for what is not one.
    pub(crate) fn meta(&self, object: &Object) -> Option<ObjectMeta> {
        let rel = object.key()?.strip_prefix(self.prefix.as_str())?;
        if rel.is_empty() || rel.ends_with('/') || rel.starts_with(PROBE_PREFIX) {
            return None;
        }
        Some(ObjectMeta {
            key: rel.to_owned(),
            size: object.size().map_or(0, |s| u64::try_from(s).unwrap_or(0)),
            fingerprint: Fingerprint::from_etag(object.e_tag().unwrap_or_default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn just_below_sorts_below_and_close() {
        for s in ["abc", "a", "a/b", "d\u{e000}", "z\u{1}", "é"] {
            let b = just_below(s).unwrap_or_default();
            assert!(b.as_str() < s, "{b:?} < {s:?}");
            // Nothing a person names a file sorts between them.
            for other in ["ab", "abb/zzz", "a.", "a/a", "d\u{d7ff}x"] {
                assert!(!(b.as_str() < other && other < s), "{other:?} between {b:?} and {s:?}");
            }
        }
        assert_eq!(just_below(""), None);
        assert_eq!(just_below("\u{0}"), None);
    }

    #[test]
    fn pages_ask_for_what_is_still_expected() {
        let mut plain = Cursor::new(KeyRange::all(), Vec::new(), None);
        assert_eq!(plain.page_keys(), PAGE_KEYS);
        let mut c = Cursor::new(KeyRange::all(), Vec::new(), Some(2500));
        assert_eq!(c.page_keys(), PAGE_KEYS);
        c.seen = 2000;
        assert_eq!(c.page_keys(), 501);
        // More keys than expected: small pages first, growing back to full ones.
        c.seen = 2501;
        let sizes: Vec<i32> = (0..5).map(|_| c.page_keys()).collect();
        assert_eq!(sizes, [64, 256, 1000, 1000, 1000]);
        assert_eq!(Cursor::new(KeyRange::all(), Vec::new(), Some(0)).page_keys(), 64);
    }
}
