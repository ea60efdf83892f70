//! The one supervisor: steps a set of [`Worker`]s concurrently until each is done, and owns
//! how they stop.
//!
//! - A worker that is busy is stepped again at once; one that is idle or throttled waits
//!   for its interval, or until another worker signals, or until the stop signal.
//! - On the process's stop signal (Ctrl-C, SIGTERM) no worker starts another step; a step in
//!   flight runs on for the [`Shutdown`]'s grace and is then abandoned, as a crash would
//!   abandon it (the ledger and the leases cover that).
//! - When a worker fails, the others stop the same way and the first error is returned.

use std::pin::pin;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::debug;

use crate::error::EngineError;
use crate::worker::{Shutdown, WorkContext, Worker, WorkerState};

/// Workers stepped together in this task.
pub struct Supervisor<'w> {
    workers: Vec<&'w mut dyn Worker>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Supervisor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.workers.iter().map(|w| w.name()).collect();
        f.debug_struct("Supervisor")
            .field("workers", &names)
            .finish_non_exhaustive()
    }
}

impl<'w> Supervisor<'w> {
    /// A supervisor that stops on `shutdown`.
    pub fn new(shutdown: &Shutdown) -> Supervisor<'w> {
        Supervisor {
            workers: Vec::new(),
            shutdown: shutdown.clone(),
        }
    }

    /// Adds a worker; the caller keeps it, to read what it did once the supervisor is done.
    pub fn add(&mut self, worker: &'w mut dyn Worker) -> &mut Supervisor<'w> {
        self.workers.push(worker);
        self
    }

    /// Steps every worker until each is done. Returns the first worker's error, or
    /// [`EngineError::Interrupted`] when the stop signal ended the work.
    pub async fn run(self) -> Result<(), EngineError> {
        // Workers of this supervisor stop together when one fails, while the process's
        // signal stops every supervisor.
        let local = Shutdown::new(self.shutdown.grace);
        let cx = WorkContext {
            signal: Default::default(),
            shutdown: self.shutdown.clone(),
        };
        let mut running: FuturesUnordered<_> = self
            .workers
            .into_iter()
            .map(|worker| drive(worker, &cx, &local))
            .collect();
        let mut first_error = None;
        while let Some(result) = running.next().await {
            if let Err(e) = result {
                local.stop("a worker failed");
                if first_error.is_none() || matches!(first_error, Some(EngineError::Interrupted(_))) {
                    first_error = Some(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Steps one worker until it is done, failed or stopped.
async fn drive(worker: &mut dyn Worker, cx: &WorkContext, local: &Shutdown) -> Result<(), EngineError> {
    let interrupted = || {
        let why = cx.shutdown.reason().unwrap_or_else(|| "a stop signal".to_owned());
        EngineError::Interrupted(format!("interrupted by {why}"))
    };
    loop {
        if cx.stopping() || local.is_stopping() {
            debug!(worker = %worker.name(), "stopping between steps");
            return Err(interrupted());
        }
        // Created before the step, so that a signal given while it runs is not missed.
        let mut woken = pin!(cx.signal.notified());
        woken.as_mut().enable();
        let state = {
            let step = worker.work(cx);
            let abandon = async {
                tokio::select! {
                    () = cx.shutdown.stopped() => {}
                    () = local.stopped() => {}
                }
                tokio::time::sleep(cx.shutdown.grace).await;
            };
            tokio::select! {
                state = step => state?,
                () = abandon => return Err(interrupted()),
            }
        };
        let wait = match state {
            WorkerState::Busy => continue,
            WorkerState::Done => return Ok(()),
            WorkerState::Idle(wait) | WorkerState::Throttled(wait) => wait,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = woken => {}
            () = cx.shutdown.stopped() => {}
            () = local.stopped() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::worker::Latch;

    /// Produces `n` items, one a step, signalling after each.
    struct Producer {
        left: u32,
        made: std::sync::Arc<std::sync::atomic::AtomicU32>,
        done: Latch,
    }

    #[async_trait]
    impl Worker for Producer {
        fn name(&self) -> String {
            "producer".into()
        }

        async fn work(&mut self, cx: &WorkContext) -> Result<WorkerState, EngineError> {
            if self.left == 0 {
                self.done.raise();
                cx.signal();
                return Ok(WorkerState::Done);
            }
            self.left -= 1;
            self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            cx.signal();
            Ok(WorkerState::Busy)
        }
    }

    /// Takes what the producer made, idling (for an hour, unless signalled) when there is none.
    struct Consumer {
        made: std::sync::Arc<std::sync::atomic::AtomicU32>,
        taken: u32,
        done: Latch,
    }

    #[async_trait]
    impl Worker for Consumer {
        fn name(&self) -> String {
            "consumer".into()
        }

        async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
            if self.taken < self.made.load(std::sync::atomic::Ordering::SeqCst) {
                self.taken += 1;
                return Ok(WorkerState::Busy);
            }
            if self.done.is_raised() {
                return Ok(WorkerState::Done);
            }
            Ok(WorkerState::Idle(Duration::from_secs(3600)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn signals_wake_idle_workers_and_both_finish() {
        let made = std::sync::Arc::default();
        let done = Latch::default();
        let mut producer = Producer {
            left: 50,
            made: std::sync::Arc::clone(&made),
            done: done.clone(),
        };
        let mut consumer = Consumer { made, taken: 0, done };
        let shutdown = Shutdown::default();
        let mut supervisor = Supervisor::new(&shutdown);
        supervisor.add(&mut producer).add(&mut consumer);
        // With time paused, an unsignalled hour-long idle would auto-advance the clock;
        // the bound shows the consumer was woken, not timed out.
        let started = tokio::time::Instant::now();
        supervisor.run().await.unwrap();
        assert_eq!(consumer.taken, 50);
        assert!(started.elapsed() < Duration::from_secs(3600), "{:?}", started.elapsed());
    }

    /// Never finishes a step on its own.
    struct Stuck;

    #[async_trait]
    impl Worker for Stuck {
        fn name(&self) -> String {
            "stuck".into()
        }

        async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_signal_abandons_a_step_after_the_grace() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let mut stuck = Stuck;
        let mut supervisor = Supervisor::new(&shutdown);
        supervisor.add(&mut stuck);
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.stop("SIGTERM");
        });
        let started = tokio::time::Instant::now();
        let err = supervisor.run().await.unwrap_err();
        assert!(
            matches!(&err, EngineError::Interrupted(why) if why == "interrupted by SIGTERM"),
            "{err}"
        );
        assert_eq!(started.elapsed().as_secs(), 6);
    }

    /// Fails on its first step.
    struct Failing;

    #[async_trait]
    impl Worker for Failing {
        fn name(&self) -> String {
            "failing".into()
        }

        async fn work(&mut self, _cx: &WorkContext) -> Result<WorkerState, EngineError> {
            Err(EngineError::Input {
                dataset: "d".into(),
                reason: "bad".into(),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_failure_stops_the_others_and_is_returned() {
        let shutdown = Shutdown::default();
        let mut consumer = Consumer {
            made: std::sync::Arc::default(),
            taken: 0,
            done: Latch::default(),
        };
        let mut failing = Failing;
        let mut supervisor = Supervisor::new(&shutdown);
        supervisor.add(&mut consumer).add(&mut failing);
        let err = supervisor.run().await.unwrap_err();
        assert!(matches!(err, EngineError::Input { .. }), "{err}");
        assert!(!shutdown.is_stopping(), "a failure stops this supervisor only");
    }
}
