//! The keys service over gRPC: lazily connected (a service starts while the keys service is
//! away), every call bounded by a timeout, authenticated with the service token, and carrying
//! the caller's trace.

use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tollgate_core::{SecretHash, names};
use tollgate_proto::keys::v1 as keys;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{KeyStateApi, Unavailable};

/// Adds the bearer token the keys service expects, and the caller's trace (`traceparent`)
/// so that a trace continues into the keys service.
#[derive(Clone)]
pub struct Token(MetadataValue<Ascii>);

impl Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        }
        Ok(request)
    }
}

/// Writes `traceparent` and `tracestate` into a request's metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (key.parse::<tonic::metadata::AsciiMetadataKey>(), value.parse()) {
            self.0.insert(key, value);
        }
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
}

/// How long to wait before the one retry of a call the transport failed.
const RETRY_DELAY: Duration = Duration::from_millis(25);

/// Runs `call`, and once more when it did not reach the keys service (`UNAVAILABLE`: a
/// connection a replica's restart closed). Every call here is a read; a time-out is not
/// retried, so a keys service that hangs costs one time-out, not two.
async fn retried<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    match call().await {
        Err(status) if status.code() == Code::Unavailable => {
            tokio::time::sleep(RETRY_DELAY).await;
            call().await
        }
        answer => answer,
    }
}

#[async_trait]
impl KeyStateApi for KeysClient {
    async fn key_state(&self, hash: &SecretHash) -> Result<Option<keys::KeyState>, Unavailable> {
        let request = keys::GetKeyStateRequest { secret_hash: hash.0.to_vec() };
        match retried(|| {
            let (mut client, request) = (self.key_state.clone(), request.clone());
            async move { client.get_key_state(request).await }
        })
        .await
        {
            Ok(response) => Ok(response.into_inner().state),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    async fn key_states(&self, ids: &[(String, String)]) -> Result<Vec<keys::KeyState>, Unavailable> {
        let request = keys::LookupKeyStatesRequest {
            keys: ids.iter().map(|(account_id, key_id)| names::key(account_id, key_id)).collect(),
        };
        Ok(retried(|| {
            let (mut client, request) = (self.key_state.clone(), request.clone());
            async move { client.lookup_key_states(request).await }
        })
        .await?
        .into_inner()
        .states)
    }

    async fn catalog(&self) -> Result<keys::GetModelCatalogResponse, Unavailable> {
        Ok(retried(|| {
            let mut client = self.key_state.clone();
            async move { client.get_model_catalog(keys::GetModelCatalogRequest {}).await }
        })
        .await?
        .into_inner())
    }

    async fn account(&self, account_id: &str) -> Result<Option<keys::GetAccountStateResponse>, Unavailable> {
        let request = keys::GetAccountStateRequest { account: names::account(account_id) };
        match retried(|| {
            let (mut client, request) = (self.key_state.clone(), request.clone());
            async move { client.get_account_state(request).await }
        })
        .await
        {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, Unavailable> {
        let request = keys::GetApplicationStateRequest { application: names::application(account_id, application_id) };
        match retried(|| {
            let (mut client, request) = (self.key_state.clone(), request.clone());
            async move { client.get_application_state(request).await }
        })
        .await
        {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status.into()),
        }
    }
}
