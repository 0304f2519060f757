//! The `tollgate` binary's library: assembling services over their adapters and serving
//! them. `main.rs` parses flags and calls [`run_dev`], [`run_keys`], [`run_authz`],
//! [`run_metering`], [`reconcile`] or [`migrate`]; tests call the same functions on an ephemeral port.

mod authz;
pub mod cli;
mod decode_errors;
pub mod dev;
mod in_process_keys;
mod keys;
mod metering;
mod metrics;
mod observe;
pub mod server;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate_core::clock::Clock;
use tollgate_core::time::now_micros;
use tollgate_core::windows::Calendar;
use tollgate_keys_client::KeysClient;
use tollgate_metering_service::MeteringAdapters;
use tollgate_ports::counters::CounterRebuild;
use tollgate_state::memory::MemoryState;
use tollgate_state::memory_counters::MemoryCounters;
use tollgate_state::redis::{RedisConfig, RedisState};
use tollgate_state::redis_counters::RedisCounters;
use tollgate_state::redis_usage_queue::RedisUsageQueue;
use tollgate_store::keys::SqlKeysStore;
use tollgate_store::metering::SqlMeteringStore;
use tollgate_store::{Database, DatabaseConfig};

pub use authz::{AuthzSettings, DEFAULT_HOLD_TTL};
pub use keys::KeysSettings;
pub use metering::MeteringSettings;

use crate::server::Services;

/// Longest authz waits for the keys service on a cache miss: the gateway is waiting on the
/// call, and a key the keys service cannot answer for is UNAVAILABLE, never allowed.
const AUTHZ_KEYS_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest metering waits for the keys service: its callers are workers and RecordUsage's
/// check, which takes the report anyway when the keys service does not answer.
const METERING_KEYS_TIMEOUT: Duration = Duration::from_secs(5);

/// The secrets every service shares.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Bearer token of management RPCs.
    pub admin_token: String,
    /// Keys every stored secret hash; identical on every keys and authz replica.
    pub key_pepper: String,
    /// The internal token authz and metering call the keys service's `KeyStateService` with;
    /// it opens nothing else. Without one they use the admin token.
    pub service_token: Option<String>,
}

impl Secrets {
    /// The token to call the keys service with.
    fn keys_token(&self) -> &str {
        match &self.service_token {
            Some(token) => token,
            None => {
                tracing::warn!(
                    "no TOLLGATE_SERVICE_TOKEN: calling the keys service with the admin token; set a service token so authz and metering do not hold it"
                );
                &self.admin_token
            }
        }
    }
}

/// How long a watched dependency may not answer before readiness says NOT_SERVING, unless
/// configured.
pub const DEFAULT_READINESS_GRACE: Duration = Duration::from_secs(10);

/// `tollgate dev`: every service, one port, SQLite and in-process state.
#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: std::path::PathBuf,
    pub secrets: Secrets,
    pub keys: KeysSettings,
    pub authz: AuthzSettings,
    pub metering: MeteringSettings,
    pub drain: Duration,
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
    /// TLS of the gRPC listener; `None`: plaintext.
    pub tls: Option<server::ServerTls>,
    pub clock: Arc<dyn Clock>,
}

/// `tollgate serve keys`: Postgres and Redis.
#[derive(Debug, Clone)]
pub struct KeysServeConfig {
    pub database_url: String,
    pub db_max_connections: u32,
    /// Longest wait for a database connection: how fast calls fail while it is unreachable.
    pub db_acquire_timeout: Duration,
    pub migrate_on_start: bool,
    pub redis: RedisConfig,
    pub secrets: Secrets,
    pub keys: KeysSettings,
    pub drain: Duration,
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
    /// TLS of the gRPC listener; `None`: plaintext.
    pub tls: Option<server::ServerTls>,
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
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
    /// TLS of the gRPC listener; `None`: plaintext.
    pub tls: Option<server::ServerTls>,
    /// CA certificate (PEM) the keys service's `https://` certificate must chain to, besides the system roots.
    pub keys_ca: Option<std::path::PathBuf>,
    pub clock: Arc<dyn Clock>,
}

/// `tollgate serve metering`: Postgres, Redis, and the keys service for key and price
/// look-ups.
#[derive(Debug, Clone)]
pub struct MeteringServeConfig {
    pub database_url: String,
    pub db_max_connections: u32,
    /// Longest wait for a database connection: how fast calls fail while it is unreachable.
    pub db_acquire_timeout: Duration,
    pub migrate_on_start: bool,
    pub redis: RedisConfig,
    /// The keys service, `http://keys:50051`.
    pub keys_url: String,
    pub secrets: Secrets,
    pub metering: MeteringSettings,
    pub drain: Duration,
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
    /// TLS of the gRPC listener; `None`: plaintext.
    pub tls: Option<server::ServerTls>,
    /// CA certificate (PEM) the keys service's `https://` certificate must chain to, besides the system roots.
    pub keys_ca: Option<std::path::PathBuf>,
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
    // One set of counters: authz takes holds in it, metering settles them, keys reads spend.
    let counters = Arc::new(MemoryCounters::new());

    let mut services = Services::default();
    let adapters = keys::KeysAdapters {
        store: Arc::new(store),
        cache: state.clone(),
        bus: state.clone(),
        counters: counters.clone(),
    };
    let keys = keys::add(
        &mut services,
        adapters,
        &config.secrets,
        &config.keys,
        keys::Startup::Now,
        config.clock.clone(),
        &shutdown,
    )
    .await?;
    let in_process_keys = Arc::new(in_process_keys::InProcessKeys(keys.service()));
    // Only this machine can reach a loopback listener: Authorize may stay open there.
    let on_loopback = listener.local_addr().is_ok_and(|address| address.ip().is_loopback());
    let metering_url = format!("sqlite://{}", config.data_dir.join("metering.db").display());
    let metering_store =
        SqlMeteringStore::new(Database::connect(&DatabaseConfig::new(metering_url, "metering")).await?)
            .with_claim_idle(config.metering.claim_idle);
    metering_store.migrate().await.context("migrating the metering database")?;
    let metering_store = Arc::new(metering_store);
    let adapters = MeteringAdapters {
        store: metering_store.clone(),
        queue: metering_store,
        counters: counters.clone(),
        keys: in_process_keys.clone(),
    };
    let metering =
        metering::add(&mut services, adapters, &config.secrets, &config.metering, config.clock.clone(), &shutdown)?;
    // In-process counters start empty: rebuild spend and balances from the ledger the SQLite
    // file kept, so a restart does not reset quotas.
    metering.reconciler().reconcile().await.map_err(|e| anyhow::anyhow!("rebuilding counters from the ledger: {e}"))?;
    authz::add(
        &mut services,
        state.clone(),
        state,
        counters,
        in_process_keys,
        &config.secrets,
        &config.authz,
        config.clock,
        on_loopback,
        &shutdown,
    )
    .await?;
    server::serve(listener, config.http_listen, config.tls.as_ref(), services, config.drain, shutdown).await
}

/// Runs `tollgate serve keys` on `listener` until `shutdown` is cancelled.
pub async fn run_keys(
    listener: TcpListener,
    config: KeysServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut db_config = DatabaseConfig::new(config.database_url.clone(), "keys");
    db_config.max_connections = config.db_max_connections;
    db_config.acquire_timeout = config.db_acquire_timeout;
    // Connections are made on first use: the service starts while Postgres is unreachable.
    let store = Arc::new(SqlKeysStore::new(Database::connect_lazy(&db_config).context("TOLLGATE_DATABASE_URL")?));
    let redis = Arc::new(RedisState::connect(&config.redis).await.context("TOLLGATE_REDIS_URL")?);

    let mut services = Services::default();
    services.watched.push(postgres_probe(store.database()));
    services.readiness_grace = config.keys.readiness_grace;
    let counters = Arc::new(RedisCounters::new(&redis, config.redis.op_timeout));
    let startup = keys::Startup::InBackground { migrate: config.migrate_on_start.then(|| store.clone()) };
    let adapters = keys::KeysAdapters { store, cache: redis.clone(), bus: redis, counters };
    let clock = Arc::new(tollgate_core::clock::SystemClock);
    keys::add(&mut services, adapters, &config.secrets, &config.keys, startup, clock, &shutdown).await?;
    server::serve(listener, config.http_listen, config.tls.as_ref(), services, config.drain, shutdown).await
}

/// Runs `tollgate serve authz` on `listener` until `shutdown` is cancelled.
pub async fn run_authz(
    listener: TcpListener,
    config: AuthzServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let redis = Arc::new(RedisState::connect(&config.redis).await.context("TOLLGATE_REDIS_URL")?);
    let counters = Arc::new(RedisCounters::new(&redis, config.redis.op_timeout));
    let keys =
        KeysClient::new(&config.keys_url, config.secrets.keys_token(), AUTHZ_KEYS_TIMEOUT, read_ca(&config.keys_ca)?)
            .context("TOLLGATE_KEYS_URL")?;
    let mut services = Services::default();
    services.dependencies.push(redis_probe(&redis));
    authz::add(
        &mut services,
        redis.clone(),
        redis,
        counters,
        Arc::new(keys),
        &config.secrets,
        &config.authz,
        config.clock,
        false,
        &shutdown,
    )
    .await?;
    server::serve(listener, config.http_listen, config.tls.as_ref(), services, config.drain, shutdown).await
}

/// A CA certificate file's PEM, if one is configured.
fn read_ca(path: &Option<std::path::PathBuf>) -> anyhow::Result<Option<Vec<u8>>> {
    path.as_ref()
        .map(|path| std::fs::read(path).with_context(|| format!("TOLLGATE_KEYS_CA_FILE: reading {}", path.display())))
        .transpose()
}

/// Whether Postgres answers a query now.
fn postgres_probe(database: &Database) -> (&'static str, server::Probe) {
    let database = database.clone();
    let probe: server::Probe = Box::new(move || {
        let database = database.clone();
        Box::pin(async move { database.ping().await.is_ok() })
    });
    ("postgres", probe)
}

/// Health waits for Redis to answer once: authz and metering cannot do their work without it.
fn redis_probe(redis: &Arc<RedisState>) -> (&'static str, server::Probe) {
    let redis = redis.clone();
    let probe: server::Probe = Box::new(move || {
        let redis = redis.clone();
        Box::pin(async move { redis.ping().await.is_ok() })
    });
    ("redis", probe)
}

/// Connects the metering store, Redis state and counters of `tollgate serve metering`.
async fn metering_backends(
    config: &MeteringServeConfig,
) -> anyhow::Result<(Arc<SqlMeteringStore>, Arc<RedisState>, Arc<RedisCounters>)> {
    let mut db_config = DatabaseConfig::new(config.database_url.clone(), "metering");
    db_config.max_connections = config.db_max_connections;
    db_config.acquire_timeout = config.db_acquire_timeout;
    // Connections are made on first use: the service starts while Postgres is unreachable.
    let store = SqlMeteringStore::new(Database::connect_lazy(&db_config).context("TOLLGATE_DATABASE_URL")?);
    let redis = Arc::new(RedisState::connect(&config.redis).await.context("TOLLGATE_REDIS_URL")?);
    let counters = Arc::new(RedisCounters::new(&redis, config.redis.op_timeout));
    Ok((Arc::new(store), redis, counters))
}

fn metering_keys(config: &MeteringServeConfig) -> anyhow::Result<Arc<KeysClient>> {
    let keys = KeysClient::new(
        &config.keys_url,
        config.secrets.keys_token(),
        METERING_KEYS_TIMEOUT,
        read_ca(&config.keys_ca)?,
    )
    .context("TOLLGATE_KEYS_URL")?;
    Ok(Arc::new(keys))
}

/// Runs `tollgate serve metering` (RPCs and stream workers) on `listener` until `shutdown`
/// is cancelled.
pub async fn run_metering(
    listener: TcpListener,
    config: MeteringServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (store, redis, counters) = metering_backends(&config).await?;
    let queue = RedisUsageQueue::new(
        &redis,
        config.metering.claim_idle,
        config.redis.op_timeout,
        config.metering.usage_streams,
    )
    .await
    .context("creating the usage stream's consumer group")?;
    let mut services = Services::default();
    services.dependencies.push(redis_probe(&redis));
    let (migrate, database) = (config.migrate_on_start, store.clone());
    let step = move || {
        let store = database.clone();
        async move {
            if migrate {
                store.migrate().await.context("migrating the metering schema")?;
            }
            store.database().ping().await.context("reaching Postgres")
        }
    };
    let started = server::retry_until_done("metering start-up in Postgres", step, shutdown.child_token());
    services.dependencies.push(("postgres", started));
    // The watch the metering service runs rebuilds lost (or never built) counters first.
    let rebuilt = counters.clone();
    let probe: server::Probe = Box::new(move || {
        let counters = rebuilt.clone();
        Box::pin(async move { counters.counters_intact().await.unwrap_or(false) })
    });
    services.dependencies.push(("counters rebuilt from the ledger", probe));
    // Authz answers from its caches while a dependency is away; metering cannot take or apply
    // reports without Postgres and Redis.
    services.watched.push(postgres_probe(store.database()));
    services.watched.push(redis_probe(&redis));
    services.readiness_grace = config.metering.readiness_grace;
    let adapters = MeteringAdapters { store, queue: Arc::new(queue), counters, keys: metering_keys(&config)? };
    metering::add(&mut services, adapters, &config.secrets, &config.metering, config.clock.clone(), &shutdown)?;
    server::serve(listener, config.http_listen, config.tls.as_ref(), services, config.drain, shutdown).await
}

/// What `tollgate metering reconcile` needs: the ledger and the Redis it rebuilds.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub database_url: String,
    pub redis: RedisConfig,
    pub time_zone: String,
}

/// `tollgate metering reconcile`: rebuilds every Redis counter metering maintains from the
/// ledger in Postgres.
pub async fn reconcile(config: ReconcileConfig) -> anyhow::Result<tollgate_metering_service::reconcile::Reconciled> {
    let store = SqlMeteringStore::new(
        Database::connect(&DatabaseConfig::new(config.database_url.clone(), "metering"))
            .await
            .context("connecting to Postgres")?,
    );
    let redis = RedisState::connect(&config.redis).await.context("TOLLGATE_REDIS_URL")?;
    let counters = RedisCounters::new(&redis, config.redis.op_timeout);
    let calendar = Calendar::new(&config.time_zone).context("TOLLGATE_TIME_ZONE")?;
    let done = tollgate_metering_service::reconcile::reconcile(&store, &counters, &calendar, now_micros()).await;
    store.database().close().await;
    done.map_err(|e| anyhow::anyhow!("reconciling: {e}"))
}

/// Applies every service's migrations to the database.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let store = SqlKeysStore::new(Database::connect(&DatabaseConfig::new(database_url, "keys")).await?);
    store.migrate().await.context("migrating the keys schema")?;
    store.database().close().await;
    let store = SqlMeteringStore::new(Database::connect(&DatabaseConfig::new(database_url, "metering")).await?);
    store.migrate().await.context("migrating the metering schema")?;
    store.database().close().await;
    Ok(())
}
