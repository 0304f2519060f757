//! Reading the audit log.

use tollgate_store::keys::{AuditEvent, AuditFilter};

use super::KeysService;
use crate::error::{KeysError, KeysResult};

impl KeysService {
    /// Events newest first; for an account, only after checking it exists.
    pub async fn list_audit_events(&self, filter: &AuditFilter) -> KeysResult<Vec<AuditEvent>> {
        if let Some(account_id) = &filter.account_id {
            self.get_account(account_id).await?;
        }
        self.store.list_audit_events(filter).await.map_err(KeysError::from_store("audit event"))
    }
}
