//! Key state for the hot path: an in-process cache (moka, bounded, with TTLs) in front of the
//! key-state cache (Redis), in front of the keys service.
//!
//! Concurrent misses for one secret make one lookup. Unknown secrets are cached too, briefly,
//! so a flood of bad keys costs nothing downstream. Invalidations from the keys service drop
//! entries at once; the TTL bounds staleness if one is lost. A lookup that overlapped an
//! invalidation may have read the old state, so its result is kept only very briefly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use prost::Message;
use tollgate_core::SecretHash;
use tollgate_ports::key_state::{Invalidation, KeyStateCache};
use tollgate_proto::keys::v1 as keys;

use crate::compiled::CompiledKey;
use crate::metrics::{AuthzMetrics, CacheOutcome};
use tollgate_keys_client::{KeyStateApi, Unavailable};

/// What a secret resolved to.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<CompiledKey>),
    Unknown,
}

#[derive(Debug, Clone)]
struct Entry {
    lookup: Lookup,
    /// No invalidation arrived while it was looked up.
    settled: bool,
}

/// How long entries live.
#[derive(Debug, Clone, Copy)]
pub struct CacheTtls {
    pub known: Duration,
    pub unknown: Duration,
    /// For entries looked up while an invalidation arrived.
    pub unsettled: Duration,
}

struct EntryExpiry(CacheTtls);

impl Expiry<SecretHash, Entry> for EntryExpiry {
    fn expire_after_create(&self, _key: &SecretHash, entry: &Entry, _created: Instant) -> Option<Duration> {
        Some(match (&entry.lookup, entry.settled) {
            (_, false) => self.0.unsettled,
            (Lookup::Found(_), true) => self.0.known,
            (Lookup::Unknown, true) => self.0.unknown,
        })
    }
}

/// Resolves secret hashes to compiled key state.
pub struct KeyResolver {
    cache: Cache<SecretHash, Entry>,
    shared: Arc<dyn KeyStateCache>,
    keys: Arc<dyn KeyStateApi>,
    /// Bumped by every invalidation.
    generation: AtomicU64,
    metrics: AuthzMetrics,
}

impl KeyResolver {
    pub fn new(
        capacity: u64,
        ttls: CacheTtls,
        shared: Arc<dyn KeyStateCache>,
        keys: Arc<dyn KeyStateApi>,
        metrics: AuthzMetrics,
    ) -> Self {
        let cache = Cache::builder().max_capacity(capacity).expire_after(EntryExpiry(ttls)).build();
        Self { cache, shared, keys, generation: AtomicU64::new(0), metrics }
    }

    /// The compiled state of a secret hash.
    pub async fn resolve(&self, hash: SecretHash) -> Result<Lookup, Unavailable> {
        if let Some(entry) = self.cache.get(&hash).await {
            self.metrics.key_cache(match entry.lookup {
                Lookup::Found(_) => CacheOutcome::Hit,
                Lookup::Unknown => CacheOutcome::NegativeHit,
            });
            return Ok(entry.lookup);
        }
        self.metrics.key_cache(CacheOutcome::Miss);
        let started = self.generation.load(Ordering::Acquire);
        let entry = self
            .cache
            .try_get_with(hash, async {
                let lookup = self.load(&hash).await?;
                Ok::<_, Unavailable>(Entry { lookup, settled: self.generation.load(Ordering::Acquire) == started })
            })
            .await
            .map_err(|error| (*error).clone())?;
        Ok(entry.lookup)
    }

    /// Shared cache first; the keys service when it misses or is unreachable.
    #[tracing::instrument(name = "key-state look-up", level = "debug", skip_all)]
    async fn load(&self, hash: &SecretHash) -> Result<Lookup, Unavailable> {
        match self.shared.get_key_state(hash).await {
            Ok(Some(bytes)) => match keys::KeyState::decode(bytes.as_slice()) {
                Ok(state) => return Ok(compile(&state)),
                Err(error) => tracing::warn!(%error, "undecodable key state in the shared cache"),
            },
            Ok(None) => {}
            // Fail over to the keys service: known keys keep working while Redis is down.
            Err(error) => tracing::debug!(%error, "shared key-state cache unavailable"),
        }
        let found = self.keys.key_state(hash).await;
        self.metrics.keys_lookup(match &found {
            Ok(Some(_)) => "found",
            Ok(None) => "not_found",
            Err(_) => "error",
        });
        Ok(found?.as_ref().map_or(Lookup::Unknown, compile))
    }

    /// Drops what an invalidation names.
    pub async fn invalidate(&self, invalidation: &Invalidation) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        match invalidation {
            Invalidation::Keys(hashes) => {
                for hash in hashes {
                    self.cache.invalidate(hash).await;
                }
            }
            Invalidation::Everything => self.cache.invalidate_all(),
            Invalidation::Catalog => {}
        }
    }
}

fn compile(state: &keys::KeyState) -> Lookup {
    CompiledKey::compile(state).map_or(Lookup::Unknown, |key| Lookup::Found(Arc::new(key)))
}
