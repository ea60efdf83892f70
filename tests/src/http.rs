//! A real HTTP client for the API tests, and a worker started with `--listen` on a free port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// The read-write token the API tests start workers with.
pub const RW: &str = "rw-test-token-5f1c";
/// The read-only token.
pub const RO: &str = "ro-test-token-9a2e";

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `bin ARGS` in `dir` with the tests' tokens, its log in `LOG` (tests pass
/// `env!("CARGO_BIN_EXE_driftless-under-test")`).
pub fn spawn_with_tokens(bin: &str, dir: &Path, args: &[&str], log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("DRIFTLESS_API_TOKENS", format!("{RW},ro:{RO}"))
        .env("DRIFTLESS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the binary starts")
}

/// Starts `bin serve` in `dir` on a free port with the tests' tokens (its log in
/// `serve.log`) and waits until it answers; returns it and its port.
pub async fn serve(bin: &str, dir: &Path) -> (Child, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_with_tokens(bin, dir, &["serve", "--listen", &listen], "serve.log");
    Api::on(port).wait_healthy(&mut child, &dir.join("serve.log")).await;
    (child, port)
}

/// Starts `bin worker --config driftless.toml EXTRA` in `dir`, its log in `worker-N.log`.
pub fn spawn_worker(bin: &str, dir: &Path, n: usize, extra: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(format!("worker-{n}.log"))).unwrap();
    Command::new(bin)
        .args(["worker", "--config", "driftless.toml"])
        .args(extra)
        .current_dir(dir)
        .env("DRIFTLESS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the worker starts")
}

/// An API at `http://127.0.0.1:PORT`.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    client: reqwest::Client,
}

/// A status and a body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body as text.
    pub text: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl Api {
    /// The API on `port`.
    pub fn on(port: u16) -> Api {
        Api {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, token: Option<&str>) -> Answer {
        let request = match token {
            Some(t) => request.header("Authorization", format!("Bearer {t}")),
            None => request,
        };
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        Answer {
            status,
            text: response.text().await.expect("a body"),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)), token).await
    }

    /// `POST path` with `body` (raw text, so malformed bodies can be sent).
    pub async fn post(&self, path: &str, token: Option<&str>, body: &str) -> Answer {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        self.send(request, token).await
    }

    /// Waits (at most 60 s) until `/healthz` answers, failing if `child` exits first.
    pub async fn wait_healthy(&self, child: &mut Child, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the process exited {status}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if let Ok(r) = self.client.get(format!("{}/healthz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "/healthz never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most 120 s) until run `id` has finished; returns its report.
    pub async fn wait_finished(&self, id: &str) -> Json {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answer = self.get(&format!("/v1/runs/{id}"), Some(RO)).await;
            assert_eq!(answer.status, 200, "{}", answer.text);
            let run = answer.json();
            if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} never finished: {run}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Stops `child` with SIGTERM and waits for it; returns its exit code.
pub fn terminate(child: &mut Child) -> Option<i32> {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    child.wait().unwrap().code()
}
