//! `tollgate metering reconcile`: rebuilds the counters authz reads (balances, each key's
//! lifetime, today's and this month's spend) from the ledger, the way back after Redis lost
//! its data. Holds and rate-limit state are left alone: they are short-lived.

use std::collections::BTreeMap;

use tollgate_state::counters::{CounterRestore, KeySpend};

use crate::MeteringCore;
use crate::error::MeteringResult;

/// What a reconciliation rewrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub accounts: usize,
    pub keys: usize,
}

impl MeteringCore {
    /// Overwrites every account's and key's counters with what the ledger says. Reports that
    /// workers apply while it runs may be counted twice or not at all in Redis for the keys
    /// they touch; run it with the workers stopped, or run it again once they are idle.
    pub async fn reconcile(&self) -> MeteringResult<Reconciled> {
        let windows = self.calendar.windows(self.clock.now_micros());
        let mut accounts: BTreeMap<String, (i64, Vec<(String, KeySpend)>)> = BTreeMap::new();
        for (account_id, balance) in self.store.all_balances().await? {
            accounts.entry(account_id).or_default().0 = balance.balance();
        }
        let mut keys = 0;
        for row in self.store.all_key_totals(&windows.day, &windows.month).await? {
            let spend = KeySpend { used: row.totals.used, day: row.totals.day, month: row.totals.month };
            accounts.entry(row.account_id).or_default().1.push((row.key_id, spend));
            keys += 1;
        }
        for (account_id, (balance, keys)) in &accounts {
            let restore = CounterRestore { account_id, balance: *balance, keys: keys.clone(), windows: &windows };
            self.counters.restore(&restore).await?;
        }
        Ok(Reconciled { accounts: accounts.len(), keys })
    }
}
