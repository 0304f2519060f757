//! The metering domain's own types: a usage report as the service takes it, and a call a
//! worker has priced.

use tollgate_core::money::TokenUsage;
use tollgate_core::time::Micros;
use tollgate_store::metering::{Outcome, UsageEntry};

/// A checked usage report: what a gateway says one call used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// The Authorize request id of the call; unique per account.
    pub request_id: String,
    pub account_id: String,
    pub key_id: String,
    pub model: String,
    pub tokens: TokenUsage,
    pub outcome: Outcome,
    pub start_time: Micros,
    pub end_time: Micros,
}

impl UsageReport {
    /// `accounts/{account}/keys/{key}`.
    pub fn key_name(&self) -> String {
        tollgate_core::names::key(&self.account_id, &self.key_id)
    }
}

/// A call a worker priced, with everything it computed once: the ledger row (key,
/// application, cost, day and month windows) and the queue entry it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub entry_id: String,
    /// When the entry was enqueued, where the queue knows (for the lag).
    pub enqueued_at: Option<Micros>,
    pub usage: UsageEntry,
}
