//! The usage queue on a Redis Stream with a consumer group.
//!
//! Layout under prefix `P`, both keys in the hash slot of `{usage}` so that moving an entry to
//! the dead letters is one MULTI on Redis Cluster too:
//! - `P:{usage}:reports`: stream, field `r` = encoded report; consumer group `metering`;
//! - `P:{usage}:dead`: stream, fields `r`, `reason`, `attempts`, `time`.
//!
//! Acknowledged entries are trimmed off the stream's head about once a second (XTRIM MINID up
//! to the oldest entry still pending or not yet delivered): one command instead of an XDEL per
//! entry, so the stream holds what is pending or unread and about a second of what was done.

use std::time::Duration;

use async_trait::async_trait;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply,
    StreamPendingReply, StreamRangeReply, StreamTrimOptions, StreamTrimmingMode,
};
use redis::{AsyncCommands, FromRedisValue, RedisError, Value};
use tollgate_core::time::Micros;

use crate::StateError;
use crate::redis::RedisState;
use crate::redis_conn::RedisConn;
use crate::usage_queue::{DeadLetter, QueuedReport, UsageQueue};

const GROUP: &str = "metering";

/// The usage queue on the Redis behind a [`RedisState`].
#[derive(Clone)]
pub struct RedisUsageQueue {
    conn: RedisConn,
    stream: String,
    dead: String,
    claim_idle: Duration,
    op_timeout: Duration,
    /// When this process last looked for entries to take over. XAUTOCLAIM walks the pending
    /// entries list, so it runs a few times per claim time, not on every receive.
    last_claim: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Each consumer's connection for its blocking reads (see
    /// [`RedisState::blocking_connection`]), made on its first read.
    readers: std::sync::Arc<tokio::sync::Mutex<std::collections::HashMap<String, RedisConn>>>,
    state: RedisState,
    /// When this process last trimmed acknowledged entries off the stream.
    last_trim: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    forget_script: std::sync::Arc<redis::Script>,
}

/// How often a process trims acknowledged entries off the stream.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Whether `every` has passed since `last`; if so, notes now.
fn due(last: &std::sync::Mutex<Option<std::time::Instant>>, every: Duration) -> bool {
    let mut last = last.lock().expect("queue clock");
    let due = last.is_none_or(|at| at.elapsed() >= every);
    if due {
        *last = Some(std::time::Instant::now());
    }
    due
}

/// The smallest stream entry id after `id` (`ms-seq`).
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    Some(format!("{ms}-{}", seq.parse::<u64>().ok()?.checked_add(1)?))
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

/// The entries of an XREADGROUP reply (`[[stream, [[id, [field, value, …]], …]]]`, or a map
/// of streams on RESP3), read straight from the reply: a batch is a thousand entries, and
/// redis-rs's typed reply builds a hash map for each.
fn read_entries(reply: Value) -> Vec<QueuedReport> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams.into_iter().filter_map(|s| array(s)?.into_iter().nth(1)).collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let mut reports = Vec::new();
    for entry in streams.into_iter().filter_map(array).flatten() {
        let Some(mut parts) = array(entry) else { continue };
        let fields = if parts.len() == 2 { parts.pop().and_then(array) } else { None };
        let Some(Ok(id)) = parts.pop().map(String::from_redis_value) else { continue };
        let mut payload = Vec::new();
        let mut fields = fields.unwrap_or_default().into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            if matches!(&name, Value::BulkString(name) if name == b"r") {
                payload = Vec::<u8>::from_redis_value(value).unwrap_or_default();
            }
        }
        reports.push(QueuedReport { id, payload, deliveries: 1 });
    }
    reports
}

fn array(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(values) => Some(values),
        _ => None,
    }
}

fn field_string(entry: &StreamId, name: &str) -> String {
    String::from_utf8_lossy(&field_bytes(entry, name)).into_owned()
}

impl RedisUsageQueue {
    /// The queue on `state`'s connection and prefix; entries idle longer than `claim_idle` are
    /// taken over from the consumer that left them. Creates the consumer group if missing; if
    /// Redis cannot be reached now, the first read makes it (reports sent meanwhile wait in the
    /// stream, which the group reads from its start).
    pub async fn new(state: &RedisState, claim_idle: Duration, op_timeout: Duration) -> Result<Self, StateError> {
        let queue = Self {
            conn: state.connection(),
            stream: format!("{}:{{usage}}:reports", state.prefix()),
            dead: format!("{}:{{usage}}:dead", state.prefix()),
            claim_idle,
            op_timeout,
            last_claim: Default::default(),
            readers: Default::default(),
            state: state.clone(),
            last_trim: Default::default(),
            forget_script: std::sync::Arc::new(redis::Script::new(include_str!("lua/forget_consumers.lua"))),
        };
        if let Err(error) = queue.ensure_group().await {
            tracing::warn!(%error, "cannot create the usage stream's consumer group yet; the workers will");
        }
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

    /// Whether it is time to look for entries to take over (a quarter of the claim time since
    /// the last look), and if so, notes the look.
    fn claim_due(&self) -> bool {
        due(&self.last_claim, self.claim_idle / 4)
    }

    /// Trims acknowledged entries off the stream's head: all before the oldest pending entry,
    /// or, with none pending, all delivered ones. Both reads in one MULTI, so no entry can be
    /// delivered between them and trimmed unseen.
    async fn trim(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().xinfo_groups(&self.stream).xpending(&self.stream, GROUP);
        let (groups, pending): (StreamInfoGroupsReply, StreamPendingReply) =
            self.bounded(pipe.query_async(&mut conn)).await?.map_err(unavailable)?;
        let Some(group) = groups.groups.iter().find(|g| g.name == GROUP) else { return Ok(()) };
        let bound = match pending {
            StreamPendingReply::Data(oldest) => Some(oldest.start_id),
            _ => next_id(&group.last_delivered_id),
        };
        let Some(bound) = bound else { return Ok(()) };
        let options = StreamTrimOptions::minid(StreamTrimmingMode::Exact, bound);
        let _: usize = self.bounded(conn.xtrim_options(&self.stream, &options)).await?.map_err(unavailable)?;
        Ok(())
    }

    /// Removes the group's consumers that are gone (each process's workers have names of their
    /// own, so every restart would leave some behind): nothing pending and idle for four claim
    /// times. Their entries were taken over after one.
    async fn forget_gone_consumers(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.forget_script.key(&self.stream);
        invocation.arg(GROUP).arg((self.claim_idle * 4).as_millis() as u64);
        let removed: u64 = self.bounded(invocation.invoke_async(&mut conn)).await?.map_err(unavailable)?;
        if removed > 0 {
            tracing::info!(removed, "removed usage stream consumers that are gone");
        }
        Ok(())
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
            // Housekeeping: a failure here is retried on the next look.
            if let Err(error) = self.forget_gone_consumers().await {
                tracing::warn!(%error, "cannot remove gone usage stream consumers");
            }
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(max);
        read.arg("BLOCK").arg(wait.as_millis().max(1) as u64).arg("STREAMS").arg(&self.stream).arg(">");
        let mut conn = self.reader(consumer, wait).await?;
        let reply = tokio::time::timeout(self.op_timeout + wait, read.query_async::<redis::Value>(&mut conn))
            .await
            .map_err(|_| StateError::Timeout)?;
        match reply {
            Ok(reply) => Ok(read_entries(reply)),
            // The stream or group vanished (Redis restarted empty): make them again.
            Err(error) if error.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: usize = self.bounded(conn.xack(&self.stream, GROUP, ids)).await?.map_err(unavailable)?;
        if due(&self.last_trim, TRIM_EVERY) {
            // The entries are acknowledged; a failed trim leaves them for the next one.
            if let Err(error) = self.trim().await {
                tracing::warn!(%error, "cannot trim acknowledged usage reports off the stream");
            }
        }
        Ok(())
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
