//! The usage queue on a Redis Stream with a consumer group.
//!
//! Layout under prefix `P`, both keys in the hash slot of `{usage}` so that moving an entry to
//! the dead letters is one MULTI on Redis Cluster too:
//! - `P:{usage}:reports`: stream, field `r` = encoded report; consumer group `metering`;
//! - `P:{usage}:dead`: stream, fields `r`, `reason`, `attempts`, `time`.
//!
//! Acknowledged entries are deleted (XACK + XDEL), so the stream holds only what is pending.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply,
    StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, FromRedisValue, RedisError};
use tollgate_core::time::Micros;

use crate::StateError;
use crate::redis::RedisState;
use crate::usage_queue::{DeadLetter, QueuedReport, UsageQueue};

const GROUP: &str = "metering";

/// The usage queue on the Redis behind a [`RedisState`].
#[derive(Clone)]
pub struct RedisUsageQueue {
    conn: ConnectionManager,
    stream: String,
    dead: String,
    claim_idle: Duration,
    op_timeout: Duration,
    /// When this process last looked for entries to take over. XAUTOCLAIM walks the pending
    /// entries list, so it runs a few times per claim time, not on every receive.
    last_claim: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl std::fmt::Debug for RedisUsageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUsageQueue").field("stream", &self.stream).finish_non_exhaustive()
    }
}

fn unavailable(error: RedisError) -> StateError {
    StateError::Unavailable(error.to_string())
}

fn field_bytes(entry: &StreamId, name: &str) -> Vec<u8> {
    entry.map.get(name).and_then(|v| Vec::<u8>::from_redis_value(v.clone()).ok()).unwrap_or_default()
}

fn field_string(entry: &StreamId, name: &str) -> String {
    String::from_utf8_lossy(&field_bytes(entry, name)).into_owned()
}

impl RedisUsageQueue {
    /// The queue on `state`'s connection and prefix; entries idle longer than `claim_idle` are
    /// taken over from the consumer that left them. Creates the consumer group if missing.
    pub async fn new(state: &RedisState, claim_idle: Duration, op_timeout: Duration) -> Result<Self, StateError> {
        let queue = Self {
            conn: state.connection(),
            stream: format!("{}:{{usage}}:reports", state.prefix()),
            dead: format!("{}:{{usage}}:dead", state.prefix()),
            claim_idle,
            op_timeout,
            last_claim: Default::default(),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    async fn ensure_group(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let created: Result<(), RedisError> =
            self.bounded(conn.xgroup_create_mkstream(&self.stream, GROUP, "0")).await?;
        match created {
            Ok(()) => Ok(()),
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn bounded<T>(&self, op: impl Future<Output = T>) -> Result<T, StateError> {
        tokio::time::timeout(self.op_timeout, op).await.map_err(|_| StateError::Timeout)
    }

    /// Whether it is time to look for entries to take over (a quarter of the claim time since
    /// the last look), and if so, notes the look.
    fn claim_due(&self) -> bool {
        let mut last = self.last_claim.lock().expect("claim clock");
        let due = last.is_none_or(|at| at.elapsed() >= self.claim_idle / 4);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// Entries idle past the claim time, taken over by `consumer`, with delivery counts.
    async fn reclaim(&self, consumer: &str, max: usize) -> Result<Vec<QueuedReport>, StateError> {
        let mut conn = self.conn.clone();
        let options = StreamAutoClaimOptions::default().count(max);
        let reply: StreamAutoClaimReply = self
            .bounded(conn.xautoclaim_options(
                &self.stream,
                GROUP,
                consumer,
                self.claim_idle.as_millis() as u64,
                "0-0",
                options,
            ))
            .await?
            .map_err(unavailable)?;
        let claimed = reply.claimed;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // XAUTOCLAIM does not say how often an entry was delivered; XPENDING does.
        let first = &claimed[0].id;
        let last = &claimed[claimed.len() - 1].id;
        let pending: StreamPendingCountReply = self
            .bounded(conn.xpending_consumer_count(&self.stream, GROUP, first, last, claimed.len(), consumer))
            .await?
            .map_err(unavailable)?;
        let deliveries: std::collections::HashMap<String, u32> =
            pending.ids.into_iter().map(|p| (p.id, p.times_delivered as u32)).collect();
        Ok(claimed
            .iter()
            .map(|entry| QueuedReport {
                id: entry.id.clone(),
                payload: field_bytes(entry, "r"),
                deliveries: deliveries.get(&entry.id).copied().unwrap_or(2),
            })
            .collect())
    }
}

#[async_trait]
impl UsageQueue for RedisUsageQueue {
    async fn enqueue(&self, payloads: &[Vec<u8>]) -> Result<(), StateError> {
        if payloads.is_empty() {
            return Ok(());
        }
        // MULTI/EXEC: a batch is accepted whole or not at all.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for payload in payloads {
            pipe.xadd(&self.stream, "*", &[("r", payload.as_slice())]).ignore();
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?.map_err(unavailable)
    }

    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<QueuedReport>, StateError> {
        if self.claim_due() {
            let reclaimed = self.reclaim(consumer, max).await?;
            if !reclaimed.is_empty() {
                // There may be more: look again on the next receive.
                *self.last_claim.lock().expect("claim clock") = None;
                return Ok(reclaimed);
            }
        }
        let options =
            StreamReadOptions::default().group(GROUP, consumer).count(max).block(wait.as_millis().max(1) as usize);
        let mut conn = self.conn.clone();
        let read = tokio::time::timeout(
            self.op_timeout + wait,
            conn.xread_options::<_, _, Option<StreamReadReply>>(&[&self.stream], &[">"], &options),
        )
        .await
        .map_err(|_| StateError::Timeout)?;
        let reply = match read {
            Ok(reply) => reply,
            // The stream or group vanished (Redis restarted empty): make them again.
            Err(error) if error.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(error) => return Err(unavailable(error)),
        };
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| QueuedReport { payload: field_bytes(&entry, "r"), id: entry.id, deliveries: 1 })
            .collect())
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.xack(&self.stream, GROUP, ids).ignore().xdel(&self.stream, ids).ignore();
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?.map_err(unavailable)
    }

    async fn dead_letter(&self, entry: &QueuedReport, reason: &str, now: Micros) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .xadd(
                &self.dead,
                "*",
                &[
                    ("r", entry.payload.as_slice()),
                    ("reason", reason.as_bytes()),
                    ("attempts", entry.deliveries.to_string().as_bytes()),
                    ("time", now.to_string().as_bytes()),
                ],
            )
            .ignore()
            .xack(&self.stream, GROUP, &[&entry.id])
            .ignore()
            .xdel(&self.stream, &[&entry.id])
            .ignore();
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?.map_err(unavailable)
    }

    async fn dead_letters(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, StateError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply =
            self.bounded(conn.xrange_count(&self.dead, start, "+", limit)).await?.map_err(unavailable)?;
        Ok(reply
            .ids
            .iter()
            .map(|entry| DeadLetter {
                id: entry.id.clone(),
                payload: field_bytes(entry, "r"),
                reason: field_string(entry, "reason"),
                attempts: field_string(entry, "attempts").parse().unwrap_or(0),
                time: field_string(entry, "time").parse().unwrap_or(0),
            })
            .collect())
    }

    async fn replay(&self, ids: &[String]) -> Result<u32, StateError> {
        let mut conn = self.conn.clone();
        let entries: Vec<StreamId> = if ids.is_empty() {
            let reply: StreamRangeReply =
                self.bounded(conn.xrange_count(&self.dead, "-", "+", 10_000)).await?.map_err(unavailable)?;
            reply.ids
        } else {
            let mut found = Vec::new();
            for id in ids {
                let reply: StreamRangeReply =
                    self.bounded(conn.xrange_count(&self.dead, id, id, 1)).await?.map_err(unavailable)?;
                found.extend(reply.ids);
            }
            found
        };
        if entries.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for entry in &entries {
            pipe.xadd(&self.stream, "*", &[("r", field_bytes(entry, "r"))])
                .ignore()
                .xdel(&self.dead, &[&entry.id])
                .ignore();
        }
        self.bounded(pipe.query_async::<()>(&mut conn)).await?.map_err(unavailable)?;
        Ok(entries.len() as u32)
    }
}
