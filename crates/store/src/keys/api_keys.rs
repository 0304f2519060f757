//! Keys, their secrets (as keyed hashes only) and create-request idempotency records.

use async_trait::async_trait;
use sqlx::{AnyConnection, Row};
use tollgate_core::SecretHash;
use tollgate_core::resources::{Key, KeyStatus};
use tollgate_core::time::Micros;

use super::rows::{self, key_columns};
use super::{AuditEntry, IdempotencyRecord, KeyFilter, KeyStore, NewKey, Rotation, SqlKeysStore};
use crate::error::{StoreError, StoreResult};
use crate::{Page, PageRequest};

/// Inserts a key, its first secret and its outbox entry inside the caller's transaction.
pub(super) async fn insert(conn: &mut AnyConnection, new: &NewKey) -> StoreResult<()> {
    let key = &new.key;
    let s = &key.settings;
    sqlx::query(
        "INSERT INTO api_keys (id, account_id, application_id, group_id, display_name, expire_time, quota, \
         daily_budget, monthly_budget, rpm_limit, tpm_limit, allowed_models, capabilities, ip_allowlist, enabled, \
         hint, previous_secret_expire_time, revision, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
    )
    .bind(&key.id)
    .bind(&key.account_id)
    .bind(&key.application_id)
    .bind(&s.group_id)
    .bind(&s.display_name)
    .bind(s.expire_time)
    .bind(s.quota)
    .bind(s.daily_budget)
    .bind(s.monthly_budget)
    .bind(s.rpm_limit)
    .bind(s.tpm_limit)
    .bind(rows::json(&s.allowed_models))
    .bind(rows::capability_names(&s.capabilities))
    .bind(rows::json(&s.ip_allowlist))
    .bind(s.enabled)
    .bind(&key.hint)
    .bind(key.previous_secret_expire_time)
    .bind(key.revision)
    .bind(key.create_time)
    .bind(key.update_time)
    .execute(&mut *conn)
    .await?;
    insert_secret(conn, &key.id, &new.secret_hash, key.create_time).await?;
    rows::enqueue_key(conn, &key.id).await
}

async fn insert_secret(conn: &mut AnyConnection, key_id: &str, hash: &SecretHash, now: Micros) -> StoreResult<()> {
    sqlx::query("INSERT INTO key_secrets (secret_hash, key_id, expire_time, create_time) VALUES ($1, $2, NULL, $3)")
        .bind(hash.to_hex())
        .bind(key_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn select_live_key(conn: &mut AnyConnection, account_id: &str, id: &str) -> StoreResult<Option<Key>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE account_id = $1 AND id = $2 AND delete_time IS NULL"
    ))
    .bind(account_id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(rows::key).transpose()
}

#[async_trait]
impl KeyStore for SqlKeysStore {
    async fn create_keys(
        &self,
        keys: &[NewKey],
        idempotency: Option<&IdempotencyRecord>,
        audit: &[AuditEntry],
    ) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        if let Some(record) = idempotency {
            // Records older than the replay window are dead weight; drop them as we go.
            sqlx::query("DELETE FROM create_requests WHERE create_time < $1")
                .bind(record.create_time - 24 * 3600 * 1_000_000)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO create_requests (account_id, request_id, fingerprint, key_ids, sealed_secrets, create_time) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&record.account_id)
            .bind(&record.request_id)
            .bind(&record.fingerprint)
            .bind(rows::json(&record.key_ids))
            .bind(&record.sealed_secrets)
            .bind(record.create_time)
            .execute(&mut *tx)
            .await?;
        }
        for key in keys {
            insert(&mut tx, key).await?;
        }
        rows::commit_audited(tx, audit).await
    }

    async fn find_idempotency_record(
        &self,
        account_id: &str,
        request_id: &str,
        not_before: Micros,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        let row = sqlx::query(
            "SELECT account_id, request_id, fingerprint, key_ids, sealed_secrets, create_time FROM create_requests \
             WHERE account_id = $1 AND request_id = $2 AND create_time >= $3",
        )
        .bind(account_id)
        .bind(request_id)
        .bind(not_before)
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(IdempotencyRecord {
            account_id: row.try_get("account_id")?,
            request_id: row.try_get("request_id")?,
            fingerprint: row.try_get("fingerprint")?,
            key_ids: rows::strings(&row, "key_ids")?,
            sealed_secrets: row.try_get("sealed_secrets")?,
            create_time: row.try_get("create_time")?,
        }))
    }

    async fn get_key(&self, account_id: &str, id: &str) -> StoreResult<Option<Key>> {
        let mut conn = self.db.pool.acquire().await?;
        select_live_key(&mut conn, account_id, id).await
    }

    async fn get_keys_by_id(&self, account_id: &str, ids: &[String]) -> StoreResult<Vec<Key>> {
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let row =
                sqlx::query(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE account_id = $1 AND id = $2"))
                    .bind(account_id)
                    .bind(id)
                    .fetch_optional(&self.db.pool)
                    .await?;
            if let Some(row) = row {
                keys.push(rows::key(&row)?);
            }
        }
        Ok(keys)
    }

    async fn list_keys(
        &self,
        account_id: &str,
        filter: &KeyFilter,
        page: &PageRequest,
        now: Micros,
    ) -> StoreResult<Page<Key>> {
        // Exhausted needs spend, which this store does not hold; the service filters it.
        let status = filter.status.map(KeyStatus::as_str);
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE account_id = $1 AND delete_time IS NULL \
             AND ($2 IS NULL OR application_id = $2) AND ($3 IS NULL OR group_id = $3) \
             AND ($4 IS NULL \
                  OR ($4 = 'enabled' AND enabled AND (expire_time IS NULL OR expire_time > $5)) \
                  OR ($4 = 'disabled' AND NOT enabled) \
                  OR ($4 = 'expired' AND enabled AND expire_time <= $5) \
                  OR ($4 = 'exhausted' AND enabled AND (expire_time IS NULL OR expire_time > $5))) \
             AND ($6 IS NULL OR id > $6) ORDER BY id LIMIT $7"
        ))
        .bind(account_id)
        .bind(filter.application_id.as_deref())
        .bind(filter.group_id.as_deref())
        .bind(status)
        .bind(now)
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows.iter().map(rows::key).collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_lookahead(items, page.limit, |k| k.id.clone()))
    }

    async fn update_key(&self, key: &Key, audit: &AuditEntry) -> StoreResult<()> {
        let s = &key.settings;
        let mut tx = self.db.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE api_keys SET group_id = $1, display_name = $2, expire_time = $3, quota = $4, daily_budget = $5, \
             monthly_budget = $6, rpm_limit = $7, tpm_limit = $8, allowed_models = $9, capabilities = $10, \
             ip_allowlist = $11, enabled = $12, revision = revision + 1, update_time = $13 \
             WHERE account_id = $14 AND id = $15 AND revision = $16 AND delete_time IS NULL",
        )
        .bind(&s.group_id)
        .bind(&s.display_name)
        .bind(s.expire_time)
        .bind(s.quota)
        .bind(s.daily_budget)
        .bind(s.monthly_budget)
        .bind(s.rpm_limit)
        .bind(s.tpm_limit)
        .bind(rows::json(&s.allowed_models))
        .bind(rows::capability_names(&s.capabilities))
        .bind(rows::json(&s.ip_allowlist))
        .bind(s.enabled)
        .bind(key.update_time)
        .bind(&key.account_id)
        .bind(&key.id)
        .bind(key.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists =
                sqlx::query("SELECT id FROM api_keys WHERE account_id = $1 AND id = $2 AND delete_time IS NULL")
                    .bind(&key.account_id)
                    .bind(&key.id);
            return Err(rows::conflict_or_not_found(&mut tx, exists).await);
        }
        rows::enqueue_key(&mut tx, &key.id).await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn delete_key(&self, account_id: &str, id: &str, now: Micros, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let deleted = sqlx::query(
            "UPDATE api_keys SET delete_time = $1, update_time = $1, revision = revision + 1 \
             WHERE account_id = $2 AND id = $3 AND delete_time IS NULL",
        )
        .bind(now)
        .bind(account_id)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        rows::enqueue_key(&mut tx, id).await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn rotate_key(
        &self,
        account_id: &str,
        id: &str,
        rotation: &Rotation,
        audit: &AuditEntry,
    ) -> StoreResult<Key> {
        let Rotation { new_secret, new_hint, old_secret_expire_time, now } = rotation;
        let (old_secret_expire_time, now) = (*old_secret_expire_time, *now);
        let mut tx = self.db.pool.begin().await?;
        if select_live_key(&mut tx, account_id, id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        // Secrets still working stop at the deadline, or earlier if an earlier rotation said so.
        sqlx::query(
            "UPDATE key_secrets SET expire_time = $1 WHERE key_id = $2 AND (expire_time IS NULL OR expire_time > $1)",
        )
        .bind(old_secret_expire_time)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        insert_secret(&mut tx, id, new_secret, now).await?;
        let previous = (old_secret_expire_time > now).then_some(old_secret_expire_time);
        sqlx::query(
            "UPDATE api_keys SET hint = $1, previous_secret_expire_time = $2, revision = revision + 1, update_time = $3 \
             WHERE account_id = $4 AND id = $5",
        )
        .bind(new_hint)
        .bind(previous)
        .bind(now)
        .bind(account_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        rows::enqueue_key(&mut tx, id).await?;
        rows::insert_audit(&mut tx, std::slice::from_ref(audit)).await?;
        let key = select_live_key(&mut tx, account_id, id).await?.ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(key)
    }

    async fn key_id_for_secret(&self, hash: &SecretHash) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT key_id FROM key_secrets WHERE secret_hash = $1")
            .bind(hash.to_hex())
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.map(|r| r.try_get("key_id")).transpose()?)
    }
}
