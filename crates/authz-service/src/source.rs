//! Where authz turns when its caches miss: the keys service, over gRPC in production and in
//! process in `tollgate dev`.

use async_trait::async_trait;
use tollgate_core::SecretHash;
use tollgate_keys_client::{KeysClient, Unavailable};
use tollgate_proto::keys::v1 as keys;

/// The keys service could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("keys service unavailable: {0}")]
pub struct SourceError(pub String);

/// The authoritative key state.
#[async_trait]
pub trait KeyStateSource: Send + Sync {
    /// The state of the key a secret hash belongs to; `None` when unknown or deleted.
    async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, SourceError>;
    /// The whole model catalog.
    async fn model_catalog(&self) -> Result<keys::GetModelCatalogResponse, SourceError>;
}

/// The keys service over gRPC.
#[derive(Clone, Debug)]
pub struct GrpcKeyStateSource(pub KeysClient);

impl From<Unavailable> for SourceError {
    fn from(error: Unavailable) -> Self {
        SourceError(error.0)
    }
}

#[async_trait]
impl KeyStateSource for GrpcKeyStateSource {
    async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, SourceError> {
        Ok(self.0.key_state(hash).await?)
    }

    async fn model_catalog(&self) -> Result<keys::GetModelCatalogResponse, SourceError> {
        Ok(self.0.catalog().await?)
    }
}
