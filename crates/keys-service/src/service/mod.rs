//! The keys service's logic: what each RPC does once its input is checked. Works on domain
//! types; the gRPC layer (`crate::grpc`) converts from and to protos.

mod accounts;
mod applications;
mod audit;
mod catalog;
mod key_state;
mod keys;

use std::sync::Arc;

use tollgate_core::KeyPepper;
use tollgate_core::clock::Clock;
use tollgate_core::limits::SystemCaps;
use tollgate_core::time::Micros;
use tollgate_ports::counters::SpendCounters;
use tollgate_store::keys::{AuditEntry, KeysStore};

pub use accounts::{AccountPatch, CreatedAccount};
pub use applications::ApplicationPatch;
pub use catalog::{GroupPatch, ModelPatch};
pub use keys::{CreatedKeys, KeyDraft, KeyPatch, KeyView, MAX_ROTATION_GRACE};

use crate::error::{KeysError, KeysResult};
use crate::sealing::Sealer;
use crate::state_sync::StateSync;

/// Attempts at a read-modify-write before reporting a concurrent modification.
const UPDATE_ATTEMPTS: usize = 5;

/// Settings of the keys service.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Keys every secret hash.
    pub pepper: KeyPepper,
    /// Highest RPM/TPM any key or group default may have.
    pub caps: SystemCaps,
    /// Credits per US dollar, for the USD prices the catalog shows.
    pub credits_per_usd: i64,
    /// How long a rotated-out secret keeps working when RotateKey gives no grace period.
    pub default_rotation_grace: Micros,
    /// What time it is, for timestamps, expiry and the snapshots' validity.
    pub clock: Arc<dyn Clock>,
}

/// Who made a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// The keys service.
pub struct KeysService {
    store: Arc<dyn KeysStore>,
    /// The counters metering keeps, read for each key's spend.
    counters: Arc<dyn SpendCounters>,
    sync: Arc<StateSync>,
    config: KeysConfig,
    sealer: Sealer,
}

impl KeysService {
    pub fn new(
        store: Arc<dyn KeysStore>,
        sync: Arc<StateSync>,
        counters: Arc<dyn SpendCounters>,
        config: KeysConfig,
    ) -> Self {
        let sealer = Sealer::new(&config.pepper);
        Self { store, counters, sync, config, sealer }
    }

    pub fn config(&self) -> &KeysConfig {
        &self.config
    }

    /// Now, by the configured clock.
    pub fn now(&self) -> Micros {
        self.config.clock.now_micros()
    }

    fn audit(
        &self,
        actor: &Actor,
        action: &str,
        resource: String,
        account_id: Option<&str>,
        changed_fields: Vec<String>,
        time: Micros,
    ) -> AuditEntry {
        AuditEntry {
            actor: actor.0.clone(),
            action: action.to_owned(),
            resource,
            account_id: account_id.map(str::to_owned),
            changed_fields,
            time,
        }
    }

    /// Retries a read-modify-write while the row changes underneath it (the store reports
    /// a stale revision, which maps to `Aborted`).
    async fn with_retries<T, F, Fut>(mut attempt: F) -> KeysResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = KeysResult<T>>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            match attempt().await {
                Err(KeysError::Aborted) => continue,
                other => return other,
            }
        }
        Err(KeysError::Aborted)
    }
}
