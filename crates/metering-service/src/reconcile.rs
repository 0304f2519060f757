//! `tollgate metering reconcile`: rebuilds the counters authz reads (balances, each key's
//! lifetime, today's and this month's spend) from the ledger, the way back after Redis lost
//! its data. Holds and rate-limit state are left alone: they are short-lived.
//!
//! Workers may keep running. Settling and crediting pause for the accounts being rebuilt
//! while the ledger is read and the counters are written; the commits and credit grants the
//! ledger already holds are marked settled as the counters are written, so a worker (or a
//! retried AddCredits) that comes to them afterwards changes nothing, and what was committed
//! after the read is added on top.

use std::collections::BTreeMap;
use std::sync::Arc;

use tollgate_core::clock::Clock;
use tollgate_core::time::Micros;
use tollgate_core::windows::{Calendar, Windows};
use tollgate_ports::counters::{
    CREDITED_MEMORY_MS, CounterRebuild, CounterRestore, KeySpend, SETTLE_AGAIN_WITHIN_MS, SETTLED_MEMORY_MS,
};
use tollgate_store::metering::MeteringStore;

use crate::credits::grant_marker;
use crate::error::MeteringResult;
use crate::metrics::MeteringMetrics;

/// What a reconciliation rewrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub accounts: usize,
    pub keys: usize,
}

/// An account's counters as the ledger has them.
#[derive(Debug, Default)]
struct AccountRestore {
    balance: i64,
    keys: Vec<(String, KeySpend)>,
    commits: Vec<(i64, String)>,
    grants: Vec<String>,
}

/// Overwrites the counters of every account the ledger knows with what it says, for the
/// windows of `now`.
pub async fn reconcile(
    store: &dyn MeteringStore,
    counters: &dyn CounterRebuild,
    calendar: &Calendar,
    now: Micros,
) -> MeteringResult<Reconciled> {
    let windows = calendar.windows(now);
    // The accounts to rebuild; one whose first money arrives later has nothing to rebuild.
    let paused: Vec<String> = store.all_balances().await?.into_iter().map(|(account_id, _)| account_id).collect();
    counters.pause_for_restore(&paused).await?;
    match restore_paused(store, counters, &windows, now, &paused).await {
        Ok(restored) => {
            // Every account now holds what the ledger says: counting may resume everywhere.
            counters.mark_rebuilt().await?;
            Ok(restored)
        }
        Err(error) => {
            // Counters left as they were settle on from there; waiting for the pause to expire
            // would only hold them back.
            if let Err(error) = counters.resume(&paused).await {
                tracing::warn!(%error, "settling stays paused until the pause expires");
            }
            Err(error)
        }
    }
}

/// Reads the ledger and writes the counters of the `paused` accounts.
async fn restore_paused(
    store: &dyn MeteringStore,
    counters: &dyn CounterRebuild,
    windows: &Windows,
    now: Micros,
    paused: &[String],
) -> MeteringResult<Reconciled> {
    // Workers settle again what they committed up to SETTLE_AGAIN_WITHIN_MS ago (by their
    // clocks; a minute covers skew): those commits must be marked settled.
    let commits_since = now - (SETTLE_AGAIN_WITHIN_MS + 60_000).min(SETTLED_MEMORY_MS) * 1000;
    let grants_since = now - CREDITED_MEMORY_MS * 1000;
    let snapshot = store.ledger_snapshot(&windows.day, &windows.month, commits_since, grants_since).await?;
    // Only the paused accounts: any other one's first money came after the pause, and its
    // counters are settled as usual.
    let mut accounts: BTreeMap<String, AccountRestore> =
        paused.iter().map(|account_id| (account_id.clone(), AccountRestore::default())).collect();
    for (account_id, balance) in snapshot.balances {
        if let Some(account) = accounts.get_mut(&account_id) {
            account.balance = balance.balance();
        }
    }
    let mut keys = 0;
    for row in snapshot.keys {
        if let Some(account) = accounts.get_mut(&row.account_id) {
            let spend = KeySpend { used: row.totals.used, day: row.totals.day, month: row.totals.month };
            account.keys.push((row.key_id, spend));
            keys += 1;
        }
    }
    for (account_id, commit_id, day) in snapshot.commits {
        if let Some(account) = accounts.get_mut(&account_id) {
            account.commits.push((commit_id, day));
        }
    }
    for (account_id, request_id) in snapshot.grants {
        if let Some(account) = accounts.get_mut(&account_id) {
            account.grants.push(grant_marker(&request_id));
        }
    }
    let restored = accounts.len();
    for (account_id, account) in accounts {
        let restore = CounterRestore {
            account_id: &account_id,
            balance: account.balance,
            keys: account.keys,
            windows,
            commits: account.commits,
            grants: account.grants,
        };
        counters.restore(&restore).await?;
    }
    Ok(Reconciled { accounts: restored, keys })
}

/// Rebuilds the counters from the ledger, with a service's store, counters, calendar and clock.
pub struct Reconciler {
    store: Arc<dyn MeteringStore>,
    counters: Arc<dyn CounterRebuild>,
    calendar: Calendar,
    clock: Arc<dyn Clock>,
    metrics: MeteringMetrics,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn MeteringStore>,
        counters: Arc<dyn CounterRebuild>,
        calendar: Calendar,
        clock: Arc<dyn Clock>,
        metrics: MeteringMetrics,
    ) -> Self {
        Self { store, counters, calendar, clock, metrics }
    }

    /// [`reconcile`] now.
    pub async fn reconcile(&self) -> MeteringResult<Reconciled> {
        let done =
            reconcile(self.store.as_ref(), self.counters.as_ref(), &self.calendar, self.clock.now_micros()).await;
        self.metrics.reconciled(done.is_ok());
        done
    }

    /// The counters it rebuilds, for the watch that notices they were lost.
    pub fn counters(&self) -> &dyn CounterRebuild {
        self.counters.as_ref()
    }
}
