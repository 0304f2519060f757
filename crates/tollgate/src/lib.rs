//! The `tollgate` binary's library: assembling services over their adapters and serving
//! them. `main.rs` parses flags and calls [`run_dev`], [`run_keys`] or [`migrate`]; tests
//! call the same functions on an ephemeral port.

pub mod auth;
pub mod cli;
pub mod dev;
pub mod server;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate_core::KeyPepper;
use tollgate_core::limits::SystemCaps;
use tollgate_keys_service::{KeysConfig, KeysServer};
use tollgate_state::redis::{RedisConfig, RedisState};
use tollgate_state::{InvalidationBus, KeyStateCache};
use tollgate_store::keys::{KeysStore, SqlKeysStore};
use tollgate_store::{Database, DatabaseConfig};
use tonic::service::RoutesBuilder;

use crate::auth::AdminAuth;
use crate::server::Services;

/// Settings of the keys service shared by every way of running it.
#[derive(Debug, Clone)]
pub struct KeysSettings {
    pub admin_token: String,
    pub key_pepper: String,
    pub max_rpm: Option<i64>,
    pub max_tpm: Option<i64>,
    pub credits_per_usd: i64,
    pub rotation_grace: Duration,
}

impl KeysSettings {
    fn keys_config(&self) -> anyhow::Result<KeysConfig> {
        Ok(KeysConfig {
            pepper: KeyPepper::new(self.key_pepper.as_bytes().to_vec()).context("TOLLGATE_KEY_PEPPER")?,
            caps: SystemCaps { max_rpm: self.max_rpm, max_tpm: self.max_tpm },
            credits_per_usd: self.credits_per_usd,
            default_rotation_grace: tollgate_core::time::duration_micros(self.rotation_grace),
        })
    }
}

/// `tollgate serve keys`: Postgres and Redis.
#[derive(Debug, Clone)]
pub struct KeysServeConfig {
    pub database_url: String,
    pub db_max_connections: u32,
    pub migrate_on_start: bool,
    pub redis: RedisConfig,
    pub keys: KeysSettings,
    pub drain: Duration,
}

/// `tollgate dev`: every service, one port, SQLite and in-process state.
#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: std::path::PathBuf,
    pub keys: KeysSettings,
    pub drain: Duration,
}

/// Builds the keys service over its adapters and adds it to `routes`.
async fn add_keys(
    routes: &mut RoutesBuilder,
    names: &mut Vec<&'static str>,
    store: Arc<dyn KeysStore>,
    cache: Arc<dyn KeyStateCache>,
    bus: Arc<dyn InvalidationBus>,
    settings: &KeysSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let keys =
        KeysServer::new(store, cache, bus, settings.keys_config()?).await.context("starting the keys service")?;
    keys.add_services(routes, AdminAuth::new(&settings.admin_token));
    names.extend(KeysServer::service_names());
    keys.spawn_background(shutdown.child_token());
    Ok(())
}

/// Runs `tollgate dev` on `listener` until `shutdown` is cancelled.
pub async fn run_dev(listener: TcpListener, config: DevConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let url = format!("sqlite://{}", config.data_dir.join("keys.db").display());
    let store = SqlKeysStore::new(Database::connect(&DatabaseConfig::new(url, "keys")).await?);
    store.migrate().await.context("migrating the keys database")?;
    let state = Arc::new(tollgate_state::memory::MemoryState::new());

    let mut routes = RoutesBuilder::default();
    let mut names = Vec::new();
    add_keys(&mut routes, &mut names, Arc::new(store), state.clone(), state, &config.keys, &shutdown).await?;
    server::serve(listener, Services { routes, names }, config.drain, shutdown).await
}

/// Runs `tollgate serve keys` on `listener` until `shutdown` is cancelled.
pub async fn run_keys(
    listener: TcpListener,
    config: KeysServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut db_config = DatabaseConfig::new(config.database_url.clone(), "keys");
    db_config.max_connections = config.db_max_connections;
    let store = SqlKeysStore::new(Database::connect(&db_config).await.context("connecting to Postgres")?);
    if config.migrate_on_start {
        store.migrate().await.context("migrating the keys schema")?;
    }
    let redis = Arc::new(RedisState::connect(&config.redis).await.context("connecting to Redis")?);

    let mut routes = RoutesBuilder::default();
    let mut names = Vec::new();
    add_keys(&mut routes, &mut names, Arc::new(store), redis.clone(), redis, &config.keys, &shutdown).await?;
    server::serve(listener, Services { routes, names }, config.drain, shutdown).await
}

/// Applies every service's migrations to the database.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let store = SqlKeysStore::new(Database::connect(&DatabaseConfig::new(database_url, "keys")).await?);
    store.migrate().await.context("migrating the keys schema")?;
    store.database().close().await;
    Ok(())
}
