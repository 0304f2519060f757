//! The counters: what Authorize checks and takes, what metering settles and credits, what
//! the keys service reads, and how they are rebuilt from the ledger. One adapter serves every
//! side ([`Counters`]); each service holds only the side it uses.
//!
//! One call = one atomic step ([`CallCounters::authorize`]): on Redis a single EVALSHA, in
//! process a lock around [`tollgate_core::counters::evaluate`].

use std::time::Duration;

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
    /// The day (`YYYYMMDD`) and month (`YYYYMM`) windows of the call, by its end time.
    pub day: &'a str,
    pub month: &'a str,
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
    /// Recent credit grants' ids (as given to [`MoneyCounters::credit_once`]): crediting them again
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

/// What Authorize does with the counters.
#[async_trait]
pub trait CallCounters: Send + Sync {
    /// Checks every limit and, if all pass, takes the call's rate units and holds its
    /// estimated cost: one atomic step. A denied call takes nothing.
    async fn authorize(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError>;
    /// Evaluates every limit without taking anything.
    async fn peek(&self, call: &CounterCall<'_>) -> Result<CounterOutcome, StateError>;
}

/// What metering does with the counters: settle charged calls, credit grants.
#[async_trait]
pub trait MoneyCounters: Send + Sync {
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
    /// Adds a credit grant to the balance once: a second call with the same `grant_id`
    /// changes nothing. Returns whether this one applied.
    async fn credit_once(&self, account_id: &str, grant_id: &str, credits: i64) -> Result<bool, StateError>;
}

/// What the keys service reads from the counters: each key's spend.
#[async_trait]
pub trait SpendCounters: Send + Sync {
    /// Each key's lifetime spend and its spend in `windows`.
    async fn key_spend(
        &self,
        account_id: &str,
        key_ids: &[String],
        windows: &Windows,
    ) -> Result<Vec<KeySpend>, StateError>;
}

/// Rebuilding the counters from the ledger (`tollgate metering reconcile`, and metering by
/// itself after Redis lost its data), and knowing whether they were.
#[async_trait]
pub trait CounterRebuild: Send + Sync {
    /// Makes settling and crediting for these accounts fail with
    /// [`StateError::Reconciling`] until [`CounterRebuild::restore`] (or
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
    /// `false` when the counters' data was lost since the last rebuild (or never rebuilt).
    async fn counters_intact(&self) -> Result<bool, StateError>;
    /// Notes that every account's counters now hold what the ledger says.
    async fn mark_rebuilt(&self) -> Result<(), StateError>;
    /// Takes the right to rebuild for `ttl` unless another process holds it.
    async fn try_lock_rebuild(&self, owner: &str, ttl: Duration) -> Result<bool, StateError>;
    /// Gives the right back, if `owner` still holds it.
    async fn unlock_rebuild(&self, owner: &str) -> Result<(), StateError>;
}

/// Every side of the counters, as one adapter provides them: for wiring and for the
/// adapters' conformance suite. Services take the side they use.
pub trait Counters: CallCounters + MoneyCounters + SpendCounters + CounterRebuild {}

impl<T: CallCounters + MoneyCounters + SpendCounters + CounterRebuild + ?Sized> Counters for T {}
