//! The one client of the keys service that authz and metering use in production: lazily
//! connected (a service starts while the keys service is away), every call bounded by a
//! timeout, authenticated with a bearer token. `tollgate dev` calls the keys service in
//! process instead.

use std::time::Duration;

use tollgate_core::{SecretHash, names};
use tollgate_proto::keys::v1 as keys;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The keys service could not answer (unreachable, timed out, or refused the call).
#[derive(Debug, Clone, thiserror::Error)]
#[error("keys service unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<tonic::Status> for Unavailable {
    fn from(status: tonic::Status) -> Self {
        Unavailable(format!("{:?}: {}", status.code(), status.message()))
    }
}

/// Adds the bearer token the keys service expects.
#[derive(Clone)]
pub struct Token(MetadataValue<Ascii>);

impl Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Token>;

/// A client of the keys service's internal `KeyStateService`, the only one the service
/// token opens.
#[derive(Clone)]
pub struct KeysClient {
    key_state: keys::key_state_service_client::KeyStateServiceClient<Authed>,
}

impl std::fmt::Debug for KeysClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeysClient")
    }
}

impl KeysClient {
    /// A client of the keys service at `url` (`http://keys:50051`, or `https://…` whose
    /// certificate chains to the system roots or to `ca`, PEM), connecting lazily, each call
    /// bounded by `timeout`.
    pub fn new(url: &str, token: &str, timeout: Duration, ca: Option<Vec<u8>>) -> Result<Self, Unavailable> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Unavailable(format!("keys service URL: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| Unavailable(format!("keys service TLS: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        let header = format!("Bearer {token}").parse().map_err(|_| Unavailable("the token is not ASCII".into()))?;
        Ok(Self {
            key_state: keys::key_state_service_client::KeyStateServiceClient::with_interceptor(channel, Token(header)),
        })
    }

    /// The state of the key a secret hash belongs to; `None` when unknown or deleted.
    pub async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, Unavailable> {
        let request = keys::GetKeyStateRequest { secret_hash: hash.0.to_vec() };
        match self.key_state.clone().get_key_state(request).await {
            Ok(response) => Ok(response.into_inner().state),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    /// The states of keys by (account, key id), deleted keys included; keys the account does
    /// not have are left out. At most 1000 at a time.
    pub async fn key_states(&self, ids: &[(String, String)]) -> Result<Vec<keys::KeyState>, Unavailable> {
        let request = keys::LookupKeyStatesRequest {
            keys: ids.iter().map(|(account_id, key_id)| names::key(account_id, key_id)).collect(),
        };
        Ok(self.key_state.clone().lookup_key_states(request).await?.into_inner().states)
    }

    /// The whole model catalog.
    pub async fn catalog(&self) -> Result<keys::GetModelCatalogResponse, Unavailable> {
        Ok(self.key_state.clone().get_model_catalog(keys::GetModelCatalogRequest {}).await?.into_inner())
    }

    /// What metering needs of an account; `None` when there is no such account.
    pub async fn account(&self, account_id: &str) -> Result<Option<keys::GetAccountStateResponse>, Unavailable> {
        let request = keys::GetAccountStateRequest { account: names::account(account_id) };
        match self.key_state.clone().get_account_state(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    /// Whether the account has this application.
    pub async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, Unavailable> {
        let request = keys::GetApplicationStateRequest { application: names::application(account_id, application_id) };
        match self.key_state.clone().get_application_state(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status.into()),
        }
    }
}
