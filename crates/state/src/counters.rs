//! Counters: what Authorize checks and takes, and what metering settles.
//!
//! One call = one atomic step ([`Counters::authorize`]): on Redis a single EVALSHA of
//! `lua/authorize.lua`, in process a lock around [`tollgate_core::counters::evaluate`].
//!
//! Redis layout under prefix `P`, all keys of an account sharing the hash tag `{account}`:
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `P:{A}:k:K` | hash | key K's lifetime spend (`used`), GCRA arrival times (`rpm`, `tpm`, ms), the day and month of its latest spend (`d` = YYYYMMDD, `m` = YYYYMM) and its spend in them (`ds`, `ms`) |
//! | `P:{A}:held` | hash | credits held per key id, `*` for the account |
//! | `P:{A}:holds` | hash | request id → `key id|credits` |
//! | `P:{A}:holdexp` | zset | request id by hold expiry (ms) |
//! | `P:{A}:bal` | int | the account's balance |
//! | `P:{A}:committed:C:D` | string | ledger commit C's calls of day D were settled together (`all`), or some one by one after a redelivery (`part`); kept 15 minutes |
//! | `P:{A}:settled:R` | string | request R was settled on its own (a redelivery; kept 15 minutes) |
//! | `P:{A}:credited:R` | string | credit grant R was added to the balance (kept 7 days) |
//! | `P:{A}:reconciling` | string | `tollgate metering reconcile` is rewriting the account's counters: settling and crediting wait (expires by itself) |
//! | `P:{T}:rebuilt` | string | the rebuilt marker of the account's slot (see [`crate::rebuild`]): without it nothing is counted |

use async_trait::async_trait;
use tollgate_core::counters::{CounterOutcome, CounterRequest};
use tollgate_core::windows::Windows;

use crate::StateError;

/// One Authorize's counter step.
#[derive(Debug, Clone)]
pub struct CounterCall<'a> {
    pub account_id: &'a str,
    pub key_id: &'a str,
    pub request_id: &'a str,
    pub request: CounterRequest,
    pub windows: &'a Windows,
    /// How long a hold lasts if no usage report settles it.
    pub hold_ttl_ms: i64,
}

/// A charged call to settle: its hold released, its cost added to spend.
#[derive(Debug, Clone)]
pub struct Settlement<'a> {
    pub account_id: &'a str,
    pub key_id: &'a str,
    pub request_id: &'a str,
    /// Credits charged (0 releases the hold only).
    pub cost: i64,
    /// The windows of the call (by its end time).
    pub windows: &'a Windows,
    /// The ledger commit that charged the call (0: not known).
    pub commit_id: i64,
    /// Whether the settlements given with this one hold every call `commit_id` charged to
    /// the account in this day (the committing worker's own settlement). Then one marker per
    /// commit makes a repeat a no-op; otherwise each call gets a marker of its own.
    pub whole_commit: bool,
}

/// A key's spend as the counters hold it (holds not included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySpend {
    /// Credits spent in the key's life.
    pub used: i64,
    /// Credits spent in the day window asked for.
    pub day: i64,
    /// Credits spent in the month window asked for.
    pub month: i64,
}

/// Counter values rebuilt from the ledger, to overwrite what Redis holds
/// (`tollgate metering reconcile`), with what the ledger already counts that a worker or a
/// retried AddCredits may still try to settle or credit.
#[derive(Debug, Clone)]
pub struct CounterRestore<'a> {
    pub account_id: &'a str,
    /// Credits added minus credits spent.
    pub balance: i64,
    /// Each key's spend in `windows`.
    pub keys: Vec<(String, KeySpend)>,
    pub windows: &'a Windows,
    /// Recent ledger commits (commit id, day of its calls): their settlement is now a no-op.
    pub commits: Vec<(i64, String)>,
    /// Recent credit grants' ids (as given to [`Counters::credit_once`]): crediting them again
    /// is now a no-op.
    pub grants: Vec<String>,
}

/// How long an account's counters stay paused for a reconciliation that never finishes (it
/// crashed): settling and crediting resume then.
pub const RECONCILE_PAUSE_MS: i64 = 5 * 60 * 1000;

/// How long a settlement is remembered, so a repeated one is ignored. Repeats come from a
/// worker that died between settling and acknowledging, within the queue's claim time; the
/// memory is short because it costs a Redis key per commit, account and day (at most one per
/// call: 15 minutes of small batches at 5,000 calls/s is 4.5 million keys). Metering never
/// settles again what it committed longer ago than [`SETTLE_AGAIN_WITHIN_MS`].
pub const SETTLED_MEMORY_MS: i64 = 15 * 60 * 1000;

/// How long after its commit a call may be settled again (a redelivery): comfortably inside
/// [`SETTLED_MEMORY_MS`], so the marker is still there to stop a second count.
pub const SETTLE_AGAIN_WITHIN_MS: i64 = 10 * 60 * 1000;

/// How long a credit grant is remembered, so a retried AddCredits is not counted twice.
pub const CREDITED_MEMORY_MS: i64 = 7 * 24 * 3600 * 1000;

/// The counters behind Authorize.
#[async_trait]
pub trait Counters: crate::rebuild::CounterRebuild + Send + Sync {
    /// Checks every limit and, if all pass, takes the call's rate units and holds its
    /// estimated cost: one atomic step. A denied call takes nothing.
    async fn authorize(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError>;
    /// Evaluates every limit without taking anything.
    async fn peek(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError>;
    /// Releases a call's hold and adds its cost to spend; a second settlement of the same
    /// request id changes nothing. Returns whether this one applied.
    async fn settle(&self, settlement: &Settlement<'_>) -> Result<bool, StateError>;
    /// Settles many calls; one round trip on Redis. Returns, per settlement, whether it
    /// applied.
    async fn settle_batch(&self, settlements: &[Settlement<'_>]) -> Result<Vec<bool>, StateError> {
        let mut applied = Vec::with_capacity(settlements.len());
        for settlement in settlements {
            applied.push(self.settle(settlement).await?);
        }
        Ok(applied)
    }
    /// Adds credits to (or, negative, takes them from) an account's balance.
    async fn adjust_balance(&self, account_id: &str, credits: i64) -> Result<(), StateError>;
    /// Adds a credit grant to the balance once: a second call with the same `grant_id`
    /// changes nothing. Returns whether this one applied.
    async fn credit_once(&self, account_id: &str, grant_id: &str, credits: i64) -> Result<bool, StateError>;
    /// Each key's lifetime spend and its spend in `windows`.
    async fn key_spend(
        &self,
        account_id: &str,
        key_ids: &[String],
        windows: &Windows,
    ) -> Result<Vec<KeySpend>, StateError>;
    /// Makes settling and crediting for these accounts fail with
    /// [`StateError::Reconciling`] until [`Counters::restore`] (or
    /// [`RECONCILE_PAUSE_MS`]), so nothing changes their counters between a reconciliation's
    /// read of the ledger and its write.
    async fn pause_for_restore(&self, account_ids: &[String]) -> Result<(), StateError>;
    /// Ends the pause of accounts a failed reconciliation did not restore; their counters are
    /// as they were, and settling goes on from there.
    async fn resume(&self, account_ids: &[String]) -> Result<(), StateError>;
    /// Overwrites an account's balance and its keys' spend (holds and rates are kept),
    /// remembers its recent commits and grants as settled, and ends its pause: one atomic
    /// step.
    async fn restore(&self, restore: &CounterRestore<'_>) -> Result<(), StateError>;
}

/// Redis key names of the counters.
#[derive(Debug, Clone)]
pub struct CounterKeys {
    prefix: String,
}

impl CounterKeys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The marker of a ledger commit's calls of one account and day, settled together.
    pub fn committed(&self, account_id: &str, commit_id: i64, day: &str) -> String {
        self.account(account_id, &format!("committed:{commit_id}:{day}"))
    }

    /// The marker of a call settled on its own.
    pub fn settled(&self, account_id: &str, request_id: &str) -> String {
        self.account(account_id, &format!("settled:{request_id}"))
    }

    fn account(&self, account_id: &str, suffix: &str) -> String {
        format!("{}:{{{account_id}}}:{suffix}", self.prefix)
    }

    /// The account balance.
    pub fn balance(&self, account_id: &str) -> String {
        self.account(account_id, "bal")
    }

    /// A key's counters hash (`used`, `rpm`, `tpm`, `d`/`ds`, `m`/`ms`).
    pub fn key_counters(&self, account_id: &str, key_id: &str) -> String {
        format!("{}:{{{account_id}}}:k:{key_id}", self.prefix)
    }

    /// Present while a reconciliation rewrites the account's counters.
    pub fn reconciling(&self, account_id: &str) -> String {
        self.account(account_id, "reconciling")
    }

    /// The marker of a credit grant applied to the balance.
    pub fn credited(&self, account_id: &str, grant_id: &str) -> String {
        self.account(account_id, &format!("credited:{grant_id}"))
    }

    /// The account's keys both scripts take, in their order: held credits, holds, hold
    /// expiries, balance.
    pub fn for_account(&self, account_id: &str) -> [String; 4] {
        ["held", "holds", "holdexp", "bal"].map(|suffix| self.account(account_id, suffix))
    }

    /// The keys `authorize.lua` takes, in its order: the key's counters, then the account's.
    pub fn for_call(&self, account_id: &str, key_id: &str) -> [String; 5] {
        let [held, holds, holdexp, balance] = self.for_account(account_id);
        [self.key_counters(account_id, key_id), held, holds, holdexp, balance]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_call_shares_the_account_hash_tag() {
        for key in CounterKeys::new("tg").for_call("acme", "k1") {
            assert!(key.starts_with("tg:{acme}:"), "{key}");
        }
    }
}
