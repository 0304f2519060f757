//! `tollgate dev`'s usage queue: a table in the metering database. A received entry becomes
//! invisible for the claim time; unacknowledged, it comes back, as on a Redis Stream.
//!
//! Claim times are wall-clock time, as a Redis Stream's idle time is, not the services'
//! injected clock: that one is business time (windows, expiry), and a test that stops it must
//! not stop redelivery.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Row};
use tollgate_core::time::{Micros, now_micros};
use tollgate_ports::StateError;
use tollgate_ports::usage_queue::{DeadLetter, QueueDepth, QueuedReport, UsageQueue};

use super::{SqlMeteringStore, placeholders};
use crate::error::StoreError;

fn state_error(error: impl Into<StoreError>) -> StateError {
    StateError::Unavailable(error.into().to_string())
}

fn parse_ids(ids: &[String]) -> Result<Vec<i64>, StateError> {
    ids.iter().map(|id| id.parse().map_err(|_| StateError::Unavailable(format!("bad queue id {id:?}")))).collect()
}

impl SqlMeteringStore {
    async fn take_visible(&self, max: usize, now: Micros) -> Result<Vec<QueuedReport>, StateError> {
        let mut tx = self.db.pool.begin().await.map_err(state_error)?;
        let rows =
            sqlx::query("SELECT id, payload, deliveries FROM usage_inbox WHERE visible_at <= $1 ORDER BY id LIMIT $2")
                .bind(now)
                .bind(max as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(state_error)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get("id").map_err(state_error)?;
            let deliveries: i32 = row.try_get("deliveries").map_err(state_error)?;
            entries.push(QueuedReport {
                id: id.to_string(),
                payload: row.try_get("payload").map_err(state_error)?,
                deliveries: deliveries as u32 + 1,
                // The table does not keep it: dev's queue reports no lag.
                enqueued_at: None,
            });
        }
        let sql = format!(
            "UPDATE usage_inbox SET deliveries = deliveries + 1, visible_at = $1 WHERE id IN ({})",
            (2..entries.len() + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now + self.claim_idle.as_micros() as i64);
        for entry in &entries {
            query = query.bind(entry.id.parse::<i64>().unwrap_or_default());
        }
        query.execute(&mut *tx).await.map_err(state_error)?;
        tx.commit().await.map_err(state_error)?;
        Ok(entries)
    }
}

#[async_trait]
impl UsageQueue for SqlMeteringStore {
    async fn enqueue(&self, payloads: &[Vec<u8>]) -> Result<(), StateError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.pool.begin().await.map_err(state_error)?;
        for chunk in payloads.chunks(500) {
            let sql =
                format!("INSERT INTO usage_inbox (payload, visible_at) VALUES {}", placeholders(chunk.len(), 2, 1));
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for payload in chunk {
                query = query.bind(payload.as_slice()).bind(0_i64);
            }
            query.execute(&mut *tx).await.map_err(state_error)?;
        }
        tx.commit().await.map_err(state_error)?;
        self.arrivals.notify_waiters();
        Ok(())
    }

    async fn receive(&self, _consumer: &str, max: usize, wait: Duration) -> Result<Vec<QueuedReport>, StateError> {
        let arrived = self.arrivals.notified();
        let entries = self.take_visible(max, now_micros()).await?;
        if !entries.is_empty() {
            return Ok(entries);
        }
        let _ = tokio::time::timeout(wait, arrived).await;
        self.take_visible(max, now_micros()).await
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StateError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = parse_ids(ids)?;
        let sql = format!(
            "DELETE FROM usage_inbox WHERE id IN ({})",
            (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        query.execute(&self.db.pool).await.map_err(state_error)?;
        Ok(())
    }

    async fn dead_letter(&self, entry: &QueuedReport, reason: &str, now: Micros) -> Result<(), StateError> {
        let id = parse_ids(std::slice::from_ref(&entry.id))?[0];
        let mut tx = self.db.pool.begin().await.map_err(state_error)?;
        sqlx::query("INSERT INTO usage_dead_letters (payload, reason, attempts, time) VALUES ($1, $2, $3, $4)")
            .bind(entry.payload.as_slice())
            .bind(reason)
            .bind(entry.deliveries as i32)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(state_error)?;
        sqlx::query("DELETE FROM usage_inbox WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(state_error)?;
        tx.commit().await.map_err(state_error)
    }

    async fn dead_letters(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, StateError> {
        let after: i64 = match after {
            Some(id) => parse_ids(&[id.to_owned()])?[0],
            None => 0,
        };
        let rows = sqlx::query(
            "SELECT id, payload, reason, attempts, time FROM usage_dead_letters WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.db.pool)
        .await
        .map_err(state_error)?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                let attempts: i32 = row.try_get("attempts")?;
                Ok(DeadLetter {
                    id: id.to_string(),
                    payload: row.try_get("payload")?,
                    reason: row.try_get("reason")?,
                    attempts: attempts as u32,
                    time: row.try_get("time")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(state_error)
    }

    async fn replay(&self, ids: &[String]) -> Result<u32, StateError> {
        let ids = parse_ids(ids)?;
        let mut tx = self.db.pool.begin().await.map_err(state_error)?;
        let (select, delete) = if ids.is_empty() {
            (
                "INSERT INTO usage_inbox (payload, visible_at) SELECT payload, 0 FROM usage_dead_letters ORDER BY id"
                    .to_owned(),
                "DELETE FROM usage_dead_letters".to_owned(),
            )
        } else {
            let list = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            (
                format!(
                    "INSERT INTO usage_inbox (payload, visible_at) SELECT payload, 0 FROM usage_dead_letters \
                     WHERE id IN ({list}) ORDER BY id"
                ),
                format!("DELETE FROM usage_dead_letters WHERE id IN ({list})"),
            )
        };
        let mut insert = sqlx::query(AssertSqlSafe(select));
        let mut remove = sqlx::query(AssertSqlSafe(delete));
        for id in &ids {
            insert = insert.bind(*id);
            remove = remove.bind(*id);
        }
        let moved = insert.execute(&mut *tx).await.map_err(state_error)?.rows_affected();
        remove.execute(&mut *tx).await.map_err(state_error)?;
        tx.commit().await.map_err(state_error)?;
        self.arrivals.notify_waiters();
        Ok(moved as u32)
    }

    async fn depth(&self) -> Result<QueueDepth, StateError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM usage_inbox) AS entries, \
             (SELECT count(*) FROM usage_inbox WHERE deliveries > 0) AS pending, \
             (SELECT count(*) FROM usage_dead_letters) AS dead_letters",
        )
        .fetch_one(&self.db.pool)
        .await
        .map_err(state_error)?;
        let count = |column: &str| row.try_get::<i64, _>(column).map(|n| n.max(0) as u64).map_err(state_error);
        Ok(QueueDepth { entries: count("entries")?, pending: count("pending")?, dead_letters: count("dead_letters")? })
    }
}
