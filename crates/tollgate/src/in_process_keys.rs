//! The keys service in the same process (`tollgate dev`), as authz and metering read it: the
//! in-process adapter of the one keys-service port, [`KeyStateApi`].

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_core::{SecretHash, names};
use tollgate_keys_client::{KeyStateApi, Unavailable};
use tollgate_keys_service::{KeysError, KeysService};
use tollgate_proto::keys::v1 as keys;

pub(crate) struct InProcessKeys(pub Arc<KeysService>);

fn unavailable(error: KeysError) -> Unavailable {
    Unavailable(error.to_string())
}

/// `None` for what does not exist, as the gRPC adapter reads `NOT_FOUND`.
fn found<T>(answer: Result<T, KeysError>) -> Result<Option<T>, Unavailable> {
    match answer {
        Ok(value) => Ok(Some(value)),
        Err(KeysError::NotFound(_)) => Ok(None),
        Err(error) => Err(unavailable(error)),
    }
}

#[async_trait]
impl KeyStateApi for InProcessKeys {
    async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, Unavailable> {
        found(self.0.key_state(hash).await)
    }

    async fn key_states(&self, ids: &[(String, String)]) -> Result<Vec<keys::KeyState>, Unavailable> {
        self.0.key_states_by_id(ids).await.map_err(unavailable)
    }

    async fn catalog(&self) -> Result<keys::GetModelCatalogResponse, Unavailable> {
        self.0.model_catalog().await.map_err(unavailable)
    }

    async fn account(&self, account_id: &str) -> Result<Option<keys::GetAccountStateResponse>, Unavailable> {
        Ok(found(self.0.get_account(account_id).await)?.map(|account| keys::GetAccountStateResponse {
            account: names::account(account_id),
            unlimited_credit: account.unlimited_credit,
            credit_limit: account.credit_limit,
        }))
    }

    async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, Unavailable> {
        Ok(found(self.0.get_application(account_id, application_id).await)?.is_some())
    }
}
