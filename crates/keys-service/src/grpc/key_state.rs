use tollgate_core::{SecretHash, names};
use tollgate_proto::keys::v1 as pb;
use tonic::{Request, Response, Status};

use super::KeysGrpc;
use crate::error::KeysError;

#[tonic::async_trait]
impl pb::key_state_service_server::KeyStateService for KeysGrpc {
    async fn get_key_state(
        &self,
        request: Request<pb::GetKeyStateRequest>,
    ) -> Result<Response<pb::GetKeyStateResponse>, Status> {
        let hash = SecretHash::from_slice(&request.get_ref().secret_hash)
            .ok_or_else(|| KeysError::invalid("secret_hash", "must be 32 bytes"))?;
        let state = self.service.key_state(&hash).await?;
        Ok(Response::new(pb::GetKeyStateResponse { state: Some(state) }))
    }

    async fn lookup_key_state(
        &self,
        request: Request<pb::LookupKeyStateRequest>,
    ) -> Result<Response<pb::LookupKeyStateResponse>, Status> {
        let (account_id, key_id) = names::parse_key(&request.get_ref().key)
            .ok_or_else(|| KeysError::invalid("key", "must be accounts/{account}/keys/{key}"))?;
        let state = self.service.key_state_by_id(account_id, key_id).await?;
        Ok(Response::new(pb::LookupKeyStateResponse { state: Some(state) }))
    }

    async fn get_model_catalog(
        &self,
        _request: Request<pb::GetModelCatalogRequest>,
    ) -> Result<Response<pb::GetModelCatalogResponse>, Status> {
        Ok(Response::new(self.service.model_catalog().await?))
    }
}
