//! Reading the audit log. Entries are written by each change, in its own transaction.

use async_trait::async_trait;
use sqlx::Row;

use super::rows;
use super::{AuditEntry, AuditEvent, AuditFilter, AuditLog, SqlKeysStore};
use crate::error::StoreResult;

#[async_trait]
impl AuditLog for SqlKeysStore {
    async fn list_audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT id, actor, action, resource, account_id, changed_fields, time FROM audit_events \
             WHERE ($1 IS NULL OR account_id = $1) AND ($2 IS NULL OR resource = $2) AND ($3 IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(filter.account_id.as_deref())
        .bind(filter.resource.as_deref())
        .bind(filter.before_id)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    entry: AuditEntry {
                        actor: row.try_get("actor")?,
                        action: row.try_get("action")?,
                        resource: row.try_get("resource")?,
                        account_id: row.try_get("account_id")?,
                        changed_fields: rows::strings(row, "changed_fields")?,
                        time: row.try_get("time")?,
                    },
                })
            })
            .collect()
    }
}
