//! What metering needs to know of keys and accounts, which the keys service owns, in
//! metering's own terms, read through the one keys-service port (gRPC in production, in
//! process in `tollgate dev`).

use std::sync::Arc;

use tollgate_core::SecretHash;
use tollgate_core::money::PriceMultiplier;
use tollgate_core::time::Micros;
use tollgate_keys_client::{KeyStateApi, Unavailable};
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::time::timestamp_micros;

/// The keys service could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("keys service unavailable: {0}")]
pub struct DirectoryError(pub String);

impl From<Unavailable> for DirectoryError {
    fn from(error: Unavailable) -> Self {
        DirectoryError(error.0)
    }
}

/// A key as metering reads it: what prices its calls and what its holder may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    pub account_id: String,
    pub key_id: String,
    pub application_id: String,
    /// The price multiplier of the key's group, in millionths.
    pub multiplier_micros: i64,
    pub enabled: bool,
    pub deleted: bool,
    pub expire_time: Option<Micros>,
    /// When the secret looked up by (rotated out) stops working.
    pub secret_expire_time: Option<Micros>,
    pub quota: Option<i64>,
    pub daily_budget: Option<i64>,
    pub monthly_budget: Option<i64>,
    /// How far below zero its account's balance may go; `None`: without bound (postpaid).
    pub account_credit_limit: Option<i64>,
    /// Models it may call; empty with `any_model`.
    pub allowed_models: Vec<String>,
    pub any_model: bool,
}

/// A key's state as metering reads it. A multiplier that does not parse is the keys service's
/// fault: the call fails rather than price with a guess.
fn key_facts(state: keys::KeyState) -> Result<KeyFacts, DirectoryError> {
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
        account_credit_limit: state.account_credit_limit,
        any_model: state.any_model,
        allowed_models: state.allowed_models,
        account_id: state.account_id,
        key_id: state.key_id,
        application_id: state.application_id,
    })
}

/// The keys service, as metering reads it.
#[derive(Clone)]
pub struct KeyDirectory(Arc<dyn KeyStateApi>);

impl KeyDirectory {
    pub fn new(keys: Arc<dyn KeyStateApi>) -> Self {
        Self(keys)
    }

    /// Keys by (account, key id), deleted keys included (`deleted` set); keys the account does
    /// not have are left out. At most 1000 at a time.
    pub async fn keys_by_id(&self, ids: &[(String, String)]) -> Result<Vec<KeyFacts>, DirectoryError> {
        self.0.key_states(ids).await?.into_iter().map(key_facts).collect()
    }

    /// The key a secret belongs to; `None` when unknown or deleted.
    pub async fn key_by_secret(&self, hash: &SecretHash) -> Result<Option<KeyFacts>, DirectoryError> {
        self.0.key_state(hash).await?.map(key_facts).transpose()
    }

    /// An account's credit limit: `None` when there is no such account, `Some(None)` for a
    /// postpaid account without a limit.
    pub async fn credit_limit(&self, account_id: &str) -> Result<Option<Option<i64>>, DirectoryError> {
        let account = self.0.account(account_id).await?;
        Ok(account.map(|account| (!account.unlimited_credit).then_some(account.credit_limit)))
    }

    /// Whether the account has this application.
    pub async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, DirectoryError> {
        Ok(self.0.application_exists(account_id, application_id).await?)
    }
}
