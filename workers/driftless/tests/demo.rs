//! The README's first command: `driftless demo` builds a world with known drift, scans it,
//! and exits 0 only when the report names exactly the injected divergences.

use std::process::Command;

#[test]
fn demo_reports_exactly_the_injected_drift() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["demo", "--dir", "world", "--report", "json", "--out", "report.json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("exactly the 9 injected divergences"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["mode"], "scan");
    let stages: Vec<(String, String, u64)> = report["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| {
            d["stages"].as_array().unwrap().iter().map(move |s| {
                (
                    d["dataset"].as_str().unwrap().to_owned(),
                    s["stage"].as_str().unwrap().to_owned(),
                    s["divergent"].as_u64().unwrap(),
                )
            })
        })
        .collect();
    let expected = [
        ("tax_rules", "playground", 5),
        ("tax_rules", "test", 1),
        ("tax_rules", "production", 0),
    ];
    for (d, s, n) in expected {
        assert!(
            stages.contains(&(d.to_owned(), s.to_owned(), n)),
            "{d}/{s} should have {n}: {stages:?}"
        );
    }

    // Scanning the demo's config again finds the same drift: exit 2, and the table names it.
    let again = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args([
            "scan",
            "--config",
            "world/driftless.toml",
            "--report",
            "table",
            "--stage",
            "test",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(table.contains("changed   {\"id\":3000}"), "{table}");
    assert!(
        table.contains("extra     {\"key\":\"release 9/stray.json\"}"),
        "{table}"
    );
    assert!(
        !table.contains("playground"),
        "--stage test must leave other stages out: {table}"
    );

    // The demo refuses to replace a directory it did not make.
    std::fs::create_dir(dir.path().join("mine")).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["demo", "--dir", "mine"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("was not made by `driftless demo`"));
}

/// The demo's world heals: `repair` writes its tables and its directories, and a scan after
/// it finds every stage consistent.
#[test]
fn demo_then_repair_heals_tables_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_driftless"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let demo = run(&["demo", "--dir", "world", "--report", "json"]);
    assert_eq!(demo.status.code(), Some(0), "{}", String::from_utf8_lossy(&demo.stderr));
    let repair = run(&["repair", "--config", "world/driftless.toml", "--report", "json"]);
    let report = String::from_utf8_lossy(&repair.stdout);
    assert_eq!(
        repair.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    let scan = run(&["scan", "--config", "world/driftless.toml", "--report", "json"]);
    assert_eq!(scan.status.code(), Some(0), "{}", String::from_utf8_lossy(&scan.stdout));
    // The edited file holds canonical's bytes again, the deleted one is back, the stray gone.
    let world = dir.path().join("world");
    for file in ["release 5/asset-005.json", "release 3/asset-150.json"] {
        assert_eq!(
            std::fs::read(world.join("playground-assets").join(file)).unwrap(),
            std::fs::read(world.join("canonical-assets").join(file)).unwrap(),
            "{file}"
        );
    }
    assert!(!world.join("test-assets/release 9/stray.json").exists());
}
