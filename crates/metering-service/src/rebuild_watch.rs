//! Noticing that Redis lost the counters and rebuilding them from the ledger by itself, one
//! metering process at a time (see `tollgate_state::rebuild`).
//!
//! Until the rebuild ends, the counter scripts refuse to count on every slot whose marker is
//! gone: Authorize treats money checks as unknown (`TOLLGATE_AUTHZ_ON_REDIS_ERROR`, closed by
//! default), and settling and crediting wait. Nothing is granted on counters that read as
//! untouched only because they were lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::reconcile::Reconciler;

/// How often the markers are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How soon a rebuild that failed is tried again.
const RETRY_FAILED: Duration = Duration::from_millis(100);
/// How long one process may hold the right to rebuild before another may take it (a process
/// that died mid-rebuild).
const REBUILD_LOCK: Duration = Duration::from_secs(300);

/// Looks at the rebuilt markers every second and rebuilds when they are gone, until
/// cancelled. `owner` names this process in the lock.
pub async fn watch(reconciler: Arc<Reconciler>, owner: String, shutdown: CancellationToken) {
    let counters = reconciler.counters();
    // A failed rebuild (the database not migrated or reachable yet) is tried again sooner.
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = CHECK_EVERY;
        match counters.counters_intact().await {
            Ok(true) => continue,
            Ok(false) => {}
            // Redis unreachable: nothing to rebuild into yet.
            Err(error) => {
                tracing::debug!(%error, "cannot look at the counters' rebuilt markers");
                continue;
            }
        }
        match counters.try_lock_rebuild(&owner, REBUILD_LOCK).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::debug!(%error, "cannot take the right to rebuild the counters");
                continue;
            }
        }
        tracing::warn!("the counters in Redis are gone (lost data, or never built): rebuilding them from the ledger");
        let started = Instant::now();
        match reconciler.reconcile().await {
            Ok(done) => tracing::info!(
                accounts = done.accounts,
                keys = done.keys,
                took = ?started.elapsed(),
                "counters rebuilt from the ledger; counting again"
            ),
            Err(error) => {
                tracing::warn!(%error, "rebuilding the counters failed; trying again");
                wait = RETRY_FAILED;
            }
        }
        if let Err(error) = counters.unlock_rebuild(&owner).await {
            tracing::warn!(%error, "cannot give back the right to rebuild; it expires by itself");
        }
    }
}
