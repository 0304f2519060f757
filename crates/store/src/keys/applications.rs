//! Applications of an account. Deleted ones stay as tombstones because their keys' rows (and
//! audit trail) still name them.

use async_trait::async_trait;
use sqlx::AnyConnection;
use tollgate_core::resources::Application;

use super::rows::{self, application_columns};
use super::{ApplicationStore, AuditEntry, SqlKeysStore};
use crate::error::{StoreError, StoreResult};
use crate::{Page, PageRequest};

pub(super) async fn insert(conn: &mut AnyConnection, application: &Application) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO applications (account_id, id, display_name, description, revision, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&application.account_id)
    .bind(&application.id)
    .bind(&application.display_name)
    .bind(&application.description)
    .bind(application.revision)
    .bind(application.create_time)
    .bind(application.update_time)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl ApplicationStore for SqlKeysStore {
    async fn create_application(&self, application: &Application, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        insert(&mut tx, application).await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn get_application(&self, account_id: &str, id: &str) -> StoreResult<Option<Application>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            application_columns!(),
            " FROM applications \
             WHERE account_id = $1 AND id = $2 AND delete_time IS NULL"
        ))
        .bind(account_id)
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(rows::application).transpose()
    }

    async fn list_applications(&self, account_id: &str, page: &PageRequest) -> StoreResult<Page<Application>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            application_columns!(),
            " FROM applications \
             WHERE account_id = $1 AND delete_time IS NULL AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        ))
        .bind(account_id)
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows.iter().map(rows::application).collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_lookahead(items, page.limit, |a| a.id.clone()))
    }

    async fn update_application(&self, application: &Application, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE applications SET display_name = $1, description = $2, revision = revision + 1, update_time = $3 \
             WHERE account_id = $4 AND id = $5 AND revision = $6 AND delete_time IS NULL",
        )
        .bind(&application.display_name)
        .bind(&application.description)
        .bind(application.update_time)
        .bind(&application.account_id)
        .bind(&application.id)
        .bind(application.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists =
                sqlx::query("SELECT id FROM applications WHERE account_id = $1 AND id = $2 AND delete_time IS NULL")
                    .bind(&application.account_id)
                    .bind(&application.id);
            return Err(rows::conflict_or_not_found(&mut tx, exists).await);
        }
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }

    async fn delete_application(&self, account_id: &str, id: &str, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let live_key = sqlx::query(
            "SELECT id FROM api_keys WHERE account_id = $1 AND application_id = $2 AND delete_time IS NULL LIMIT 1",
        )
        .bind(account_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let deleted = sqlx::query(
            "UPDATE applications SET delete_time = $1, revision = revision + 1 \
             WHERE account_id = $2 AND id = $3 AND delete_time IS NULL",
        )
        .bind(audit.time)
        .bind(account_id)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        if live_key.is_some() {
            return Err(StoreError::FailedPrecondition("the application still has keys; delete them first".into()));
        }
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }
}
