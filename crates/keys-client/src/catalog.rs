//! The model catalog as authz and metering price calls with: read from the shared key-state
//! cache (Redis, where the keys service puts it) or else from the keys service, swapped
//! atomically, read without a lock on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwapOption, Guard};
use prost::Message;
use tollgate_core::Capability;
use tollgate_core::money::TokenPrices;
use tollgate_ports::key_state::KeyStateCache;
use tollgate_proto::keys::v1 as keys;

use crate::{KeyStateApi, Unavailable};

/// What a model does and costs, in credits per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub capability: Capability,
    pub input: i64,
    pub output: i64,
    pub cached_input: i64,
}

impl Price {
    /// The price an estimate is held at: the dearer of input and output, since the split of
    /// an estimate between prompt and completion is not known.
    pub fn estimate_per_mtok(&self) -> i64 {
        self.input.max(self.output)
    }

    pub fn token_prices(&self) -> TokenPrices {
        TokenPrices { input: self.input, output: self.output, cached_input: self.cached_input }
    }
}

/// Every model in the catalog that this version can read: a model whose capability it does
/// not know is left out, so calls to it are denied and their usage is not priced.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    prices: HashMap<String, Price>,
}

impl Catalog {
    pub fn from_proto(response: &keys::GetModelCatalogResponse) -> Self {
        let prices = response
            .models
            .iter()
            .filter_map(|m| {
                let capability = Capability::from_number(m.capability)?;
                let price = Price {
                    capability,
                    input: m.input_price,
                    output: m.output_price,
                    cached_input: m.cached_input_price,
                };
                Some((m.model_id.clone(), price))
            })
            .collect();
        Self { prices }
    }

    /// Decodes the cached form (`GetModelCatalogResponse`).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        keys::GetModelCatalogResponse::decode(bytes).ok().map(|r| Self::from_proto(&r))
    }

    pub fn price(&self, model: &str) -> Option<&Price> {
        self.prices.get(model)
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

/// A catalog and when it was read.
#[derive(Debug)]
pub struct Loaded {
    pub catalog: Catalog,
    pub at: Instant,
}

/// What the catalog says of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelLookup {
    Priced(Price),
    /// The catalog, read just now, does not have it.
    Unknown,
    /// The catalog read a moment ago does not have it, and it is too soon to read it again:
    /// it may be a model added since.
    NotYetKnown,
}

/// Least time between reads caused by models the catalog did not know, so that calls naming
/// unknown models cannot flood the keys service.
pub const RELOAD_GAP: Duration = Duration::from_secs(1);

/// The current catalog and how to read it again.
pub struct ModelCatalog {
    current: ArcSwapOption<Loaded>,
    keys: Arc<dyn KeyStateApi>,
    /// The copy the keys service keeps in the shared cache; `None` reads only the keys service.
    shared: Option<Arc<dyn KeyStateCache>>,
    last_read: Mutex<Option<Instant>>,
}

impl ModelCatalog {
    pub fn new(keys: Arc<dyn KeyStateApi>, shared: Option<Arc<dyn KeyStateCache>>) -> Self {
        Self { current: ArcSwapOption::empty(), keys, shared, last_read: Mutex::new(None) }
    }

    /// The catalog last read, if one was ever read.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// The same, borrowed: Authorize reads it on every call, and a guard does not touch the
    /// shared reference count the way a clone of the `Arc` does.
    pub fn load(&self) -> Guard<Option<Arc<Loaded>>> {
        self.current.load()
    }

    /// Reads the catalog now: the shared copy, else the keys service. When neither answers,
    /// the previous catalog stays.
    pub async fn reload(&self) -> Result<Arc<Loaded>, Unavailable> {
        self.read(true).await
    }

    async fn read(&self, shared_first: bool) -> Result<Arc<Loaded>, Unavailable> {
        *self.last_read.lock().expect("catalog lock") = Some(Instant::now());
        let cached = match &self.shared {
            Some(shared) if shared_first => {
                shared.get_catalog().await.ok().flatten().and_then(|bytes| Catalog::decode(&bytes))
            }
            _ => None,
        };
        let catalog = match cached {
            Some(catalog) => catalog,
            None => Catalog::from_proto(&self.keys.catalog().await?),
        };
        let loaded = Arc::new(Loaded { catalog, at: Instant::now() });
        self.current.store(Some(loaded.clone()));
        Ok(loaded)
    }

    /// Reads the catalog now, keeping the previous one (and saying so) when it cannot.
    pub async fn refresh(&self) {
        if let Err(error) = self.reload().await {
            tracing::warn!(%error, "cannot read the model catalog; keeping the previous one");
        }
    }

    /// Reads again when a call names a model the catalog does not know (a model added a moment
    /// ago), unless it was read less than [`RELOAD_GAP`] ago; whether it read.
    pub async fn reload_for_unknown_model(&self) -> bool {
        if !self.may_read() {
            return false;
        }
        self.refresh().await;
        true
    }

    /// The catalog, read again first when older than `max_age`.
    pub async fn fresh(&self, max_age: Duration) -> Result<Arc<Loaded>, Unavailable> {
        match self.current() {
            Some(loaded) if loaded.at.elapsed() <= max_age => Ok(loaded),
            _ => self.reload().await,
        }
    }

    /// A model's price from a catalog at most `max_age` old, reading it again when it does not
    /// have the model (at most once per [`RELOAD_GAP`]).
    pub async fn lookup(&self, model: &str, max_age: Duration) -> Result<ModelLookup, Unavailable> {
        let current = self.current().filter(|loaded| loaded.at.elapsed() <= max_age);
        if let Some(loaded) = &current {
            if let Some(price) = loaded.catalog.price(model) {
                return Ok(ModelLookup::Priced(*price));
            }
            if !self.may_read() {
                return Ok(ModelLookup::NotYetKnown);
            }
        }
        self.lookup_now(model).await
    }

    /// A model's price from the catalog the keys service has now (not a cached copy, which
    /// could lag behind it), so the verdict is final.
    pub async fn lookup_now(&self, model: &str) -> Result<ModelLookup, Unavailable> {
        Ok(match self.read(false).await?.catalog.price(model) {
            Some(price) => ModelLookup::Priced(*price),
            None => ModelLookup::Unknown,
        })
    }

    fn may_read(&self) -> bool {
        self.last_read.lock().expect("catalog lock").is_none_or(|at| at.elapsed() >= RELOAD_GAP)
    }
}
