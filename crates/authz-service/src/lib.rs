//! Tollgate's authz service: `Authorize` on every model call.
//!
//! Layers, in the order a call crosses them: [`grpc`] authenticates, checks and converts the
//! request; the [`Authorizer`] decides — key format, then [`resolver`] for the key's state
//! (in-process cache → Redis → keys service), [`policy`] (disabled, expired, IP, capability,
//! model), then one atomic counter step (`tollgate_ports::counters`) for quota, balance,
//! budgets, RPM and TPM — and answers a domain [`Decision`], which [`convert`] turns into the
//! protocol's answer. It never touches Postgres.

pub mod authorize;
pub mod bench;
pub mod compiled;
pub mod convert;
pub mod decision;
pub mod envoy;
pub mod error;
pub mod failure;
pub mod forward_auth;
pub mod front_door;
pub mod grpc;
pub mod llm_request;
pub mod metrics;
pub mod openai;
pub mod policy;
pub mod resolver;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_auth::{AnyBearer, BearerAuth};
use tollgate_ports::counters::CallCounters;
use tollgate_ports::key_state::{Invalidation, InvalidationBus, KeyStateCache};
use tollgate_proto::authz::v1 as pb;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

pub use authorize::{AuthorizeInput, Authorizer, AuthorizerSettings};
pub use decision::{Decision, Explanation, Reason};
pub use failure::RedisErrorPolicy;
pub use resolver::CacheTtls;

use crate::envoy::EnvoyCheck;
use crate::forward_auth::ForwardAuth;
pub use crate::front_door::FrontDoorSettings;
use crate::grpc::{AuthorizeAccess, AuthzGrpc};
use crate::metrics::AuthzMetrics;
use crate::resolver::KeyResolver;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tollgate_keys_client::KeyStateApi;
use tollgate_keys_client::catalog::ModelCatalog;

/// How often the catalog is reloaded even without an invalidation.
const CATALOG_REFRESH: Duration = Duration::from_secs(30);

/// Settings of the authz service.
#[derive(Debug, Clone)]
pub struct AuthzConfig {
    pub settings: AuthorizerSettings,
    pub cache_capacity: u64,
    pub cache_ttls: CacheTtls,
    /// A bearer token Authorize accepts besides the admin token.
    pub gateway_token: Option<String>,
    /// Authorize needs no token at all when no gateway token is set (`tollgate dev` on
    /// loopback, `--allow-unauthenticated-authorize`); otherwise it needs the gateway or the
    /// admin token.
    pub open_authorize: bool,
    /// ExplainAuthorize needs the admin token.
    pub admin_token: String,
    /// How the HTTP front doors (Envoy's `Check`, forward-auth) read calls and answer.
    pub front_door: FrontDoorSettings,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` forward-auth believes.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The authz service, ready to be served.
pub struct AuthzServer {
    authorizer: Arc<Authorizer>,
    grpc: AuthzGrpc,
    envoy: EnvoyCheck,
    forward_auth: Arc<ForwardAuth>,
    bus: Arc<dyn InvalidationBus>,
    metrics: AuthzMetrics,
}

impl AuthzServer {
    /// Wires the service to the shared key-state cache, its invalidations, the counters and
    /// the keys service, and loads the model catalog (retried in the background if that
    /// fails now).
    pub async fn new(
        config: AuthzConfig,
        shared: Arc<dyn KeyStateCache>,
        bus: Arc<dyn InvalidationBus>,
        counters: Arc<dyn CallCounters>,
        keys: Arc<dyn KeyStateApi>,
    ) -> Self {
        let metrics = AuthzMetrics::default();
        let resolver =
            KeyResolver::new(config.cache_capacity, config.cache_ttls, shared.clone(), keys.clone(), metrics.clone());
        let catalog = ModelCatalog::new(keys, Some(shared));
        let authorizer = Arc::new(Authorizer::new(resolver, catalog, counters, config.settings, metrics.clone()));
        let admin = BearerAuth::new(&config.admin_token);
        let access = match &config.gateway_token {
            None if config.open_authorize => AuthorizeAccess::Open,
            None => AuthorizeAccess::Tokens(AnyBearer::new([admin.clone()])),
            Some(gateway) => AuthorizeAccess::Tokens(AnyBearer::new([BearerAuth::new(gateway), admin.clone()])),
        };
        let front_door = Arc::new(config.front_door);
        let envoy = EnvoyCheck::new(authorizer.clone(), access.clone(), front_door.clone());
        let forward_auth =
            Arc::new(ForwardAuth::new(authorizer.clone(), access.clone(), front_door, config.trusted_proxies));
        let grpc = AuthzGrpc::new(authorizer.clone(), access, admin);
        authorizer.catalog.refresh().await;
        Self { authorizer, grpc, envoy, forward_auth, bus, metrics }
    }

    /// Adds `tollgate.authz.v1.AuthzService` to a router.
    pub fn add_services(&self, routes: &mut RoutesBuilder) {
        routes.add_service(pb::authz_service_server::AuthzServiceServer::new(self.grpc.clone()));
        routes.add_service(AuthorizationServer::new(self.envoy.clone()));
    }

    /// The HTTP routes (forward-auth), for the HTTP listener.
    pub fn http_routes(&self) -> axum::Router {
        self.forward_auth.clone().router()
    }

    /// The name reported by the health service.
    pub fn service_names() -> Vec<&'static str> {
        vec![
            <pb::authz_service_server::AuthzServiceServer<AuthzGrpc> as NamedService>::NAME,
            <AuthorizationServer<EnvoyCheck> as NamedService>::NAME,
        ]
    }

    /// Adds authz's metrics to a registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// The decision logic, for in-process callers such as benchmarks.
    pub fn authorizer(&self) -> Arc<Authorizer> {
        self.authorizer.clone()
    }

    /// Follows invalidations and reloads the catalog until cancelled.
    pub fn spawn_background(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let server = self.clone();
        let mut invalidations = self.bus.subscribe();
        tokio::spawn(async move {
            let mut refresh = tokio::time::interval(CATALOG_REFRESH);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = invalidations.recv() => {
                        let invalidation = match received {
                            Ok(invalidation) => invalidation,
                            // Missed messages: drop everything rather than guess.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Invalidation::Everything,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        };
                        server.metrics.invalidation();
                        server.authorizer.resolver.invalidate(&invalidation).await;
                        if matches!(invalidation, Invalidation::Catalog | Invalidation::Everything) {
                            server.authorizer.catalog.refresh().await;
                        }
                    }
                    _ = refresh.tick() => server.authorizer.catalog.refresh().await,
                }
            }
        })
    }
}
