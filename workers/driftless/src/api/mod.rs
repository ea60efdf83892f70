//! The HTTP API (axum): `driftless serve --listen ADDR`, and inside `driftless worker
//! --listen ADDR`. Every route but the probes needs a bearer token ([`auth`]); bodies are
//! bounded, pages are bounded, errors are JSON naming the field ([`error`]).
//!
//! - `POST /v1/runs`, `GET /v1/runs`, `GET /v1/runs/{id}`, `GET /v1/runs/{id}/divergences`,
//!   `POST /v1/runs/{id}/approve` ([`runs`]);
//! - `GET /v1/status`, `GET /metrics`, `GET /healthz`, `GET /readyz` ([`status`]);
//! - the status page, `GET /` and `GET /runs/{id}`, with a login form ([`page`]).

mod auth;
mod error;
mod hex;
mod metrics;
mod page;
mod request;
mod runs;
mod status;
mod view;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use driftless_control::ControlPlane;
use driftless_engine::blackout::Blackouts;
use driftless_engine::{EngineError, Shutdown, WorkContext, Worker, WorkerState};

pub use auth::{TOKENS_ENV, Tokens};

use crate::config::{Loaded, ServeConfig};
pub use crate::render::timestamp;

/// Largest request body accepted (a run's keys included).
const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState(Arc<Shared>);

/// The config, the control plane and the tokens.
#[derive(Debug)]
pub struct Shared {
    /// The config the process runs with (runs are created for it).
    pub loaded: Arc<Loaded>,
    /// The control plane every figure is read from.
    pub control: ControlPlane,
    /// The tokens accepted.
    pub tokens: Tokens,
    /// Whether it is served over TLS (the login cookie is then `Secure`).
    pub tls: bool,
    /// Every configured stage, in config order, with its maintenance windows (resolved once:
    /// the config does not change while the process runs).
    pub stages: Vec<ConfiguredStage>,
}

/// A stage of the config as the API reports it.
#[derive(Debug)]
pub struct ConfiguredStage {
    /// The dataset.
    pub dataset: String,
    /// The stage.
    pub stage: String,
    /// Its maintenance windows.
    pub blackout: Blackouts,
}

/// Every stage of `loaded`, with its windows.
fn configured_stages(loaded: &Loaded) -> Result<Vec<ConfiguredStage>> {
    let source = loaded.source();
    let mut stages = Vec::new();
    for d in &loaded.config.datasets {
        for s in &d.stages {
            stages.push(ConfiguredStage {
                dataset: d.name.get_ref().clone(),
                stage: s.stage_name().to_owned(),
                blackout: d.policy(s, &source)?.blackout,
            });
        }
    }
    Ok(stages)
}

impl Deref for ApiState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl ApiState {
    /// The state of an API over `control` for `loaded`, with its tokens read.
    pub fn new(loaded: Arc<Loaded>, control: ControlPlane) -> Result<ApiState> {
        let serve = &loaded.config.serve;
        let file = serve
            .tokens_file
            .as_deref()
            .map(|p| ServeConfig::resolve(&loaded.dir, p));
        let tokens = Tokens::load(file.as_deref(), std::env::var(TOKENS_ENV).ok().as_deref())?;
        if tokens.len() == 0 {
            tracing::warn!(
                "no API tokens: set [serve] tokens_file or {TOKENS_ENV}; every route but /healthz and /readyz answers 401"
            );
        }
        let tls = serve.tls_cert.is_some();
        let stages = configured_stages(&loaded)?;
        Ok(ApiState(Arc::new(Shared {
            loaded,
            control,
            tokens,
            tls,
            stages,
        })))
    }
}

/// Every route.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/runs", post(runs::create).get(runs::list))
        .route("/v1/runs/{id}", get(runs::show))
        .route("/v1/runs/{id}/divergences", get(runs::divergences))
        .route("/v1/runs/{id}/approve", post(runs::approve))
        .route("/v1/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .route("/", get(page::status))
        .route("/login", post(page::login))
        .route("/runs/{id}", get(page::run))
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The API's listener, bound, with its TLS config read: every setup error surfaces before
/// the process starts working.
pub struct ApiWorker {
    listener: Option<std::net::TcpListener>,
    addr: SocketAddr,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    state: ApiState,
    shutdown: Shutdown,
}

impl std::fmt::Debug for ApiWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiWorker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiWorker {
    /// The API over `control` for `loaded`, bound to `addr`: its tokens read, its port taken.
    pub async fn start(
        addr: SocketAddr,
        loaded: Arc<Loaded>,
        control: ControlPlane,
        shutdown: Shutdown,
    ) -> Result<ApiWorker> {
        ApiWorker::bind(addr, ApiState::new(loaded, control)?, shutdown).await
    }

    /// Binds `addr` (so a taken port is an error at once) and reads `[serve]`'s TLS files.
    pub async fn bind(addr: SocketAddr, state: ApiState, shutdown: Shutdown) -> Result<ApiWorker> {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let serve = &state.loaded.config.serve;
        let tls = match (&serve.tls_cert, &serve.tls_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (
                    ServeConfig::resolve(&state.loaded.dir, cert),
                    ServeConfig::resolve(&state.loaded.dir, key),
                );
                let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .with_context(|| {
                        format!(
                            "[serve]: cannot read tls_cert {} and tls_key {}",
                            cert.display(),
                            key.display()
                        )
                    })?;
                Some(config)
            }
            (None, None) => None,
            _ => anyhow::bail!("[serve]: tls_cert and tls_key go together; name both or neither"),
        };
        Ok(ApiWorker {
            listener: Some(listener),
            addr,
            tls,
            state,
            shutdown,
        })
    }

    /// Serves until the stop signal, then lets requests in flight finish within the grace.
    async fn serve(&mut self, listener: std::net::TcpListener) -> std::io::Result<()> {
        let app = router(self.state.clone()).into_make_service();
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        let (shutdown, grace) = (self.shutdown.clone(), self.state.loaded.config.shutdown_grace());
        tokio::spawn(async move {
            shutdown.stopped().await;
            stopper.graceful_shutdown(Some(grace));
        });
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        eprintln!("driftless: serving the API on {scheme}://{}", self.addr);
        match self.tls.clone() {
            Some(tls) => {
                axum_server::from_tcp_rustls(listener, tls)
                    .handle(handle)
                    .serve(app)
                    .await
            }
            None => axum_server::from_tcp(listener).handle(handle).serve(app).await,
        }
    }
}

#[async_trait::async_trait]
impl Worker for ApiWorker {
    fn name(&self) -> String {
        format!("the API on {}", self.addr)
    }

    /// One step: the whole life of the server.
    async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
        let Some(listener) = self.listener.take() else {
            return Ok(WorkerState::Done);
        };
        self.serve(listener).await.map_err(|e| EngineError::Worker {
            worker: self.name(),
            reason: e.to_string(),
        })?;
        Ok(WorkerState::Done)
    }
}
