//! Tollgate's metering service: it owns money.
//!
//! A usage report crosses, in order: [`grpc`] (authentication), [`service`] (checks, then
//! the durable queue, `tollgate_state::usage_queue`), then a [`worker`] (pricing through
//! [`pricing`], one database transaction per batch, the counters authz reads, the
//! acknowledgement). [`queries`] answers usage, balance and key-holder questions from the
//! ledger.

pub mod directory;
pub mod error;
pub mod grpc;
pub mod key_holder_limit;
pub mod pricing;
pub mod queries;
pub mod rebuild_watch;
pub mod reconcile;
pub mod series;
pub mod service;
pub mod validate;
pub mod worker;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_auth::BearerAuth;
use tollgate_core::KeyPepper;
use tollgate_core::clock::Clock;
use tollgate_core::windows::Calendar;
use tollgate_ports::counters::Counters;
use tollgate_ports::usage_queue::UsageQueue;
use tollgate_proto::metering::v1 as pb;
use tollgate_store::metering::MeteringStore;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

pub use worker::{WorkerSettings, WorkerStats};

use crate::directory::KeyDirectory;
use crate::grpc::{KeyHolderGrpc, MeteringGrpc};
use crate::key_holder_limit::KeyHolderLimit;
use crate::pricing::Pricer;

/// Everything the metering service works with.
pub struct MeteringCore {
    pub store: Arc<dyn MeteringStore>,
    pub queue: Arc<dyn UsageQueue>,
    pub counters: Arc<dyn Counters>,
    pub directory: Arc<dyn KeyDirectory>,
    pub pricer: Pricer,
    pub calendar: Calendar,
    pub clock: Arc<dyn Clock>,
    pub pepper: KeyPepper,
    pub workers: WorkerSettings,
    pub stats: WorkerStats,
    pub key_holder_limit: KeyHolderLimit,
}

/// Settings of the metering service besides its adapters.
#[derive(Debug, Clone)]
pub struct MeteringConfig {
    pub calendar: Calendar,
    pub clock: Arc<dyn Clock>,
    pub pepper: KeyPepper,
    pub admin_token: String,
    /// When set, usage reports may also come with this bearer token (the gateway's), which
    /// allows nothing else.
    pub gateway_token: Option<String>,
    pub workers: WorkerSettings,
    /// `GetKeyBalance` calls each key may make per minute on this replica (0: no limit).
    pub key_balance_per_minute: u32,
}

/// The metering service, ready to be served.
pub struct MeteringServer {
    core: Arc<MeteringCore>,
    admin: BearerAuth,
    gateway: Option<BearerAuth>,
}

impl MeteringServer {
    pub fn new(
        config: MeteringConfig,
        store: Arc<dyn MeteringStore>,
        queue: Arc<dyn UsageQueue>,
        counters: Arc<dyn Counters>,
        directory: Arc<dyn KeyDirectory>,
    ) -> Self {
        let core = Arc::new(MeteringCore {
            store,
            queue,
            counters,
            pricer: Pricer::new(directory.clone()),
            directory,
            calendar: config.calendar,
            clock: config.clock,
            pepper: config.pepper,
            workers: config.workers,
            stats: WorkerStats::default(),
            key_holder_limit: KeyHolderLimit::new(config.key_balance_per_minute),
        });
        Self {
            core,
            admin: BearerAuth::new(&config.admin_token),
            gateway: config.gateway_token.as_deref().map(BearerAuth::new),
        }
    }

    /// Adds `MeteringService` (admin token; the gateway token for usage reports) and
    /// `KeyHolderService` (the key itself).
    pub fn add_services(&self, routes: &mut RoutesBuilder) {
        routes.add_service(pb::metering_service_server::MeteringServiceServer::new(MeteringGrpc::new(
            self.core.clone(),
            self.admin.clone(),
            self.gateway.clone(),
        )));
        routes.add_service(pb::key_holder_service_server::KeyHolderServiceServer::new(KeyHolderGrpc::new(
            self.core.clone(),
        )));
    }

    /// The names reported by the health service.
    pub fn service_names() -> Vec<&'static str> {
        vec![
            <pb::metering_service_server::MeteringServiceServer<MeteringGrpc> as NamedService>::NAME,
            <pb::key_holder_service_server::KeyHolderServiceServer<KeyHolderGrpc> as NamedService>::NAME,
        ]
    }

    /// Starts `count` workers named `{name}-{i}`, a minutely log line of what they did, and
    /// the watch that rebuilds lost counters; they stop on `shutdown`.
    pub fn spawn_workers(&self, name: &str, count: usize, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> = (0..count)
            .map(|i| tokio::spawn(worker::run(self.core.clone(), format!("{name}-{i}"), shutdown.child_token())))
            .collect();
        if count > 0 {
            tasks.push(tokio::spawn(worker::log_stats(self.core.clone(), shutdown.child_token())));
        }
        tasks.push(tokio::spawn(rebuild_watch::watch(self.core.clone(), name.to_owned(), shutdown.child_token())));
        tasks
    }

    /// The shared core, for tests, benchmarks and reconciliation.
    pub fn core(&self) -> Arc<MeteringCore> {
        self.core.clone()
    }
}
