//! One connection type over a standalone Redis and a Redis Cluster, so every adapter has one
//! code path for both.
//!
//! - Standalone: a [`ConnectionManager`] (multiplexed, reconnects by itself).
//! - Cluster: a [`ClusterConnection`] (routes each command by its key's slot, follows `MOVED`
//!   and `ASK`, refreshes the slot map after a failover), made on first use so a service
//!   starts while the cluster is unreachable.
//!
//! Commands that span slots (a pipeline over many keys or accounts) go through
//! [`RedisConn::query_by_slot`]: one pipeline on a standalone server, one per slot on a
//! cluster, sent concurrently. Scripts are loaded with `SCRIPT LOAD`, which a cluster
//! connection sends to every node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{
    Client, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, RedisError, RedisFuture, Script, ServerErrorKind, Value,
};

use tollgate_ports::StateError;

pub(crate) fn unavailable(error: RedisError) -> StateError {
    StateError::Unavailable(error.to_string())
}

/// A connection to a standalone Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    Standalone(ConnectionManager),
    Cluster(LazyCluster),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Standalone(_) => "RedisConn::Standalone",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

/// A cluster connection made on first use, and made again after it failed with a connection
/// error or a time-out: redis-rs repairs a connection to a node that died, but requests it
/// keeps routing there (a pipeline, after a failover) may time out until a fresh connection
/// reads the slot map again. One caller makes it while the others wait, and only a failure on
/// the current connection replaces it.
#[derive(Clone)]
pub struct LazyCluster(Arc<LazyClusterInner>);

struct LazyClusterInner {
    client: ClusterClient,
    /// The connection and its generation.
    current: Mutex<Option<(u64, ClusterConnection)>>,
    making: tokio::sync::Mutex<u64>,
}

impl LazyCluster {
    fn new(client: ClusterClient) -> Self {
        Self(Arc::new(LazyClusterInner { client, current: Mutex::new(None), making: tokio::sync::Mutex::new(0) }))
    }

    fn current(&self) -> Option<(u64, ClusterConnection)> {
        self.0.current.lock().expect("cluster connection lock").clone()
    }

    async fn connection(&self) -> Result<(u64, ClusterConnection), RedisError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let mut generation = self.0.making.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let conn = self.0.client.get_async_connection().await?;
        *generation += 1;
        *self.0.current.lock().expect("cluster connection lock") = Some((*generation, conn.clone()));
        Ok((*generation, conn))
    }

    /// Forgets connection `generation` after `result`'s error if it says the connection may be
    /// stale (and it is still the current one).
    fn after<T>(&self, generation: u64, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(error) = &result
            && (error.is_timeout() || error.is_io_error() || error.is_connection_dropped())
        {
            let mut current = self.0.current.lock().expect("cluster connection lock");
            if current.as_ref().is_some_and(|(current, _)| *current == generation) {
                *current = None;
            }
        }
        result
    }
}

/// Where Redis is: one server, or a cluster reached through seed nodes.
#[derive(Debug, Clone)]
pub enum Topology {
    /// Boxed: with TLS compiled in a client is large, and topologies are made once.
    Standalone(Box<Client>),
    Cluster {
        /// Every seed node, for commands one node answers for all (Pub/Sub).
        seeds: Vec<Client>,
    },
}

impl Topology {
    /// Parses `redis://host:port[/db]` (or `rediss://`), or for a cluster a comma-separated
    /// list of seed nodes; `cluster` makes a single URL a cluster's seed.
    pub fn parse(urls: &str, cluster: bool) -> Result<Self, StateError> {
        let urls: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let clients = urls.iter().map(|url| Client::open(*url).map_err(unavailable)).collect::<Result<Vec<_>, _>>()?;
        match clients.len() {
            0 => Err(StateError::Unavailable("no Redis URL given".into())),
            1 if !cluster => Ok(Topology::Standalone(Box::new(clients.into_iter().next().expect("one")))),
            _ => Ok(Topology::Cluster { seeds: clients }),
        }
    }

    /// A connection whose replies may take up to `response_timeout` and whose connecting is
    /// bounded by `connect_timeout`. It connects on first use.
    pub fn connect(&self, connect_timeout: Duration, response_timeout: Duration) -> Result<RedisConn, StateError> {
        match self {
            Topology::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                client.get_connection_manager_lazy(config).map(RedisConn::Standalone).map_err(unavailable)
            }
            Topology::Cluster { seeds } => {
                let nodes: Vec<_> = seeds.iter().map(|c| c.get_connection_info().clone()).collect();
                // A little under the caller's own bound, so that redis-rs's time-out, which
                // makes the connection be made again, comes first.
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(connect_timeout)
                    .response_timeout(response_timeout.mul_f64(0.9))
                    .retries(2)
                    .build()
                    .map_err(unavailable)?;
                Ok(RedisConn::Cluster(LazyCluster::new(client)))
            }
        }
    }

    /// The server to subscribe to `channel` on (`attempt` counts the tries so far). On a
    /// cluster, the primary owning the channel's slot: a cluster connection sends PUBLISH
    /// there, so its subscribers have a message before PUBLISH returns, as on one server
    /// (other nodes hear it later, over the cluster bus). If the owner cannot be found, the
    /// seed nodes in turn.
    pub async fn subscribe_target(&self, channel: &str, attempt: usize) -> Client {
        match self {
            Topology::Standalone(client) => client.as_ref().clone(),
            Topology::Cluster { seeds } => {
                let seed = &seeds[attempt % seeds.len()];
                let owner = tokio::time::timeout(Duration::from_secs(2), slot_owner(seed, channel)).await;
                owner.ok().flatten().unwrap_or_else(|| seed.clone())
            }
        }
    }
}

/// The primary serving `key`'s slot, asked of `seed`, reached with `seed`'s settings.
async fn slot_owner(seed: &Client, key: &str) -> Option<Client> {
    let mut conn = seed.get_multiplexed_async_connection().await.ok()?;
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await.ok()?;
    let ranges: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await.ok()?;
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(from)), Some(Value::Int(to)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if !(*from..=*to).contains(&slot) {
            continue;
        }
        let host = match primary.first()? {
            Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let Value::Int(port) = primary.get(1)? else { return None };
        let port = u16::try_from(*port).ok()?;
        let info = seed.get_connection_info().clone();
        let addr = match info.addr() {
            ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host, port),
            _ => return None,
        };
        return Client::open(info.set_addr(addr)).ok();
    }
    None
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(cluster) => Box::pin(async move {
                let (generation, mut conn) = cluster.connection().await?;
                cluster.after(generation, conn.req_packed_command(cmd).await)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(cluster) => Box::pin(async move {
                let (generation, mut conn) = cluster.connection().await?;
                cluster.after(generation, conn.req_packed_commands(pipeline, offset, count).await)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(conn) => conn.get_db(),
            RedisConn::Cluster(_) => 0,
        }
    }
}

/// The `EVALSHA` command of a script invocation, to put in a [`RedisConn::query_by_slot`].
pub fn script_cmd(invocation: &redis::ScriptInvocation<'_>) -> Cmd {
    let mut pipe = redis::pipe();
    pipe.invoke_script(invocation);
    pipe.cmd_iter().next().expect("invoke_script adds one command").clone()
}

impl RedisConn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Runs `commands`, each with the key that places it, and returns each one's reply in
    /// order: one pipeline on a standalone server; on a cluster one pipeline per slot, sent
    /// concurrently (a cluster refuses a pipeline across slots). With `script`, a pipeline
    /// that finds it missing (Redis restarted, or a node promoted) loads it and is sent again,
    /// so its scripts must be safe to run twice. Every pipeline is bounded by `op_timeout`.
    pub async fn query_by_slot<T: FromRedisValue>(
        &self,
        commands: Vec<(Vec<u8>, Cmd)>,
        script: Option<&Script>,
        op_timeout: Duration,
    ) -> Result<Vec<T>, StateError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut groups: Vec<(Vec<usize>, redis::Pipeline)> = Vec::new();
        if self.is_cluster() {
            let mut group_of: HashMap<Slot, usize> = HashMap::new();
            for (i, (key, cmd)) in commands.into_iter().enumerate() {
                let group = *group_of.entry(Slot::for_key(&key)).or_insert_with(|| {
                    groups.push((Vec::new(), redis::pipe()));
                    groups.len() - 1
                });
                groups[group].0.push(i);
                groups[group].1.add_command(cmd);
            }
        } else {
            let mut pipe = redis::pipe();
            let indexes = (0..commands.len()).collect();
            for (_, cmd) in commands {
                pipe.add_command(cmd);
            }
            groups.push((indexes, pipe));
        }
        let total = groups.iter().map(|(indexes, _)| indexes.len()).sum();
        let replies = futures::future::try_join_all(
            groups.iter().map(|(_, pipe)| self.pipeline_with_script::<Vec<Value>>(pipe, script, op_timeout)),
        )
        .await?;
        let mut ordered: Vec<Option<Value>> = vec![None; total];
        for ((indexes, _), values) in groups.iter().zip(replies) {
            for (i, value) in indexes.iter().zip(values) {
                ordered[*i] = Some(value);
            }
        }
        ordered
            .into_iter()
            .map(|value| {
                let value = value.ok_or_else(|| StateError::Unavailable("a pipeline reply is missing".into()))?;
                T::from_redis_value(value).map_err(|e| StateError::Unavailable(e.to_string()))
            })
            .collect()
    }

    /// Runs one pipeline (all its keys in one slot on a cluster), loading `script` and sending
    /// it again if Redis does not have the script.
    pub async fn pipeline_with_script<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        script: Option<&Script>,
        op_timeout: Duration,
    ) -> Result<T, StateError> {
        let mut conn = self.clone();
        let first = tokio::time::timeout(op_timeout, pipe.query_async::<T>(&mut conn)).await;
        match (first.map_err(|_| StateError::Timeout)?, script) {
            (Err(error), Some(script)) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let load = tokio::time::timeout(op_timeout, script.prepare_invoke().load_async(&mut conn)).await;
                load.map_err(|_| StateError::Timeout)?.map_err(unavailable)?;
                let again = tokio::time::timeout(op_timeout, pipe.query_async::<T>(&mut conn)).await;
                again.map_err(|_| StateError::Timeout)?.map_err(unavailable)
            }
            (first, _) => first.map_err(unavailable),
        }
    }
}
