//! Running blocking work (the walk, file reads, hashing) off the async runtime.
//!
//! Reading files is blocking I/O and hashing is CPU work; both belong on the blocking pool
//! and rayon, never on a runtime worker, where they would stall every other task.

use std::ops::Range;
use std::sync::Arc;

use driftless_store::StoreError;
use tokio::task::JoinHandle;

use crate::digest::window_files;

/// Runs blocking work off the runtime. A panic in it is re-raised here rather than turned
/// into an error: it is a bug, not a property of the copy.
pub(crate) async fn blocking<T: Send + 'static>(
    location: &str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    join(location, tokio::task::spawn_blocking(f)).await
}

async fn join<T>(location: &str, handle: JoinHandle<Result<T, StoreError>>) -> Result<T, StoreError> {
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels a blocking task; the caller is going away too.
        Err(e) => Err(StoreError::Read {
            location: location.to_owned(),
            reason: format!("task cancelled: {e}"),
        }),
    }
}

/// Windows `[from, end)` of the listing, each digested by `work` in a blocking task. The next
/// window is started before the current one is awaited, so the rayon pool does not idle while
/// the consumer handles a result.
pub(crate) struct Windows<T, F> {
    location: Arc<str>,
    end: usize,
    size: usize,
    work: F,
    pending: Option<Pending<T>>,
}

impl<T, F> Windows<T, F>
where
    T: Send + 'static,
    F: Fn(Range<usize>) -> Result<T, StoreError> + Clone + Send + 'static,
{
    pub(crate) fn new(location: Arc<str>, from: usize, end: usize, work: F) -> Self {
        let mut w = Windows {
            location,
            end,
            size: window_files(),
            work,
            pending: None,
        };
        w.pending = w.spawn(from);
        w
    }

    fn spawn(&self, from: usize) -> Option<Pending<T>> {
        (from < self.end).then(|| {
            let range = from..from.saturating_add(self.size).min(self.end);
            let (work, r) = (self.work.clone(), range.clone());
            (range, tokio::task::spawn_blocking(move || work(r)))
        })
    }

    /// The next window's result; `None` after the last.
    pub(crate) async fn next(&mut self) -> Option<Result<T, StoreError>> {
        let (range, handle) = self.pending.take()?;
        self.pending = self.spawn(range.end);
        Some(join(&self.location, handle).await)
    }
}

/// A window in flight: the rows it covers and the task digesting them.
type Pending<T> = (Range<usize>, JoinHandle<Result<T, StoreError>>);
