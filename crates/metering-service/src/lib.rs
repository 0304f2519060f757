//! Tollgate's metering service: it owns money.
//!
//! Layers, in the order a request crosses them: [`grpc`] authenticates, checks and converts
//! protos ([`validate`], [`convert`]) — the HTTP adapters, [`key_holder_http`] and
//! [`usage_http`], answer the same calls in JSON —; then one of three domain types — the [`Recorder`] takes
//! usage reports into the durable queue (`tollgate_ports::usage_queue`), [`Credits`] changes
//! balances, [`Queries`] reads usage and money. Behind the queue a [`Worker`] prices each
//! report once ([`pricing`]), charges a batch in one database transaction, settles the
//! counters authz reads and acknowledges. The [`Reconciler`] rebuilds those counters from the
//! ledger, by hand or when [`rebuild_watch`] sees Redis lost them.
//!
//! Ports: the store (`tollgate_store::metering`), the queue and the counters
//! (`tollgate_ports`), the keys service ([`directory`]).

pub mod convert;
pub mod credits;
pub mod directory;
pub mod error;
pub mod grpc;
pub mod housekeeping;
pub mod key_holder_http;
pub mod key_holder_limit;
pub mod metrics;
pub mod payload;
pub mod pricing;
pub mod queries;
pub mod rebuild_watch;
pub mod reconcile;
pub mod recorder;
pub mod series;
pub mod usage;
pub mod usage_http;
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

pub use credits::Credits;
pub use metrics::MeteringMetrics;
pub use queries::Queries;
pub use reconcile::Reconciler;
pub use recorder::Recorder;
pub use worker::{Worker, WorkerSettings};

use crate::directory::KeyDirectory;
use crate::grpc::{KeyHolderGrpc, MeteringGrpc};
use crate::key_holder_http::KeyHolderHttp;
use crate::key_holder_limit::KeyHolderLimit;
use crate::pricing::Pricer;
use tollgate_keys_client::KeyStateApi;
use tollgate_keys_client::catalog::ModelCatalog;

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
    /// Credits per US dollar, for the USD the key holder's HTTP API shows.
    pub credits_per_usd: i64,
}

/// The adapters the metering service runs over.
pub struct MeteringAdapters {
    pub store: Arc<dyn MeteringStore>,
    pub queue: Arc<dyn UsageQueue>,
    /// Settled and credited by metering, rebuilt by the reconciler.
    pub counters: Arc<dyn Counters>,
    /// The keys service.
    pub keys: Arc<dyn KeyStateApi>,
}

/// The metering service, ready to be served.
pub struct MeteringServer {
    metering: MeteringGrpc,
    key_holder: KeyHolderGrpc,
    key_holder_http: Arc<KeyHolderHttp>,
    worker: Arc<Worker>,
    metrics: MeteringMetrics,
    reconciler: Arc<Reconciler>,
    store: Arc<dyn MeteringStore>,
    queue: Arc<dyn UsageQueue>,
}

impl MeteringServer {
    pub fn new(config: MeteringConfig, adapters: MeteringAdapters) -> Self {
        let MeteringAdapters { store, queue, counters, keys } = adapters;
        let directory = KeyDirectory::new(keys.clone());
        let pricer = Arc::new(Pricer::new(directory.clone(), ModelCatalog::new(keys, None)));
        let metrics = MeteringMetrics::default();
        let recorder = Arc::new(Recorder::new(queue.clone(), pricer.clone(), metrics.clone()));
        let credits = Arc::new(Credits::new(store.clone(), counters.clone(), directory.clone(), config.clock.clone()));
        let queries = Arc::new(Queries {
            store: store.clone(),
            queue: queue.clone(),
            directory,
            calendar: config.calendar.clone(),
            clock: config.clock.clone(),
            pepper: config.pepper,
            key_holder_limit: KeyHolderLimit::new(config.key_balance_per_minute),
        });
        let worker = Arc::new(Worker {
            queue: queue.clone(),
            store: store.clone(),
            counters: counters.clone(),
            pricer,
            calendar: config.calendar.clone(),
            clock: config.clock.clone(),
            settings: config.workers,
            metrics: metrics.clone(),
        });
        let reconciler =
            Arc::new(Reconciler::new(store.clone(), counters, config.calendar, config.clock.clone(), metrics.clone()));
        let metering = MeteringGrpc::new(
            recorder,
            credits,
            queries.clone(),
            config.clock.clone(),
            BearerAuth::new(&config.admin_token),
            config.gateway_token.as_deref().map(BearerAuth::new),
        );
        let key_holder_http = Arc::new(KeyHolderHttp::new(queries.clone(), config.credits_per_usd));
        Self {
            metering,
            key_holder: KeyHolderGrpc::new(queries),
            key_holder_http,
            worker,
            metrics,
            reconciler,
            store,
            queue,
        }
    }

    /// Adds `MeteringService` (admin token; the gateway token for usage reports) and
    /// `KeyHolderService` (the key itself).
    pub fn add_services(&self, routes: &mut RoutesBuilder) {
        routes.add_service(pb::metering_service_server::MeteringServiceServer::new(self.metering.clone()));
        routes.add_service(pb::key_holder_service_server::KeyHolderServiceServer::new(self.key_holder.clone()));
    }

    /// The HTTP routes, for the HTTP listener: the key holder's API and `POST /v1/usage`.
    pub fn http_routes(&self) -> axum::Router {
        self.key_holder_http.clone().router().merge(usage_http::router(self.metering.clone()))
    }

    /// The names reported by the health service.
    pub fn service_names() -> Vec<&'static str> {
        vec![
            <pb::metering_service_server::MeteringServiceServer<MeteringGrpc> as NamedService>::NAME,
            <pb::key_holder_service_server::KeyHolderServiceServer<KeyHolderGrpc> as NamedService>::NAME,
        ]
    }

    /// Starts `count` workers named `{name}-{i}`, a minutely log line of what they did, the
    /// store's housekeeping and the watch that rebuilds lost counters; they stop on `shutdown`.
    pub fn spawn_workers(&self, name: &str, count: usize, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> = (0..count)
            .map(|i| tokio::spawn(self.worker.clone().run(format!("{name}-{i}"), shutdown.child_token())))
            .collect();
        if count > 0 {
            tasks.push(tokio::spawn(worker::log_stats(self.metrics.clone(), shutdown.child_token())));
            tasks.push(tokio::spawn(housekeeping::run(self.store.clone(), shutdown.child_token())));
        }
        tasks.push(tokio::spawn(housekeeping::sample_queue(
            self.queue.clone(),
            self.metrics.clone(),
            shutdown.child_token(),
        )));
        let watch = rebuild_watch::watch(self.reconciler.clone(), name.to_owned(), shutdown.child_token());
        tasks.push(tokio::spawn(watch));
        tasks
    }

    /// Adds metering's metrics to a registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// Rebuilds the counters from the ledger (`tollgate dev` at start-up).
    pub fn reconciler(&self) -> Arc<Reconciler> {
        self.reconciler.clone()
    }
}
