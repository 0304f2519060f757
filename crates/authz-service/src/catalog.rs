//! The model catalog as authz prices calls: loaded from the key-state cache (or the keys
//! service), swapped atomically when it changes.

use std::collections::HashMap;

use prost::Message;
use tollgate_core::Capability;
use tollgate_proto::keys::v1 as keys;

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
