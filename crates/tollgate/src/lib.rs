//! The `tollgate` binary's library: assembling services over their adapters and serving
//! them. `main.rs` parses flags and calls [`run_dev`], [`run_keys`], [`run_authz`] or
//! [`migrate`]; tests call the same functions on an ephemeral port.

mod authz;
pub mod cli;
pub mod dev;
mod keys;
pub mod server;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate_core::clock::Clock;
use tollgate_state::memory::MemoryState;
use tollgate_state::memory_counters::MemoryCounters;
use tollgate_state::redis::{RedisConfig, RedisState};
use tollgate_state::redis_counters::RedisCounters;
use tollgate_store::keys::SqlKeysStore;
use tollgate_store::{Database, DatabaseConfig};
use tonic::service::RoutesBuilder;

pub use authz::AuthzSettings;
pub use keys::KeysSettings;

use crate::server::Services;

/// The secrets every service shares.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Bearer token of management RPCs (and of authz's calls to the keys service).
    pub admin_token: String,
    /// Keys every stored secret hash; identical on every keys and authz replica.
    pub key_pepper: String,
}

/// `tollgate dev`: every service, one port, SQLite and in-process state.
#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: std::path::PathBuf,
    pub secrets: Secrets,
    pub keys: KeysSettings,
    pub authz: AuthzSettings,
    pub drain: Duration,
    pub clock: Arc<dyn Clock>,
}

/// `tollgate serve keys`: Postgres and Redis.
#[derive(Debug, Clone)]
pub struct KeysServeConfig {
    pub database_url: String,
    pub db_max_connections: u32,
    pub migrate_on_start: bool,
    pub redis: RedisConfig,
    pub secrets: Secrets,
    pub keys: KeysSettings,
    pub drain: Duration,
}

/// `tollgate serve authz`: Redis, and the keys service for cache misses. No database.
#[derive(Debug, Clone)]
pub struct AuthzServeConfig {
    pub redis: RedisConfig,
    /// The keys service, `http://keys:50051`.
    pub keys_url: String,
    pub secrets: Secrets,
    pub authz: AuthzSettings,
    pub drain: Duration,
    pub clock: Arc<dyn Clock>,
}

/// Runs `tollgate dev` on `listener` until `shutdown` is cancelled.
pub async fn run_dev(listener: TcpListener, config: DevConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let url = format!("sqlite://{}", config.data_dir.join("keys.db").display());
    let store = SqlKeysStore::new(Database::connect(&DatabaseConfig::new(url, "keys")).await?);
    store.migrate().await.context("migrating the keys database")?;
    let state = Arc::new(MemoryState::new());

    let mut services = Services { routes: RoutesBuilder::default(), names: Vec::new() };
    let keys = keys::add(
        &mut services,
        Arc::new(store),
        state.clone(),
        state.clone(),
        &config.secrets,
        &config.keys,
        &shutdown,
    )
    .await?;
    let source = Arc::new(authz::InProcessKeys(keys.service()));
    let counters = Arc::new(MemoryCounters::new());
    authz::add(
        &mut services,
        state.clone(),
        state,
        counters,
        source,
        &config.secrets,
        &config.authz,
        config.clock,
        &shutdown,
    )
    .await?;
    server::serve(listener, services, config.drain, shutdown).await
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

    let mut services = Services { routes: RoutesBuilder::default(), names: Vec::new() };
    keys::add(&mut services, Arc::new(store), redis.clone(), redis, &config.secrets, &config.keys, &shutdown).await?;
    server::serve(listener, services, config.drain, shutdown).await
}

/// Runs `tollgate serve authz` on `listener` until `shutdown` is cancelled.
pub async fn run_authz(
    listener: TcpListener,
    config: AuthzServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let redis = Arc::new(RedisState::connect(&config.redis).await.context("connecting to Redis")?);
    let counters = Arc::new(RedisCounters::new(&redis, config.redis.op_timeout));
    let source = Arc::new(
        tollgate_authz_service::source::GrpcKeyStateSource::new(
            &config.keys_url,
            &config.secrets.admin_token,
            Duration::from_secs(2),
        )
        .context("TOLLGATE_KEYS_URL")?,
    );
    let mut services = Services { routes: RoutesBuilder::default(), names: Vec::new() };
    authz::add(
        &mut services,
        redis.clone(),
        redis,
        counters,
        source,
        &config.secrets,
        &config.authz,
        config.clock,
        &shutdown,
    )
    .await?;
    server::serve(listener, services, config.drain, shutdown).await
}

/// Applies every service's migrations to the database.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let store = SqlKeysStore::new(Database::connect(&DatabaseConfig::new(database_url, "keys")).await?);
    store.migrate().await.context("migrating the keys schema")?;
    store.database().close().await;
    Ok(())
}
