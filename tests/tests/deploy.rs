//! deploy/ is tested, not a sample: the alert rules with promtool, the manifests against the
//! Kubernetes schemas (kubernetes-validate), the dashboard's and the rules' metric names
//! against the ones driftless exports, the Containerfile's instructions, and the flags of
//! the Deployment and the CronJob against the real binary. Nothing is skipped: a missing
//! tool fails the test, saying to run scripts/deploy-tools.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use driftless_tests::sqlite_exec;
use serde_norway::Value as Yaml;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tool on PATH or at one of `candidates`; a missing one fails the test.
fn tool(name: &str, candidates: &[PathBuf]) -> PathBuf {
    for c in candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let c = dir.join(name);
        if c.is_file() {
            return c;
        }
    }
    panic!("{name} is not installed: run scripts/deploy-tools first");
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = tool("promtool", &[]);
    let dir = deploy("prometheus");
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "driftless.rules.yaml"])
            .current_dir(&dir),
    );
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "driftless.rules.test.yaml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_severity_summary_runbook_and_both_test_cases() {
    let rules: Yaml = serde_norway::from_str(&read(&deploy("prometheus/driftless.rules.yaml"))).unwrap();
    let tests = read(&deploy("prometheus/driftless.rules.test.yaml"));
    let tests_yaml: Yaml = serde_norway::from_str(&tests).unwrap();
    let runbook = read(&deploy("RUNBOOK.md"));
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else { continue };
            alerts += 1;
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            let summary = rule["annotations"]["summary"].as_str().unwrap_or_default();
            let runbook_url = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
            if name == "DriftlessBlackout" {
                assert_eq!(severity, "info", "{name}: the blackout only inhibits");
            } else {
                assert!(["page", "ticket"].contains(&severity), "{name}: severity {severity:?}");
            }
            assert!(
                (summary.contains("$labels.dataset") && summary.contains("$labels.stage"))
                    || name == "DriftlessNoWorkers",
                "{name}: the summary names dataset and stage: {summary}"
            );
            let anchor = runbook_url
                .strip_prefix("deploy/RUNBOOK.md#")
                .unwrap_or_else(|| panic!("{name}: runbook_url {runbook_url:?}"));
            assert!(anchors.contains(anchor), "{name}: no RUNBOOK.md section #{anchor}");
            // A firing case (exp_alerts not empty) and a non-firing one (empty).
            let (mut fires, mut silent) = (false, false);
            for case in tests_yaml["tests"].as_sequence().unwrap() {
                for t in case["alert_rule_test"].as_sequence().unwrap() {
                    if t["alertname"].as_str() == Some(name) {
                        let exp = t["exp_alerts"].as_sequence().map(Vec::len).unwrap_or(0);
                        if exp > 0 {
                            fires = true;
                        } else {
                            silent = true;
                        }
                    }
                }
            }
            assert!(fires && silent, "{name}: needs a firing and a non-firing test case");
        }
    }
    assert_eq!(alerts, 9);
}

#[test]
fn alertmanager_config_groups_by_dataset_and_stage_and_checks() {
    let text = read(&deploy("prometheus/alertmanager.yaml"));
    let am: Yaml = serde_norway::from_str(&text).unwrap();
    let group_by: Vec<&str> = am["route"]["group_by"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(group_by, ["alertname", "dataset", "stage"]);
    let inhibit = &am["inhibit_rules"][0];
    assert!(
        inhibit["source_matchers"][0]
            .as_str()
            .unwrap()
            .contains("DriftlessBlackout")
    );
    // amtool is optional (Debian's prometheus-alertmanager); where it is, it must agree.
    let amtool = tool("amtool", &[]);
    run_ok(
        Command::new(amtool)
            .args(["check-config"])
            .arg(deploy("prometheus/alertmanager.yaml")),
    );
}

fn manifests() -> Vec<PathBuf> {
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let validate = tool(
        "kubernetes-validate",
        &[root().join("target/deploy-venv/bin/kubernetes-validate")],
    );
    let kustomization: Yaml = serde_norway::from_str(&read(&deploy("kubernetes/kustomization.yaml"))).unwrap();
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let mut checked = 0;
    for file in manifests() {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        if name == "kustomization.yaml" {
            continue; // no schema for it; it must list every other manifest
        }
        assert!(
            listed.contains(name.as_str()),
            "kustomization.yaml does not list {name}"
        );
        let out = run_ok(Command::new(&validate).arg("--strict").arg(&file));
        assert!(out.contains("passed"), "{name}: {out}");
        checked += 1;
    }
    assert_eq!(checked, listed.len(), "kustomization.yaml lists a missing file");
}

/// Every metric name driftless exports: the `"driftless_..."` string literals of the Rust
/// sources of crates/ and workers/ (where the registries are), so a renamed metric breaks
/// the dashboard check here, not in production.
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![root().join("crates"), root().join("workers")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = read(&path);
                for (i, _) in text.match_indices("\"driftless_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if text[i + 1 + name.len()..].starts_with('"') {
                        names.insert(name);
                    }
                }
            }
        }
    }
    names
}

/// The `driftless_[a-z_]+` identifiers of a query.
fn metric_names(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in expr.match_indices("driftless_") {
        if i > 0 && expr[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        found.push(name);
    }
    found
}

fn assert_exported(what: &str, expr: &str, exported: &BTreeSet<String>) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: names no driftless metric: {expr}");
    for name in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
            .unwrap_or(&name);
        assert!(
            exported.contains(base),
            "{what}: {name} is not a metric driftless exports: {expr}"
        );
    }
}

#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    let exported = exported_metrics();
    assert!(exported.contains("driftless_divergent_keys"), "{exported:?}");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&deploy("grafana/driftless.json"))).unwrap();
    let vars: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains("dataset") && vars.contains("stage"), "{vars:?}");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_exported(title, t["expr"].as_str().unwrap(), &exported);
        }
    }
    let rules: Yaml = serde_norway::from_str(&read(&deploy("prometheus/driftless.rules.yaml"))).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap_or_default();
            assert_exported(name, rule["expr"].as_str().unwrap(), &exported);
        }
    }
}

#[test]
fn containerfile_is_multi_stage_pinned_non_root_exec_form() {
    let text = read(&deploy("Containerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines.iter().filter(|l| l.starts_with("FROM ")).copied().collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(!tag.is_empty() && tag != "latest", "a pinned tag: {from}");
    }
    assert!(froms[0].contains("rust:1.95"), "the workspace toolchain: {}", froms[0]);
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[last_from..];
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid = user.split(':').next().unwrap().trim();
    assert!(uid != "root" && uid != "0", "non-root: USER {user}");
    let entry = runtime
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert!(
        runtime.iter().all(|l| !l.starts_with("RUN ")),
        "no shell in the runtime stage"
    );
    let copy = runtime
        .iter()
        .find(|l| l.starts_with("COPY --from="))
        .expect("the binary copied from the build stage");
    let parts: Vec<&str> = copy.split_whitespace().collect();
    let (src, dst) = (parts[2], parts[3]);
    assert_eq!(entry[0], dst, "ENTRYPOINT runs the copied binary");
    let bin = src.rsplit('/').next().unwrap();
    let manifest = read(&root().join("workers/driftless/Cargo.toml"));
    assert!(
        manifest.contains(&format!("[[bin]]\nname = \"{bin}\"")),
        "{bin} is not a binary of the workspace"
    );
    // Built only where a container builder is present and works.
    for builder in ["docker", "podman", "buildah"] {
        let works = Command::new(builder)
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works && std::env::var_os("DRIFTLESS_TEST_BUILD_IMAGE").is_some() {
            let sub: &[&str] = if builder == "buildah" { &["bud"] } else { &["build"] };
            run_ok(
                Command::new(builder)
                    .args(sub)
                    .args(["-f", "deploy/Containerfile", "-t", "driftless:test", "."])
                    .current_dir(root()),
            );
            break;
        }
    }
}

fn manifest_doc(file: &str) -> Yaml {
    serde_norway::from_str(&read(&deploy(&format!("kubernetes/{file}")))).unwrap()
}

fn args_of(container: &Yaml) -> Vec<String> {
    container["args"]
        .as_sequence()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string args").to_string())
        .collect()
}

/// A local world for the manifests' flags: a SQLite control plane and one tiny dataset,
/// the config at the path the manifests name replaced by its local twin.
async fn world(dir: &Path) -> PathBuf {
    sqlite_exec(
        &dir.join("canonical.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    )
    .await;
    sqlite_exec(
        &dir.join("stage.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    )
    .await;
    let config = dir.join("driftless.toml");
    std::fs::write(
        &config,
        "[control]\nurl = \"sqlite://control.db\"\n\n[repair]\nshutdown_secs = 5\n\n[[datasets]]\nname = \"t\"\nkey = [\"id\"]\ncanonical = { url = \"sqlite://canonical.db\", table = \"t\" }\nstages = [ { name = \"s\", url = \"sqlite://stage.db\", table = \"t\" } ]\n",
    )
    .unwrap();
    config
}

fn localise(args: &[String], config: &Path, replace: &[(&str, String)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a == "/etc/driftless/driftless.toml" {
                return config.display().to_string();
            }
            replace
                .iter()
                .find(|(from, _)| from == a)
                .map(|(_, to)| to.clone())
                .unwrap_or(a.clone())
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test]
async fn the_deployments_worker_flags_are_the_binarys() {
    let deployment = manifest_doc("deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = args_of(container);
    assert_eq!(args[0], "worker");
    // The grace period outlasts the config's shutdown deadline.
    let config: Yaml = manifest_doc("configmap.yaml");
    let toml_text = config["data"]["driftless.toml"].as_str().unwrap();
    let shutdown: u64 = toml_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_secs = "))
        .expect("shutdown_secs in the ConfigMap")
        .parse()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > shutdown,
        "terminationGracePeriodSeconds {grace} <= shutdown_secs {shutdown}"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"].as_str(), Some(path));
    }

    let dir = tempfile::tempdir().unwrap();
    let config = world(dir.path()).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let local = localise(&args, &config, &[("0.0.0.0:8080", addr.clone())]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftless-under-test"))
        .args(&local)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let healthy = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "driftless {local:?} exited {status} instead of serving:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(answer) = http_get(&addr, "/healthz") {
            break answer;
        }
        assert!(Instant::now() < deadline, "/healthz never answered on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_cronjobs_repair_flags_are_the_binarys() {
    let cron = manifest_doc("cronjob.yaml");
    let container = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let args = args_of(container);
    assert_eq!(args[0], "repair");
    let gateway = args.iter().position(|a| a == "--pushgateway").expect("--pushgateway");

    // A Pushgateway stand-in answering 200 to every request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let pushes = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&got).contains("driftless_") {
                break;
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        String::from_utf8_lossy(&got).into_owned()
    });

    let dir = tempfile::tempdir().unwrap();
    let config = world(dir.path()).await;
    let local = localise(&args, &config, &[(args[gateway + 1].as_str(), url)]);
    let out = Command::new(env!("CARGO_BIN_EXE_driftless-under-test"))
        .args(&local)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "driftless {local:?} exited {:?}:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = pushes.join().unwrap();
    assert!(pushed.contains("driftless_"), "no metrics pushed: {pushed}");
}
