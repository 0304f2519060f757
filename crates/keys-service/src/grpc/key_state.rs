use tollgate_core::{SecretHash, Violations, names};
use tollgate_proto::keys::v1 as pb;
use tonic::{Request, Response, Status};

use super::KeysGrpc;
use crate::error::KeysError;
use crate::validate;

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

    async fn lookup_key_states(
        &self,
        request: Request<pb::LookupKeyStatesRequest>,
    ) -> Result<Response<pb::LookupKeyStatesResponse>, Status> {
        let names = &request.get_ref().keys;
        let mut v = Violations::new();
        v.check((1..=1000).contains(&names.len()), "keys", "must name 1 to 1000 keys");
        let mut keys = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            match names::parse_key(name) {
                Some((account_id, key_id)) => keys.push((account_id.to_owned(), key_id.to_owned())),
                None => v.add(format!("keys[{i}]"), "must be accounts/{account}/keys/{key}"),
            }
        }
        v.into_result().map_err(KeysError::InvalidArgument)?;
        let states = self.service.key_states_by_id(&keys).await?;
        Ok(Response::new(pb::LookupKeyStatesResponse { states }))
    }

    async fn get_model_catalog(
        &self,
        _request: Request<pb::GetModelCatalogRequest>,
    ) -> Result<Response<pb::GetModelCatalogResponse>, Status> {
        Ok(Response::new(self.service.model_catalog().await?))
    }

    async fn get_account_state(
        &self,
        request: Request<pb::GetAccountStateRequest>,
    ) -> Result<Response<pb::GetAccountStateResponse>, Status> {
        let mut v = Violations::new();
        let account_id = validate::account_name(&mut v, "account", &request.get_ref().account);
        v.into_result().map_err(KeysError::InvalidArgument)?;
        let account = self.service.get_account(&account_id).await?;
        Ok(Response::new(pb::GetAccountStateResponse {
            account: names::account(&account_id),
            unlimited_credit: account.unlimited_credit,
            credit_limit: account.credit_limit,
        }))
    }

    async fn get_application_state(
        &self,
        request: Request<pb::GetApplicationStateRequest>,
    ) -> Result<Response<pb::GetApplicationStateResponse>, Status> {
        let mut v = Violations::new();
        let name = &request.get_ref().application;
        let (account_id, id) = validate::child_name(&mut v, "application", name, "applications");
        v.into_result().map_err(KeysError::InvalidArgument)?;
        self.service.get_application(&account_id, &id).await?;
        Ok(Response::new(pb::GetApplicationStateResponse { application: names::application(&account_id, &id) }))
    }
}
