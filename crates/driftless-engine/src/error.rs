//! The engine's one error enum, and how its messages name the copies.

use driftless_store::StoreError;

/// A run failed; the message names the dataset and the copy.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A store failed.
    #[error("dataset {dataset:?}, {copy}: {error}")]
    Store {
        /// The dataset.
        dataset: String,
        /// `canonical copy` or `stage "name"`.
        copy: String,
        /// The store's error, part of this message (not a separate cause, so it prints once).
        error: StoreError,
    },
    /// The control plane failed.
    #[error("dataset {dataset:?}: {error}")]
    Control {
        /// The dataset.
        dataset: String,
        /// The control plane's error.
        error: driftless_control::ControlError,
    },
    /// Input the run was given does not fit the dataset (a key in a `--keys` file, a
    /// compensating statement, a scope the dataset cannot serve).
    #[error("dataset {dataset:?}: {reason}")]
    Input {
        /// The dataset.
        dataset: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// A digest task panicked or was cancelled.
    #[error("dataset {dataset:?}, {copy}: digest task failed: {reason}")]
    Task {
        /// The dataset.
        dataset: String,
        /// Which copy's task.
        copy: String,
        /// What happened.
        reason: String,
    },
    /// A run cannot be created, continued or read as asked.
    #[error("run {run_id}: {reason}")]
    Run {
        /// The run.
        run_id: String,
        /// Why.
        reason: String,
    },
    /// No run with this id is recorded in the control plane.
    #[error("run {0}: no such run is recorded in the control plane")]
    UnknownRun(String),
    /// A long-running worker of a fleet process (the API server, say) could not go on.
    #[error("{worker}: {reason}")]
    Worker {
        /// The worker's name.
        worker: String,
        /// Why.
        reason: String,
    },
    /// Ctrl-C or SIGTERM stopped the run between steps of work.
    #[error("{0}")]
    Interrupted(String),
}

/// How errors name the canonical copy.
pub fn canonical_label() -> String {
    "canonical copy".to_owned()
}

/// How errors name a stage.
pub fn stage_label(name: &str) -> String {
    format!("stage {name:?}")
}
