//! The keys service as authz and metering read it: one port, [`KeyStateApi`] (the keys
//! service's internal `KeyStateService`), with two adapters — [`KeysClient`] over gRPC in
//! production, and the keys service in process in `tollgate dev` — and the one model-catalog
//! cache both services price calls with, [`catalog::ModelCatalog`].

use async_trait::async_trait;
use tollgate_core::SecretHash;
use tollgate_proto::keys::v1 as keys;

pub mod catalog;
mod grpc;

pub use grpc::{KeysClient, Token};

/// The keys service could not answer (unreachable, timed out, or refused the call).
#[derive(Debug, Clone, thiserror::Error)]
#[error("keys service unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<tonic::Status> for Unavailable {
    fn from(status: tonic::Status) -> Self {
        Unavailable(format!("{:?}: {}", status.code(), status.message()))
    }
}

/// What authz and metering ask the keys service.
#[async_trait]
pub trait KeyStateApi: Send + Sync {
    /// The state of the key a secret hash belongs to; `None` when unknown or deleted.
    async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, Unavailable>;
    /// The states of keys by (account, key id), deleted keys included; keys the account does
    /// not have are left out. At most 1000 at a time.
    async fn key_states(&self, ids: &[(String, String)]) -> Result<Vec<keys::KeyState>, Unavailable>;
    /// The whole model catalog.
    async fn catalog(&self) -> Result<keys::GetModelCatalogResponse, Unavailable>;
    /// What metering needs of an account; `None` when there is no such account.
    async fn account(&self, account_id: &str) -> Result<Option<keys::GetAccountStateResponse>, Unavailable>;
    /// Whether the account has this application.
    async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, Unavailable>;
}
