//! The durable queue between `RecordUsage` and the metering workers.
//!
//! A report is accepted once [`UsageQueue::enqueue`] returns; workers [`receive`] batches,
//! apply them, then [`ack`] them. An entry a worker received but never acknowledged (it
//! crashed) is handed to a worker again once it has been idle for the claim time, so every
//! entry is applied at least once; the ledger's unique request id makes it exactly once.
//! Entries that keep failing go to dead letters, where they wait to be replayed.
//!
//! Adapters: a Redis Stream with a consumer group (production) and a SQL table
//! (`tollgate dev`), in `tollgate_state` and `tollgate_store`.
//!
//! [`receive`]: UsageQueue::receive
//! [`ack`]: UsageQueue::ack

use std::time::Duration;

use async_trait::async_trait;
use tollgate_core::time::Micros;

use crate::StateError;

/// One entry handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedReport {
    /// The queue's id of the entry, for [`UsageQueue::ack`].
    pub id: String,
    /// The encoded `tollgate.metering.v1.UsageReport`.
    pub payload: Vec<u8>,
    /// How often the entry has been handed out, this time included.
    pub deliveries: u32,
    /// When it was enqueued, where the queue knows (a Redis Stream's entry id is its time).
    pub enqueued_at: Option<Micros>,
}

/// A report that was set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub payload: Vec<u8>,
    pub reason: String,
    pub attempts: u32,
    pub time: Micros,
}

/// How much the queue holds, for gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Entries in the queue: waiting for a worker, or handed out and not yet acknowledged (on
    /// Redis, acknowledged entries are trimmed off within about a second).
    pub entries: u64,
    /// Of those, handed out and not yet acknowledged.
    pub pending: u64,
    /// Dead letters waiting to be replayed.
    pub dead_letters: u64,
}

/// The queue of usage reports.
#[async_trait]
pub trait UsageQueue: Send + Sync {
    /// Appends reports durably, all or none.
    async fn enqueue(&self, payloads: &[Vec<u8>]) -> Result<(), StateError>;
    /// Up to `max` entries for `consumer`: first entries other consumers left unacknowledged
    /// for longer than the claim time, then new ones, waiting up to `wait` while there are
    /// none.
    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<QueuedReport>, StateError>;
    /// Removes applied entries.
    async fn ack(&self, ids: &[String]) -> Result<(), StateError>;
    /// Moves an entry to the dead letters with the reason, and removes it from the queue.
    async fn dead_letter(&self, entry: &QueuedReport, reason: &str, now: Micros) -> Result<(), StateError>;
    /// Dead letters, oldest first, after the id `after`.
    async fn dead_letters(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, StateError>;
    /// Puts dead letters back on the queue (all of them when `ids` is empty); returns how
    /// many.
    async fn replay(&self, ids: &[String]) -> Result<u32, StateError>;
    /// How much the queue holds now.
    async fn depth(&self) -> Result<QueueDepth, StateError>;
}
