//! The black-box test harness: starts the real server on `127.0.0.1:0` over either backend,
//! embedded (`tollgate dev`: SQLite, in-process state) or production (a private Postgres
//! database and Redis prefix), and hands out authenticated generated clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate::{DevConfig, KeysServeConfig, KeysSettings};
use tollgate_proto::keys::v1 as pb;
use tollgate_state::redis::RedisConfig;
use tollgate_test_support::{TestDatabase, TestRedis};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub mod fixtures;

/// Which adapters a harness runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `tollgate dev`: SQLite file, in-process cache and events.
    Embedded,
    /// Postgres and Redis.
    Production,
}

/// Adds `authorization: Bearer <token>` (and optionally an actor) to every call.
#[derive(Clone)]
pub struct Bearer {
    token: String,
    actor: Option<String>,
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().expect("ascii token"));
        if let Some(actor) = &self.actor {
            request.metadata_mut().insert("x-tollgate-actor", actor.parse().expect("ascii actor"));
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// What keeps a backend alive while a test runs.
#[allow(dead_code)]
enum Resources {
    Embedded(tempfile::TempDir),
    Production(TestDatabase, TestRedis),
}

/// A running server and how to talk to it.
pub struct Harness {
    pub backend: Backend,
    pub address: SocketAddr,
    pub channel: Channel,
    pub admin_token: String,
    pub key_pepper: String,
    /// SQLite file (embedded) or Postgres URL (production) of the keys store.
    pub database: String,
    /// Redis URL and key prefix (production only).
    pub redis: Option<(String, String)>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _resources: Resources,
}

/// Options a test may change from the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub max_rpm: Option<i64>,
    pub max_tpm: Option<i64>,
    pub drain: Duration,
    /// Production only: a Redis of the test's own instead of a prefix on the shared one.
    pub redis_url: Option<String>,
}

fn settings(options: &Options) -> KeysSettings {
    KeysSettings {
        admin_token: format!("admin-{}", tollgate_core::ids::new_id()),
        key_pepper: format!("pepper-{}-{}", tollgate_core::ids::new_id(), tollgate_core::ids::new_id()),
        max_rpm: options.max_rpm,
        max_tpm: options.max_tpm,
        credits_per_usd: 500_000,
        rotation_grace: Duration::from_secs(24 * 3600),
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
    /// A server on the embedded backend.
    pub async fn embedded(options: Options) -> Harness {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = settings(&options);
        let config = DevConfig { data_dir: dir.path().to_path_buf(), keys: keys.clone(), drain: options.drain };
        let database = dir.path().join("keys.db").display().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tollgate::run_dev(listener, config, shutdown.clone()));
        Self::ready(Backend::Embedded, address, keys, database, None, shutdown, task, Resources::Embedded(dir)).await
    }

    /// A server on Postgres and Redis, or `None` (skip) when they are not reachable.
    pub async fn production(options: Options) -> Option<Harness> {
        init_logs();
        let db = TestDatabase::create().await?;
        let redis = TestRedis::create().await?;
        let keys = settings(&options);
        let config = KeysServeConfig {
            database_url: db.url.clone(),
            db_max_connections: 8,
            migrate_on_start: true,
            redis: RedisConfig {
                url: options.redis_url.clone().unwrap_or_else(|| redis.url.clone()),
                prefix: redis.prefix.clone(),
                op_timeout: Duration::from_secs(2),
            },
            keys: keys.clone(),
            drain: options.drain,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tollgate::run_keys(listener, config, shutdown.clone()));
        let database = db.url.clone();
        let redis_info = Some((options.redis_url.clone().unwrap_or_else(|| redis.url.clone()), redis.prefix.clone()));
        Some(
            Self::ready(
                Backend::Production,
                address,
                keys,
                database,
                redis_info,
                shutdown,
                task,
                Resources::Production(db, redis),
            )
            .await,
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn ready(
        backend: Backend,
        address: SocketAddr,
        keys: KeysSettings,
        database: String,
        redis: Option<(String, String)>,
        shutdown: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
        resources: Resources,
    ) -> Harness {
        let channel = Channel::from_shared(format!("http://{address}")).expect("uri").connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if task.is_finished() {
                let outcome = task.await;
                panic!("the server stopped while starting: {outcome:?}");
            }
            let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
            if check.is_ok_and(|r| r.get_ref().status == 1) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the server did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Harness {
            backend,
            address,
            channel,
            admin_token: keys.admin_token,
            key_pepper: keys.key_pepper,
            database,
            redis,
            shutdown,
            task,
            _resources: resources,
        }
    }

    fn bearer(&self) -> Bearer {
        Bearer { token: self.admin_token.clone(), actor: Some("test-suite".into()) }
    }

    pub fn accounts(&self) -> pb::account_service_client::AccountServiceClient<Authed> {
        pb::account_service_client::AccountServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }

    pub fn applications(&self) -> pb::application_service_client::ApplicationServiceClient<Authed> {
        pb::application_service_client::ApplicationServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }

    pub fn groups(&self) -> pb::group_service_client::GroupServiceClient<Authed> {
        pb::group_service_client::GroupServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }

    pub fn models(&self) -> pb::model_service_client::ModelServiceClient<Authed> {
        pb::model_service_client::ModelServiceClient::with_interceptor(self.channel.clone(), self.bearer())
    }

    pub fn keys(&self) -> pb::key_service_client::KeyServiceClient<Authed> {
        pb::key_service_client::KeyServiceClient::with_interceptor(self.channel.clone(), self.bearer())
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

    /// Starts the graceful shutdown.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        match outcome {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the server did not stop cleanly: {other:?}"),
        }
    }

    /// Whether the server task has ended.
    pub fn stopped(&self) -> bool {
        self.task.is_finished()
    }
}

/// Defines each listed `async fn(&Harness)` as two tests: on the embedded backend and on
/// Postgres + Redis (skipped without them unless `CI=true`).
#[macro_export]
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let harness = $crate::Harness::embedded(Default::default()).await;
                    super::$check(&harness).await;
                    harness.stop().await;
                }
            )*
        }
        mod production {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if let Some(harness) = $crate::Harness::production(Default::default()).await {
                        super::$check(&harness).await;
                        harness.stop().await;
                    }
                }
            )*
        }
    };
}
