//! Connecting to Postgres or SQLite through one pool type, and running migrations.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, AssertSqlSafe, Executor};

use crate::error::{StoreError, StoreResult};

/// Which database a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// How to reach a database.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://path` (created if missing).
    pub url: String,
    /// Postgres schema the service owns (`keys`, `metering`); tables live there and the
    /// connection's `search_path` points at it. Ignored for SQLite, where each service has
    /// its own file.
    pub schema: &'static str,
    /// Pool size for Postgres; SQLite always uses one connection, which serialises writers
    /// instead of failing them with SQLITE_BUSY.
    pub max_connections: u32,
    /// How long a caller waits for a connection before the store reports it unavailable.
    pub acquire_timeout: Duration,
}

impl DatabaseConfig {
    /// A config with defaults for everything but the URL and schema.
    pub fn new(url: impl Into<String>, schema: &'static str) -> Self {
        Self { url: url.into(), schema, max_connections: 16, acquire_timeout: Duration::from_secs(5) }
    }
}

/// A connection pool and the backend behind it.
#[derive(Debug, Clone)]
pub struct Database {
    pub(crate) pool: AnyPool,
    backend: Backend,
    schema: &'static str,
}

impl Database {
    /// Connects (lazily verifying with one connection) and sets the schema search path.
    pub async fn connect(config: &DatabaseConfig) -> StoreResult<Self> {
        let backend = backend_of(config)?;
        let pool = pool_options(config, backend).connect(&sqlite_create_if_missing(&config.url)).await?;
        Ok(Self { pool, backend, schema: config.schema })
    }

    /// A Postgres pool that connects on first use, so a service starts while the database is
    /// unreachable (its calls fail within the acquire timeout until it is back). SQLite files
    /// are opened at once: see [`Database::connect`].
    pub fn connect_lazy(config: &DatabaseConfig) -> StoreResult<Self> {
        let backend = backend_of(config)?;
        if backend != Backend::Postgres {
            return Err(StoreError::Internal("only a Postgres database connects lazily".into()));
        }
        let pool = pool_options(config, backend).connect_lazy(&config.url)?;
        Ok(Self { pool, backend, schema: config.schema })
    }

    /// The backend behind the pool.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations for this backend. On Postgres the schema is created first, so
    /// sqlx's bookkeeping table lives in the service's own schema.
    pub async fn migrate(&self, postgres: &Migrator, sqlite: &Migrator) -> StoreResult<()> {
        let migrator = match self.backend {
            Backend::Postgres => {
                sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema)))
                    .execute(&self.pool)
                    .await?;
                postgres
            }
            Backend::Sqlite => sqlite,
        };
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
            other => StoreError::Internal(other.to_string()),
        })
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The backend a URL names, after checking the schema name.
fn backend_of(config: &DatabaseConfig) -> StoreResult<Backend> {
    install_default_drivers();
    if !config.schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(StoreError::Internal(format!("invalid schema name {:?}", config.schema)));
    }
    if config.url.starts_with("postgres://") || config.url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else if config.url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else {
        Err(StoreError::Internal("database URL must start with postgres:// or sqlite:".into()))
    }
}

/// The pool settings of a backend: size, acquire timeout and what each new connection runs.
fn pool_options(config: &DatabaseConfig, backend: Backend) -> AnyPoolOptions {
    let schema = config.schema;
    let max_connections = match backend {
        Backend::Postgres => config.max_connections.max(1),
        Backend::Sqlite => 1,
    };
    AnyPoolOptions::new().max_connections(max_connections).acquire_timeout(config.acquire_timeout).after_connect(
        move |conn, _meta| {
            Box::pin(async move {
                match backend {
                    Backend::Postgres => {
                        // `schema` was checked to be lower-case letters and underscores.
                        conn.execute(AssertSqlSafe(format!("SET search_path TO {schema}"))).await?;
                    }
                    Backend::Sqlite => {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                }
                Ok(())
            })
        },
    )
}

/// `sqlite://path` opens read-write but does not create; `mode=rwc` does.
fn sqlite_create_if_missing(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    } else {
        url.to_owned()
    }
}
