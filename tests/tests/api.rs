//! The HTTP API over real HTTP: a real `driftless worker --listen` (and `driftless serve`)
//! against a real control plane (SQLite for the request checks, PostgreSQL for the fleet).
//!
//! - Every route but the probes refuses a missing or unknown token (401); a read-only token
//!   reads but may not create or approve (403); malformed bodies and parameters get 400 naming
//!   the field; unknown runs 404.
//! - With `[serve] tls_cert` and `tls_key` it speaks TLS (checked with curl).
//! - An on-demand repair created through the API heals its stage; a run the breaker held is
//!   released by an approval through the API and repairs; divergences page by cursor; the
//!   status and `/metrics` (parsed as Prometheus text) say what the runs did.

use std::collections::BTreeSet;
use std::path::Path;

use driftless_tests::http::{Api, RO, RW, free_port, spawn_with_tokens, terminate};
use driftless_tests::{fresh_pg_database, sqlite_exec, sqlite_rows};
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_driftless-under-test");

/// Canonical with 20 rows; stage `a` with 3 changed rows, stage `b` with 5 (the breaker
/// holds a repair of `b` over 2 keys).
async fn world(dir: &Path, control_url: &str) {
    sqlite_exec(
        &dir.join("canonical.db"),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
         INSERT INTO t SELECT i, 'v' || i FROM n;",
    )
    .await;
    for (stage, changed) in [("a", 3), ("b", 5)] {
        std::fs::copy(dir.join("canonical.db"), dir.join(format!("{stage}.db"))).unwrap();
        sqlite_exec(
            &dir.join(format!("{stage}.db")),
            &format!("UPDATE t SET v = 'drifted' WHERE id <= {changed};"),
        )
        .await;
    }
    std::fs::write(
        dir.join("driftless.toml"),
        format!(
            "[control]\nurl = {control_url:?}\n\n[repair]\nshutdown_secs = 5\n\n\
             [[datasets]]\nname = \"t\"\nkey = [\"id\"]\nrepair = {{ max_divergence_ratio = 0.5 }}\n\
             canonical = {{ url = \"sqlite://canonical.db\", table = \"t\" }}\n\
             stages = [\n  {{ name = \"a\", url = \"sqlite://a.db\", table = \"t\" }},\n  \
             {{ name = \"b\", url = \"sqlite://b.db\", table = \"t\", repair = {{ max_repairs = 2 }} }},\n]\n"
        ),
    )
    .unwrap();
}

/// A worker of every role serving the API on a free port.
async fn start(dir: &Path) -> (std::process::Child, Api) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_with_tokens(
        BIN,
        dir,
        &["worker", "--config", "driftless.toml", "--listen", &listen],
        "worker.log",
    );
    let api = Api::on(port);
    api.wait_healthy(&mut child, &dir.join("worker.log")).await;
    (child, api)
}

fn error_field(answer: &driftless_tests::http::Answer) -> String {
    answer.json()["field"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn tokens_fields_and_unknown_runs_are_refused_as_they_should_be() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path(), "sqlite://control.db").await;
    let (mut child, api) = start(dir.path()).await;

    for path in [
        "/v1/status",
        "/v1/runs",
        "/metrics",
        "/v1/runs/x",
        "/v1/runs/x/divergences?stage=a",
    ] {
        for token in [None, Some("not-a-token"), Some("ro:ro-test-token-9a2e")] {
            let answer = api.get(path, token).await;
            assert_eq!(answer.status, 401, "GET {path} with {token:?}: {}", answer.text);
        }
        assert_eq!(
            api.get(path, Some(RO)).await.status / 100 == 2,
            !path.contains("/x"),
            "{path}"
        );
    }
    assert_eq!(api.get("/healthz", None).await.status, 200);
    assert_eq!(api.get("/readyz", None).await.status, 200);

    let repair = r#"{"mode": "repair", "stages": ["a"]}"#;
    assert_eq!(api.post("/v1/runs", None, repair).await.status, 401);
    assert_eq!(api.post("/v1/runs", Some(RO), repair).await.status, 403);
    assert_eq!(api.post("/v1/runs/x/approve", Some(RO), "").await.status, 403);

    for (body, field) in [
        (r#"{"stages": ["a"]}"#, "mode"),
        (r#"{"mode": "heal"}"#, "mode"),
        (r#"{"mode": "repair", "dataset": 7}"#, "dataset"),
        (r#"{"mode": "repair", "dataset": "nope"}"#, "dataset"),
        (r#"{"mode": "repair", "stages": "a"}"#, "stages"),
        (r#"{"mode": "repair", "stages": ["zz"]}"#, "stages"),
        (r#"{"mode": "repair", "dry_run": "yes"}"#, "dry_run"),
        (r#"{"mode": "repair", "keys": {"id": 1}}"#, "keys"),
        (r#"{"mode": "repair", "since": "yesterday"}"#, "since"),
        (r#"{"mode": "repair", "colour": "blue"}"#, "colour"),
    ] {
        let answer = api.post("/v1/runs", Some(RW), body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        assert_eq!(error_field(&answer), field, "{body}: {}", answer.text);
    }
    let answer = api.post("/v1/runs", Some(RW), "{not json").await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(
        answer.json()["error"].as_str().unwrap().contains("not JSON"),
        "{}",
        answer.text
    );
    let huge = format!(r#"{{"mode": "scan", "keys": [{}1]}}"#, "1, ".repeat(40_000));
    assert_eq!(api.post("/v1/runs", Some(RW), &huge).await.status, 413);
    for query in ["limit=0", "limit=5000", "limit=ten"] {
        let answer = api.get(&format!("/v1/runs?{query}"), Some(RO)).await;
        assert_eq!(
            (answer.status, error_field(&answer)),
            (400, "limit".to_owned()),
            "{query}"
        );
    }

    let unknown = "01890000-0000-7000-8000-000000000000";
    for answer in [
        api.get(&format!("/v1/runs/{unknown}"), Some(RO)).await,
        api.get(&format!("/v1/runs/{unknown}/divergences?stage=a"), Some(RO))
            .await,
        api.post(&format!("/v1/runs/{unknown}/approve"), Some(RW), "").await,
    ] {
        assert_eq!(answer.status, 404, "{}", answer.text);
        assert!(
            answer.json()["error"].as_str().unwrap().contains(unknown),
            "{}",
            answer.text
        );
    }
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    assert!(!log.contains(RW) && !log.contains(RO), "a token in the log:\n{log}");
    assert_eq!(terminate(&mut child), Some(0));
}

/// `driftless_NAME{dataset="t", stage=STAGE}` in a parsed exposition.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, stage: Option<&str>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && stage.is_none_or(|st| s.labels.get("stage") == Some(st)))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

async fn scrape(api: &Api) -> prometheus_parse::Scrape {
    let answer = api.get("/metrics", Some(RO)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let lines = answer.text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("/metrics is Prometheus text")
}

fn stage_status(status: &Json, stage: &str) -> Json {
    status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .cloned()
        .unwrap_or_else(|| panic!("no stage {stage} in {status}"))
}

async fn create(api: &Api, body: &str) -> String {
    let answer = api.post("/v1/runs", Some(RW), body).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    answer.json()["run_id"].as_str().unwrap().to_owned()
}

/// Every divergence of `stage` in run `id`, two a page.
async fn all_pages(api: &Api, id: &str, stage: &str) -> Vec<Json> {
    let (mut all, mut after) = (Vec::new(), String::new());
    loop {
        let path = format!("/v1/runs/{id}/divergences?stage={stage}&limit=2&after={after}");
        let page = api.get(&path, Some(RO)).await.json();
        all.extend(page["divergences"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return all,
        }
    }
}

#[tokio::test]
async fn runs_created_and_approved_through_the_api_heal_their_stages_and_metrics_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (_pool, url) = fresh_pg_database("api_fleet").await;
    world(dir.path(), &url).await;
    let (mut child, api) = start(dir.path()).await;
    let canonical = sqlite_rows(&dir.path().join("canonical.db"), "SELECT * FROM t ORDER BY id").await;

    // Detection first: the scan's divergences, paged.
    let scan = create(&api, r#"{"mode": "scan"}"#).await;
    let report = api.wait_finished(&scan).await;
    assert_eq!(report["status"], "drift", "{report}");
    let paged = all_pages(&api, &scan, "b").await;
    let keys: BTreeSet<String> = paged.iter().map(|d| d["key"].to_string()).collect();
    assert_eq!((paged.len(), keys.len()), (5, 5), "{paged:?}");
    assert!(paged.iter().all(|d| d["kind"] == "changed"), "{paged:?}");

    // The on-demand repair of stage a heals it.
    let repair = create(&api, r#"{"mode": "repair", "dataset": "t", "stages": ["a"]}"#).await;
    let report = api.wait_finished(&repair).await;
    assert_eq!(report["status"], "consistent", "{report}");
    assert_eq!(
        sqlite_rows(&dir.path().join("a.db"), "SELECT * FROM t ORDER BY id").await,
        canonical
    );

    // The breaker holds stage b; the API's approval releases it and a worker repairs it.
    let held = create(&api, r#"{"mode": "repair", "stages": ["b"]}"#).await;
    let report = api.wait_finished(&held).await;
    assert_eq!(report["status"], "held", "{report}");
    let status = api.get("/v1/status", Some(RO)).await.json();
    assert_eq!(stage_status(&status, "b")["state"], "held", "{status}");
    assert_eq!(stage_status(&status, "a")["state"], "consistent", "{status}");
    let before = scrape(&api).await;
    assert_eq!(sample(&before, "driftless_held_runs", None), Some(1.0));
    assert_eq!(sample(&before, "driftless_divergent_keys", Some("b")), Some(5.0));
    assert_eq!(sample(&before, "driftless_divergent_keys", Some("a")), Some(0.0));
    assert_eq!(sample(&before, "driftless_consistency_ratio", Some("b")), Some(0.75));
    assert_eq!(sample(&before, "driftless_repairs_total", Some("a")), Some(3.0));
    assert!(sample(&before, "driftless_workers", None).is_some_and(|n| n >= 1.0));

    assert_eq!(
        api.post(&format!("/v1/runs/{held}/approve"), Some(RO), "").await.status,
        403
    );
    let approved = api.post(&format!("/v1/runs/{held}/approve"), Some(RW), "").await;
    assert_eq!(approved.status, 202, "{}", approved.text);
    let report = api.wait_finished(&held).await;
    assert_eq!(report["status"], "consistent", "{report}");
    assert_eq!(
        sqlite_rows(&dir.path().join("b.db"), "SELECT * FROM t ORDER BY id").await,
        canonical
    );
    let again = api.post(&format!("/v1/runs/{held}/approve"), Some(RW), "").await;
    assert_eq!(again.status, 409, "{}", again.text);

    let after = scrape(&api).await;
    assert_eq!(sample(&after, "driftless_held_runs", None), Some(0.0));
    assert_eq!(sample(&after, "driftless_divergent_keys", Some("b")), Some(0.0));
    assert_eq!(sample(&after, "driftless_consistency_ratio", Some("b")), Some(1.0));
    assert_eq!(sample(&after, "driftless_repairs_total", Some("b")), Some(5.0));
    assert_eq!(sample(&after, "driftless_queue_depth", Some("b")), Some(0.0));
    assert_eq!(
        sample(&after, "driftless_reconciliation_lag_seconds_count", Some("b")),
        Some(5.0)
    );
    assert_eq!(
        sample(&after, "driftless_reconciliation_lag_seconds_count", Some("a")),
        Some(3.0)
    );
    // The work counters: the scan and the held run read b (20 rows each), the scan and the
    // repair read a; canonical was read once by each of the three runs.
    assert_eq!(sample(&after, "driftless_rows_digested_total", Some("b")), Some(40.0));
    assert_eq!(sample(&after, "driftless_rows_digested_total", Some("a")), Some(40.0));
    assert_eq!(
        sample(&after, "driftless_rows_digested_total", Some("canonical")),
        Some(60.0)
    );
    assert_eq!(
        sample(&after, "driftless_duplicate_commits_total", Some("b")),
        Some(0.0)
    );
    assert_eq!(sample(&after, "driftless_run_duration_seconds_count", None), Some(3.0));
    assert!(sample(&after, "driftless_backpressure_seconds_total", Some("b")).is_some());
    let runs = api.get("/v1/runs?dataset=t&limit=10", Some(RO)).await.json();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(ids, [held.as_str(), repair.as_str(), scan.as_str()]);
    assert_eq!(terminate(&mut child), Some(0));
}

#[tokio::test]
async fn serve_alone_reads_the_control_plane_a_worker_writes() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path(), "sqlite://control.db").await;
    let scan = driftless_tests::run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(2), "{}", scan.stderr);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = spawn_with_tokens(BIN, dir.path(), &["serve", "--listen", &listen], "serve.log");
    let api = Api::on(port);
    api.wait_healthy(&mut serve, &dir.path().join("serve.log")).await;
    let status = api.get("/v1/status", Some(RO)).await.json();
    for (stage, divergent) in [("a", 3), ("b", 5)] {
        let s = stage_status(&status, stage);
        assert_eq!(
            (s["state"].as_str(), s["divergent"].as_i64()),
            (Some("drift"), Some(divergent)),
            "{s}"
        );
        assert_eq!(s["last_run"]["run_id"], scan.report()["run_id"], "{s}");
    }
    // A one-shot repair of stage a, read back by the serving process from the SQLite ledger.
    let repair = driftless_tests::run_driftless!(dir.path(), &["repair", "--stage", "a", "--report", "json"]);
    assert_eq!(repair.code, Some(0), "{}", repair.stderr);
    let metrics = scrape(&api).await;
    assert_eq!(
        sample(&metrics, "driftless_reconciliation_lag_seconds_count", Some("a")),
        Some(3.0)
    );
    assert_eq!(sample(&metrics, "driftless_repairs_total", Some("a")), Some(3.0));
    assert_eq!(sample(&metrics, "driftless_divergent_keys", Some("a")), Some(0.0));
    assert_eq!(sample(&metrics, "driftless_divergent_keys", Some("b")), Some(5.0));
    let taken = driftless_tests::run_driftless!(dir.path(), &["serve", "--listen", &listen]);
    assert_eq!(taken.code, Some(1));
    assert!(
        taken.stderr.contains(&format!("cannot listen on {listen}")),
        "{}",
        taken.stderr
    );
    assert_eq!(terminate(&mut serve), Some(0));
}

#[tokio::test]
async fn with_a_certificate_and_key_the_api_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path(), "sqlite://control.db").await;
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config = dir.path().join("driftless.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("[serve]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\n{text}"),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = spawn_with_tokens(BIN, dir.path(), &["serve", "--listen", &listen], "serve.log");
    let curl = |path: &str, token: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("https://{listen}{path}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while curl("/healthz", "") != "200" {
        if let Some(status) = serve.try_wait().unwrap() {
            panic!(
                "serve exited {status}: {}",
                std::fs::read_to_string(dir.path().join("serve.log")).unwrap()
            );
        }
        assert!(std::time::Instant::now() < deadline, "https /healthz never answered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(curl("/v1/status", RO), "200");
    assert_eq!(curl("/v1/status", "nope"), "401");
    // Plain HTTP on the TLS port gets no API answer.
    let answered = reqwest::Client::new()
        .get(format!("http://{listen}/healthz"))
        .send()
        .await;
    assert!(
        answered.is_err() || !answered.unwrap().status().is_success(),
        "plain HTTP was served on the TLS port"
    );
    assert_eq!(terminate(&mut serve), Some(0));
}
