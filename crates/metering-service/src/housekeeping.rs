//! Work done now and then, off the request and worker paths: folding the store's pending
//! totals, and sampling the queue's depth for the gauges.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tollgate_ports::usage_queue::UsageQueue;
use tollgate_store::metering::MeteringStore;

use crate::metrics::MeteringMetrics;

/// How often the queue's depth is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Sets the queue gauges every few seconds until cancelled.
pub async fn sample_queue(queue: Arc<dyn UsageQueue>, metrics: MeteringMetrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! { _ = shutdown.cancelled() => return, _ = tick.tick() => {} }
        match queue.depth().await {
            Ok(depth) => metrics.queue(depth),
            Err(error) => tracing::debug!(%error, "cannot read the usage queue's depth"),
        }
    }
}

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
