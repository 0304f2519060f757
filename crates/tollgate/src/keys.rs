//! Assembling the keys service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tollgate_core::KeyPepper;
use tollgate_core::clock::Clock;
use tollgate_core::limits::SystemCaps;
use tollgate_keys_service::{KeysConfig, KeysServer};
use tollgate_ports::counters::SpendCounters;
use tollgate_ports::key_state::{InvalidationBus, KeyStateCache};
use tollgate_store::keys::{KeysStore, SqlKeysStore};

use crate::Secrets;
use crate::server::Services;

/// Settings of the keys service.
#[derive(Debug, Clone)]
pub struct KeysSettings {
    pub max_rpm: Option<i64>,
    pub max_tpm: Option<i64>,
    pub credits_per_usd: i64,
    pub rotation_grace: Duration,
    /// How long Postgres may not answer before readiness says NOT_SERVING (`serve` only).
    pub readiness_grace: Duration,
}

impl Default for KeysSettings {
    fn default() -> Self {
        Self {
            max_rpm: None,
            max_tpm: None,
            credits_per_usd: tollgate_core::money::DEFAULT_CREDITS_PER_USD,
            rotation_grace: Duration::from_secs(24 * 3600),
            readiness_grace: crate::DEFAULT_READINESS_GRACE,
        }
    }
}

/// The adapters the keys service runs over.
pub(crate) struct KeysAdapters {
    pub store: Arc<dyn KeysStore>,
    pub cache: Arc<dyn KeyStateCache>,
    pub bus: Arc<dyn InvalidationBus>,
    /// Read for each key's spend.
    pub counters: Arc<dyn SpendCounters>,
}

/// When the keys service does its start-up work in the database.
pub(crate) enum Startup {
    /// Before serving (`dev`: its SQLite file is right there).
    Now,
    /// While serving, retried until the database answers, after migrating it if `migrate`;
    /// health says NOT_SERVING until then.
    InBackground { migrate: Option<Arc<SqlKeysStore>> },
}

/// Builds the keys service over its adapters and adds it to `services`.
pub(crate) async fn add(
    services: &mut Services,
    adapters: KeysAdapters,
    secrets: &Secrets,
    settings: &KeysSettings,
    startup: Startup,
    clock: Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> anyhow::Result<KeysServer> {
    let config = KeysConfig {
        pepper: KeyPepper::new(secrets.key_pepper.as_bytes().to_vec()).context("TOLLGATE_KEY_PEPPER")?,
        caps: SystemCaps { max_rpm: settings.max_rpm, max_tpm: settings.max_tpm },
        credits_per_usd: settings.credits_per_usd,
        default_rotation_grace: tollgate_core::time::duration_micros(settings.rotation_grace),
        clock,
    };
    let keys = KeysServer::build(adapters.store, adapters.cache, adapters.bus, adapters.counters, config);
    match startup {
        Startup::Now => {
            keys.prepare().await.context("starting the keys service")?;
            keys.spawn_background(shutdown.child_token());
        }
        Startup::InBackground { migrate } => {
            let (server, sync_shutdown) = (keys.clone(), shutdown.child_token());
            let step = move || {
                let (server, migrate, sync_shutdown) = (server.clone(), migrate.clone(), sync_shutdown.clone());
                async move {
                    if let Some(store) = migrate {
                        store.migrate().await.context("migrating the keys schema")?;
                    }
                    server.prepare().await.context("starting the keys service")?;
                    // The outbox exists now: its pusher can start.
                    server.spawn_background(sync_shutdown);
                    Ok(())
                }
            };
            let probe = crate::server::retry_until_done("keys start-up in Postgres", step, shutdown.child_token());
            services.dependencies.push(("postgres", probe));
        }
    }
    let admin = tollgate_auth::BearerAuth::new(&secrets.admin_token);
    let service = secrets.service_token.as_deref().map(tollgate_auth::BearerAuth::new);
    let internal = tollgate_auth::AnyBearer::new([admin.clone()].into_iter().chain(service));
    keys.add_services(&mut services.routes, admin, internal);
    services.names.extend(KeysServer::service_names());
    keys.register_metrics(&mut services.registry);
    Ok(keys)
}
