//! Units of work: one [`Worker`] trait for everything a run does step by step (detection of
//! a stage, repair of a stage's queue), and the signals workers share under a supervisor
//! ([`crate::supervisor`]).
//!
//! A step is the unit that is finished or not started: a detected range is queued whole, a
//! leased batch is written and settled whole. Between steps a worker holds nothing that
//! another process could not pick up, so stopping between steps loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use crate::error::EngineError;

/// What one step of a worker came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// It did work: step again at once.
    Busy,
    /// Nothing to do now: step again after this long, or sooner when another worker
    /// signals new work.
    Idle(Duration),
    /// Held back (backpressure): step again after this long, or sooner when signalled.
    Throttled(Duration),
    /// Finished for good.
    Done,
}

/// A unit of work, stepped by a supervisor until it is done.
#[async_trait]
pub trait Worker: Send {
    /// What it works on, for logs: `repair "tax_rules"/"eu-west"`.
    fn name(&self) -> String;

    /// One step of work. `cx` signals other workers and says whether to stop.
    async fn work(&mut self, cx: &WorkContext) -> Result<WorkerState, EngineError>;
}

/// What a worker's step may use of its supervisor.
#[derive(Clone, Debug)]
pub struct WorkContext {
    pub(crate) signal: Arc<Notify>,
    pub(crate) shutdown: Shutdown,
}

impl WorkContext {
    /// Wakes the idle and throttled workers of the same supervisor: this worker made work
    /// for them (queued entries) or room (drained the queue).
    pub fn signal(&self) {
        self.signal.notify_waiters();
    }

    /// Whether the process is shutting down: take no new work.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_stopping()
    }
}

/// The process-wide stop signal (Ctrl-C, SIGTERM), and how long work in flight may take to
/// finish after it.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Option<String>>>,
    rx: watch::Receiver<Option<String>>,
    /// How long a step in flight may run on after the signal before it is abandoned (as a
    /// crash would abandon it: the ledger and the leases cover it).
    pub grace: Duration,
}

impl Shutdown {
    /// A signal not yet given, with `grace` for work in flight.
    pub fn new(grace: Duration) -> Shutdown {
        let (tx, rx) = watch::channel(None);
        Shutdown {
            tx: Arc::new(tx),
            rx,
            grace,
        }
    }

    /// Gives the signal; `why` says what stopped the process (`SIGTERM`).
    pub fn stop(&self, why: &str) {
        self.tx.send_if_modified(|reason| {
            let first = reason.is_none();
            if first {
                *reason = Some(why.to_owned());
            }
            first
        });
    }

    /// Whether the signal was given.
    pub fn is_stopping(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// What stopped the process, once it is stopping.
    pub fn reason(&self) -> Option<String> {
        self.rx.borrow().clone()
    }

    /// Waits for the signal.
    pub async fn stopped(&self) {
        let mut rx = self.rx.clone();
        // The sender lives as long as any clone of `self`, so waiting cannot fail early.
        let _ = rx.wait_for(Option::is_some).await;
    }
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new(DEFAULT_GRACE)
    }
}

/// The default time work in flight gets after a stop signal (`shutdown_secs`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A one-way flag one worker raises for another: "the detection feeding your queue is
/// finished".
#[derive(Clone, Debug, Default)]
pub struct Latch(Arc<AtomicBool>);

impl Latch {
    /// A latch already raised.
    pub fn raised() -> Latch {
        let latch = Latch::default();
        latch.raise();
        latch
    }

    /// Raises it.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was raised.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
