//! Bad configs and bad flags: exit status 1, a message that names the field, line or name
//! at fault, no panic and no backtrace, and never a password.

use std::path::Path;
use std::process::Command;

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

fn run(dir: &Path, args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the binary starts");
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `config` and a valid SQLite copy next to it, then scans with `args`.
fn scan_with(config: &str, args: &[&str]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    make_db(
        &dir.path().join("a.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE nokey (id INTEGER, v TEXT);",
    );
    std::fs::write(dir.path().join("driftless.toml"), config).unwrap();
    let mut full = vec!["scan", "--report", "json"];
    full.extend_from_slice(args);
    run(dir.path(), &full)
}

fn make_db(path: &Path, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let mut db = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
        db.close().await.unwrap();
    });
}

fn assert_clean_error(out: &Outcome, needles: &[&str]) {
    assert_eq!(out.code, Some(1), "exit status; stderr: {}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "stderr should name {n:?}: {}", out.stderr);
    }
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!out.stderr.contains(bad), "stderr shows a panic: {}", out.stderr);
    }
}

const GOOD_DATASET: &str = r#"
[[datasets]]
name = "d"
canonical = { url = "sqlite://a.db", table = "t" }
stages = [ { name = "s", url = "sqlite://a.db", table = "t" } ]
"#;

#[test]
fn a_good_config_scans_clean() {
    let out = scan_with(GOOD_DATASET, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn unknown_field_names_field_and_line() {
    let config = GOOD_DATASET.replace("name = \"d\"", "name = \"d\"\ncolumnz = [\"v\"]");
    assert_clean_error(&scan_with(&config, &[]), &["columnz", "driftless.toml:4"]);
}

#[test]
fn missing_required_field_names_it() {
    let config = GOOD_DATASET.replace("canonical = { url = \"sqlite://a.db\", table = \"t\" }\n", "");
    assert_clean_error(&scan_with(&config, &[]), &["canonical", "driftless.toml:2"]);
}

#[test]
fn table_without_primary_key_and_no_key_names_dataset_and_copy() {
    let config = GOOD_DATASET.replace("table = \"t\"", "table = \"nokey\"");
    assert_clean_error(
        &scan_with(&config, &[]),
        &["dataset \"d\"", "canonical", "no primary key", "key"],
    );
}

#[test]
fn missing_key_column_names_it() {
    let config = GOOD_DATASET.replace("name = \"d\"", "name = \"d\"\nkey = [\"nope\"]");
    assert_clean_error(&scan_with(&config, &[]), &["dataset \"d\"", "\"nope\""]);
}

#[test]
fn bad_url_names_line_and_scheme() {
    let config = GOOD_DATASET.replace(
        "url = \"sqlite://a.db\", table = \"t\" }\nstages",
        "url = \"mysqlx://a.db\", table = \"t\" }\nstages",
    );
    assert_clean_error(&scan_with(&config, &[]), &["driftless.toml:4", "mysqlx", "canonical"]);
    let config = GOOD_DATASET.replace(
        "{ name = \"s\", url = \"sqlite://a.db\"",
        "{ name = \"s\", url = \"no-scheme\"",
    );
    assert_clean_error(
        &scan_with(&config, &[]),
        &["driftless.toml:5", "stage \"s\"", "not a URL"],
    );
}

#[test]
fn password_never_printed() {
    let config = GOOD_DATASET.replace(
        "sqlite://a.db\", table = \"t\" }\nstages",
        "postgres://app:hunter2@127.0.0.1:1/x\", table = \"t\" }\nstages",
    );
    let out = scan_with(&config, &[]);
    assert_clean_error(&out, &["canonical"]);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
}

#[test]
fn unset_environment_variable_names_it() {
    let config = GOOD_DATASET.replace(
        "sqlite://a.db\", table = \"t\" }\nstages",
        "sqlite://${DRIFTLESS_TEST_UNSET_VAR}\", table = \"t\" }\nstages",
    );
    assert_clean_error(
        &scan_with(&config, &[]),
        &["DRIFTLESS_TEST_UNSET_VAR", "driftless.toml:4"],
    );
}

#[test]
fn unknown_dataset_or_stage_names_it() {
    assert_clean_error(
        &scan_with(GOOD_DATASET, &["--dataset", "nope"]),
        &["\"nope\"", "datasets: d"],
    );
    assert_clean_error(&scan_with(GOOD_DATASET, &["--stage", "nope"]), &["\"nope\""]);
}

#[test]
fn missing_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    assert_clean_error(&run(dir.path(), &["scan", "--config", "absent.toml"]), &["absent.toml"]);
    let config = GOOD_DATASET.replace(
        "sqlite://a.db\", table = \"t\" }\nstages",
        "sqlite://absent.db\", table = \"t\" }\nstages",
    );
    assert_clean_error(&scan_with(&config, &[]), &["absent.db", "canonical", "not found"]);
    let config = GOOD_DATASET.replace("table = \"t\" }\nstages", "table = \"absent_table\" }\nstages");
    assert_clean_error(&scan_with(&config, &[]), &["absent_table", "table not found"]);
    let config = GOOD_DATASET.replace(
        "url = \"sqlite://a.db\", table = \"t\" }\nstages",
        "url = \"file:absent-dir\" }\nstages",
    );
    assert_clean_error(&scan_with(&config, &[]), &["absent-dir", "canonical"]);
}

#[test]
fn duplicate_names_are_rejected() {
    let config = format!("{GOOD_DATASET}{GOOD_DATASET}");
    assert_clean_error(
        &scan_with(&config, &[]),
        &["\"d\" is defined twice", "driftless.toml:8"],
    );
}

#[test]
fn bad_repair_settings_name_the_field_and_line() {
    let with = |table: &str| GOOD_DATASET.replace("name = \"d\"", &format!("name = \"d\"\nrepair = {table}"));
    assert_clean_error(
        &scan_with(&with("{ mode = \"rewrite\" }"), &[]),
        &["driftless.toml:4", "stage \"s\"", "unknown mode \"rewrite\""],
    );
    assert_clean_error(
        &scan_with(&with("{ rate_per_sec = 0.0 }"), &[]),
        &["driftless.toml:4", "rate_per_sec must be a positive"],
    );
    assert_clean_error(
        &scan_with(&with("{ max_divergence_ratio = 2.0 }"), &[]),
        &["driftless.toml:4", "max_divergence_ratio must be in (0, 1]"],
    );
    assert_clean_error(
        &scan_with(&with("{ mode = \"compensate\" }"), &[]),
        &["driftless.toml:4", "needs a `compensate` table"],
    );
    assert_clean_error(
        &scan_with(&with("{ retries = 3 }"), &[]),
        &["driftless.toml:4", "retries"],
    );
    let watermarks = format!("[repair]\nhigh_watermark = 10\nlow_watermark = 20\n{GOOD_DATASET}");
    assert_clean_error(
        &scan_with(&watermarks, &[]),
        &["driftless.toml:3", "low_watermark (20)"],
    );
}

#[test]
fn a_compensating_statement_with_an_unknown_parameter_names_it() {
    let config = GOOD_DATASET.replace(
        "name = \"d\"",
        "name = \"d\"\nrepair = { mode = \"compensate\", compensate = { extra = \"DELETE FROM t WHERE id = :idd\" } }",
    );
    let dir = tempfile::tempdir().unwrap();
    make_db(
        &dir.path().join("a.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
    );
    std::fs::write(dir.path().join("driftless.toml"), config).unwrap();
    let out = run(dir.path(), &["repair", "--report", "json"]);
    assert_clean_error(&out, &["dataset \"d\"", "stage \"s\"", "compensate.extra", ":idd"]);
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["scan", "--no-such-flag"][..],
        &["no-such-command"],
        &["scan", "--report", "yaml"],
    ] {
        let out = run(dir.path(), args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("error:"), "{args:?}: {}", out.stderr);
    }
    let help = run(dir.path(), &["scan", "--help"]);
    assert_eq!(help.code, Some(0), "{}", help.stderr);
}

/// Runs the binary and returns its standard output.
fn stdout_of(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary starts");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn common_flags_work_before_and_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let demo = d.join("demo");
    let (code, _) = stdout_of(d, &["demo", "--dir", demo.to_str().unwrap(), "--report", "json"]);
    assert_eq!(code, Some(0));
    let config = demo.join("driftless.toml");
    let config = config.to_str().unwrap();
    let before = stdout_of(
        d,
        &["--config", config, "--report", "json", "scan", "--dataset", "tax_rules"],
    );
    let after = stdout_of(
        d,
        &["scan", "--config", config, "--dataset", "tax_rules", "--report", "json"],
    );
    for (code, text) in [&before, &after] {
        assert_eq!(*code, Some(2), "{text}");
        let report: serde_json::Value = serde_json::from_str(text).unwrap();
        let datasets: Vec<&str> = report["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["dataset"].as_str().unwrap())
            .collect();
        assert_eq!(datasets, ["tax_rules"], "--dataset was not applied: {text}");
    }
    // Before the subcommand, a config that does not exist is named.
    let missing = run(d, &["--config", "nowhere.toml", "scan"]);
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("nowhere.toml"), "{}", missing.stderr);
}

#[test]
fn connection_refused_names_host_and_port_without_the_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = format!(
        "[control]\nurl = \"postgres://app:hunter2secret@127.0.0.1:{port}/driftless\"\n\n[[datasets]]\nname = \"a\"\n\
         key = [\"id\"]\ncanonical = {{ url = \"sqlite://a.db\", table = \"t\" }}\nstages = []\n"
    );
    let out = scan_with(&config, &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("127.0.0.1:{port}")), "{}", out.stderr);
    assert!(out.stderr.contains("refused"), "the OS error is named: {}", out.stderr);
    assert!(!out.stderr.contains("pool timed out"), "{}", out.stderr);
    assert!(!out.stderr.contains("hunter2secret"), "{}", out.stderr);
}

#[test]
fn every_help_ends_with_examples_and_completions_print() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &[][..],
        &["scan"],
        &["repair"],
        &["worker"],
        &["runs"],
        &["demo"],
        &["completions"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let (code, text) = stdout_of(dir.path(), &args);
        assert_eq!(code, Some(0), "{args:?}");
        let tail = text.trim_end().rsplit("Examples:").next().unwrap();
        assert!(
            text.contains("Examples:") && tail.contains("driftless "),
            "{args:?}: {text}"
        );
    }
    let (code, bash) = stdout_of(dir.path(), &["completions", "bash"]);
    assert_eq!(code, Some(0));
    assert!(bash.contains("_driftless") && bash.contains("--config"), "{bash}");
    let bad = run(dir.path(), &["completions", "tcsh"]);
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
}
