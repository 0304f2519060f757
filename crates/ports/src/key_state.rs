//! The key-state cache the keys service fills and authz reads, and the invalidations that
//! tell every authz replica to drop what it cached.

use async_trait::async_trait;
use tokio::sync::broadcast;
use tollgate_core::SecretHash;
use tollgate_core::time::Micros;

use crate::StateError;

/// One snapshot to store under a secret hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStateWrite {
    pub hash: SecretHash,
    /// The key's revision; a stored snapshot with a higher version is kept instead.
    pub version: i64,
    /// The encoded `tollgate.keys.v1.KeyState`.
    pub encoded: Vec<u8>,
    /// When the entry may be dropped (tombstones, rotated-out secrets); `None` keeps it.
    pub expire_at: Option<Micros>,
}

/// Encoded key-state snapshots and the encoded model catalog.
#[async_trait]
pub trait KeyStateCache: Send + Sync {
    /// Stores snapshots, each unless a newer version is already there.
    async fn put_key_states(&self, writes: &[KeyStateWrite]) -> Result<(), StateError>;
    /// The snapshot stored for a secret hash.
    async fn get_key_state(&self, hash: &SecretHash) -> Result<Option<Vec<u8>>, StateError>;
    /// Stores the encoded `GetModelCatalogResponse`.
    async fn put_catalog(&self, encoded: &[u8]) -> Result<(), StateError>;
    /// The stored catalog.
    async fn get_catalog(&self) -> Result<Option<Vec<u8>>, StateError>;
}

/// What cached state to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Entries of these secret hashes.
    Keys(Vec<SecretHash>),
    /// The model catalog.
    Catalog,
    /// Everything: sent to local subscribers when messages may have been missed (a
    /// subscription reconnected or lagged).
    Everything,
}

impl Invalidation {
    /// Wire form: `k:<hex>,<hex>…`, `c` or `*`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Keys(hashes) => {
                let hexes: Vec<String> = hashes.iter().map(SecretHash::to_hex).collect();
                format!("k:{}", hexes.join(","))
            }
            Invalidation::Catalog => "c".into(),
            Invalidation::Everything => "*".into(),
        }
    }

    /// Parses the wire form; anything unreadable is treated as "everything", the safe side.
    pub fn decode(text: &str) -> Self {
        match text {
            "c" => Invalidation::Catalog,
            _ => match text.strip_prefix("k:") {
                Some(list) => list
                    .split(',')
                    .map(SecretHash::from_hex)
                    .collect::<Option<Vec<_>>>()
                    .map(Invalidation::Keys)
                    .unwrap_or(Invalidation::Everything),
                None => Invalidation::Everything,
            },
        }
    }
}

/// Fan-out of invalidations to every process that caches key state.
#[async_trait]
pub trait InvalidationBus: Send + Sync {
    /// Sends to every subscriber, in every process.
    async fn publish(&self, invalidation: &Invalidation) -> Result<(), StateError>;
    /// Receives what anyone publishes from now on. A lagging receiver should drop
    /// everything it cached.
    fn subscribe(&self) -> broadcast::Receiver<Invalidation>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_round_trip_and_garbage_means_everything() {
        let a = SecretHash([1; 32]);
        let b = SecretHash([2; 32]);
        for inv in [Invalidation::Keys(vec![a, b]), Invalidation::Catalog, Invalidation::Everything] {
            assert_eq!(Invalidation::decode(&inv.encode()), inv);
        }
        assert_eq!(Invalidation::decode("k:zz"), Invalidation::Everything);
        assert_eq!(Invalidation::decode("?"), Invalidation::Everything);
    }
}
