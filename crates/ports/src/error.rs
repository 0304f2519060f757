//! How a shared-state operation fails.

/// A shared-state operation failed; callers decide per call site whether to fail open or
/// closed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    #[error("state backend timed out")]
    Timeout,
    /// `tollgate metering reconcile` is rewriting the account's counters; settle or credit
    /// again shortly.
    #[error("the account's counters are being rebuilt from the ledger; retry shortly")]
    Reconciling,
    /// Redis lost the counters' data (their rebuilt marker is gone): nothing can be counted
    /// until metering rebuilds them from the ledger.
    #[error("the counters were lost with Redis's data and are being rebuilt from the ledger")]
    CountersLost,
}
