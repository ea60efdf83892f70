//! Whether an endpoint honours conditional writes, found out once per copy, never guessed.
//!
//! The probe writes a small object under the copy's prefix with `If-None-Match: *`, then
//! writes it again with the same header: a server that honours the header refuses the
//! second write with 412 Precondition Failed; one that ignores it overwrites. The probe
//! object is then deleted. Its name starts with `.driftless-probe-`, which listings skip,
//! so a scan running meanwhile never reports it.

use aws_sdk_s3::primitives::ByteStream;
use tracing::{debug, warn};

use crate::list::PROBE_PREFIX;
use crate::{S3Store, client};

impl S3Store {
    /// Whether this copy's endpoint honours `If-Match` and `If-None-Match` on writes.
    pub(crate) async fn conditional_writes(&self) -> bool {
        *self.conditional.get_or_init(|| self.probe()).await
    }

    async fn probe(&self) -> bool {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = self.full_key(&format!("{PROBE_PREFIX}{}-{nanos}", std::process::id()));
        let put = || {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from_static(b"driftless conditional-write probe"))
                .send()
        };
        let honoured = match put().await {
            Err(e) => {
                warn!(copy = %self.location, error = %client::describe(&e, &self.bucket),
                      "conditional-write probe failed; writes are checked just before they are made");
                return false;
            }
            Ok(_) => match put().await {
                Err(e) if client::status(&e) == Some(412) => true,
                Err(e) => {
                    warn!(copy = %self.location, error = %client::describe(&e, &self.bucket),
                          "conditional-write probe failed; writes are checked just before they are made");
                    false
                }
                Ok(_) => false,
            },
        };
        let _ = self.client.delete_object().bucket(&self.bucket).key(&key).send().await;
        debug!(copy = %self.location, honoured, "conditional-write probe");
        honoured
    }
}
