//! Tollgate's keys service: configuration of accounts, applications, groups, the model
//! catalog and API keys, with an audit log, and the key-state snapshots authz reads.
//!
//! Layers, in the order a request crosses them: [`grpc`] checks and converts protos,
//! [`service`] applies the rules and writes through the store, [`state_sync`] pushes what
//! changed to the key-state cache and tells authz replicas to drop their copies.

pub mod convert;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod sealing;
pub mod service;
pub mod snapshot;
pub mod state_sync;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_ports::counters::SpendCounters;
use tollgate_ports::key_state::{InvalidationBus, KeyStateCache};
use tollgate_proto::keys::v1 as pb;
use tollgate_store::keys::KeysStore;
use tonic::server::NamedService;
use tonic::service::{Interceptor, RoutesBuilder};

pub use error::{KeysError, KeysResult};
pub use grpc::KeysGrpc;
pub use service::{KeysConfig, KeysService};
pub use state_sync::StateSync;

/// How often the background loop retries pushes that failed.
const SYNC_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The stored setting that remembers the caps the snapshots were computed with.
const CAPS_SETTING: &str = "system_caps";

/// The keys service, ready to be served.
#[derive(Clone)]
pub struct KeysServer {
    service: Arc<KeysService>,
    grpc: KeysGrpc,
    sync: Arc<StateSync>,
    store: Arc<dyn KeysStore>,
    /// The system caps as stored in [`CAPS_SETTING`].
    caps: String,
}

impl KeysServer {
    /// Wires the service to its store and the key-state cache. When the system caps differ
    /// from those the stored snapshots were computed with, every key is queued for a push.
    pub async fn new(
        store: Arc<dyn KeysStore>,
        cache: Arc<dyn KeyStateCache>,
        bus: Arc<dyn InvalidationBus>,
        counters: Arc<dyn SpendCounters>,
        config: KeysConfig,
    ) -> KeysResult<Self> {
        let server = Self::build(store, cache, bus, counters, config);
        server.prepare().await?;
        Ok(server)
    }

    /// [`KeysServer::new`] without its start-up work in the database; run
    /// [`KeysServer::prepare`] before serving, or retry it while serving (the database may
    /// not be there yet).
    pub fn build(
        store: Arc<dyn KeysStore>,
        cache: Arc<dyn KeyStateCache>,
        bus: Arc<dyn InvalidationBus>,
        counters: Arc<dyn SpendCounters>,
        config: KeysConfig,
    ) -> Self {
        let caps = format!("{:?}/{:?}", config.caps.max_rpm, config.caps.max_tpm);
        let sync = Arc::new(StateSync::new(store.clone(), cache, bus, config.caps, config.clock.clone()));
        let service = Arc::new(KeysService::new(store.clone(), sync.clone(), counters, config));
        Self { grpc: KeysGrpc::new(service.clone()), service, sync, store, caps }
    }

    /// Queues every key for a push when the system caps differ from those the stored
    /// snapshots were computed with, and pushes what is pending.
    pub async fn prepare(&self) -> KeysResult<()> {
        let stored_caps = self.store.get_setting(CAPS_SETTING).await.map_err(KeysError::from_store("setting"))?;
        if stored_caps.as_deref() != Some(self.caps.as_str()) {
            self.store.enqueue_everything().await.map_err(KeysError::from_store("setting"))?;
            self.store.put_setting(CAPS_SETTING, &self.caps).await.map_err(KeysError::from_store("setting"))?;
        }
        self.sync.flush_after_commit().await;
        Ok(())
    }

    /// Adds the keys service's metrics to a registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.sync.metrics().register(registry);
    }

    /// The service logic, for in-process callers (authz in `tollgate dev`).
    pub fn service(&self) -> Arc<KeysService> {
        self.service.clone()
    }

    /// Adds every keys.v1 service to a router: the management services behind `auth`, the
    /// internal `KeyStateService` behind `internal` (the service token, or the admin token).
    pub fn add_services<A, I>(&self, routes: &mut RoutesBuilder, auth: A, internal: I)
    where
        A: Interceptor + Clone + Send + Sync + 'static,
        I: Interceptor + Clone + Send + Sync + 'static,
    {
        use pb::account_service_server::AccountServiceServer;
        use pb::application_service_server::ApplicationServiceServer;
        use pb::audit_service_server::AuditServiceServer;
        use pb::group_service_server::GroupServiceServer;
        use pb::key_service_server::KeyServiceServer;
        use pb::key_state_service_server::KeyStateServiceServer;
        use pb::model_service_server::ModelServiceServer;
        let grpc = &self.grpc;
        routes
            .add_service(AccountServiceServer::with_interceptor(grpc.clone(), auth.clone()))
            .add_service(ApplicationServiceServer::with_interceptor(grpc.clone(), auth.clone()))
            .add_service(GroupServiceServer::with_interceptor(grpc.clone(), auth.clone()))
            .add_service(ModelServiceServer::with_interceptor(grpc.clone(), auth.clone()))
            .add_service(KeyServiceServer::with_interceptor(grpc.clone(), auth.clone()))
            .add_service(AuditServiceServer::with_interceptor(grpc.clone(), auth))
            .add_service(KeyStateServiceServer::with_interceptor(grpc.clone(), internal));
    }

    /// Fully-qualified names of the services [`KeysServer::add_services`] adds, for health.
    pub fn service_names() -> Vec<&'static str> {
        vec![
            <pb::account_service_server::AccountServiceServer<KeysGrpc> as NamedService>::NAME,
            <pb::application_service_server::ApplicationServiceServer<KeysGrpc> as NamedService>::NAME,
            <pb::group_service_server::GroupServiceServer<KeysGrpc> as NamedService>::NAME,
            <pb::model_service_server::ModelServiceServer<KeysGrpc> as NamedService>::NAME,
            <pb::key_service_server::KeyServiceServer<KeysGrpc> as NamedService>::NAME,
            <pb::audit_service_server::AuditServiceServer<KeysGrpc> as NamedService>::NAME,
            <pb::key_state_service_server::KeyStateServiceServer<KeysGrpc> as NamedService>::NAME,
        ]
    }

    /// Starts the loop that retries key-state pushes the handlers could not make.
    pub fn spawn_background(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.sync.clone().run(SYNC_RETRY_INTERVAL, shutdown))
    }
}
