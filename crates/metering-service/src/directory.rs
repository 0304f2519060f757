//! What metering needs to know of keys, accounts and models, which the keys service owns: the
//! port, in metering's own terms. Adapters: [`crate::keys_client`] (gRPC, production) and the
//! keys service in process (`tollgate dev`).

use std::collections::HashMap;

use async_trait::async_trait;
use tollgate_core::SecretHash;
use tollgate_core::money::TokenPrices;
use tollgate_core::time::Micros;

/// The keys service could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("keys service unavailable: {0}")]
pub struct DirectoryError(pub String);

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
}

/// The model catalog's prices by model id.
pub type Prices = HashMap<String, TokenPrices>;

/// The keys service, as metering reads it.
#[async_trait]
pub trait KeyDirectory: Send + Sync {
    /// Keys by (account, key id), deleted keys included (`deleted` set); keys the account does
    /// not have are left out. At most 1000 at a time.
    async fn keys_by_id(&self, keys: &[(String, String)]) -> Result<Vec<KeyFacts>, DirectoryError>;
    /// The key a secret belongs to; `None` when unknown or deleted.
    async fn key_by_secret(&self, hash: &SecretHash) -> Result<Option<KeyFacts>, DirectoryError>;
    /// The whole model catalog's prices.
    async fn prices(&self) -> Result<Prices, DirectoryError>;
    /// An account's credit limit: `None` when there is no such account, `Some(None)` for a
    /// postpaid account without a limit.
    async fn credit_limit(&self, account_id: &str) -> Result<Option<Option<i64>>, DirectoryError>;
    /// Whether the account has this application.
    async fn application_exists(&self, account_id: &str, application_id: &str) -> Result<bool, DirectoryError>;
}
