//! A lease kept alive by heartbeat, the same for every lease a worker holds: a run it
//! drives, a segment it digests, the queue entries of a batch it writes.

use std::time::Duration;

use crate::context::now_us;

/// Keeps a lease alive: calls `renew(lease_until_us)` every third of `lease`. Returns when
/// the lease is lost: `renew` says it is no longer ours (`Ok(false)`), or it has failed for a
/// whole lease (the control plane out of reach), after which the work it covers may be
/// someone else's and the holder must stop writing. `what` names the lease in warnings.
pub async fn keep_lease<F, Fut, E>(lease: Duration, what: &str, mut renew: F)
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    let lease_us = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
    let mut renewed = now_us();
    loop {
        tokio::time::sleep(lease / 3).await;
        let now = now_us();
        match renew(now.saturating_add(lease_us)).await {
            Ok(true) => renewed = now,
            Ok(false) => return,
            Err(e) if now - renewed < lease_us => {
                tracing::warn!(error = %e, "could not renew {what}; trying again");
            }
            Err(_) => return,
        }
    }
}
