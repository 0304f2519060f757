//! What metering needs to know of keys, accounts and models, which the keys service owns:
//! over gRPC in production, in process in `tollgate dev`.

use std::time::Duration;

use async_trait::async_trait;
use tollgate_core::SecretHash;
use tollgate_proto::keys::v1 as keys;
use tonic::Code;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The keys service could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("keys service unavailable: {0}")]
pub struct DirectoryError(pub String);

/// The keys service, as metering reads it.
#[async_trait]
pub trait KeyDirectory: Send + Sync {
    /// The states of keys by (account, key id), deleted keys included (`deleted` set); keys
    /// the account does not have are left out. At most 1000 at a time.
    async fn keys_by_id(&self, keys: &[(String, String)]) -> Result<Vec<keys::KeyState>, DirectoryError>;
    /// The state of the key a secret belongs to; `None` when unknown or deleted.
    async fn key_by_secret(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, DirectoryError>;
    /// The whole model catalog with prices.
    async fn catalog(&self) -> Result<keys::GetModelCatalogResponse, DirectoryError>;
    /// An account's credit limit: `None` when there is no such account, `Some(None)` for a
    /// postpaid account without a limit.
    async fn credit_limit(&self, account_id: &str) -> Result<Option<Option<i64>>, DirectoryError>;
    /// Whether the account has this application.
    async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, DirectoryError>;
}

/// Adds the bearer token the keys service expects.
#[derive(Clone)]
pub struct Token(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Token>;

/// The keys service over gRPC.
#[derive(Clone)]
pub struct GrpcKeyDirectory {
    key_state: keys::key_state_service_client::KeyStateServiceClient<Authed>,
    accounts: keys::account_service_client::AccountServiceClient<Authed>,
    applications: keys::application_service_client::ApplicationServiceClient<Authed>,
}

impl std::fmt::Debug for GrpcKeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcKeyDirectory")
    }
}

fn unavailable(status: tonic::Status) -> DirectoryError {
    DirectoryError(format!("{:?}: {}", status.code(), status.message()))
}

impl GrpcKeyDirectory {
    /// A client of the keys service at `url` (`http://keys:50051`), connecting lazily, each
    /// call bounded by `timeout`.
    pub fn new(url: &str, token: &str, timeout: Duration) -> Result<Self, DirectoryError> {
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| DirectoryError(format!("keys service URL: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        let header = format!("Bearer {token}").parse().map_err(|_| DirectoryError("the token is not ASCII".into()))?;
        let token = Token(header);
        Ok(Self {
            key_state: keys::key_state_service_client::KeyStateServiceClient::with_interceptor(
                channel.clone(),
                token.clone(),
            ),
            accounts: keys::account_service_client::AccountServiceClient::with_interceptor(
                channel.clone(),
                token.clone(),
            ),
            applications: keys::application_service_client::ApplicationServiceClient::with_interceptor(channel, token),
        })
    }
}

#[async_trait]
impl KeyDirectory for GrpcKeyDirectory {
    async fn keys_by_id(&self, ids: &[(String, String)]) -> Result<Vec<keys::KeyState>, DirectoryError> {
        let names = ids.iter().map(|(account_id, key_id)| tollgate_core::names::key(account_id, key_id)).collect();
        let request = keys::LookupKeyStatesRequest { keys: names };
        match self.key_state.clone().lookup_key_states(request).await {
            Ok(response) => Ok(response.into_inner().states),
            Err(status) => Err(unavailable(status)),
        }
    }

    async fn key_by_secret(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, DirectoryError> {
        let request = keys::GetKeyStateRequest { secret_hash: hash.0.to_vec() };
        match self.key_state.clone().get_key_state(request).await {
            Ok(response) => Ok(response.into_inner().state),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(unavailable(status)),
        }
    }

    async fn catalog(&self) -> Result<keys::GetModelCatalogResponse, DirectoryError> {
        self.key_state
            .clone()
            .get_model_catalog(keys::GetModelCatalogRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(unavailable)
    }

    async fn credit_limit(&self, account_id: &str) -> Result<Option<Option<i64>>, DirectoryError> {
        let request = keys::GetAccountRequest { name: tollgate_core::names::account(account_id) };
        match self.accounts.clone().get_account(request).await {
            Ok(response) => Ok(response
                .into_inner()
                .account
                .map(|account| (!account.unlimited_credit).then_some(account.credit_limit))),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(unavailable(status)),
        }
    }

    async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, DirectoryError> {
        let request =
            keys::GetApplicationRequest { name: tollgate_core::names::application(account_id, application_id) };
        match self.applications.clone().get_application(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(unavailable(status)),
        }
    }
}
