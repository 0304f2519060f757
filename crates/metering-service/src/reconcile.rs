//! `tollgate metering reconcile`: rebuilds the counters authz reads (balances, each key's
//! lifetime, today's and this month's spend) from the ledger, the way back after Redis lost
//! its data. Holds and rate-limit state are left alone: they are short-lived.

use std::collections::BTreeMap;

use tollgate_core::time::Micros;
use tollgate_core::windows::Calendar;
use tollgate_state::counters::{CounterRestore, Counters, KeySpend};
use tollgate_store::metering::MeteringStore;

use crate::MeteringCore;
use crate::error::MeteringResult;

/// What a reconciliation rewrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub accounts: usize,
    pub keys: usize,
}

/// Overwrites every account's and key's counters with what the ledger says, for the windows
/// of `now`. Reports that workers apply while it runs may be counted twice or not at all in
/// Redis for the keys they touch; run it with the workers stopped, or run it again once they
/// are idle.
pub async fn reconcile(
    store: &dyn MeteringStore,
    counters: &dyn Counters,
    calendar: &Calendar,
    now: Micros,
) -> MeteringResult<Reconciled> {
    let windows = calendar.windows(now);
    let mut accounts: BTreeMap<String, (i64, Vec<(String, KeySpend)>)> = BTreeMap::new();
    for (account_id, balance) in store.all_balances().await? {
        accounts.entry(account_id).or_default().0 = balance.balance();
    }
    let mut keys = 0;
    for row in store.all_key_totals(&windows.day, &windows.month).await? {
        let spend = KeySpend { used: row.totals.used, day: row.totals.day, month: row.totals.month };
        accounts.entry(row.account_id).or_default().1.push((row.key_id, spend));
        keys += 1;
    }
    for (account_id, (balance, keys)) in accounts.iter() {
        let restore = CounterRestore { account_id, balance: *balance, keys: keys.clone(), windows: &windows };
        counters.restore(&restore).await?;
    }
    Ok(Reconciled { accounts: accounts.len(), keys })
}

impl MeteringCore {
    /// [`reconcile`] with this service's store, counters, calendar and clock.
    pub async fn reconcile(&self) -> MeteringResult<Reconciled> {
        reconcile(self.store.as_ref(), self.counters.as_ref(), &self.calendar, self.clock.now_micros()).await
    }
}
