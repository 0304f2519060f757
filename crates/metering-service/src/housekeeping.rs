//! Work the metering store wants done now and then, off the request and worker paths.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tollgate_store::metering::MeteringStore;

/// How often pending totals are folded into their rows.
const FOLD_EVERY: Duration = Duration::from_secs(1);
/// Most folds in one go: other processes may keep adding pending rows meanwhile.
const MAX_FOLDS: usize = 16;

/// Folds pending running totals into their rows once a second, so reads find few pending
/// rows, until cancelled.
pub async fn run(store: Arc<dyn MeteringStore>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(FOLD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! { _ = shutdown.cancelled() => return, _ = tick.tick() => {} }
        for _ in 0..MAX_FOLDS {
            match store.fold_pending().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "cannot fold pending totals; the next batches will");
                    break;
                }
            }
        }
    }
}
