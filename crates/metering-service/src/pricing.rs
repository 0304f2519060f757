//! What a worker needs to price a call, read from the keys service and cached: a key's
//! application and price multiplier (here), and the catalog's prices (the one catalog cache,
//! [`ModelCatalog`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::quality::RandomState;
use moka::future::Cache;
use tollgate_keys_client::catalog::{Loaded, ModelCatalog};

pub use tollgate_keys_client::catalog::ModelLookup;

use crate::directory::{DirectoryError, KeyDirectory};

/// How long a key's multiplier is reused: a group's new multiplier prices calls within this.
const KEY_TTL: Duration = Duration::from_secs(60);
/// How old a catalog prices calls: metering hears no invalidations, so it reads it again.
const CATALOG_TTL: Duration = Duration::from_secs(30);

/// A key as pricing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedKey {
    pub application_id: String,
    pub multiplier_micros: i64,
}

/// Prices calls, caching what it reads.
pub struct Pricer {
    directory: KeyDirectory,
    /// Hashed with foldhash: a batch looks up each of its keys, and SipHash showed up in
    /// profiles of the worker.
    keys: Cache<(String, String), Arc<PricedKey>, RandomState>,
    catalog: ModelCatalog,
}

impl Pricer {
    pub fn new(directory: KeyDirectory, catalog: ModelCatalog) -> Self {
        Self {
            directory,
            keys: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KEY_TTL)
                .build_with_hasher(RandomState::default()),
            catalog,
        }
    }

    /// Reads keys from the keys service, one call per 1000, and caches them.
    async fn load(
        &self,
        ids: &[(String, String)],
    ) -> Result<HashMap<(String, String), Arc<PricedKey>>, DirectoryError> {
        let mut loaded = HashMap::new();
        for chunk in ids.chunks(1000) {
            for key in self.directory.keys_by_id(chunk).await? {
                let priced = Arc::new(PricedKey {
                    application_id: key.application_id,
                    multiplier_micros: key.multiplier_micros,
                });
                let id = (key.account_id, key.key_id);
                self.keys.insert(id.clone(), priced.clone()).await;
                loaded.insert(id, priced);
            }
        }
        Ok(loaded)
    }

    /// Each key's pricing facts (`None` where the account has no such key), reading those not
    /// cached in one call of the keys service per 1000.
    pub async fn keys(&self, ids: &[(String, String)]) -> Result<Vec<Option<Arc<PricedKey>>>, DirectoryError> {
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            let cached = self.keys.get(id).await;
            if cached.is_none() {
                missing.push(id.clone());
            }
            found.push(cached);
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let loaded = self.load(&missing).await?;
        for (id, slot) in ids.iter().zip(found.iter_mut()) {
            if slot.is_none() {
                *slot = loaded.get(id).cloned();
            }
        }
        Ok(found)
    }

    /// The catalog, read again when older than its time to live.
    pub async fn catalog(&self) -> Result<Arc<Loaded>, DirectoryError> {
        Ok(self.catalog.fresh(CATALOG_TTL).await?)
    }

    /// A model's prices from a catalog read now: for a report that comes back (each does at
    /// most once per claim time), so its verdict is final.
    pub async fn model_now(&self, model: &str) -> Result<ModelLookup, DirectoryError> {
        Ok(self.catalog.lookup_now(model).await?)
    }

    /// A model's prices, reading the catalog again when it does not have them (at most once
    /// a second, so unknown models cannot flood the keys service).
    pub async fn model(&self, model: &str) -> Result<ModelLookup, DirectoryError> {
        Ok(self.catalog.lookup(model, CATALOG_TTL).await?)
    }
}
