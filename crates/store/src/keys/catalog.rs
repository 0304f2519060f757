//! Groups (pricing tiers) and the model catalog.

use async_trait::async_trait;
use sqlx::Row;
use tollgate_core::resources::{Group, Model};

use super::rows::{self, group_columns, model_columns};
use super::{AuditEntry, CatalogStore, SqlKeysStore};
use crate::error::{StoreError, StoreResult};
use crate::{Page, PageRequest};

#[async_trait]
impl CatalogStore for SqlKeysStore {
    async fn create_group(&self, group: &Group, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO key_groups (id, display_name, price_multiplier, allowed_models, default_rpm_limit, \
             default_tpm_limit, revision, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, \
             price_multiplier = excluded.price_multiplier, allowed_models = excluded.allowed_models, \
             default_rpm_limit = excluded.default_rpm_limit, default_tpm_limit = excluded.default_tpm_limit, \
             revision = key_groups.revision + 1, create_time = excluded.create_time, \
             update_time = excluded.update_time, delete_time = NULL \
             WHERE key_groups.delete_time IS NOT NULL",
        )
        .bind(&group.id)
        .bind(&group.display_name)
        .bind(group.price_multiplier.to_string())
        .bind(rows::json(&group.allowed_models))
        .bind(group.default_rpm_limit)
        .bind(group.default_tpm_limit)
        .bind(group.revision)
        .bind(group.create_time)
        .bind(group.update_time)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Zero rows: the id belongs to a live group (a deleted one is revived above).
        if inserted == 0 {
            return Err(StoreError::AlreadyExists);
        }
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn get_group(&self, id: &str) -> StoreResult<Option<Group>> {
        let row =
            sqlx::query(concat!("SELECT ", group_columns!(), " FROM key_groups WHERE id = $1 AND delete_time IS NULL"))
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?;
        row.as_ref().map(rows::group).transpose()
    }

    async fn list_groups(&self, page: &PageRequest) -> StoreResult<Page<Group>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            group_columns!(),
            " FROM key_groups \
             WHERE delete_time IS NULL AND ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2"
        ))
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows.iter().map(rows::group).collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_lookahead(items, page.limit, |g| g.id.clone()))
    }

    async fn update_group(&self, group: &Group, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE key_groups SET display_name = $1, price_multiplier = $2, allowed_models = $3, \
             default_rpm_limit = $4, default_tpm_limit = $5, revision = revision + 1, update_time = $6 \
             WHERE id = $7 AND revision = $8 AND delete_time IS NULL",
        )
        .bind(&group.display_name)
        .bind(group.price_multiplier.to_string())
        .bind(rows::json(&group.allowed_models))
        .bind(group.default_rpm_limit)
        .bind(group.default_tpm_limit)
        .bind(group.update_time)
        .bind(&group.id)
        .bind(group.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists = sqlx::query("SELECT id FROM key_groups WHERE id = $1 AND delete_time IS NULL").bind(&group.id);
            return Err(rows::conflict_or_not_found(&mut tx, exists).await);
        }
        // Multiplier, models and default limits are part of every member key's state.
        sqlx::query("UPDATE api_keys SET revision = revision + 1 WHERE group_id = $1 AND delete_time IS NULL")
            .bind(&group.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO state_outbox (kind, ref_id) \
             SELECT 'key', id FROM api_keys WHERE group_id = $1 AND delete_time IS NULL",
        )
        .bind(&group.id)
        .execute(&mut *tx)
        .await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn delete_group(&self, id: &str, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let live_key = sqlx::query("SELECT id FROM api_keys WHERE group_id = $1 AND delete_time IS NULL LIMIT 1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let deleted = sqlx::query(
            "UPDATE key_groups SET delete_time = $1, revision = revision + 1 WHERE id = $2 AND delete_time IS NULL",
        )
        .bind(audit.time)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        if live_key.is_some() {
            return Err(StoreError::FailedPrecondition("keys still use the group; move or delete them first".into()));
        }
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn create_model(&self, model: &Model, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO models (id, display_name, capability, input_price, output_price, cached_input_price, \
             revision, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&model.id)
        .bind(&model.display_name)
        .bind(model.capability.as_str())
        .bind(model.input_price)
        .bind(model.output_price)
        .bind(model.cached_input_price)
        .bind(model.revision)
        .bind(model.create_time)
        .bind(model.update_time)
        .execute(&mut *tx)
        .await?;
        rows::enqueue_catalog(&mut tx).await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn get_model(&self, id: &str) -> StoreResult<Option<Model>> {
        let row = sqlx::query(concat!("SELECT ", model_columns!(), " FROM models WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(rows::model).transpose()
    }

    async fn list_models(&self, page: &PageRequest) -> StoreResult<Page<Model>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            model_columns!(),
            " FROM models WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2"
        ))
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows.iter().map(rows::model).collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_lookahead(items, page.limit, |m| m.id.clone()))
    }

    async fn update_model(&self, model: &Model, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE models SET display_name = $1, capability = $2, input_price = $3, output_price = $4, \
             cached_input_price = $5, revision = revision + 1, update_time = $6 WHERE id = $7 AND revision = $8",
        )
        .bind(&model.display_name)
        .bind(model.capability.as_str())
        .bind(model.input_price)
        .bind(model.output_price)
        .bind(model.cached_input_price)
        .bind(model.update_time)
        .bind(&model.id)
        .bind(model.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists = sqlx::query("SELECT id FROM models WHERE id = $1").bind(&model.id);
            return Err(rows::conflict_or_not_found(&mut tx, exists).await);
        }
        rows::enqueue_catalog(&mut tx).await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn delete_model(&self, id: &str, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM models WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        rows::enqueue_catalog(&mut tx).await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn existing_models(&self, ids: &[String]) -> StoreResult<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // The catalog is small (hundreds of rows); one static statement beats building an
        // IN list per call.
        let known: std::collections::HashSet<String> = sqlx::query("SELECT id FROM models")
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?;
        Ok(ids.iter().filter(|id| known.contains(*id)).cloned().collect())
    }

    async fn all_models(&self) -> StoreResult<Vec<Model>> {
        let rows = sqlx::query(concat!("SELECT ", model_columns!(), " FROM models ORDER BY id"))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(rows::model).collect()
    }
}
