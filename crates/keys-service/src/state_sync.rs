//! Pushes committed changes from the store's outbox to the key-state cache, then tells every
//! authz replica to drop what it cached.
//!
//! Handlers flush right after their commit, so a change is visible to authz by the time the
//! RPC returns; if the cache is down, the change stays in the outbox and a background loop
//! retries every second. Snapshots carry the key's revision and the cache keeps the newest,
//! so concurrent flushers (several replicas) cannot regress a key.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio_util::sync::CancellationToken;
use tollgate_core::clock::Clock;
use tollgate_core::limits::SystemCaps;
use tollgate_ports::StateError;
use tollgate_ports::key_state::{Invalidation, InvalidationBus, KeyStateCache};
use tollgate_store::StoreError;
use tollgate_store::keys::{KeysStore, StateChange};

use crate::metrics::KeysMetrics;
use crate::snapshot;

/// Outbox rows taken per round.
const BATCH: u32 = 500;
/// How often the outbox's depth is sampled for `/metrics`.
const DEPTH_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Secret hashes per invalidation message.
const HASHES_PER_MESSAGE: usize = 1000;

/// Why a flush stopped; the outbox keeps what was not pushed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("key-state cache: {0}")]
    State(#[from] StateError),
}

/// The outbox pusher.
pub struct StateSync {
    store: Arc<dyn KeysStore>,
    cache: Arc<dyn KeyStateCache>,
    bus: Arc<dyn InvalidationBus>,
    caps: SystemCaps,
    clock: Arc<dyn Clock>,
    flushing: tokio::sync::Mutex<()>,
    metrics: KeysMetrics,
}

impl StateSync {
    pub fn new(
        store: Arc<dyn KeysStore>,
        cache: Arc<dyn KeyStateCache>,
        bus: Arc<dyn InvalidationBus>,
        caps: SystemCaps,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { store, cache, bus, caps, clock, flushing: tokio::sync::Mutex::new(()), metrics: KeysMetrics::default() }
    }

    /// The outbox's metrics.
    pub fn metrics(&self) -> &KeysMetrics {
        &self.metrics
    }

    /// The cache snapshots are pushed to.
    pub fn cache(&self) -> &dyn KeyStateCache {
        self.cache.as_ref()
    }

    /// Writes what a look-up read back into the cache (which repairs it after Redis lost its
    /// data) without holding up the answer: while Redis is down each write waits for its
    /// timeout, and authz's fallback look-ups must not.
    pub fn repair_in_background(
        &self,
        writes: Vec<tollgate_ports::key_state::KeyStateWrite>,
        catalog: Option<Vec<u8>>,
    ) {
        let cache = self.cache.clone();
        tokio::spawn(async move {
            if !writes.is_empty()
                && let Err(error) = cache.put_key_states(&writes).await
            {
                tracing::debug!(%error, "key-state read repair skipped");
            }
            if let Some(catalog) = catalog
                && let Err(error) = cache.put_catalog(&catalog).await
            {
                tracing::debug!(%error, "catalog read repair skipped");
            }
        });
    }

    /// Pushes every pending change; returns how many outbox rows were pushed.
    pub async fn flush(&self) -> Result<usize, SyncError> {
        let flushed = self.push_pending().await;
        if flushed.is_err() {
            self.metrics.push_failures.inc();
        }
        flushed
    }

    async fn push_pending(&self) -> Result<usize, SyncError> {
        let _one_at_a_time = self.flushing.lock().await;
        let mut pushed = 0;
        loop {
            let entries = self.store.pending_state_changes(BATCH).await?;
            if entries.is_empty() {
                return Ok(pushed);
            }
            let mut key_ids = BTreeSet::new();
            let mut catalog = false;
            for entry in &entries {
                match &entry.change {
                    StateChange::Key(id) => {
                        key_ids.insert(id.clone());
                    }
                    StateChange::Catalog => catalog = true,
                }
            }
            let key_ids: Vec<String> = key_ids.into_iter().collect();
            let now = self.clock.now_micros();
            let sources = self.store.load_key_states(&key_ids).await?;
            let writes: Vec<_> =
                sources.iter().flat_map(|source| snapshot::key_state_writes(source, &self.caps, now)).collect();
            self.cache.put_key_states(&writes).await?;
            if catalog {
                let models = self.store.all_models().await?;
                self.cache.put_catalog(&snapshot::catalog(&models, now).encode_to_vec()).await?;
            }
            let hashes: Vec<_> = writes.iter().map(|w| w.hash).collect();
            for chunk in hashes.chunks(HASHES_PER_MESSAGE) {
                self.bus.publish(&Invalidation::Keys(chunk.to_vec())).await?;
            }
            if catalog {
                self.bus.publish(&Invalidation::Catalog).await?;
            }
            self.store.ack_state_changes(&entries.iter().map(|e| e.id).collect::<Vec<_>>()).await?;
            self.metrics.pushed.inc_by(entries.len() as u64);
            pushed += entries.len();
        }
    }

    /// Flushes after a handler's commit. A failure is logged, not returned: the change is
    /// committed and the background loop will push it.
    pub async fn flush_after_commit(&self) {
        if let Err(error) = self.flush().await {
            tracing::warn!(%error, "key-state push deferred to the background loop");
        }
    }

    /// Retries pending pushes every `interval` until cancelled.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        let mut failing = false;
        let mut last_sample: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if last_sample.is_none_or(|at| at.elapsed() >= DEPTH_SAMPLE_INTERVAL) {
                last_sample = Some(std::time::Instant::now());
                // Before the flush, so a backlog the push is failing on shows.
                if let Ok(depth) = self.store.state_outbox_depth().await {
                    self.metrics.outbox_depth.set(depth);
                }
            }
            match self.flush().await {
                Ok(pushed) if failing || pushed > 0 => {
                    if failing {
                        tracing::info!(pushed, "key-state push recovered");
                    }
                    failing = false;
                }
                Ok(_) => {}
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "key-state push failing; retrying every {:?}", interval);
                    }
                    failing = true;
                }
            }
        }
    }
}
