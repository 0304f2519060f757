//! In-process shared state for `tollgate dev`: every service runs in one process, so a map
//! and a broadcast channel are the whole backend.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::sync::broadcast;
use tollgate_core::SecretHash;
use tollgate_core::time::now_micros;

use tollgate_ports::StateError;
use tollgate_ports::key_state::{Invalidation, InvalidationBus, KeyStateCache, KeyStateWrite};

#[derive(Debug, Default)]
struct Entries {
    key_states: HashMap<SecretHash, KeyStateWrite>,
    catalog: Option<Vec<u8>>,
}

/// Key-state cache and invalidation bus in process memory.
#[derive(Debug, Clone)]
pub struct MemoryState {
    entries: Arc<RwLock<Entries>>,
    invalidations: broadcast::Sender<Invalidation>,
}

impl Default for MemoryState {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        Self { entries: Arc::default(), invalidations: broadcast::channel(1024).0 }
    }
}

#[async_trait]
impl KeyStateCache for MemoryState {
    async fn put_key_states(&self, writes: &[KeyStateWrite]) -> Result<(), StateError> {
        let mut entries = self.entries.write().expect("state lock poisoned");
        for write in writes {
            let newer_stored = entries.key_states.get(&write.hash).is_some_and(|stored| stored.version > write.version);
            if !newer_stored {
                entries.key_states.insert(write.hash, write.clone());
            }
        }
        Ok(())
    }

    async fn get_key_state(&self, hash: &SecretHash) -> Result<Option<Vec<u8>>, StateError> {
        let entries = self.entries.read().expect("state lock poisoned");
        let live = entries.key_states.get(hash).filter(|w| w.expire_at.is_none_or(|at| at > now_micros()));
        Ok(live.map(|w| w.encoded.clone()))
    }

    async fn put_catalog(&self, encoded: &[u8]) -> Result<(), StateError> {
        self.entries.write().expect("state lock poisoned").catalog = Some(encoded.to_vec());
        Ok(())
    }

    async fn get_catalog(&self) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.entries.read().expect("state lock poisoned").catalog.clone())
    }
}

#[async_trait]
impl InvalidationBus for MemoryState {
    async fn publish(&self, invalidation: &Invalidation) -> Result<(), StateError> {
        // No receivers is fine: nobody has cached anything yet.
        let _ = self.invalidations.send(invalidation.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.invalidations.subscribe()
    }
}
