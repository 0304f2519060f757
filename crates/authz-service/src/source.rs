//! Where authz turns when its caches miss: the keys service, over gRPC in production and in
//! process in `tollgate dev`.

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
pub struct SourceError(pub String);

/// The authoritative key state.
#[async_trait]
pub trait KeyStateSource: Send + Sync {
    /// The state of the key a secret hash belongs to; `None` when unknown or deleted.
    async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, SourceError>;
    /// The whole model catalog.
    async fn model_catalog(&self) -> Result<keys::GetModelCatalogResponse, SourceError>;
}

/// Adds the bearer token the keys service expects.
#[derive(Clone)]
struct Token(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The keys service over gRPC.
#[derive(Clone)]
pub struct GrpcKeyStateSource {
    client: keys::key_state_service_client::KeyStateServiceClient<InterceptedService<Channel, Token>>,
}

impl std::fmt::Debug for GrpcKeyStateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcKeyStateSource")
    }
}

impl GrpcKeyStateSource {
    /// A client of the keys service at `url` (`http://keys:50051`), connecting lazily, each
    /// call bounded by `timeout`.
    pub fn new(url: &str, token: &str, timeout: Duration) -> Result<Self, SourceError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| SourceError(format!("keys service URL: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let header = format!("Bearer {token}").parse().map_err(|_| SourceError("the token is not ASCII".into()))?;
        let client = keys::key_state_service_client::KeyStateServiceClient::with_interceptor(
            endpoint.connect_lazy(),
            Token(header),
        );
        Ok(Self { client })
    }
}

#[async_trait]
impl KeyStateSource for GrpcKeyStateSource {
    async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, SourceError> {
        let request = keys::GetKeyStateRequest { secret_hash: hash.0.to_vec() };
        match self.client.clone().get_key_state(request).await {
            Ok(response) => Ok(response.into_inner().state),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(SourceError(format!("{:?}: {}", status.code(), status.message()))),
        }
    }

    async fn model_catalog(&self) -> Result<keys::GetModelCatalogResponse, SourceError> {
        self.client
            .clone()
            .get_model_catalog(keys::GetModelCatalogRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|status| SourceError(format!("{:?}: {}", status.code(), status.message())))
    }
}
