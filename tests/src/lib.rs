//! The black-box test harness: starts the real server on `127.0.0.1:0` over either backend,
//! embedded (`tollgate dev`: SQLite, in-process state) or production (a private Postgres
//! database and Redis prefix), and hands out authenticated generated clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate::{
    AuthzServeConfig, AuthzSettings, DevConfig, KeysServeConfig, KeysSettings, MeteringServeConfig, MeteringSettings,
    Secrets,
};
use tollgate_core::clock::{Clock, ManualClock, SystemClock};
use tollgate_proto::authz::v1 as pb_authz;
use tollgate_proto::keys::v1 as pb;
use tollgate_proto::metering::v1 as pb_metering;
use tollgate_state::redis::RedisConfig;
use tollgate_test_support::seed::Seeder;
use tollgate_test_support::{TestDatabase, TestRedis};
use tonic::transport::Channel;

pub mod fixtures;
pub mod http;

/// Which adapters a harness runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `tollgate dev`: SQLite file, in-process cache and events.
    Embedded,
    /// Postgres and Redis.
    Production,
}

pub use tollgate_test_support::seed::{Authed, Bearer};

/// What keeps a backend alive while a test runs.
#[allow(dead_code)]
enum Resources {
    Embedded(tempfile::TempDir),
    Production(Option<TestDatabase>, TestRedis),
}

/// One running server process (in this test process).
pub struct Server {
    pub address: SocketAddr,
    pub channel: Channel,
    /// Where its HTTP listener (`/metrics`) is.
    pub http: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A port free a moment ago, for a listener the server binds itself.
fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("local addr")
}

impl Server {
    /// The body of `GET /metrics` on the server's HTTP listener.
    pub async fn scrape_metrics(&self) -> String {
        let answer = http::get(self.http, "/metrics", &[]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    }

    /// Starts `run` on an ephemeral port, with its HTTP listener on a port free a moment
    /// before, and waits until its health says SERVING. Another process may take that port
    /// in between: the server then fails to bind it, and starts again on another.
    async fn start<F, Fut>(run: F) -> Server
    where
        F: Fn(SocketAddr, TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        for _ in 0..5 {
            let http = free_address();
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("local addr");
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(http, listener, shutdown.clone()));
            let channel = Channel::from_shared(format!("http://{address}")).expect("uri").connect_lazy();
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if task.is_finished() {
                    match task.await {
                        Ok(Err(error)) if format!("{error:#}").contains("binding the HTTP listener") => break,
                        outcome => panic!("the server stopped while starting: {outcome:?}"),
                    }
                }
                let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
                if check.is_ok_and(|r| r.get_ref().status == 1) {
                    return Server { address, channel, http, shutdown, task };
                }
                assert!(tokio::time::Instant::now() < deadline, "the server did not become ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no free port for the HTTP listener in five tries")
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the server did not stop cleanly: {other:?}"),
        }
    }
}

/// A running deployment and how to talk to it.
pub struct Harness {
    pub backend: Backend,
    /// The keys service (embedded: every service); `None` once stopped.
    pub server: Option<Server>,
    /// Production: authz servers in front of the same Redis and keys service.
    pub authz_servers: Vec<Server>,
    /// Production: the metering server (RPCs and workers) on the same Postgres and Redis.
    pub metering_servers: Vec<Server>,
    /// The keys service's channel (embedded: every service's).
    pub channel: Channel,
    /// Where the keys service listens (embedded: every service).
    pub keys_address: SocketAddr,
    pub admin_token: String,
    pub key_pepper: String,
    /// SQLite file (embedded) or Postgres URL (production) of the keys store.
    pub database: String,
    /// Redis URL and key prefix (production only).
    pub redis: Option<(String, String)>,
    options: Options,
    pub secrets: Secrets,
    _resources: Resources,
}

/// Options a test may change from the defaults.
#[derive(Clone, Default)]
pub struct Options {
    pub keys: KeysSettings,
    pub authz: AuthzSettings,
    pub metering: MeteringSettings,
    pub drain: Duration,
    /// Production only: a Redis of the test's own instead of a prefix on the shared one.
    pub redis_url: Option<String>,
    /// Production only: a Postgres database of the test's own instead of a fresh one on the
    /// shared server.
    pub database_url: Option<String>,
    /// A clock the test moves; the system clock otherwise.
    pub clock: Option<ManualClock>,
    /// Production only: the longest wait for a database connection (default 1 s, above the
    /// service's 250 ms, so a loaded test machine does not shed calls).
    pub db_acquire_timeout: Option<Duration>,
}

impl Options {
    fn clock(&self) -> Arc<dyn Clock> {
        match &self.clock {
            Some(clock) => Arc::new(clock.clone()),
            None => Arc::new(SystemClock),
        }
    }
}

fn secrets() -> Secrets {
    Secrets {
        admin_token: format!("admin-{}", tollgate_core::ids::new_id()),
        key_pepper: format!("pepper-{}-{}", tollgate_core::ids::new_id(), tollgate_core::ids::new_id()),
        service_token: Some(format!("service-{}", tollgate_core::ids::new_id())),
    }
}

/// Logs of the server under test go to the test's output, filtered by `RUST_LOG`.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .try_init();
}

impl Harness {
    /// `tollgate dev` on an ephemeral port.
    pub async fn embedded(options: Options) -> Harness {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let secrets = secrets();
        let config = DevConfig {
            data_dir: dir.path().to_path_buf(),
            secrets: secrets.clone(),
            keys: options.keys.clone(),
            authz: options.authz.clone(),
            metering: options.metering.clone(),
            drain: options.drain,
            http_listen: None,
            tls: None,
            clock: options.clock(),
        };
        let database = dir.path().join("keys.db").display().to_string();
        let server = Server::start(|http, listener, shutdown| {
            tollgate::run_dev(listener, DevConfig { http_listen: Some(http), ..config.clone() }, shutdown)
        })
        .await;
        Harness {
            backend: Backend::Embedded,
            keys_address: server.address,
            channel: server.channel.clone(),
            server: Some(server),
            authz_servers: Vec::new(),
            metering_servers: Vec::new(),
            admin_token: secrets.admin_token.clone(),
            key_pepper: secrets.key_pepper.clone(),
            database,
            redis: None,
            options,
            secrets,
            _resources: Resources::Embedded(dir),
        }
    }

    /// The keys service and one authz service on Postgres and Redis, or `None` (skip) when
    /// they are not reachable.
    pub async fn production(options: Options) -> Option<Harness> {
        init_logs();
        let db = match &options.database_url {
            Some(_) => None,
            None => Some(TestDatabase::create().await?),
        };
        let database_url = options.database_url.clone().or_else(|| db.as_ref().map(|db| db.url.clone()))?;
        let redis = TestRedis::create().await?;
        let secrets = secrets();
        let redis_url = options.redis_url.clone().unwrap_or_else(|| redis.url.clone());
        let config = KeysServeConfig {
            database_url: database_url.clone(),
            db_max_connections: 8,
            db_acquire_timeout: options.db_acquire_timeout.unwrap_or(Duration::from_secs(1)),
            migrate_on_start: true,
            redis: RedisConfig {
                url: redis_url.clone(),
                prefix: redis.prefix.clone(),
                cluster: false,
                op_timeout: Duration::from_secs(2),
            },
            secrets: secrets.clone(),
            keys: options.keys.clone(),
            drain: options.drain,
            http_listen: None,
            tls: None,
        };
        let server = Server::start(|http, listener, shutdown| {
            tollgate::run_keys(listener, KeysServeConfig { http_listen: Some(http), ..config.clone() }, shutdown)
        })
        .await;
        let mut harness = Harness {
            backend: Backend::Production,
            keys_address: server.address,
            channel: server.channel.clone(),
            server: Some(server),
            authz_servers: Vec::new(),
            metering_servers: Vec::new(),
            admin_token: secrets.admin_token.clone(),
            key_pepper: secrets.key_pepper.clone(),
            database: database_url,
            redis: Some((redis_url, redis.prefix.clone())),
            options,
            secrets,
            _resources: Resources::Production(db, redis),
        };
        harness.start_authz_replica().await;
        harness.start_metering().await;
        Some(harness)
    }

    /// [`Harness::production`] on a 3-primary Redis Cluster shared by the tests of this
    /// process (each on its own key prefix), or `None` (skip) without one.
    pub async fn cluster(options: Options) -> Option<Harness> {
        let url = tollgate_test_support::shared_redis_cluster_url().await?;
        // Usage reports spread over streams in several slots, as on a real cluster.
        let metering = tollgate::MeteringSettings { usage_streams: 3, ..options.metering.clone() };
        Harness::production(Options { redis_url: Some(url), metering, ..options }).await
    }

    /// Production only: a connection to the Redis (or Redis Cluster) the servers use.
    pub fn redis_connection(&self) -> Option<tollgate_state::redis_conn::RedisConn> {
        let (url, _) = self.redis.as_ref()?;
        let topology = tollgate_state::redis_conn::Topology::parse(url, false).expect("the harness's Redis URL");
        Some(topology.connect(Duration::from_secs(2), Duration::from_secs(2)).expect("a Redis connection"))
    }

    /// Production only: starts a metering server (RPCs and workers) on the same Postgres,
    /// Redis and keys service.
    pub async fn start_metering(&mut self) -> Channel {
        let (url, prefix) = self.redis.clone().expect("metering servers run on the production backend");
        let config = MeteringServeConfig {
            database_url: self.database.clone(),
            db_max_connections: 8,
            db_acquire_timeout: self.options.db_acquire_timeout.unwrap_or(Duration::from_secs(1)),
            migrate_on_start: true,
            redis: RedisConfig { url, prefix, cluster: false, op_timeout: Duration::from_secs(2) },
            keys_url: format!("http://{}", self.keys_address),
            secrets: self.secrets.clone(),
            metering: self.options.metering.clone(),
            drain: self.options.drain,
            http_listen: None,
            tls: None,
            keys_ca: None,
            clock: self.options.clock(),
        };
        let server = Server::start(|http, listener, shutdown| {
            tollgate::run_metering(
                listener,
                MeteringServeConfig { http_listen: Some(http), ..config.clone() },
                shutdown,
            )
        })
        .await;
        let channel = server.channel.clone();
        self.metering_servers.push(server);
        channel
    }

    /// Production only: starts another authz server on the same Redis and keys service and
    /// returns its channel.
    pub async fn start_authz_replica(&mut self) -> Channel {
        let (url, prefix) = self.redis.clone().expect("authz replicas run on the production backend");
        let config = AuthzServeConfig {
            redis: RedisConfig { url, prefix, cluster: false, op_timeout: Duration::from_millis(200) },
            keys_url: format!("http://{}", self.keys_address),
            secrets: self.secrets.clone(),
            authz: self.options.authz.clone(),
            drain: self.options.drain,
            http_listen: None,
            tls: None,
            keys_ca: None,
            clock: self.options.clock(),
        };
        let server = Server::start(|http, listener, shutdown| {
            tollgate::run_authz(listener, AuthzServeConfig { http_listen: Some(http), ..config.clone() }, shutdown)
        })
        .await;
        let channel = server.channel.clone();
        self.authz_servers.push(server);
        channel
    }

    /// The server answering Authorize: the first authz server, or the dev server.
    pub fn authz_server(&self) -> &Server {
        self.authz_servers.first().or(self.server.as_ref()).expect("a server")
    }

    /// The server applying usage reports: the first metering server, or the dev server.
    pub fn metering_server(&self) -> &Server {
        self.metering_servers.first().or(self.server.as_ref()).expect("a server")
    }

    /// Where Authorize is served: the first authz server, or the dev server.
    pub fn authz_channel(&self) -> Channel {
        self.authz_servers.first().map_or_else(|| self.channel.clone(), |s| s.channel.clone())
    }

    /// Where metering is served: the first metering server, or the dev server.
    pub fn metering_channel(&self) -> Channel {
        self.metering_servers.first().map_or_else(|| self.channel.clone(), |s| s.channel.clone())
    }

    /// The metering service, with the admin token.
    pub fn metering(&self) -> pb_metering::metering_service_client::MeteringServiceClient<Authed> {
        pb_metering::metering_service_client::MeteringServiceClient::with_interceptor(
            self.metering_channel(),
            self.bearer(),
        )
    }

    /// The key-holder service, authenticated by `secret`.
    pub fn key_holder(&self, secret: &str) -> pb_metering::key_holder_service_client::KeyHolderServiceClient<Authed> {
        let bearer = Bearer::token(secret);
        pb_metering::key_holder_service_client::KeyHolderServiceClient::with_interceptor(
            self.metering_channel(),
            bearer,
        )
    }

    fn bearer(&self) -> Bearer {
        Bearer::acting(&self.admin_token, "test-suite")
    }

    /// The seeding fixture, with the admin token.
    pub fn seeder(&self) -> Seeder {
        Seeder::new(self.channel.clone(), self.bearer())
    }

    pub fn accounts(&self) -> pb::account_service_client::AccountServiceClient<Authed> {
        self.seeder().accounts()
    }

    pub fn applications(&self) -> pb::application_service_client::ApplicationServiceClient<Authed> {
        self.seeder().applications()
    }

    pub fn groups(&self) -> pb::group_service_client::GroupServiceClient<Authed> {
        self.seeder().groups()
    }

    pub fn models(&self) -> pb::model_service_client::ModelServiceClient<Authed> {
        self.seeder().models()
    }

    pub fn keys(&self) -> pb::key_service_client::KeyServiceClient<Authed> {
        self.seeder().keys()
    }

    pub fn audit(&self) -> pb::audit_service_client::AuditServiceClient<Authed> {
        pb::audit_service_client::AuditServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }

    pub fn key_state(&self) -> pb::key_state_service_client::KeyStateServiceClient<Authed> {
        pb::key_state_service_client::KeyStateServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }

    /// The keyed hash the server stores for a secret.
    pub fn secret_hash(&self, secret: &str) -> Vec<u8> {
        tollgate_core::KeyPepper::new(self.key_pepper.as_bytes().to_vec()).expect("pepper").hash(secret).0.to_vec()
    }

    /// Authorize and ExplainAuthorize, with the admin token (ExplainAuthorize needs it).
    pub fn authz(&self) -> pb_authz::authz_service_client::AuthzServiceClient<Authed> {
        pb_authz::authz_service_client::AuthzServiceClient::with_interceptor(self.authz_channel(), self.bearer())
    }

    /// Authorize on `channel` (an authz replica), with the admin token.
    pub fn authz_on(&self, channel: Channel) -> pb_authz::authz_service_client::AuthzServiceClient<Authed> {
        pb_authz::authz_service_client::AuthzServiceClient::with_interceptor(channel, self.bearer())
    }

    /// Starts the graceful shutdown of every server.
    pub fn begin_shutdown(&self) {
        for server in self.server.iter().chain(&self.authz_servers).chain(&self.metering_servers) {
            server.shutdown.cancel();
        }
    }

    /// Whether the keys (or dev) server has stopped.
    pub fn stopped(&self) -> bool {
        self.server.as_ref().is_none_or(|s| s.task.is_finished())
    }

    /// Stops the keys service alone (production: authz keeps running).
    pub async fn stop_keys_service(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Shuts every server down and waits for them to stop.
    pub async fn stop(self) {
        for metering in self.metering_servers {
            metering.stop().await;
        }
        for authz in self.authz_servers {
            authz.stop().await;
        }
        if let Some(server) = self.server {
            server.stop().await;
        }
    }
}

/// Defines each check as three tests: on the embedded backend, on Postgres + Redis, and on
/// Postgres + a Redis Cluster (the last two skipped without them unless `CI=true`).
///
/// - `backend_suite!(checks: [a, b])`: each check is an `async fn(&Harness)` on a harness
///   with default options.
/// - `backend_suite!(setup: <expr>, checks: [a, b])`: the setup (written as from inside a
///   module of the suite's file) gives `(Options, extra)`, and each check is an
///   `async fn(&Harness, &extra)` — a test's manual clock, say.
#[macro_export]
macro_rules! backend_suite {
    (checks: $checks:tt) => {
        $crate::backend_suite!(@suite (Default::default(), ()), $checks, h, extra, (&h));
    };
    (setup: $setup:expr, checks: $checks:tt) => {
        $crate::backend_suite!(@suite $setup, $checks, h, extra, (&h, &extra));
    };
    (@suite $setup:expr, $checks:tt, $h:ident, $extra:ident, $args:tt) => {
        $crate::backend_suite!(@backend embedded, $setup, $checks, $h, $extra, $args);
        $crate::backend_suite!(@backend production, $setup, $checks, $h, $extra, $args);
        $crate::backend_suite!(@backend cluster, $setup, $checks, $h, $extra, $args);
    };
    (@backend $backend:ident, $setup:expr, [$($check:ident),* $(,)?], $h:ident, $extra:ident, $args:tt) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    #[allow(unused_variables)]
                    let (options, $extra) = $setup;
                    if let Some($h) = $crate::backend_suite!(@start $backend, options) {
                        super::$check $args.await;
                        $h.stop().await;
                    }
                }
            )*
        }
    };
    (@start embedded, $options:ident) => { Some($crate::Harness::embedded($options).await) };
    (@start production, $options:ident) => { $crate::Harness::production($options).await };
    (@start cluster, $options:ident) => { $crate::Harness::cluster($options).await };
}

/// [`backend_suite!`] with default options: each listed `async fn(&Harness)` on every backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        $crate::backend_suite!(checks: [$($check),*]);
    };
}
