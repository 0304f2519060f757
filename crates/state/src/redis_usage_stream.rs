//! One shard of the usage queue: a Redis Stream of reports with the consumer group
//! `metering`, and the stream of its dead letters, both in one hash slot so that moving an
//! entry to the dead letters is one MULTI on Redis Cluster too. Ids here are the streams' own
//! (`ms-seq`); [`crate::redis_usage_queue`] spreads reports over shards and names their ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply,
    StreamPendingReply, StreamRangeReply, StreamTrimOptions, StreamTrimmingMode,
};
use redis::{AsyncCommands, FromRedisValue, RedisError, Script, Value};
use tollgate_core::time::Micros;

use crate::redis_conn::{RedisConn, unavailable};
use tollgate_ports::StateError;
use tollgate_ports::usage_queue::{DeadLetter, QueueDepth, QueuedReport};

const GROUP: &str = "metering";

/// How often a process trims acknowledged entries off a stream.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Whether `every` has passed since `last`; if so, notes now.
pub(crate) fn due(last: &Mutex<Option<Instant>>, every: Duration) -> bool {
    let mut last = last.lock().expect("queue clock");
    let due = last.is_none_or(|at| at.elapsed() >= every);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// The smallest stream entry id after `id` (`ms-seq`).
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    Some(format!("{ms}-{}", seq.parse::<u64>().ok()?.checked_add(1)?))
}

fn field_bytes(entry: &StreamId, name: &str) -> Vec<u8> {
    entry.map.get(name).and_then(|v| Vec::<u8>::from_redis_value(v.clone()).ok()).unwrap_or_default()
}

fn field_string(entry: &StreamId, name: &str) -> String {
    String::from_utf8_lossy(&field_bytes(entry, name)).into_owned()
}

fn array(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(values) => Some(values),
        _ => None,
    }
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
        reports.push(QueuedReport { enqueued_at: entry_time(&id), id, payload, deliveries: 1 });
    }
    reports
}

/// When a stream entry was added: its id is `<milliseconds>-<sequence>`.
fn entry_time(id: &str) -> Option<Micros> {
    let millis: i64 = id.split_once('-')?.0.parse().ok()?;
    millis.checked_mul(1000)
}

/// One stream of reports and its dead letters.
#[derive(Clone)]
pub(crate) struct UsageStream {
    conn: RedisConn,
    pub(crate) stream: String,
    dead: String,
    claim_idle: Duration,
    op_timeout: Duration,
    forget_script: Arc<Script>,
    /// When this process last trimmed acknowledged entries off the stream.
    last_trim: Arc<Mutex<Option<Instant>>>,
}

impl UsageStream {
    /// The shard whose keys share the hash tag `tag`.
    pub(crate) fn new(conn: RedisConn, prefix: &str, tag: &str, claim_idle: Duration, op_timeout: Duration) -> Self {
        Self {
            conn,
            stream: format!("{prefix}:{{{tag}}}:reports"),
            dead: format!("{prefix}:{{{tag}}}:dead"),
            claim_idle,
            op_timeout,
            forget_script: Arc::new(Script::new(include_str!("lua/forget_consumers.lua"))),
            last_trim: Arc::default(),
        }
    }

    async fn bounded<T>(&self, op: impl Future<Output = T>) -> Result<T, StateError> {
        tokio::time::timeout(self.op_timeout, op).await.map_err(|_| StateError::Timeout)
    }

    /// Creates the stream and its consumer group if missing.
    pub(crate) async fn ensure_group(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let created: Result<(), RedisError> =
            self.bounded(conn.xgroup_create_mkstream(&self.stream, GROUP, "0")).await?;
        match created {
            Ok(()) => Ok(()),
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Appends reports in one MULTI: all or none.
    pub(crate) async fn enqueue(&self, payloads: &[Vec<u8>]) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for payload in payloads {
            pipe.xadd(&self.stream, "*", &[("r", payload.as_slice())]).ignore();
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?.map_err(unavailable)
    }

    /// New entries for `consumer` on `reader` (its own connection), waiting up to `wait`.
    pub(crate) async fn read(
        &self,
        reader: &mut RedisConn,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<QueuedReport>, StateError> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(max);
        read.arg("BLOCK").arg(wait.as_millis().max(1) as u64).arg("STREAMS").arg(&self.stream).arg(">");
        let reply = tokio::time::timeout(self.op_timeout + wait, read.query_async::<Value>(reader))
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

    /// The stream's length, its entries pending in the group, and its dead letters: one MULTI.
    pub(crate) async fn depth(&self) -> Result<QueueDepth, StateError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().xlen(&self.stream).xpending(&self.stream, GROUP).xlen(&self.dead);
        let reply: redis::RedisResult<(u64, StreamPendingReply, u64)> =
            self.bounded(pipe.query_async(&mut conn)).await?;
        match reply {
            Ok((entries, pending, dead_letters)) => {
                Ok(QueueDepth { entries, pending: pending.count() as u64, dead_letters })
            }
            // Not made yet: nothing queued.
            Err(error) if error.code() == Some("NOGROUP") => Ok(QueueDepth::default()),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Acknowledges applied entries, and trims the stream about once a second.
    pub(crate) async fn ack(&self, ids: &[&str]) -> Result<(), StateError> {
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
    pub(crate) async fn forget_gone_consumers(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.forget_script.key(&self.stream);
        invocation.arg(GROUP).arg((self.claim_idle * 4).as_millis() as u64);
        let removed: u64 = self.bounded(invocation.invoke_async(&mut conn)).await?.map_err(unavailable)?;
        if removed > 0 {
            tracing::info!(removed, stream = %self.stream, "removed usage stream consumers that are gone");
        }
        Ok(())
    }

    /// Entries idle past the claim time, taken over by `consumer`, with delivery counts.
    pub(crate) async fn reclaim(&self, consumer: &str, max: usize) -> Result<Vec<QueuedReport>, StateError> {
        let mut conn = self.conn.clone();
        let options = StreamAutoClaimOptions::default().count(max);
        let idle = self.claim_idle.as_millis() as u64;
        let reply: StreamAutoClaimReply = self
            .bounded(conn.xautoclaim_options(&self.stream, GROUP, consumer, idle, "0-0", options))
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
        let deliveries: HashMap<String, u32> =
            pending.ids.into_iter().map(|p| (p.id, p.times_delivered as u32)).collect();
        Ok(claimed
            .iter()
            .map(|entry| QueuedReport {
                id: entry.id.clone(),
                payload: field_bytes(entry, "r"),
                deliveries: deliveries.get(&entry.id).copied().unwrap_or(2),
                enqueued_at: entry_time(&entry.id),
            })
            .collect())
    }

    /// Moves an entry (`id` is this stream's) to the dead letters in one MULTI.
    pub(crate) async fn dead_letter(
        &self,
        id: &str,
        entry: &QueuedReport,
        reason: &str,
        now: Micros,
    ) -> Result<(), StateError> {
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
            .xack(&self.stream, GROUP, &[id])
            .ignore()
            .xdel(&self.stream, &[id])
            .ignore();
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?.map_err(unavailable)
    }

    /// Up to `limit` dead letters after `after` (this stream's id), oldest first.
    pub(crate) async fn dead_letters(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, StateError> {
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

    /// Puts dead letters (all, up to 10,000, when `ids` is empty) back on this stream.
    pub(crate) async fn replay(&self, ids: &[&str]) -> Result<u32, StateError> {
        let mut conn = self.conn.clone();
        let entries: Vec<StreamId> = if ids.is_empty() {
            let reply: StreamRangeReply =
                self.bounded(conn.xrange_count(&self.dead, "-", "+", 10_000)).await?.map_err(unavailable)?;
            reply.ids
        } else {
            let mut found = Vec::new();
            for id in ids {
                let reply: StreamRangeReply =
                    self.bounded(conn.xrange_count(&self.dead, *id, *id, 1)).await?.map_err(unavailable)?;
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
