//! Ctrl-C and SIGTERM: the first asks the run to stop between batches (the engine's
//! [`Shutdown`]), a second one ends the process at once (what a crash would leave, the
//! ledger and the leases let the next run finish).

use driftless_engine::Shutdown;

/// Exit status after a second signal: 128 + SIGINT, as shells report it.
const EXIT_FORCED: i32 = 130;

/// A stop signal given on the first Ctrl-C or SIGTERM; `grace` is how long a batch in flight
/// may take to finish.
pub fn listen(grace: std::time::Duration) -> Shutdown {
    let shutdown = Shutdown::new(grace);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let first = signal().await;
        eprintln!(
            "driftless: {first}: stopping after the batch in flight (at most {} s); \
             press Ctrl-C again to stop at once",
            grace.as_secs()
        );
        stop.stop(first);
        let second = signal().await;
        eprintln!("driftless: {second} again: stopping now; the next run finishes what was in flight");
        std::process::exit(EXIT_FORCED);
    });
    shutdown
}

/// Waits for Ctrl-C or SIGTERM and names it. When a signal cannot be listened for, only
/// the other one stops the run.
async fn signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "Ctrl-C",
        () = term => "SIGTERM",
    }
}
