//! `driftless scan` on two local directories of 100,000 files: nested paths, unicode and
//! spaces in names, empty files. Identical trees exit 0; after seeded changes, deletions and
//! additions the report names exactly those paths with the right kind and exits 2.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use driftless_tests::{Rng, assert_exactly, divergences, run_driftless, write_config};
use serde_json::json;

const FILES: usize = 100_000;
const DIRS: [&str; 6] = ["a", "a/b c", "ä/ö", "Z/deep/er/still", "space dir ", "日本"];

fn rel(i: usize) -> String {
    let dir = DIRS[i % DIRS.len()];
    let name = match i % 5 {
        0 => format!("file {i}.txt"),
        1 => format!("é-{i}"),
        2 => format!("{i}.bin"),
        3 => format!("Ünïcode {i}"),
        _ => format!("x{i}"),
    };
    format!("{dir}/{}/{name}", i % 97)
}

fn content(i: usize) -> Vec<u8> {
    // Every seventh file is empty; the rest are a few bytes to a few hundred.
    if i.is_multiple_of(7) {
        Vec::new()
    } else {
        format!("content of {i};").repeat(1 + i % 20).into_bytes()
    }
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("every file is in a directory")).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn hundred_thousand_files_scan_names_exactly_the_changed_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (canonical, stage) = (dir.path().join("canonical"), dir.path().join("stage"));
    for i in 0..FILES {
        let bytes = content(i);
        write(&canonical, &rel(i), &bytes);
        write(&stage, &rel(i), &bytes);
    }
    write_config(
        dir.path(),
        "assets",
        &[],
        ("file:canonical", None),
        &[("mirror", "file:stage", None)],
    );

    let clean = run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(clean.code, Some(0), "identical trees: {}", clean.stderr);
    assert_eq!(clean.report()["datasets"][0]["stages"][0]["stage_rows"], json!(FILES));

    let mut rng = Rng::new(0xd1_5c0);
    let mut used = BTreeSet::new();
    let mut expected = BTreeSet::new();
    let mut expect = |path: &str, kind: &str| {
        expected.insert(("mirror".to_owned(), json!({ "key": path }).to_string(), kind.to_owned()));
    };
    let mut pick = || loop {
        let i = rng.below(FILES as u64) as usize;
        if !i.is_multiple_of(7) && used.insert(i) {
            return i;
        }
    };
    for _ in 0..5 {
        // Same size, one byte different.
        let i = pick();
        let mut bytes = content(i);
        bytes[0] ^= 0x20;
        write(&stage, &rel(i), &bytes);
        expect(&rel(i), "changed");
    }
    for _ in 0..3 {
        let i = pick();
        let mut bytes = content(i);
        bytes.push(b'!');
        write(&stage, &rel(i), &bytes);
        expect(&rel(i), "changed");
    }
    for _ in 0..5 {
        let i = pick();
        fs::remove_file(stage.join(rel(i))).unwrap();
        expect(&rel(i), "missing");
    }
    // An empty file that gains content, and a file that becomes empty.
    write(&stage, &rel(7), b"now not empty");
    expect(&rel(7), "changed");
    let i = pick();
    write(&stage, &rel(i), b"");
    expect(&rel(i), "changed");
    for extra in [
        "new dir/nested/ñ.txt",
        "a/a.txt",
        "a/b c/",
        "0-first",
        "\u{10ffff}-last",
        "a/empty-extra",
    ] {
        if extra.ends_with('/') {
            // An empty directory is not a row: no divergence.
            fs::create_dir_all(stage.join(extra)).unwrap();
            continue;
        }
        write(&stage, extra, if extra.contains("empty") { b"" } else { b"extra" });
        expect(extra, "extra");
    }

    let run = run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(run.code, Some(2), "diverged trees: {}", run.stderr);
    let found = divergences(&run.report());
    assert_exactly(&expected, &found);
    assert_eq!(found.len(), 20);
}
