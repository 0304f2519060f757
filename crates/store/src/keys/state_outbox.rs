//! The key-state outbox, and loading what key-state snapshots derive from.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Row};
use tollgate_core::SecretHash;
use tollgate_core::resources::Group;

use super::rows::{self, group_columns, key_columns};
use super::{KeyStateSource, OutboxEntry, SecretRecord, SqlKeysStore, StateChange, StateOutbox};
use crate::error::{StoreError, StoreResult};

/// `$1, $2, …, $n` for an IN list; callers bound `n` by their batch size. Only these numbered
/// placeholders are ever spliced into SQL, which is why the statements are `AssertSqlSafe`.
fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

#[async_trait]
impl StateOutbox for SqlKeysStore {
    async fn pending_state_changes(&self, limit: u32) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query("SELECT id, kind, ref_id FROM state_outbox ORDER BY id LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let change = match kind.as_str() {
                    "key" => StateChange::Key(row.try_get("ref_id")?),
                    "catalog" => StateChange::Catalog,
                    other => {
                        return Err(StoreError::Internal(format!("unknown outbox kind {other:?}")));
                    }
                };
                Ok(OutboxEntry { id: row.try_get("id")?, change })
            })
            .collect()
    }

    async fn state_outbox_depth(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM state_outbox").fetch_one(&self.db.pool).await?)
    }

    async fn ack_state_changes(&self, ids: &[i64]) -> StoreResult<()> {
        for chunk in ids.chunks(500) {
            let sql = format!("DELETE FROM state_outbox WHERE id IN ({})", placeholders(chunk.len()));
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&self.db.pool).await?;
        }
        Ok(())
    }

    async fn enqueue_everything(&self) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("INSERT INTO state_outbox (kind, ref_id) SELECT 'key', id FROM api_keys WHERE delete_time IS NULL")
            .execute(&mut *tx)
            .await?;
        rows::enqueue_catalog(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_key_states(&self, key_ids: &[String]) -> StoreResult<Vec<KeyStateSource>> {
        let mut sources = Vec::with_capacity(key_ids.len());
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut credit_limits: HashMap<String, Option<i64>> = HashMap::new();
        for chunk in key_ids.chunks(500) {
            let list = placeholders(chunk.len());
            let key_sql =
                format!(concat!("SELECT ", key_columns!(), ", delete_time FROM api_keys WHERE id IN ({})"), list);
            let mut key_query = sqlx::query(AssertSqlSafe(key_sql));
            let secret_sql = format!(
                "SELECT key_id, secret_hash, expire_time FROM key_secrets WHERE key_id IN ({list}) ORDER BY create_time"
            );
            let mut secret_query = sqlx::query(AssertSqlSafe(secret_sql));
            for id in chunk {
                key_query = key_query.bind(id);
                secret_query = secret_query.bind(id);
            }
            let key_rows = key_query.fetch_all(&self.db.pool).await?;
            let mut secrets: HashMap<String, Vec<SecretRecord>> = HashMap::new();
            for row in secret_query.fetch_all(&self.db.pool).await? {
                let hash: String = row.try_get("secret_hash")?;
                secrets.entry(row.try_get("key_id")?).or_default().push(SecretRecord {
                    hash: SecretHash::from_hex(&hash)
                        .ok_or_else(|| StoreError::Internal(format!("stored secret hash of length {}", hash.len())))?,
                    expire_time: row.try_get("expire_time")?,
                });
            }
            for row in &key_rows {
                let key = rows::key(row)?;
                let deleted = row.try_get::<Option<i64>, _>("delete_time")?.is_some();
                if !groups.contains_key(&key.settings.group_id) {
                    // Deleted groups included: a deleted key may still name one.
                    let group_row = sqlx::query(concat!("SELECT ", group_columns!(), " FROM key_groups WHERE id = $1"))
                        .bind(&key.settings.group_id)
                        .fetch_one(&self.db.pool)
                        .await?;
                    groups.insert(key.settings.group_id.clone(), rows::group(&group_row)?);
                }
                if !credit_limits.contains_key(&key.account_id) {
                    let account_row = sqlx::query("SELECT credit_limit, unlimited_credit FROM accounts WHERE id = $1")
                        .bind(&key.account_id)
                        .fetch_one(&self.db.pool)
                        .await?;
                    let unlimited = rows::boolean(&account_row, "unlimited_credit")?;
                    let limit: i64 = account_row.try_get("credit_limit")?;
                    credit_limits.insert(key.account_id.clone(), (!unlimited).then_some(limit));
                }
                sources.push(KeyStateSource {
                    group: groups[&key.settings.group_id].clone(),
                    account_credit_limit: credit_limits[&key.account_id],
                    secrets: secrets.remove(&key.id).unwrap_or_default(),
                    deleted,
                    key,
                });
            }
        }
        Ok(sources)
    }

    async fn get_setting(&self, name: &str) -> StoreResult<Option<String>> {
        let row =
            sqlx::query("SELECT value FROM settings WHERE name = $1").bind(name).fetch_optional(&self.db.pool).await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn put_setting(&self, name: &str, value: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(value)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}
