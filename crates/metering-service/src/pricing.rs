//! What a worker needs to price a call, read from the keys service and cached: a key's
//! application and price multiplier, and the catalog's prices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldhash::quality::RandomState;
use moka::future::Cache;
use tollgate_core::money::TokenPrices;

use crate::directory::{DirectoryError, KeyDirectory, Prices};

/// How long a key's multiplier is reused: a group's new multiplier prices calls within this.
const KEY_TTL: Duration = Duration::from_secs(60);
/// How often the catalog is reloaded even when every model is known.
const CATALOG_TTL: Duration = Duration::from_secs(30);
/// Least time between reloads forced by an unknown model.
const RELOAD_GAP: Duration = Duration::from_secs(1);

/// A key as pricing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedKey {
    pub application_id: String,
    pub multiplier_micros: i64,
}

/// The catalog's prices and when they were loaded (`None`: never).
type LoadedPrices = (Option<Instant>, Arc<Prices>);

/// Prices calls, caching what it reads.
pub struct Pricer {
    directory: Arc<dyn KeyDirectory>,
    /// Hashed with foldhash: a batch looks up each of its keys, and SipHash showed up in
    /// profiles of the worker.
    keys: Cache<(String, String), Arc<PricedKey>, RandomState>,
    catalog: Mutex<LoadedPrices>,
}

impl Pricer {
    pub fn new(directory: Arc<dyn KeyDirectory>) -> Self {
        Self {
            directory,
            keys: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KEY_TTL)
                .build_with_hasher(RandomState::default()),
            catalog: Mutex::new((None, Arc::default())),
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

    /// Reads the catalog from the keys service and keeps it.
    async fn reload(&self) -> Result<Arc<Prices>, DirectoryError> {
        let fresh = Arc::new(self.directory.prices().await?);
        *self.catalog.lock().expect("catalog lock") = (Some(Instant::now()), fresh.clone());
        Ok(fresh)
    }

    /// The catalog's prices, reloaded when older than the catalog's time to live.
    pub async fn catalog(&self) -> Result<Arc<Prices>, DirectoryError> {
        let (loaded, catalog) = self.catalog.lock().expect("catalog lock").clone();
        if loaded.is_some_and(|at| at.elapsed() <= CATALOG_TTL) {
            return Ok(catalog);
        }
        self.reload().await
    }

    /// A model's prices from a catalog read now: for a report that comes back (each does at
    /// most once per claim time), so its verdict is final.
    pub async fn model_now(&self, model: &str) -> Result<ModelLookup, DirectoryError> {
        Ok(match self.reload().await?.get(model) {
            Some(prices) => ModelLookup::Priced(*prices),
            None => ModelLookup::Unknown,
        })
    }

    /// A model's prices, reading the catalog again when it does not have them (at most once
    /// a second, so unknown models cannot flood the keys service).
    pub async fn model(&self, model: &str) -> Result<ModelLookup, DirectoryError> {
        let (loaded, catalog) = self.catalog.lock().expect("catalog lock").clone();
        let stale = loaded.is_none_or(|at| at.elapsed() > CATALOG_TTL);
        let may_reload = loaded.is_none_or(|at| at.elapsed() > RELOAD_GAP);
        if let Some(prices) = catalog.get(model)
            && !stale
        {
            return Ok(ModelLookup::Priced(*prices));
        }
        if !stale && !may_reload {
            return Ok(ModelLookup::NotYetKnown);
        }
        Ok(match self.reload().await?.get(model) {
            Some(prices) => ModelLookup::Priced(*prices),
            None => ModelLookup::Unknown,
        })
    }
}

/// What the catalog says of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelLookup {
    Priced(TokenPrices),
    /// The catalog, read just now, does not have it.
    Unknown,
    /// The catalog read a moment ago does not have it, and it is too soon to read it again:
    /// it may be a model added since.
    NotYetKnown,
}
