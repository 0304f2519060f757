//! Redis shared state for production: snapshots in hashes, the catalog in a string,
//! invalidations on a Pub/Sub channel.
//!
//! Layout under a configurable prefix `P`:
//! - `P:ks:<secret hash hex>`: hash `{v: version, s: encoded KeyState}`;
//! - `P:catalog`: encoded `GetModelCatalogResponse`;
//! - channel `P:invalidations`: [`Invalidation::encode`] messages.
//!
//! Each operation is single-key, so the layout works unchanged on Redis Cluster.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, ErrorKind, RedisError, Script, ServerErrorKind};
use tokio::sync::broadcast;
use tollgate_core::SecretHash;

use crate::{Invalidation, InvalidationBus, KeyStateCache, KeyStateWrite, StateError};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` or `rediss://…`.
    pub url: String,
    /// Prefix of every key and channel, so several deployments (or tests) share a server.
    pub prefix: String,
    /// Upper bound of each operation; past it the call fails with [`StateError::Timeout`].
    pub op_timeout: Duration,
}

/// Key-state cache and invalidation bus on Redis.
#[derive(Clone)]
pub struct RedisState {
    client: Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    op_timeout: Duration,
    put_script: Arc<Script>,
    invalidations: broadcast::Sender<Invalidation>,
    subscriber_started: Arc<OnceLock<()>>,
    /// Dropped with the last clone; the subscriber task watches it to know when to stop.
    alive: Arc<()>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(error: RedisError) -> StateError {
    StateError::Unavailable(error.to_string())
}

/// A self-healing connection whose replies may take up to `response_timeout`. It connects on
/// first use, so a service starts while Redis is unreachable and its calls fail (each within
/// its bound) until Redis is there.
fn connection_manager(
    client: &Client,
    op_timeout: Duration,
    response_timeout: Duration,
) -> Result<ConnectionManager, StateError> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(op_timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    client.get_connection_manager_lazy(manager_config).map_err(unavailable)
}

impl RedisState {
    /// Sets up the connection, which is made on first use and re-established after failures;
    /// fails only for a URL that is not one. [`RedisState::ping`] says whether Redis answers.
    pub async fn connect(config: &RedisConfig) -> Result<Self, StateError> {
        let client = Client::open(config.url.as_str()).map_err(unavailable)?;
        let conn = connection_manager(&client, config.op_timeout, config.op_timeout)?;
        Ok(Self {
            client,
            conn,
            prefix: config.prefix.clone().into(),
            op_timeout: config.op_timeout,
            put_script: Arc::new(Script::new(include_str!("lua/put_key_state.lua"))),
            invalidations: broadcast::channel(1024).0,
            subscriber_started: Arc::default(),
            alive: Arc::new(()),
        })
    }

    /// The multiplexed connection, for other adapters on the same server.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own for commands that wait on the server (`XREADGROUP … BLOCK`)
    /// up to `longest_wait`: Redis answers a connection's commands in order, so on the shared
    /// connection a waiting read would hold up every command sent after it.
    pub async fn blocking_connection(&self, longest_wait: Duration) -> Result<ConnectionManager, StateError> {
        connection_manager(&self.client, self.op_timeout, self.op_timeout + longest_wait)
    }

    /// Whether Redis answers a PING within the operation timeout.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<()>(&mut conn)).await
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key_state_key(&self, hash: &SecretHash) -> String {
        format!("{}:ks:{}", self.prefix, hash.to_hex())
    }

    fn catalog_key(&self) -> String {
        format!("{}:catalog", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:invalidations", self.prefix)
    }

    async fn bounded<T>(&self, op: impl Future<Output = Result<T, RedisError>>) -> Result<T, StateError> {
        tokio::time::timeout(self.op_timeout, op).await.map_err(|_| StateError::Timeout)?.map_err(unavailable)
    }

    fn put_pipeline(&self, writes: &[KeyStateWrite]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for write in writes {
            let expire_at_ms = write.expire_at.map_or(0, |micros| micros / 1000);
            pipe.invoke_script(
                self.put_script
                    .key(self.key_state_key(&write.hash))
                    .arg(write.version)
                    .arg(write.encoded.as_slice())
                    .arg(expire_at_ms),
            )
            .ignore();
        }
        pipe
    }

    /// Relays channel messages to local subscribers until the last clone is dropped;
    /// reconnects by itself and tells subscribers to drop everything after any gap.
    fn start_subscriber(&self) {
        let client = self.client.clone();
        let channel = self.channel();
        let sender = self.invalidations.clone();
        let alive: Weak<()> = Arc::downgrade(&self.alive);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while alive.strong_count() > 0 {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if let Err(error) = pubsub.subscribe(&channel).await {
                            tracing::warn!(%error, "invalidation subscription failed");
                        } else {
                            backoff = Duration::from_millis(100);
                            // Anything published while we were not listening is lost.
                            let _ = sender.send(Invalidation::Everything);
                            let mut messages = pubsub.on_message();
                            let mut liveness = tokio::time::interval(Duration::from_secs(1));
                            loop {
                                tokio::select! {
                                    message = messages.next() => match message {
                                        Some(message) => {
                                            let payload: String = message.get_payload().unwrap_or_default();
                                            let _ = sender.send(Invalidation::decode(&payload));
                                        }
                                        None => break,
                                    },
                                    _ = liveness.tick() => if alive.strong_count() == 0 { return },
                                }
                            }
                            tracing::warn!("invalidation subscription lost; reconnecting");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot subscribe to invalidations; retrying")
                    }
                }
                // No "drop everything" per failed attempt: while Redis is down nothing can be
                // published, and the reconnect above sends one for whatever was missed.
                // Dropping caches on every retry sent every look-up to the keys service.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
    }
}

/// Runs a pipeline of EVALSHAs of `script`, each call bounded by `op_timeout`. After a Redis
/// restart the script cache is empty: then the script is loaded once and the pipeline resent,
/// so its scripts must be safe to run twice.
pub(crate) async fn script_pipeline<T: redis::FromRedisValue>(
    conn: &ConnectionManager,
    pipe: &redis::Pipeline,
    script: &Script,
    op_timeout: Duration,
) -> Result<T, StateError> {
    let mut conn = conn.clone();
    let first = tokio::time::timeout(op_timeout, pipe.query_async::<T>(&mut conn)).await;
    match first.map_err(|_| StateError::Timeout)? {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            let load = tokio::time::timeout(op_timeout, script.prepare_invoke().load_async(&mut conn)).await;
            load.map_err(|_| StateError::Timeout)?.map_err(unavailable)?;
            let again = tokio::time::timeout(op_timeout, pipe.query_async::<T>(&mut conn)).await;
            again.map_err(|_| StateError::Timeout)?.map_err(unavailable)
        }
        first => first.map_err(unavailable),
    }
}

#[async_trait]
impl KeyStateCache for RedisState {
    async fn put_key_states(&self, writes: &[KeyStateWrite]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        let pipe = self.put_pipeline(writes);
        script_pipeline::<()>(&self.conn, &pipe, &self.put_script, self.op_timeout).await
    }

    async fn get_key_state(&self, hash: &SecretHash) -> Result<Option<Vec<u8>>, StateError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.hget(self.key_state_key(hash), "s")).await
    }

    async fn put_catalog(&self, encoded: &[u8]) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.set(self.catalog_key(), encoded)).await
    }

    async fn get_catalog(&self) -> Result<Option<Vec<u8>>, StateError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.get(self.catalog_key())).await
    }
}

#[async_trait]
impl InvalidationBus for RedisState {
    async fn publish(&self, invalidation: &Invalidation) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.publish::<_, _, ()>(self.channel(), invalidation.encode())).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        let receiver = self.invalidations.subscribe();
        self.subscriber_started.get_or_init(|| self.start_subscriber());
        receiver
    }
}
