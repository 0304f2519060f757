//! The usage queue on Redis Streams with consumer groups, spread over `N` streams (shards) so
//! that on Redis Cluster ingestion is not bound by one node.
//!
//! Layout under prefix `P`, shard `i`'s two keys sharing the hash tag `{usage}` (`i` = 0) or
//! `{usage:i}`, so that moving an entry to the dead letters is one MULTI on a cluster too:
//! - `P:{usage…}:reports`: stream, field `r` = encoded report; consumer group `metering`;
//! - `P:{usage…}:dead`: stream, fields `r`, `reason`, `attempts`, `time`.
//!
//! A batch goes whole to one shard (one MULTI: accepted all or none), shards taken in turn.
//! Every worker reads every shard, starting from a different one each time. Entry ids are the
//! stream's own on shard 0 (`ms-seq`) and `i:ms-seq` on shard `i`, which is how acknowledging,
//! dead-lettering and replaying find their shard. Acknowledged entries are trimmed off each
//! stream's head about once a second (see [`crate::redis_usage_stream`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tollgate_core::time::Micros;

use crate::redis::RedisState;
use crate::redis_conn::RedisConn;
use crate::redis_usage_stream::{UsageStream, due};
use tollgate_ports::StateError;
use tollgate_ports::usage_queue::{DeadLetter, QueueDepth, QueuedReport, UsageQueue};

/// The usage queue on the Redis behind a [`RedisState`].
#[derive(Clone)]
pub struct RedisUsageQueue {
    shards: Arc<[UsageStream]>,
    state: RedisState,
    claim_idle: Duration,
    /// The shard the next batch goes to, and the one the next read starts at.
    next_enqueue: Arc<AtomicUsize>,
    next_read: Arc<AtomicUsize>,
    /// When this process last looked for entries to take over. XAUTOCLAIM walks the pending
    /// entries list, so it runs a few times per claim time, not on every receive.
    last_claim: Arc<Mutex<Option<Instant>>>,
    /// Each consumer's connection for its blocking reads (see
    /// [`RedisState::blocking_connection`]), made on its first read.
    readers: Arc<tokio::sync::Mutex<std::collections::HashMap<String, RedisConn>>>,
}

impl std::fmt::Debug for RedisUsageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUsageQueue").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

/// The queue's name of shard `shard`'s entry `id`.
fn queue_id(shard: usize, id: &str) -> String {
    if shard == 0 { id.to_owned() } else { format!("{shard}:{id}") }
}

impl RedisUsageQueue {
    /// The queue over `shards` streams (at least one) on `state`'s connection and prefix;
    /// entries idle longer than `claim_idle` are taken over from the consumer that left them.
    /// Creates the consumer groups if missing; if Redis cannot be reached now, the first read
    /// makes them (reports sent meanwhile wait in the streams, which the groups read from
    /// their start).
    pub async fn new(
        state: &RedisState,
        claim_idle: Duration,
        op_timeout: Duration,
        shards: usize,
    ) -> Result<Self, StateError> {
        let tag = |i: usize| if i == 0 { "usage".to_owned() } else { format!("usage:{i}") };
        let shards: Arc<[UsageStream]> = (0..shards.max(1))
            .map(|i| UsageStream::new(state.connection(), state.prefix(), &tag(i), claim_idle, op_timeout))
            .collect();
        for shard in shards.iter() {
            if let Err(error) = shard.ensure_group().await {
                tracing::warn!(%error, "cannot create the usage streams' consumer groups yet; the workers will");
                break;
            }
        }
        Ok(Self {
            shards,
            state: state.clone(),
            claim_idle,
            next_enqueue: Arc::default(),
            next_read: Arc::default(),
            last_claim: Arc::default(),
            readers: Arc::default(),
        })
    }

    /// The shard of a queue id and the stream's own id; `None` for an id of no shard.
    fn locate<'a>(&self, id: &'a str) -> Option<(usize, &'a str)> {
        let (shard, own) = match id.split_once(':') {
            Some((shard, own)) => (shard.parse().ok()?, own),
            None => (0, id),
        };
        (shard < self.shards.len()).then_some((shard, own))
    }

    fn locate_or_fail<'a>(&self, id: &'a str) -> Result<(usize, &'a str), StateError> {
        self.locate(id).ok_or_else(|| StateError::Unavailable(format!("{id:?} is no id of this queue")))
    }

    /// `consumer`'s connection for blocking reads.
    async fn reader(&self, consumer: &str, wait: Duration) -> Result<RedisConn, StateError> {
        let mut readers = self.readers.lock().await;
        if let Some(conn) = readers.get(consumer) {
            return Ok(conn.clone());
        }
        let conn = self.state.blocking_connection(wait).await?;
        readers.insert(consumer.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Entries other consumers left past the claim time, from the first shard that has any;
    /// then, with none, the shards' gone consumers are removed.
    async fn reclaim(&self, consumer: &str, max: usize) -> Result<Vec<QueuedReport>, StateError> {
        for (i, shard) in self.shards.iter().enumerate() {
            let reclaimed = shard.reclaim(consumer, max).await?;
            if !reclaimed.is_empty() {
                return Ok(reclaimed.into_iter().map(|e| QueuedReport { id: queue_id(i, &e.id), ..e }).collect());
            }
        }
        for shard in self.shards.iter() {
            // Housekeeping: a failure here is retried on the next look.
            if let Err(error) = shard.forget_gone_consumers().await {
                tracing::warn!(%error, "cannot remove gone usage stream consumers");
            }
        }
        Ok(Vec::new())
    }
}

#[async_trait]
impl UsageQueue for RedisUsageQueue {
    async fn enqueue(&self, payloads: &[Vec<u8>]) -> Result<(), StateError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let shard = self.next_enqueue.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.shards[shard].enqueue(payloads).await
    }

    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<QueuedReport>, StateError> {
        if due(&self.last_claim, self.claim_idle / 4) {
            let reclaimed = self.reclaim(consumer, max).await?;
            if !reclaimed.is_empty() {
                // There may be more: look again on the next receive.
                *self.last_claim.lock().expect("claim clock") = None;
                return Ok(reclaimed);
            }
        }
        // Each shard in turn, sharing the wait; the next read starts one shard further on.
        let count = self.shards.len();
        let start = self.next_read.fetch_add(1, Ordering::Relaxed);
        let share = wait / count as u32;
        let mut reader = self.reader(consumer, wait).await?;
        for step in 0..count {
            let shard = (start + step) % count;
            let entries = self.shards[shard].read(&mut reader, consumer, max, share).await?;
            if !entries.is_empty() {
                return Ok(entries.into_iter().map(|e| QueuedReport { id: queue_id(shard, &e.id), ..e }).collect());
            }
        }
        Ok(Vec::new())
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StateError> {
        let mut by_shard: Vec<Vec<&str>> = vec![Vec::new(); self.shards.len()];
        for id in ids {
            let (shard, own) = self.locate_or_fail(id)?;
            by_shard[shard].push(own);
        }
        for (shard, own) in self.shards.iter().zip(by_shard) {
            if !own.is_empty() {
                shard.ack(&own).await?;
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, entry: &QueuedReport, reason: &str, now: Micros) -> Result<(), StateError> {
        let (shard, own) = self.locate_or_fail(&entry.id)?;
        self.shards[shard].dead_letter(own, entry, reason, now).await
    }

    async fn dead_letters(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, StateError> {
        // Shard by shard, each oldest first; `after` names the shard to go on in.
        let (first, mut after_own) = match after {
            None => (0, None),
            Some(id) => {
                let (shard, own) = self.locate_or_fail(id)?;
                (shard, Some(own))
            }
        };
        let mut letters = Vec::new();
        for shard in first..self.shards.len() {
            if letters.len() >= limit {
                break;
            }
            let found = self.shards[shard].dead_letters(after_own.take(), limit - letters.len()).await?;
            letters.extend(found.into_iter().map(|letter| DeadLetter { id: queue_id(shard, &letter.id), ..letter }));
        }
        Ok(letters)
    }

    async fn replay(&self, ids: &[String]) -> Result<u32, StateError> {
        let mut replayed = 0;
        if ids.is_empty() {
            for shard in self.shards.iter() {
                replayed += shard.replay(&[]).await?;
            }
            return Ok(replayed);
        }
        for id in ids {
            // An id of no shard names no dead letter.
            if let Some((shard, own)) = self.locate(id) {
                replayed += self.shards[shard].replay(&[own]).await?;
            }
        }
        Ok(replayed)
    }

    async fn depth(&self) -> Result<QueueDepth, StateError> {
        let mut total = QueueDepth::default();
        for shard in self.shards.iter() {
            let depth = shard.depth().await?;
            total.entries += depth.entries;
            total.pending += depth.pending;
            total.dead_letters += depth.dead_letters;
        }
        Ok(total)
    }
}
