//! The keys service over gRPC, as [`KeyDirectory`], and the conversions from its protos that
//! the in-process adapter (`tollgate dev`) shares.

use std::time::Duration;

use async_trait::async_trait;
use tollgate_core::SecretHash;
use tollgate_core::money::{PriceMultiplier, TokenPrices};
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::time::timestamp_micros;
use tonic::Code;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::directory::{DirectoryError, KeyDirectory, KeyFacts, Prices};

/// A key's state as metering reads it. A multiplier that does not parse is the keys service's
/// fault: the call fails rather than price with a guess.
pub fn key_facts(state: keys::KeyState) -> Result<KeyFacts, DirectoryError> {
    let multiplier = PriceMultiplier::parse(&state.price_multiplier)
        .map_err(|e| DirectoryError(format!("key {}: bad multiplier: {e}", state.key_id)))?;
    Ok(KeyFacts {
        multiplier_micros: multiplier.micros(),
        enabled: state.enabled,
        deleted: state.deleted,
        expire_time: state.expire_time.as_ref().and_then(timestamp_micros),
        secret_expire_time: state.secret_expire_time.as_ref().and_then(timestamp_micros),
        quota: state.quota,
        daily_budget: state.daily_budget,
        monthly_budget: state.monthly_budget,
        account_id: state.account_id,
        key_id: state.key_id,
        application_id: state.application_id,
    })
}

/// The catalog's prices.
pub fn prices(catalog: &keys::GetModelCatalogResponse) -> Prices {
    catalog
        .models
        .iter()
        .map(|m| {
            let prices =
                TokenPrices { input: m.input_price, output: m.output_price, cached_input: m.cached_input_price };
            (m.model_id.clone(), prices)
        })
        .collect()
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
    async fn keys_by_id(&self, ids: &[(String, String)]) -> Result<Vec<KeyFacts>, DirectoryError> {
        let names = ids.iter().map(|(account_id, key_id)| tollgate_core::names::key(account_id, key_id)).collect();
        let request = keys::LookupKeyStatesRequest { keys: names };
        match self.key_state.clone().lookup_key_states(request).await {
            Ok(response) => response.into_inner().states.into_iter().map(key_facts).collect(),
            Err(status) => Err(unavailable(status)),
        }
    }

    async fn key_by_secret(&self, hash: &SecretHash) -> Result<Option<KeyFacts>, DirectoryError> {
        let request = keys::GetKeyStateRequest { secret_hash: hash.0.to_vec() };
        match self.key_state.clone().get_key_state(request).await {
            Ok(response) => response.into_inner().state.map(key_facts).transpose(),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(unavailable(status)),
        }
    }

    async fn prices(&self) -> Result<Prices, DirectoryError> {
        let catalog = self.key_state.clone().get_model_catalog(keys::GetModelCatalogRequest {}).await;
        Ok(prices(&catalog.map_err(unavailable)?.into_inner()))
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
