//! The model catalog as authz prices calls: loaded from the key-state cache (or the keys
//! service), swapped atomically when it changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use prost::Message;
use tollgate_core::Capability;
use tollgate_ports::key_state::KeyStateCache;
use tollgate_proto::keys::v1 as keys;

use crate::source::KeyStateSource;

/// What a model costs, in credits per million tokens.
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
}

/// Every model in the catalog.
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

/// The current catalog and how to reload it: from the shared key-state cache, else from the
/// keys service.
pub struct CatalogHolder {
    current: ArcSwap<Option<Catalog>>,
    shared: Arc<dyn KeyStateCache>,
    source: Arc<dyn KeyStateSource>,
    last_reload: Mutex<Option<Instant>>,
}

/// Fewest time between reloads caused by a model the catalog did not know.
const MISS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

impl CatalogHolder {
    pub fn new(shared: Arc<dyn KeyStateCache>, source: Arc<dyn KeyStateSource>) -> Self {
        Self { current: ArcSwap::from_pointee(None), shared, source, last_reload: Mutex::new(None) }
    }

    /// The catalog, if one was ever loaded.
    pub fn get(&self) -> Guard<Arc<Option<Catalog>>> {
        self.current.load()
    }

    /// Reloads now; keeps the previous catalog if neither place answers.
    pub async fn reload(&self) {
        *self.last_reload.lock().expect("catalog lock poisoned") = Some(Instant::now());
        let cached = match self.shared.get_catalog().await {
            Ok(Some(bytes)) => Catalog::decode(&bytes),
            _ => None,
        };
        let catalog = match cached {
            Some(catalog) => Some(catalog),
            None => match self.source.model_catalog().await {
                Ok(response) => Some(Catalog::from_proto(&response)),
                Err(error) => {
                    tracing::warn!(%error, "cannot load the model catalog; keeping the previous one");
                    None
                }
            },
        };
        if let Some(catalog) = catalog {
            self.current.store(Arc::new(Some(catalog)));
        }
    }

    /// Reloads when a call names a model the catalog does not know (a model added a moment
    /// ago), at most once a second so that unknown models cannot flood the keys service.
    pub async fn reload_for_unknown_model(&self) -> bool {
        let due = self
            .last_reload
            .lock()
            .expect("catalog lock poisoned")
            .is_none_or(|at| at.elapsed() >= MISS_RELOAD_INTERVAL);
        if due {
            self.reload().await;
        }
        due
    }
}
