//! The task that prunes usage past its retention while the server runs. Its schedule follows the
//! service's [`Clock`] (a pass is due every [`PRUNE_EVERY_SECS`] of clock time), checked at a short
//! real-time interval, so a test's manual clock drives it as the system clock does in production.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::store::Store;

/// Clock time between pruning passes.
pub const PRUNE_EVERY_SECS: i64 = 600;

/// Prunes every [`PRUNE_EVERY_SECS`] of `clock` time, the first pass at once, until `shutdown`.
#[derive(Debug, Clone)]
pub struct Pruner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    poll: Duration,
}

impl Pruner {
    /// A pruner checking the clock every 10 s.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, poll: Duration::from_secs(10) }
    }

    /// The same, checking the clock at `poll` (tests).
    pub fn with_poll(self, poll: Duration) -> Self {
        Self { poll, ..self }
    }

    /// Runs until `shutdown` completes. A failed pass is logged and tried again at the next check.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut due = i64::MIN;
        loop {
            let now = self.clock.now();
            if now >= due {
                match super::prune(&self.store, &self.clock).await {
                    Ok(pruned) => {
                        due = now.saturating_add(PRUNE_EVERY_SECS);
                        tracing::debug!(batches = pruned.batches, rollups = pruned.rollups, "pruned usage");
                    }
                    Err(error) => tracing::warn!(error = %error, "pruning usage failed"),
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}
