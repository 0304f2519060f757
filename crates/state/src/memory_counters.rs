//! Counters in process memory for `tollgate dev`: the same decision function as the Redis
//! script, under one lock, so a check and its take are one step.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tollgate_core::counters::{CounterOutcome, CounterState, evaluate};

use tollgate_core::windows::Windows;
use tollgate_ports::StateError;
use tollgate_ports::counters::{
    CREDITED_MEMORY_MS, CallCounters, CounterCall, CounterRebuild, CounterRestore, KeySpend, MoneyCounters,
    SETTLED_MEMORY_MS, Settlement, SpendCounters,
};

#[derive(Debug, Default)]
struct KeyCounters {
    used: i64,
    /// Spend per day id and month id; only the current ones matter, older ones are dropped.
    day: (String, i64),
    month: (String, i64),
    rpm_tat: Option<f64>,
    tpm_tat: Option<f64>,
}

/// Ids remembered for at least `MEMORY_MS` and at most twice that, as Redis keeps its markers:
/// two generations, the older dropped whole once the newer is `MEMORY_MS` old, so a
/// long-running `dev` does not keep every request id it ever settled.
#[derive(Debug)]
struct Remembered<const MEMORY_MS: i64> {
    current: HashSet<String>,
    previous: HashSet<String>,
    since: Instant,
}

impl<const MEMORY_MS: i64> Default for Remembered<MEMORY_MS> {
    fn default() -> Self {
        Self { current: HashSet::new(), previous: HashSet::new(), since: Instant::now() }
    }
}

impl<const MEMORY_MS: i64> Remembered<MEMORY_MS> {
    /// Whether `id` is remembered (dropping the older generation when its time is up).
    fn contains(&mut self, id: &str) -> bool {
        if self.since.elapsed() >= Duration::from_millis(MEMORY_MS.unsigned_abs()) {
            self.previous = std::mem::take(&mut self.current);
            self.since = Instant::now();
        }
        self.current.contains(id) || self.previous.contains(id)
    }

    /// Remembers `id`; false if it is remembered already.
    fn insert(&mut self, id: &str) -> bool {
        !self.contains(id) && self.current.insert(id.to_owned())
    }
}

#[derive(Debug, Default)]
struct AccountCounters {
    balance: i64,
    held_total: i64,
    held_by_key: HashMap<String, i64>,
    /// request id → (key id, credits, expires at ms)
    holds: HashMap<String, (String, i64, f64)>,
    settled: Remembered<SETTLED_MEMORY_MS>,
    /// Ledger commits (`commit:day`) a restore counted: settling them changes nothing.
    committed: Remembered<SETTLED_MEMORY_MS>,
    credited: Remembered<CREDITED_MEMORY_MS>,
    keys: HashMap<String, KeyCounters>,
}

impl AccountCounters {
    fn release(&mut self, request_id: &str) {
        if let Some((key_id, amount, _)) = self.holds.remove(request_id) {
            *self.held_by_key.entry(key_id).or_default() -= amount;
            self.held_total -= amount;
        }
    }

    fn release_expired(&mut self, now_ms: f64) {
        let expired: Vec<String> =
            self.holds.iter().filter(|(_, (_, _, at))| *at <= now_ms).map(|(rid, _)| rid.clone()).collect();
        for rid in expired {
            self.release(&rid);
        }
    }
}

/// Spend in `window` when the kept window (`YYYYMMDD` or `YYYYMM`) is that one.
fn spend_in(kept: &(String, i64), window: &str) -> i64 {
    if kept.0 == window { kept.1 } else { 0 }
}

/// Adds spend to `window`: a newer window replaces the kept one, an older one (a late call)
/// is past and adds nothing here.
fn add_in(kept: &mut (String, i64), window: &str, cost: i64) {
    if window > kept.0.as_str() {
        *kept = (window.to_owned(), 0);
    }
    if window == kept.0 {
        kept.1 += cost;
    }
}

/// Counters of every account, in memory.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    accounts: Mutex<HashMap<String, AccountCounters>>,
}

impl MemoryCounters {
    pub fn new() -> Self {
        Self::default()
    }

    fn step(&self, call: &CounterCall<'_>, take: bool) -> CounterOutcome {
        let mut accounts = self.accounts.lock().expect("counter lock poisoned");
        let account = accounts.entry(call.account_id.to_owned()).or_default();
        let now = call.request.now_ms;
        account.release_expired(now);
        if take {
            account.release(call.request_id);
        }
        let key_held = account.held_by_key.get(call.key_id).copied().unwrap_or(0);
        let (balance, held_total) = (account.balance, account.held_total);
        let key = account.keys.entry(call.key_id.to_owned()).or_default();
        let (day_spent, month_spent) =
            (spend_in(&key.day, &call.windows.day), spend_in(&key.month, &call.windows.month));
        let state = CounterState {
            used: key.used,
            day_spent,
            month_spent,
            key_held,
            balance,
            account_held: held_total,
            rpm_tat: key.rpm_tat.filter(|t| *t > now),
            tpm_tat: key.tpm_tat.filter(|t| *t > now),
        };
        let mut outcome = evaluate(&state, &call.request);
        if take && outcome.allowed() {
            if call.request.limits.rpm.is_some() {
                key.rpm_tat = outcome.rpm.as_ref().map(|r| r.new_tat);
            }
            if call.request.limits.tpm.is_some() {
                key.tpm_tat = outcome.tpm.as_ref().map(|t| t.new_tat);
            }
            if outcome.hold > 0 {
                let hold = outcome.hold;
                let expires = now + call.hold_ttl_ms as f64;
                account.holds.insert(call.request_id.to_owned(), (call.key_id.to_owned(), hold, expires));
                *account.held_by_key.entry(call.key_id.to_owned()).or_default() += hold;
                account.held_total += hold;
            }
        }
        // Whole milliseconds, as the Redis script reports them.
        for rate in [outcome.rpm.as_mut(), outcome.tpm.as_mut()].into_iter().flatten() {
            rate.reset_at_ms = rate.reset_at_ms.ceil();
            rate.retry_after_ms = rate.retry_after_ms.map(f64::ceil);
        }
        outcome
    }
}

#[async_trait]
impl CallCounters for MemoryCounters {
    async fn authorize(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError> {
        Ok(self.step(call, true))
    }

    async fn peek(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError> {
        Ok(self.step(call, false))
    }
}

#[async_trait]
impl MoneyCounters for MemoryCounters {
    /// Every call is remembered on its own here, so a commit's calls need no marker of their
    /// own.
    async fn settle(&self, settlement: &Settlement<'_>) -> Result<bool, StateError> {
        let mut accounts = self.accounts.lock().expect("counter lock poisoned");
        let account = accounts.entry(settlement.account_id.to_owned()).or_default();
        let commit = format!("{}:{}", settlement.commit_id, settlement.day);
        if settlement.commit_id != 0 && account.committed.contains(&commit) {
            return Ok(false);
        }
        if !account.settled.insert(settlement.request_id) {
            return Ok(false);
        }
        account.release(settlement.request_id);
        let cost = settlement.cost;
        account.balance -= cost;
        let key = account.keys.entry(settlement.key_id.to_owned()).or_default();
        key.used += cost;
        add_in(&mut key.day, settlement.day, cost);
        add_in(&mut key.month, settlement.month, cost);
        Ok(true)
    }

    async fn credit_once(&self, account_id: &str, grant_id: &str, credits: i64) -> Result<bool, StateError> {
        let mut accounts = self.accounts.lock().expect("counter lock poisoned");
        let account = accounts.entry(account_id.to_owned()).or_default();
        if !account.credited.insert(grant_id) {
            return Ok(false);
        }
        account.balance += credits;
        Ok(true)
    }
}

#[async_trait]
impl SpendCounters for MemoryCounters {
    async fn key_spend(
        &self,
        account_id: &str,
        key_ids: &[String],
        windows: &Windows,
    ) -> Result<Vec<KeySpend>, StateError> {
        let accounts = self.accounts.lock().expect("counter lock poisoned");
        let account = accounts.get(account_id);
        Ok(key_ids
            .iter()
            .map(|key_id| match account.and_then(|a| a.keys.get(key_id)) {
                Some(key) => KeySpend {
                    used: key.used,
                    day: spend_in(&key.day, &windows.day),
                    month: spend_in(&key.month, &windows.month),
                },
                None => KeySpend::default(),
            })
            .collect())
    }
}

/// In-process counters live and die with the process that rebuilds them at start-up
/// (`tollgate dev`): they cannot lose data behind its back.
#[async_trait]
impl CounterRebuild for MemoryCounters {
    /// Settling waits for nobody here: `tollgate dev` rebuilds its counters before its workers
    /// start.
    async fn pause_for_restore(&self, _account_ids: &[String]) -> Result<(), StateError> {
        Ok(())
    }

    async fn resume(&self, _account_ids: &[String]) -> Result<(), StateError> {
        Ok(())
    }

    async fn restore(&self, restore: &CounterRestore<'_>) -> Result<(), StateError> {
        let mut accounts = self.accounts.lock().expect("counter lock poisoned");
        let account = accounts.entry(restore.account_id.to_owned()).or_default();
        account.balance = restore.balance;
        for (commit_id, day) in &restore.commits {
            account.committed.insert(&format!("{commit_id}:{day}"));
        }
        for grant_id in &restore.grants {
            account.credited.insert(grant_id);
        }
        for (key_id, spend) in &restore.keys {
            let key = account.keys.entry(key_id.clone()).or_default();
            key.used = spend.used;
            key.day = (restore.windows.day.clone(), spend.day);
            key.month = (restore.windows.month.clone(), spend.month);
        }
        Ok(())
    }

    async fn counters_intact(&self) -> Result<bool, StateError> {
        Ok(true)
    }

    async fn mark_rebuilt(&self) -> Result<(), StateError> {
        Ok(())
    }

    async fn try_lock_rebuild(&self, _owner: &str, _ttl: std::time::Duration) -> Result<bool, StateError> {
        Ok(true)
    }

    async fn unlock_rebuild(&self, _owner: &str) -> Result<(), StateError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Remembered;

    #[test]
    fn ids_are_remembered_for_their_memory_then_forgotten() {
        let mut long = Remembered::<60_000>::default();
        assert!(long.insert("a"));
        assert!(!long.insert("a"), "remembered within its memory");
        // With no memory every insert starts a generation: an id lasts one more insert.
        let mut short = Remembered::<0>::default();
        assert!(short.insert("a"));
        assert!(!short.insert("a"), "the previous generation is still asked");
        assert!(short.insert("b"));
        assert!(short.insert("a"), "a generation older than that is forgotten");
    }
}
