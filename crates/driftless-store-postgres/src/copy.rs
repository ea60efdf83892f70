//! Whole-copy reads through `COPY (SELECT ...) TO STDOUT (FORMAT binary)`: trees, and
//! samples of keys.
//!
//! The async side only copies the server's `CopyData` messages (one per row) into buffers of
//! a quarter MiB and hands them over a bounded channel; a blocking thread parses the tuples,
//! digests them and adds them to leaves, so the runtime never hashes. Leaf aggregates do not
//! depend on row order, and every row finds its leaf by comparing keys in Rust
//! ([`LeafBuilder`] on encoded keys, the same comparison as `Boundaries::leaf_of`, or
//! [`IntLeaves`] on integers, whose encoding preserves their order), so the query needs no
//! `ORDER BY`: the server streams the table in whatever order it stores it, with no sort
//! and no index scan, and no server collation is involved.

use std::sync::atomic::Ordering;

use driftless_core::tree::LeafBuilder;
use driftless_core::{Aggregate, Boundaries, Digest, KeyPart, RowHasher, Tree};
use driftless_store::Progress;
use futures::StreamExt as _;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::describe_error;
use crate::row::{Fields, RowDigester, RowPlan, int_key, int_key_agrees};
use crate::wire;

/// Bytes of COPY output the reader gathers before handing them to the fold thread.
const BUFFER_BYTES: usize = 256 * 1024;
/// Buffers the reader may fill ahead of the fold thread.
const BUFFERS_AHEAD: usize = 4;
/// The signature that opens binary COPY output.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Digests the rows of `SELECT {plan.select} FROM {table}` into leaves over `boundaries`.
/// Errors are reasons, for the caller to wrap with the copy's location.
pub async fn copy_tree(
    pool: &PgPool,
    table: &str,
    plan: RowPlan,
    boundaries: Boundaries,
    hasher: RowHasher,
    progress: Progress,
) -> Result<Tree, String> {
    let query = format!("SELECT {} FROM {table}", plan.select);
    let width = plan.width();
    if plan.keys().is_single_int()
        && int_key_agrees()
        && let Some(leaves) = IntLeaves::new(&boundaries)
    {
        let state = (RowDigester::new(plan, hasher), leaves);
        let (_, leaves) = copy_fold(pool, &query, width, state, progress, |(digester, leaves), row| {
            let v = wire::int(row.field(0)?.ok_or("NULL in a key column")?)?;
            let digest = digester.digest(&int_key(v), row)?;
            leaves.add(v, digest);
            Ok(())
        })
        .await?;
        return Ok(leaves.finish());
    }
    let state = (RowDigester::new(plan, hasher), LeafBuilder::new(boundaries));
    let (_, leaves) = copy_fold(pool, &query, width, state, progress, |(digester, leaves), row| {
        let key = digester.key(row)?;
        let digest = digester.digest(key.as_bytes(), row)?;
        leaves.add(&key, digest);
        Ok(())
    })
    .await?;
    Ok(leaves.finish())
}

/// [`LeafBuilder`] for single integer keys, comparing integers instead of encoded keys
/// (the encoding preserves their order, so the leaves are the same).
#[derive(Debug)]
struct IntLeaves {
    bounds: Vec<i64>,
    leaves: Vec<Aggregate>,
    current: usize,
}

impl IntLeaves {
    /// Leaves over `boundaries`, if every boundary is one integer.
    fn new(boundaries: &Boundaries) -> Option<IntLeaves> {
        let bounds = boundaries
            .keys()
            .iter()
            .map(|k| match k.parts().ok()?.as_slice() {
                [KeyPart::Int(v)] => Some(*v),
                _ => None,
            })
            .collect::<Option<Vec<i64>>>()?;
        Some(IntLeaves {
            leaves: vec![Aggregate::default(); bounds.len() + 1],
            bounds,
            current: 0,
        })
    }

    #[inline]
    fn add(&mut self, v: i64, digest: Digest) {
        let c = self.current;
        let in_current =
            c.checked_sub(1).is_none_or(|j| self.bounds[j] <= v) && self.bounds.get(c).is_none_or(|&hi| v < hi);
        if !in_current {
            self.current = self.bounds.partition_point(|&b| b <= v);
        }
        self.leaves[self.current].add(digest);
    }

    fn finish(self) -> Tree {
        Tree::from_leaves(self.leaves)
    }
}

/// Runs `COPY ({query}) TO STDOUT (FORMAT binary)` and folds every row of `width` fields
/// into `state` with `on_row`, on a blocking thread; counts rows into `progress`.
pub async fn copy_fold<S, F>(
    pool: &PgPool,
    query: &str,
    width: usize,
    mut state: S,
    progress: Progress,
    mut on_row: F,
) -> Result<S, String>
where
    S: Send + 'static,
    F: FnMut(&mut S, &Tuple<'_>) -> Result<(), String> + Send + 'static,
{
    let sql = format!("COPY ({query}) TO STDOUT (FORMAT binary)");
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(BUFFERS_AHEAD);
    // Parsed buffers go back to the reader to be filled again.
    let (recycle, mut recycled) = mpsc::unbounded_channel::<Vec<u8>>();
    let fold = tokio::task::spawn_blocking(move || {
        let mut reader = CopyReader::new(width);
        while let Some(mut buffer) = rx.blocking_recv() {
            let mut rows = 0;
            reader.feed(&buffer, &mut |row| {
                rows += 1;
                on_row(&mut state, row)
            })?;
            progress.fetch_add(rows, Ordering::Relaxed);
            buffer.clear();
            // The reader may be gone already; then the buffer is just dropped.
            let _ = recycle.send(buffer);
        }
        reader.finish()?;
        Ok::<_, String>(state)
    });

    let mut conn = pool.acquire().await.map_err(|e| describe_error(&e))?;
    let mut complete = false;
    let read = async {
        let mut stream = conn.copy_out_raw(&sql).await?;
        let fresh = || Vec::with_capacity(BUFFER_BYTES + BUFFER_BYTES / 4);
        let mut buffer = fresh();
        while let Some(chunk) = stream.next().await {
            // Copied here and dropped on this thread: sqlx's chunks share one reference
            // count, which would bounce between the cores if the fold thread dropped them.
            buffer.extend_from_slice(&chunk?);
            if buffer.len() >= BUFFER_BYTES {
                let next = recycled.try_recv().unwrap_or_else(|_| fresh());
                if tx.send(std::mem::replace(&mut buffer, next)).await.is_err() {
                    // The fold stopped on an error, which it reports.
                    return Ok(());
                }
            }
        }
        complete = true;
        // A closed channel here also means the fold has an error to report.
        let _ = tx.send(buffer).await;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    drop(tx);
    if !complete {
        // A COPY abandoned half way leaves the connection mid-protocol: never reuse it.
        let _ = conn.close().await;
    }
    let state = fold.await.map_err(|e| format!("digest task failed: {e}"))?;
    read.map_err(|e| describe_error(&e))?;
    state
}

/// Field spans of one tuple inside a buffer: `(start, length)`, length -1 for NULL.
#[derive(Debug)]
pub struct Tuple<'a> {
    buf: &'a [u8],
    spans: &'a [(usize, i32)],
}

impl Fields for Tuple<'_> {
    #[inline]
    fn field(&self, i: usize) -> Result<Option<&[u8]>, String> {
        let &(start, len) = self.spans.get(i).ok_or("missing field")?;
        Ok(usize::try_from(len).ok().map(|len| &self.buf[start..start + len]))
    }
}

/// Parses binary COPY output fed in arbitrary chunks: the header, then tuples (a 16-bit
/// field count, then per field a 32-bit length, -1 for NULL, and the bytes), then the
/// trailer (a field count of -1). A tuple split across chunks is carried over.
#[derive(Debug)]
pub struct CopyReader {
    width: usize,
    header_done: bool,
    trailer_seen: bool,
    carry: Vec<u8>,
    spans: Vec<(usize, i32)>,
}

impl CopyReader {
    /// A reader of tuples with `width` fields.
    pub fn new(width: usize) -> CopyReader {
        CopyReader {
            width,
            header_done: false,
            trailer_seen: false,
            carry: Vec::new(),
            spans: Vec::with_capacity(width),
        }
    }

    /// Parses `chunk`, calling `on_row` for every complete tuple.
    #[inline]
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on_row: &mut impl FnMut(&Tuple<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.carry.is_empty() {
            let used = self.parse(chunk, on_row)?;
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(chunk);
            let used = self.parse(&carry, on_row)?;
            carry.drain(..used);
            self.carry = carry;
        }
        Ok(())
    }

    /// Checks that the output ended with its trailer and nothing after it.
    pub fn finish(&self) -> Result<(), String> {
        if !self.trailer_seen || !self.carry.is_empty() {
            return Err("COPY output ended early".into());
        }
        Ok(())
    }

    /// Parses what is complete in `buf`; returns the bytes used.
    fn parse(
        &mut self,
        buf: &[u8],
        on_row: &mut impl FnMut(&Tuple<'_>) -> Result<(), String>,
    ) -> Result<usize, String> {
        let mut pos = 0;
        if !self.header_done {
            let Some(len) = header_len(buf)? else {
                return Ok(0);
            };
            pos = len;
            self.header_done = true;
        }
        while pos < buf.len() {
            if self.trailer_seen {
                return Err("data after the COPY trailer".into());
            }
            let Some(count) = be_i16(buf, pos) else { break };
            if count == -1 {
                self.trailer_seen = true;
                pos += 2;
                continue;
            }
            if usize::try_from(count).ok() != Some(self.width) {
                return Err(format!("a COPY tuple of {count} fields, {} expected", self.width));
            }
            let Some(end) = self.tuple_spans(buf, pos + 2) else {
                break;
            };
            on_row(&Tuple {
                buf,
                spans: &self.spans,
            })?;
            pos = end;
        }
        Ok(pos)
    }

    /// Records the field spans of the tuple whose first field starts at `pos`; returns the
    /// end of the tuple, or `None` if `buf` holds only part of it.
    #[inline]
    fn tuple_spans(&mut self, buf: &[u8], mut pos: usize) -> Option<usize> {
        self.spans.clear();
        for _ in 0..self.width {
            let len = be_i32(buf, pos)?;
            pos += 4;
            self.spans.push((pos, len));
            if let Ok(n) = usize::try_from(len) {
                pos += n;
            }
        }
        (pos <= buf.len()).then_some(pos)
    }
}

/// The length of the COPY header at the start of `buf`, or `None` if it is incomplete.
fn header_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let fixed = SIGNATURE.len() + 8;
    if buf.len() < fixed {
        return Ok(None);
    }
    if &buf[..SIGNATURE.len()] != SIGNATURE {
        return Err("not binary COPY output".into());
    }
    let extension = be_i32(buf, SIGNATURE.len() + 4).and_then(|n| usize::try_from(n).ok());
    let len = fixed + extension.ok_or("bad COPY header")?;
    Ok((buf.len() >= len).then_some(len))
}

#[inline]
fn be_i16(buf: &[u8], pos: usize) -> Option<i16> {
    Some(i16::from_be_bytes(buf.get(pos..pos + 2)?.try_into().ok()?))
}

#[inline]
fn be_i32(buf: &[u8], pos: usize) -> Option<i32> {
    Some(i32::from_be_bytes(buf.get(pos..pos + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary COPY output of `rows`, each a list of fields.
    fn output(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn read_in_chunks(data: &[u8], chunk: usize) -> Result<Vec<Vec<Option<Vec<u8>>>>, String> {
        let mut reader = CopyReader::new(2);
        let mut rows = Vec::new();
        for part in data.chunks(chunk) {
            reader.feed(part, &mut |t| {
                rows.push((0..2).map(|i| t.field(i).unwrap().map(<[u8]>::to_vec)).collect());
                Ok(())
            })?;
        }
        reader.finish()?;
        Ok(rows)
    }

    #[test]
    fn tuples_split_anywhere_read_the_same() {
        let rows = vec![
            vec![Some(&b"key"[..]), None],
            vec![Some(&b""[..]), Some(&b"\x00\xff"[..])],
            vec![None, Some(&b"x"[..])],
        ];
        let data = output(&rows);
        let want: Vec<Vec<Option<Vec<u8>>>> = rows
            .iter()
            .map(|r| r.iter().map(|f| f.map(<[u8]>::to_vec)).collect())
            .collect();
        for chunk in 1..data.len() + 1 {
            assert_eq!(read_in_chunks(&data, chunk).unwrap(), want, "chunks of {chunk}");
        }
    }

    #[test]
    fn truncated_or_malformed_output_is_an_error() {
        let data = output(&[vec![Some(&b"a"[..]), None]]);
        assert!(read_in_chunks(&data[..data.len() - 2], 7).is_err());
        let mut wrong = data.clone();
        wrong[0] = b'X';
        assert!(read_in_chunks(&wrong, 64).is_err());
        let three = output(&[vec![None, None, None]]);
        assert!(read_in_chunks(&three, 64).is_err());
    }
}
