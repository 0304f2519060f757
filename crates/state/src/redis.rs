//! Redis shared state for production: snapshots in hashes, the catalog in a string,
//! invalidations on a Pub/Sub channel.
//!
//! Layout under a configurable prefix `P`:
//! - `P:ks:<secret hash hex>`: hash `{v: version, s: encoded KeyState}`;
//! - `P:catalog`: encoded `GetModelCatalogResponse`;
//! - channel `P:invalidations`: [`Invalidation::encode`] messages.
//!
//! Each operation is single-key (a batch of snapshot writes goes out one pipeline per slot),
//! so the layout works on Redis Cluster; invalidations published on any node reach
//! subscribers on every node.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::{AsyncCommands, RedisError, Script};
use tokio::sync::broadcast;
use tollgate_core::SecretHash;

use crate::redis_conn::{RedisConn, Topology, script_cmd, unavailable};
use tollgate_ports::StateError;
use tollgate_ports::key_state::{Invalidation, InvalidationBus, KeyStateCache, KeyStateWrite};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` or `rediss://…`; for a cluster, one or more seed nodes
    /// separated by commas.
    pub url: String,
    /// Whether `url` names a Redis Cluster (implied by more than one URL).
    pub cluster: bool,
    /// Prefix of every key and channel, so several deployments (or tests) share a server.
    pub prefix: String,
    /// Upper bound of each operation; past it the call fails with [`StateError::Timeout`].
    pub op_timeout: Duration,
}

impl RedisConfig {
    /// A standalone Redis, or a cluster if `url` lists several seed nodes.
    pub fn new(url: &str, prefix: &str, op_timeout: Duration) -> Self {
        Self { url: url.to_owned(), prefix: prefix.to_owned(), cluster: false, op_timeout }
    }
}

/// Key-state cache and invalidation bus on Redis.
#[derive(Clone)]
pub struct RedisState {
    topology: Topology,
    conn: RedisConn,
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

/// Connecting waits at least this long, whatever the operation timeout: a TLS handshake to a
/// managed Redis takes longer than a command.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl RedisState {
    /// Sets up the connection, which is made on first use and re-established after failures;
    /// fails only for a URL that is not one. [`RedisState::ping`] says whether Redis answers.
    pub async fn connect(config: &RedisConfig) -> Result<Self, StateError> {
        let topology = Topology::parse(&config.url, config.cluster)?;
        let conn = topology.connect(config.op_timeout.max(MIN_CONNECT_TIMEOUT), config.op_timeout)?;
        Ok(Self {
            topology,
            conn,
            prefix: config.prefix.clone().into(),
            op_timeout: config.op_timeout,
            put_script: Arc::new(Script::new(include_str!("lua/put_key_state.lua"))),
            invalidations: broadcast::channel(1024).0,
            subscriber_started: Arc::default(),
            alive: Arc::new(()),
        })
    }

    /// The connection, for other adapters on the same server or cluster.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// A connection of its own for commands that wait on the server (`XREADGROUP … BLOCK`)
    /// up to `longest_wait`: Redis answers a connection's commands in order, so on the shared
    /// connection a waiting read would hold up every command sent after it.
    pub async fn blocking_connection(&self, longest_wait: Duration) -> Result<RedisConn, StateError> {
        self.topology.connect(self.op_timeout.max(MIN_CONNECT_TIMEOUT), self.op_timeout + longest_wait)
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

    fn put_commands(&self, writes: &[KeyStateWrite]) -> Vec<(Vec<u8>, redis::Cmd)> {
        writes
            .iter()
            .map(|write| {
                let key = self.key_state_key(&write.hash);
                let expire_at_ms = write.expire_at.map_or(0, |micros| micros / 1000);
                let mut invocation = self.put_script.key(&key);
                invocation.arg(write.version).arg(write.encoded.as_slice()).arg(expire_at_ms);
                (key.into_bytes(), script_cmd(&invocation))
            })
            .collect()
    }

    /// Relays channel messages to local subscribers until the last clone is dropped;
    /// reconnects by itself and tells subscribers to drop everything after any gap.
    fn start_subscriber(&self) {
        let topology = self.topology.clone();
        let channel = self.channel();
        let sender = self.invalidations.clone();
        let alive: Weak<()> = Arc::downgrade(&self.alive);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut attempt = 0usize;
            while alive.strong_count() > 0 {
                let client = topology.subscribe_target(&channel, attempt).await;
                attempt += 1;
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

#[async_trait]
impl KeyStateCache for RedisState {
    async fn put_key_states(&self, writes: &[KeyStateWrite]) -> Result<(), StateError> {
        if writes.is_empty() {
            return Ok(());
        }
        let commands = self.put_commands(writes);
        self.conn.query_by_slot::<redis::Value>(commands, Some(&self.put_script), self.op_timeout).await.map(drop)
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
