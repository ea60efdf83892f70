//! The directory trees of the `files-100k` scenario.
//!
//! `canonical/` holds [`FILES`] small files in nested directories, with spaces and
//! non-ASCII letters in directory and file names; every [`EMPTY_EVERY`]th file is empty,
//! the others are a few bytes to a few KiB of seeded random bytes (sizes log-uniform, so
//! most files are small, as in a real asset tree). `stage/` is the same tree with exactly
//! [`DIVERGENCES`] differences: files whose content changed at the same size, files whose
//! size changed, files removed and files added.
//!
//! A finished pair is marked by a `ready` file, so a kept work directory is reused.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use crate::Divergence;
use crate::rng::Rng;

/// Files in the canonical tree.
pub const FILES: usize = 100_000;
/// Files changed at the same size in the stage.
pub const SAME_SIZE_CHANGES: usize = 6;
/// Files whose size changed in the stage (grown, shrunk, emptied).
pub const SIZE_CHANGES: usize = 4;
/// Files removed from the stage.
pub const REMOVED: usize = 5;
/// Files only the stage has.
pub const ADDED: [&str; 5] = [
    "0-first",
    "new dir/nested/ñandú.txt",
    "日本/追加 file.txt",
    "zz last/ω.bin",
    "a/empty extra",
];
/// Divergences a scan of the stage must report.
pub const DIVERGENCES: usize = SAME_SIZE_CHANGES + SIZE_CHANGES + REMOVED + ADDED.len();
/// Every this-many-th file is empty.
pub const EMPTY_EVERY: usize = 11;
/// Top-level directories; each holds [`SUBDIRS`] numbered subdirectories.
const DIRS: [&str; 6] = ["a", "a/b c", "ä/ö", "Z/deep/er/still", "space dir ", "日本"];
/// Numbered subdirectories under each of [`DIRS`].
const SUBDIRS: usize = 97;
/// Non-empty sizes are `2^b + r` bytes with `b` uniform in `0..=MAX_SIZE_LOG2` and
/// `r < 2^b`: 1 byte to 8 KiB, about 1 KiB on average.
const MAX_SIZE_LOG2: u64 = 12;
/// Seed of the content and of the choice of changed files.
const SEED: u64 = 0xf11e_5eed;
/// Threads writing files; the machine the figures come from has two cores.
const WRITERS: usize = 2;
/// The marker file of a finished pair.
const READY: &str = "ready";

/// One generated pair of trees.
#[derive(Debug, Clone)]
pub struct FileSet {
    /// The canonical tree.
    pub canonical: PathBuf,
    /// The stage tree.
    pub stage: PathBuf,
    /// What a scan of the stage must report.
    pub expected: BTreeSet<Divergence>,
}

/// The path of file `i`, relative to a tree's root.
fn rel(i: usize) -> String {
    let dir = DIRS[i % DIRS.len()];
    let name = match i % 5 {
        0 => format!("file {i}.txt"),
        1 => format!("é-{i}"),
        2 => format!("{i}.bin"),
        3 => format!("Ünïcode {i}"),
        _ => format!("x{i}"),
    };
    format!("{dir}/{}/{name}", i % SUBDIRS)
}

/// The content of file `i`.
fn content(i: usize) -> Vec<u8> {
    if i.is_multiple_of(EMPTY_EVERY) {
        return Vec::new();
    }
    let mut rng = Rng::new(SEED ^ i as u64);
    let scale = 1u64 << rng.below(MAX_SIZE_LOG2 + 1);
    let len = (scale + rng.below(scale)) as usize;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The pair under `dir`, generated unless a finished one is already there. Returns the pair
/// and whether it was generated now.
pub fn ensure(dir: &Path) -> Result<(FileSet, bool)> {
    let mutations = Mutations::choose();
    let set = FileSet {
        canonical: dir.join("canonical"),
        stage: dir.join("stage"),
        expected: mutations.expected(),
    };
    if dir.join(READY).exists() {
        return Ok((set, false));
    }
    for root in [&set.canonical, &set.stage] {
        if root.exists() {
            // A half-written pair from an interrupted run: start over.
            fs::remove_dir_all(root).with_context(|| format!("cannot remove {}", root.display()))?;
        }
        for d in DIRS {
            for sub in 0..SUBDIRS {
                let path = root.join(d).join(sub.to_string());
                fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
            }
        }
    }
    write_trees(&set)?;
    mutations.apply(&set.stage)?;
    fs::write(dir.join(READY), b"").context("cannot write the ready marker")?;
    Ok((set, true))
}

/// Reads every file under `root`, returning the bytes read: puts a tree in the page cache.
pub fn read_all(root: &Path) -> Result<u64> {
    let mut total = 0;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                total += fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .len() as u64;
            }
        }
    }
    Ok(total)
}

/// Writes every file into both trees, on [`WRITERS`] threads.
fn write_trees(set: &FileSet) -> Result<()> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WRITERS)
            .map(|w| {
                scope.spawn(move || -> Result<()> {
                    for i in (w..FILES).step_by(WRITERS) {
                        let (rel, bytes) = (rel(i), content(i));
                        for root in [&set.canonical, &set.stage] {
                            let path = root.join(&rel);
                            fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("a writer thread panicked"))?)
    })
}

/// Which files the stage changes, chosen by a seeded generator.
#[derive(Debug)]
struct Mutations {
    same_size: Vec<usize>,
    resized: Vec<usize>,
    removed: Vec<usize>,
}

impl Mutations {
    fn choose() -> Mutations {
        let mut rng = Rng::new(SEED);
        let mut used = BTreeSet::new();
        // Distinct non-empty files: an empty file has no byte to change.
        let mut pick = |n: usize| -> Vec<usize> {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let i = rng.below(FILES as u64) as usize;
                if !i.is_multiple_of(EMPTY_EVERY) && used.insert(i) {
                    out.push(i);
                }
            }
            out
        };
        Mutations {
            same_size: pick(SAME_SIZE_CHANGES),
            resized: pick(SIZE_CHANGES),
            removed: pick(REMOVED),
        }
    }

    fn expected(&self) -> BTreeSet<Divergence> {
        let entry = |path: &str, kind: &str| (json!({ "key": path }).to_string(), kind.to_owned());
        let changed = self
            .same_size
            .iter()
            .chain(&self.resized)
            .map(|&i| entry(&rel(i), "changed"));
        let missing = self.removed.iter().map(|&i| entry(&rel(i), "missing"));
        let extra = ADDED.iter().map(|p| entry(p, "extra"));
        changed.chain(missing).chain(extra).collect()
    }

    fn apply(&self, stage: &Path) -> Result<()> {
        let write = |rel: &str, bytes: &[u8]| -> Result<()> {
            let path = stage.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
        };
        for &i in &self.same_size {
            let mut bytes = content(i);
            bytes[0] ^= 0x20;
            write(&rel(i), &bytes)?;
        }
        for (n, &i) in self.resized.iter().enumerate() {
            let mut bytes = content(i);
            match n % 3 {
                0 => bytes.extend_from_slice(b" grown"),
                1 if bytes.len() > 1 => bytes.truncate(bytes.len() / 2),
                1 => bytes.push(b'+'),
                _ => bytes.clear(),
            }
            write(&rel(i), &bytes)?;
        }
        for &i in &self.removed {
            let path = stage.join(rel(i));
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        for path in ADDED {
            write(
                path,
                if path.contains("empty") {
                    b""
                } else {
                    b"only in the stage"
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_names_every_mutation_once() {
        let expected = Mutations::choose().expected();
        let keys: BTreeSet<&String> = expected.iter().map(|(key, _)| key).collect();
        assert_eq!(keys.len(), DIVERGENCES);
    }

    #[test]
    fn sizes_span_bytes_to_kilobytes() {
        let sizes: Vec<usize> = (0..1000).map(|i| content(i).len()).collect();
        assert!(sizes.contains(&0));
        assert!(sizes.iter().any(|&s| (1..16).contains(&s)));
        assert!(sizes.iter().any(|&s| s > 2048));
        assert!(sizes.iter().all(|&s| s < 8192));
    }
}
