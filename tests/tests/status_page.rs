//! The status page in a real headless browser (Debian's chromium, installed by
//! scripts/deploy-tools) against a real `driftless serve`: a drifting stage shows as drifting
//! with its keys, a consistent one as consistent, a key holding `<script>` shows as text, and
//! a screenshot is kept (`target/tmp/status-page.png`). Without a token the page is a login
//! form, and signing in sets the cookie the page then takes.

use std::path::Path;
use std::process::Command;

use driftless_tests::http::{RO, serve, terminate};
use driftless_tests::{run_driftless, sqlite_exec};

const BIN: &str = env!("CARGO_BIN_EXE_driftless-under-test");
const EVIL: &str = "<script>alert(1)</script>";

async fn world(dir: &Path) {
    let rows = format!(
        "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT); INSERT INTO t VALUES ('a', '1'), ('b', '2'), ('{EVIL}', '3');"
    );
    sqlite_exec(&dir.join("canonical.db"), &rows).await;
    sqlite_exec(&dir.join("steady.db"), &rows).await;
    sqlite_exec(
        &dir.join("drifting.db"),
        "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT); INSERT INTO t VALUES ('a', '1'), ('b', 'changed');",
    )
    .await;
    std::fs::write(
        dir.join("driftless.toml"),
        "[control]\nurl = \"sqlite://control.db\"\n\n[[datasets]]\nname = \"t\"\nkey = [\"k\"]\n\
         canonical = { url = \"sqlite://canonical.db\", table = \"t\" }\n\
         stages = [\n  { name = \"steady\", url = \"sqlite://steady.db\", table = \"t\" },\n  \
         { name = \"drifting\", url = \"sqlite://drifting.db\", table = \"t\" },\n]\n",
    )
    .unwrap();
}

/// The page's row of `stage`: the `<tr>` holding its name.
fn row<'a>(dom: &'a str, stage: &str) -> &'a str {
    dom.split("<tr>")
        .find(|r| r.contains(&format!("<td>{stage}</td>")))
        .unwrap_or_else(|| panic!("no row for {stage} in:\n{dom}"))
}

fn chromium(args: &[&str]) -> std::process::Output {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .args(args)
        .output()
        .expect("chromium is installed (scripts/deploy-tools installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn the_status_page_shows_each_stage_as_it_is_and_keys_as_text_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path()).await;
    let scan = run_driftless!(dir.path(), &["scan", "--report", "json"]);
    assert_eq!(scan.code, Some(2), "{}", scan.stderr);
    let (mut serve, port) = serve(BIN, dir.path()).await;

    // The browser signs in with Basic credentials whose password is the (read-only) token.
    let url = format!("http://driftless:{RO}@127.0.0.1:{port}/");
    let dom = String::from_utf8(chromium(&["--dump-dom", &url]).stdout).unwrap();
    let drifting = row(&dom, "drifting");
    assert!(drifting.contains(r#"class="drift""#), "{drifting}");
    assert!(
        drifting.contains("missing") && drifting.contains("changed"),
        "{drifting}"
    );
    assert!(
        drifting.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the key is not shown as text: {drifting}"
    );
    assert!(!dom.contains(EVIL), "the key became markup:\n{dom}");
    let steady = row(&dom, "steady");
    assert!(steady.contains(r#"class="consistent""#), "{steady}");
    let run_id = scan.report()["run_id"].as_str().unwrap().to_owned();
    assert!(
        dom.contains(&format!("href=\"/runs/{run_id}\"")),
        "no link to the run's report"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        "--window-size=1280,800",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    let report = String::from_utf8(
        chromium(&[
            "--dump-dom",
            &format!("http://driftless:{RO}@127.0.0.1:{port}/runs/{run_id}"),
        ])
        .stdout,
    )
    .unwrap();
    assert!(
        report.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !report.contains(EVIL),
        "{report}"
    );
    assert_eq!(terminate(&mut serve), Some(0));
}

#[tokio::test]
async fn without_a_token_the_page_is_a_login_form_whose_cookie_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    world(dir.path()).await;
    let (mut serve, port) = serve(BIN, dir.path()).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let form = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(form.status().as_u16(), 401);
    assert!(form.text().await.unwrap().contains(r#"action="/login""#));
    let wrong = client
        .post(format!("{base}/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("token=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let login = client
        .post(format!("{base}/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={RO}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains(RO),
        "{cookie}"
    );
    let jar = cookie.split(';').next().unwrap().to_owned();
    let page = client
        .get(format!("{base}/"))
        .header("Cookie", jar)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("<td>drifting</td>"));
    assert_eq!(terminate(&mut serve), Some(0));
}
