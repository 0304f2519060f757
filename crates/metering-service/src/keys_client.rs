//! The keys service over gRPC, as [`KeyDirectory`], and the conversions from its protos that
//! the in-process adapter (`tollgate dev`) shares.

use async_trait::async_trait;
use tollgate_core::SecretHash;
use tollgate_core::money::{PriceMultiplier, TokenPrices};
use tollgate_keys_client::{KeysClient, Unavailable};
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::time::timestamp_micros;

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

/// The keys service over gRPC.
#[derive(Clone, Debug)]
pub struct GrpcKeyDirectory(pub KeysClient);

impl From<Unavailable> for DirectoryError {
    fn from(error: Unavailable) -> Self {
        DirectoryError(error.0)
    }
}

#[async_trait]
impl KeyDirectory for GrpcKeyDirectory {
    async fn keys_by_id(&self, ids: &[(String, String)]) -> Result<Vec<KeyFacts>, DirectoryError> {
        self.0.key_states(ids).await?.into_iter().map(key_facts).collect()
    }

    async fn key_by_secret(&self, hash: &SecretHash) -> Result<Option<KeyFacts>, DirectoryError> {
        self.0.key_state(hash).await?.map(key_facts).transpose()
    }

    async fn prices(&self) -> Result<Prices, DirectoryError> {
        Ok(prices(&self.0.catalog().await?))
    }

    async fn credit_limit(&self, account_id: &str) -> Result<Option<Option<i64>>, DirectoryError> {
        let account = self.0.account(account_id).await?;
        Ok(account.map(|account| (!account.unlimited_credit).then_some(account.credit_limit)))
    }

    async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, DirectoryError> {
        Ok(self.0.application_exists(account_id, application_id).await?)
    }
}
