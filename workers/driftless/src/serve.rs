//! `driftless serve --listen ADDR`: the HTTP API and status page alone, with a heartbeat, under
//! one supervisor until SIGTERM. It reads the control plane only: runs it creates or approves
//! are driven by `driftless worker` processes.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use driftless_engine::{EngineError, Supervisor};

use crate::api::ApiWorker;
use crate::config;
use crate::heartbeat::Heartbeat;
use crate::open::open_control;
use crate::{Common, ServeArgs, run, signals};

/// Serves until a stop signal; `Ok(false)`: it stopped cleanly.
pub async fn run(common: &Common, args: &ServeArgs) -> Result<bool> {
    let loaded = Arc::new(config::load(&common.config)?);
    let control = open_control(&loaded).await?;
    let shutdown = signals::listen(loaded.config.shutdown_grace());
    let mut api = ApiWorker::start(args.listen, loaded.clone(), control.clone(), shutdown.clone()).await?;
    let mut heartbeat = Heartbeat::new(control, run::worker_id(), vec!["serve"]);
    let mut supervisor = Supervisor::new(&shutdown);
    supervisor.add(&mut api).add(&mut heartbeat);
    let result = supervisor.run().await;
    heartbeat.forget().await;
    match result {
        Ok(()) | Err(EngineError::Interrupted(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Parses `--listen`: `HOST:PORT`, or `:PORT` for every interface.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_owned()
    };
    full.parse()
        .map_err(|_| format!("{text:?} is not an address to listen on (e.g. 127.0.0.1:8080 or :8080)"))
}
