//! Accounts, and the initial application and key that may come with one.

use async_trait::async_trait;
use tollgate_core::resources::{Account, Application};

use super::rows::{self, account_columns};
use super::{AccountStore, AuditEntry, NewKey, SqlKeysStore};
use crate::error::StoreResult;
use crate::{Page, PageRequest};

#[async_trait]
impl AccountStore for SqlKeysStore {
    async fn create_account(
        &self,
        account: &Account,
        initial: Option<(&Application, &NewKey)>,
        audit: &[AuditEntry],
    ) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO accounts (id, display_name, credit_limit, unlimited_credit, revision, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&account.id)
        .bind(&account.display_name)
        .bind(account.credit_limit)
        .bind(account.unlimited_credit)
        .bind(account.revision)
        .bind(account.create_time)
        .bind(account.update_time)
        .execute(&mut *tx)
        .await?;
        if let Some((application, key)) = initial {
            super::applications::insert(&mut tx, application).await?;
            super::api_keys::insert(&mut tx, key).await?;
        }
        rows::commit_audited(tx, audit).await
    }

    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>> {
        let row = sqlx::query(concat!("SELECT ", account_columns!(), " FROM accounts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(rows::account).transpose()
    }

    async fn list_accounts(&self, page: &PageRequest) -> StoreResult<Page<Account>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2"
        ))
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.db.pool)
        .await?;
        let items = rows.iter().map(rows::account).collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_lookahead(items, page.limit, |a| a.id.clone()))
    }

    async fn update_account(&self, account: &Account, audit: &AuditEntry) -> StoreResult<()> {
        let mut tx = self.db.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE accounts SET display_name = $1, credit_limit = $2, unlimited_credit = $3, \
             revision = revision + 1, update_time = $4 WHERE id = $5 AND revision = $6",
        )
        .bind(&account.display_name)
        .bind(account.credit_limit)
        .bind(account.unlimited_credit)
        .bind(account.update_time)
        .bind(&account.id)
        .bind(account.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists = sqlx::query("SELECT id FROM accounts WHERE id = $1").bind(&account.id);
            return Err(rows::conflict_or_not_found(&mut tx, exists).await);
        }
        // The credit limit is part of every key's state.
        sqlx::query("UPDATE api_keys SET revision = revision + 1 WHERE account_id = $1 AND delete_time IS NULL")
            .bind(&account.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO state_outbox (kind, ref_id) \
             SELECT 'key', id FROM api_keys WHERE account_id = $1 AND delete_time IS NULL",
        )
        .bind(&account.id)
        .execute(&mut *tx)
        .await?;
        rows::commit_audited(tx, std::slice::from_ref(audit)).await
    }
}
